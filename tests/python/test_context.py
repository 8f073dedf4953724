"""The handler's CallContext without mutual TLS: method, peer address, metadata, deadline,
cancellation, trailers; how handlers ask for it; current_context()."""

import asyncio
import threading
import time

import pytest

import meridian
from meridian import RPCClient


def test_context_gives_metadata_peer_and_method(make_server, region):
    server = make_server(region)

    @server.rpc
    def inspect_call(x, context: meridian.CallContext):
        host, port = context.peer
        return {
            "x": x,
            "method": context.method,
            "host": host,
            "port": port,
            "metadata": context.metadata,
            "identity": context.peer_identity,
            "remaining": context.time_remaining(),
            "cancelled": context.is_cancelled(),
        }

    client = RPCClient(region, timeout=10)
    got = client.call(
        "inspect_call", 7, metadata={"tenant": "acme", "trace-bin": b"\x00\xff", "raw": b"\xff"}
    )
    assert got["x"] == 7
    assert got["method"] == "inspect_call"
    assert got["host"] == "127.0.0.1"
    assert isinstance(got["port"], int) and 0 < got["port"] < 65536
    assert got["port"] != server.port  # the client's port, not the server's
    assert got["metadata"]["tenant"] == "acme"
    assert got["metadata"]["trace-bin"] == b"\x00\xff"
    assert got["metadata"]["raw"] == b"\xff"  # not UTF-8: stays bytes
    assert got["identity"] is None  # no mutual TLS
    assert 0 < got["remaining"] <= 10
    assert got["cancelled"] is False


def test_no_deadline_means_no_time_remaining(make_server, region):
    server = make_server(region)

    @server.rpc
    def remaining(*, context):
        return context.time_remaining()

    assert RPCClient(region, timeout=None).remaining() is None
    assert 0 < RPCClient(region, timeout=10).remaining() <= 10


def test_handlers_without_context_are_called_as_before(make_server, region):
    server = make_server(region)

    @server.rpc
    def add(a, b):
        return a + b

    @server.rpc
    def kw(a, *, scale=1, **rest):
        # A **kwargs handler does not get the context (it has no `context` parameter).
        return [a * scale, sorted(rest)]

    client = RPCClient(region, timeout=10)
    assert client.add(10, 5) == 15
    assert client.kw(2, scale=3, extra=1) == [6, ["extra"]]


def test_current_context_in_sync_async_and_streaming_handlers(make_server, region):
    server = make_server(region)

    def helper():
        # Deep in code the handler calls, with no context passed down.
        return meridian.current_context().metadata.get("who")

    @server.rpc
    def sync_h():
        return helper()

    @server.rpc
    async def async_h():
        await asyncio.sleep(0.01)
        return helper()

    @server.rpc
    def gen_h(n):
        for _ in range(n):
            yield helper()

    @server.rpc
    async def agen_h(n):
        for _ in range(n):
            await asyncio.sleep(0)
            yield helper()

    client = RPCClient(region, timeout=10)
    for who in ("ann", "bob"):
        md = {"who": who}
        assert client.call("sync_h", metadata=md) == who
        assert client.call("async_h", metadata=md) == who
        assert list(client.stream("gen_h", 2, metadata=md)) == [who, who]
        assert list(client.stream("agen_h", 2, metadata=md)) == [who, who]


def test_context_does_not_leak_between_concurrent_async_calls(make_server, region):
    server = make_server(region)

    @server.rpc
    async def echo_who(delay, *, context):
        await asyncio.sleep(delay)
        return [context.metadata["who"], meridian.current_context().metadata["who"]]

    client = RPCClient(region, timeout=10)
    results = {}

    def call(who, delay):
        results[who] = client.call("echo_who", delay, metadata={"who": who})

    threads = [threading.Thread(target=call, args=(f"c{i}", 0.05 * (i % 3))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {f"c{i}": [f"c{i}", f"c{i}"] for i in range(8)}


def test_current_context_outside_a_handler_raises():
    with pytest.raises(LookupError):
        meridian.current_context()


def test_a_client_cannot_send_the_context_argument(make_server, region):
    server = make_server(region)
    ran = []

    @server.rpc
    def guarded(*, context):
        ran.append(1)
        return 1

    with pytest.raises(meridian.InvalidArgument):
        RPCClient(region, timeout=10).guarded(context="forged")
    assert ran == []


def test_the_handler_sees_the_cancellation_of_its_call(make_server, region):
    server = make_server(region)
    saw_cancel = threading.Event()

    @server.rpc
    def slow(*, context):
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            if context.is_cancelled():
                saw_cancel.set()
                return None
            time.sleep(0.01)
        return None

    with pytest.raises(meridian.DeadlineExceeded):
        RPCClient(region).call("slow", timeout=0.3)
    assert saw_cancel.wait(5), "the handler never saw its call cancelled"


def test_trailers_set_through_the_context(make_server, region):
    server = make_server(region)

    @server.rpc
    def traced(context):
        context.set_trailer("served-by", "py")
        context.set_trailer("blob-bin", b"\x01")
        with pytest.raises(TypeError):
            context.set_trailer("bad", 1)
        return "ok"

    reply = RPCClient(region, timeout=10).call_detailed("traced")
    assert reply.value == "ok"
    assert reply.metadata["served-by"] == b"py"
    assert reply.metadata["blob-bin"] == b"\x01"


def test_context_repr(make_server, region):
    server = make_server(region)

    @server.rpc
    def show(context):
        return repr(context)

    text = RPCClient(region, timeout=10).show()
    assert text.startswith("CallContext(method='show', peer='127.0.0.1:")
