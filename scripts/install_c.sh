#!/usr/bin/env bash
# Installs libmeridian for C and C++ programs, laid out as C users expect:
#
#   PREFIX/lib/libmeridian.so.0.1.0        the shared library, stripped, SONAME libmeridian.so.0.1
#   PREFIX/lib/libmeridian.so.0.1          -> libmeridian.so.0.1.0 (what programs load)
#   PREFIX/lib/libmeridian.so              -> libmeridian.so.0.1   (what -lmeridian finds)
#   PREFIX/lib/libmeridian.a               the static library: one object whose only global
#                                          symbols are meridian_* (link: -lpthread -ldl -lm)
#   PREFIX/include/meridian.h              the C header
#   PREFIX/include/meridian.hpp            the C++17 RAII wrapper
#   PREFIX/lib/pkgconfig/meridian.pc       pkg-config --cflags --libs meridian
#   PREFIX/lib/cmake/Meridian/             find_package(Meridian): Meridian::meridian,
#                                          Meridian::meridian_static
#   PREFIX/share/meridian/valgrind.supp    suppressions for ring's known false positives
#   PREFIX/share/doc/meridian/README.md    the C interface's README
#
#   bash scripts/install_c.sh [--prefix DIR] [--debug] [--no-build]
#
# --prefix defaults to /usr/local. The release build is the default; --debug installs the
# debug build (the test suite does, to reuse what it built). --no-build installs what
# target/ already holds. The pkg-config file and the CMake package locate the prefix from
# their own path, so an installed tree can be moved or packaged as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=/usr/local
PROFILE=release
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --debug) PROFILE=debug; shift ;;
        --no-build) BUILD=0; shift ;;
        *) echo "usage: $0 [--prefix DIR] [--debug] [--no-build]" >&2; exit 2 ;;
    esac
done
for tool in ld objcopy ar strip readelf; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y binutils)" >&2; exit 1; }
done

if [ "$BUILD" = 1 ]; then
    flags=(--locked -p meridian-ffi --lib)
    [ "$PROFILE" = release ] && flags+=(--release)
    echo "== cargo build ${flags[*]}"
    cargo build "${flags[@]}"
fi
LIBDIR="$ROOT/target/$PROFILE"
test -f "$LIBDIR/libmeridian.so" && test -f "$LIBDIR/libmeridian.a" \
    || { echo "no libmeridian in $LIBDIR: build it first" >&2; exit 1; }

# The version is the header's (tests/header.rs checks it against Cargo.toml).
version_part() { sed -n "s/^#define MERIDIAN_VERSION_$1 \([0-9]*\)$/\1/p" ffi-c/include/meridian.h; }
MAJOR=$(version_part MAJOR)
MINOR=$(version_part MINOR)
PATCH=$(version_part PATCH)
VERSION="$MAJOR.$MINOR.$PATCH"
# As ffi-c/build.rs sets it: a 0.x minor release may break the interface.
if [ "$MAJOR" = 0 ]; then SONAME="libmeridian.so.0.$MINOR"; else SONAME="libmeridian.so.$MAJOR"; fi
actual=$(readelf -d "$LIBDIR/libmeridian.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$actual" = "$SONAME" ] || { echo "libmeridian.so has SONAME '$actual', expected $SONAME" >&2; exit 1; }

echo "== installing libmeridian $VERSION into $PREFIX"
install -d "$PREFIX/lib/pkgconfig" "$PREFIX/lib/cmake/Meridian" "$PREFIX/include" \
    "$PREFIX/share/meridian" "$PREFIX/share/doc/meridian"

# Shared library: stripped (the build keeps line tables for backtraces: about 6x larger).
install -m 0755 "$LIBDIR/libmeridian.so" "$PREFIX/lib/libmeridian.so.$VERSION"
strip --strip-unneeded "$PREFIX/lib/libmeridian.so.$VERSION"
ln -sfn "libmeridian.so.$VERSION" "$PREFIX/lib/$SONAME"
ln -sfn "$SONAME" "$PREFIX/lib/libmeridian.so"

# Static library. A Rust staticlib exports every global symbol of std, tokio, quinn and
# ring, so a program linking two Rust libraries gets duplicate symbols. Linking all its
# members into one relocatable object and keeping only meridian_* global hides the rest.
# `--target` keeps ar and objcopy from handing the object to an LTO plugin (LLVM's chokes
# on an object with more than 65,535 sections).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ld -r -o "$work/all.o" --whole-archive "$LIBDIR/libmeridian.a"
readelf -sW "$work/all.o" | awk '$5 == "GLOBAL" && $7 != "UND" && $8 ~ /^meridian_/ {print $8}' \
    | sort -u >"$work/keep"
[ -s "$work/keep" ] || { echo "no meridian_* symbols in libmeridian.a" >&2; exit 1; }
objcopy --target=elf64-x86-64 --strip-debug --keep-global-symbols="$work/keep" \
    "$work/all.o" "$work/meridian.o"
rm -f "$work/libmeridian.a"
ar --target=elf64-x86-64 rcs "$work/libmeridian.a" "$work/meridian.o"
install -m 0644 "$work/libmeridian.a" "$PREFIX/lib/libmeridian.a"

install -m 0644 ffi-c/include/meridian.h ffi-c/include/meridian.hpp "$PREFIX/include/"
install -m 0644 tests/c/valgrind.supp "$PREFIX/share/meridian/valgrind.supp"
install -m 0644 ffi-c/README.md "$PREFIX/share/doc/meridian/README.md"

# pkg-config: ${pcfiledir} makes the file relocatable (pkgconf and pkg-config >= 0.27).
cat >"$PREFIX/lib/pkgconfig/meridian.pc" <<EOF
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: meridian
Description: Low-latency RPC over QUIC with multi-region routing (C interface)
Version: $VERSION
Libs: -L\${libdir} -lmeridian
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
EOF

cat >"$PREFIX/lib/cmake/Meridian/MeridianConfig.cmake" <<EOF
# CMake package for libmeridian $VERSION, written by scripts/install_c.sh.
#   find_package(Meridian 0.$MINOR REQUIRED)
#   target_link_libraries(app PRIVATE Meridian::meridian)         # shared
#   target_link_libraries(app PRIVATE Meridian::meridian_static)  # static
get_filename_component(_meridian_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(Meridian_VERSION $VERSION)
set(Meridian_INCLUDE_DIRS "\${_meridian_prefix}/include")
if(NOT TARGET Meridian::meridian)
  add_library(Meridian::meridian SHARED IMPORTED)
  set_target_properties(Meridian::meridian PROPERTIES
    IMPORTED_LOCATION "\${_meridian_prefix}/lib/libmeridian.so.$VERSION"
    IMPORTED_SONAME "$SONAME"
    INTERFACE_INCLUDE_DIRECTORIES "\${_meridian_prefix}/include")
endif()
if(NOT TARGET Meridian::meridian_static)
  find_package(Threads REQUIRED)
  add_library(Meridian::meridian_static STATIC IMPORTED)
  set_target_properties(Meridian::meridian_static PROPERTIES
    IMPORTED_LOCATION "\${_meridian_prefix}/lib/libmeridian.a"
    INTERFACE_INCLUDE_DIRECTORIES "\${_meridian_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;\${CMAKE_DL_LIBS};m")
endif()
set(Meridian_LIBRARIES Meridian::meridian)
unset(_meridian_prefix)
EOF

# Compatibility: 0.x versions are compatible only within one minor version, later ones
# within one major version (the SONAME rule).
cat >"$PREFIX/lib/cmake/Meridian/MeridianConfigVersion.cmake" <<EOF
set(PACKAGE_VERSION "$VERSION")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(NOT PACKAGE_FIND_VERSION_MAJOR EQUAL $MAJOR)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif($MAJOR EQUAL 0 AND NOT PACKAGE_FIND_VERSION_MINOR EQUAL $MINOR)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
if(NOT CMAKE_SIZEOF_VOID_P STREQUAL "" AND NOT CMAKE_SIZEOF_VOID_P STREQUAL "8")
  set(PACKAGE_VERSION "\${PACKAGE_VERSION} (64-bit)")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
EOF

echo "== installed:"
(cd "$PREFIX" && ls -l lib/libmeridian.* include/meridian.h* lib/pkgconfig/meridian.pc \
    lib/cmake/Meridian/*.cmake share/meridian/valgrind.supp | awk '{print "   " $5 "\t" $9 $10 $11}')
