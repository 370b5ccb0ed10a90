#!/usr/bin/env bash
# The audit console on a large log (issue 14): N audit records (default
# 1,000,000, about 2.4 GB; bench/console-log.py) behind the release fhirwall.
#
#   bench/console.sh [N]
#
# Steps: write the log once (cached in bench/console-data/, not tracked) and
# copy it to a scratch audit.dir; start the sandbox and fhirwall on it; sign
# in to the console (curl, cookie jar); then
#  1. the first data call, which builds the index by reading (and verifying)
#     the whole log;
#  2. the per-patient view for 200 patients (100 among the most looked-up,
#     100 at random), one request each: median / p95 / max milliseconds, and
#     the same with curl's connection time as the reference;
#  3. the per-client view, the traffic overview, a page deep in a patient's
#     history;
#  4. fhirwall's RSS before and after the index was built.
# Needs python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
up_port=19450
port=19451
admin_port=19452
bin=${FHIRWALL_BIN:-target/release/fhirwall}
data=bench/console-data/log-$n
if [ ! -f "$data/.generated" ]; then
  rm -rf "$data"
  python3 bench/console-log.py "$data" "$n"
  touch "$data/.generated"
fi
[ -x "$bin" ] || cargo build --release --locked -q
bin=$(realpath "$bin")
work=$(mktemp -d /tmp/fhirwall-console-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[console-bench $(date -u +%T)] $*" >&2; }
wait_http() {
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null "$1"; do
    [ $SECONDS -lt $deadline ] || { log "timeout waiting for $1"; exit 1; }
    sleep 0.2
  done
}
cp -r "$data" "$work/audit"
rm -f "$work/audit/.generated"
"$bin" sandbox --listen 127.0.0.1:$up_port >"$work/sandbox.log" 2>&1 &
pids+=("$!")
wait_http http://127.0.0.1:$up_port/fhir/metadata 60
cat >"$work/fhirwall.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
base_url = "http://127.0.0.1:$port/fhir"
[admin]
listen = "127.0.0.1:$admin_port"
[upstream]
url = "http://127.0.0.1:$up_port/fhir"
[state]
url = "sqlite://$work/fhirwall.db"
[audit]
dir = "$work/audit"
TOML
export FHIRWALL_ADMIN_TOKEN=bench-admin-token
t=$(date +%s.%N)
"$bin" serve --config "$work/fhirwall.toml" >"$work/fhirwall.log" 2>&1 &
gw=$!
pids+=("$gw")
wait_http http://127.0.0.1:$admin_port/readyz 120
log "fhirwall ready on a log of $n records in $(python3 -c "print(round($(date +%s.%N) - $t, 2))") s"
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$gw/status"; }
log "before the index: $(rss)"
console=http://127.0.0.1:$admin_port/admin/console
jar=$work/cookies
curl -fs -c "$jar" -H 'Content-Type: application/json' -d '{"token":"bench-admin-token"}' "$console/session" >/dev/null
timed() { curl -fs -b "$jar" -o "$work/out.json" -w '%{time_total} %{time_connect}\n' "$console/api/$1"; }
build=$(timed "chain")
python3 - "$work/out.json" "$build" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["chain"]
print(f"index built: {c['records']} records read and verified in {float(sys.argv[2].split()[0]):.2f} s; "
      f"intact={c['intact']}; index ~{c['index_bytes'] // (1 << 20)} MiB")
PY
log "after the index: $(rss)"
: >"$work/times"
for i in $(seq 0 99); do timed "patients/pat-$(printf %06d "$i")" >>"$work/times"; done
python3 -c 'import random; r=random.Random(7); print("\n".join("pat-%06d" % r.randrange(100000) for _ in range(100)))' |
  while read -r p; do timed "patients/$p" >>"$work/times"; done
python3 - "$work/times" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
total = sorted(r[0] * 1000 for r in rows)
conn = sorted(r[1] * 1000 for r in rows)
p95 = lambda v: v[int(len(v) * 0.95) - 1]
print(f"per-patient view, {len(rows)} patients (one page of 50 rows + per-client summary): "
      f"median {statistics.median(total):.2f} ms, p95 {p95(total):.2f} ms, max {total[-1]:.2f} ms "
      f"(curl connect alone: median {statistics.median(conn):.2f} ms)")
PY
timed "patients/pat-000000" >/dev/null
records=$(python3 -c "import json; print(json.load(open('$work/out.json'))['records'])")
before=$(python3 -c "import json; print(json.load(open('$work/out.json'))['rows'][-1]['seq'])")
echo "pat-000000 is named by $records records; a page deep in its history: $(timed "patients/pat-000000?before=$((before / 2))" | awk '{printf "%.2f ms", $1*1000}')"
echo "per-client view (ehr-07): $(timed "clients/ehr-07" | awk '{printf "%.2f ms", $1*1000}')"
echo "traffic overview (all clients): $(timed "overview" | awk '{printf "%.2f ms", $1*1000}')"
echo "traffic overview (one organization): $(timed "overview?organization=Organization/org-03" | awk '{printf "%.2f ms", $1*1000}')"
log "end: $(rss)"
