# CAN battery decoder: turns BMS broadcast frames into each slot's BmsReading, driven by profile
# data (firmware/profiles/*.json), not code. Profiles are compiled once into flat tuples of integer
# steps; decoding a frame then allocates nothing and uses no floats.
#
# Slot addressing: a slot's connector straps the node id of the pack it holds, node = first + slot
# (profile "can.node": {"shift", "bits", "first"}). A frame of that pack carries the id
# base_id | (node << shift). ref48v: 0x300 | (1 + slot); pack72v: 0x18FF2000 | (0x40 + slot).
#
# Signal positions follow DBC conventions (start bit; little_endian = Intel, big_endian = Motorola
# with the start at the most significant bit), so a profile and its DBC file agree field by field.
from tukar.profile import ProfileError  # one class for both: a class costs 112 bytes of heap

EXT = 0x20000000  # 29-bit id flag, as tukar.mcp2515.recv_into returns it

EXTRA = ("cell_max_mv", "cell_min_mv", "temp_min_dc", "req_voltage_mv")  # CanBms.extra, per slot

_K_SIGNALS = 0
_K_SERIAL = 1
_SERIAL_CHARS = 7  # a serial page: byte 0 page index, bytes 1..7 ASCII, NUL padded


def compile_profile(p):
    """Profile dict (or Profile) -> (name, clear mask, shift, node mask, first node, {id: frame})
    (tukar.cancompile); tables already compiled (Profile.compact) are returned as they are."""
    if isinstance(p, tuple):
        return p
    from tukar.cancompile import compile_profile
    return compile_profile(p)


class CanBms:
    """Decodes the BMS frames of every slot on one CAN bus into readings[slot], in place."""

    def __init__(self, profiles, readings):
        self.readings = readings
        n = len(readings)
        self._profiles = tuple(compile_profile(p) for p in profiles)
        pages = 1
        for cp in self._profiles:
            for fr in cp[5].values():
                if fr[0] == _K_SERIAL:
                    pages = max(pages, fr[1])
        # Per slot, each in one flat list or bytearray (twelve small ones and the list holding
        # them were 1 KB of heap): the extra fields, the serial's pages, the last frames' data.
        self.extra = [0] * (len(EXTRA) * n)
        self._sw = pages * _SERIAL_CHARS
        self._ser = bytearray(self._sw * n)
        self._ser_seen = [0] * n
        self._ser_dirty = [False] * n
        self.frames = 0
        self.ignored = 0  # frames of no profile, of an unknown node, or too short
        self.decoded = 0  # frames whose data differed from the last of their kind, so decoded
        # The last data of each signal frame per slot: a frame that repeats it only refreshes the
        # reading's time (a pack repeats its frames 10 times a second; most repeat unchanged).
        nf = 1
        for cp in self._profiles:
            nf = max(nf, sum(1 for fr in cp[5].values() if fr[0] == _K_SIGNALS))
        self._lw = 8 * nf
        self._last = bytearray(self._lw * n)
        self._has = [0] * n  # bit k: frame k's data is in _last
        self.changed = 0  # bit slot + 1: a value the rules read changed (take_changed)

    def forget(self, slot):
        """The slot's battery left: its serial is assembled anew from the next pack's pages."""
        self._ser_seen[slot] = 0
        self._ser_dirty[slot] = False
        self._has[slot] = 0
        ser = self._ser
        for i in range(slot * self._sw, (slot + 1) * self._sw):
            ser[i] = 0

    def feed(self, fid, data, off, dlc, now_ms):
        """One received frame: fid with EXT for 29-bit ids, payload at data[off:off + dlc].
        Returns the slot it updated, or -1."""
        for cp in self._profiles:
            fr = cp[5].get(fid & cp[1])
            if fr is None:
                continue
            slot = ((fid >> cp[2]) & cp[3]) - cp[4]
            if slot < 0 or slot >= len(self.readings) or dlc < fr[3]:
                self.ignored += 1
                return -1
            r = self.readings[slot]
            if fr[0] == _K_SERIAL:
                ser = r.serial
                self._serial(slot, r, fr[1], data, off, dlc)
                if r.serial != ser:
                    self.changed |= 2 << slot
            else:
                last = self._last
                base = slot * self._lw + fr[4] * 8
                bit = 1 << fr[4]
                same = self._has[slot] & bit and r.valid
                if same:
                    for i in range(dlc):
                        if last[base + i] != data[off + i]:
                            same = False
                            break
                if not same:
                    for i in range(dlc):
                        last[base + i] = data[off + i]
                    self._has[slot] |= bit
                    f = r.faults
                    t = r.temp_dc
                    soc = r.soc_pm
                    full = r.full
                    req = r.req_current_ma
                    self._signals(slot, r, fr, data, off)
                    self.decoded += 1
                    if (f != r.faults or t != r.temp_dc or soc != r.soc_pm or full != r.full
                            or req != r.req_current_ma or not r.valid):
                        self.changed |= 2 << slot
            r.profile = cp[0]
            r.t_ms = now_ms
            r.valid = True
            self.frames += 1
            return slot
        self.ignored += 1
        return -1

    def take_changed(self):
        """The slots (bit slot + 1) where a value the rules read changed since the last call."""
        c = self.changed
        self.changed = 0
        return c

    def _signals(self, slot, r, fr, data, off):
        faults = r.faults & ~fr[2]
        extra = self.extra
        x0 = slot * len(EXTRA)
        for sig in fr[1]:  # tukar.cancompile.compile_signal
            target = sig[0]  # one at a time: a five-name unpacking builds a tuple
            bits = sig[1]
            num = sig[2]
            den = sig[3]
            ofs = sig[4]
            raw = 0
            for i in range(5, len(sig)):
                s = sig[i]  # tukar.cancompile.pack_step
                raw |= ((data[off + (s & 7)] >> ((s >> 3) & 7)) & (s >> 11)) << ((s >> 6) & 31)
            if target == -1:  # a fault bit, in num
                if raw:
                    faults |= num
                continue
            if bits < 0 and raw >> (-1 - bits):  # signed: bits is minus the length
                raw -= 1 << -bits
            v = raw * num
            if den != 1:
                v //= den
            v += ofs
            if target == "soc_pm":
                v = 0 if v < 0 else (1000 if v > 1000 else v)
            elif target == "full":
                v = v != 0
            if isinstance(target, int):
                extra[x0 + target] = v
            else:
                setattr(r, target, v)
        r.faults = faults

    def _serial(self, slot, r, pages, data, off, dlc):
        page = data[off]
        if page >= pages:
            return
        ser = self._ser
        s0 = slot * self._sw
        base = s0 + page * _SERIAL_CHARS
        for i in range(_SERIAL_CHARS):
            c = data[off + 1 + i] if 1 + i < dlc else 0
            if ser[base + i] != c:
                ser[base + i] = c
                self._ser_dirty[slot] = True
        seen = self._ser_seen[slot] | (1 << page)
        self._ser_seen[slot] = seen
        if seen == (1 << pages) - 1 and (self._ser_dirty[slot] or r.serial is None):
            # Only a new serial allocates its string.
            n = 0
            while n < pages * _SERIAL_CHARS and ser[s0 + n]:
                n += 1
            r.serial = bytes(ser[s0:s0 + n]).decode()
            self._ser_dirty[slot] = False

    def value(self, slot, name):
        """An extra field of a slot (cell_max_mv, cell_min_mv, temp_min_dc, req_voltage_mv)."""
        return self.extra[slot * len(EXTRA) + EXTRA.index(name)]
