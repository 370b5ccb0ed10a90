#!/usr/bin/env bash
# $provider-member-match throughput (issue 13): one request of MEMBERS
# MemberBundles against the member-match benchmark's population (100,000
# covered members, bench/member-match/generate.py) served by the sandbox
# upstream (`fhirwall sandbox --data`), through the release fhirwall with the
# default matcher.
#
#   bench/provider-match.sh [MEMBERS]          (default 1000)
#   SEED=4711 bench/provider-match.sh 1000      (the population of another seed)
#
# Steps: generate the population and queries if missing (bench/member-match/run.sh
# does the same); load them into the sandbox; start fhirwall (sync answers up to
# MEMBERS, so a request's time is one HTTP exchange); then
#  1. cold: the first request, which also reads the member directory from the
#     upstream (100 pages of Coverage, 100 of Patient);
#  2. warm: three more requests, answered at once (sync);
#  3. async: one request kicked off with `Prefer: respond-async` and polled every 50 ms.
# Each line reports seconds, members/s, matches, false positives against the
# generator's truth, and recall; then fhirwall's peak and current RSS (the
# directory of 100,000 members is held in memory). Needs python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
members=${1:-1000}
up_port=19400
bin=${FHIRWALL_BIN:-target/release/fhirwall}
# The matching benchmark's population and queries (bench/member-match/run.sh).
seed=${SEED:-20270107}
data=${DATA:-bench/member-match/data/seed-$seed-100000-20000}
if [ ! -f "$data/.generated" ]; then
  python3 bench/member-match/generate.py --seed "$seed" --members 100000 --queries 20000 --out "$data"
  touch "$data/.generated"
fi
[ -f plugins/dist/default_matcher.wasm ] || bash plugins/build.sh
[ -x "$bin" ] || cargo build --release --locked -q
bin=$(realpath "$bin")
work=$(mktemp -d /tmp/fhirwall-pmm-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[provider-match-bench $(date -u +%T)] $*" >&2; }
wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null "$1"; do
    [ $SECONDS -lt $deadline ] || { log "timeout waiting for $1"; exit 1; }
    sleep 0.5
  done
}
client="python3 bench/provider-match-client.py"
$client request --queries "$data/queries.ndjson" --truth "$data/truth.ndjson" --members "$members" --out "$work/request.json"

t=$SECONDS
"$bin" sandbox --listen 127.0.0.1:$up_port --data "$data/members.ndjson" >"$work/sandbox.log" 2>&1 &
pids+=("$!")
wait_http http://127.0.0.1:$up_port/fhir/metadata 900
log "sandbox loaded with $(grep -c '"Patient"' "$data/members.ndjson") patients in $((SECONDS - t)) s"

"$bin" keygen --client-id bench-ehr --out "$work/keys" >/dev/null
{
  gateway_config 19410 19411 audit sqlite://state/fw.db
  cat <<TOML
[[plugins]]
name = "default-matcher"
world = "matcher"
path = "$(realpath plugins/dist/default_matcher.wasm)"
[member_match]
sync_max_members = $members
max_members = $members
# Every run sends the same ~150 look-alikes (right answer: no match), which
# count against the guessing budget (default 500 per hour) like any guess.
max_failures_per_client = 1000000
TOML
} >"$work/fw.toml"
FHIRWALL_LOG=warn "$bin" serve --config "$work/fw.toml" >"$work/fw.log" 2>&1 &
fw_pid=$!; pids+=("$fw_pid")
wait_http http://127.0.0.1:19411/readyz 60
"$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
  --token-url http://127.0.0.1:19410/auth/token --scope 'system/*.read' >"$work/token"
echo "# command: bench/provider-match.sh $members; machine: $(nproc) cores; $(date -u +%FT%TZ)"
run() { $client run --base http://127.0.0.1:19410/fhir --token-file "$work/token" \
  --request "$work/request.json" --truth "$data/truth.ndjson" "$@"; }
echo "cold (reads the member directory): $(run)"
for i in 1 2 3; do echo "warm $i: $(run)"; done
echo "async: $(run --async)"
echo "fhirwall memory: $(grep -E 'VmHWM|VmRSS' /proc/$fw_pid/status | tr -s ' \t' ' ' | paste -sd ';')"
