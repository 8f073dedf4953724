"""Interop: a Python client calls typed Rust handlers, a Rust client calls Python ones."""

import pytest

import meridian
from meridian import RPCClient, _native


@pytest.fixture
def rust_server(region):
    server = _native._start_rust_test_server(region)
    yield server
    server.stop()


def test_python_client_calls_a_typed_rust_handler(rust_server, region):
    client = RPCClient(region, timeout=10)
    assert client.rust_add(10, 5) == 15
    assert client.rust_add(-(2**62), -(2**62)) == -(2**63)
    assert client.rust_concat("bytes", b"\x00\x01\x02") == "bytes:3"


def test_rust_statuses_arrive_as_python_exceptions(rust_server, region):
    client = RPCClient(region, timeout=10)
    with pytest.raises(meridian.OutOfRange, match="overflows"):
        client.rust_add(2**63 - 1, 1)
    # Arguments a typed handler cannot take are INVALID_ARGUMENT, from Rust's decoder.
    with pytest.raises(meridian.InvalidArgument):
        client.rust_add("ten", 5)


def test_metadata_reaches_a_rust_handler(rust_server, region):
    client = RPCClient(region, timeout=10)
    assert client.call("rust_metadata", "tenant", metadata={"tenant": "acme"}) == "acme"
    with pytest.raises(meridian.NotFound):
        client.call("rust_metadata", "tenant")


def test_rust_client_calls_a_python_handler(make_server, region):
    server = make_server(region)
    seen = []

    @server.rpc
    def py_sub(a, b):
        seen.append((a, b))
        return a - b

    # A Rust tuple (a, b) arrives as positional arguments...
    assert _native._rust_call("py_sub", 10, 4) == 6
    # ...and a Rust struct {a, b} as keyword arguments.
    assert _native._rust_call("py_sub", 10, 4, named=True) == 6
    assert seen == [(10, 4), (10, 4)]


def test_rust_client_sees_python_errors(make_server, region):
    server = make_server(region)

    @server.rpc
    def py_fail(a, b):
        raise meridian.FailedPrecondition(f"{a} and {b} are not ready")

    with pytest.raises(meridian.FailedPrecondition, match="1 and 2 are not ready"):
        _native._rust_call("py_fail", 1, 2)


def test_call_value_sends_a_bare_scalar_or_unit_to_rust_handlers(rust_server, region):
    client = RPCClient(region, timeout=10)
    assert client.call_value("rust_double", 21) == 42
    assert client.call_value("rust_double", 21, result_type=int) == 42
    assert client.call_value("rust_where") == "rust"  # None is unit, ()
    assert client.call_value("rust_echo", {"k": [1, b"x"]}) == {"k": [1, b"x"]}
    assert client.call_value("rust_echo", b"raw") == b"raw"
    # The argument-list form is what a handler taking a scalar or unit cannot take.
    with pytest.raises(meridian.InvalidArgument):
        client.call("rust_double", 21)
    with pytest.raises(meridian.InvalidArgument):
        client.rust_where()
    assert client.rust_echo(5) == [5]
    with pytest.raises(meridian.OutOfRange, match="overflows"):
        client.call_value("rust_double", 2**62)
    with pytest.raises(TypeError, match="cannot send a value of type set"):
        client.call_value("rust_echo", {1, 2})


def test_async_call_value_reaches_rust_handlers(rust_server, region):
    import asyncio

    async def main():
        client = meridian.AsyncRPCClient(region, timeout=10)
        return (
            await client.call_value("rust_double", 4),
            await client.call_value("rust_where", result_type=str),
        )

    assert asyncio.run(asyncio.wait_for(main(), 30)) == (8, "rust")


def test_call_value_reaches_python_handlers(make_server, region):
    server = make_server(region)

    @server.rpc
    def shape(*args, **kwargs):
        return [list(args), kwargs]

    client = RPCClient(region, timeout=10)
    assert client.call_value("shape") == [[], {}]
    assert client.call_value("shape", 7) == [[7], {}]
    assert client.call_value("shape", [1, 2]) == [[1, 2], {}]
    assert client.call_value("shape", {"a": 1}) == [[], {"a": 1}]
