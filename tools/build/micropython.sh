#!/usr/bin/env bash
# Builds the MicroPython unix port that `make test` and `tukar sim --runtime micropython` run the
# firmware in: v1.28.0, 32-bit (object sizes as on the ESP32), with a GIL (as on the ESP32), SSL,
# FFI and btree off, freezing tools/tukar_tools/mpshim/manifest.py: exactly firmware/manifest.py (what
# the production image freezes) plus the host's stand-ins for the ESP32's built-in modules (machine,
# network, ntptime, esp32), which on the device take no heap for their code either; and with the
# user C module tools/tukar_tools/mpshim/c/tukarhw built in, the `machine` the frozen machine.py
# names: C, as on the device, so that its module, pins and buses take no heap.
#
#   tools/build/micropython.sh OUT      -> OUT/micropython
#
# Source: the tarball named by MICROPYTHON_SRC, checked against MICROPYTHON_SHA256; without it, the
# v1.28.0 tag cloned and checked against its pinned commit (and micropython-lib's).
set -euo pipefail
out=${1:?usage: micropython.sh OUT}
top=$(cd "$(dirname "$0")/../.." && pwd)
version=1.28.0
commit=e0e9fbb17ed6fd06bb76e266ae554784c9c80804
lib_commit=8380c7bb8f9e5e5260e9539156742925e00366b2
sha=${MICROPYTHON_SHA256:-2cbf0b247f9edcacb253a9215a919ca547c3b78ca6b8857df0f21d0f55568b19}
src="$out/micropython-$version"
mkdir -p "$out"
out=$(cd "$out" && pwd)
src="$out/micropython-$version"

if ! printf 'int main(void){return 0;}\n' | ${CC:-cc} -m32 -x c - -o /dev/null 2>/dev/null; then
    echo "micropython: no 32-bit C toolchain; install it with: sudo apt-get install -y gcc-multilib" >&2
    exit 1
fi

want="${MICROPYTHON_SRC:+$sha}"
want="${want:-git:$commit}"
if [ "$(cat "$src/.source-ok" 2>/dev/null)" != "$want" ]; then
    new="$src.new"  # fetched beside the old tree: a failed fetch leaves the last build usable
    rm -rf "$new"
    mkdir -p "$new"
    if [ -n "${MICROPYTHON_SRC:-}" ]; then
        [ -f "$MICROPYTHON_SRC" ] || { echo "micropython: MICROPYTHON_SRC=$MICROPYTHON_SRC: no such file" >&2; exit 1; }
        got=$(sha256sum "$MICROPYTHON_SRC" | cut -d' ' -f1)
        if [ "$got" != "$sha" ]; then
            echo "micropython: $MICROPYTHON_SRC has sha256 $got, expected $sha (set MICROPYTHON_SHA256 for another pinned tarball)" >&2
            exit 1
        fi
        echo "micropython: source from $MICROPYTHON_SRC (sha256 checked)"
        tar -xJf "$MICROPYTHON_SRC" -C "$new" --strip-components=1
    else
        echo "micropython: MICROPYTHON_SRC unset: cloning v$version (set MICROPYTHON_SRC to a pinned tarball to build offline)"
        git clone --quiet --depth 1 --branch "v$version" https://github.com/micropython/micropython "$new" \
            || { echo "micropython: could not fetch v$version; set MICROPYTHON_SRC to the pinned source tarball" >&2; exit 1; }
        got=$(git -C "$new" rev-parse HEAD)
        [ "$got" = "$commit" ] || { echo "micropython: v$version is $got, expected $commit" >&2; exit 1; }
        git -C "$new" submodule update --quiet --init lib/micropython-lib
        got=$(git -C "$new/lib/micropython-lib" rev-parse HEAD)
        [ "$got" = "$lib_commit" ] || { echo "micropython: micropython-lib is $got, expected $lib_commit" >&2; exit 1; }
    fi
    echo "$want" > "$new/.source-ok"
    rm -rf "$src"
    mv "$new" "$src"
fi

jobs=$(nproc 2>/dev/null || echo 2)
echo "micropython: building the 32-bit unix port with the firmware frozen (about a minute the first time)"
make -s -C "$src/mpy-cross" -j"$jobs" >"$out/mpy-cross.log" 2>&1 || { tail -20 "$out/mpy-cross.log" >&2; exit 1; }
make -s -C "$src/ports/unix" -j"$jobs" VARIANT=standard BUILD=build-32 MICROPY_FORCE_32BIT=1 \
    MICROPY_PY_THREAD_GIL=1 MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 MICROPY_PY_SSL=0 \
    FROZEN_MANIFEST="$top/tools/tukar_tools/mpshim/manifest.py" \
    USER_C_MODULES="$top/tools/tukar_tools/mpshim/c" >"$out/micropython.log" 2>&1 \
    || { tail -30 "$out/micropython.log" >&2; exit 1; }
cp "$src/ports/unix/build-32/micropython" "$out/micropython.new"
mv "$out/micropython.new" "$out/micropython"
# _tukarhw, without a host to connect to, raises OSError: an ImportError would mean it is not built in.
TUKAR_HW=127.0.0.1:0 "$out/micropython" -c "import sys, tukar, network, ntptime, esp32
assert sys.implementation._thread == 'GIL' and sys.maxsize == 2**31 - 1
try:
    import _tukarhw
except OSError:
    pass" \
    || { echo "micropython: the build is not 32-bit with a GIL, frozen tukar, the frozen stand-ins and _tukarhw" >&2; exit 1; }
echo "micropython: $out/micropython"
