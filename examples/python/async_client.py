"""An asyncio client next to servers of the same process.

A server with a plain, an async and a streaming method; an AsyncRPCClient calls them
concurrently without blocking the event loop. Run: python examples/python/async_client.py
"""

import asyncio

from meridian import AsyncRPCClient, RPCServer

server = RPCServer("Region1")


@server.rpc(idempotent=True)
def add(a, b):
    return a + b


@server.rpc
async def slow_square(x):
    await asyncio.sleep(0.2)  # runs on the server's handler event loop
    return x * x


@server.rpc
def countdown(n):
    yield from range(n, 0, -1)


async def main():
    async with AsyncRPCClient("Region1", timeout=5) as client:
        print(await client.add(10, 5))  # 15
        # Ten slow calls at once take about 0.2 s in all, not 2 s.
        print(await asyncio.gather(*(client.slow_square(i) for i in range(10))))
        print([n async for n in client.countdown.stream(3)])  # [3, 2, 1]


asyncio.run(main())
server.stop()
