# Pins as the drivers see them (value 1 = asserted, whatever the wiring): GPIOs, MCP23017
# expander bits with their shadow registers, and the CAN charger link. What each input reads when
# its chip does not answer (FAIL_LEVEL) is the safe level of cabinet.md.


class GpioIn:
    def __init__(self, pin, invert):
        self._pin = pin
        self._inv = 1 if invert else 0

    def value(self):
        return self._pin.value() ^ self._inv


def raw_input(adapter):
    """(object whose value() reads the level, the level that means asserted): a GPIO input's own
    pin, without the adapter's call; an expander bit as is."""
    if isinstance(adapter, GpioIn):
        return adapter._pin, 1 ^ adapter._inv
    return adapter, 1


class GpioOut:
    def __init__(self, pin, invert):
        self._pin = pin
        self._inv = 1 if invert else 0
        self.level = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self._pin.value(self.level ^ self._inv)


class Expander:
    """One MCP23017: the inputs latched by one read per scan, the outputs as a shadow word."""

    def __init__(self, dev, board, bus):
        # The MCP23017 driver: its direction, pull-up and IPOL masks are built in it, as pins are
        # attached (ten attributes here, not thirteen: a table of 10 entries instead of 17).
        self.dev = dev
        self._board = board
        self.bus = bus  # I2C bus id, for the board's error counters
        self.out_invert = 0  # outputs inverted here
        self.fail = 0  # logical input levels assumed when the chip does not answer
        self.state = 0
        self.out = 0  # logical output levels
        self.written = -1  # word last written to OLAT; -1 = unknown
        self.ok = False
        self.errors = 0

    def word(self):
        return self.out ^ self.out_invert

    def latch(self):
        try:
            self.state = self.dev.read()
            self.ok = True
        except OSError:
            self.state = self.fail
            self.ok = False
            self.errors += 1
            self._board.i2c_errors[self.bus] += 1

    def flush(self):
        w = self.word()
        if w == self.written:
            return True
        try:
            self.dev.write(w)
        except OSError:
            self.written = -1
            self.errors += 1
            self._board.i2c_errors[self.bus] += 1
            return False
        self.written = w
        return True


class XIn:
    def __init__(self, x, bit):
        self._x = x
        self._bit = bit

    def value(self):
        return (self._x.state >> self._bit) & 1


class XOut:
    def __init__(self, x, bit):
        self._x = x
        self._mask = 1 << bit

    def value(self, v=None):
        if v is None:
            return 1 if self._x.out & self._mask else 0
        if v:
            self._x.out |= self._mask
        else:
            self._x.out &= ~self._mask


# Logical level an input is taken to have when its expander does not answer: fail towards
# "no charging, no dispensing, alarm" (door open, unlocked, battery present, smoke, estop).
FAIL_LEVEL = {"door": 0, "presence": 1, "lock_feedback": 0, "smoke": 1, "estop": 1}


class CanChargerLink:
    """One slot's CAN charger, as tukar.charger.Charger drives it: a command on every change."""

    def __init__(self, board, slot):
        self._board = board
        self._slot = slot
        self.ma = 0

    def set_current(self, ma):
        if ma != self.ma:
            self.ma = ma
            self.send()

    def send(self):
        b = self._board
        can = b.can
        bank = b.can_charger_bank
        if can is not None and bank is not None:
            try:
                bank.send(can, self._slot, b.charge_voltage_mv[self._slot], self.ma)
            except OSError:
                b.spi_errors += 1  # the enable pin, the charger's own 5 s time-out still act


def input_pin(machine, expanders, v, role):
    """The adapter of a board-file input reference: a GPIO with its pull, or an expander bit (its
    pull-up, inversion and fail level set in the expander's registers)."""
    from tukar.boardfile import _ref  # construction only: boardfile is unloaded after the boot
    r = _ref(v, role)
    if r[0] == "gpio":
        Pin = machine.Pin
        if r[4] == "up":
            return GpioIn(Pin(r[1], Pin.IN, Pin.PULL_UP), r[3])
        if r[4] == "down":
            return GpioIn(Pin(r[1], Pin.IN, Pin.PULL_DOWN), r[3])
        return GpioIn(Pin(r[1], Pin.IN), r[3])
    x = expanders[r[1]]
    bit = 1 << r[2]
    if r[4] != "none":
        x.dev.pullups |= bit  # switches to ground: the chip's 100 k pull-up by default
    if r[3]:
        x.dev.invert |= bit  # inverted by the chip (IPOL)
    if FAIL_LEVEL[role]:
        x.fail |= bit
    return XIn(x, r[2])


def output_pin(machine, expanders, v, level):
    """The adapter of a board-file output reference, driven to `level` (logical) at once."""
    from tukar.boardfile import _ref
    r = _ref(v, "output")
    if r[0] == "gpio":
        Pin = machine.Pin
        o = GpioOut(Pin(r[1], Pin.OUT, value=level ^ (1 if r[3] else 0)), r[3])
        o.level = level
        return o
    x = expanders[r[1]]
    x.dev.inputs &= ~(1 << r[2])  # the direction mask: every pin an input until attached
    if r[3]:
        x.out_invert |= 1 << r[2]
    o = XOut(x, r[2])
    o.value(level)
    return o
