# `machine` in the unix build: the C module _tukarhw (c/tukarhw/tukarhw.c, built in by
# tools/build/micropython.sh), which forwards every call to the host, as the ESP32 port's machine
# is C. The port has a `machine` of its own, which this frozen file shadows; _alias gives the
# module being imported here the C module's names (its dictionary is then let go), so `import
# machine` takes no heap beyond the module object (16 bytes).
#
# The simulator cannot swap frozen code: whatever the partition, the same firmware runs, as the
# version the booted image's header names. The host's bootloader model (tools/tukar_tools/shim/
# esp32.py, `boot`, run before every start of the process) reads that header and passes the version
# in TUKAR_FW_VERSION; it becomes tukar.FW_VERSION here, before main.py imports the firmware, as
# the CPython runtime sets it in its own process.

import os  # noqa: E402  (module-level names go with the dictionary _alias lets go)

if os.getenv("TUKAR_FW_VERSION"):
    import tukar
    tukar.FW_VERSION = os.getenv("TUKAR_FW_VERSION")
import _tukarhw  # noqa: E402

_tukarhw._alias(__name__)
