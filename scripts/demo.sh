#!/usr/bin/env bash
# The main job: three local regions behind emulated WAN links, called from one client,
# with a table of what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -q -p meridian-examples --bin wan_demo
