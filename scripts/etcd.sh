#!/usr/bin/env bash
# etcd for Meridian's tests and demos.
#
#   bash scripts/etcd.sh install         installs what the `etcd` feature needs when missing:
#                                        Debian's etcd-server (the `etcd` binary the tests
#                                        start) and protobuf-compiler (`protoc`, run by the
#                                        etcd-client crate's build script)
#   bash scripts/etcd.sh start DIR       starts etcd on a free loopback port with its data in
#                                        DIR; prints the client URL (also in DIR/endpoint)
#   bash scripts/etcd.sh stop DIR        stops the etcd started with DIR and removes DIR
#
# The Rust tests and the Python tests start their own etcd (same binary; MERIDIAN_ETCD_BIN
# overrides the one on PATH), so `install` is all the test command needs.
set -euo pipefail

need_apt=()
install() {
    command -v etcd >/dev/null 2>&1 || [ -n "${MERIDIAN_ETCD_BIN:-}" ] || need_apt+=(etcd-server)
    command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || need_apt+=(protobuf-compiler)
    if [ "${#need_apt[@]}" -eq 0 ]; then
        return 0
    fi
    echo "== installing ${need_apt[*]} (apt-get)"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The package may start a system etcd on 2379; the tests never use it.
    command -v etcd >/dev/null 2>&1 || [ -n "${MERIDIAN_ETCD_BIN:-}" ] || { echo "etcd still missing" >&2; exit 1; }
    command -v protoc >/dev/null 2>&1 || { echo "protoc still missing" >&2; exit 1; }
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    local dir="$1"
    local bin="${MERIDIAN_ETCD_BIN:-$(command -v etcd)}"
    mkdir -p "$dir"
    local cport pport
    cport=$(free_port)
    pport=$(free_port)
    while [ "$pport" = "$cport" ]; do pport=$(free_port); done
    local client="http://127.0.0.1:$cport" peer="http://127.0.0.1:$pport"
    nohup "$bin" --name=meridian --data-dir="$dir/data" \
        --listen-client-urls="$client" --advertise-client-urls="$client" \
        --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
        --initial-cluster="meridian=$peer" --log-level=warn \
        >"$dir/etcd.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    echo "$client" >"$dir/endpoint"
    for _ in $(seq 1 150); do
        if python3 - "$cport" <<'PY' 2>/dev/null; then
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=0.5).read()
sys.exit(0 if b'"health":"true"' in body else 1)
PY
            echo "$client"
            return 0
        fi
        sleep 0.1
    done
    echo "etcd did not start; see $dir/etcd.log" >&2
    stop "$dir"
    return 1
}

stop() {
    local dir="$1"
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: etcd.sh start DIR}" ;;
    stop) stop "${2:?usage: etcd.sh stop DIR}" ;;
    *) echo "usage: bash scripts/etcd.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
