"""Who drives the runtime (python/src/engine.rs): a thread whose blocking call is the only
one in progress drives it for the length of the call, the relay thread while no calling
thread does. These tests cover the hand-
overs: work that no blocking call waits for, and calls made from inside handlers while
other threads call too. (Many calling threads: tests/python/test_client.py; fork:
tests/python/test_fork.py, whose parent makes a new connection after its child called.)"""

import subprocess
import sys
import threading
import time

from meridian import RPCClient, _native

CALLER = """
import sys
from meridian import RPCClient
region, port, ca = sys.argv[1:4]
client = RPCClient(regions={region: [f"127.0.0.1:{port}"]}, roots=ca, timeout=10)
print(sum(client.add(i, 1) for i in range(50)))
"""


def test_servers_answer_while_no_call_of_their_process_drives_the_runtime(
    make_server, region, tmp_path
):
    # This process makes no call: only the relay thread can read the server's socket.
    ca, cert, key = _native._write_dev_certificates(str(tmp_path))
    server = make_server(region, certs=(cert, key))

    @server.rpc
    def add(a, b):
        return a + b

    server.start()
    # Let the server's start, the last blocking call here, end its hand-over.
    time.sleep(0.05)
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, region, str(server.port), ca],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Sleeping (not waiting on the child) keeps this process's threads out of Meridian.
    deadline = time.monotonic() + 60
    while caller.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if caller.poll() is None:
        caller.kill()
    out, err = caller.communicate(timeout=10)
    assert caller.returncode == 0, err
    assert int(out) == sum(i + 1 for i in range(50))


def test_a_handler_may_make_blocking_calls_while_its_caller_drives_the_runtime(
    make_server, region
):
    # The client's thread drives the runtime while it waits for `via`; the handler of
    # `via` runs on a handler thread and waits on the same runtime for `add`.
    inner = make_server(region + "-inner")

    @inner.rpc
    def add(a, b):
        return a + b

    outer = make_server(region)
    downstream = RPCClient(region + "-inner", timeout=10)

    @outer.rpc
    def via(a, b):
        return downstream.add(a, b) * 2

    inner.start()
    outer.start()
    client = RPCClient(region, timeout=10)
    assert [client.via(i, 1) for i in range(20)] == [(i + 1) * 2 for i in range(20)]

    # And from several calling threads at once, each waiting on nested calls.
    results = {}

    def worker(k):
        results[k] = [client.via(k, i) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert results == {k: [(k + i) * 2 for i in range(20)] for k in range(8)}
