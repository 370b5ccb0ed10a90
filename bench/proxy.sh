#!/usr/bin/env bash
# Proxy overhead benchmark: requests/s and latency of
#   (a) the sandbox upstream hit directly,
#   (b) nginx as a plain reverse proxy in front of it,
#   (c) fhirwall in front of it (full pipeline, audit log on the disk),
#   (d) the same fhirwall configuration with its audit log on tmpfs (what the
#       per-request fdatasync of the audit record costs),
#   (e) (d) with one policy plugin loaded (plugins/dist/policy_confidential.wasm:
#       on-request, and on-resource for every resource that leaves),
# measured in one run with wrk, for a single read and a 20-entry search Bundle.
# Besides requests/s and latency, each row gives the proxy's own CPU time per
# request (user + system, from /proc/PID/stat over the run): on a machine where
# the load generator, the upstream and the proxy share the cores, that is the
# figure that says what the proxy costs.
# fhirwall is called with a real access token (bench-ehr, system/*.read), so the
# figures include token verification; the token is also sent to the others.
# Machines are noisy: compare the rows of one run, not runs across machines.
#
#   bench/proxy.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
duration=${1:-10}
conns=${2:-32}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  echo "installing wrk and nginx (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --locked -q
[ -f plugins/dist/policy_confidential.wasm ] || bash plugins/build.sh >&2
bin=target/release/fhirwall

work=$(mktemp -d /tmp/fhirwall-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "${shm_audit:-}"; }
trap cleanup EXIT

up_port=19000; fw_port=19080; fw_admin=19081; ngx_port=19090; fwm_port=19082; fwm_admin=19083
fwp_port=19084; fwp_admin=19085
"$bin" keygen --client-id bench-ehr --out "$work/keys" >/dev/null
"$bin" sandbox --listen 127.0.0.1:$up_port >"$work/sandbox.log" 2>&1 & pids+=($!)

shm_audit=$(mktemp -d /dev/shm/fhirwall-bench-audit.XXXXXX)
gateway_config $fw_port $fw_admin audit "sqlite://state/fhirwall-$fw_port.db" >"$work/fhirwall.toml"
gateway_config $fwm_port $fwm_admin "$shm_audit" "sqlite://state/fhirwall-$fwm_port.db" >"$work/fhirwall-shm.toml"
mkdir -p "$shm_audit/plugin"
gateway_config $fwp_port $fwp_admin "$shm_audit/plugin" "sqlite://state/fhirwall-$fwp_port.db" >"$work/fhirwall-plugin.toml"
cat >>"$work/fhirwall-plugin.toml" <<TOML
[[plugins]]
name = "confidential"
world = "policy"
path = "$PWD/plugins/dist/policy_confidential.wasm"
memory_mb = 64
timeout_ms = 200
TOML
FHIRWALL_LOG=warn "$bin" serve --config "$work/fhirwall.toml" >"$work/fhirwall.log" 2>&1 & fw_pid=$!; pids+=($fw_pid)
FHIRWALL_LOG=warn "$bin" serve --config "$work/fhirwall-shm.toml" >"$work/fhirwall-shm.log" 2>&1 & fwm_pid=$!; pids+=($fwm_pid)
FHIRWALL_LOG=warn "$bin" serve --config "$work/fhirwall-plugin.toml" >"$work/fhirwall-plugin.log" 2>&1 & fwp_pid=$!; pids+=($fwp_pid)

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $work/nginx-error.log warn;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/ngx-body;
  proxy_temp_path $work/ngx-proxy;
  fastcgi_temp_path $work/ngx-fcgi;
  uwsgi_temp_path $work/ngx-uwsgi;
  scgi_temp_path $work/ngx-scgi;
  upstream fhir { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://fhir;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" & ngx_pid=$!; pids+=($ngx_pid)

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$fw_admin/readyz" >/dev/null 2>&1 &&
     curl -fs "http://127.0.0.1:$fwm_admin/readyz" >/dev/null 2>&1 &&
     curl -fs "http://127.0.0.1:$fwp_admin/readyz" >/dev/null 2>&1 &&
     curl -fs "http://127.0.0.1:$ngx_port/fhir/metadata" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

token=$("$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
  --token-url "http://127.0.0.1:$fw_port/auth/token" --scope 'system/*.read')
auth="Authorization: Bearer $token"
# The tmpfs gateway has its own state (and signing key): its own token.
token_m=$("$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
  --token-url "http://127.0.0.1:$fwm_port/auth/token" --scope 'system/*.read')
auth_m="Authorization: Bearer $token_m"
token_p=$("$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
  --token-url "http://127.0.0.1:$fwp_port/auth/token" --scope 'system/*.read')
auth_p="Authorization: Bearer $token_p"

read_path="/fhir/Patient/pat-0001"
# Six members attributed to org-grace (examples/dataset/facts.json): the upstream
# answers 20 EOBs; fhirwall passes those its policies allow (Part 2, service-date
# floor and drug PAs withheld, financial elements stripped).
search_path="/fhir/ExplanationOfBenefit?patient=Patient/pat-0001,Patient/pat-0006,Patient/pat-0009,Patient/pat-0011,Patient/pat-0012,Patient/pat-0017&_count=20"
count_entries() { python3 -c 'import json,sys; b=sys.stdin.read(); print(len(json.loads(b).get("entry",[])), len(b))'; }
read -r up_entries up_bytes <<<"$(curl -fs "http://127.0.0.1:$up_port$search_path" | count_entries)"
read -r fw_entries fw_bytes <<<"$(curl -fs -H "$auth" "http://127.0.0.1:$fw_port$search_path" | count_entries)"
[ "$up_entries" = 20 ] || { echo "expected a 20-entry Bundle from the upstream, got $up_entries" >&2; exit 1; }
[ "$fw_entries" -gt 0 ] || { echo "fhirwall answered no entries" >&2; exit 1; }
echo "search: upstream $up_entries entries / $up_bytes bytes; through fhirwall $fw_entries entries / $fw_bytes bytes" >&2

# CPU time (user + system, clock ticks) a process and its threads have used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)
# nginx's master only forks: its worker does the proxying.
ngx_worker=$(pgrep -P "$ngx_pid" | head -1)

run() { # name url pid [auth header] -> "rps p50_ms p99_ms cpu_us_per_request"
  before=$(cpu_ticks "$3")
  out=$(wrk -t2 -c"$conns" -d"${duration}s" --latency -H 'Accept: application/fhir+json' -H "${4:-$auth}" "$2")
  after=$(cpu_ticks "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$non2xx" ] || { echo "$1: $non2xx non-2xx answers" >&2; exit 1; }
  cpu_us=$(python3 -c "print(round(($after - $before) / $ticks_per_s * 1e6 / $total, 1))")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu_us"
}

printf '\nfhirwall proxy benchmark: %s s per row, %s connections, wrk -t2, %s\n' "$duration" "$conns" "$(date -u +%F)"
up_pid=${pids[0]}
printf '%-8s %-14s %10s %9s %9s %13s %15s\n' workload target req/s p50_ms p99_ms added_p99_ms cpu_us_per_req
for workload in read search; do
  path=$read_path; [ $workload = search ] && path=$search_path
  read -r d_rps d_p50 d_p99 d_cpu <<<"$(run direct "http://127.0.0.1:$up_port$path" "$up_pid")"
  read -r n_rps n_p50 n_p99 n_cpu <<<"$(run nginx "http://127.0.0.1:$ngx_port$path" "$ngx_worker")"
  read -r f_rps f_p50 f_p99 f_cpu <<<"$(run fhirwall "http://127.0.0.1:$fw_port$path" "$fw_pid")"
  read -r m_rps m_p50 m_p99 m_cpu <<<"$(run fhirwall-tmpfs "http://127.0.0.1:$fwm_port$path" "$fwm_pid" "$auth_m")"
  read -r p_rps p_p50 p_p99 p_cpu <<<"$(run fhirwall-plugin "http://127.0.0.1:$fwp_port$path" "$fwp_pid" "$auth_p")"
  added() { python3 -c "print(round($1-$d_p99,3))"; }
  printf '%-8s %-14s %10s %9s %9s %13s %15s\n' $workload direct "$d_rps" "$d_p50" "$d_p99" - "$d_cpu"
  printf '%-8s %-14s %10s %9s %9s %13s %15s\n' $workload nginx "$n_rps" "$n_p50" "$n_p99" "$(added "$n_p99")" "$n_cpu"
  printf '%-8s %-14s %10s %9s %9s %13s %15s\n' $workload fhirwall "$f_rps" "$f_p50" "$f_p99" "$(added "$f_p99")" "$f_cpu"
  printf '%-8s %-14s %10s %9s %9s %13s %15s\n' $workload "fhirwall-tmpfs" "$m_rps" "$m_p50" "$m_p99" "$(added "$m_p99")" "$m_cpu"
  printf '%-8s %-14s %10s %9s %9s %13s %15s\n' $workload "fhirwall-plugin" "$p_rps" "$p_p50" "$p_p99" "$(added "$p_p99")" "$p_cpu"
  python3 -c "print('%-8s fhirwall/nginx req/s = %.0f%% (audit on tmpfs: %.0f%%; plus one policy plugin: %.0f%%); CPU per request %.1fx nginx (tmpfs %.1fx, plugin %.1fx)' % ('$workload', 100*$f_rps/$n_rps, 100*$m_rps/$n_rps, 100*$p_rps/$n_rps, $f_cpu/$n_cpu, $m_cpu/$n_cpu, $p_cpu/$n_cpu))"
done
