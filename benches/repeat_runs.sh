#!/usr/bin/env bash
# Runs the harness N times in a row on quinn, meridian and tonic-tls, and prints for each
# run the ratios the #19 goals are stated in: calls/s and p50 of meridian against bare
# quinn, p50 against tonic-tls, and the client's CPU per call against quinn's. This
# machine's speed drifts by more than the differences measured, so goals are judged over
# runs in a row, each ratio taken within one run. Each run also measures the p50 ratios a
# second way, with the kinds taking turns (`meridian-bench latency`), so that a slow
# stretch of the machine falls on all three alike.
#
#   bash benches/repeat_runs.sh [N] [DIR]     (default 3 runs, reports kept in DIR)
#
# Needs `cargo build --release -p meridian-bench`.
set -euo pipefail
n=${1:-3}
dir=${2:-$(mktemp -d)}
bin=target/release/meridian-bench
mkdir -p "$dir"
# Field $col of the first table row for $kind that has $cells cells.
cell() {
    awk -F'|' -v kind="$1" -v cells="$2" -v col="$3" '
        $2 == " " kind " " && NF == cells + 2 { v = $(col + 1); gsub(/[ ,]/, "", v); print v; exit }' "$4"
}
for i in $(seq 1 "$n"); do
    out="$dir/run$i.md"
    "$bin" run --kinds quinn,meridian,tonic-tls >"$out" 2>&1
    qp=$(cell quinn 9 2 "$out"); qc=$(cell quinn 9 5 "$out")
    mp=$(cell meridian 9 2 "$out"); mc=$(cell meridian 9 5 "$out")
    tp=$(cell tonic-tls 9 2 "$out")
    qcpu=$(cell quinn 6 4 "$out"); mcpu=$(cell meridian 6 4 "$out")
    # The same p50 ratios with the kinds taking turns (`meridian-bench latency`).
    lat="$dir/latency$i.md"
    "$bin" latency --kinds quinn,meridian,tonic-tls >"$lat" 2>&1
    pq=$(awk -F'|' '$2 == " meridian " { v = $6; gsub(/[ x]/, "", v); print v }' "$lat")
    pt=$(awk -F'|' '$2 == " meridian " { v = $8; gsub(/[ x]/, "", v); print v }' "$lat")
    awk -v i="$i" -v qp="$qp" -v qc="$qc" -v mp="$mp" -v mc="$mc" -v tp="$tp" \
        -v qcpu="$qcpu" -v mcpu="$mcpu" -v pq="$pq" -v pt="$pt" 'BEGIN {
        printf "run %d: calls/s vs quinn %.2fx, p50 vs quinn %.2fx, p50 vs tonic-tls %.2fx, client CPU/call vs quinn %.2fx; in turns: p50 vs quinn %.2fx, vs tonic-tls %.2fx\n",
            i, mc / qc, mp / qp, mp / tp, mcpu / qcpu, pq, pt }'
done
echo "reports: $dir"
