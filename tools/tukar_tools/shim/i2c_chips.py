# Byte-level models of the cabinet's I2C chips: the TCA9548A mux, SBS smart batteries and the
# MCP23017 expander. They attach to a tukar_tools.shim.hw I2CBusModel and answer like the parts.
from tukar_tools.shim.hw import I2CBusModel, I2CDevice, _fault_consume


def smbus_crc8(data, crc=0):
    """SMBus PEC: CRC-8, polynomial 0x07, initial 0, no reflection."""
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class TCA9548A(I2CDevice):
    """8-channel I2C switch: one control register, a bit per channel, several may be on at once.

    RESET is active low: a low level clears the control register (and, in this model, lets go of
    any downstream device holding SDA low: the switch isolates it).
    """

    def __init__(self, hw, address=0x70, reset_pin=None):
        if not 0x70 <= address <= 0x77:
            raise ValueError("TCA9548A answers at 0x70..0x77")
        super().__init__(address)
        self.hw = hw
        self.control = 0
        self.writes = 0
        self._buses: "list[I2CBusModel | None]" = [None] * 8
        self.upstream = None  # the bus it is attached to
        if reset_pin is not None:
            hw.pin(reset_pin).listeners.append(self._on_reset)

    def channel_bus(self, ch):
        if not 0 <= ch < 8:
            raise ValueError("channel 0..7")
        b = self._buses[ch]
        if b is None:
            b = self._buses[ch] = I2CBusModel(self.hw, ("tca9548a", self.address, ch), self)
        return b

    def routed_buses(self):
        for ch in range(8):
            if self.control & (1 << ch):
                yield self.channel_bus(ch)

    def _on_reset(self, pin, level):
        if level:
            return
        self.control = 0
        for b in self._buses:
            if b is not None:
                b.stuck_pulses = 0
        self._refresh()

    def _refresh(self):
        for b in self._buses:
            if b is not None:
                b._refresh_sda()
                return

    def i2c_start(self, read):
        return True

    def i2c_write(self, byte):
        self.control = byte
        self.writes += 1
        self._refresh()
        return True

    def i2c_read(self, ack):
        return self.control


class BatteryState:
    """What an SBS battery reports; a simulator changes these fields as the pack charges."""

    def __init__(self, soc_pct=80, temp_dk=2981, voltage_mv=52000, current_ma=0,
                 remaining=24000, full_capacity=30000, design_capacity=30000,
                 charging_current_ma=10000, charging_voltage_mv=54600, status=0x00C0,
                 cycles=12, serial=0x0042, manufacture_date=(2024, 3, 15),
                 manufacturer="TUKAR", device_name="ref48v", spec_info=0x0031, mode=0x0000):
        self.soc_pct = soc_pct
        self.temp_dk = temp_dk  # 0.1 K
        self.voltage_mv = voltage_mv
        self.current_ma = current_ma  # signed, positive while charging
        self.remaining = remaining  # mAh, or 10 mWh when mode bit 15 is set
        self.full_capacity = full_capacity
        self.design_capacity = design_capacity
        self.charging_current_ma = charging_current_ma
        self.charging_voltage_mv = charging_voltage_mv
        self.status = status  # BatteryStatus bits
        self.cycles = cycles
        self.serial = serial
        self.manufacture_date = manufacture_date  # (year, month, day)
        self.manufacturer = manufacturer
        self.device_name = device_name
        self.spec_info = spec_info  # bits 7:4 = 3: SBS 1.1 with PEC
        self.mode = mode  # BatteryMode; bit 15 CAPACITY_MODE: capacities in 10 mWh

    @property
    def pec(self):
        return (self.spec_info >> 4) & 0x0F == 3

    def word(self, cmd):
        """The 16-bit value of a word command, or None if the battery does not know it."""
        if cmd == 0x03:
            return self.mode
        if cmd == 0x08:
            return self.temp_dk
        if cmd == 0x09:
            return self.voltage_mv
        if cmd == 0x0A:
            return self.current_ma & 0xFFFF
        if cmd == 0x0D:
            return self.soc_pct
        if cmd == 0x0F:
            return self.remaining
        if cmd == 0x10:
            return self.full_capacity
        if cmd == 0x14:
            return self.charging_current_ma
        if cmd == 0x15:
            return self.charging_voltage_mv
        if cmd == 0x16:
            return self.status
        if cmd == 0x17:
            return self.cycles
        if cmd == 0x18:
            return self.design_capacity
        if cmd == 0x1A:
            return self.spec_info
        if cmd == 0x1B:
            y, m, d = self.manufacture_date
            return (((y - 1980) << 9) | (m << 5) | d) & 0xFFFF
        if cmd == 0x1C:
            return self.serial
        return None

    def block(self, cmd):
        if cmd == 0x20:
            return self.manufacturer.encode()[:32]
        if cmd == 0x21:
            return self.device_name.encode()[:32]
        return None


class SmartBattery(I2CDevice):
    """SBS 1.1 battery at 0x0B: word and block reads, PEC when SpecificationInfo says so.

    Faults (hw.fault(battery, True, kind, count)): 'nack', 'absent', 'corrupt' from the bus, and
    'corrupt_pec': the PEC byte of the next reads is wrong.
    """

    def __init__(self, state=None, address=0x0B):
        super().__init__(address)
        self.state = state or BatteryState()
        self.reads = []  # commands read, in order, for tests
        self._wire = []
        self._cmd = None
        self._out = b""
        self._pos = 0
        self._written = []

    def i2c_start(self, read):
        addr_byte = (self.address << 1) | (1 if read else 0)
        if not read:
            self._wire = [addr_byte]
            self._cmd = None
            self._written = []
            return True
        if self._cmd is None:
            return False  # a read with no command first: not modelled
        self._wire.append(addr_byte)
        st = self.state
        w = st.word(self._cmd)
        if w is not None:
            data = bytes((w & 0xFF, (w >> 8) & 0xFF))
        else:
            blk = st.block(self._cmd) or b""
            data = bytes((len(blk),)) + blk
        if st.pec:
            pec = smbus_crc8(bytes(self._wire) + data)
            if _fault_consume(self, "corrupt_pec"):
                pec ^= 0x5A
            data += bytes((pec,))
        self.reads.append(self._cmd)
        self._out = data
        self._pos = 0
        return True

    def i2c_write(self, byte):
        if self._cmd is None:
            if self.state.word(byte) is None and self.state.block(byte) is None:
                return False  # unsupported command: NACK
            self._cmd = byte
            self._wire.append(byte)
            return True
        self._written.append(byte)
        return True

    def i2c_read(self, ack):
        if self._pos < len(self._out):
            v = self._out[self._pos]
        else:
            v = 0xFF
        self._pos += 1
        return v

    def i2c_stop(self):
        # A word write (BatteryMode only): command, low, high [, PEC].
        if self._cmd == 0x03 and len(self._written) >= 2:
            self.state.mode = self._written[0] | (self._written[1] << 8)
        self._written = []


_IOCON_A = 0x0A
_IOCON_B = 0x0B
_GPIOA = 0x12
_OLATA = 0x14
_NREG = 0x16


class MCP23017(I2CDevice):
    """16-bit I/O expander, IOCON.BANK = 0: registers interleaved A/B, pointer auto-increments.

    The world drives input pins with set_input(pin, level) (pin 0..7 = GPA0..7, 8..15 =
    GPB0..7) and sees outputs with output(pin) / outputs().
    """

    def __init__(self, address=0x20):
        if not 0x20 <= address <= 0x27:
            raise ValueError("MCP23017 answers at 0x20..0x27")
        super().__init__(address)
        self.regs = bytearray(_NREG)
        self.regs[0x00] = self.regs[0x01] = 0xFF  # IODIR: all inputs after reset
        self.world: "list[int | None]" = [None] * 16
        self._ptr = 0
        self._have_ptr = False
        # The world may watch the wire: on_write() after every register write (an output may have
        # changed), on_read() before the inputs are read (to put its levels of that instant there).
        self.on_write = None
        self.on_read = None

    def _reg16(self, a):
        return self.regs[a] | (self.regs[a + 1] << 8)

    def power_on_reset(self):
        """Registers as after power-up: every pin an input, latches cleared."""
        self.regs[:] = bytes(len(self.regs))
        self.regs[0x00] = self.regs[0x01] = 0xFF
        self._have_ptr = False

    def set_input(self, pin, level):
        self.world[pin] = None if level is None else (1 if level else 0)

    def pin_level(self, pin):
        """Level on the wire of pin 0..15."""
        bit = 1 << pin
        if not self._reg16(0x00) & bit:
            return 1 if self._reg16(_OLATA) & bit else 0
        w = self.world[pin]
        if w is not None:
            return w
        return 1 if self._reg16(0x0C) & bit else 0  # pulled up, or floating low

    def output(self, pin):
        if self._reg16(0x00) & (1 << pin):
            raise ValueError("MCP23017 pin %d is an input" % pin)
        return self.pin_level(pin)

    def outputs(self):
        return self._reg16(_OLATA) & ~self._reg16(0x00) & 0xFFFF

    def _read_reg(self, r):
        if r in (_GPIOA, _GPIOA + 1):
            if self.on_read is not None:
                self.on_read()
            base = (r - _GPIOA) * 8
            iodir = self.regs[r - _GPIOA]
            ipol = self.regs[0x02 + r - _GPIOA]
            v = 0
            for i in range(8):
                level = self.pin_level(base + i)
                if iodir & (1 << i) and ipol & (1 << i):
                    level ^= 1
                v |= level << i
            return v
        return self.regs[r]

    def _write_reg(self, r, byte):
        if r in (_GPIOA, _GPIOA + 1):
            r += 2  # writing GPIO writes OLAT
        if r in (0x0E, 0x0F, 0x10, 0x11):
            return  # INTF/INTCAP are read-only
        if r in (_IOCON_A, _IOCON_B):
            if byte & 0x80:
                raise NotImplementedError("IOCON.BANK = 1 is not modelled")
            self.regs[_IOCON_A] = self.regs[_IOCON_B] = byte
            return
        self.regs[r] = byte
        if self.on_write is not None:
            self.on_write()

    def _advance(self):
        if not self.regs[_IOCON_A] & 0x20:  # SEQOP = 0: sequential
            self._ptr = (self._ptr + 1) % _NREG

    def i2c_start(self, read):
        if not read:
            self._have_ptr = False
        return True

    def i2c_write(self, byte):
        if not self._have_ptr:
            if byte >= _NREG:
                return False
            self._ptr = byte
            self._have_ptr = True
            return True
        self._write_reg(self._ptr, byte)
        self._advance()
        return True

    def i2c_read(self, ack):
        v = self._read_reg(self._ptr)
        self._advance()
        return v
