#!/usr/bin/env bash
# What durable audit writes cost end to end: the same fhirwall (built-in
# pipeline, sandbox upstream, one read, wrk) with its audit dir
#   (a) on the real disk (fdatasync per group-committed batch), and
#   (b) on tmpfs (/dev/shm: fdatasync is free; rendering and hashing remain),
# at two connection counts. The difference is what durability adds; both logs
# are checked with `fhirwall audit verify` afterwards and must hold one record
# per request wrk completed (plus the start/stop/token records).
#
#   bench/audit-e2e.sh [DURATION_S] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
duration=${1:-5}
rounds=${2:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q
bin=$PWD/target/release/fhirwall

work=$(mktemp -d /tmp/fhirwall-audit-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/fhirwall-audit-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$shm"; }
trap cleanup EXIT

up_port=19200
"$bin" keygen --client-id bench-ehr --out "$work/keys" >/dev/null
"$bin" sandbox --listen 127.0.0.1:$up_port >"$work/sandbox.log" 2>&1 & pids+=($!)

start_gw() { # name port audit_dir -> pid in $gw_pid
  gateway_config "$2" $(($2 + 1)) "$3" "sqlite://$work/$1.db" >"$work/$1.toml"
  FHIRWALL_LOG=warn "$bin" serve --config "$work/$1.toml" >"$work/$1.log" 2>&1 & gw_pid=$!
  pids+=($gw_pid)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$(($2 + 1))/readyz" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "$1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}

# Both gateways run side by side; the rows alternate between them, so
# background load on a shared machine hits both alike. Medians per cell.
start_gw disk 19210 "$work/audit"; disk_pid=$gw_pid
start_gw tmpfs 19220 "$shm/audit"; tmpfs_pid=$gw_pid
declare -A tokens
for port in 19210 19220; do
  tokens[$port]=$("$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
    --token-url "http://127.0.0.1:$port/auth/token" --scope 'system/*.read')
done

printf '\nfhirwall audit cost: GET Patient/pat-0001, %s rounds of %s s per cell, wrk -t2, %s\n' "$rounds" "$duration" "$(date -u +%F)"
printf '%-6s %-6s %-6s %10s %9s %9s\n' round conns audit req/s p50_ms p99_ms
declare -A total results
for round in $(seq 1 "$rounds"); do
  for conns in 32 128; do
    for target in disk tmpfs; do
      port=19210; [ $target = tmpfs ] && port=19220
      out=$(wrk -t2 -c"$conns" -d"${duration}s" --latency -H "Authorization: Bearer ${tokens[$port]}" \
        "http://127.0.0.1:$port/fhir/Patient/pat-0001")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")"); p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
      n=$(awk '/requests in/ {print $1}' <<<"$out"); total[$target]=$(( ${total[$target]:-0} + n ))
      non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
      [ -z "$non2xx" ] || { echo "$target: $non2xx non-2xx answers" >&2; exit 1; }
      printf '%-6s %-6s %-6s %10s %9s %9s\n' "$round" "$conns" "$target" "$rps" "$p50" "$p99"
      results[$conns,$target]+="$rps $p50 $p99;"
    done
  done
done
printf '\nmedians\n%-6s %-6s %10s %9s %9s\n' conns audit req/s p50_ms p99_ms
for conns in 32 128; do
  for target in disk tmpfs; do
    python3 - "${results[$conns,$target]}" "$conns" "$target" <<'PY'
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1].split(";") if r.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print("%-6s %-6s %10.0f %9.2f %9.2f" % (sys.argv[2], sys.argv[3], *med))
PY
  done
done

for target in disk tmpfs; do
  pid=$disk_pid; dir="$work/audit"
  [ $target = tmpfs ] && { pid=$tmpfs_pid; dir="$shm/audit"; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  verdict=$("$bin" audit verify --dir "$dir")
  records=$(sed -E 's/^audit log intact: ([0-9]+) records.*/\1/' <<<"$verdict")
  # start + token + every request wrk completed + stop (a few more may have
  # been answered as wrk stopped).
  [ "$records" -ge $(( ${total[$target]} + 3 )) ] || { echo "$target: $records records for ${total[$target]} requests" >&2; exit 1; }
  echo "$target: $verdict"
done
