"""RPCClient: options, many threads, the GIL released while waiting."""

import threading
import time

import pytest

import meridian
from meridian import RPCClient


def test_call_with_options(make_server, region):
    server = make_server(region)

    @server.rpc(idempotent=True)
    def add(a, b):
        return a + b

    client = RPCClient(region)
    assert client.call("add", 1, 2) == 3
    assert client.call("add", a=1, b=2, timeout=5) == 3
    assert client.call("add", 1, b=2, metadata={"trace-id": "abc", "blob-bin": b"\x01"}) == 3
    assert client.call("add", 1, 2, key="user-42") == 3
    assert client.call("add", 1, 2, key=b"user-42") == 3
    with pytest.raises(TypeError):
        client.call("add", 1, 2, metadata={"k": 1})
    with pytest.raises(TypeError):
        client.call("add", 1, 2, key=42)


def test_attribute_calls_pass_keywords_to_the_remote_function(make_server, region):
    server = make_server(region)

    @server.rpc
    def options(timeout=None, key=None, metadata=None):
        return [timeout, key, metadata]

    client = RPCClient(region, timeout=10)
    assert client.options(timeout=1, key="k", metadata={"a": 1}) == [1, "k", {"a": 1}]


def test_private_names_are_not_remote_methods():
    with pytest.raises(AttributeError):
        RPCClient()._secret


def test_many_threads_call_at_once(make_server, region):
    server = make_server(region)

    @server.rpc
    def mul(a, b):
        return a * b

    client = RPCClient(region, timeout=10)
    assert client.mul(2, 3) == 6
    errors = []
    results = {}

    def worker(n):
        try:
            results[n] = [client.mul(n, i) for i in range(50)]
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert results == {n: [n * i for i in range(50)] for n in range(8)}


def test_the_gil_is_released_while_a_call_waits(make_server, region):
    server = make_server(region)

    @server.rpc
    def nap(seconds):
        time.sleep(seconds)
        return True

    client = RPCClient(region, timeout=10)
    assert client.nap(0)
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = counter[0]
        assert client.nap(0.5)
        spun = counter[0] - before
    finally:
        stop.set()
        t.join()
    # Had the call held the GIL, the spinning thread would have been frozen for 0.5 s.
    assert spun > 10_000


def test_streams_as_iterators_with_context_manager(make_server, region):
    server = make_server(region)

    @server.rpc
    def letters(word):
        yield from word

    client = RPCClient(region, timeout=10)
    with client.stream("letters", "abc") as it:
        assert next(it) == "a"
    assert "".join(client.stream("letters", "meridian")) == "meridian"


def test_stream_timeout(make_server, region):
    server = make_server(region)

    @server.rpc
    def slow_stream():
        yield 1
        time.sleep(2)
        yield 2

    it = RPCClient(region).stream("slow_stream", timeout=0.5)
    assert next(it) == 1
    started = time.monotonic()
    with pytest.raises(meridian.DeadlineExceeded):
        next(it)
    assert time.monotonic() - started < 1.5


def test_call_detailed_reports_where_the_time_went(make_server, region):
    server = make_server(region)

    @server.rpc
    def slow_add(a, b):
        time.sleep(0.05)
        return a + b

    client = RPCClient(region, timeout=10)
    reply = client.call_detailed("slow_add", 1, 2)
    assert isinstance(reply, meridian.Reply)
    assert reply.value == 3
    assert isinstance(reply.metadata, dict)
    t = reply.timing
    assert isinstance(t, meridian.CallTiming)
    # The handler's 50 ms are on the server's side of the split; the rest is network.
    assert t.server is not None and t.server >= 0.05
    assert t.network is not None and t.network >= 0
    assert abs(t.network + t.server - t.total) < 1e-5
    # A direct call: no proxy parts.
    assert t.proxy is None and t.client_proxy_network is None and t.proxy_server_network is None
    with pytest.raises(meridian.Unimplemented):
        client.call_detailed("no_such_method", 1)
