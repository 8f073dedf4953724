"""asyncio: AsyncRPCClient and RPCClient.acall do not block the event loop."""

import asyncio
import time

import pytest

import meridian
from meridian import AsyncRPCClient, RPCClient


@pytest.fixture
def async_server(make_server, region):
    server = make_server(region)

    @server.rpc
    def add(a, b):
        return a + b

    @server.rpc
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    @server.rpc
    async def async_sleepy(seconds):
        await asyncio.sleep(seconds)
        return seconds

    @server.rpc
    def count(n):
        yield from range(n)

    @server.rpc
    def boom():
        raise meridian.Aborted("conflict")

    return server


def test_async_client_calls(async_server, region):
    async def main():
        async with AsyncRPCClient(region, timeout=10) as client:
            assert await client.add(10, 5) == 15
            assert await client.call("add", a=1, b=2) == 3
            results = await asyncio.gather(*(client.add(i, i) for i in range(100)))
            assert results == [2 * i for i in range(100)]
            assert [x async for x in client.stream("count", 4)] == [0, 1, 2, 3]
            assert [x async for x in client.count.stream(2)] == [0, 1]
            with pytest.raises(meridian.Aborted, match="conflict"):
                await client.boom()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_event_loop_keeps_running_during_a_call(async_server, region):
    async def main():
        client = AsyncRPCClient(region, timeout=10)
        await client.add(0, 0)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        # 20 slow calls at once, more than any thread pool would run together.
        started = time.monotonic()
        out = await asyncio.gather(*(client.async_sleepy(0.3) for _ in range(20)))
        elapsed = time.monotonic() - started
        t.cancel()
        assert out == [0.3] * 20
        assert elapsed < 1.5
        assert ticks >= 10

    asyncio.run(asyncio.wait_for(main(), 30))


def test_acall_on_the_blocking_client_and_timeouts(async_server, region):
    async def main():
        client = RPCClient(region, timeout=10)
        assert await client.acall("add", 2, 3) == 5
        with pytest.raises(meridian.DeadlineExceeded):
            await client.acall("sleepy", 1, timeout=0.2)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_cancelling_the_task_cancels_the_call(async_server, region):
    async def main():
        client = AsyncRPCClient(region, timeout=10)
        await client.add(1, 1)
        task = asyncio.create_task(client.sleepy(1))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await client.add(2, 2) == 4

    asyncio.run(asyncio.wait_for(main(), 30))


def test_bad_values_raise_before_sending_in_async_calls(async_server, region):
    async def main():
        client = AsyncRPCClient(region, timeout=10)
        with pytest.raises(TypeError):
            await client.add({1}, 2)
        with pytest.raises(OverflowError):
            await client.add(2**70, 2)

    asyncio.run(asyncio.wait_for(main(), 30))
