"""Servers that register in a real etcd and clients that follow it.

The ``etcd`` fixture starts a private etcd (``$MERIDIAN_ETCD_BIN`` or ``etcd`` on PATH; ``bash
scripts/etcd.sh install`` installs it) on free loopback ports with a temporary data
directory, and stops it after the test. Without an etcd binary the tests fail under CI
(``CI=true``) and are skipped elsewhere. A build without the ``etcd`` feature skips them
(``test_features.py`` checks that such a build refuses etcd clearly).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Dict, Iterator, List

import pytest

from meridian import RPCClient, RPCServer, Unimplemented, _native

# etcd discovery is an optional build feature; scripts/test_python.sh builds with it.
pytestmark = pytest.mark.skipif(
    not _native._has_etcd,
    reason="this build of meridian has no etcd feature (MATURIN_PEP517_ARGS='--features etcd')",
)


def _free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _post(url: str, body: Dict[str, Any]) -> Dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        out: Dict[str, Any] = json.loads(resp.read())
        return out


class Etcd:
    def __init__(self, url: str) -> None:
        self.url = url

    def records(self, prefix: str = "/meridian/") -> Dict[str, Dict[str, Any]]:
        """The keys under ``prefix`` and their JSON values (etcd's HTTP gateway)."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        resp = _post(
            self.url + "/v3/kv/range",
            {"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()},
        )
        return {
            base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in resp.get("kvs", [])
        }


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    binary = os.environ.get("MERIDIAN_ETCD_BIN") or shutil.which("etcd")
    if not binary:
        message = "no etcd binary: run `bash scripts/etcd.sh install`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    client_port, peer_port = _free_ports(2)
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    with tempfile.TemporaryDirectory(prefix="meridian-etcd-") as data:
        log = open(os.path.join(data, "etcd.log"), "wb")
        proc = subprocess.Popen(
            [
                binary,
                "--name=pytest",
                f"--data-dir={data}/data",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=pytest={peer}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with urllib.request.urlopen(client + "/health", timeout=0.5) as r:
                        if b'"health":"true"' in r.read():
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("etcd did not start")
                time.sleep(0.05)
            yield Etcd(client)
        finally:
            proc.kill()
            proc.wait()
            log.close()


def test_a_server_registers_and_a_client_finds_it_through_etcd(etcd, make_server, region):
    server = make_server(region, etcd=etcd.url, etcd_ttl=2)

    @server.rpc(idempotent=True)
    def add(a, b):
        return a + b

    records = etcd.records()
    assert len(records) == 1
    (key, record), = records.items()
    assert key.startswith(f"/meridian/{region}/")
    assert record["region"] == region
    assert record["server_name"] == "localhost"
    assert len(record["cert_sha256"]) == 64
    host, port = server.address
    assert record["addr"] == f"{host}:{port}"

    client = RPCClient(etcd=etcd.url, timeout=5)
    assert client.add(10, 5) == 15
    # The catalog in etcd follows methods added while running.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        methods = [m["name"] for m in etcd.records()[key]["methods"]]
        if methods == ["add"]:
            break
        time.sleep(0.05)
    assert methods == ["add"]

    # A clean stop removes the key at once.
    server.stop(grace=0.5)
    assert etcd.records() == {}


def test_a_server_started_later_is_found_by_a_running_client(etcd, make_server, region):
    first = make_server(region + "-a", etcd=[etcd.url], etcd_prefix="/py/")

    @first.rpc
    def add(a, b):
        return a + b

    client = RPCClient(etcd=etcd.url, etcd_prefix="/py/", timeout=5)
    assert client.add(1, 2) == 3

    second = make_server(region + "-b", etcd=etcd.url, etcd_prefix="/py/")

    @second.rpc
    def mul(a, b):
        return a * b

    # The running client learns of the new server from the etcd watch within a second or
    # two; until it has connected, a method no known server serves is UNIMPLEMENTED.
    deadline = time.monotonic() + 5
    while True:
        try:
            assert client.mul(6, 7) == 42
            break
        except Unimplemented:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert sorted(r["region"] for r in etcd.records("/py/").values()) == [
        region + "-a",
        region + "-b",
    ]


def test_a_region_file_with_an_etcd_table(etcd, make_server, region, tmp_path):
    server = make_server(region, etcd=etcd.url)

    @server.rpc
    def hello(name):
        return f"hello {name}"

    path = tmp_path / "regions.toml"
    path.write_text(f'[etcd]\nendpoints = ["{etcd.url}"]\nlease_ttl = 5\n')
    client = RPCClient(config=str(path), timeout=5)
    assert client.hello("etcd") == "hello etcd"


def test_bad_etcd_arguments_are_clear_errors(region):
    with pytest.raises(ValueError):
        RPCServer(region, etcd=[])
    with pytest.raises(ValueError):
        RPCServer(region, etcd="http://127.0.0.1:1", etcd_ttl=0)
    with pytest.raises(ValueError):
        RPCClient(etcd="http://127.0.0.1:1", regions={"a": ["127.0.0.1:1"]})
