# What the 32-bit unix build of `make test`, the simulator and the benches freezes: everything a
# production image freezes (firmware/manifest.py, unchanged), and the host's stand-ins for what the
# ESP32 port has built in (`machine`, `network`, `ntptime`, and `esp32` with the OTA partitions in
# esp32_partition.py). Frozen, their code runs from the binary as on the device. `machine` itself is C (c/tukarhw, which tools/build/micropython.sh builds in):
# the frozen machine.py only makes `import machine` that module, so its objects take no heap
# either. The boards' manifests do not include this file.
include("../../../firmware/manifest.py")
module("machine.py", opt=3)
module("network.py", opt=3)
module("ntptime.py", opt=3)
module("esp32.py", opt=3)
module("esp32_partition.py", opt=3)
