# SMBus Smart Battery (SBS 1.1) at 0x0B, one per slot behind a TCA9548A channel.
# poll() fills the slot's BmsReading in place; after the battery is identified it allocates
# nothing: fixed buffers, fixed memoryview slices, a PEC table built once.
#
# Serial format: "<ManufacturerName>-<YYYYMMDD>-<SerialNumber as 4 hex digits>", for example
# "TUKAR-20240315-0042". The SBS SerialNumber is one 16-bit word, unique only per maker and
# batch, so the maker and the ManufactureDate make it a fleet-wide identity.
# Capacities in 10 mWh (BatteryMode bit 15) are kept in that unit for SoH (a ratio) and
# converted to mAh at the pack voltage for remaining_mah / full_mah.
from micropython import const

from tukar.inputs import F_OVERCHARGED, F_OVERTEMP

SBS_ADDR = const(0x0B)

_BATTERY_MODE = const(0x03)
_TEMPERATURE = const(0x08)
_VOLTAGE = const(0x09)
_CURRENT = const(0x0A)
_RSOC = const(0x0D)
_REMAINING = const(0x0F)
_FULL = const(0x10)
_CHARGING_CURRENT = const(0x14)
_STATUS = const(0x16)
_CYCLES = const(0x17)
_DESIGN = const(0x18)
_SPEC_INFO = const(0x1A)
_DATE = const(0x1B)
_SERIAL = const(0x1C)
_MANUFACTURER = const(0x20)
_DEVICE_NAME = const(0x21)

# BatteryStatus bits
OVER_CHARGED_ALARM = const(0x8000)
TERMINATE_CHARGE_ALARM = const(0x4000)
OVER_TEMP_ALARM = const(0x1000)
TERMINATE_DISCHARGE_ALARM = const(0x0800)
FULLY_CHARGED = const(0x0020)

CAPACITY_MODE = const(0x8000)  # BatteryMode: capacities in 10 mWh
LINK_FAILS = const(3)  # failed polls in a row that make a link fault
_ZERO_C_DK = const(2731)  # 0 degC in 0.1 K
_NO_REQUEST = const(0xFFFF)
_MAX_BLOCK = const(32)
# Word commands of every poll, in the order step() stores them: what the charge rules, the
# energy count and dispensing need each time, then one of _SLOW in turn (capacities and cycles
# change over hours; all three are read when the battery is identified).
_POLLED = (_TEMPERATURE, _STATUS, _CHARGING_CURRENT, _RSOC, _CURRENT, _VOLTAGE)
_SLOW = (_REMAINING, _FULL, _CYCLES)
WORDS = const(7)  # word reads of one poll
_LAST = const(7)  # SmartBattery._words: where the last poll's rule words begin
_SLOWV = const(11)  # ... and the last values of _SLOW
_MODEV = const(14)  # ... then BatteryMode and DesignCapacity, read when identifying

# step() results
DONE = const(1)
SAME = const(2)  # done, and what the rules read (temperature, status, request, SoC) is unchanged
MORE = const(0)
FAILED = const(-1)


def _make_table():
    t = bytearray(256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        t[i] = c
    return t


_CRC = _make_table()


def crc8(data, crc=0):
    """SMBus PEC: CRC-8, polynomial 0x07, initial 0; crc chains calls."""
    t = _CRC
    for b in data:
        crc = t[crc ^ b]
    return crc


def pec_ok(addr, cmd, buf, n):
    """True if buf[n] is the PEC of a read of n bytes buf[:n] from command cmd at addr."""
    t = _CRC
    crc = t[addr << 1]
    crc = t[crc ^ cmd]
    crc = t[crc ^ ((addr << 1) | 1)]
    for i in range(n):
        crc = t[crc ^ buf[i]]
    return crc == buf[n]


_PRE = {}  # address -> the PEC of a word read up to its data, per command (shared by packs)


def _prefix(addr):
    """For each command: the PEC over address (write), command, address (read)."""
    pre = _PRE.get(addr)
    if pre is None:
        pre = _PRE[addr] = bytearray(0x40)
        for cmd in range(0x40):
            c = _CRC[addr << 1]
            c = _CRC[c ^ cmd]
            pre[cmd] = _CRC[c ^ ((addr << 1) | 1)]
    return pre


def temp_dc(raw):
    """Temperature word (0.1 K) to 0.1 degC."""
    return raw - _ZERO_C_DK


def signed16(raw):
    return raw - 0x10000 if raw & 0x8000 else raw


def soc_pm(raw):
    """RelativeStateOfCharge (%, may exceed 100) to per mille, clamped 0..1000."""
    return (raw if raw < 100 else 100) * 10


def soh_pct(full, design):
    """FullChargeCapacity / DesignCapacity x 100, clamped 0..100 (both in the same unit)."""
    if design <= 0:
        return 0
    v = full * 100 // design
    return v if v < 100 else 100


def status_faults(status):
    """BatteryStatus to BATTERY_FAULTS bits; the 3:0 error code is not a battery fault."""
    f = 0
    if status & OVER_CHARGED_ALARM:
        f |= F_OVERCHARGED
    if status & OVER_TEMP_ALARM:
        f |= F_OVERTEMP
    return f


def status_full(status):
    return bool(status & (TERMINATE_CHARGE_ALARM | FULLY_CHARGED))


def charging_current(raw):
    """ChargingCurrent to mA; 0xFFFF (no specific request) to -1."""
    return -1 if raw == _NO_REQUEST else raw


def capacity_mah(raw, mode, voltage_mv):
    """A capacity word to mAh: as is, or from 10 mWh at the pack voltage (BatteryMode bit 15)."""
    if not mode & CAPACITY_MODE:
        return raw
    if voltage_mv <= 0:
        return 0
    return raw * 10000 // voltage_mv


def manufacture_date(raw):
    """ManufactureDate word to (year, month, day)."""
    return ((raw >> 9) + 1980, (raw >> 5) & 0x0F, raw & 0x1F)


def pec_enabled(spec_info):
    """SpecificationInfo bits 7:4 = 3: SBS 1.1 with PEC."""
    return (spec_info >> 4) & 0x0F == 3


def serial_string(manufacturer, date_raw, serial):
    y, m, d = manufacture_date(date_raw)
    return "%s-%04d%02d%02d-%04X" % (manufacturer, y, m, d, serial)


def _text(buf, start, n):
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in buf[start:start + n])


# One transaction buffer for every battery, and views of its first 2, 3 and 1 bytes: the control
# loop reads one transaction at a time, and each read's bytes are used before the next (twelve
# buffers and their views were 1.3 KB of heap; four attributes a battery pointing here, 0.6 KB).
_BUF = bytearray(2 + _MAX_BLOCK)
_W2 = memoryview(_BUF)[:2]
_W3 = memoryview(_BUF)[:3]
_B1 = memoryview(_BUF)[:1]


class SmartBattery:
    """One slot's SBS battery, reached through `mux` channel `channel` when a mux is given.

    profiles maps DeviceName to a profile name; without an entry the DeviceName is the profile.
    """

    def __init__(self, i2c, mux=None, channel=0, addr=SBS_ADDR, profiles=None):
        self.i2c = i2c
        self.mux = mux
        self.channel = channel
        self.addr = addr
        self._pre = _prefix(addr)  # the PEC's prefix per command (a table shared per address)
        self.profiles = profiles
        self.pec = False
        self.fails = 0  # failed polls in a row
        self.identified = False
        # One list (the attribute table of a battery stays small): the polled words, then the
        # rule words of the last poll (_LAST: temperature, status, request, SoC), then the last
        # remaining capacity, full capacity and cycle count (_SLOWV), then BatteryMode and
        # DesignCapacity (_MODEV): 12 attributes, where 14 took a table a size step larger.
        self._words = [0] * WORDS + [-1] * 4 + [0] * 5
        self._k = 0  # the next word of the poll in progress
        self._slow = 0  # which of _SLOW this poll reads

    def capacities(self, voltage_mv):
        """(remaining, full) in mAh from the last words read (not on the tick's path)."""
        w = self._words
        return (capacity_mah(w[_SLOWV], w[_MODEV], voltage_mv),
                capacity_mah(w[_SLOWV + 1], w[_MODEV], voltage_mv))

    def forget(self):
        """A different battery may be in the slot: identify again at the next poll."""
        self.identified = False
        self.fails = 0
        self._k = 0
        self._words[_LAST] = -1

    def _word(self, cmd):
        """One word command, PEC checked when the battery uses PEC; -1 on NACK or bad PEC."""
        b = _BUF
        if self.pec:
            try:
                self.i2c.readfrom_mem_into(self.addr, cmd, _W3)
            except OSError:
                return -1
            t = _CRC
            if t[t[_prefix(self.addr)[cmd] ^ b[0]] ^ b[1]] != b[2]:
                return -1
        else:
            try:
                self.i2c.readfrom_mem_into(self.addr, cmd, _W2)
            except OSError:
                return -1
        return b[0] | (b[1] << 8)

    def _block(self, cmd):
        """A block read (count byte first) as text, or None."""
        try:
            self.i2c.readfrom_mem_into(self.addr, cmd, _B1)
            n = _BUF[0]
            if n > _MAX_BLOCK:
                return None
            self.i2c.readfrom_mem_into(self.addr, cmd, memoryview(_BUF)[:n + 1 + self.pec])
        except OSError:
            return None
        b = _BUF
        if b[0] != n or (self.pec and not pec_ok(self.addr, cmd, b, n + 1)):
            return None
        return _text(b, 1, n)

    def _identify(self, reading):
        """Identify the battery whole (both parts)."""
        return self._identify_part(reading, 0) and self._identify_part(reading, 1)

    def _identify_part(self, reading, part):
        """One of identification's two parts, each at most 5 ms of bus at 100 kHz: 0 the format,
        date, serial, capacities and cycle count words; 1 the two names, and then the reading's
        identity. False on NACK or a bad PEC."""
        w = self._words  # the poll's words are scratch until the poll starts again
        if part == 0:
            # SpecificationInfo is read with its PEC byte: the answer says whether to check it.
            try:
                self.i2c.readfrom_mem_into(self.addr, _SPEC_INFO, _W3)
            except OSError:
                return False
            b = _BUF
            spec = b[0] | (b[1] << 8)
            pec = pec_enabled(spec)
            if pec and not pec_ok(self.addr, _SPEC_INFO, b, 2):
                return False
            self.pec = pec
            mode = self._word(_BATTERY_MODE)
            design = self._word(_DESIGN)
            date = self._word(_DATE)
            serial = self._word(_SERIAL)
            if mode < 0 or design < 0 or date < 0 or serial < 0:
                return False
            w[_MODEV] = mode
            w[_MODEV + 1] = design
            w[0] = date
            w[1] = serial
            rem = self._word(_REMAINING)
            full = self._word(_FULL)
            cycles = self._word(_CYCLES)
            if rem < 0 or full < 0 or cycles < 0:
                return False
            w[_SLOWV] = rem
            w[_SLOWV + 1] = full
            w[_SLOWV + 2] = cycles
            return True
        maker = self._block(_MANUFACTURER)
        name = self._block(_DEVICE_NAME)
        if maker is None or name is None:
            return False
        reading.cycles = w[_SLOWV + 2]
        reading.soh_pct = soh_pct(w[_SLOWV + 1], w[_MODEV + 1])
        w[_LAST] = -1  # the first poll of this battery is news
        reading.serial = serial_string(maker, w[0], w[1])
        p = self.profiles.get(name) if self.profiles else None
        reading.profile = p if p is not None else name
        self.identified = True
        return True

    def _fail(self, reading):
        self.fails += 1
        if self.fails >= LINK_FAILS:
            reading.link_fault = True
            self.identified = False  # the pack may have changed while we could not see it
        return False

    def poll(self, reading, now_ms):
        """A whole poll at once. False (reading untouched) on NACK or a bad PEC."""
        self._k = 0
        return self.step(reading, now_ms, 99) > 0  # identification too, if due

    def step(self, reading, now_ms, budget):
        """Go on with the poll by at most `budget` word reads (identifying a new battery is done
        whole, first). DONE: reading holds a complete fresh poll; MORE: not yet; FAILED: NACK or
        a bad PEC (the poll starts again; reading untouched)."""
        k = self._k
        if k == 0 or k < -1:
            part = -1
            if k == 0:
                if self.mux is not None:
                    try:
                        self.mux.select(self.channel)
                    except OSError:
                        self._fail(reading)
                        return FAILED
                if not (self.identified and reading.valid):
                    part = 0
            else:
                part = -1 - k  # identification goes on (_k -2: part 1)
            if part >= 0:
                # Identifying is a dozen transactions (7 ms at 100 kHz): one part per tick, and
                # then the first poll whole in the tick after (a new pack must answer within the
                # core's identify_timeout_s, 3 s, even when twelve are identified at a boot).
                whole = budget >= WORDS + 12
                while part < 2:
                    if not self._identify_part(reading, part):
                        self._k = 0
                        self._fail(reading)
                        return FAILED
                    part += 1
                    if not whole:
                        self._k = -1 - part if part < 2 else -1
                        return MORE
            k = 0
        elif k < 0:
            k = 0
            budget = WORDS  # the first poll of a pack just identified
        w = self._words
        end = k + budget
        if end > WORDS:
            end = WORDS
        # The word reads inline (this loop is most of a quiet tick's SMBus work).
        i2c = self.i2c
        addr = self.addr
        b = _BUF
        pec = self.pec
        dst = _W3 if pec else _W2
        t = _CRC
        pre = self._pre
        polled = _POLLED
        slow = _SLOW[self._slow]
        for j in range(k, end):
            cmd = polled[j] if j < WORDS - 1 else slow
            try:
                i2c.readfrom_mem_into(addr, cmd, dst)
            except OSError:
                j = -1
            if j < 0 or pec and t[t[pre[cmd] ^ b[0]] ^ b[1]] != b[2]:
                self._k = 0
                self._fail(reading)
                return FAILED  # the whole poll is discarded
            w[j] = b[0] | (b[1] << 8)
        if end < WORDS:
            self._k = end
            return MORE
        self._k = 0
        slow = self._slow
        self._slow = slow + 1 if slow < 2 else 0
        v = w[WORDS - 1]
        if v != w[_SLOWV + slow]:  # a slow word is decoded only when it moved
            w[_SLOWV + slow] = v
            if slow == 1:
                d = w[_MODEV + 1]
                v = v * 100 // d if d > 0 else 0
                reading.soh_pct = v if v < 100 else 100
            elif slow == 2:
                reading.cycles = v
        temp = w[0]  # one by one: a six-name unpack of a tuple would build the tuple
        status = w[1]
        req = w[2]
        rsoc = w[3]
        cur = w[4]
        same = (reading.valid and not reading.link_fault and w[_LAST] == temp
                and w[_LAST + 1] == status and w[_LAST + 2] == req and w[_LAST + 3] == rsoc)
        if not same:
            w[_LAST] = temp
            w[_LAST + 1] = status
            w[_LAST + 2] = req
            w[_LAST + 3] = rsoc
            reading.temp_dc = temp - _ZERO_C_DK
            reading.soc_pm = soc_pm(rsoc)
            reading.req_current_ma = -1 if req == _NO_REQUEST else req
            reading.faults = status_faults(status)
            reading.full = status_full(status)
        reading.voltage_mv = w[5]
        reading.current_ma = cur - 0x10000 if cur & 0x8000 else cur
        reading.t_ms = now_ms
        reading.valid = True
        reading.link_fault = False
        self.fails = 0
        return SAME if same else DONE
