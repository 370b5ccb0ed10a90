#!/usr/bin/env bash
# Build every fuzz target (fuzz/fuzz_targets/*.rs) and run each for a
# bounded time over a copy of its checked-in corpus (fuzz/corpus/<target>/,
# which is never grown here). Fails when a target finds a crash, a panic, a
# broken invariant, a timeout or runaway memory; the input is printed
# (base64) and kept under fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh [seconds-per-target]    (default 20)
#
# Stable toolchain only: libFuzzer's coverage instrumentation comes from
# plain -C flags (fuzz/rustc-sancov.sh), so neither nightly nor cargo-fuzz
# is needed. Targets run side by side, FUZZ_JOBS at a time (default: one per
# core).
#
# The build goes to FUZZ_TARGET_DIR, else (CI=true) to a cache outside the
# clone, ~/.cache/fhirwall/fuzz-target: CI starts from a fresh clone, and
# with the cache only fhirwall and the targets are compiled again on a
# machine that ran this before; else to fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-20}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "usage: bash scripts/fuzz.sh [seconds-per-target]" >&2
    exit 2
fi
jobs=${FUZZ_JOBS:-$(nproc)}
if [[ -n ${FUZZ_TARGET_DIR:-} ]]; then
    target_dir=$FUZZ_TARGET_DIR
elif [[ ${CI:-} == true ]]; then
    target_dir=${XDG_CACHE_HOME:-$HOME/.cache}/fhirwall/fuzz-target
else
    target_dir=$root/fuzz/target
fi
# Cargo does not see what the wrapper adds: after changing
# fuzz/rustc-sancov.sh, delete the target dir.
wrapper=$root/fuzz/rustc-sancov.sh
host=$(rustc -vV | sed -n 's/^host: //p')
mapfile -t targets < <(sed -n 's/^path = "fuzz_targets\/\(.*\)\.rs"$/\1/p' fuzz/Cargo.toml)

if ! (cd fuzz && cargo metadata --locked --format-version 1 >/dev/null 2>&1); then
    echo "fuzz/Cargo.lock does not fit fuzz/Cargo.toml and the gateway's dependencies." >&2
    echo "Refresh it from the root lock and commit it:" >&2
    echo "  cp Cargo.lock fuzz/Cargo.lock && (cd fuzz && cargo metadata --format-version 1 >/dev/null)" >&2
    exit 1
fi

echo "building ${#targets[@]} fuzz targets (${targets[*]})"
started=$SECONDS
(
    cd fuzz
    # --target keeps the flags off build scripts and proc macros.
    RUSTFLAGS="--cfg fuzzing" RUSTC_WRAPPER="$wrapper" CARGO_TARGET_DIR="$target_dir" \
        cargo build --release --locked --bins --target "$host"
)
echo "built in $((SECONDS - started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_target() {
    local target=$1
    local dir="$work/$target"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    if [[ -d fuzz/corpus/$target ]]; then
        cp -R "fuzz/corpus/$target/." "$dir/corpus/"
    fi
    local dict=()
    if [[ -f fuzz/$target.dict ]]; then
        dict=("-dict=fuzz/$target.dict")
    fi
    local status=0
    "$target_dir/$host/release/$target" "$dir/corpus" "${dict[@]}" \
        -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$dir/artifacts/" -print_final_stats=1 >"$dir/log" 2>&1 || status=$?
    echo "$status" >"$dir/status"
}

started=$SECONDS
running=0
for target in "${targets[@]}"; do
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    run_target "$target" &
    running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
    dir="$work/$target"
    status=$(cat "$dir/status" 2>/dev/null || echo "?")
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
    coverage=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -n 1 || true)
    if [[ $status == 0 ]]; then
        echo "fuzz $target: ok, ${runs:-?} inputs in ${seconds} s (${coverage:-cov: ?})"
        continue
    fi
    failed+=("$target")
    echo "fuzz $target: FAILED (libFuzzer exit status $status)"
    tail -n 60 "$dir/log" | sed 's/^/    /'
    for artifact in "$dir"/artifacts/*; do
        [[ -f $artifact ]] || continue
        mkdir -p "fuzz/artifacts/$target"
        cp "$artifact" "fuzz/artifacts/$target/"
        echo "    input kept as fuzz/artifacts/$target/$(basename "$artifact"); base64:"
        head -c 65536 "$artifact" | base64 -w 0 | sed 's/^/    /'
        echo
        echo "    reproduce: $target_dir/$host/release/$target fuzz/artifacts/$target/$(basename "$artifact")"
    done
done
echo "fuzzing took $((SECONDS - started)) s"
if ((${#failed[@]} > 0)); then
    echo "fuzz targets with findings: ${failed[*]}" >&2
    exit 1
fi
