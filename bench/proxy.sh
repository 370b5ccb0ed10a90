#!/usr/bin/env bash
# Proxy overhead benchmark: requests/s and latency of
#   (a) the sandbox upstream hit directly,
#   (b) nginx as a plain reverse proxy in front of it,
#   (c) fhirwall in front of it (full pipeline),
# measured in one run with wrk, for a single read and a 20-entry search Bundle.
# fhirwall is called with a real access token (bench-ehr, system/*.read), so the
# figures include token verification; the token is also sent to the others.
# Machines are noisy: compare the rows of one run, not runs across machines.
#
#   bench/proxy.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-32}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  echo "installing wrk and nginx (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --locked -q
bin=target/release/fhirwall

work=$(mktemp -d /tmp/fhirwall-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

up_port=19000; fw_port=19080; fw_admin=19081; ngx_port=19090
"$bin" keygen --client-id bench-ehr --out "$work/keys" >/dev/null
"$bin" sandbox --listen 127.0.0.1:$up_port >"$work/sandbox.log" 2>&1 & pids+=($!)

cat >"$work/fhirwall.toml" <<TOML
[server]
listen = "127.0.0.1:$fw_port"
base_url = "http://127.0.0.1:$fw_port/fhir"
[admin]
listen = "127.0.0.1:$fw_admin"
[upstream]
url = "http://127.0.0.1:$up_port/fhir"
[state]
url = "sqlite://state/fhirwall.db"
[audit]
dir = "audit"
[[clients]]
client_id = "bench-ehr"
organization = "Organization/org-grace"
npi = "1417987256"
jwks_path = "keys/bench-ehr.jwks.json"
scopes = ["system/*.read"]
TOML
FHIRWALL_LOG=warn "$bin" serve --config "$work/fhirwall.toml" >"$work/fhirwall.log" 2>&1 & pids+=($!)

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
nginx -c "$work/nginx.conf" & pids+=($!)

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$fw_admin/readyz" >/dev/null 2>&1 &&
     curl -fs "http://127.0.0.1:$ngx_port/fhir/metadata" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

token=$("$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
  --token-url "http://127.0.0.1:$fw_port/auth/token" --scope 'system/*.read')
auth="Authorization: Bearer $token"

read_path="/fhir/Patient/pat-0001"
search_path="/fhir/ExplanationOfBenefit?_count=20"
entries=$(curl -fs -H "$auth" "http://127.0.0.1:$fw_port$search_path" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("entry",[])))')
[ "$entries" = 20 ] || { echo "expected a 20-entry Bundle through fhirwall, got $entries" >&2; exit 1; }

run() { # name url -> "rps p50_ms p99_ms"
  out=$(wrk -t2 -c"$conns" -d"${duration}s" --latency -H 'Accept: application/fhir+json' -H "$auth" "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$non2xx" ] || { echo "$1: $non2xx non-2xx answers" >&2; exit 1; }
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)$",v); n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=="us" else n*1000 if u=="s" else n,3))' "$1"; }

printf '\nfhirwall proxy benchmark: %s s per row, %s connections, wrk -t2, %s\n' "$duration" "$conns" "$(date -u +%F)"
printf '%-8s %-10s %10s %9s %9s %13s\n' workload target req/s p50_ms p99_ms added_p99_ms
for workload in read search; do
  path=$read_path; [ $workload = search ] && path=$search_path
  read -r d_rps d_p50 d_p99 <<<"$(run direct "http://127.0.0.1:$up_port$path")"
  read -r n_rps n_p50 n_p99 <<<"$(run nginx "http://127.0.0.1:$ngx_port$path")"
  read -r f_rps f_p50 f_p99 <<<"$(run fhirwall "http://127.0.0.1:$fw_port$path")"
  printf '%-8s %-10s %10s %9s %9s %13s\n' $workload direct "$d_rps" "$d_p50" "$d_p99" -
  printf '%-8s %-10s %10s %9s %9s %13s\n' $workload nginx "$n_rps" "$n_p50" "$n_p99" "$(python3 -c "print(round($n_p99-$d_p99,3))")"
  printf '%-8s %-10s %10s %9s %9s %13s\n' $workload fhirwall "$f_rps" "$f_p50" "$f_p99" "$(python3 -c "print(round($f_p99-$d_p99,3))")"
  python3 -c "print('%-8s fhirwall/nginx req/s = %.0f%%' % ('$workload', 100*$f_rps/$n_rps))"
done
