"""fork(): children made with multiprocessing's "fork" start method.

A forked child has only the thread that forked, and it shares the parent's epoll instance.
The module gives the child a runtime of its own on first use and leaves what it inherited
alone, so a child can call (with a new client or the parent's), serve, and exit without
hanging and without disturbing the parent.

Every child runs under a bounded join; one still alive then is killed and the test fails.
"""

import asyncio
import multiprocessing
import os
import threading
import time

import pytest

import meridian
from meridian import AsyncRPCClient, RPCClient

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns that forking a multi-threaded process may deadlock; avoiding
    # that deadlock is what these tests check.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

FORK = multiprocessing.get_context("fork")
CHILD_LIMIT = 30.0


def run_in_child(target, *args):
    """Runs ``target(*args)`` in a forked child; returns what it returned, re-raising
    (as an AssertionError naming it) what it raised. Fails if the child hangs."""
    parent_end, child_end = FORK.Pipe(duplex=False)

    def main():
        try:
            child_end.send(("ok", target(*args)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            child_end.send(("err", f"{type(e).__name__}: {e}"))

    child = FORK.Process(target=main, daemon=True)
    child.start()
    # Only the child writes: a child that dies without answering then reads as EOF.
    child_end.close()
    try:
        if not parent_end.poll(CHILD_LIMIT):
            raise AssertionError(f"the forked child gave no answer within {CHILD_LIMIT} s")
        try:
            kind, value = parent_end.recv()
        except EOFError:
            child.join(5)
            raise AssertionError(
                f"the forked child died without answering (exit code {child.exitcode})"
            ) from None
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
    assert child.exitcode == 0, f"child exit code {child.exitcode}"
    if kind == "err":
        raise AssertionError(f"in the child: {value}")
    return value


_POOL_STATE = {}


def _pool_child(n):
    # A new client (its sockets registered from the child) and the inherited one.
    own = RPCClient(_POOL_STATE["region"], timeout=5)
    return sum(own.add(n, i) for i in range(20)) + _POOL_STATE["client"].add(n, 0)


@pytest.fixture
def served(make_server, region):
    server = make_server(region)

    @server.rpc
    def add(a, b):
        return a + b

    @server.rpc
    def pid():
        return os.getpid()

    @server.rpc
    async def async_add(a, b):
        await asyncio.sleep(0)
        return a + b

    @server.rpc
    def count(n, pause):
        for i in range(n):
            time.sleep(pause)
            yield i

    return server


def test_a_new_client_in_a_child_calls_the_parents_server(served, region):
    parent = RPCClient(region, timeout=10)
    # The parent has a runtime with live connections when it forks.
    assert parent.add(1, 2) == 3

    def child():
        client = RPCClient(region, timeout=5)
        return client.add(20, 22), client.pid(), client.async_add(1, 1)

    assert run_in_child(child) == (42, os.getpid(), 2)
    # The parent goes on calling and serving.
    assert parent.add(2, 3) == 5
    assert RPCClient(region, timeout=10).add(3, 4) == 7


def test_an_inherited_client_reconnects_in_the_child(served, region):
    client = RPCClient(region, timeout=5)
    aclient = AsyncRPCClient(region, timeout=5)
    assert client.add(1, 1) == 2
    assert asyncio.run(aclient.add(1, 1)) == 2

    def child():
        started = time.monotonic()
        sync_result = client.add(5, 6)
        async_result = asyncio.run(aclient.add(7, 8))
        client.close()
        return sync_result, async_result, client.add(1, 0), time.monotonic() - started

    sync_result, async_result, after_close, elapsed = run_in_child(child)
    assert (sync_result, async_result, after_close) == (11, 15, 1)
    assert elapsed < 5
    # The parent's client was left alone by the child.
    assert client.add(2, 2) == 4
    assert asyncio.run(aclient.add(2, 2)) == 4


def test_a_stream_opened_before_fork_raises_in_the_child(served, region):
    client = RPCClient(region, timeout=10)
    stream = client.stream("count", 5, 0.05)
    assert next(stream) == 0

    def child():
        started = time.monotonic()
        try:
            next(stream)
        except RuntimeError as e:
            stream.cancel()  # a no-op in the child, not a hang
            return str(e), time.monotonic() - started
        return "no error", 0.0

    message, elapsed = run_in_child(child)
    assert "before fork()" in message
    assert elapsed < 1
    # The parent's stream is untouched.
    assert list(stream) == [1, 2, 3, 4]


def test_several_children_and_a_busy_parent(served, region):
    client = RPCClient(region, timeout=10)
    assert client.add(0, 0) == 0
    stop = threading.Event()
    parent_results = []
    parent_errors = []

    def keep_calling():
        i = 0
        while not stop.is_set():
            try:
                parent_results.append(client.add(i, 1) == i + 1)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                parent_errors.append(e)
            i += 1

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:

        # Pool workers are forked after this: they inherit the region and the client.
        _POOL_STATE.update(region=region, client=client)
        with FORK.Pool(3) as pool:
            got = pool.map_async(_pool_child, range(6)).get(CHILD_LIMIT)
        assert got == [20 * n + 190 + n for n in range(6)]
    finally:
        stop.set()
        caller.join(10)
    assert not parent_errors
    assert parent_results and all(parent_results)
    assert client.add(1, 1) == 2


def test_a_child_serves_on_its_own(served, region):
    # The parent's async handler loop is running when it forks.
    assert RPCClient(region, timeout=10).async_add(1, 2) == 3
    child_region = region + "-child"

    def child():
        server = meridian.RPCServer(child_region)

        @server.rpc
        async def child_mul(a, b):
            await asyncio.sleep(0)
            return a * b

        try:
            client = RPCClient(child_region, timeout=5)
            return client.child_mul(6, 7), client.call("pid"), server.port is not None
        finally:
            server.stop(grace=0.5)

    assert run_in_child(child) == (42, os.getpid(), True)


def test_an_inherited_server_in_the_child(served, region):
    parent_port = served.port

    def child():
        # The parent's server object: stopping it in the child only forgets it there...
        started = time.monotonic()
        served.stop(grace=0.5)
        stopped_in = time.monotonic() - started

        # ...and registering on it serves from the child, on a port of its own.
        @served.rpc
        def child_only():
            return os.getpid()

        try:
            return stopped_in, served.port, RPCClient(region, timeout=5).child_only()
        finally:
            served.stop(grace=0.5)

    stopped_in, child_port, child_pid = run_in_child(child)
    assert stopped_in < 1
    assert child_port not in (None, parent_port)
    assert child_pid != os.getpid()
    # The parent's server still serves, on its own port, without the child's method.
    assert served.port == parent_port
    client = RPCClient(region, timeout=10)
    assert client.add(4, 4) == 8
    assert "child_only" not in served.methods
