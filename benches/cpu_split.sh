#!/usr/bin/env bash
# How busy each process is during the throughput phase: the server (`serve KIND`, on CPU
# 1) and the load (`load KIND`, 64 calls in flight, on CPU 0) for MILLIS, with the CPU
# time each used from /proc/<pid>/stat. Neither near 100% means calls/s is bounded by the
# turns the two take (a batch of requests, then a batch of answers), not by one side.
#
#   bash benches/cpu_split.sh KIND [MILLIS]
set -euo pipefail
kind=${1:?usage: cpu_split.sh KIND [MILLIS]}
millis=${2:-3000}
bin=target/release/meridian-bench
tick=$(getconf CLK_TCK)
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
coproc SERVER { exec taskset -c 1 "$bin" serve "$kind" 2>/dev/null; }
spid=$SERVER_PID
read -r listen addr cert <&"${SERVER[0]}"
[ "$listen" = LISTEN ] || { echo "no LISTEN line from the server" >&2; exit 1; }
s0=$(cpu_of "$spid")
taskset -c 0 "$bin" load "$kind" "$addr" "$cert" "$millis" >"/tmp/cpu_split.$$" &
lpid=$!
l_cpu=0
while kill -0 "$lpid" 2>/dev/null; do
    l_cpu=$(cpu_of "$lpid" 2>/dev/null || echo "$l_cpu")
    sleep 0.05
done
wait "$lpid"
s1=$(cpu_of "$spid")
exec {SERVER[1]}>&-
wait
read -r _ calls total <"/tmp/cpu_split.$$"
rm -f "/tmp/cpu_split.$$"
awk -v k="$kind" -v c="$calls" -v t="$total" -v ms="$millis" -v l="$l_cpu" -v s=$((s1 - s0)) -v hz="$tick" 'BEGIN {
    printf "%s: %d calls/s; load process CPU %.2f s (%.1f us/call), server CPU %.2f s (%.1f us/call), over %d calls with warm-up\n",
        k, c / (ms / 1000), l / hz, l / hz / t * 1e6, s / hz, s / hz / t * 1e6, t }'
