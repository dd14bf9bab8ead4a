# `machine` in the unix build: the C module _tukarhw (c/tukarhw/tukarhw.c, built in by
# tools/build/micropython.sh), which forwards every call to the host, as the ESP32 port's machine
# is C. The port has a `machine` of its own, which this frozen file shadows; _alias gives the
# module being imported here the C module's names (its dictionary is then let go), so `import
# machine` takes no heap beyond the module object (16 bytes).
import _tukarhw

_tukarhw._alias(__name__)
