"""Typed results (result_type=) checked at run time and by mypy; the DEFAULT timeout."""

import inspect
import pydoc
import subprocess
import sys
import textwrap
import time
from typing import Dict, List

import pytest

import meridian
from meridian import DEFAULT, RPCClient


@pytest.fixture
def typed(make_server, region):
    server = make_server(region)

    @server.rpc
    def add(a, b):
        return a + b

    @server.rpc
    def text():
        return "not a number"

    @server.rpc
    def items():
        return [1, 2]

    @server.rpc
    def slow(seconds):
        time.sleep(seconds)
        return seconds

    return server


def test_result_type_checks_the_result(typed, region):
    client = RPCClient(region, timeout=10)
    assert client.call("add", 1, 2, result_type=int) == 3
    assert client.call("add", 1.5, 2, result_type=float) == 3.5
    assert client.call("add", 1, 2, result_type=float) == 3  # an int is a float here
    assert client.call("items", result_type=List[int]) == [1, 2]  # the outer type
    with pytest.raises(TypeError, match=r"method 'text' returned str .*expected int"):
        client.call("text", result_type=int)
    with pytest.raises(TypeError, match="expected dict"):
        client.call("items", result_type=Dict[str, int])
    with pytest.raises(TypeError, match="result_type must be a class"):
        client.call("add", 1, 2, result_type="int")


def test_async_result_type(typed, region):
    import asyncio

    async def main():
        client = meridian.AsyncRPCClient(region, timeout=10)
        assert await client.call("add", 2, 2, result_type=int) == 4
        with pytest.raises(TypeError, match="expected int"):
            await client.call("text", result_type=int)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_default_timeout_is_a_readable_sentinel(typed, region):
    parameter = inspect.signature(RPCClient.call).parameters["timeout"]
    assert parameter.default is DEFAULT
    assert repr(DEFAULT) == "meridian.DEFAULT"
    doc = pydoc.render_doc(RPCClient.call, renderer=pydoc.plaintext)
    assert "= meridian.DEFAULT" in doc and "object at 0x" not in doc
    client = RPCClient(region, timeout=0.2)
    with pytest.raises(meridian.DeadlineExceeded):
        client.call("slow", 2, timeout=DEFAULT)  # the client's 0.2 s
    assert client.call("slow", 0.3, timeout=None) == 0.3  # no deadline
    assert client.call("slow", 0.3, timeout=5) == 0.3


MYPY_USER = """
    from typing import List
    import meridian

    def total(client: meridian.RPCClient) -> int:
        return client.call("add", 1, 2, result_type=int)

    async def atotal(client: meridian.AsyncRPCClient) -> int:
        return await client.call("add", 1, 2, result_type=int)

    def bare(client: meridian.RPCClient) -> str:
        return client.call_value("where", result_type=str)

    def wrong(client: meridian.RPCClient) -> str:
        return client.call("add", 1, 2, result_type=int)
"""


def test_mypy_sees_the_result_type(tmp_path):
    pytest.importorskip("mypy")
    source = tmp_path / "user.py"
    source.write_text(textwrap.dedent(MYPY_USER))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Only the deliberately wrong function is flagged: int where str is declared.
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, out.stdout
    assert "user.py:15" in errors[0] and 'got "int"' in errors[0], out.stdout
