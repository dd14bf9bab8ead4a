# What the production image freezes into flash, in one place: the boards' manifests and the
# 32-bit unix build that `make test` runs include this file, so the two cannot drift. asyncio and
# umqtt.simple are what the stock ESP32 port freezes too (an include is read once, so a port
# manifest that already has them is no conflict); tukar is compiled into flash to spare heap.
include("$(MPY_DIR)/extmod/asyncio")
require("umqtt.simple")
package("tukar", opt=3)
