"""Values: what crosses the wire, and what is refused before anything is sent."""

import math

import pytest

import meridian
from meridian import RPCClient, roundtrip


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        1.5,
        -0.0,
        float("inf"),
        "",
        "héllo wörld ✓",
        b"",
        b"\x00\xff binary",
        [],
        [1, "two", 3.0, None, [b"x"]],
        {},
        {"a": 1, "nested": {"list": [1, 2, {"deep": True}]}},
        {1: "int key", None: "null key", b"k": "bytes key"},
    ],
)
def test_values_round_trip(value):
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)


def test_tuples_arrive_as_lists_and_list_keys_as_tuples():
    assert roundtrip((1, 2, (3,))) == [1, 2, [3]]
    assert roundtrip({(1, 2): "pair"}) == {(1, 2): "pair"}


def test_nan_survives():
    assert math.isnan(roundtrip(float("nan")))


def test_bool_stays_bool_and_int_stays_int():
    out = roundtrip([True, 1, 1.0])
    assert [type(x) for x in out] == [bool, int, float]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, [1, 2**64]])
def test_ints_beyond_64_bits_are_refused(value):
    with pytest.raises(OverflowError, match="64 bits"):
        roundtrip(value)


class Custom:
    pass


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        Custom(),
        1 + 2j,
        object(),
        [1, [2, {3}]],
        {"k": Custom()},
        print,
    ],
)
def test_unsupported_types_are_type_errors(value):
    with pytest.raises(TypeError, match="cannot send a value of type"):
        roundtrip(value)


def test_too_deep_nesting_is_refused():
    value: list = []
    for _ in range(100):
        value = [value]
    with pytest.raises(ValueError, match="deeper"):
        roundtrip(value)


def test_cyclic_values_are_refused_not_looped():
    value: list = []
    value.append(value)
    with pytest.raises(ValueError):
        roundtrip(value)


def test_values_cross_a_real_call(make_server, region):
    server = make_server(region)

    @server.rpc
    def echo_values(*args, **kwargs):
        return [list(args), kwargs]

    client = RPCClient(region)
    sent = [None, True, -7, 2.5, "s", b"b", [1, [2]], {"k": {"v": b"x"}}]
    assert client.echo_values(*sent) == [sent, {}]
    assert client.echo_values(1, x=2) == [[1], {"x": 2}]
    assert client.echo_values(x=(1, 2)) == [[], {"x": [1, 2]}]


def test_bad_arguments_are_refused_before_sending(make_server, region):
    server = make_server(region)
    seen = []

    @server.rpc
    def record(*args):
        seen.append(args)
        return len(seen)

    client = RPCClient(region, timeout=10)
    assert client.record(1) == 1
    with pytest.raises(TypeError):
        client.record({1, 2})
    with pytest.raises(TypeError):
        client.record(key=object())
    with pytest.raises(OverflowError):
        client.record(2**64)
    with pytest.raises(TypeError, match="reserved"):
        client.record(**{"$args": 1})
    assert client.record(2) == 2  # nothing in between reached the server
    assert seen == [(1,), (2,)]


def test_a_handler_returning_an_unsupported_value_is_an_internal_error(make_server, region):
    server = make_server(region)

    @server.rpc
    def bad_result():
        return {1, 2}

    with pytest.raises(meridian.Internal, match="cannot send"):
        RPCClient(region, timeout=10).bad_result()


def test_huge_int_result_is_an_internal_error(make_server, region):
    server = make_server(region)

    @server.rpc
    def square(x):
        return x * x

    client = RPCClient(region, timeout=10)
    assert client.square(3_000_000_000) == 9_000_000_000_000_000_000
    with pytest.raises(meridian.Internal, match="64 bits"):
        client.square(2**40)


def test_bytearray_and_memoryview_are_sent_as_bytes():
    assert roundtrip(bytearray(b"\x00ab")) == b"\x00ab"
    assert roundtrip(memoryview(b"xyz")[1:]) == b"yz"
    assert roundtrip(bytearray()) == b""
    # A view of another format gives its raw bytes, in C order (memoryview.tobytes()).
    ints = memoryview(bytearray(b"\x01\x00\x02\x00")).cast("H")
    assert roundtrip(ints) == b"\x01\x00\x02\x00"
    assert roundtrip({"k": [bytearray(b"v")]}) == {"k": [b"v"]}


def test_bytearray_and_memoryview_cross_a_real_call(make_server, region):
    server = make_server(region)

    @server.rpc
    def describe(blob, context):
        return [type(blob).__name__, blob, context.metadata.get("tag-bin")]

    client = RPCClient(region, timeout=10)
    buf = bytearray(b"payload")
    assert client.call("describe", buf, metadata={"tag-bin": memoryview(b"\x01\x02")}) == [
        "bytes",
        b"payload",
        b"\x01\x02",
    ]
    assert client.describe(memoryview(buf)[:3]) == ["bytes", b"pay", None]
    assert client.call("describe", b"k", key=bytearray(b"routing")) == ["bytes", b"k", None]
