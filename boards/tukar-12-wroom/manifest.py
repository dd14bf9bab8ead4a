# Frozen build of the tukar firmware for tukar-12-wroom: the port's own manifest (which freezes
# umqtt among others), then firmware/manifest.py:
# what every tukar image freezes (asyncio, umqtt.simple and the tukar package), one list for all.
# make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=$(pwd)/boards/tukar-12-wroom/manifest.py
include("$(PORT_DIR)/boards/manifest.py")
include("../../firmware/manifest.py")
