#!/usr/bin/env bash
# Bulk export benchmark (issue 12): a Group export of PATIENTS patients (30
# resources each: Patient, Coverage, 6 Encounters, 4 Conditions, 18
# Observations; bench/export-data.py) through fhirwall, measured against the
# upstream's own paging speed.
#
#   bench/export.sh [PATIENTS] [MEDPLUM_PATIENTS]      (defaults 10000 10000)
#
# Steps (each bounded by a timeout; every process started here is stopped on exit):
#  1. Throughput, sandbox upstream (`fhirwall sandbox --data`): the baseline
#     (bench/export-client.py baseline: the very searches fhirwall's export
#     sends — batches of 50 patients, one search per type with `_count=250`,
#     `next` links followed, 2 at a time — straight to the sandbox), then a
#     fhirwall export of the same Group and types ([export] batch_patients =
#     50, concurrency = 2, upstream_rps = 100000 so the budget does not
#     throttle). fhirwall's rate is resources over the job's own time (kick-off
#     sent to its `export-complete` audit record); the client-seen time
#     (kick-off to manifest, polling every Retry-After = 1 s) and the download
#     time are given beside it. fhirwall's VmRSS is sampled every 0.5 s during
#     the job and VmHWM read after it.
#  2. On-demand latency: a fresh fhirwall with the default upstream_rps (100);
#     wrk (-t2 -c$WRK_CONNS -d$WRK_DURATION) on a Patient read and on a small
#     search, idle, then while exports of the Group run back to back.
#  3. Resume: an export is started (lease_s = 5, upstream_rps lowered for small
#     datasets so the job lasts ~30 s), fhirwall is killed with kill -9 once
#     X-Progress shows a batch done, restarted on the same state, and the time
#     from the restart until the job's progress moves again (its first
#     export-batch audit record after the restart; and the first status poll
#     showing more patients) and until it is done is measured; the manifest
#     must then hold every resource once.
#  4. Throughput, Medplum upstream (tests/medplum, Medplum's FHIR engine on
#     MemoryRepository: search is a linear scan) with MEDPLUM_PATIENTS: loaded,
#     probed with one batch; when the baseline alone is estimated beyond
#     MEDPLUM_BUDGET_S, that is reported and the step runs with the largest
#     patient count that fits the budget instead (time grows with N^2).
#
# Environment: FHIRWALL_BIN (default target/release/fhirwall, built if missing),
# WRK_DURATION (10), WRK_CONNS (8), STEP_TIMEOUT (1800 s per step),
# MEDPLUM_BUDGET_S (300), MEDPLUM_LOAD_TIMEOUT (900), SKIP_MEDPLUM=1.
# Needs python3, curl, wrk (installed from Debian if missing), and for step 4
# tests/medplum's node_modules (npm ci if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
patients=${1:-10000}
mp_patients=${2:-10000}
bin=${FHIRWALL_BIN:-target/release/fhirwall}
wrk_duration=${WRK_DURATION:-10}
wrk_conns=${WRK_CONNS:-8}
step_timeout=${STEP_TIMEOUT:-1800}
mp_budget=${MEDPLUM_BUDGET_S:-300}
mp_load_timeout=${MEDPLUM_LOAD_TIMEOUT:-900}
types=Patient,Coverage,Encounter,Condition,Observation
group=grp-bench
client="python3 bench/export-client.py"

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
[ -x "$bin" ] || cargo build --release --locked -q
bin=$(realpath "$bin")
command="bench/export.sh $patients $mp_patients"
if [ -n "${FHIRWALL_BIN:-}" ]; then command="FHIRWALL_BIN=$FHIRWALL_BIN $command"; fi

work=$(mktemp -d /tmp/fhirwall-export-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[export-bench $(date -u +%T)] $*" >&2; }
# A JSON member of a file: jget FILE key
jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2], ""); print(v if v is not None else "")' "$1" "$2"; }
calc() { python3 -c "print($1)"; }
wait_http() { # url seconds pid
  local deadline=$((SECONDS + $2))
  until curl -fs -o /dev/null "$1"; do
    kill -0 "$3" 2>/dev/null || { log "process $3 died before $1 answered"; return 1; }
    [ $SECONDS -lt $deadline ] || { log "$1 did not answer within $2 s"; return 1; }
    sleep 0.2
  done
}

up_port=19300; mp_port=19350
"$bin" keygen --client-id bench-ehr --out "$work/keys" >/dev/null

# fw_config NAME PORT UPSTREAM_URL EXPORT_TOML: $work/NAME.toml, its own state,
# audit log and export storage.
fw_config() {
  cat >"$work/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
base_url = "http://127.0.0.1:$2/fhir"
client_requests_per_s = 0
organization_requests_per_s = 0
[admin]
listen = "127.0.0.1:$(($2 + 1))"
[upstream]
url = "$3"
timeout_ms = 120000
[state]
url = "sqlite://state/$1.db"
[audit]
dir = "audit-$1"
[auth]
token_ttl_s = 7200
[[clients]]
client_id = "bench-ehr"
organization = "Organization/org-grace"
npi = "1417987256"
jwks_path = "keys/bench-ehr.jwks.json"
scopes = ["system/*.read"]
[export]
storage = "exports-$1"
batch_patients = 50
concurrency = 2
retry_after_s = 1
$4
TOML
}
# start_fw NAME PORT -> sets fw_pid, token_file ($work/NAME.token)
start_fw() {
  FHIRWALL_LOG=${fw_log:-warn} "$bin" serve --config "$work/$1.toml" >>"$work/$1.log" 2>&1 &
  fw_pid=$!; pids+=("$fw_pid")
  wait_http "http://127.0.0.1:$(($2 + 1))/readyz" 60 "$fw_pid"
  fw_ready_at=$(date +%s.%N)
  "$bin" token --client-id bench-ehr --key "$work/keys/bench-ehr.key.pem" \
    --token-url "http://127.0.0.1:$2/auth/token" --scope 'system/*.read' >"$work/$1.token"
  token_file=$work/$1.token
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- data, sandbox
log "generating $patients patients"
python3 bench/export-data.py --patients "$patients" --out "$work/data.ndjson"
expected=$((patients * 30))
t=$SECONDS
"$bin" sandbox --listen 127.0.0.1:$up_port --data "$work/data.ndjson" >"$work/sandbox.log" 2>&1 &
up_pid=$!; pids+=("$up_pid")
wait_http "http://127.0.0.1:$up_port/fhir/metadata" 600 "$up_pid"
log "sandbox loaded in $((SECONDS - t)) s"
up_base=http://127.0.0.1:$up_port/fhir

# ---------------------------------------------------------------- 1. throughput (sandbox)
fw_config tput 19310 "$up_base" "upstream_rps = 100000"
start_fw tput 19310
log "baseline: the export's searches straight to the sandbox"
timeout "$step_timeout" $client baseline --base "$up_base" --group $group --types $types \
  --batch 50 --concurrency 2 --timeout "$step_timeout" >"$work/sb-base.json" ||
  { log "the sandbox baseline failed or took over $step_timeout s"; exit 1; }
log "$(cat "$work/sb-base.json")"
log "fhirwall export"
timeout "$step_timeout" $client fhirwall --base http://127.0.0.1:19310/fhir --token-file "$token_file" \
  --group $group --types $types --pid "$fw_pid" --audit-dir "$work/audit-tput" \
  --timeout "$step_timeout" >"$work/sb-fw.json" ||
  { log "the fhirwall export (sandbox) failed or took over $step_timeout s; log: $(tail -5 "$work/tput.log")"; exit 1; }
log "$(cat "$work/sb-fw.json")"
stop "$fw_pid"
[ "$(jget "$work/sb-base.json" resources)" = "$expected" ] || log "WARNING: the baseline counted $(jget "$work/sb-base.json" resources) resources, expected $expected"
[ "$(jget "$work/sb-fw.json" resources)" = "$expected" ] || log "WARNING: fhirwall exported $(jget "$work/sb-fw.json" resources) resources, expected $expected"

# ---------------------------------------------------------------- 2. on-demand latency
fw_config lat 19320 "$up_base" ""
start_fw lat 19320
auth="Authorization: Bearer $(cat "$token_file")"
read_url="http://127.0.0.1:19320/fhir/Patient/bench-000001"
search_url="http://127.0.0.1:19320/fhir/Observation?subject=Patient/bench-000001&_count=20"
curl -fs -o /dev/null -H "$auth" "$read_url"   # attribution loaded before measuring
curl -fs -o /dev/null -H "$auth" "$search_url"
to_ms() { python3 -c 'import sys,re
m=re.match(r"([0-9.]+)(us|ms|s)$",sys.argv[1]); n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=="us" else n*1000 if u=="s" else n,2))' "$1"; }
run_wrk() { # url -> "rps p50_ms p99_ms non2xx"
  local out
  out=$(timeout $((wrk_duration + 60)) wrk -t2 -c"$wrk_conns" -d"${wrk_duration}s" --latency \
    -H 'Accept: application/fhir+json' -H "$auth" "$1")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
       "$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") $(awk '/Non-2xx/ {print $5}' <<<"$out" | grep . || echo 0)"
}
log "wrk idle"
read -r ir_rps ir_p50 ir_p99 ir_bad <<<"$(run_wrk "$read_url")"
read -r is_rps is_p50 is_p99 is_bad <<<"$(run_wrk "$search_url")"
log "exports back to back (default upstream_rps) + wrk"
$client fhirwall --repeat --base http://127.0.0.1:19320/fhir --token-file "$token_file" --group $group \
  --types $types --timeout "$step_timeout" >"$work/lat-exports.ndjson" 2>"$work/lat-exports.err" &
load_pid=$!; pids+=("$load_pid")
sleep 2
read -r er_rps er_p50 er_p99 er_bad <<<"$(run_wrk "$read_url")"
read -r es_rps es_p50 es_p99 es_bad <<<"$(run_wrk "$search_url")"
load_alive="exports ran back to back throughout"
kill -0 "$load_pid" 2>/dev/null || { load_alive="THE EXPORT LOAD STOPPED EARLY"; log "the export load stopped early: $(cat "$work/lat-exports.err")"; }
stop "$load_pid"
lat_exports=$(wc -l <"$work/lat-exports.ndjson")
stop "$fw_pid"

# ---------------------------------------------------------------- 3. resume after kill -9
# ~9 upstream requests per batch of 50 with this data: keep the job ~30 s long.
resume_rps=$(calc "max(2, min(100, ($patients + 49) // 50 * 9 // 30))")
fw_config resume 19330 "$up_base" "upstream_rps = $resume_rps
lease_s = 5"
fw_log=info start_fw resume 19330
status_url=$($client kickoff --base http://127.0.0.1:19330/fhir --token-file "$token_file" --group $group \
  --types $types --timeout 60) || { log "resume: the kick-off failed"; exit 1; }
job=${status_url##*/}
timeout 600 $client watch --status "$status_url" --token-file "$token_file" --until-progress 1 \
  --timeout 600 >"$work/resume-before.json" || { log "resume: no progress within 600 s"; exit 1; }
log "before the kill: $(cat "$work/resume-before.json")"
kill -9 "$fw_pid"; wait "$fw_pid" 2>/dev/null || true
restart_t0=$(date +%s.%N)
fw_log=info start_fw resume 19330
ready_s=$(calc "round($fw_ready_at - $restart_t0, 2)")
timeout "$step_timeout" $client watch --status "$status_url" --token-file "$token_file" --t0 "$restart_t0" \
  --audit-dir "$work/audit-resume" --job "$job" --timeout "$step_timeout" >"$work/resume-after.json" ||
  { log "resume: the job did not finish within $step_timeout s after the restart; log: $(tail -5 "$work/resume.log")"; exit 1; }
log "after the restart: $(cat "$work/resume-after.json")"
[ "$(jget "$work/resume-before.json" state)" = running ] ||
  log "WARNING: the export finished before it could be killed"
# The restarted node's "export job claimed" log line: when the job was taken over.
claim_s=$(python3 -c 'import json,sys,datetime
t0=float(sys.argv[2]); out=""
for line in open(sys.argv[1]):
    try: r=json.loads(line)
    except ValueError: continue
    if r.get("message")=="export job claimed" and r.get("job")==sys.argv[3]:
        t=datetime.datetime.fromisoformat(r["timestamp"].replace("Z","+00:00")).timestamp()
        if t>=t0: out=round(t-t0,2); break
print(out)' "$work/resume.log" "$restart_t0" "$job")
[ "$(jget "$work/resume-after.json" manifest_resources)" = "$expected" ] ||
  log "WARNING: the resumed export's manifest counts $(jget "$work/resume-after.json" manifest_resources) resources, expected $expected"
stop "$fw_pid"

# ---------------------------------------------------------------- 4. throughput (Medplum)
mp_note=""
mp_ran=""
mp_node=tests/medplum/node_modules/.bin/node
start_medplum() { # N -> mp_pid, mp_load_s; 1 when it did not come up in time
  python3 bench/export-data.py --patients "$1" --out "$work/mp-data.ndjson" 2>/dev/null
  : >"$work/medplum.out"
  local t0=$SECONDS
  (cd tests/medplum && exec node_modules/.bin/node server.mjs --port $mp_port --quiet \
     --data "$work/mp-data.ndjson" >"$work/medplum.out" 2>"$work/medplum.err" </dev/null) &
  mp_pid=$!; pids+=("$mp_pid")
  local deadline=$((SECONDS + mp_load_timeout))
  until grep -q '^READY' "$work/medplum.out"; do
    if ! kill -0 "$mp_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      mp_load_s=$((SECONDS - t0)); return 1
    fi
    sleep 0.5
  done
  mp_load_s=$((SECONDS - t0))
}
if [ -n "${SKIP_MEDPLUM:-}" ]; then
  mp_note="Medplum step skipped (SKIP_MEDPLUM)."
else
  if [ ! -x "$mp_node" ]; then (cd tests/medplum && npm ci --no-audit --no-fund >&2) || true; fi
  if [ ! -x "$mp_node" ]; then
    mp_note="Medplum step not run: tests/medplum/node_modules/.bin/node is missing and npm ci failed."
  else
    mp_n=$mp_patients
    log "Medplum: loading $mp_n patients"
    if ! start_medplum "$mp_n"; then
      mp_note="Medplum did not load $mp_n patients within $mp_load_timeout s ($(tail -2 "$work/medplum.err" | tr '\n' ' '))."
      stop "$mp_pid"
    else
      mp_base=http://127.0.0.1:$mp_port/fhir
      log "Medplum loaded $mp_n patients in $mp_load_s s; probing one batch"
      if timeout $((mp_budget + 30)) $client baseline --base "$mp_base" --group $group --types $types \
          --batch 50 --concurrency 2 --max-batches 1 --timeout "$mp_budget" >"$work/mp-probe.json"; then
        probe_s=$(jget "$work/mp-probe.json" seconds)
      else
        probe_s=$mp_budget
      fi
      all_batches=$(( (mp_n + 49) / 50 ))
      estimate=$(calc "round($probe_s * $all_batches)")
      mp_note="Medplum loaded $mp_n patients in $mp_load_s s; one batch of 50 patients (all types) took ${probe_s} s to search directly."
      if [ "$estimate" -gt "$mp_budget" ]; then
        new_n=$(calc "max(50, int($mp_n * ($mp_budget / $estimate) ** 0.5) // 50 * 50)")
        mp_note="$mp_note Its search is a linear scan, so the baseline alone would take ~${estimate} s for $all_batches batches (> MEDPLUM_BUDGET_S = $mp_budget s), and fhirwall's export as long again: NOT measured with $mp_n patients; measured with $new_n patients instead (time grows with N^2)."
        log "$mp_note"
        stop "$mp_pid"
        mp_n=$new_n
        if start_medplum "$mp_n"; then
          mp_note="$mp_note Medplum loaded $mp_n patients in $mp_load_s s."
        else
          mp_note="$mp_note Medplum did not come up with $mp_n patients."; mp_n=""
        fi
      fi
      if [ -n "$mp_n" ]; then
        mp_expected=$((mp_n * 30))
        fw_config medplum 19340 "$mp_base" "upstream_rps = 100000"
        start_fw medplum 19340
        log "Medplum baseline ($mp_n patients)"
        if timeout $((mp_budget * 3)) $client baseline --base "$mp_base" --group $group --types $types \
            --batch 50 --concurrency 2 --timeout $((mp_budget * 3)) >"$work/mp-base.json" &&
           log "$(cat "$work/mp-base.json")" && log "Medplum: fhirwall export" &&
           timeout $((mp_budget * 3)) $client fhirwall --base http://127.0.0.1:19340/fhir --token-file "$token_file" \
            --group $group --types $types --pid "$fw_pid" --audit-dir "$work/audit-medplum" \
            --timeout $((mp_budget * 3)) >"$work/mp-fw.json"; then
          log "$(cat "$work/mp-fw.json")"
          mp_ran=1
        else
          mp_note="$mp_note The Medplum run with $mp_n patients did not finish within $((mp_budget * 3)) s per step."
        fi
        stop "$fw_pid"
      fi
      stop "$mp_pid"
    fi
  fi
fi

# ---------------------------------------------------------------- report
row() { # upstream patients base.json fw.json
  local b=$3 f=$4
  local br fr
  br=$(jget "$b" resources_per_s); fr=$(jget "$f" job_resources_per_s)
  # No export-complete audit record found: the client-seen rate instead.
  [ -n "$fr" ] || fr=$(jget "$f" resources_per_s)
  printf '| %s | %s | %s / %s | %s | %s | %s | %s %% | %s | %s |\n' "$1" "$2" \
    "$(jget "$b" resources)" "$(jget "$f" resources)" \
    "$(jget "$b" seconds)" "$(jget "$f" job_seconds)" "$br / $fr" \
    "$(calc "round(100 * (1 - $fr / $br), 1)")" "$(jget "$f" seconds)" "$(jget "$f" download_seconds)"
}
version=$("$bin" --version 2>/dev/null || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (uncommitted changes)" || true)
echo
echo "## fhirwall export benchmark, $(date -u +%F), commit \`$commit\`$dirty, \`$bin\` ($version)"
echo
echo "Command: \`$command\`"
echo
echo "Throughput: batches of 50 patients, concurrency 2, types $types; fhirwall with upstream_rps = 100000."
echo "Overhead = 1 - fhirwall's rate (resources / job time: kick-off to its export-complete audit record) / the direct rate."
echo
echo '| upstream | patients | resources direct / via fhirwall | direct s | fhirwall job s | resources/s direct / fhirwall | overhead | client-seen s (polls) | download s |'
echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|'
row sandbox "$patients" "$work/sb-base.json" "$work/sb-fw.json"
if [ -n "$mp_ran" ]; then row Medplum "$mp_n" "$work/mp-base.json" "$work/mp-fw.json"; fi
[ -z "$mp_note" ] || { echo; echo "Medplum: $mp_note"; }
echo
echo "fhirwall memory during the sandbox export (VmRSS every 0.5 s; VmHWM after it):"
echo
echo '| patients | RSS at start MB | RSS quartiles of the run MB | peak VmRSS MB | VmHWM MB |'
echo '|---:|---:|---:|---:|---:|'
printf '| %s | %s | %s | %s | %s |\n' "$patients" "$(jget "$work/sb-fw.json" rss_start_mb)" \
  "$(python3 -c 'import json,sys; print(" / ".join(map(str, json.load(open(sys.argv[1])).get("rss_quartiles_mb", []))))' "$work/sb-fw.json")" \
  "$(jget "$work/sb-fw.json" rss_max_mb)" "$(jget "$work/sb-fw.json" hwm_mb)"
if [ -n "$mp_ran" ]; then
  printf '| %s (Medplum) | %s | %s | %s | %s |\n' "$mp_n" "$(jget "$work/mp-fw.json" rss_start_mb)" \
    "$(python3 -c 'import json,sys; print(" / ".join(map(str, json.load(open(sys.argv[1])).get("rss_quartiles_mb", []))))' "$work/mp-fw.json")" \
    "$(jget "$work/mp-fw.json" rss_max_mb)" "$(jget "$work/mp-fw.json" hwm_mb)"
fi
echo
echo "On-demand latency (wrk -t2 -c$wrk_conns -d${wrk_duration}s, bench-ehr token), idle and while exports of the Group run with the default upstream_rps = 100 ($load_alive; $lat_exports completed in the window):"
echo
echo '| request | idle req/s | idle p50 / p99 ms | during export req/s | during p50 / p99 ms | p99 during / idle | non-2xx idle / during |'
echo '|---|---:|---:|---:|---:|---:|---:|'
printf '| read `Patient/bench-000001` | %s | %s / %s | %s | %s / %s | %sx | %s / %s |\n' "$ir_rps" "$ir_p50" "$ir_p99" \
  "$er_rps" "$er_p50" "$er_p99" "$(calc "round($er_p99 / $ir_p99, 2)")" "$ir_bad" "$er_bad"
printf '| search `Observation?subject=Patient/bench-000001&_count=20` (18 entries) | %s | %s / %s | %s | %s / %s | %sx | %s / %s |\n' \
  "$is_rps" "$is_p50" "$is_p99" "$es_rps" "$es_p50" "$es_p99" "$(calc "round($es_p99 / $is_p99, 2)")" "$is_bad" "$es_bad"
echo
echo "Resume after kill -9 (lease_s = 5, upstream_rps = $resume_rps; killed at X-Progress $(jget "$work/resume-before.json" done)/$(jget "$work/resume-before.json" total) patients):"
echo
echo '| restart to ready s | restart to job claimed s (log) | restart to progress moving s (audit: first export-batch / poll) | restart to done s (audit / poll) | resources in the manifest / expected |'
echo '|---:|---:|---:|---:|---:|'
printf '| %s | %s | %s / %s | %s / %s | %s / %s |\n' "$ready_s" "$claim_s" \
  "$(jget "$work/resume-after.json" audit_first_batch_s)" "$(jget "$work/resume-after.json" first_move_s)" \
  "$(jget "$work/resume-after.json" audit_done_s)" "$(jget "$work/resume-after.json" done_s)" \
  "$(jget "$work/resume-after.json" manifest_resources)" "$expected"
