"""The classic multi-region script runs verbatim but for the import line."""

import pathlib

from conftest import run_python

SCRIPT = """\
from meridian import RPCServer, RPCClient

region1 = RPCServer('Region1')
region2 = RPCServer('Region2')
client = RPCClient('Region1')

@region1.RPC
def add(a, b):
    return a + b

@region2.RPC
def subtract(a, b):
    return a - b

print(client.add(10, 5))       # 15
print(client.subtract(10, 5))  # 5
"""

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "regions.py"


def test_the_script_prints_15_and_5_and_exits_cleanly():
    done = run_python(SCRIPT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "15\n5\n"


def test_the_example_is_the_script():
    text = EXAMPLE.read_text()
    body = [line for line in SCRIPT.splitlines() if line.strip()]
    example = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert example == body


def test_the_script_in_process(make_server):
    # The same calls inside the test process, checking where each one went.
    from meridian import RPCClient

    region1 = make_server("Region1")
    region2 = make_server("Region2")
    client = RPCClient("Region1")

    @region1.RPC
    def add(a, b):
        return a + b

    @region2.RPC
    def subtract(a, b):
        return a - b

    assert client.add(10, 5) == 15
    assert client.subtract(10, 5) == 5
    assert region1.calls_total == 1
    assert region2.calls_total == 1
    client.close()


def test_the_asyncio_example_runs():
    code = (EXAMPLE.parent / "async_client.py").read_text()
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "15",
        str([i * i for i in range(10)]),
        "[3, 2, 1]",
    ]
