"""Register-level model of the MCP2515 CAN controller, driven byte by byte over SPI.

Plugs into the host SPI bus model: spi_select(), spi_exchange(byte) -> byte, spi_deselect().
Joins a `canbus.CanBus` as a controller. Models the instruction set (RESET, READ, WRITE, BIT MODIFY,
READ STATUS, RX STATUS, LOAD TX, RTS, READ RX), operation modes, bit timing (a controller whose CNF
registers give another bitrate than the bus sees only errors), acceptance masks and filters (with
the chip's rule that a standard frame's first two data bytes meet the mask's EID bits), RXB0 to RXB1
rollover, overflow flags, TEC/REC with the warning/passive/bus-off thresholds, automatic bus-off
recovery after 128 x 11 recessive bits of an idle healthy bus, and the active-low INT line.
"""

from tukar_tools.shim.canbus import Frame

CANSTAT, CANCTRL = 0x0E, 0x0F
TEC, REC = 0x1C, 0x1D
CNF3, CNF2, CNF1 = 0x28, 0x29, 0x2A
CANINTE, CANINTF, EFLG = 0x2B, 0x2C, 0x2D
TXBCTRL = (0x30, 0x40, 0x50)
RXBCTRL = (0x60, 0x70)
FILTERS = (0x00, 0x04, 0x08, 0x10, 0x14, 0x18)
MASKS = (0x20, 0x24)

MODE_NORMAL, MODE_SLEEP, MODE_LOOPBACK, MODE_LISTEN, MODE_CONFIG = 0x00, 0x20, 0x40, 0x60, 0x80

RX0IF, RX1IF, ERRIF = 0x01, 0x02, 0x20
TXIF = (0x04, 0x08, 0x10)
TXREQ = 0x08
RX0OVR, RX1OVR, TXBO, TXEP, RXEP, TXWAR, RXWAR, EWARN = 0x40, 0x80, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
BUKT = 0x04
IDE = 0x08

RECOVERY_BITS = 128 * 11


def _config_only(addr):
    """Registers writable only in configuration mode: filters, masks, CNF1..3."""
    return addr < 0x0E or 0x10 <= addr < 0x1C or 0x20 <= addr < 0x28 or addr in (CNF3, CNF2, CNF1)


def _id_regs(frame):
    if frame.extended:
        sid = (frame.id >> 18) & 0x7FF
        return (sid >> 3, ((sid & 7) << 5) | IDE | ((frame.id >> 16) & 3),
                (frame.id >> 8) & 0xFF, frame.id & 0xFF)
    srr = 0x10 if frame.rtr else 0
    return (frame.id >> 3) & 0xFF, ((frame.id & 7) << 5) | srr, 0, 0


class MCP2515Model:
    def __init__(self, crystal_hz=8_000_000, osc_start_polls=1, mode_delay_polls=1):
        self.crystal_hz = crystal_hz
        self.osc_start_polls = osc_start_polls  # CANSTAT reads that see no oscillator after RESET
        self.mode_delay_polls = mode_delay_polls  # CANSTAT reads before a mode request takes effect
        self.present = True  # False: MISO floats high (0xFF), the chip does nothing
        self.stuck_mode = False  # True: mode requests are never confirmed
        self.bus = None
        self.on_int = None  # callable(level) when the INT line changes
        self.transmitted = []  # frames that left TX buffers, in order
        self.spi_bytes = 0  # bytes clocked while selected, for bus-traffic figures
        self.resets = 0
        self._int_level = 1
        self._sel = False
        self._instr = None
        self._reset()
        self.resets = 0  # RESET instructions seen

    # -- state ------------------------------------------------------------------------------

    def power_on_reset(self):
        """Power cut and back: the chip comes up as after its RESET instruction."""
        self._reset()

    def _reset(self):
        self.regs = bytearray(128)
        self.regs[CANSTAT] = 0x00  # oscillator not running yet
        self.regs[CANCTRL] = 0x87
        self.tec = 0
        self.rec = 0
        self.bus_off = False
        self._bus_off_at = None
        self._osc_wait = self.osc_start_polls
        self._mode_wait = 0
        self._mode = MODE_CONFIG
        if self._osc_wait == 0:
            self.regs[CANSTAT] = MODE_CONFIG
        self.resets += 1

    @property
    def mode(self):
        return self._mode

    @property
    def bitrate(self):
        """Bitrate the CNF registers give with this crystal (0 when unprogrammed)."""
        brp = self.regs[CNF1] & 0x3F
        prop = (self.regs[CNF2] & 7) + 1
        ps1 = ((self.regs[CNF2] >> 3) & 7) + 1
        ps2 = (self.regs[CNF3] & 7) + 1 if self.regs[CNF2] & 0x80 else max(ps1, 2)
        tq_per_bit = 1 + prop + ps1 + ps2
        return self.crystal_hz // (2 * (brp + 1) * tq_per_bit)

    @property
    def int_level(self):
        return 0 if self.regs[CANINTE] & self.regs[CANINTF] else 1

    def _update_int(self):
        level = self.int_level
        if level != self._int_level:
            self._int_level = level
            if self.on_int is not None:
                self.on_int(level)

    def _errors_changed(self):
        """Recompute EFLG's error bits from TEC/REC; a change sets ERRIF."""
        if self.tec > 255 and not self.bus_off:
            self.bus_off = True
            self._bus_off_at = None
        e = self.regs[EFLG] & (RX0OVR | RX1OVR)
        if self.bus_off:
            e |= TXBO
        if self.tec >= 128:
            e |= TXEP
        if self.rec >= 128:
            e |= RXEP
        if self.tec >= 96:
            e |= TXWAR
        if self.rec >= 96:
            e |= RXWAR
        if self.tec >= 96 or self.rec >= 96:
            e |= EWARN
        if e != self.regs[EFLG]:
            self.regs[EFLG] = e
            self.regs[CANINTF] |= ERRIF
        self.regs[TEC] = min(self.tec, 255)
        self.regs[REC] = min(self.rec, 255)
        self._update_int()

    def _set_mode(self, mode):
        self._mode = mode
        self.regs[CANSTAT] = (self.regs[CANSTAT] & 0x1F) | mode
        if mode in (MODE_NORMAL, MODE_LOOPBACK):
            self._transmit_pending()

    # -- register access ----------------------------------------------------------------------

    def _read(self, addr):
        addr &= 0x7F
        low = addr & 0x0F
        if low == 0x0E:
            if self._osc_wait > 0:
                self._osc_wait -= 1
                if self._osc_wait == 0:
                    self.regs[CANSTAT] = MODE_CONFIG
                return 0x00
            if self._mode_wait > 0 and not self.stuck_mode:
                self._mode_wait -= 1
                if self._mode_wait == 0:
                    self._set_mode(self.regs[CANCTRL] & 0xE0)
            return self.regs[CANSTAT]
        if low == 0x0F:
            return self.regs[CANCTRL]
        return self.regs[addr]

    def _write(self, addr, value, mask=0xFF):
        addr &= 0x7F
        low = addr & 0x0F
        if low == 0x0E or addr in (TEC, REC) or 0x61 <= addr <= 0x6D or 0x71 <= addr <= 0x7D:
            return  # read-only
        if _config_only(addr) and self._mode != MODE_CONFIG:
            return
        if low == 0x0F:
            addr = CANCTRL
        if addr == EFLG:
            mask &= RX0OVR | RX1OVR  # only the overflow flags can be cleared
        elif addr == RXBCTRL[0]:
            mask &= 0x64
        elif addr == RXBCTRL[1]:
            mask &= 0x60
        elif addr in TXBCTRL:
            mask &= 0x0B
        old = self.regs[addr]
        new = (old & ~mask) | (value & mask)
        self.regs[addr] = new
        if addr == CANCTRL and (new ^ old) & 0xE0 and self._osc_wait == 0:
            if self.mode_delay_polls == 0 and not self.stuck_mode:
                self._set_mode(new & 0xE0)
            else:
                self._mode_wait = self.mode_delay_polls
        if addr in TXBCTRL and new & TXREQ and not old & TXREQ:
            self._transmit_pending()

    def _read_status(self):
        f = self.regs[CANINTF]
        s = f & (RX0IF | RX1IF)
        for n in range(3):
            if self.regs[TXBCTRL[n]] & TXREQ:
                s |= 0x04 << (2 * n)
            if f & TXIF[n]:
                s |= 0x08 << (2 * n)
        return s

    def _rx_status(self):
        f = self.regs[CANINTF]
        s = ((f & RX1IF) << 6) | ((f & RX0IF) << 6)
        if f & (RX0IF | RX1IF):
            base = 0x60 if f & RX0IF else 0x70
            ext = bool(self.regs[base + 2] & IDE)
            rtr = bool(self.regs[base + 5] & 0x40) if ext else bool(self.regs[base + 2] & 0x10)
            s |= (0x10 if ext else 0) | (0x08 if rtr else 0)
            if f & RX0IF:
                s |= self.regs[0x60] & 0x01
            elif self.regs[0x60] & 0x02:  # BUKT1: RXB1 holds a rollover
                s |= 0x06 | (self.regs[0x70] & 0x01)
            else:
                s |= self.regs[0x70] & 0x07
        return s

    # -- SPI --------------------------------------------------------------------------------

    def spi_select(self):
        self._sel = True
        self._instr = None
        self._pos = 0

    def spi_deselect(self):
        if self._sel and self.present and self._instr is not None:
            i = self._instr
            if i & 0xF9 == 0x90 and self._pos > 0:  # READ RX clears the buffer's flag
                self.regs[CANINTF] &= ~(RX1IF if i & 0x04 else RX0IF)
        self._sel = False
        self._instr = None
        self._update_int()

    def spi_exchange(self, byte):
        if not self.present:
            return 0xFF
        self.spi_bytes += 1
        if not self._sel:
            return 0xFF
        if self._instr is None:
            self._instr = byte
            self._args = []
            self._pos = 0
            if byte == 0xC0:
                self._reset()
            elif byte & 0xF8 == 0x80 and byte & 0x07:
                for n in range(3):
                    if byte & (1 << n):
                        self.regs[TXBCTRL[n]] |= TXREQ
                self._transmit_pending()
            return 0x00
        i = self._instr
        if i == 0x03:  # READ addr, data...
            if not self._args:
                self._args.append(byte)
                self._addr = byte
                return 0x00
            v = self._read(self._addr)
            self._addr = (self._addr + 1) & 0x7F
            return v
        if i == 0x02:  # WRITE addr, data...
            if not self._args:
                self._args.append(byte)
                self._addr = byte
                return 0x00
            self._write(self._addr, byte)
            self._addr = (self._addr + 1) & 0x7F
            return 0x00
        if i == 0x05:  # BIT MODIFY addr, mask, data
            self._args.append(byte)
            if len(self._args) == 3:
                self._write(self._args[0], self._args[2], self._args[1])
            return 0x00
        if i == 0xA0:
            return self._read_status()
        if i == 0xB0:
            return self._rx_status()
        if i & 0xF8 == 0x40 and i & 0x07 <= 5:  # LOAD TX
            n = (i >> 1) & 3
            start = TXBCTRL[n] + (6 if i & 1 else 1)
            addr = start + self._pos
            if addr <= TXBCTRL[n] + 13:
                self.regs[addr] = byte
            self._pos += 1
            return 0x00
        if i & 0xF9 == 0x90:  # READ RX
            base = (0x71 if i & 0x04 else 0x61) + (5 if i & 0x02 else 0)
            addr = base + self._pos
            self._pos += 1
            return self.regs[addr] if addr <= (0x7D if i & 0x04 else 0x6D) else 0x00
        return 0x00

    # -- transmit -----------------------------------------------------------------------------

    def _tx_frame(self, n):
        r = self.regs
        b = TXBCTRL[n]
        sidh, sidl, eid8, eid0, dlc = r[b + 1], r[b + 2], r[b + 3], r[b + 4], r[b + 5]
        sid = (sidh << 3) | (sidl >> 5)
        ext = bool(sidl & IDE)
        fid = (sid << 18) | ((sidl & 3) << 16) | (eid8 << 8) | eid0 if ext else sid
        n_data = min(dlc & 0x0F, 8)
        return Frame(fid, bytes(r[b + 6:b + 6 + n_data]), ext, bool(dlc & 0x40))

    def _transmit_pending(self):
        if self._mode not in (MODE_NORMAL, MODE_LOOPBACK):
            return
        order = sorted(range(3), key=lambda n: (-(self.regs[TXBCTRL[n]] & 3), n))
        for n in order:
            ctrl = TXBCTRL[n]
            if not self.regs[ctrl] & TXREQ:
                continue
            if self._mode == MODE_LOOPBACK:
                frame = self._tx_frame(n)
                self._done_tx(n, frame)
                self._receive(frame)
                continue
            if self.bus_off:
                return
            bus = self.bus
            if bus is None or bus.fault or self.bitrate != bus.bitrate:
                # No acknowledgement or error frames: the chip retransmits until bus-off.
                while self.tec <= 255:
                    self.tec += 8
                self.regs[ctrl] |= 0x10  # TXERR
                self._errors_changed()
                return
            frame = self._tx_frame(n)
            self._done_tx(n, frame)
            if self.tec > 0:
                self.tec -= 1
                self._errors_changed()
            bus.transmit(frame, self)
        self._update_int()

    def _done_tx(self, n, frame):
        self.regs[TXBCTRL[n]] &= ~(TXREQ | 0x10)
        self.regs[CANINTF] |= TXIF[n]
        self.transmitted.append(frame)

    # -- receive ------------------------------------------------------------------------------

    def _match(self, frame, f_addr, m_addr):
        r = self.regs
        if bool(r[f_addr + 1] & IDE) != frame.extended:
            return False
        m_sid = (r[m_addr] << 3) | (r[m_addr + 1] >> 5)
        f_sid = (r[f_addr] << 3) | (r[f_addr + 1] >> 5)
        if frame.extended:
            m = (m_sid << 18) | ((r[m_addr + 1] & 3) << 16) | (r[m_addr + 2] << 8) | r[m_addr + 3]
            f = (f_sid << 18) | ((r[f_addr + 1] & 3) << 16) | (r[f_addr + 2] << 8) | r[f_addr + 3]
            return (frame.id ^ f) & m == 0
        if (frame.id ^ f_sid) & m_sid:
            return False
        # Standard frames: the mask's EID15:8 and EID7:0 apply to data bytes 0 and 1.
        for k in range(2):
            m = r[m_addr + 2 + k]
            if m and (len(frame.data) <= k or (frame.data[k] ^ r[f_addr + 2 + k]) & m):
                return False
        return True

    def _store(self, n, frame, filhit):
        r = self.regs
        base = RXBCTRL[n]
        sidh, sidl, eid8, eid0 = _id_regs(frame)
        r[base + 1:base + 5] = bytes((sidh, sidl, eid8, eid0))
        r[base + 5] = len(frame.data) | (0x40 if frame.rtr and frame.extended else 0)
        r[base + 6:base + 14] = bytes(frame.data) + bytes(8 - len(frame.data))
        rxrtr = 0x08 if frame.rtr else 0
        if n == 0:
            r[base] = (r[base] & 0x64) | rxrtr | filhit
        else:
            r[base] = (r[base] & 0x60) | rxrtr | filhit
        r[CANINTF] |= RX0IF if n == 0 else RX1IF

    def _overflow(self, flag):
        self.regs[EFLG] |= flag
        self.regs[CANINTF] |= ERRIF

    def _receive(self, frame):
        r = self.regs
        any0 = r[RXBCTRL[0]] & 0x60 == 0x60
        hit0 = -1
        for k in range(2):
            if any0 or self._match(frame, FILTERS[k], MASKS[0]):
                hit0 = k
                break
        if hit0 >= 0:
            if not r[CANINTF] & RX0IF:
                r[RXBCTRL[0]] &= ~0x02
                self._store(0, frame, hit0)
            elif r[RXBCTRL[0]] & BUKT:
                if not r[CANINTF] & RX1IF:
                    self._store(1, frame, hit0)
                    r[RXBCTRL[0]] |= 0x02  # BUKT1
                else:
                    self._overflow(RX1OVR)
            else:
                self._overflow(RX0OVR)
            self._update_int()
            return
        any1 = r[RXBCTRL[1]] & 0x60 == 0x60
        for k in range(2, 6):
            if any1 or self._match(frame, FILTERS[k], MASKS[1]):
                if not r[CANINTF] & RX1IF:
                    r[RXBCTRL[0]] &= ~0x02
                    self._store(1, frame, k)
                else:
                    self._overflow(RX1OVR)
                break
        self._update_int()

    # -- the bus side ---------------------------------------------------------------------------

    def rx_full(self):
        """Both receive buffers hold an unread frame."""
        f = self.regs[CANINTF]
        return f & (RX0IF | RX1IF) == (RX0IF | RX1IF)

    def deliver(self, frame):
        """A frame on the bus reaches the chip."""
        if not self.present or self._mode not in (MODE_NORMAL, MODE_LISTEN) or self.bus_off:
            return
        if self.bus is not None and self.bitrate != self.bus.bitrate:
            if self._mode == MODE_NORMAL:
                self.rec += 1  # it sees only errors
                self._errors_changed()
            return
        if self.rec > 0 and self._mode == MODE_NORMAL:
            self.rec -= 1
            self._errors_changed()
        self._receive(frame)

    def tick(self, now_ms, bitrate):
        """Bus time passes. In bus-off, a healthy idle bus brings the chip back after
        128 x 11 recessive bits (the chip's automatic recovery)."""
        if not self.bus_off or self.bus is None or self.bus.fault:
            self._bus_off_at = None
            return
        if self._bus_off_at is None:
            self._bus_off_at = now_ms
            return
        if (now_ms - self._bus_off_at) * bitrate >= RECOVERY_BITS * 1000:
            self.bus_off = False
            self.tec = 0
            self.rec = 0
            self._errors_changed()

    def inject_errors(self, tx=0, rx=0):
        """Count tx transmit errors (+8 each) and rx receive errors (+1 each)."""
        self.tec += 8 * tx
        self.rec = min(self.rec + rx, 255)
        self._errors_changed()

    def inject_bus_off(self):
        """Force bus-off (TEC past 255), as a shorted or unterminated bus would."""
        self.tec = 256
        self._errors_changed()


class DirectSpi:
    """SPI wired straight to one model (no Hardware, no CS routing), for driver tests."""

    def __init__(self, model):
        self.model = model
        self.bytes = 0

    def _x(self, b):
        self.bytes += 1
        return self.model.spi_exchange(b) if self.model.present else 0xFF

    def write(self, buf):
        for b in bytes(buf):
            self._x(b)

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = self._x(write)

    def write_readinto(self, wbuf, rbuf):
        src = bytes(wbuf)
        for i in range(len(src)):
            rbuf[i] = self._x(src[i])


class DirectCs:
    """The chip-select pin of DirectSpi: its edges select and deselect the model."""
    def __init__(self, model):
        self.model = model
        self.level = 1

    def value(self, v=None):
        if v is None:
            return self.level
        if v and not self.level:
            self.model.spi_deselect()
        elif not v and self.level:
            self.model.spi_select()
        self.level = 1 if v else 0

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)
