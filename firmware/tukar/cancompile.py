# A CAN profile's frame layout (firmware/profiles/*.json, "can") compiled into the tables that
# tukar.canbms.CanBms decodes with: tuples of integer steps, no floats. Only the boot compiles
# (tukar.profile.Profile.compact): the device unloads this module after it (tukar.device.unload).
from tukar.canbms import _K_SERIAL, _K_SIGNALS, EXT, ProfileError
from tukar.inputs import BATTERY_FAULTS

_MAX_BITS = 29  # keeps every raw value a small int on a 32-bit port

# field -> (core unit, where): "r" a BmsReading attribute, or an index among a slot's CanBms.extra
FIELDS = {
    "voltage_mv": ("mV", "r"),
    "current_ma": ("mA", "r"),
    "soc_pm": ("permille", "r"),
    "soh_pct": ("%", "r"),
    "temp_dc": ("0.1degC", "r"),
    "cycles": ("", "r"),
    "req_current_ma": ("mA", "r"),
    "full": ("", "r"),
    "cell_max_mv": ("mV", 0),
    "cell_min_mv": ("mV", 1),
    "temp_min_dc": ("0.1degC", 2),
    "req_voltage_mv": ("mV", 3),
}

# (signal unit, core unit) -> factor
_FACTOR = {
    ("V", "mV"): 1000, ("mV", "mV"): 1,
    ("A", "mA"): 1000, ("mA", "mA"): 1,
    ("%", "permille"): 10, ("permille", "permille"): 1,
    ("%", "%"): 1,
    ("degC", "0.1degC"): 10,
    ("", ""): 1,
}

def parse_id(v):
    if isinstance(v, str):
        return int(v, 16) if v[:2] in ("0x", "0X") else int(v)
    return int(v)


def steps(start, length, big_endian):
    """Byte steps (byte, right shift, mask, left shift): raw = OR of ((d[byte] >> rs) & m) << ls."""
    out = []
    if big_endian:
        byte, bit, left = start // 8, start % 8, length
        while left > 0:
            n = min(bit + 1, left)
            out.append((byte, bit - n + 1, (1 << n) - 1, left - n))
            left -= n
            byte, bit = byte + 1, 7
    else:
        k = 0
        while k < length:
            p = start + k
            n = min(8 - p % 8, length - k)
            out.append((p // 8, p % 8, (1 << n) - 1, k))
            k += n
    return tuple(out)


def pack_step(step):
    """A byte step as one small int: byte | right shift << 3 | left shift << 6 | mask << 11
    (tukar.canbms.CanBms._signals unpacks it)."""
    byte, rs, m, ls = step
    return byte | rs << 3 | ls << 6 | m << 11


def _ratio(x):
    """x as num / den with den a power of ten (profile scales are decimal)."""
    den = 1
    while den <= 1000000:
        num = x * den
        if abs(num - round(num)) < 1e-6:
            return int(round(num)), den
        den *= 10
    raise ProfileError("scale %r is not a decimal fraction" % x)


def compile_signal(s):
    """Signal dict -> (target, bits, num, den, offset, step...): target a BmsReading attribute or
    an index into CanBms.extra, bits negative for a signed signal, each byte step packed into one
    int (pack_step); a fault bit is (-1, bits, the bit, 1, 0, step...). One flat tuple, not a
    signal, a tuple of steps and a tuple a step: 48 bytes of heap for a two-byte signal, not 112."""
    length = s["length"]
    if not 1 <= length <= _MAX_BITS:
        raise ProfileError("signal %s: 1..%d bits" % (s.get("name"), _MAX_BITS))
    st = steps(s["start"], length, s.get("byte_order") == "big_endian")
    if st[-1][0] > 7 or st[0][0] > 7:
        raise ProfileError("signal %s: outside 8 bytes" % s.get("name"))
    fault = s.get("fault")
    if fault is not None:
        if fault not in BATTERY_FAULTS:
            raise ProfileError("signal %s: unknown fault %s" % (s.get("name"), fault))
        return (-1, length, 1 << BATTERY_FAULTS.index(fault), 1, 0) + tuple(pack_step(x) for x in st)
    field = s.get("field")
    spec = FIELDS.get(field)
    if spec is None:
        raise ProfileError("signal %s: unknown field %s" % (s.get("name"), field))
    factor = _FACTOR.get((s.get("unit", ""), spec[0]))
    if factor is None:
        raise ProfileError("signal %s: unit %r cannot fill %s" % (s.get("name"), s.get("unit"), field))
    num, den = _ratio(s.get("scale", 1) * factor)
    off = s.get("offset", 0) * factor
    if abs(off - round(off)) > 1e-6:
        raise ProfileError("signal %s: offset not whole in core units" % s.get("name"))
    target = field if spec[1] == "r" else spec[1]
    return ((target, -length if s.get("signed") else length, num, den, int(round(off)))
            + tuple(pack_step(x) for x in st))


def compile_profile(p):
    """Profile dict (or Profile) -> (name, clear mask, shift, node mask, first node, {id: frame})."""
    p = getattr(p, "data", None) or p
    can = p.get("can")
    if not isinstance(can, dict):
        raise ProfileError("profile %s: no 'can' section" % p.get("name"))
    node = can.get("node", {})
    shift = node.get("shift", 0)
    nmask = (1 << node.get("bits", 0)) - 1
    frames = {}
    k = 0  # the frame's index among the profile's signal frames (CanBms keeps its last data)
    for f in can["frames"]:
        fid = parse_id(f["id"])
        if f.get("extended"):
            fid |= EXT
        if fid & (nmask << shift):
            raise ProfileError("frame %s: id overlaps the node bits" % f.get("name"))
        ser = f.get("serial")
        if ser is not None:
            frames[fid] = (_K_SERIAL, ser["pages"], 0, 8)
            continue
        sigs = tuple(compile_signal(s) for s in f["signals"])
        fmask = 0
        need = 0
        for s in sigs:
            if s[0] == -1:
                fmask |= s[2]
            for i in range(5, len(s)):
                need = max(need, (s[i] & 7) + 1)
        frames[fid] = (_K_SIGNALS, sigs, fmask, need, k)
        k += 1
    return (p["name"], ~(nmask << shift), shift, nmask, node.get("first", 0), frames)
