"""async def handlers are cancelled with their call (B5): when the client cancels or the
deadline passes, the handler's task gets asyncio.CancelledError at its current await."""

import asyncio
import threading
import time

import pytest

import meridian
from meridian import AsyncRPCClient, RPCClient


@pytest.fixture
def cancellable(make_server, region):
    server = make_server(region)
    seen = {"cancelled": threading.Event(), "finished": threading.Event(), "closed": threading.Event()}

    @server.rpc
    async def wait_long(seconds):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen["cancelled"].set()
            raise
        seen["finished"].set()
        return seconds

    @server.rpc
    async def ticks(n):
        try:
            for i in range(n):
                await asyncio.sleep(0.05)
                yield i
        except asyncio.CancelledError:
            seen["cancelled"].set()
            raise
        finally:
            seen["closed"].set()

    return seen


def test_the_deadline_cancels_an_async_handler(cancellable, region):
    started = time.monotonic()
    with pytest.raises(meridian.DeadlineExceeded):
        RPCClient(region).call("wait_long", 10, timeout=0.3)
    assert cancellable["cancelled"].wait(3), "the handler never got CancelledError"
    assert time.monotonic() - started < 2
    assert not cancellable["finished"].is_set()


def test_a_cancelled_asyncio_call_cancels_the_async_handler(cancellable, region):
    async def main():
        client = AsyncRPCClient(region)
        task = asyncio.ensure_future(client.wait_long(10))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 20))
    assert cancellable["cancelled"].wait(3), "the handler never got CancelledError"
    assert not cancellable["finished"].is_set()


def test_a_cancelled_stream_cancels_the_async_generator(cancellable, region):
    stream = RPCClient(region, timeout=20).stream("ticks", 1000)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.cancel()
    assert cancellable["cancelled"].wait(3), "the generator never got CancelledError"
    assert cancellable["closed"].wait(3), "the generator's finally block never ran"


def test_an_async_handler_that_is_not_cancelled_completes(cancellable, region):
    assert RPCClient(region, timeout=10).wait_long(0.05) == 0.05
    assert cancellable["finished"].is_set()
    assert not cancellable["cancelled"].is_set()
