#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: the Rust workspace (unit, property,
# simulated-time, end-to-end over real QUIC on loopback, doctests, the C header drift
# check), the C ABI suites (C and C++ examples, C tests under valgrind) and the Python
# module's suites (a venv with maturin, pytest and mypy; `pip install ./python`; stubtest;
# pytest). Each part installs what it needs; any failure fails the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== etcd and protoc (etcd discovery: its tests start a real etcd)"
bash scripts/etcd.sh install

# The workspace build turns on core's `etcd` feature (python and examples use it), so this
# also runs the etcd suites against the real etcd they start.
echo "== Rust: workspace tests (unit, property, end-to-end, etcd, doctests, header drift)"
cargo test --workspace --locked --exclude meridian-bench

echo "== Rust: the meridian command-line tool (feature cli), run as a binary"
cargo test --locked -p meridian --features cli --test cli

echo "== Rust: the benchmark harness builds and its own tests pass"
cargo test --locked -p meridian-bench

echo "== C ABI: library, examples, tests (valgrind)"
bash scripts/test_c.sh

echo "== Python module: build, stubs, pytest"
bash scripts/test_python.sh
