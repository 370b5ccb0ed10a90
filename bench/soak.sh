#!/usr/bin/env bash
# Soak benchmark (issue 15; not run in CI): MINUTES minutes (default 10) of
# mixed traffic at CONNECTIONS connections (default 256) against the release
# fhirwall in front of the sandbox, audit log on the disk:
#   - wrk, CONNECTIONS connections: reads of attributed Patients, EOB searches,
#     a page behind a sealed `next` link, a Condition search (round-robin);
#   - a token request every 0.5 s (`fhirwall token`: a fresh assertion each);
#   - Group exports back to back: kick-off, status polls, manifest, one file;
# measured per minute: requests/s, p50/p99, non-2xx and socket errors, and
# fhirwall's RSS and open file descriptors. At the end: token and export
# failures, and `fhirwall audit verify` over everything written. Exits 1 on
# any error.
#
#   bench/soak.sh [MINUTES] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
minutes=${1:-10}
conns=${2:-256}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk; then
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked -q
bin=$PWD/target/release/fhirwall

work=$(mktemp -d /tmp/fhirwall-soak.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "[soak $(date -u +%T)] $*" >&2; }

up_port=19300; fw_port=19380; fw_admin=19381
cd "$work"
"$bin" keygen --client-id bench-ehr --out keys >/dev/null
"$bin" sandbox --listen 127.0.0.1:$up_port >sandbox.log 2>&1 & pids+=($!)
for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:$up_port/fhir/metadata" >/dev/null 2>&1 && break; sleep 0.2; done
# Tokens outlive the run (wrk sends one token throughout).
TOKEN_TTL_S=$((minutes * 60 + 600)) gateway_config $fw_port $fw_admin audit "sqlite://state/fhirwall.db" >fhirwall.toml
mkdir -p state
FHIRWALL_LOG=warn FHIRWALL_ADMIN_TOKEN=soak-admin "$bin" serve --config fhirwall.toml >fhirwall.log 2>&1 & fw_pid=$!; pids+=($fw_pid)
for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:$fw_admin/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
base="http://127.0.0.1:$fw_port/fhir"
token() {
  "$bin" token --client-id bench-ehr --key keys/bench-ehr.key.pem \
    --token-url "http://127.0.0.1:$fw_port/auth/token" --scope 'system/*.read'
}
tok=$(token)
auth="Authorization: Bearer $tok"

# A sealed paging link (valid for an hour).
curl -s -o first-page.json -H "$auth" -H 'Accept: application/fhir+json' "$base/ExplanationOfBenefit?patient=Patient/pat-0001&_count=2"
next=$(python3 -c 'import json,sys; print(next(l["url"] for l in json.load(open("first-page.json"))["link"] if l["relation"]=="next"))') ||
  { log "no next link: $(head -c 300 first-page.json); $(tail -3 fhirwall.log)"; exit 1; }
next_path=${next#http://127.0.0.1:$fw_port}
cat >mix.lua <<LUA
local paths = {
  "/fhir/Patient/pat-0001", "/fhir/Patient/pat-0009", "/fhir/Patient/pat-0011",
  "/fhir/ExplanationOfBenefit?patient=Patient/pat-0001,Patient/pat-0006,Patient/pat-0009&_count=20",
  "$next_path",
  "/fhir/Condition?patient=pat-0012",
}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
LUA

# Token requests: one every 0.5 s.
( ok=0; bad=0; while [ ! -f stop ]; do if token >/dev/null 2>>token.err; then ok=$((ok+1)); else bad=$((bad+1)); fi
  echo "$ok $bad" >tokens.count; sleep 0.5; done ) & pids+=($!)
# Group exports back to back.
( ok=0; bad=0; echo "0 0" >exports.count
  while [ ! -f stop ]; do
    loc=$(curl -s -o /dev/null -w '%{http_code} %header{content-location}' -H "$auth" -H 'Accept: application/fhir+json' \
      -H 'Prefer: respond-async' "$base/Group/grp-grace/\$export?_type=Patient,Condition")
    if [ "${loc%% *}" != 202 ]; then bad=$((bad+1)); echo "$ok $bad" >exports.count; sleep 1; continue; fi
    status=${loc#* }
    code=202
    # Polled at the Retry-After fhirwall asks for (sooner is a 429).
    wait_s=1
    while { [ "$code" = 202 ] || [ "$code" = 429 ]; } && [ ! -f stop ]; do
      sleep "$wait_s"
      read -r code wait_s < <(curl -s -o manifest.json -w '%{http_code} %header{retry-after}\n' -H "$auth" "$status")
      wait_s=${wait_s:-1}
      echo "$(date -u +%T) $status $code $wait_s" >>exports.log
    done
    if [ "$code" = 200 ] && file=$(python3 -c 'import json; print(json.load(open("manifest.json"))["output"][0]["url"])' 2>/dev/null) &&
       curl -fs -o /dev/null -H "$auth" "$file"; then ok=$((ok+1)); elif [ ! -f stop ]; then bad=$((bad+1)); fi
    echo "$ok $bad" >exports.count
  done ) & pids+=($!)

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$fw_pid/status"; }
fds() { ls "/proc/$fw_pid/fd" | wc -l; }
printf '\nfhirwall soak: %s min, %s connections (wrk -t2), mixed reads/searches/paging + tokens + exports, %s\n' \
  "$minutes" "$conns" "$(date -u +%F)"
printf '%6s %10s %9s %9s %8s %8s %9s %6s\n' minute req/s p50_ms p99_ms non2xx sockerr rss_mib fds
errors=0
for m in $(seq 1 "$minutes"); do
  out=$(wrk -t2 -c"$conns" -d60s --latency -s mix.lua -H 'Accept: application/fhir+json' -H "$auth" "http://127.0.0.1:$fw_port")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
  errors=$((errors + non2xx + sockerr))
  printf '%6s %10s %9s %9s %8s %8s %9s %6s\n' "$m" "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" "$non2xx" "$sockerr" \
    "$(( $(rss_kib) / 1024 ))" "$(fds)"
done
touch stop
sleep 3
read -r t_ok t_bad <tokens.count
read -r e_ok e_bad <exports.count 2>/dev/null || { e_ok=0; e_bad=0; }
tail -3 exports.log >&2 || true
echo "tokens: $t_ok issued, $t_bad failed; exports: $e_ok completed (manifest + a file), $e_bad failed"
kill "$fw_pid"; wait "$fw_pid" 2>/dev/null || true
verify=$("$bin" audit verify --dir audit 2>&1 | tail -1)
echo "audit verify: $verify"
[ "$errors" = 0 ] && [ "$t_bad" = 0 ] && [ "$e_bad" = 0 ] && [ "$e_ok" -gt 0 ] || { echo "soak: errors" >&2; exit 1; }
