"""`client.add(10, 5)` from Python: Meridian vs grpcio, unary, same machine, same run.

Each server runs in its own process (started by this script, on loopback); the client
side measures per-call latency (p50, p99) and calls/s from 1 thread and from 8 threads.

- Meridian: ``RPCServer`` with ``@server.rpc def add(a, b)``, client ``RPCClient`` with
  explicit endpoints; arguments as Meridian values, QUIC with TLS 1.3.
- grpcio: a generic handler (no protoc) for ``/bench.Bench/add`` with identity byte
  serializers; the arguments packed by hand with ``struct`` (cheaper than any generic
  encoding), over a plaintext HTTP/2 channel. Both choices favour grpcio.

Usage: python benches/python/bench_python.py [--calls N] [--threads 1,8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from typing import Callable, List, Tuple

PAIR = struct.Struct("<qq")
ONE = struct.Struct("<q")


# -- servers (run as child processes) --------------------------------------------------


def serve_meridian(cert: str, key: str) -> None:
    from meridian import RPCServer

    server = RPCServer("bench", certs=(cert, key))

    @server.rpc
    def add(a, b):
        return a + b

    print(server.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(grace=1)


def serve_grpc() -> None:
    import grpc

    def add(request: bytes, context) -> bytes:
        a, b = PAIR.unpack(request)
        return ONE.pack(a + b)

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "add": grpc.unary_unary_rpc_method_handler(
                add, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(1)


# -- measurement -----------------------------------------------------------------------


def measure(call: Callable[[], None], calls: int, threads: int) -> Tuple[float, float, float]:
    """Runs `calls` calls split over `threads` threads; returns (p50 µs, p99 µs, calls/s)."""
    per_thread = calls // threads
    samples: List[List[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(out: List[int]) -> None:
        barrier.wait()
        clock = time.perf_counter_ns
        for _ in range(per_thread):
            t0 = clock()
            call()
            out.append(clock() - t0)

    pool = [threading.Thread(target=worker, args=(samples[i],)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    lat = sorted(x for s in samples for x in s)
    p50 = lat[len(lat) // 2] / 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000
    return p50, p99, len(lat) / elapsed


def start_child(args: List[str]) -> Tuple[subprocess.Popen, int]:
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    return child, port


def stop_child(child: subprocess.Popen) -> None:
    assert child.stdin is not None
    child.stdin.close()
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=8000, help="calls per measurement")
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--serve", choices=["meridian", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    opts = parser.parse_args()
    if opts.serve == "meridian":
        return serve_meridian(opts.cert, opts.key)
    if opts.serve == "grpc":
        return serve_grpc()

    import grpc

    import meridian
    from meridian import RPCClient, _native

    thread_counts = [int(t) for t in opts.threads.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _native._write_dev_certificates(tmp)

        child, port = start_child(["--serve", "meridian", "--cert", cert, "--key", key])
        try:
            client = RPCClient(regions={"bench": [f"127.0.0.1:{port}"]}, roots=ca, timeout=10)
            assert client.add(10, 5) == 15
            for _ in range(500):
                client.add(10, 5)
            for n in thread_counts:
                results.append(("Meridian", n, *measure(lambda: client.add(10, 5), opts.calls, n)))
            client.close()
        finally:
            stop_child(child)

        child, port = start_child(["--serve", "grpc"])
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            add = channel.unary_unary("/bench.Bench/add")
            request = PAIR.pack(10, 5)
            assert ONE.unpack(add(request, timeout=10))[0] == 15

            def grpc_call() -> None:
                ONE.unpack(add(request, timeout=10))

            for _ in range(500):
                grpc_call()
            for n in thread_counts:
                results.append(("grpcio", n, *measure(grpc_call, opts.calls, n)))
            channel.close()
        finally:
            stop_child(child)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}".rstrip(", "))
    print(f"python {platform.python_version()}, meridian {meridian.__version__}, grpcio {grpc.__version__}")
    print(f"{opts.calls} calls per row after 500 warm-up calls; server in a separate process")
    print()
    print("| stack | threads | p50 (µs) | p99 (µs) | calls/s |")
    print("|---|---:|---:|---:|---:|")
    for name, n, p50, p99, rate in results:
        print(f"| {name} | {n} | {p50:.0f} | {p99:.0f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
