"""Certificates from files, mutual TLS, peer identity and certificate rotation, over QUIC on
127.0.0.1 (ServerTLS, ClientTLS, RPCServer.reload_tls, meridian.testing)."""

import asyncio
import base64
import os
import shutil
import socket
import threading

import pytest

import meridian
from meridian import AsyncRPCClient, ClientTLS, RPCClient, ServerTLS
from meridian.testing import dev_certificates

SPIFFE = "spiffe://meridian.test/py-client"


def _pki(tmp_path, name, **kwargs):
    directory = tmp_path / name
    directory.mkdir()
    return dev_certificates(directory, **kwargs)


def _client(region, port, tls, timeout=5.0):
    return RPCClient(region, regions={region: [f"127.0.0.1:{port}"]}, tls=tls, timeout=timeout)


@pytest.fixture
def mtls_server(tmp_path, make_server, region):
    """A server requiring client certificates from its CA, with a `whoami` method that
    reports the caller's identity from its context and counts its runs."""
    pki = _pki(tmp_path, "pki", client_name="py-client", client_uri=SPIFFE)
    server = make_server(
        region,
        tls=ServerTLS(pki.server_cert_file, pki.server_key_file, client_ca_file=pki.ca_file),
    )
    runs = []

    @server.rpc
    def whoami(context):
        runs.append(context.method)
        identity = context.peer_identity
        if identity is None:
            return None
        return {
            "dns": identity.dns_names,
            "uris": identity.uris,
            "spiffe": identity.spiffe_id,
            "cn": identity.common_name,
            "der": identity.certificates,
            "has": identity.has_name(SPIFFE),
            "repr": repr(identity),
        }

    @server.rpc
    async def whoami_async():
        identity = meridian.current_context().peer_identity
        return identity.spiffe_id if identity else None

    @server.rpc
    def whoami_stream(n, *, context):
        for _ in range(n):
            yield context.peer_identity.spiffe_id

    return server, pki, runs


def test_settings_are_frozen_value_objects(tmp_path):
    tls = ServerTLS(tmp_path / "c.pem", "k.pem", client_ca_file="ca.pem")
    assert tls.cert_file == str(tmp_path / "c.pem")  # os.PathLike becomes str
    assert repr(tls) == (
        f"ServerTLS(cert_file={str(tmp_path / 'c.pem')!r}, key_file='k.pem', "
        "client_ca_file='ca.pem')"
    )
    with pytest.raises(AttributeError):
        tls.cert_file = "other"  # type: ignore[misc]
    assert ClientTLS("ca.pem") == ClientTLS("ca.pem", None, None, None)
    with pytest.raises(ValueError):
        ClientTLS("ca.pem", cert_file="client.pem")
    with pytest.raises(TypeError):
        ServerTLS(1, "k.pem")  # type: ignore[arg-type]


def test_bad_files_fail_at_construction(tmp_path, region):
    pki = _pki(tmp_path, "pki")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError):
        meridian.RPCServer(region, tls=ServerTLS(missing, pki.server_key_file))
    with pytest.raises(ValueError):
        meridian.RPCServer(
            region,
            tls=ServerTLS(pki.server_cert_file, pki.server_key_file, client_ca_file=missing),
        )
    # A key that belongs to another certificate.
    with pytest.raises(ValueError):
        meridian.RPCServer(region, tls=ServerTLS(pki.server_cert_file, pki.client_key_file))
    with pytest.raises(ValueError):
        RPCClient(region, tls=ClientTLS(missing))
    with pytest.raises(ValueError):
        RPCClient(region, tls=ClientTLS(pki.ca_file, missing, pki.client_key_file))
    with pytest.raises(ValueError):
        RPCClient(region, roots=pki.ca_file, tls=ClientTLS(pki.ca_file))


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, region, tmp_path):
    server, pki, runs = mtls_server
    anonymous = _client(region, server.port, ClientTLS(pki.ca_file), timeout=3.0)
    # Refused in the TLS handshake: the call cannot reach the server.
    with pytest.raises(meridian.Unavailable):
        anonymous.whoami()
    assert runs == [], "the handler must not run for a client without a certificate"
    # A certificate from another CA is refused too.
    other = _pki(tmp_path, "other", client_uri=SPIFFE)
    stranger = _client(
        region, server.port, ClientTLS(pki.ca_file, other.client_cert_file, other.client_key_file)
    )
    with pytest.raises(meridian.RpcError):
        stranger.whoami()
    assert runs == []


def test_the_handler_sees_the_client_certificate_names(mtls_server, region):
    server, pki, runs = mtls_server
    tls = ClientTLS(pki.ca_file, pki.client_cert_file, pki.client_key_file)
    client = _client(region, server.port, tls)
    seen = client.whoami()
    assert runs == ["whoami"]
    assert seen["uris"] == [SPIFFE]
    assert seen["spiffe"] == SPIFFE
    assert seen["dns"] == ["py-client"]
    assert seen["cn"] == "py-client"
    assert seen["has"] is True
    assert seen["repr"] == (
        f"PeerIdentity(dns_names=['py-client'], uris=['{SPIFFE}'], common_name='py-client')"
    )
    # The DER chain starts with the client's own certificate, the one in its PEM file.
    assert isinstance(seen["der"][0], bytes) and len(seen["der"][0]) > 100
    with open(pki.client_cert_file) as f:
        pem_body = f.read().split("-----")[2]
    assert base64.b64decode("".join(pem_body.split())) == seen["der"][0]
    # current_context() in an async handler, context= in a streaming one.
    assert client.whoami_async() == SPIFFE
    assert list(client.stream("whoami_stream", 3)) == [SPIFFE] * 3


def test_the_async_client_presents_its_certificate_too(mtls_server, region):
    server, pki, runs = mtls_server
    tls = ClientTLS(pki.ca_file, pki.client_cert_file, pki.client_key_file)

    async def main():
        client = AsyncRPCClient(region, regions={region: [f"127.0.0.1:{server.port}"]}, tls=tls)
        return await client.call("whoami_async", timeout=5)

    assert asyncio.run(main()) == SPIFFE


def test_reload_presents_the_new_certificate_to_new_clients_only(tmp_path, make_server, region):
    old = _pki(tmp_path, "old")
    new = _pki(tmp_path, "new", server_names=["localhost", "rotated.test"])
    live = tmp_path / "live"
    live.mkdir()
    cert, key = str(live / "server.pem"), str(live / "server.key")
    shutil.copy(old.server_cert_file, cert)
    shutil.copy(old.server_key_file, key)
    server = make_server(region, tls=ServerTLS(cert, key))

    @server.rpc
    def ping(n):
        return n + 1

    before = _client(region, server.port, ClientTLS(old.ca_file))
    assert before.ping(1) == 2

    # Rotate: new files replace the old ones atomically, then the server rereads them.
    for src, dst in ((new.server_cert_file, cert), (new.server_key_file, key)):
        shutil.copy(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    server.reload_tls()

    # A new client trusting only the new CA connects, under a name only the new
    # certificate carries; one trusting only the old CA is refused.
    after = _client(region, server.port, ClientTLS(new.ca_file, server_name="rotated.test"))
    assert after.ping(2) == 3
    stale = _client(region, server.port, ClientTLS(old.ca_file), timeout=3.0)
    with pytest.raises(meridian.RpcError):
        stale.ping(3)
    # The client connected before the reload keeps calling on its connection.
    for i in range(5):
        assert before.ping(i) == i + 1


def test_reload_with_bad_files_raises_and_keeps_the_certificate(tmp_path, make_server, region):
    old = _pki(tmp_path, "old")
    other = _pki(tmp_path, "other")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = str(live / "server.pem"), str(live / "server.key")
    shutil.copy(old.server_cert_file, cert)
    shutil.copy(old.server_key_file, key)
    server = make_server(region, tls=ServerTLS(cert, key))

    @server.rpc
    def ping(n):
        return n + 1

    connected = _client(region, server.port, ClientTLS(old.ca_file))
    assert connected.ping(1) == 2

    # Garbage instead of a certificate.
    with open(cert, "w") as f:
        f.write("not a certificate\n")
    with pytest.raises(ValueError):
        server.reload_tls()
    # A certificate whose key is another one's.
    shutil.copy(other.server_cert_file, cert)
    with pytest.raises(ValueError):
        server.reload_tls()
    # Files gone.
    os.remove(cert)
    with pytest.raises(ValueError):
        server.reload_tls()

    # Still serving, with the old certificate: old and new clients of the old CA call.
    assert connected.ping(2) == 3
    fresh = _client(region, server.port, ClientTLS(old.ca_file))
    assert fresh.ping(3) == 4
    stranger = _client(region, server.port, ClientTLS(other.ca_file), timeout=3.0)
    with pytest.raises(meridian.RpcError):
        stranger.ping(4)


def test_reload_without_certificate_files_is_an_error(make_server, region):
    server = make_server(region)

    @server.rpc
    def ping():
        return 1

    with pytest.raises(RuntimeError):
        server.reload_tls()
    assert RPCClient(region, timeout=10).ping() == 1


def test_reload_from_many_threads_while_calls_go_on(tmp_path, make_server, region):
    pki = _pki(tmp_path, "pki")
    server = make_server(region, tls=ServerTLS(pki.server_cert_file, pki.server_key_file))

    @server.rpc
    def ping(n):
        return n

    client = _client(region, server.port, ClientTLS(pki.ca_file))
    errors = []

    def reload_many():
        try:
            for _ in range(20):
                server.reload_tls()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reload_many) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(50):
        assert client.ping(i) == i
    for t in threads:
        t.join(timeout=30)
    assert errors == []


def test_client_tls_with_the_in_process_registry(mtls_server, region):
    # No regions=: the client finds the server in this process's registry and presents
    # its certificate to it.
    server, pki, runs = mtls_server
    tls = ClientTLS(pki.ca_file, pki.client_cert_file, pki.client_key_file)
    assert RPCClient(region, tls=tls, timeout=5).whoami_async() == SPIFFE


def test_both_sides_rotate_to_a_new_ca_without_dropping_connections(tmp_path, make_server, region):
    """Server certificate, the CA it accepts clients from, the client's trust roots and
    its own certificate all move to a new CA: each side rereads its files, open
    connections keep calling, and new handshakes need the new files on both sides."""
    old = _pki(tmp_path, "old", client_uri=SPIFFE)
    new = _pki(tmp_path, "new", client_uri=SPIFFE)
    live = tmp_path / "live"
    live.mkdir()
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")

    def install(pki):
        sources = (
            pki.ca_file,
            pki.server_cert_file,
            pki.server_key_file,
            pki.client_cert_file,
            pki.client_key_file,
        )
        for src, name in zip(sources, names):
            shutil.copy(src, live / (name + ".tmp"))
            os.replace(live / (name + ".tmp"), live / name)

    install(old)
    ca, scert, skey, ccert, ckey = (str(live / n) for n in names)
    # A fixed port, so the server can be restarted where the client looks for it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(region, port=port, tls=ServerTLS(scert, skey, client_ca_file=ca))

    @server.rpc
    def whoami(context):
        return context.peer_identity.spiffe_id

    server.start()
    client = RPCClient(
        region,
        regions={region: [f"127.0.0.1:{port}"]},
        tls=ClientTLS(ca, ccert, ckey),
        timeout=10.0,
        wait_for_ready=True,
    )
    assert client.whoami() == SPIFFE

    install(new)
    server.reload_tls()
    # The open connection keeps working.
    assert client.whoami() == SPIFFE
    # A client still holding the old files cannot make a new connection.
    stale = RPCClient(
        region,
        regions={region: [f"127.0.0.1:{server.port}"]},
        tls=ClientTLS(old.ca_file, old.client_cert_file, old.client_key_file),
        timeout=3.0,
    )
    with pytest.raises(meridian.RpcError):
        stale.whoami()
    # The client rereads its files. Its next connection (the server restarts, so the
    # client reconnects on its own) is made with the new ones.
    client.reload_tls()
    server.stop(grace=0.5)
    server.start()
    assert client.whoami() == SPIFFE


def test_a_server_host_may_be_a_name(make_server, region):
    server = make_server(region, host="localhost")

    @server.rpc
    def ping(n):
        return n + 1

    server.start()
    host, port = server.address
    assert host in ("127.0.0.1", "::1")
    assert _client(region, port, None).ping(1) == 2
    with pytest.raises(ValueError, match="no-such-host.invalid"):
        meridian.RPCServer(region, host="no-such-host.invalid")
