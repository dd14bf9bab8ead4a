# TCA9548A 8-channel I2C switch: gives each slot's SBS battery (all at 0x0B) its own channel.
# The bus and pins are passed in. select() caches the channel so a steady poll writes nothing.
from micropython import const

_RECOVERY_PULSES = const(9)
_UNKNOWN = const(-1)


def clock_free(scl_pin, sda_pin):
    """Free a bus a device holds low: up to 9 SCL clocks until SDA is released, then a STOP.
    Turns both pins into open-drain GPIOs: the caller re-initialises its I2C afterwards."""
    od = scl_pin.OPEN_DRAIN
    scl_pin.init(od, value=1)
    sda_pin.init(od, value=1)
    for _ in range(_RECOVERY_PULSES):
        if sda_pin.value():
            break
        scl_pin.value(0)
        scl_pin.value(1)
    # STOP: SDA rises while SCL is high.
    scl_pin.value(0)
    sda_pin.value(0)
    scl_pin.value(1)
    sda_pin.value(1)


class TCA9548A:
    def __init__(self, i2c, addr=0x70, reset_pin=None):
        self.i2c = i2c
        self.addr = addr
        self.reset_pin = reset_pin
        self._buf = bytearray(1)
        self._mask = _UNKNOWN  # control register as we last wrote it; unknown after an error

    def _write(self, mask):
        self._buf[0] = mask
        try:
            self.i2c.writeto(self.addr, self._buf)
        except OSError:
            self._mask = _UNKNOWN
            raise
        self._mask = mask

    def select(self, ch):
        """Route channel ch (0..7) alone; no bus traffic when it already is."""
        if not 0 <= ch <= 7:
            raise ValueError("TCA9548A channel 0..7")
        mask = 1 << ch
        if self._mask != mask:
            self._write(mask)

    def deselect(self):
        if self._mask != 0:
            self._write(0)

    @property
    def channel(self):
        """The routed channel, or None when none or unknown."""
        m = self._mask
        if m <= 0:
            return None
        ch = 0
        while not m & 1:
            m >>= 1
            ch += 1
        return ch

    def forget(self):
        """Make the next select() write, e.g. after the switch may have been power-cycled."""
        self._mask = _UNKNOWN

    def recover(self, scl_pin, sda_pin):
        """Free a bus a device holds low: up to 9 SCL clocks, a STOP, then pulse RESET if wired.

        scl_pin and sda_pin are the bus's Pin objects; this turns them into open-drain GPIOs,
        so the caller re-initialises its I2C afterwards. Returns True if SDA reads high at the end.
        """
        clock_free(scl_pin, sda_pin)
        if self.reset_pin is not None:
            try:
                self.reset_pin.value(0)  # RESET is active low; 6 ns minimum, a GPIO write is longer
            finally:
                self.reset_pin.value(1)
            self._mask = 0
        else:
            self._mask = _UNKNOWN
        return bool(sda_pin.value())
