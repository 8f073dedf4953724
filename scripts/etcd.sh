#!/usr/bin/env bash
# etcd for Meridian's tests and demos. Only the `etcd` cargo feature (etcd discovery, the
# etcd demo, the Python module) needs any of this; the main demo and the default build
# need nothing but the Rust toolchain.
#
#   bash scripts/etcd.sh install         makes sure what the `etcd` feature needs works,
#                                        installing Debian packages (apt-get; root or sudo)
#                                        for whatever does not:
#                                        - protoc that can compile a .proto importing
#                                          google/protobuf/descriptor.proto, as the
#                                          etcd-client crate's build script does
#                                          (protobuf-compiler + libprotobuf-dev, which
#                                          holds the include files)
#                                        - an `etcd` binary that runs (etcd-server), which
#                                          the tests start on their own ports
#   bash scripts/etcd.sh check           the same checks, installing nothing (exit 1 if
#                                        something is missing)
#   bash scripts/etcd.sh start DIR       starts etcd on a free loopback port with its data in
#                                        DIR; prints the client URL (also in DIR/endpoint)
#   bash scripts/etcd.sh stop DIR        stops the etcd started with DIR and removes DIR
#
# The Rust tests and the Python tests start their own etcd (same binary; MERIDIAN_ETCD_BIN
# overrides the one on PATH), so `install` is all the test command needs. PROTOC, if set,
# names the protoc the build will run, so it is the one checked.
set -euo pipefail

# Can the build's protoc compile a file that imports a well-known type? That, not the mere
# presence of a `protoc` binary, is what etcd-client's build script needs.
protoc_works() {
    local dir rc=0
    dir=$(mktemp -d)
    printf '%s\n' 'syntax = "proto3";' 'import "google/protobuf/descriptor.proto";' \
        'message Probe { google.protobuf.FileDescriptorProto file = 1; }' >"$dir/probe.proto"
    "${PROTOC:-protoc}" -I "$dir" --include_imports -o "$dir/probe.pb" "$dir/probe.proto" \
        >"$dir/log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && [ "${1:-}" = verbose ]; then
        echo "protoc (${PROTOC:-protoc}) cannot compile a .proto that imports" \
            "google/protobuf/descriptor.proto:" >&2
        sed 's/^/  /' "$dir/log" >&2
    fi
    rm -rf "$dir"
    return "$rc"
}

etcd_works() {
    "${MERIDIAN_ETCD_BIN:-etcd}" --version >/dev/null 2>&1
}

missing_packages() {
    need_apt=()
    protoc_works || need_apt+=(protobuf-compiler libprotobuf-dev)
    etcd_works || need_apt+=(etcd-server)
}

install() {
    missing_packages
    if [ "${#need_apt[@]}" -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "need ${need_apt[*]}: run as root, or install them: apt-get install ${need_apt[*]}" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || {
        echo "need ${need_apt[*]} (Debian names) and there is no apt-get; install them by hand" >&2
        exit 1
    }
    echo "== installing ${need_apt[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The package may start a system etcd on 2379; the tests never use it.
    check
}

check() {
    local ok=0
    protoc_works verbose || ok=1
    etcd_works || { echo "etcd (${MERIDIAN_ETCD_BIN:-etcd}) does not run" >&2; ok=1; }
    return "$ok"
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
    check) check ;;
    start) start "${2:?usage: etcd.sh start DIR}" ;;
    stop) stop "${2:?usage: etcd.sh stop DIR}" ;;
    *) echo "usage: bash scripts/etcd.sh install | check | start DIR | stop DIR" >&2; exit 2 ;;
esac
