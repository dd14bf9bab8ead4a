# `_tukarhw`, the unix build's `machine` (see tukarhw.c): a user C module, built into the unix port
# by tools/build/micropython.sh (USER_C_MODULES=tools/tukar_tools/mpshim/c). Only that make-built
# port takes it; no ESP32 image does (the device has its own machine).
TUKARHW_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(TUKARHW_DIR)/tukarhw.c
