"""Errors: exceptions and statuses from handlers, unknown methods, timeouts."""

import threading
import time

import pytest

import meridian
from meridian import RPCClient, RpcError, StatusCode


def test_a_handler_exception_arrives_as_unknown_without_traceback(make_server, region):
    server = make_server(region)

    @server.rpc
    def divide(a, b):
        return a / b

    with pytest.raises(meridian.Unknown) as info:
        RPCClient(region, timeout=10).divide(1, 0)
    err = info.value
    assert isinstance(err, RpcError)
    assert err.code == StatusCode.UNKNOWN
    assert err.message == "ZeroDivisionError: division by zero"
    assert err.remote_traceback is None
    assert "traceback" not in err.metadata


def test_tracebacks_are_sent_only_when_the_server_opts_in(make_server, region):
    server = make_server(region, send_tracebacks=True)

    @server.rpc
    def explode():
        raise ValueError("kaboom")

    with pytest.raises(meridian.Unknown) as info:
        RPCClient(region, timeout=10).explode()
    tb = info.value.remote_traceback
    assert tb is not None and "Traceback" in tb and "kaboom" in tb and "explode" in tb


def test_handlers_choose_code_message_and_metadata(make_server, region):
    server = make_server(region)

    @server.rpc
    def lookup(user):
        raise meridian.NotFound(f"no user {user}", {"retry-after": "never", "raw-bin": b"\x00\x01"})

    @server.rpc
    def generic():
        raise RpcError(StatusCode.PERMISSION_DENIED, "nope")

    client = RPCClient(region, timeout=10)
    with pytest.raises(meridian.NotFound) as info:
        client.lookup("bob")
    assert info.value.code == StatusCode.NOT_FOUND
    assert info.value.message == "no user bob"
    assert info.value.metadata["retry-after"] == "never"
    assert info.value.metadata["raw-bin"] == b"\x00\x01"
    assert str(info.value) == "NOT_FOUND: no user bob"
    with pytest.raises(meridian.PermissionDenied, match="nope"):
        client.generic()


def test_wrong_arguments_are_invalid_argument(make_server, region):
    server = make_server(region)

    @server.rpc
    def two(a, b):
        return a + b

    with pytest.raises(meridian.InvalidArgument):
        RPCClient(region, timeout=10).two(1)


def test_a_type_error_inside_the_handler_stays_unknown(make_server, region):
    server = make_server(region)

    @server.rpc
    def concat(a, b):
        return a + b

    with pytest.raises(meridian.Unknown, match="TypeError"):
        RPCClient(region, timeout=10).concat(1, "x")


def test_unknown_method_fails_within_its_timeout(make_server, region):
    server = make_server(region)

    @server.rpc
    def known():
        return 1

    client = RPCClient(region, timeout=10)
    assert client.known() == 1
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        client.call("no_such_method", timeout=1.0)
    assert time.monotonic() - started < 3
    assert info.value.code in (StatusCode.UNAVAILABLE, StatusCode.UNIMPLEMENTED, StatusCode.DEADLINE_EXCEEDED)


def test_timeout_is_honoured(make_server, region):
    server = make_server(region)

    @server.rpc
    def sleepy(seconds):
        time.sleep(seconds)
        return "awake"

    client = RPCClient(region)
    assert client.call("sleepy", 0, timeout=10) == "awake"
    started = time.monotonic()
    with pytest.raises(meridian.DeadlineExceeded):
        client.call("sleepy", 2, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.5


def test_client_default_timeout(make_server, region):
    server = make_server(region)

    @server.rpc
    def sleepy(seconds):
        time.sleep(seconds)

    with pytest.raises(meridian.DeadlineExceeded):
        RPCClient(region, timeout=0.2).sleepy(1)


def test_bad_timeouts_are_value_errors():
    client = RPCClient()
    with pytest.raises(ValueError):
        client.call("anything", timeout=-1)
    with pytest.raises(ValueError):
        client.call("anything", timeout=float("nan"))


def test_error_classes():
    e = RpcError(99, "weird")
    assert e.code == StatusCode.UNKNOWN
    assert meridian.DeadlineExceeded("late").code == StatusCode.DEADLINE_EXCEEDED
    assert issubclass(meridian.Unavailable, RpcError)
    assert repr(meridian.Aborted("x")) == "Aborted(ABORTED, 'x')"


def test_calls_fail_fast_when_no_server_is_up_unless_they_wait_for_ready(make_server, region):
    def serve() -> meridian.RPCServer:
        server = make_server(region)

        @server.rpc
        def add(a, b):
            return a + b

        return server.start()

    first = serve()
    quick = RPCClient(region, timeout=5.0)
    patient = RPCClient(region, timeout=5.0, wait_for_ready=True)
    assert quick.add(1, 2) == 3
    assert patient.add(1, 2) == 3
    first.stop(grace=0.5)

    # Fails at once (gRPC's default), not after the 5 s timeout.
    started = time.monotonic()
    with pytest.raises(meridian.Unavailable):
        quick.add(1, 2)
    assert time.monotonic() - started < 2.5

    # Waits for the server that comes back, within its timeout.
    restart = threading.Timer(1.0, serve)
    restart.start()
    try:
        started = time.monotonic()
        assert patient.add(2, 3) == 5
        assert time.monotonic() - started >= 0.8
    finally:
        restart.join()
