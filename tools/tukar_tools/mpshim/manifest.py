# What the 32-bit unix build of `make test`, the simulator and the benches freezes: everything a
# production image freezes (firmware/manifest.py, unchanged), and the host's stand-ins for what the
# ESP32 port has in C (`machine`, `network`, `ntptime`). Frozen, their code runs from the binary as
# the C modules' does on the device, so the firmware's heap holds only what it would hold there.
# The boards' manifests do not include this file.
include("../../../firmware/manifest.py")
module("machine.py", opt=3)
module("network.py", opt=3)
module("ntptime.py", opt=3)
