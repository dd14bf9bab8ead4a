# Frozen build of the tukar firmware for tukar-12-wroom: the port's own manifest (which freezes
# umqtt among others), then the tukar package from firmware/, compiled into flash to spare heap.
# make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=$(pwd)/boards/tukar-12-wroom/manifest.py
include("$(PORT_DIR)/boards/manifest.py")
package("tukar", base_path="../../firmware", opt=3)
