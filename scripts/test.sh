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

echo "== cargo test"
cargo test --workspace --locked

echo "== fuzz (20 s per target)"
bash scripts/fuzz.sh 20
