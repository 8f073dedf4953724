#!/usr/bin/env bash
# The Python module's tests on a fresh machine: creates .venv at the repository root with
# the machine's python3 (if missing), installs maturin, pytest, mypy (for stubtest) and
# grpcio (for the benchmark) from PyPI, builds and installs the module with
# `pip install ./python`, checks the stubs against the built module, then runs pytest.
# Any failure fails the script; pytest finding no tests (exit 5) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The module is built with etcd discovery (protoc at build time); its tests start etcd.
bash scripts/etcd.sh install

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    # Debian's own python3 makes venvs only with python3-venv (ensurepip) installed.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "== installing python3-venv (apt-get): python3 cannot make a venv"
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-venv >/dev/null
    fi
    echo "== creating $VENV with $(command -v python3) ($(python3 --version))"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== installing the test tools"
"$PY" -m pip install -q "maturin>=1.9.4,<2" pytest mypy grpcio

echo "== building and installing the module: pip install ./python"
"$PY" -m pip install -q --force-reinstall --no-deps ./python

echo "== stubs against the built module (mypy.stubtest)"
# Run from outside the source tree so the installed package, not python/meridian, is found.
(cd "$VENV" && "$(pwd)/bin/python" -m mypy.stubtest meridian --ignore-missing-stub)

echo "== type check of the pure-Python package (mypy --strict)"
"$PY" -m mypy --strict python/meridian

echo "== examples"
(cd "$VENV" && timeout 60 "$(pwd)/bin/python" ../examples/python/regions.py)
(cd "$VENV" && timeout 60 "$(pwd)/bin/python" ../examples/python/async_client.py)

echo "== pytest tests/python"
set +e
"$PY" -m pytest -q -p no:cacheprovider tests/python
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
