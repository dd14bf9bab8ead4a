#!/usr/bin/env bash
# The production image: MicroPython's ESP32 port with the firmware frozen (boards/<board>/manifest.py
# includes firmware/manifest.py), so its code runs from flash and the heap is left to the data.
#
#   tools/build/image.sh BOARD      -> build/image-BOARD.bin, to flash with `make flash`
#
# Needs ESP-IDF (idf.py on PATH, from its export.sh) and a MicroPython v1.28.0 checkout with the
# ESP32 port's submodules, named by MICROPYTHON_DIR.
set -euo pipefail
board=${1:?usage: image.sh BOARD}
top=$(cd "$(dirname "$0")/../.." && pwd)
cfg="$top/boards/$board/board.json"
if [ ! -f "$cfg" ]; then
    echo "make image: unknown board '$board' (boards: $(ls "$top/boards" | tr '\n' ' '))" >&2
    exit 2
fi
if ! command -v idf.py >/dev/null 2>&1 || [ -z "${IDF_PATH:-}" ]; then
    echo "make image: ESP-IDF not found (idf.py is not on PATH or IDF_PATH is unset). Install ESP-IDF as MicroPython's ports/esp32/README.md says, run '. \$IDF_PATH/export.sh', then 'make image BOARD=$board' again." >&2
    exit 2
fi
mp=${MICROPYTHON_DIR:-}
if [ -z "$mp" ] || [ ! -f "$mp/ports/esp32/Makefile" ]; then
    echo "make image: MICROPYTHON_DIR must name a MicroPython v1.28.0 checkout with its ESP32 port (git clone --branch v1.28.0 https://github.com/micropython/micropython; make -C ports/esp32 submodules)" >&2
    exit 2
fi
chip=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chip"])' "$cfg")
case "$chip" in
    esp32) port_board=(BOARD=ESP32_GENERIC) ;;
    esp32s3) port_board=(BOARD=ESP32_GENERIC_S3 BOARD_VARIANT=SPIRAM_OCT) ;;
    *) echo "make image: board $board has chip '$chip', which tukar does not build for" >&2; exit 2 ;;
esac
make -C "$mp/mpy-cross"
make -C "$mp/ports/esp32" "${port_board[@]}" FROZEN_MANIFEST="$top/boards/$board/manifest.py"
build=$(ls -d "$mp"/ports/esp32/build-ESP32_GENERIC* | head -1)
mkdir -p "$top/build"
cp "$build/firmware.bin" "$top/build/image-$board.bin"
echo "make image: build/image-$board.bin (flash it: make flash PORT=... FIRMWARE=build/image-$board.bin)"
