#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: the Rust workspace (unit, property,
# end-to-end over real QUIC on loopback, doctests). The C and Python suites join here when
# their bindings land. Installs nothing it cannot find: cargo comes with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== Rust: workspace tests (unit, property, end-to-end, doctests)"
cargo test --workspace --locked --exclude meridian-bench

echo "== Rust: the benchmark harness builds and its own tests pass"
cargo test --locked -p meridian-bench
