# Host stand-in for MicroPython's `machine` module (ESP32 port): same signatures, same
# constants, same OSErrors, acting on the simulated electronics of tukar_tools.shim.hw.
# Every object binds to hw.current() when it is constructed.
import errno

from tukar_tools.shim import hw as _hw

PWRON_RESET = _hw.PWRON_RESET
HARD_RESET = _hw.HARD_RESET
WDT_RESET = _hw.WDT_RESET
DEEPSLEEP_RESET = _hw.DEEPSLEEP_RESET
SOFT_RESET = _hw.SOFT_RESET

_MAX_GPIO = 48
_EOPNOTSUPP = 95


class ResetRequested(SystemExit):
    """machine.reset() on the host: the simulator catches it and reboots the firmware."""


def _pin_id(p):
    if isinstance(p, Pin):
        return p.id
    if isinstance(p, int):
        return p
    raise TypeError("pin must be a Pin or an int")


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    PULL_HOLD = 4
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0, DRIVE_1, DRIVE_2, DRIVE_3 = 0, 1, 2, 3

    def __init__(self, id, mode=-1, pull=-1, value=None, **kw):
        if not isinstance(id, int) or not 0 <= id <= _MAX_GPIO:
            raise ValueError("invalid pin")
        self._hw = _hw.current()
        self.id = id
        self._m = self._hw.pin(id)
        self.init(mode, pull, value=value, **kw)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        m = self._m
        if value is not None:
            m.driven = 1 if value else 0
        if mode is not None and mode != -1:
            if mode == Pin.IN:
                m.mode, m.open_drain = "in", False
            elif mode in (Pin.OUT, Pin.OPEN_DRAIN):
                if self.id in self._hw.input_only:
                    raise ValueError("pin can only be input")
                m.mode, m.open_drain = "out", mode == Pin.OPEN_DRAIN
            else:
                raise ValueError("invalid pin mode")
        if pull != -1:
            m.pull = {None: None, Pin.PULL_UP: "up", Pin.PULL_DOWN: "down"}.get(pull, None)
        m.update()

    def value(self, x=None):
        if x is None:
            return self._m.value
        self._m.driven = 1 if x else 0
        self._m.update()

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, wake=None, hard=False):
        self._m.irq_handler = handler
        self._m.irq_trigger = trigger
        self._m.irq_pin = self
        return _PinIRQ(self._m)

    def __repr__(self):
        return "Pin(%d)" % self.id


class _PinIRQ:
    def __init__(self, m):
        self._m = m

    def trigger(self):
        return self._m.irq_trigger


class I2C:
    """Hardware I2C of the ESP32 port (ids 0 and 1): a NACK raises ENODEV, a stuck bus ETIMEDOUT.
    As on the port, there is one object per bus: constructing I2C(id, ...) again returns it,
    configured afresh (pins, freq, timeout), and init() raises OSError (EOPNOTSUPP)."""

    _DEFAULT_PINS = {0: (18, 19), 1: (25, 26)}

    def __new__(cls, id=0, **kw):
        if cls is not I2C:
            return super().__new__(cls)
        hw = _hw.current()
        objs = hw.__dict__.setdefault("_i2c_objects", {})
        obj = objs.get(id)
        if obj is None:
            obj = objs[id] = super().__new__(cls)
        return obj

    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in self._DEFAULT_PINS:
            raise ValueError("I2C(%r) doesn't exist" % (id,))
        d_scl, d_sda = self._DEFAULT_PINS[id]
        self._hw = _hw.current()
        self._bus = self._hw.i2c_bus(id)
        self.id = id
        self._configure(scl=d_scl if scl is None else scl, sda=d_sda if sda is None else sda,
                        freq=freq, timeout=timeout)

    def init(self, *a, **k):
        raise OSError(_EOPNOTSUPP, "EOPNOTSUPP: the ESP32's hardware I2C has no init()")

    def _configure(self, scl=None, sda=None, freq=400000, timeout=50000):
        if scl is not None and sda is not None:
            self._scl, self._sda = _pin_id(scl), _pin_id(sda)
            self._bus.bind_pins(self._scl, self._sda)
        self.freq = freq
        self.timeout = timeout
        self._bus.timeout_us = timeout
        self._bus.configured = getattr(self._bus, "configured", 0) + 1

    def deinit(self):
        pass

    @property
    def stats(self):
        return self._bus.stats

    @property
    def bus(self):
        return self._bus

    def _xfer(self, segments, stop=True):
        self._bus.stats.calls += 1
        return self._bus.transfer(segments, stop)

    def scan(self):
        found = []
        for addr in range(0x08, 0x78):
            try:
                self._xfer([(addr, b"", 0)])
            except OSError as e:
                if e.errno == _hw.ETIMEDOUT:
                    raise
                continue
            found.append(addr)
        return found

    def readfrom(self, addr, nbytes, stop=True):
        return self._xfer([(addr, None, nbytes)], stop)[0]

    def readfrom_into(self, addr, buf, stop=True):
        data = self._xfer([(addr, None, len(buf))], stop)[0]
        buf[:] = data

    def writeto(self, addr, buf, stop=True):
        return self._xfer([(addr, bytes(buf), 0)], stop)[1] - 1

    def writevto(self, addr, vector, stop=True):
        data = b"".join(bytes(b) for b in vector)
        return self._xfer([(addr, data, 0)], stop)[1] - 1

    @staticmethod
    def _memaddr(memaddr, addrsize):
        if addrsize not in (8, 16, 24, 32):
            raise ValueError("invalid addrsize")
        n = addrsize // 8
        return bytes((memaddr >> (8 * (n - 1 - i))) & 0xFF for i in range(n))

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return self._xfer([(addr, self._memaddr(memaddr, addrsize), 0), (addr, None, nbytes)])[0]

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = self._xfer([(addr, self._memaddr(memaddr, addrsize), 0), (addr, None, len(buf))])[0]
        buf[:] = data

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._xfer([(addr, self._memaddr(memaddr, addrsize) + bytes(buf), 0)])


class SoftI2C(I2C):
    """Bit-banged I2C: same bus model, found by its pins; it does have init()."""

    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        self._hw = _hw.current()
        s, d = _pin_id(scl), _pin_id(sda)
        bus = None
        for b in self._hw.i2c.values():
            if b.scl is not None and b.scl.id == s and b.sda.id == d:
                bus = b
        self._bus = bus or self._hw.i2c_bus(("soft", s, d))
        self.id = -1
        self._configure(scl=s, sda=d, freq=freq, timeout=timeout)

    def init(self, scl=None, sda=None, freq=400000, timeout=50000):
        self._configure(scl=scl, sda=sda, freq=freq, timeout=timeout)


class SPI:
    """Hardware SPI of the ESP32 port (ids 1 and 2)."""

    CONTROLLER = MASTER = 0
    MSB = 0
    LSB = 1

    def __init__(self, id=1, baudrate=500000, *, polarity=0, phase=0, bits=8, firstbit=0,
                 sck=None, mosi=None, miso=None, **kw):
        if id not in (1, 2):
            raise ValueError("SPI(%r) doesn't exist" % (id,))
        self._hw = _hw.current()
        self._bus = self._hw.spi_bus(id)
        self.id = id
        self.init(baudrate=baudrate, polarity=polarity, phase=phase, bits=bits, firstbit=firstbit,
                  sck=sck, mosi=mosi, miso=miso)

    def init(self, baudrate=500000, *, polarity=0, phase=0, bits=8, firstbit=0,
             sck=None, mosi=None, miso=None, **kw):
        if bits != 8:
            raise ValueError("only 8-bit transfers are modelled")
        self.baudrate, self.polarity, self.phase = baudrate, polarity, phase
        self.firstbit = firstbit
        self._active = True

    def deinit(self):
        self._active = False

    @property
    def stats(self):
        return self._bus.stats

    @property
    def bus(self):
        return self._bus

    def _check(self):
        if not self._active:
            raise OSError(errno.EPERM, "SPI deinitialised")
        self._bus.stats.calls += 1

    def read(self, nbytes, write=0x00):
        self._check()
        return bytes(self._bus.exchange(write) for _ in range(nbytes))

    def readinto(self, buf, write=0x00):
        self._check()
        buf[:] = self._bus.transfer(bytes((write,)) * len(buf))

    def write(self, buf):
        self._check()
        self._bus.transfer(bytes(buf))

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError("buffers must be the same length")
        self._check()
        read_buf[:] = self._bus.transfer(bytes(write_buf))


class SoftSPI(SPI):
    def __init__(self, baudrate=500000, *, polarity=0, phase=0, bits=8, firstbit=0,
                 sck=None, mosi=None, miso=None):
        if sck is None or mosi is None or miso is None:
            raise ValueError("must specify all of sck/mosi/miso")
        self._hw = _hw.current()
        key = ("soft", _pin_id(sck), _pin_id(mosi), _pin_id(miso))
        self._bus = self._hw.spi_bus(key)
        self.id = -1
        self.init(baudrate=baudrate, polarity=polarity, phase=phase, bits=bits, firstbit=firstbit)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 0
    WIDTH_10BIT = 1
    WIDTH_11BIT = 2
    WIDTH_12BIT = 3

    def __init__(self, pin, *, atten=None):
        self._hw = _hw.current()
        self.id = _pin_id(pin)
        self._atten = ADC.ATTN_0DB if atten is None else atten
        self._bits = 12

    def atten(self, atten):
        self._atten = atten

    def width(self, width):
        self._bits = 9 + width

    def init(self, *, atten=None):
        if atten is not None:
            self._atten = atten

    def _raw(self):
        return self._hw.adc_raw.get(self.id, 0)

    def read(self):
        return self._raw() >> (12 - self._bits)

    def read_u16(self):
        r = self._raw()
        return (r << 4) | (r >> 8)

    def read_uv(self):
        return self._hw.adc_uv.get(self.id, 0)


class WDT:
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError("WDT(%r) doesn't exist" % (id,))
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self._hw = _hw.current()
        w = self._hw.wdt
        w.started = True
        w.timeout_ms = timeout
        self.feed()

    def feed(self):
        w = self._hw.wdt
        w.last_feed_ms = _hw.hosttime.current().now_ms()
        w.feeds += 1


def reset_cause():
    return _hw.current().reset_cause


def reset():
    raise ResetRequested()


def soft_reset():
    raise ResetRequested()


def unique_id():
    return _hw.current().unique_id


def freq(hz=None):
    if hz is None:
        return _hw.current().cpu_freq
    if hz not in (20_000_000, 40_000_000, 80_000_000, 160_000_000, 240_000_000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _hw.current().cpu_freq = hz


def idle():
    pass


_irq_state = [0]


def disable_irq():
    _irq_state[0] += 1
    return _irq_state[0]


def enable_irq(state=None):
    _irq_state[0] = max(0, _irq_state[0] - 1)


def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    return -1 if pin.value() != pulse_level else -2
