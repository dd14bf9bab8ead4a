# `machine` for the firmware when it runs in the MicroPython unix port (`tukar sim --runtime
# micropython`, the end-to-end tests, the memory bench). The ESP32 port's classes, constants and
# errors, every call forwarded over a local socket to the host process, where the register-level
# chip models and the physics answer (tukar_tools/mprt.py serves it). The firmware cannot tell.
#
# Wire: a request is <u16 length><u8 op><args>, a reply <u16 length><u8 status><data>; status 0 is
# success, 1 an OSError (errno in the data), 2 a ValueError (its text). A second socket carries the
# host's notes: (b"I", pin) a pin edge for its IRQ handler, (b"F", on) a flash fault, (b"M", 0) a
# heap probe. One buffer, allocated once, carries the request and then the reply, sized for the
# firmware's largest transfer (an SBS block read, 34 bytes; an I2C scan, 112): a call allocates only
# what its result needs. The ESP32 has all of this in C; here it is heap the firmware does not have
# there, so it is kept small: keyword-only arguments are read from **kw (a keyword-only default
# costs a dictionary per function), and what only the import needs is deleted once it has run.
import socket
import struct
import sys

import _thread
import micropython
from micropython import const

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_PIN_INIT = const(1)
_PIN_GET = const(2)
_PIN_SET = const(3)
_PIN_IRQ = const(4)
_I2C_NEW = const(10)
_I2C_INIT = const(16)
_I2C_RMEM = const(11)
_I2C_WMEM = const(12)
_I2C_READ = const(13)
_I2C_WRITE = const(14)
_I2C_SCAN = const(15)
_SPI_INIT = const(20)
_SPI_XFER = const(21)
_ADC_INIT = const(30)
_ADC_READ = const(31)
_WDT_INIT = const(40)
_WDT_FEED = const(41)
_CAUSE = const(50)
_UID = const(51)
_RESET = const(52)
_HELLO = const(53)

_BUF = const(128)
_buf = bytearray(_BUF)  # the request, then the reply
_bufv = memoryview(_buf)
_lock = _thread.allocate_lock()
_handlers = {}
_flash_broken = [False]


def _connect():
    import os
    host, port = (os.getenv("TUKAR_HW") or "127.0.0.1:0").rsplit(":", 1)
    s = socket.socket()
    s.connect(socket.getaddrinfo(host, int(port))[0][-1])
    try:
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: one small request at a time
    except OSError:
        pass
    return s


_sock = _connect()
_note = _connect()


def _read_exact(sock, mv):
    got = 0
    n = len(mv)
    while got < n:
        k = sock.readinto(mv[got:])
        if not k:
            raise SystemExit("tukar: the host's hardware socket closed")
        got += k


def _call(op, n):
    """Send _buf[3:3+n] as op; returns the reply's data length (the data is then in _buf)."""
    with _lock:
        struct.pack_into("<HB", _buf, 0, n + 1, op)
        _sock.write(_bufv[:n + 3])
        _read_exact(_sock, _bufv[:3])
        size, status = struct.unpack_from("<HB", _buf, 0)
        size -= 1
        if size > _BUF:
            raise SystemExit("tukar: a machine reply of %d bytes (at most %d)" % (size, _BUF))
        _read_exact(_sock, _bufv[:size])
    if status == 1:
        raise OSError(struct.unpack_from("<H", _buf, 0)[0])
    if status == 2:
        raise ValueError(bytes(_bufv[:size]).decode())
    return size


def _kw(kw, names, defaults):
    """The keyword-only arguments `names` from **kw, in order, `defaults` where absent; an unknown
    keyword is a TypeError, as the port's argument parser raises."""
    for k in kw:
        if k not in names:
            raise TypeError("unexpected keyword argument '%s'" % k)
    return [kw.get(k, d) for k, d in zip(names, defaults)]


def _put(data, at):
    n = len(data)
    if at + n > _BUF:
        raise ValueError("a transfer of %d bytes (this machine takes at most %d)" % (n, _BUF - at))
    _buf[at:at + n] = data
    return at + n


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
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(self, id, mode=-1, pull=-1, value=None, **kw):
        self.id = id
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, **kw):
        value = _kw(kw, ("value", "drive", "hold"), (None, None, None))[0]
        struct.pack_into("<BbbB", _buf, 3, self.id, -1 if mode is None else mode,
                         -2 if pull is None else pull, 255 if value is None else (1 if value else 0))
        _call(_PIN_INIT, 4)

    def value(self, x=None):
        _buf[3] = self.id
        if x is None:
            _call(_PIN_GET, 1)
            return _buf[0]
        _buf[4] = 1 if x else 0
        _call(_PIN_SET, 2)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, wake=None, hard=False):
        _handlers[self.id] = (handler, self)
        _buf[3] = self.id
        _buf[4] = trigger if handler is not None else 0
        _call(_PIN_IRQ, 2)

    def __repr__(self):
        return "Pin(%d)" % self.id


_I2C_KW = ("scl", "sda", "freq", "timeout")
_I2C_DEFAULTS = (None, None, 400000, 50000)
_SPI_KW = ("polarity", "phase", "bits", "firstbit", "sck", "mosi", "miso")
_SPI_DEFAULTS = (0, 0, 8, 0, None, None, None)


class I2C:
    def __init__(self, id=0, **kw):
        self.id = id
        self._send(_I2C_NEW, *_kw(kw, _I2C_KW, _I2C_DEFAULTS))

    def init(self, scl=None, sda=None, freq=400000, timeout=50000):
        """The ESP32's hardware I2C raises OSError here, as the port does; SoftI2C re-inits."""
        self._send(_I2C_INIT, scl, sda, freq, timeout)

    def _send(self, op, scl, sda, freq, timeout):
        struct.pack_into("<BbbII", _buf, 3, self.id, -1 if scl is None else _pin_id(scl),
                         -1 if sda is None else _pin_id(sda), freq, timeout)
        _call(op, 11)

    def readfrom_mem_into(self, addr, memaddr, buf, **kw):
        addrsize = _kw(kw, ("addrsize",), (8,))[0]
        struct.pack_into("<BBIBH", _buf, 3, self.id, addr, memaddr, addrsize, len(buf))
        n = _call(_I2C_RMEM, 9)
        buf[:n] = _bufv[:n]

    def readfrom_mem(self, addr, memaddr, nbytes, **kw):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf, **kw)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, **kw):
        addrsize = _kw(kw, ("addrsize",), (8,))[0]
        struct.pack_into("<BBIB", _buf, 3, self.id, addr, memaddr, addrsize)
        _call(_I2C_WMEM, _put(buf, 10) - 3)

    def readfrom_into(self, addr, buf, stop=True):
        struct.pack_into("<BBBH", _buf, 3, self.id, addr, 1 if stop else 0, len(buf))
        n = _call(_I2C_READ, 5)
        buf[:n] = _bufv[:n]

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf, stop)
        return bytes(buf)

    def writeto(self, addr, buf, stop=True):
        struct.pack_into("<BBB", _buf, 3, self.id, addr, 1 if stop else 0)
        _call(_I2C_WRITE, _put(buf, 6) - 3)
        return _buf[0]

    def writevto(self, addr, vector, stop=True):
        data = bytearray()
        for b in vector:
            data += b
        return self.writeto(addr, data, stop)

    def scan(self):
        _buf[3] = self.id
        n = _call(_I2C_SCAN, 1)
        return list(_bufv[:n])


class SPI:
    CONTROLLER = 0
    MASTER = 0
    MSB = 0
    LSB = 1

    def __init__(self, id=1, baudrate=500000, **kw):
        self.id = id
        self.init(baudrate, **kw)

    def init(self, baudrate=500000, **kw):
        # polarity, phase, bits, firstbit, sck, mosi, miso: only bits matters to the host
        if _kw(kw, _SPI_KW, _SPI_DEFAULTS)[2] != 8:
            raise ValueError("only 8-bit transfers are modelled")
        struct.pack_into("<BI", _buf, 3, self.id, baudrate)
        _call(_SPI_INIT, 5)

    def deinit(self):
        pass

    def _xfer(self, data):
        _buf[3] = self.id
        return _call(_SPI_XFER, _put(data, 4) - 3)

    def write(self, buf):
        self._xfer(buf)

    def readinto(self, buf, write=0x00):
        n = len(buf)
        if n + 4 > _BUF:
            raise ValueError("a transfer of %d bytes (this machine takes at most %d)" % (n, _BUF - 4))
        for i in range(n):
            _buf[4 + i] = write
        _buf[3] = self.id
        _call(_SPI_XFER, n + 1)
        buf[:n] = _bufv[:n]

    def read(self, nbytes, write=0x00):
        buf = bytearray(nbytes)
        self.readinto(buf, write)
        return bytes(buf)

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError("buffers must be the same length")
        n = self._xfer(write_buf)
        read_buf[:n] = _bufv[:n]


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 0
    WIDTH_10BIT = 1
    WIDTH_11BIT = 2
    WIDTH_12BIT = 3

    def __init__(self, pin, **kw):
        self.id = _pin_id(pin)
        self._bits = 12
        self.init(**kw)

    def init(self, **kw):
        atten = _kw(kw, ("atten",), (None,))[0]
        _buf[3] = self.id
        _buf[4] = 0 if atten is None else atten
        _call(_ADC_INIT, 2)

    def atten(self, atten):
        self.init(atten=atten)

    def width(self, width):
        self._bits = 9 + width

    def _read(self, kind):
        _buf[3] = self.id
        _buf[4] = kind
        _call(_ADC_READ, 2)
        return struct.unpack_from("<I", _buf, 0)[0]

    def read(self):
        return self._read(0) >> (12 - self._bits)

    def read_u16(self):
        return self._read(1)

    def read_uv(self):
        return self._read(2)


class WDT:
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError("WDT(%r) doesn't exist" % (id,))
        struct.pack_into("<I", _buf, 3, timeout)
        _call(_WDT_INIT, 4)

    def feed(self):
        _call(_WDT_FEED, 0)


# What the firmware calls once or never (the reset cause at boot, the reset at the end, the rest of
# the port's API) is made when it is asked for, by the module's __getattr__: a function made at
# import costs 16 to 32 bytes of heap and a slot in the module's dictionary for the whole run.
def __getattr__(name):
    if name == "reset_cause":
        def reset_cause():
            _call(_CAUSE, 0)
            return _buf[0]
        return reset_cause
    if name == "unique_id":
        def unique_id():
            n = _call(_UID, 0)
            return bytes(_bufv[:n])
        return unique_id
    if name == "reset" or name == "soft_reset":
        def reset():
            """The host resets the chip (kills this process and starts it again); nothing runs
            after."""
            _call(_RESET, 0)
            while True:
                _thread.allocate_lock().acquire()  # wait for the host's SIGKILL, no CPU used
        return reset
    if name == "freq":
        def freq(hz=None):
            if hz is None:
                return 160000000
            if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
                raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
        return freq
    if name == "idle":
        return lambda: None
    if name == "disable_irq":
        return lambda: 0
    if name == "enable_irq":
        return lambda state=0: None
    if name == "time_pulse_us":
        return lambda pin, pulse_level, timeout_us=1000000: -1 if pin.value() != pulse_level else -2
    if name == "SoftI2C":
        class SoftI2C(I2C):
            def __init__(self, scl, sda, **kw):
                self.id = 255  # the host finds the bus by its pins
                self._send(_I2C_NEW, scl, sda, *_kw(kw, _I2C_KW[2:], _I2C_DEFAULTS[2:]))
        globals()[name] = SoftI2C  # one class, as isinstance() expects
        return SoftI2C
    raise AttributeError(name)


# -- the host's notes ------------------------------------------------------------------------------
def _fire(pin):
    h = _handlers.get(pin)
    if h is not None and h[0] is not None:
        h[0](h[1])


def _probe(_):
    import gc
    gc.collect()
    print("tukar-heap: used=%d free=%d" % (gc.mem_alloc(), gc.mem_free()))
    micropython.mem_info()  # its "max free sz" line is the largest free block, in 16-byte blocks


_open = open


def _flash_open(path, mode="r", *a, **k):
    if _flash_broken[0] and ("w" in mode or "a" in mode or "+" in mode):
        raise OSError(5)  # EIO, as a failing flash chip reports it
    return _open(path, mode, *a, **k)


def _notes():
    buf = bytearray(2)
    mv = memoryview(buf)
    while True:
        _read_exact(_note, mv)
        kind = buf[0]
        try:
            if kind == 73:  # "I": a pin edge, handled as the ESP32 port's soft IRQ
                micropython.schedule(_fire, buf[1])
            elif kind == 70:  # "F": the flash fails (or works again)
                _flash_broken[0] = buf[1] == 1
            elif kind == 77:  # "M": a heap probe
                micropython.schedule(_probe, 0)
        except RuntimeError:
            pass  # the schedule queue is full: an edge the firmware's next poll still sees


def _identity():
    """What the host records of this process: implementation, thread model, word size, and
    whether `tukar` comes from the frozen image (no copy on any file-system path)."""
    import os
    where = "frozen"
    for p in sys.path:
        if p != ".frozen":
            try:
                os.stat((p or ".") + "/tukar")
                where = "filesystem"
            except OSError:
                pass
    return "%s %s %d %s" % (sys.implementation.name, getattr(sys.implementation, "_thread", "none"),
                            sys.maxsize, where)


def _start():
    import builtins
    builtins.open = _flash_open
    _note.write(b"N")
    _thread.stack_size(8192)
    _thread.start_new_thread(_notes, ())
    _thread.stack_size(0)
    _call(_HELLO, _put(_identity().encode(), 3) - 3)


_start()
sys.modules["machine"] = sys.modules[__name__]
del _connect, _identity, _start, const, sys
