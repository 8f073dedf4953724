#!/usr/bin/env bash
# Instructions per unary call (64 B echo, 64 calls in flight), counted by callgrind: a
# figure that, unlike CPU time, does not move with the machine's other tenants.
#
#   bash benches/callgrind_per_call.sh KIND SIDE [BIN]
#
# KIND is a `meridian-bench list` kind (quinn, meridian, ...); SIDE is `server` or
# `client`: that process runs under callgrind, the other one natively. Each side is run
# twice, with a 1 s and a 3 s load after the 0.5 s warm-up, and the difference of the
# instruction totals is divided by the difference of the calls, so start-up, the handshake
# and the warm-up cancel out. Under callgrind the measured side is some 50x slower, so its
# calls batch more than at full speed: compare kinds with each other, measured the same way.
set -euo pipefail
kind=${1:?usage: callgrind_per_call.sh KIND server|client [BIN]}
side=${2:?usage: callgrind_per_call.sh KIND server|client [BIN]}
bin=${3:-target/release/meridian-bench}
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "<instructions> <calls in all>".
run() {
    local millis=$1 vg_server=() vg_client=()
    local vg=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-line=no)
    if [ "$side" = server ]; then vg_server=("${vg[@]}"); else vg_client=("${vg[@]}"); fi
    coproc SERVER { exec "${vg_server[@]}" "$bin" serve "$kind" 2>"$work/server.err"; }
    local listen addr cert
    read -r listen addr cert <&"${SERVER[0]}"
    [ "$listen" = LISTEN ] || { echo "no LISTEN line from the server" >&2; exit 1; }
    "${vg_client[@]}" "$bin" load "$kind" "$addr" "$cert" "$millis" >"$work/client.out" 2>"$work/client.err"
    exec {SERVER[1]}>&-
    wait
    local total calls
    total=$(grep -a '^totals:\|^summary:' "$work/cg.out" | head -1 | awk '{print $2}')
    calls=$(grep -a '^CALLS' "$work/client.out" | awk '{print $3}')
    echo "$total $calls"
}

read -r i1 c1 < <(run 1000)
read -r i3 c3 < <(run 3000)
[ "$c3" -gt "$c1" ] || { echo "the longer run made no more calls ($c1, $c3)" >&2; exit 1; }
echo "$kind $side: $(( (i3 - i1) / (c3 - c1) )) instructions per call ($c1 and $c3 calls)"
