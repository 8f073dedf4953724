#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with cargo-fuzz (libFuzzer + AddressSanitizer, on a
# nightly toolchain) and runs each for a given time. Fails if any target crashes, leaks,
# times out on one input or goes over the memory limit.
#
#   bash scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]
#
#   SECONDS-PER-TARGET  how long each target runs (default 60)
#   TARGET...           which targets (default: all of them, `cargo fuzz list`)
#
# Environment:
#   FUZZ_TOOLCHAIN   the toolchain to build with (default nightly; cargo-fuzz needs one)
#   FUZZ_RSS_MB      libFuzzer's memory limit per process, in MiB (default 2048)
#   FUZZ_MAX_LEN     largest input libFuzzer generates, in bytes (default 65536)
#   FUZZ_BUILD_ONLY  set to 1 to build and stop
#
# Where things go (all ignored by git):
#   fuzz/target            the fuzzers' own cargo target dir (CARGO_TARGET_DIR is ignored,
#                          so the instrumented build never mixes with the main one)
#   fuzz/corpus/TARGET     the corpus, kept and grown from run to run
#   fuzz/artifacts/TARGET  inputs that crashed; replay one with
#                          cargo +nightly fuzz run --fuzz-dir fuzz TARGET FILE
#   fuzz/logs/TARGET.log   libFuzzer's output of the last run
#
# It installs cargo-fuzz (cargo install cargo-fuzz --locked) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
rss_mb="${FUZZ_RSS_MB:-2048}"
max_len="${FUZZ_MAX_LEN:-65536}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [seconds-per-target] [target...]" >&2; exit 2 ;;
esac

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "no $toolchain toolchain: rustup toolchain install $toolchain" >&2
    exit 1
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

fuzz_dir=fuzz
target_dir="$PWD/fuzz/target"
# Same flags for build and run, so `run` finds the build fresh.
# The default profile: optimized, with debug assertions and overflow checks, ASan on.
flags=(--fuzz-dir "$fuzz_dir" --target-dir "$target_dir")

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list --fuzz-dir "$fuzz_dir")
fi

echo "== building ${targets[*]} ($(rustup run "$toolchain" rustc --version))"
start=$(date +%s)
for t in "${targets[@]}"; do
    cargo "+$toolchain" fuzz build "${flags[@]}" "$t"
done
echo "== built in $(($(date +%s) - start)) s"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

mkdir -p fuzz/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    echo "== $t for $secs s (log: $log)"
    rc=0
    cargo "+$toolchain" fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss_mb" -max_len="$max_len" \
        -timeout=20 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    line="$t: ${secs} s, ${execs:-?} execs, corpus $corpus inputs"
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        line="$line, FAILED (exit $rc)"
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' \
            "$log" | head -20 >&2 || true
        tail -30 "$log" >&2
    else
        line="$line, 0 crashes"
    fi
    summary+=("$line")
    echo "$line"
done

echo "== summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}; the inputs are in fuzz/artifacts/" >&2
    exit 1
fi
