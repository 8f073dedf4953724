"""Client-streaming and bidirectional calls, blocking and asyncio, Python and Rust clients
against Python handlers (sync, async def, generators and async generators)."""

import asyncio
import itertools
import threading
import time

import pytest

import meridian
from meridian import AsyncRPCClient, RPCClient


@pytest.fixture
def streams(make_server, region):
    server = make_server(region)
    seen = {"cancelled": threading.Event(), "reading": threading.Event()}

    @server.rpc(client_streaming=True)
    def total(numbers):
        return sum(numbers)

    @server.rpc(client_streaming=True)
    def collect(items, context):
        return {"items": list(items), "tenant": context.metadata.get("tenant")}

    @server.rpc(client_streaming=True)
    async def async_total(numbers):
        return sum([n async for n in numbers])

    @server.rpc(client_streaming=True)
    def running_total(numbers):
        subtotal = 0
        for n in numbers:
            subtotal += n
            yield subtotal

    @server.rpc(client_streaming=True)
    async def async_echo(items):
        async for item in items:
            yield ["echo", item]

    @server.rpc(client_streaming=True)
    def refuse_after_two(items):
        for i, _ in enumerate(items):
            if i == 1:
                raise meridian.FailedPrecondition("two is enough")
        return "never"

    @server.rpc(client_streaming=True)
    def wait_forever(items):
        try:
            for _ in items:
                seen["reading"].set()
        except meridian.RpcError:
            seen["cancelled"].set()
            raise
        return "done"

    return seen


def test_client_streaming(streams, region):
    client = RPCClient(region, timeout=10)
    assert client.client_stream("total", [1, 2, 3]) == 6
    assert client.client_stream("total", iter(range(1000))) == 499500
    assert client.client_stream("total", [], result_type=int) == 0
    gen = (b"x" * i for i in range(3))
    assert client.client_stream("collect", gen, metadata={"tenant": "acme"}) == {
        "items": [b"", b"x", b"xx"],
        "tenant": "acme",
    }
    assert client.client_stream("async_total", [5, 6]) == 11
    with pytest.raises(meridian.FailedPrecondition, match="two is enough"):
        client.client_stream("refuse_after_two", [1, 2, 3])
    with pytest.raises(TypeError, match="cannot send a value of type set"):
        client.client_stream("total", [1, {2}])


def test_an_iterable_that_raises_cancels_the_call(streams, region):
    client = RPCClient(region, timeout=10)

    def broken():
        yield 1
        # Once the handler runs (a call cancelled before it starts never runs it).
        assert streams["reading"].wait(5)
        raise KeyError("source failed")

    with pytest.raises(KeyError, match="source failed"):
        client.client_stream("wait_forever", broken())
    assert streams["cancelled"].wait(5), "the handler never saw the cancellation"


def test_a_server_that_answers_early_ends_the_sending(streams, region):
    # Endless requests: sending stops once the server has answered (its STOP_SENDING
    # arrives while the client is still sending), and the call's error is the handler's.
    client = RPCClient(region, timeout=10)
    with pytest.raises(meridian.FailedPrecondition, match="two is enough"):
        client.client_stream("refuse_after_two", itertools.count())

    async def endless():
        for n in itertools.count():
            await asyncio.sleep(0)
            yield n

    async def main():
        client = AsyncRPCClient(region, timeout=10)
        with pytest.raises(meridian.FailedPrecondition, match="two is enough"):
            await client.client_stream("refuse_after_two", itertools.count())
        with pytest.raises(meridian.FailedPrecondition, match="two is enough"):
            await client.client_stream("refuse_after_two", endless())

    asyncio.run(asyncio.wait_for(main(), 30))


def test_bidi_interleaves_requests_and_responses(streams, region):
    client = RPCClient(region, timeout=10)
    with client.bidi("running_total") as call:
        got = []
        for n in (1, 2, 3):
            call.send(n)
            got.append(next(call))  # each answer arrives before the next request
        call.done_sending()
        assert list(call) == []
    assert got == [1, 3, 6]
    with client.bidi("running_total") as call:
        call.send(10)
        call.done_sending()
        with pytest.raises(ValueError, match="sending is closed"):
            call.send(1)
        assert list(call) == [10]


def test_bidi_deadline(streams, region):
    client = RPCClient(region)
    call = client.bidi("running_total", timeout=0.3)
    call.send(1)
    assert next(call) == 1
    started = time.monotonic()
    with pytest.raises(meridian.DeadlineExceeded):
        next(call)  # the server waits for a request that never comes
    assert time.monotonic() - started < 2


def test_asyncio_client_and_bidi(streams, region):
    async def numbers():
        for n in (4, 5):
            await asyncio.sleep(0)
            yield n

    async def main():
        client = AsyncRPCClient(region, timeout=10)
        assert await client.client_stream("total", [1, 2]) == 3
        assert await client.client_stream("async_total", numbers(), result_type=int) == 9
        async with await client.bidi("async_echo") as call:
            await call.send("a")
            assert await call.__anext__() == ["echo", "a"]
            await call.send(b"b")
            await call.done_sending()
            assert [x async for x in call] == [["echo", b"b"]]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_unary_call_to_a_client_streaming_method_is_refused_cleanly(streams, region):
    client = RPCClient(region, timeout=5)
    with pytest.raises(meridian.RpcError):
        client.total(1, 2)
