"""Shared fixtures: servers that are always stopped, unique region names.

Every server of the process lists itself in the in-process registry, which the default
client follows; each test therefore stops its servers (through ``make_server``) so that no
method of one test is routed to a server of another.
"""

import itertools
import os
import subprocess
import sys
from typing import Callable, Iterator, List

import pytest

from meridian import RPCServer

_counter = itertools.count()


@pytest.fixture
def region() -> str:
    """A region name no other test uses."""
    return f"region-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def make_server() -> Iterator[Callable[..., RPCServer]]:
    """``make_server(region, **kwargs)``: an RPCServer stopped at the end of the test."""
    made: List[RPCServer] = []

    def make(region: str, **kwargs) -> RPCServer:
        server = RPCServer(region, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop(grace=0.5)


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (the installed package), bounded in time."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
