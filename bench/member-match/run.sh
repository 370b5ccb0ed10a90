#!/usr/bin/env bash
# Matching-quality benchmark of a matcher plugin (default: the default matcher):
# generate the population and queries (deterministic per seed; skipped when
# present), run them through `fhirwall match`, score precision / recall /
# false positives, recall without a usable id, per perturbation, throughput.
#
#   bench/member-match/run.sh [PLUGIN.wasm]
#   SEED=20270107 MEMBERS=100000 QUERIES=20000 bench/member-match/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
plugin=${1:-plugins/dist/default_matcher.wasm}
members=${MEMBERS:-100000}
queries=${QUERIES:-20000}
seed=${SEED:-20270107}
data=${DATA:-bench/member-match/data/seed-$seed-$members-$queries}
stamp="$data/.generated"
if [ ! -f "$stamp" ] || [ bench/member-match/generate.py -nt "$stamp" ]; then
  python3 bench/member-match/generate.py --seed "$seed" --members "$members" --queries "$queries" --out "$data"
  touch "$stamp"
fi
[ -f "$plugin" ] || bash plugins/build.sh
bin=${FHIRWALL_BIN:-target/release/fhirwall}
[ -x "$bin" ] || cargo build --release
"$bin" match --plugin "$plugin" --members "$data/members.ndjson" --queries "$data/queries.ndjson" \
  > "$data/results.ndjson" 2> "$data/match.log" || { cat "$data/match.log" >&2; exit 1; }
cat "$data/match.log" >&2
python3 bench/member-match/score.py "$data/truth.ndjson" "$data/results.ndjson" "$data/match.log"
