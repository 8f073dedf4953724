#!/usr/bin/env bash
# The C ABI's tests: builds libmeridian with cargo, compiles the C tests, the C and C++
# examples and the C bench with the system compilers against the shared library, runs
# them (C client -> C server, C client -> Rust server, Rust client -> C server, every error
# path, the examples), then runs the C programs again under valgrind. Loopback only, every
# step bounded in time; any failure fails the script.
#
#   bash scripts/test_c.sh          # the tests
#   bash scripts/test_c.sh bench    # the C-vs-Rust boundary benchmark (release build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
MODE="${1:-test}"
PROFILE=debug
CARGO_FLAGS=(--locked -p meridian-ffi)
if [ "$MODE" = bench ]; then
    PROFILE=release
    CARGO_FLAGS+=(--release)
fi
LIBDIR="$ROOT/target/$PROFILE"
OUT="$ROOT/target/c-$PROFILE"
WORK="$(mktemp -d /tmp/meridian-c.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in cc c++; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y build-essential)"; exit 1; }
done

echo "== libmeridian ($PROFILE): cargo build -p meridian-ffi"
timeout 1800 cargo build "${CARGO_FLAGS[@]}" --lib --bins
test -f "$LIBDIR/libmeridian.so" && test -f "$LIBDIR/libmeridian.a"
# Programs linked with -lmeridian load the library by its SONAME (libmeridian.so.0.MINOR,
# set by ffi-c/build.rs); in target/ that name is a link to the built file.
SONAME=$(readelf -d "$LIBDIR/libmeridian.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ -n "$SONAME" ] || { echo "libmeridian.so has no SONAME"; exit 1; }
ln -sfn libmeridian.so "$LIBDIR/$SONAME"

echo "== the header is up to date (cbindgen drift check)"
timeout 1200 cargo test --locked -p meridian-ffi --test header -q

mkdir -p "$OUT"
CFLAGS=(-std=c11 -Wall -Wextra -Werror -g -O1 -I"$ROOT/ffi-c/include")
CXXFLAGS=(-std=c++17 -Wall -Wextra -Werror -g -O1 -I"$ROOT/ffi-c/include")
LINK=(-L"$LIBDIR" -lmeridian -lpthread -Wl,-rpath,"$LIBDIR")
build_c() { cc "${CFLAGS[@]}" -o "$OUT/$1" "$2" "${LINK[@]}"; }

echo "== compile the C tests, the examples and the bench with the system compilers"
build_c test_ffi tests/c/test_ffi.c
build_c test_tls tests/c/test_tls.c
build_c test_fork tests/c/test_fork.c
build_c test_contracts tests/c/test_contracts.c
build_c test_calls tests/c/test_calls.c
build_c test_lifecycle tests/c/test_lifecycle.c
build_c c_server tests/c/c_server.c
build_c c_client tests/c/c_client.c
build_c example_server examples/c/server.c
build_c example_client examples/c/client.c
build_c bench_unary ffi-c/bench/bench_unary.c
c++ "${CXXFLAGS[@]}" -o "$OUT/example_client_cpp" examples/cpp/client.cpp "${LINK[@]}"
c++ "${CXXFLAGS[@]}" -o "$OUT/example_server_cpp" examples/cpp/server.cpp "${LINK[@]}"
# The static library links too (no run: the shared one is what the tests exercise).
cc "${CFLAGS[@]}" -o "$OUT/test_ffi_static" tests/c/test_ffi.c "$LIBDIR/libmeridian.a" -lpthread -ldl -lm

# start_server NAME CMD...: starts a server that prints "PORT <n>" and stops when its
# stdin closes; sets PORT. Its stdin is a FIFO this shell holds open on fd 7+.
start_server() {
    local name=$1
    shift
    mkfifo "$WORK/$name.in"
    "$@" <"$WORK/$name.in" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    eval "exec {fd}>\"$WORK/$name.in\""
    eval "FD_$name=$fd"
    for _ in $(seq 1 600); do
        if grep -q '^PORT ' "$WORK/$name.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    PORT=$(sed -n 's/^PORT //p' "$WORK/$name.out")
    [ -n "$PORT" ] || { echo "$name did not start:"; cat "$WORK/$name.err"; exit 1; }
}
# stop_server NAME: closes its stdin and waits for a clean exit.
stop_server() {
    local fdvar="FD_$1"
    eval "exec ${!fdvar}>&-"
    local pid=${PIDS[-1]}
    timeout 30 tail --pid="$pid" -f /dev/null || { echo "$1 did not stop"; exit 1; }
    wait "$pid" || { echo "$1 failed:"; cat "$WORK/$1.err"; exit 1; }
    unset 'PIDS[-1]'
}

# MERIDIAN_TEST_UNDER_VALGRIND: test_ffi skips the timed parts of its stop race there.
VALGRIND=(env MERIDIAN_TEST_UNDER_VALGRIND=1 valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-possibly-lost=no
          --suppressions="$ROOT/tests/c/valgrind.supp" -q)

run_suite() { # run_suite PREFIX...: the three cross-language suites, under PREFIX
    echo "-- C client -> C server, every error path (one process)"
    timeout 300 "$@" "$OUT/test_ffi"

    echo "-- mutual TLS, peer identity, certificate reload (C client -> C server, one process)"
    timeout 300 "$@" "$OUT/test_tls"

    echo "-- the header's contracts: pinning, JSON limits, kinds, regions, keys, sizes (one process)"
    timeout 300 "$@" "$OUT/test_contracts"

    echo "-- call shapes: failed calls' trailers, cancelling async calls, deferred replies (one process)"
    timeout 300 "$@" "$OUT/test_calls"

    echo "-- meridian_init (threads, log callback) and meridian_shutdown (one process)"
    timeout 300 "$@" "$OUT/test_lifecycle"

    echo "-- fork(): the child gets a fresh runtime, inherited handles fail with MERIDIAN_FORKED"
    if [ "$#" -gt 0 ]; then
        # valgrind follows fork() into the children; their leak report lists the blocks of
        # the parent's threads (absent in a child), so only the parent is checked here.
        timeout 600 "$@" --child-silent-after-fork=yes "$OUT/test_fork"
    else
        timeout 300 "$OUT/test_fork"
    fi

    echo "-- C client -> Rust server"
    mkdir -p "$WORK/rust"
    start_server rust "$LIBDIR/meridian-test-server" "$WORK/rust"
    PROXY_PORT=$(sed -n 's/^PROXY_PORT //p' "$WORK/rust.out")
    timeout 300 "$@" "$OUT/c_client" "$PORT" "$WORK/rust/ca.pem" "$PROXY_PORT"
    stop_server rust

    echo "-- Rust client -> C server"
    mkdir -p "$WORK/c"
    start_server c "$@" "$OUT/c_server" "$WORK/c"
    timeout 120 "$LIBDIR/meridian-test-client" "$PORT" "$WORK/c/ca.pem"
    stop_server c
    rm -rf "$WORK/rust" "$WORK/c" "$WORK"/*.in "$WORK"/*.out "$WORK"/*.err
}

if [ "$MODE" = bench ]; then
    CALLS="${CALLS:-20000}"
    mkdir -p "$WORK/rust"
    start_server rust "$LIBDIR/meridian-test-server" "$WORK/rust"
    echo "== boundary benchmark: $CALLS unary calls of 64 B per run, server in its own process"
    echo "   six rounds, C first in odd rounds and Rust first in even ones, so that neither"
    echo "   always runs on the warmer (or the noisier) half of a round"
    c_run() { timeout 300 "$OUT/bench_unary" "$PORT" "$WORK/rust/ca.pem" "$CALLS"; }
    rust_run() { timeout 300 "$LIBDIR/meridian-bench-rust" "$PORT" "$WORK/rust/ca.pem" "$CALLS"; }
    for round in 1 2 3 4 5 6; do
        if [ $((round % 2)) = 1 ]; then c_run; rust_run; else rust_run; c_run; fi
    done | tee "$WORK/bench.out"
    stop_server rust
    # Each round's C / Rust p50, and the ratio of the two sides' median p50s.
    awk '{ split($2, kv, "="); p[$1, ++n[$1]] = kv[2] }
         END {
             for (i = 1; i <= n["c"]; i++) { r = p["c", i] / p["rust", i]; printf "round %d: C / Rust p50 %.3fx\n", i, r }
         }' "$WORK/bench.out"
    for side in c rust; do
        grep "^$side " "$WORK/bench.out" | sed 's/.*p50_us=\([0-9.]*\).*/\1/' | sort -g |
            awk -v side="$side" '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print side " median p50_us=" m }'
    done | tee "$WORK/medians.out"
    awk '{ split($3, kv, "="); m[$1] = kv[2] } END { printf "C / Rust, median p50s: %.3fx\n", m["c"] / m["rust"] }' "$WORK/medians.out"
    exit 0
fi

echo "== C tests"
run_suite

echo "== examples: C server, C client, C++ client"
mkdir -p "$WORK/ex"
start_server ex "$OUT/example_server" "$WORK/ex"
timeout 60 "$OUT/example_client" "$PORT" "$WORK/ex/ca.pem"
timeout 60 "$OUT/example_client_cpp" "$PORT" "$WORK/ex/ca.pem"
stop_server ex
echo "== examples: C++ server (RAII wrapper: handlers, trailers, streams, errors), C and C++ clients"
start_server excpp "$OUT/example_server_cpp" "$WORK/ex"
timeout 60 "$OUT/example_client" "$PORT" "$WORK/ex/ca.pem"
timeout 60 "$OUT/example_client_cpp" "$PORT" "$WORK/ex/ca.pem" cpp
stop_server excpp
echo "== the C++ server and client again, built with AddressSanitizer and UBSan"
for f in server client; do
    c++ "${CXXFLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
        -o "$OUT/example_${f}_cpp_asan" "examples/cpp/$f.cpp" "${LINK[@]}"
done
start_server excppasan "$OUT/example_server_cpp_asan" "$WORK/ex"
timeout 120 "$OUT/example_client_cpp_asan" "$PORT" "$WORK/ex/ca.pem" cpp >/dev/null
stop_server excppasan
rm -rf "$WORK/ex"

echo "== the one-process C tests again, built with AddressSanitizer and UBSan"
# The sanitizers instrument the C side (every pointer the tests hand to the library and
# read back). Leak checking stays with valgrind below: LeakSanitizer cannot see the
# library's runtime threads' ownership and reports them at exit.
mkdir -p "$OUT/asan"
for t in test_ffi test_tls test_contracts test_calls test_lifecycle test_fork; do
    cc "${CFLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
        -o "$OUT/asan/$t" "tests/c/$t.c" "${LINK[@]}"
    echo "-- $t (ASan+UBSan)"
    MERIDIAN_TEST_UNDER_ASAN=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
        timeout 300 "$OUT/asan/$t" >/dev/null
done

install_pkg() { # install_pkg TOOL PACKAGE: installs a Debian package when TOOL is missing
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$2" >/dev/null
    fi
    command -v "$1" >/dev/null || { echo "$1 is missing (apt-get install -y $2)"; exit 1; }
}

echo "== installed library: scripts/install_c.sh, then builds through pkg-config and CMake"
install_pkg pkg-config pkgconf
install_pkg cmake cmake
PREFIX_DIR="$WORK/prefix"
install_flags=(--prefix "$PREFIX_DIR" --no-build)
[ "$PROFILE" = debug ] && install_flags+=(--debug)
bash scripts/install_c.sh "${install_flags[@]}"
# The static archive exports the C interface and nothing else (no std/tokio/ring symbols).
others=$(readelf -sW "$PREFIX_DIR/lib/libmeridian.a" | awk '($5 == "GLOBAL" || $5 == "WEAK") && $7 != "UND" && $8 !~ /^meridian_/' | wc -l)
[ "$others" -eq 0 ] || { echo "libmeridian.a exports $others symbols besides meridian_*"; exit 1; }
export PKG_CONFIG_PATH="$PREFIX_DIR/lib/pkgconfig"
[ "$(pkg-config --modversion meridian)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] \
    || { echo "pkg-config reports version $(pkg-config --modversion meridian)"; exit 1; }
INST="$WORK/installed"
mkdir -p "$INST"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -o "$INST/client_pc" examples/c/client.c \
    $(pkg-config --cflags --libs meridian) -Wl,-rpath,"$PREFIX_DIR/lib"
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Wextra -Werror -o "$INST/client_cpp_pc" examples/cpp/client.cpp \
    $(pkg-config --cflags --libs meridian) -Wl,-rpath,"$PREFIX_DIR/lib"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -o "$INST/client_pc_static" examples/c/client.c \
    $(pkg-config --cflags meridian) "$PREFIX_DIR/lib/libmeridian.a" $(pkg-config --libs-only-l --static meridian | sed 's/-lmeridian//')
timeout 300 cmake -S tests/c/installed -B "$INST/cmake" -DCMAKE_PREFIX_PATH="$PREFIX_DIR" >/dev/null
timeout 600 cmake --build "$INST/cmake" -j 2 >/dev/null
readelf -d "$INST/client_pc" | grep -q "NEEDED.*\[$SONAME\]" || { echo "client_pc does not load $SONAME"; exit 1; }
readelf -d "$INST/cmake/client_static" | grep -q "NEEDED.*libmeridian" && { echo "client_static loads libmeridian"; exit 1; }
mkdir -p "$WORK/inst"
start_server inst "$INST/cmake/server_cpp" "$WORK/inst"
for client in "$INST/client_pc" "$INST/client_pc_static" "$INST/cmake/client_shared" "$INST/cmake/client_static"; do
    echo "-- $(basename "$client") (installed library)"
    timeout 60 "$client" "$PORT" "$WORK/inst/ca.pem" >/dev/null
done
echo "-- client_cpp_pc (installed library)"
timeout 60 "$INST/client_cpp_pc" "$PORT" "$WORK/inst/ca.pem" cpp >/dev/null
stop_server inst
rm -rf "$WORK/inst" "$INST" "$PREFIX_DIR"
unset PKG_CONFIG_PATH

if ! command -v valgrind >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        timeout 600 apt-get install -y -q valgrind >/dev/null
    fi
fi
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install -y valgrind)"; exit 1; }
echo "== C tests under valgrind (no invalid access, no definite or indirect leak)"
run_suite "${VALGRIND[@]}"
echo "== the C ABI: all tests passed"
