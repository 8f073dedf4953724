#!/usr/bin/env bash
# The Python module's tests on a fresh machine.
#
# 1. The default build needs no protoc: etcd-client is not in meridian-python's default
#    dependency graph, and the crate checks with PROTOC=/bin/false.
# 2. Builds the one wheel that is shipped, `pip wheel ./python` (with the optional etcd
#    feature, so the etcd tests run), and checks what it claims: an abi3 wheel
#    (cp39-abi3) tagged manylinux_2_34, under 5 MB, a stripped extension, and no glibc
#    symbol version newer than 2.34 (objdump -T).
# 3. In .venv (the machine's python3, made if missing, with maturin, pytest and mypy from
#    PyPI): installs the wheel, checks the stubs against it (mypy.stubtest), type-checks
#    the package (mypy --strict) and runs the examples.
# 4. Installs the same wheel into fresh venvs of the oldest and newest CPython the
#    package claims (3.9 and 3.13; from pyenv, or python3.X on PATH) and runs the whole
#    pytest suite on each. A missing interpreter is reported loudly; under CI (CI=true)
#    it fails the run, elsewhere that version is skipped. MERIDIAN_PYTHONS="3.9 3.11"
#    overrides the list.
#
# Any failure fails the script; pytest finding no tests (exit 5) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OLDEST=3.9
NEWEST=3.13
PYTHONS=${MERIDIAN_PYTHONS:-"$OLDEST $NEWEST"}
MAX_GLIBC=2.34
MAX_WHEEL_BYTES=$((5 * 1024 * 1024))
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== the default build needs no protoc (etcd is an optional feature)"
if cargo tree --locked -p meridian-python -e normal,build --prefix none | grep -q '^etcd-client '; then
    echo "meridian-python's default build pulls in etcd-client (protoc at build time)" >&2
    exit 1
fi
PROTOC=/bin/false cargo check --locked -q -p meridian-python

# The wheel tested below is built with etcd (protoc at build time); its tests start etcd.
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

echo "== installing the test tools"
"$PY" -m pip install -q "maturin>=1.9.4,<2" pytest mypy grpcio  # grpcio: benches/python

echo "== building the wheel: pip wheel ./python (with --features etcd)"
WHEELS=target/python-wheels
rm -rf "$WHEELS"
MATURIN_PEP517_ARGS="--features etcd" "$PY" -m pip wheel -q --no-deps -w "$WHEELS" ./python
shopt -s nullglob
wheels=("$WHEELS"/meridian-*.whl)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ]; then
    echo "expected one wheel in $WHEELS, found ${#wheels[@]}" >&2
    exit 1
fi
WHEEL=${wheels[0]}
size=$(stat -c %s "$WHEEL")
echo "   $(basename "$WHEEL"): $(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1048576 }')"
case "$(basename "$WHEEL")" in
    *-cp39-abi3-manylinux_2_34_x86_64.whl | *-cp39-abi3-manylinux_2_34_aarch64.whl) ;;
    *) echo "the wheel is not tagged cp39-abi3-manylinux_2_34" >&2; exit 1 ;;
esac
if [ "$size" -ge "$MAX_WHEEL_BYTES" ]; then
    echo "the wheel is $size bytes, over the 5 MB budget" >&2
    exit 1
fi
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
"$PY" -m zipfile -e "$WHEEL" "$unpacked"
so=$(find "$unpacked/meridian" -name '_native*.so')
if objdump -h "$so" | grep -qE '\.debug_|\.symtab'; then
    echo "the extension is not stripped (debug or symbol table sections)" >&2
    exit 1
fi
glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "   extension needs glibc symbols up to $glibc (tag allows $MAX_GLIBC)"
if [ "$(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
    echo "the extension needs GLIBC_$glibc, newer than the manylinux_2_34 tag allows" >&2
    exit 1
fi

echo "== installing the wheel into $VENV ($("$PY" --version))"
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"

echo "== stubs against the built module (mypy.stubtest)"
# Run from outside the source tree so the installed package, not python/meridian, is found.
(cd "$VENV" && "$(pwd)/bin/python" -m mypy.stubtest meridian --ignore-missing-stub)

echo "== type check of the pure-Python package (mypy --strict)"
"$PY" -m mypy --strict python/meridian

echo "== examples"
(cd "$VENV" && timeout 60 "$(pwd)/bin/python" ../examples/python/regions.py)
(cd "$VENV" && timeout 60 "$(pwd)/bin/python" ../examples/python/async_client.py)

# The interpreter for CPython $1: the newest pyenv build of it, else python$1 on PATH.
find_python() {
    local version=$1 root candidate found=""
    root=${PYENV_ROOT:-$HOME/.pyenv}
    for candidate in "$root"/versions/"$version".*/bin/python"$version"; do
        [ -x "$candidate" ] && found=$candidate
    done
    if [ -z "$found" ]; then
        found=$(command -v "python$version" || true)
    fi
    printf '%s' "$found"
}

tested=()
missing=()
for version in $PYTHONS; do
    interpreter=$(find_python "$version")
    if [ -z "$interpreter" ]; then
        echo "!! ============================================================" >&2
        echo "!! CPython $version not found (pyenv or python$version on PATH):" >&2
        echo "!! the wheel is NOT tested on it (pyenv install $version)" >&2
        echo "!! ============================================================" >&2
        missing+=("$version")
        continue
    fi
    venv=target/python-venvs/$version
    echo "== CPython $version ($interpreter): fresh venv $venv, the wheel, pytest"
    rm -rf "$venv"
    "$interpreter" -m venv "$venv"
    "$venv/bin/python" -m pip install -q pytest mypy "$WHEEL"
    set +e
    # From inside the venv so `import meridian` finds the installed wheel, not python/.
    (cd "$venv" && "$ROOT/$venv/bin/python" -m pytest -q -rfE -p no:cacheprovider "$ROOT/tests/python")
    status=$?
    set -e
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests on CPython $version: failing" >&2
        exit 1
    fi
    if [ "$status" -ne 0 ]; then
        echo "pytest failed on CPython $version" >&2
        exit "$status"
    fi
    tested+=("$version")
done

echo "== the wheel was tested on CPython: ${tested[*]:-none}"
if [ "${#missing[@]}" -gt 0 ]; then
    echo "!! NOT tested on CPython ${missing[*]} (interpreter missing)" >&2
    if [ "${CI:-}" = "true" ]; then
        echo "!! CI=true: a claimed Python version went untested, failing" >&2
        exit 1
    fi
fi
if [ "${#tested[@]}" -eq 0 ]; then
    echo "no Python version was tested" >&2
    exit 1
fi
