"""The module's runtime: its worker threads come from MERIDIAN_WORKER_THREADS (default 1),
read when it starts; a bad value is a clear error, not a crash. Each case runs in a fresh
interpreter, since the runtime starts once per process."""

import os
import subprocess
import sys

SCRIPT = """
import meridian
from meridian import RPCClient, RPCServer, _native
try:
    workers = _native._runtime_workers()
except ValueError as e:
    print("ValueError:", e)
    raise SystemExit(0)
server = RPCServer("runtime-test").start()

@server.rpc
def add(a, b):
    return a + b

client = RPCClient("runtime-test", timeout=10)
assert client.add(10, 5) == 15
server.stop()
print("workers", workers)
"""


def run(value):
    env = dict(os.environ)
    env.pop("MERIDIAN_WORKER_THREADS", None)
    if value is not None:
        env["MERIDIAN_WORKER_THREADS"] = value
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_one_worker_by_default():
    assert run(None) == "workers 1"


def test_the_environment_sets_the_workers_and_calls_work():
    assert run("3") == "workers 3"


def test_a_bad_worker_count_is_a_clear_error():
    for bad in ("0", "many", "-2", "100000"):
        out = run(bad)
        assert out.startswith("ValueError: MERIDIAN_WORKER_THREADS must be a whole number"), out
        assert repr(bad) in out or f'"{bad}"' in out, out


KEPT_STATE = """
import threading, time
from meridian import RPCClient, RPCServer
server = RPCServer("kept-state").start()
local = threading.local()

@server.rpc
def count():
    local.n = getattr(local, "n", 0) + 1
    return local.n

client = RPCClient("kept-state", timeout=10)
seen = [client.count() for _ in range(100)]
# Handler threads keep their Python thread state between calls, as a thread pool's do.
assert max(seen) >= 2, seen
# Idle handler threads end after 10 s; ending gives their Python state back cleanly,
# and calls go on on new threads.
time.sleep(11)
assert client.count() >= 1
server.stop()
print("ok")
"""


def test_handler_threads_keep_their_python_state_and_end_cleanly():
    out = subprocess.run(
        [sys.executable, "-c", KEPT_STATE], capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "Fatal" not in out.stderr and "Error" not in out.stderr, out.stderr
