# The device's entry point. Everything is in tukar.device (frozen into flash with the package, so
# this file, which MicroPython compiles into the heap at every boot, stays three lines): the
# board's outputs safe first (rule 9), the maintenance escape, config, watchdog, the application,
# and a reset with outputs safe whenever the application ends.
import machine

from tukar import device

device.start(machine)
