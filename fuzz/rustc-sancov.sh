#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz.sh: libFuzzer's coverage instrumentation
# (what cargo-fuzz turns on through RUSTFLAGS for every crate) only for the
# code the targets run and learn from: this repository's crates (fhirwall,
# the targets) and the parsers and token code they drive. The rest of the
# dependency tree (wasmtime, sqlx, object_store, hyper, ...) is only linked:
# instrumenting it would cost build time and add noise to the coverage.
rustc="$1"
shift
crate=""
source=""
target=no
previous=""
for arg in "$@"; do
    [[ $previous == --crate-name ]] && crate=$arg
    [[ $arg == *.rs ]] && source=$arg
    # Cargo passes --target only for what is built for the target (scripts
    # builds with an explicit one): build scripts and proc macros, built for
    # the host, are loaded into the compiler and must stay plain.
    [[ $arg == --target || $arg == --target=* ]] && target=yes
    previous=$arg
done
instrument=no
[[ $target == yes ]] && case "$crate" in
    build_script_*) ;;
    serde_json | jsonwebtoken | percent_encoding | base64) instrument=yes ;;
    *) [[ -n $source && $source != *"/registry/src/"* && $source != *"/git/checkouts/"* ]] && instrument=yes ;;
esac
if [[ $instrument == yes ]]; then
    exec "$rustc" "$@" -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares
fi
exec "$rustc" "$@"
