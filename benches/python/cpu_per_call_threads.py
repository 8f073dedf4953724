"""CPU time and voluntary thread switches per `client.add(10, 5)` with several calling
threads (default 8), client and server processes, Meridian and grpcio: the figures behind
the 8-thread calls/s of `bench_python.py`.

Usage: python benches/python/cpu_per_call_threads.py [THREADS] [CALLS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_python as bp  # noqa: E402
from cpu_per_call import proc_stat  # noqa: E402


def run(name: str, call: Callable[[], None], server_pid: int, calls: int, threads: int) -> None:
    for _ in range(300):
        call()
    c0, s0 = proc_stat(os.getpid()), proc_stat(server_pid)
    _, _, rate = bp.measure(call, calls, threads)
    c1, s1 = proc_stat(os.getpid()), proc_stat(server_pid)
    print(
        f"| {name} | {rate:,.0f} | {(c1[0] - c0[0]) / calls / 1000:.0f} | "
        f"{(c1[1] - c0[1]) / calls:.1f} | {(s1[0] - s0[0]) / calls / 1000:.0f} | "
        f"{(s1[1] - s0[1]) / calls:.1f} |"
    )


def main() -> None:
    import grpc

    from meridian import RPCClient, _native

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 16000
    print(f"{calls} calls from {threads} threads; runtime workers: {_native._runtime_workers()}")
    print("| stack | calls/s | client CPU µs/call | client switches | server CPU µs/call | server switches |")
    print("|---|---:|---:|---:|---:|---:|")
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
