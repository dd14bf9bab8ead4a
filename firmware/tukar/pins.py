# Pins as the drivers see them (value 1 = asserted, whatever the wiring): GPIOs, MCP23017
# expander bits with their shadow registers, and the CAN charger link. What each input reads when
# its chip does not answer (FAIL_LEVEL) is the safe level of cabinet.md.


class Gpio:
    """The board's GPIOs as one bank of bits, as an expander is one (bit k: pins[k]): a slot's
    switch or output is a number, bank << 5 | bit (tukar.board.Board.banks), not an object of its
    own (an object a pin was 32 bytes of heap, 60 of them on a 12-slot board). Inputs are read
    into `state` by latch(), outputs written at once; levels are logical (inversion applied)."""

    def __init__(self):
        self.pins = []
        self.inv = 0  # bits inverted by the wiring
        self.ins = 0  # bits that are inputs
        self.state = 0  # the inputs' logical levels at the last latch()
        self.out = 0  # the outputs' logical levels

    def add(self, pin, invert, is_input):
        k = len(self.pins)
        if k >= 32:
            raise ValueError("more than 32 GPIOs in the board's switches and outputs")
        self.pins.append(pin)
        if invert:
            self.inv |= 1 << k
        if is_input:
            self.ins |= 1 << k
        return k

    def latch(self):
        st = 0
        pins = self.pins
        m = self.ins
        k = 0
        while m:
            if m & 1:
                st |= pins[k].value() << k
            m >>= 1
            k += 1
        self.state = st ^ (self.inv & self.ins)

    def get(self, bit):
        """A bit's logical level now: an input read from its pin, an output as commanded."""
        if self.ins >> bit & 1:
            return self.pins[bit].value() ^ (self.inv >> bit & 1)
        return self.out >> bit & 1

    def put(self, bit, v):
        m = 1 << bit
        if v:
            self.out |= m
        else:
            self.out &= ~m
        self.pins[bit].value((1 if v else 0) ^ (self.inv >> bit & 1))


class Bit:
    """One cabinet-wide switch or output (smoke, estop, fan, alarm) as an object with value(),
    on either kind of bank."""

    def __init__(self, bank, bit):
        self.bank = bank
        self.bit = bit

    def value(self, v=None):
        if v is None:
            return self.bank.get(self.bit)
        self.bank.put(self.bit, v)


def raw_input(b):
    """(object whose value() reads the level, the level that means asserted): a GPIO input's own
    pin, without the bank's call; an expander bit as is."""
    g = b.bank
    if isinstance(g, Gpio):
        return g.pins[b.bit], 1 ^ (g.inv >> b.bit & 1)
    return b, 1


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

    def get(self, bit):
        """A bit's logical level: an input as last latched, an output as commanded."""
        if self.dev.inputs >> bit & 1:
            return self.state >> bit & 1
        return self.out >> bit & 1

    def put(self, bit, v):
        if v:
            self.out |= 1 << bit
        else:
            self.out &= ~(1 << bit)

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


def input_pin(machine, banks, v, role):
    """The bank and bit of a board-file input reference (tukar.board.Board.banks: the expanders,
    then the GPIOs): a GPIO with its pull, or an expander bit (its pull-up, inversion and fail
    level set in the expander's registers)."""
    from tukar.boardfile import _ref  # construction only: boardfile is unloaded after the boot
    r = _ref(v, role)
    if r[0] == "gpio":
        Pin = machine.Pin
        if r[4] == "up":
            pin = Pin(r[1], Pin.IN, Pin.PULL_UP)
        elif r[4] == "down":
            pin = Pin(r[1], Pin.IN, Pin.PULL_DOWN)
        else:
            pin = Pin(r[1], Pin.IN)
        g = banks[-1]
        return g, g.add(pin, r[3], True)
    x = banks[r[1]]
    bit = 1 << r[2]
    if r[4] != "none":
        x.dev.pullups |= bit  # switches to ground: the chip's 100 k pull-up by default
    if r[3]:
        x.dev.invert |= bit  # inverted by the chip (IPOL)
    if FAIL_LEVEL[role]:
        x.fail |= bit
    return x, r[2]


def output_pin(machine, banks, v, level):
    """The bank and bit of a board-file output reference, driven to `level` (logical) at once."""
    from tukar.boardfile import _ref
    r = _ref(v, "output")
    if r[0] == "gpio":
        Pin = machine.Pin
        g = banks[-1]
        k = g.add(Pin(r[1], Pin.OUT, value=level ^ (1 if r[3] else 0)), r[3], False)
        if level:
            g.out |= 1 << k
        return g, k
    x = banks[r[1]]
    x.dev.inputs &= ~(1 << r[2])  # the direction mask: every pin an input until attached
    if r[3]:
        x.out_invert |= 1 << r[2]
    x.put(r[2], level)
    return x, r[2]
