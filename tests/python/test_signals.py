"""Ctrl-C interrupts a blocking call (in a fresh interpreter, so the signal stays there)."""

from conftest import run_python

CODE = """
import os, signal, threading, time
from meridian import RPCServer, RPCClient

server = RPCServer("sig")

@server.rpc
def forever():
    time.sleep(30)

client = RPCClient("sig")
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
try:
    client.forever()
    print("returned")
except KeyboardInterrupt:
    print("interrupted after %.1f s" % (time.monotonic() - started))
server.stop(grace=0)
"""


def test_ctrl_c_interrupts_a_blocking_call():
    done = run_python(CODE, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert out.startswith("interrupted after"), out
    assert float(out.split()[2]) < 3.0
