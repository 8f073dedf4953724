#!/usr/bin/env bash
# Discovery in etcd: three local regions whose servers register in etcd, and a client that
# knows only the etcd address. Installs etcd (and protoc) if missing; the demo starts its
# own etcd on a free loopback port unless given `--etcd URL`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/etcd.sh install
exec cargo run --release --locked -q -p meridian-examples --features etcd --bin etcd_demo -- "$@"
