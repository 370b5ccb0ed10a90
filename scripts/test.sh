#!/usr/bin/env bash
# Run every test of fhirwall: installs what the tests need (idempotent), then
# formatting, lints, unit tests, end-to-end tests against real processes, and
# a bounded run of every fuzz target.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
bash scripts/setup-test-deps.sh

echo "== synthetic dataset is what its generator writes"
python3 examples/dataset/generate.py --check
echo "== non-interference data is what its generator writes"
python3 tests/noninterference/generate.py --check
python3 scripts/check-docs.py

echo "== the module graph has no import cycles"
python3 scripts/module-cycles.py

echo "== the conformance map names every assertion ID and only tests that exist"
python3 scripts/check-conformance-map.py

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== plugins (guest SDK and plugins, native unit tests; each on its own: one world per build)"
(cd plugins && cargo fmt --all -- --check && cargo test --locked -q -p fhirwall-plugin-sdk --features matcher && for p in default-matcher policy-confidential; do cargo test --locked -q -p "$p"; done)

echo "== cargo test: build"
cargo test --workspace --locked --no-run

# The fuzz targets build and run while the end-to-end tests run: those mostly
# wait on processes and timers, so sharing the cores costs far less than
# running one after the other (its own target dir: no lock on ours).
echo "== fuzz (20 s per target): started in the background, its log follows the tests"
fuzz_log=$(mktemp)
bash scripts/fuzz.sh 20 > "$fuzz_log" 2>&1 &
fuzz_pid=$!
trap 'kill "$fuzz_pid" 2>/dev/null || true' EXIT

echo "== cargo test"
cargo test --workspace --locked

echo "== fuzz: waiting for it"
fuzz_status=0
wait "$fuzz_pid" || fuzz_status=$?
trap - EXIT
cat "$fuzz_log"
if ((fuzz_status != 0)); then
    echo "fuzz failed (exit $fuzz_status)" >&2
    exit "$fuzz_status"
fi
