#!/usr/bin/env bash
# The main job: three local regions behind emulated WAN links, one region client that
# finds the nearest, routes by method and key, survives an outage; printed as tables.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -q -p meridian-examples --bin regions_demo
