#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: the Rust workspace (unit, property,
# simulated-time, end-to-end over real QUIC on loopback, doctests, the C header drift
# check), a check that the main job builds with no protoc at all, the C ABI suites (C and
# C++ examples, C tests under valgrind) and the Python module's suites (a venv with
# maturin, pytest and mypy; `pip install ./python`; stubtest; pytest). Any failure fails
# the whole run.
#
# What it installs when missing (Debian packages through apt-get, so root or sudo):
#   protobuf-compiler + libprotobuf-dev  the etcd feature's build (etcd-client runs protoc,
#                                        which must find google/protobuf/*.proto)
#   etcd-server                          the etcd suites start their own etcd
#   valgrind                             the C suites run again under valgrind
#   python3-venv                         only where python3 cannot make a venv
# and, from PyPI into .venv: maturin, pytest, mypy (and pytest into a venv per CPython
# tested: pyenv's 3.9 and 3.13, or python3.9/python3.13 on PATH; see test_python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== the main job needs nothing but the toolchain: no etcd-client in its build"
# The demo and the command-line tool's default build must not compile etcd-client (whose
# build script needs protoc). Checked on the dependency graph first, then by building
# and running the demo with a protoc that always fails.
for spec in "-p meridian-examples" "-p meridian --features cli"; do
    # shellcheck disable=SC2086
    if cargo tree --locked $spec -e normal,build --prefix none | grep -q '^etcd-client '; then
        echo "cargo tree $spec pulls in etcd-client: the default build would need protoc" >&2
        exit 1
    fi
done
PROTOC=/bin/false cargo build --locked -q -p meridian-examples --bin regions_demo
demo_out=$(timeout 120 target/debug/regions_demo --quick)
echo "$demo_out" | sed -n '1,/^2\./p'
for needle in "Measured RTTs" "Where calls go" "goes dark" "failed calls: 0"; do
    grep -qF "$needle" <<<"$demo_out" || { echo "the demo printed no \"$needle\"" >&2; exit 1; }
done

echo "== Rust: the meridian command-line tool (feature cli, no etcd, PROTOC=/bin/false), run as a binary"
PROTOC=/bin/false cargo test --locked -p meridian --features cli --test cli --test cli_ops

echo "== Rust: OpenTelemetry export (feature otlp) to a fake OTLP/HTTP collector"
PROTOC=/bin/false cargo test --locked -p meridian --features otlp --test otlp

echo "== etcd and protoc (etcd discovery: its build runs protoc, its tests start a real etcd)"
bash scripts/etcd.sh install

# core's `etcd` feature is turned on here (nothing in the workspace turns it on by default:
# the Python module's etcd is optional), so this also runs the etcd suites against the
# real etcd they start.
echo "== Rust: workspace tests (unit, property, end-to-end, etcd, doctests, header drift)"
cargo test --workspace --locked --exclude meridian-bench --features meridian/etcd

# The Python module is a cdylib (`test = false`, its behaviour is tested by pytest against
# the wheel); its few Rust unit tests touch no Python and are named here.
echo "== Rust: the Python module's unit tests (handler threads)"
cargo test --locked -p meridian-python --lib

echo "== Rust: the command-line tool's etcd flags (features cli + etcd)"
cargo test --locked -p meridian --features cli,etcd --test cli etcd

echo "== Rust: the benchmark harness builds and its own tests pass"
cargo test --locked -p meridian-bench

echo "== C ABI: library, examples, tests (valgrind)"
bash scripts/test_c.sh

echo "== Python module: build, stubs, pytest"
bash scripts/test_python.sh
