# Shared by the bench/*.sh scripts (sourced, not run).

# The config of a benchmark gateway in front of the sandbox at 127.0.0.1:$up_port,
# with one client, bench-ehr (org-grace), whose keys are in keys/ beside the config.
# The request-rate limits are off: the benchmarks drive one client far past them.
#   gateway_config PORT ADMIN_PORT AUDIT_DIR STATE_URL
gateway_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
base_url = "http://127.0.0.1:$1/fhir"
client_requests_per_s = 0
organization_requests_per_s = 0
[admin]
listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$up_port/fhir"
[state]
url = "$4"
[audit]
dir = "$3"
[auth]
token_requests_per_s = 0
token_ttl_s = ${TOKEN_TTL_S:-300}
[[clients]]
client_id = "bench-ehr"
organization = "Organization/org-grace"
npi = "1417987256"
jwks_path = "keys/bench-ehr.jwks.json"
scopes = ["system/*.read"]
TOML
}

# wrk's latency figures (850.00us, 1.20ms, 2.00s) in milliseconds.
to_ms() { python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)$",v); n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=="us" else n*1000 if u=="s" else n,3))' "$1"; }
