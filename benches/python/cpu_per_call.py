"""CPU time and voluntary thread switches per `client.add(10, 5)`, in the client process and
in the server process, for Meridian and grpcio, from one or more calling threads.

The client's counts come from getrusage(RUSAGE_SELF), which keeps the time of threads that
have ended (the calling threads end before the second reading); the server's from /proc
(every thread's schedstat and status), so both include the runtime's threads. Thread switches are what dominates a Python
call's cost on a small VM, so this is the figure to watch when changing threading.

Usage: python benches/python/cpu_per_call.py [CALLS] [THREADS]   (default 4000 1;
MERIDIAN_WORKER_THREADS applies)
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from typing import Callable, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_python as bp  # noqa: E402


def proc_stat(pid: int) -> Tuple[int, int]:
    """(CPU ns, voluntary switches) summed over the threads of `pid`."""
    cpu = switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        switches += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread ended meanwhile
    return cpu, switches


def own_stat() -> Tuple[int, int]:
    """(CPU ns, voluntary switches) of this process, threads that ended included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e9), r.ru_nvcsw


def run(name: str, call: Callable[[], None], server_pid: int, calls: int, threads: int) -> None:
    for _ in range(300):
        call()
    c0, s0 = own_stat(), proc_stat(server_pid)
    p50, _, rate = bp.summary(*bp.batch(call, calls, threads))
    c1, s1 = own_stat(), proc_stat(server_pid)
    print(
        f"| {name} | {p50:.0f} | {rate:,.0f} | {(c1[0] - c0[0]) / calls / 1000:.0f} | "
        f"{(c1[1] - c0[1]) / calls:.1f} | {(s1[0] - s0[0]) / calls / 1000:.0f} | "
        f"{(s1[1] - s0[1]) / calls:.1f} |"
    )


def main() -> None:
    import grpc

    from meridian import RPCClient, _native

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print(f"{calls} calls from {threads} thread(s); runtime workers: {_native._runtime_workers()}")
    print(
        "| stack | p50 µs | calls/s | client CPU µs/call | client switches "
        "| server CPU µs/call | server switches |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _native._write_dev_certificates(tmp)
        child, port = bp.start_child(["--serve", "meridian", "--cert", cert, "--key", key])
        try:
            client = RPCClient(regions={"bench": [f"127.0.0.1:{port}"]}, roots=ca, timeout=10)
            run("Meridian", lambda: client.add(10, 5), child.pid, calls, threads)
            client.close()
        finally:
            bp.stop_child(child)
        child, port = bp.start_child(["--serve", "grpc"])
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            add = channel.unary_unary("/bench.Bench/add")
            request = bp.PAIR.pack(10, 5)
            run("grpcio", lambda: bp.ONE.unpack(add(request, timeout=10)), child.pid, calls, threads)
            channel.close()
        finally:
            bp.stop_child(child)


if __name__ == "__main__":
    main()
