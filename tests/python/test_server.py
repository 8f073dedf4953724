"""RPCServer: registration forms, streaming, async handlers, lifecycle, concurrency."""

import asyncio
import threading
import time

import pytest

import meridian
from meridian import RPCClient, RPCServer


def test_decorator_forms_and_name_override(make_server, region):
    server = make_server(region)

    @server.rpc
    def plain(x):
        return x + 1

    @server.RPC
    def alias(x):
        return x + 2

    @server.rpc(name="renamed", idempotent=True)
    def original(x):
        return x + 3

    assert plain(1) == 2  # the decorator returns the function unchanged
    assert set(server.methods) == {"plain", "alias", "renamed"}
    client = RPCClient(region, timeout=10)
    assert client.plain(1) == 2
    assert client.alias(1) == 3
    assert client.renamed(1) == 4
    with pytest.raises(meridian.RpcError):
        client.call("original", 1, timeout=1)


def test_registering_on_a_running_server_adds_the_method(make_server, region):
    server = make_server(region)

    @server.rpc
    def first():
        return 1

    client = RPCClient(region, timeout=10)
    assert client.first() == 1

    @server.rpc
    def second():
        return 2

    assert client.second() == 2
    assert client.first() == 1


def test_explicit_start_before_registration_and_port(make_server, region):
    server = make_server(region)
    assert server.address is None
    server.start()
    host, port = server.address
    assert host == "127.0.0.1" and port > 0

    @server.rpc
    def ping():
        return "pong"

    assert RPCClient(region, timeout=10).ping() == "pong"


def test_generators_are_server_streaming(make_server, region):
    server = make_server(region)

    @server.rpc
    def count(n, step=1):
        for i in range(0, n, step):
            yield i

    client = RPCClient(region, timeout=10)
    assert list(client.stream("count", 5)) == [0, 1, 2, 3, 4]
    assert list(client.count.stream(10, step=3)) == [0, 3, 6, 9]
    assert list(client.stream("count", 0)) == []


def test_a_stream_that_fails_midway_raises_after_its_items(make_server, region):
    server = make_server(region)

    @server.rpc
    def flaky(n):
        yield from range(n)
        raise meridian.ResourceExhausted("out of items")

    got = []
    with pytest.raises(meridian.ResourceExhausted, match="out of items"):
        for item in RPCClient(region, timeout=10).stream("flaky", 3):
            got.append(item)
    # The core sends a failed handler's status at once, dropping responses still queued
    # for the network, so the caller sees a prefix of the items, then the error.
    assert got == [0, 1, 2][: len(got)]


def test_cancelling_a_stream_closes_the_generator(make_server, region):
    server = make_server(region)
    closed = threading.Event()

    @server.rpc
    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = RPCClient(region, timeout=10).stream("endless")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.cancel()
    assert closed.wait(5), "the generator was not closed after the call was cancelled"


def test_async_handlers(make_server, region):
    server = make_server(region)

    @server.rpc
    async def slow_double(x):
        await asyncio.sleep(0.2)
        return 2 * x

    @server.rpc
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0.001)
            yield i

    client = RPCClient(region, timeout=10)
    assert client.slow_double(21) == 42
    assert list(client.stream("ticks", 4)) == [0, 1, 2, 3]
    # Ten async handlers waiting at once share the event loop: about 0.2 s, not 2 s.
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(client.slow_double(i)))
        for i in range(10)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [2 * i for i in range(10)]
    assert time.monotonic() - started < 1.0


def test_a_slow_handler_does_not_stall_other_calls(make_server, region):
    server = make_server(region)
    release = threading.Event()

    @server.rpc
    def slow():
        release.wait(10)
        return "slow"

    @server.rpc
    def fast():
        return "fast"

    client = RPCClient(region, timeout=10)
    assert client.fast() == "fast"
    out = []
    t = threading.Thread(target=lambda: out.append(client.slow()))
    t.start()
    time.sleep(0.1)
    started = time.monotonic()
    for _ in range(20):
        assert client.fast() == "fast"
    assert time.monotonic() - started < 2.0
    release.set()
    t.join(10)
    assert out == ["slow"]


def test_stop_and_context_manager(region):
    client = RPCClient(region, timeout=10)
    with RPCServer(region) as server:

        @server.rpc
        def hello(name):
            return f"hello {name}"

        assert client.hello("there") == "hello there"
        assert server.address is not None
    assert server.address is None
    with pytest.raises(meridian.RpcError):
        client.call("hello", "again", timeout=1)
    server.stop()  # stopping twice is harmless


def test_stop_waits_for_calls_in_flight(make_server, region):
    server = make_server(region)

    @server.rpc
    def takes_a_while():
        time.sleep(0.3)
        return "finished"

    client = RPCClient(region, timeout=10)
    assert client.takes_a_while() == "finished"
    out = []
    t = threading.Thread(target=lambda: out.append(client.takes_a_while()))
    t.start()
    time.sleep(0.1)
    server.stop(grace=5)
    t.join(10)
    assert out == ["finished"]


def test_server_stopped_mid_call_fails_the_call_promptly(make_server, region):
    server = make_server(region)
    release = threading.Event()

    @server.rpc
    def stuck():
        release.wait(10)
        return "too late"

    client = RPCClient(region, timeout=20)
    errors = []

    def call():
        try:
            client.stuck()
        except meridian.RpcError as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop(grace=0)
    t.join(10)
    release.set()
    assert not t.is_alive()
    assert len(errors) == 1
    assert time.monotonic() - started < 5
    assert errors[0].code in (
        meridian.StatusCode.UNAVAILABLE,
        meridian.StatusCode.CANCELLED,
        meridian.StatusCode.INTERNAL,
        meridian.StatusCode.UNKNOWN,
    )


def test_certificates_from_files(tmp_path, make_server, region):
    from meridian import _native

    ca, cert, key = _native._write_dev_certificates(str(tmp_path))
    server = make_server(region, certs=(cert, key))

    @server.rpc
    def secured():
        return "ok"

    port = server.port
    # Explicit endpoints, trusting only the CA file.
    client = RPCClient(regions={region: [f"127.0.0.1:{port}"]}, roots=ca, timeout=10)
    assert client.secured() == "ok"
    # A client that trusts another CA cannot call it.
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _native._write_dev_certificates(str(tmp_path / "other"))
    stranger = RPCClient(regions={region: [f"127.0.0.1:{port}"]}, roots=other_ca, timeout=2)
    with pytest.raises(meridian.RpcError):
        stranger.secured()


def test_region_file(tmp_path, make_server, region):
    server = make_server(region)

    @server.rpc
    def from_file():
        return "configured"

    config = tmp_path / "regions.toml"
    config.write_text(
        f'[[region]]\nname = "{region}"\nservers = [{{ addr = "127.0.0.1:{server.port}" }}]\n'
    )
    client = RPCClient(config=str(config), timeout=10)
    assert client.from_file() == "configured"


def test_metrics_text_counts_calls_by_method_and_status(make_server, region):
    server = make_server(region)

    @server.rpc  # not idempotent: a failed call is not sent again
    def half(x):
        if x % 2:
            raise ValueError("odd")
        return x // 2

    client = RPCClient(region, timeout=10)
    assert client.half(4) == 2
    assert client.half(8) == 4
    with pytest.raises(meridian.RpcError):
        client.half(3)
    text = server.metrics_text()
    lines = text.splitlines()
    assert 'meridian_server_calls_total{method="half",code="OK"} 2' in lines, text
    failed = [l for l in lines if l.startswith('meridian_server_calls_total{method="half"') and "OK" not in l]
    assert len(failed) == 1 and failed[0].endswith(" 1"), text
    assert 'meridian_server_call_duration_seconds_count{method="half"} 3' in lines, text
    client_text = client.metrics_text()
    assert "meridian_region_calls_total" in client_text, client_text
    assert f'meridian_region_chosen{{region="{region}"}} 1' in client_text.splitlines(), client_text
    server.stop()
    assert server.metrics_text() == ""


def test_a_method_registered_on_a_server_that_just_started_is_callable_at_once(make_server, region):
    # B4: a client already in use learns of a new server at once (not at its next probe
    # tick, up to 250 ms later), and a call for a method no connected server serves waits
    # for that server's connection instead of failing UNIMPLEMENTED.
    home = make_server(region)

    @home.rpc
    def ping():
        return "pong"

    client = RPCClient(region, timeout=10)
    assert client.ping() == "pong"
    took = []
    for i in range(5):
        fresh = make_server(f"{region}-fresh-{i}").start()  # starts with no methods

        @fresh.rpc(name=f"fresh_{i}")
        def fresh_method(i=i):
            return i

        started = time.monotonic()
        assert client.call(f"fresh_{i}") == i  # no Unimplemented
        took.append(time.monotonic() - started)
        fresh.stop(grace=0.5)
    # Typically a few milliseconds (one handshake); an occasional dial takes longer.
    assert sorted(took)[len(took) // 2] < 0.2, took
    assert max(took) < 2.5, took
