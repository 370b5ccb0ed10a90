#!/usr/bin/env bash
# Matching-quality benchmark of a matcher plugin (default: the default matcher):
# generate the population and queries (deterministic; skipped when present),
# run them through `fhirwall match`, score precision / recall / false positives.
#
#   bench/member-match/run.sh [PLUGIN.wasm]
#   MEMBERS=100000 QUERIES=14000 bench/member-match/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
plugin=${1:-plugins/dist/default_matcher.wasm}
data=bench/member-match/data
members=${MEMBERS:-100000}
queries=${QUERIES:-14000}
stamp="$data/.generated-$members-$queries"
if [ ! -f "$stamp" ]; then
  python3 bench/member-match/generate.py --members "$members" --queries "$queries" --out "$data"
  touch "$stamp"
fi
[ -f "$plugin" ] || bash plugins/build.sh
bin=${FHIRWALL_BIN:-target/release/fhirwall}
[ -x "$bin" ] || cargo build --release
"$bin" match --plugin "$plugin" --members "$data/members.ndjson" --queries "$data/queries.ndjson" > "$data/results.ndjson"
python3 bench/member-match/score.py "$data/truth.ndjson" "$data/results.ndjson"
