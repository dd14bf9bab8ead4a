# MCP2515 stand-alone CAN controller over SPI: the cabinet's link to CAN battery packs and chargers.
# The bus and pins are passed in. Receiving and sending allocate nothing: one scratch buffer, fixed
# memoryview slices. Bus-off is reported, and `service(now_ms)` restarts the chip with back-off.
from micropython import const

from tukar.clock import ticks_add, ticks_diff, sleep_ms

# Instructions
_RESET = const(0xC0)
_READ = const(0x03)
_WRITE = const(0x02)
_BIT_MODIFY = const(0x05)
_READ_STATUS = const(0xA0)
_RX_STATUS = const(0xB0)
_LOAD_TX0 = const(0x40)  # +2 per buffer: 0x40, 0x42, 0x44
_RTS = const(0x80)  # | 1 << buffer: 0x81, 0x82, 0x84
_READ_RX0 = const(0x90)
_READ_RX1 = const(0x94)

# Registers
_RXF0SIDH = const(0x00)
_RXF3SIDH = const(0x10)
_RXM0SIDH = const(0x20)
_TEC = const(0x1C)
_REC = const(0x1D)
_CANSTAT = const(0x0E)
_CANCTRL = const(0x0F)
_CNF3 = const(0x28)
_CANINTE = const(0x2B)
_CANINTF = const(0x2C)
_EFLG = const(0x2D)
_TXB0CTRL = const(0x30)
_RXB0CTRL = const(0x60)
_RXB1CTRL = const(0x70)

# Bits
_REQOP_MASK = const(0xE0)
_BUKT = const(0x04)  # RXB0CTRL: roll a frame over to RXB1 when RXB0 is full
_RXM_MASK = const(0x60)
_RX0IF = const(0x01)
_RX1IF = const(0x02)
_ERRIF = const(0x20)
_EFLG_TXBO = const(0x20)
_EFLG_TXEP = const(0x10)
_EFLG_RXEP = const(0x08)
_EFLG_OVR = const(0xC0)
_EXIDE = const(0x08)
_RTR = const(0x40)

# Operation modes (REQOP / OPMOD, bits 7:5)
MODE_NORMAL = const(0x00)
MODE_LOOPBACK = const(0x40)
MODE_LISTEN = const(0x60)
MODE_CONFIG = const(0x80)

# Error state reported by service()
ACTIVE = const(0)
PASSIVE = const(1)
BUS_OFF = const(2)

# Flag in the id that recv_into returns: the frame had a 29-bit id. Keeps the value a small int.
EXT = const(0x20000000)

_POLLS = const(20)  # bounded waits: this many reads, 1 ms apart
_BACKOFF_MIN_MS = const(100)
_BACKOFF_MAX_MS = const(12800)
_STABLE_MS = const(60000)  # a restart that held this long resets the back-off

# CNF1, CNF2, CNF3 per (crystal, bitrate), from the cabinet's table.
_TIMING = {
    (8000000, 500000): (0x00, 0x90, 0x82),
    (8000000, 250000): (0x00, 0xB1, 0x85),
    (16000000, 500000): (0x00, 0xF0, 0x86),
    (16000000, 250000): (0x41, 0xF1, 0x85),
}


class MCP2515Error(OSError):
    pass


def frame_id(buf):
    """Id in a 13-byte READ RX / LOAD TX image (SIDH SIDL EID8 EID0 DLC D0..D7), EXT-flagged."""
    sidl = buf[1]
    sid = (buf[0] << 3) | (sidl >> 5)
    if sidl & _EXIDE:
        return EXT | (sid << 18) | ((sidl & 0x03) << 16) | (buf[2] << 8) | buf[3]
    return sid


def put_id(buf, off, can_id, extended):
    """Write an id into SIDH SIDL EID8 EID0 at buf[off:off + 4]."""
    if extended:
        sid = (can_id >> 18) & 0x7FF
        buf[off] = sid >> 3
        buf[off + 1] = ((sid & 0x07) << 5) | _EXIDE | ((can_id >> 16) & 0x03)
        buf[off + 2] = (can_id >> 8) & 0xFF
        buf[off + 3] = can_id & 0xFF
    else:
        buf[off] = (can_id >> 3) & 0xFF
        buf[off + 1] = (can_id & 0x07) << 5
        buf[off + 2] = 0
        buf[off + 3] = 0


class CanFrame:
    """A preallocated frame that recv() fills in place."""

    def __init__(self):
        self.id = 0
        self.extended = False
        self.rtr = False
        self.dlc = 0
        self.data = bytearray(8)


class MCP2515:
    def __init__(self, spi, cs, crystal_hz=8000000, bitrate=500000, int_pin=None):
        timing = _TIMING.get((crystal_hz, bitrate))
        if timing is None:
            raise ValueError("MCP2515: no bit timing for %d Hz crystal at %d bit/s" % (crystal_hz, bitrate))
        self._timing = timing
        self.bitrate = bitrate
        self._spi = spi
        self._cs = cs
        self._int = int_pin
        cs.value(1)
        self._buf = bytearray(16)
        mv = memoryview(self._buf)
        self._mv = mv
        self._by_len = tuple(mv[:n] for n in range(17))  # fixed slices: no allocation per transfer
        self._rx13 = mv[1:14]  # a received frame as READ RX leaves it in the scratch buffer
        self._rx = bytearray(13)
        self._rxmv = memoryview(self._rx)
        self.mode = MODE_CONFIG
        self.state = ACTIVE
        self.tec = 0
        self.rec = 0
        self.eflg = 0
        self.bus_off_count = 0
        self.overflows = 0
        self._backoff_ms = _BACKOFF_MIN_MS
        self._restart_at = 0
        self._restarted_at = None
        self._filters = None  # (masks, filters) to reapply after a restart

    # -- SPI primitives -------------------------------------------------------------------------

    def _xfer(self, n):
        """Exchange the first n bytes of the scratch buffer, in place, with CS held low."""
        mv = self._by_len[n]
        self._cs.value(0)
        try:
            self._spi.write_readinto(mv, mv)
        finally:
            self._cs.value(1)

    def _command(self, instruction):
        self._buf[0] = instruction
        self._xfer(1)

    def read_reg(self, addr):
        b = self._buf
        b[0] = _READ
        b[1] = addr
        b[2] = 0
        self._xfer(3)
        return b[2]

    def read_regs(self, addr, n):
        """Read n (<= 14) consecutive registers into self._buf[2:2 + n]."""
        b = self._buf
        b[0] = _READ
        b[1] = addr
        for i in range(2, 2 + n):
            b[i] = 0
        self._xfer(2 + n)

    def write_reg(self, addr, value):
        b = self._buf
        b[0] = _WRITE
        b[1] = addr
        b[2] = value
        self._xfer(3)

    def modify_reg(self, addr, mask, value):
        b = self._buf
        b[0] = _BIT_MODIFY
        b[1] = addr
        b[2] = mask
        b[3] = value
        self._xfer(4)

    def _status(self, instruction):
        b = self._buf
        b[0] = instruction
        b[1] = 0
        self._xfer(2)
        return b[1]

    def read_status(self):
        return self._status(_READ_STATUS)

    def rx_status(self):
        return self._status(_RX_STATUS)

    # -- set-up -----------------------------------------------------------------------------------

    def reset(self):
        """RESET, then wait (bounded) for the oscillator: CANSTAT[7:5] reads 100b (config mode)."""
        self._command(_RESET)
        for _ in range(_POLLS):
            sleep_ms(1)
            if self.read_reg(_CANSTAT) & _REQOP_MASK == MODE_CONFIG:
                self.mode = MODE_CONFIG
                return
        raise MCP2515Error("MCP2515: no oscillator after reset (CANSTAT[7:5] != 100b)")

    def init(self, mode=MODE_NORMAL):
        """Reset, program bit timing, RXB0 rollover, RX interrupts, filters if set; enter mode."""
        self.reset()
        c1, c2, c3 = self._timing
        b = self._buf
        b[0] = _WRITE
        b[1] = _CNF3  # CNF3, CNF2, CNF1, CANINTE are consecutive
        b[2] = c3
        b[3] = c2
        b[4] = c1
        b[5] = _RX0IF | _RX1IF | _ERRIF
        self._xfer(6)
        self.read_regs(_CNF3, 3)
        if b[4] != c1:
            raise MCP2515Error("MCP2515: CNF1 did not stick")
        f = self._filters
        if f is None:
            self.write_reg(_RXB0CTRL, _RXM_MASK | _BUKT)  # filters off: every frame
            self.write_reg(_RXB1CTRL, _RXM_MASK)
        else:
            self._apply_filters(f)
        self.write_reg(_CANINTF, 0)
        self.set_mode(mode)
        self.state = ACTIVE

    def set_mode(self, mode):
        """Request a mode in CANCTRL.REQOP and wait (bounded) for CANSTAT.OPMOD to confirm it."""
        self.modify_reg(_CANCTRL, _REQOP_MASK, mode)
        for _ in range(_POLLS):
            if self.read_reg(_CANSTAT) & _REQOP_MASK == mode:
                self.mode = mode
                return
            sleep_ms(1)
        raise MCP2515Error("MCP2515: mode 0x%02x not confirmed" % mode)

    def set_filters(self, rxb0, rxb1=None):
        """Acceptance filtering. rxbN = (mask, extended, ids): up to 2 ids for RXB0, 4 for RXB1;
        a frame passes a buffer when (id & mask) == (filter & mask) for one of its ids. Without
        rxb1, RXB1 takes RXB0's set (it also receives RXB0's rollover). Kept for restarts."""
        if rxb1 is None:
            rxb1 = rxb0
        if not 1 <= len(rxb0[2]) <= 2 or not 1 <= len(rxb1[2]) <= 4:
            raise ValueError("MCP2515: 1-2 filters for RXB0, 1-4 for RXB1")
        self._filters = (rxb0, rxb1)
        mode = self.mode
        if mode != MODE_CONFIG:
            self.set_mode(MODE_CONFIG)
        self._apply_filters(self._filters)
        if mode != MODE_CONFIG:
            self.set_mode(mode)

    def clear_filters(self):
        """Receive every frame again."""
        self._filters = None
        self.write_reg(_RXB0CTRL, _RXM_MASK | _BUKT)
        self.write_reg(_RXB1CTRL, _RXM_MASK)

    def _write_id(self, addr, can_id, extended):
        b = self._buf
        b[0] = _WRITE
        b[1] = addr
        put_id(b, 2, can_id, extended)
        self._xfer(6)

    def _apply_filters(self, f):
        for n in range(2):
            mask, ext, ids = f[n]
            self._write_id(_RXM0SIDH + 4 * n, mask, ext)
            first = 0 if n == 0 else 2
            for i in range(2 if n == 0 else 4):
                k = first + i
                addr = (_RXF0SIDH if k < 3 else _RXF3SIDH) + 4 * (k % 3)
                # An unused filter repeats the buffer's first one rather than matching id 0.
                self._write_id(addr, ids[i] if i < len(ids) else ids[0], ext)
        self.write_reg(_RXB0CTRL, _BUKT)  # RXM = 00: filters on
        self.write_reg(_RXB1CTRL, 0)

    # -- traffic --------------------------------------------------------------------------------

    def pending(self):
        """A frame is waiting: INT low when the pin is given, else READ STATUS."""
        if self._int is not None:
            return self._int.value() == 0
        return self.read_status() & (_RX0IF | _RX1IF) != 0

    def recv_into(self, buf):
        """Copy the oldest received frame into buf (13 bytes: SIDH SIDL EID8 EID0 DLC D0..D7).
        Returns its id (| EXT for 29-bit ids) or -1 when none. DLC is buf[4] & 0x0F."""
        if self._int is not None and self._int.value():
            return -1
        # The two transfers inline (the receive task's path: every frame comes this way).
        b = self._buf
        cs = self._cs
        spi = self._spi
        b[0] = _RX_STATUS
        b[1] = 0
        mv = self._by_len[2]
        cs.value(0)
        try:
            spi.write_readinto(mv, mv)
        finally:
            cs.value(1)
        st = b[1] >> 6
        if st == 0:
            return -1
        b[0] = _READ_RX0 if st & 1 else _READ_RX1  # READ RX clears RXnIF when CS rises
        mv = self._by_len[14]  # the chip ignores what follows the instruction on SI
        cs.value(0)
        try:
            spi.write_readinto(mv, mv)
        finally:
            cs.value(1)
        buf[:13] = self._rx13
        sidl = b[2]  # frame_id, inline
        sid = (b[1] << 3) | (sidl >> 5)
        if sidl & _EXIDE:
            return EXT | (sid << 18) | ((sidl & 0x03) << 16) | (b[3] << 8) | b[4]
        return sid

    def recv(self, frame):
        """Fill a CanFrame in place; True when a frame was read."""
        rx = self._rx
        fid = self.recv_into(rx)
        if fid < 0:
            return False
        frame.extended = bool(fid & EXT)
        frame.id = fid & ~EXT
        dlc = rx[4] & 0x0F
        if dlc > 8:
            dlc = 8
        frame.rtr = bool(rx[4] & _RTR) if frame.extended else bool(rx[1] & 0x10)
        frame.dlc = dlc
        d = frame.data
        for i in range(dlc):
            d[i] = rx[5 + i]
        return True

    def send(self, can_id, data, extended=False, rtr=False):
        """Queue a frame in a free TX buffer (LOAD TX + RTS). False when all three are busy."""
        st = self.read_status()
        n = 0
        while n < 3 and st & (0x04 << (2 * n)):  # TXBnCNTRL.TXREQ
            n += 1
        if n == 3:
            return False
        dlc = len(data)
        if dlc > 8:
            raise ValueError("CAN: at most 8 data bytes")
        b = self._buf
        b[0] = _LOAD_TX0 + 2 * n
        put_id(b, 1, can_id, extended)
        b[5] = dlc | (_RTR if rtr else 0)
        for i in range(dlc):
            b[6 + i] = data[i]
        self._xfer(6 + dlc)
        self._command(_RTS | (1 << n))
        return True

    # -- errors -----------------------------------------------------------------------------------

    def read_errors(self, counters=False):
        """Refresh eflg, and tec and rec when asked or while any warning or error flag is up (the
        tick's check of a quiet bus is one transaction); clears latched overflow flags (counted in
        self.overflows). CANINTF and EFLG are adjacent: one read takes both."""
        b = self._buf
        self.read_regs(_CANINTF, 2)
        intf = b[2]
        eflg = b[3]
        self.eflg = eflg
        if counters or eflg & 0x3F:  # EWARN RXWAR TXWAR RXEP TXEP TXBO
            self.read_regs(_TEC, 2)
            self.tec = b[2]
            self.rec = b[3]
        if eflg & _EFLG_OVR:
            self.overflows += 1
            self.modify_reg(_EFLG, _EFLG_OVR, 0)
        if intf & _ERRIF:
            self.modify_reg(_CANINTF, _ERRIF, 0)
        return eflg

    def restarting(self):
        """After a bus-off restart, until 60 s without one have reset the back-off."""
        return self._restarted_at is not None

    def service(self, now_ms):
        """Call every control tick: reads the error state; in bus-off, restarts the controller once
        the back-off has passed (100 ms doubling to 12.8 s; reset after 60 s without bus-off).
        Returns ACTIVE, PASSIVE or BUS_OFF; the caller turns the affected chargers off on BUS_OFF."""
        if self.state == BUS_OFF:
            if ticks_diff(now_ms, self._restart_at) < 0:
                return BUS_OFF
            mode = self.mode
            self._restarted_at = now_ms
            self._backoff_ms = min(self._backoff_ms * 2, _BACKOFF_MAX_MS)
            try:
                self.init(mode if mode != MODE_CONFIG else MODE_NORMAL)
            except OSError:
                self._restart_at = ticks_add(now_ms, self._backoff_ms)  # a failed restart backs off too
                raise
        eflg = self.read_errors()
        if eflg & _EFLG_TXBO:
            self.state = BUS_OFF
            self.bus_off_count += 1
            self._restart_at = ticks_add(now_ms, self._backoff_ms)
            return BUS_OFF
        if self._restarted_at is not None and ticks_diff(now_ms, self._restarted_at) >= _STABLE_MS:
            self._backoff_ms = _BACKOFF_MIN_MS
            self._restarted_at = None
        self.state = PASSIVE if eflg & (_EFLG_TXEP | _EFLG_RXEP) else ACTIVE
        return self.state

    @property
    def backoff_ms(self):
        """Delay before the next restart, should the bus go off again."""
        return self._backoff_ms
