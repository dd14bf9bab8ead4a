# MCP23017 16-bit I2C I/O expander carrying slot doors, presence and lock switches, and outputs.
# IOCON.BANK = 0 (A/B interleaved, sequential). read() and write() are one I2C transaction each
# and allocate nothing: both ports go through one preallocated 2-byte buffer.
from micropython import const

_IODIRA = const(0x00)
_IPOLA = const(0x02)
_IOCON = const(0x0A)
_GPPUA = const(0x0C)
_GPIOA = const(0x12)
_OLATA = const(0x14)


class MCP23017:
    """Pins 0..7 are GPA0..7, 8..15 are GPB0..7. inputs/pullups/invert are 16-bit masks."""

    def __init__(self, i2c, addr=0x20, inputs=0xFFFF, pullups=0, invert=0):
        self.i2c = i2c
        self.addr = addr
        self.inputs = inputs & 0xFFFF
        self.pullups = pullups & 0xFFFF
        self.invert = invert & 0xFFFF
        self.latch = 0  # what the output latches hold
        self._buf = bytearray(4)
        self._b2 = memoryview(self._buf)[:2]  # eight attributes: a table of 8 entries, not 10

    def _put16(self, reg, value):
        b = self._buf
        b[0] = value & 0xFF
        b[1] = (value >> 8) & 0xFF
        self.i2c.writeto_mem(self.addr, reg, self._b2)

    def configure(self):
        """Write the latch before the directions, so an output never glitches on."""
        b1 = memoryview(self._buf)[:1]  # configure() runs only from safe_outputs()
        b1[0] = 0x00  # IOCON: BANK 0, sequential, INT push-pull active low
        self.i2c.writeto_mem(self.addr, _IOCON, b1)
        self._put16(_OLATA, self.latch)
        self._put16(_GPPUA, self.pullups)
        b = self._buf
        b[0] = self.inputs & 0xFF
        b[1] = self.inputs >> 8
        b[2] = self.invert & 0xFF
        b[3] = self.invert >> 8
        self.i2c.writeto_mem(self.addr, _IODIRA, b)  # IODIRA, IODIRB, IPOLA, IPOLB

    def read(self):
        """GPIOB << 8 | GPIOA in one transaction (inputs already inverted by IPOL)."""
        self.i2c.readfrom_mem_into(self.addr, _GPIOA, self._b2)
        b = self._buf
        return b[0] | (b[1] << 8)

    def write(self, value):
        """Set all output latches (OLATA then OLATB in one transaction)."""
        self.latch = value & 0xFFFF
        self._put16(_OLATA, self.latch)

    def set(self, pin, level):
        if level:
            v = self.latch | (1 << pin)
        else:
            v = self.latch & ~(1 << pin)
        if v != self.latch:
            self.write(v)
