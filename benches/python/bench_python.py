"""`client.add(10, 5)` from Python: Meridian vs grpcio, unary, same machine, same run.

Each server runs in its own process (started by this script, on loopback); the client
side measures per-call latency (p50, p99) and calls/s from 1 thread and from 8 threads.
Both servers run at once and the two stacks take turns, ``--rounds`` batches each per
thread count (the stack that goes first alternates), so that a slow stretch of the
machine falls on both alike rather than on whichever stack it came in.

- Meridian: ``RPCServer`` with ``@server.rpc def add(a, b)``, client ``RPCClient`` with
  explicit endpoints; arguments as Meridian values, QUIC with TLS 1.3.
- grpcio: a generic handler (no protoc) for ``/bench.Bench/add`` with identity byte
  serializers; the arguments packed by hand with ``struct`` (cheaper than any generic
  encoding), over a plaintext HTTP/2 channel. Both choices favour grpcio.

Usage: python benches/python/bench_python.py [--calls N] [--threads 1,8] [--rounds 8]
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


def batch(call: Callable[[], None], calls: int, threads: int) -> Tuple[List[int], float]:
    """Runs `calls` calls split over `threads` threads; returns each call's time in ns and
    the seconds the batch took."""
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
    return [x for s in samples for x in s], elapsed


def summary(lat: List[int], elapsed: float) -> Tuple[float, float, float]:
    """(p50 µs, p99 µs, calls/s) of call times in ns over `elapsed` seconds of batches."""
    lat = sorted(lat)
    p50 = lat[len(lat) // 2] / 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000
    return p50, p99, len(lat) / elapsed


def in_turns(
    stacks: List[Tuple[str, Callable[[], None]]], calls: int, threads: int, rounds: int
) -> List[Tuple[str, int, float, float, float]]:
    """`calls` calls on each stack from `threads` threads, in `rounds` batches with the
    stacks taking turns (the first moves along by one each round)."""
    lat: List[List[int]] = [[] for _ in stacks]
    elapsed = [0.0 for _ in stacks]
    per_round = max(threads, calls // rounds)
    for r in range(rounds):
        for step in range(len(stacks)):
            k = (r + step) % len(stacks)
            got, took = batch(stacks[k][1], per_round, threads)
            lat[k].extend(got)
            elapsed[k] += took
    return [(name, threads, *summary(lat[k], elapsed[k])) for k, (name, _) in enumerate(stacks)]


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
    parser.add_argument("--rounds", type=int, default=8, help="batches per stack and thread count")
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
    if opts.rounds < 1 or opts.calls < 1 or min(thread_counts) < 1:
        parser.error("--calls, --rounds and every thread count must be at least 1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _native._write_dev_certificates(tmp)

        meridian_child, meridian_port = start_child(
            ["--serve", "meridian", "--cert", cert, "--key", key]
        )
        grpc_child = None
        try:
            grpc_child, grpc_port = start_child(["--serve", "grpc"])
            client = RPCClient(
                regions={"bench": [f"127.0.0.1:{meridian_port}"]}, roots=ca, timeout=10
            )
            assert client.add(10, 5) == 15
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            add = channel.unary_unary("/bench.Bench/add")
            request = PAIR.pack(10, 5)
            assert ONE.unpack(add(request, timeout=10))[0] == 15

            def meridian_call() -> None:
                client.add(10, 5)

            def grpc_call() -> None:
                ONE.unpack(add(request, timeout=10))

            stacks = [("Meridian", meridian_call), ("grpcio", grpc_call)]
            for _, call in stacks:
                for _ in range(500):
                    call()
            for n in thread_counts:
                results.extend(in_turns(stacks, opts.calls, n, opts.rounds))
            client.close()
            channel.close()
        finally:
            stop_child(meridian_child)
            if grpc_child is not None:
                stop_child(grpc_child)
    results.sort(key=lambda r: (r[0] != "Meridian", r[1]))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}".rstrip(", "))
    print(f"python {platform.python_version()}, meridian {meridian.__version__}, grpcio {grpc.__version__}")
    print(
        f"{opts.calls} calls per row after 500 warm-up calls, in {opts.rounds} batches with the"
        " stacks taking turns; each server in a separate process"
    )
    print()
    print("| stack | threads | p50 (µs) | p99 (µs) | calls/s |")
    print("|---|---:|---:|---:|---:|")
    for name, n, p50, p99, rate in results:
        print(f"| {name} | {n} | {p50:.0f} | {p99:.0f} | {rate:,.0f} |")
    print()
    by = {(name, n): (p50, rate) for name, n, p50, _, rate in results}
    for n in thread_counts:
        (mp50, mrate), (gp50, grate) = by[("Meridian", n)], by[("grpcio", n)]
        print(
            f"{n} thread(s): Meridian / grpcio p50 {mp50 / gp50:.2f}x, calls/s {mrate / grate:.2f}x"
        )


if __name__ == "__main__":
    main()
