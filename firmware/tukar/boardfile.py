# The board file (boards/<name>/board.json, format in docs/boards.md): read and checked against
# the chip's real pin set, every error naming the field. Pure: no `machine`, so the host tools
# (wiring tables, provisioning) use the same checks as the device.
import json

CHIPS = ("esp32", "esp32s3")


class BoardError(ValueError):
    pass


# -- the chips' pins -------------------------------------------------------------------------------
class _Chip:
    def __init__(self, name, exists, reserved, strapping, input_only, adc1):
        self.name = name
        self.exists = exists
        self.reserved = reserved  # pin -> why it is not free
        self.strapping = strapping
        self.input_only = input_only
        self.adc1 = adc1


def _pins(*ranges):
    out = set()
    for lo, hi in ranges:
        for n in range(lo, hi + 1):
            out.add(n)
    return out


def _chip(name):
    if name == "esp32":
        reserved = {1: "the UART0 console (TX)", 3: "the UART0 console (RX)"}
        for n in range(6, 12):
            reserved[n] = "wired to the SPI flash"
        return _Chip(name, _pins((0, 19), (21, 23), (25, 27), (32, 39)), reserved,
                     (0, 2, 5, 12, 15), _pins((34, 39)), _pins((32, 39)))
    reserved = {19: "USB D-", 20: "USB D+", 43: "the UART0 console (TX)", 44: "the UART0 console (RX)"}
    for n in range(26, 38):
        reserved[n] = "wired to the flash/PSRAM (octal on N8R8/N16R8 modules)"
    return _Chip(name, _pins((0, 21), (26, 48)), reserved, (0, 3, 45, 46), set(), _pins((1, 10)))


# -- field checks ----------------------------------------------------------------------------------
def _obj(v, where, keys, required=()):
    if not isinstance(v, dict):
        raise BoardError("%s: object required" % where)
    for k in v:
        if k not in keys:
            raise BoardError("%s: unknown field '%s'" % (where, k))
    for k in required:
        if k not in v:
            raise BoardError("%s.%s: missing" % (where, k))
    return v


def _int(v, where, lo, hi):
    if isinstance(v, str) and v[:2] in ("0x", "0X"):  # JSON has no hex: addresses may be "0x20"
        try:
            v = int(v[2:], 16)
        except ValueError:
            raise BoardError("%s: %s is not a hex number" % (where, v))
    if isinstance(v, bool) or not isinstance(v, int):
        raise BoardError("%s: integer required" % where)
    if v < lo or v > hi:
        raise BoardError("%s: %d outside %d..%d" % (where, v, lo, hi))
    return v


def _list(v, where, lo, hi):
    if not isinstance(v, list):
        raise BoardError("%s: list required" % where)
    if len(v) < lo or len(v) > hi:
        raise BoardError("%s: %d entries, %d..%d allowed" % (where, len(v), lo, hi))
    return v


# A parsed pin reference: (kind, a, b, invert, pull). kind "gpio": a = GPIO number;
# "x": expander a, pin b (0..7 = A0..A7, 8..15 = B0..B7); "a": analog mux a, channel b.
def _ref(v, where):
    invert = False
    pull = None
    if isinstance(v, dict):
        _obj(v, where, ("pin", "invert", "pull"), ("pin",))
        invert = v.get("invert", False)
        if not isinstance(invert, bool):
            raise BoardError("%s.invert: true or false required" % where)
        pull = v.get("pull")
        if pull not in (None, "up", "down", "none"):
            raise BoardError("%s.pull: 'up', 'down' or 'none' required" % where)
        v = v["pin"]
    if isinstance(v, int) and not isinstance(v, bool):
        return ("gpio", v, 0, invert, pull)
    if isinstance(v, str) and len(v) >= 4 and v[0] in "xa" and "." in v:
        a, b = v[1:].split(".", 1)
        if a.isdigit() and b.isdigit():
            return (v[0], int(a), int(b), invert, pull)
    raise BoardError("%s: pin %r: a GPIO number, 'x<expander>.<pin>' or 'a<amux>.<channel>' required"
                     % (where, v))


class _Plan:
    """The checked board file: what Board builds, with every pin reference parsed."""

    def __init__(self, cfg, chip):
        self.cfg = cfg
        self.chip = chip
        self.used = {}  # resource -> field that claimed it

    def claim(self, key, where, what):
        other = self.used.get(key)
        if other is not None:
            raise BoardError("%s: %s already used by %s" % (where, what, other))
        self.used[key] = where

    def gpio(self, n, where, kind, pull=None):
        """kind: 'in', 'out' or 'adc'. Checks the pin exists and suits the use, then claims it."""
        c = self.chip
        if not isinstance(n, int) or isinstance(n, bool):
            raise BoardError("%s: GPIO number required" % where)
        if n not in c.exists:
            raise BoardError("%s: pin %d does not exist on %s" % (where, n, c.name))
        if n in c.reserved:
            raise BoardError("%s: pin %d is %s on %s" % (where, n, c.reserved[n], c.name))
        if n in c.strapping:
            raise BoardError("%s: pin %d is a strapping pin on %s (its level at reset selects the boot mode)"
                             % (where, n, c.name))
        if kind == "out" and n in c.input_only:
            raise BoardError("%s: pin %d is input-only on %s" % (where, n, c.name))
        if pull in ("up", "down") and n in c.input_only:
            raise BoardError("%s: pin %d has no internal pull resistor on %s" % (where, n, c.name))
        if kind == "adc" and n not in c.adc1:
            raise BoardError("%s: pin %d is not an ADC1 pin on %s (ADC2 is unusable while Wi-Fi runs)"
                             % (where, n, c.name))
        self.claim(("gpio", n), where, "pin %d" % n)
        return n

    def pin(self, v, where, kind):
        r = _ref(v, where)
        k = r[0]
        if k == "gpio":
            if kind == "adc" and r[3]:
                raise BoardError("%s: an analog input cannot be inverted" % where)
            self.gpio(r[1], where, kind, r[4])
        elif k == "x":
            if kind == "adc":
                raise BoardError("%s: an expander pin is not analog" % where)
            if r[1] >= len(self.cfg.get("expanders", ())):
                raise BoardError("%s: expander %d is not in expanders" % (where, r[1]))
            if r[2] > 15:
                raise BoardError("%s: expander pin %d outside 0..15" % (where, r[2]))
            if r[4] == "down":
                raise BoardError("%s: the MCP23017 has no pull-down" % where)
            self.claim(("x", r[1], r[2]), where, "expander pin x%d.%d" % (r[1], r[2]))
        else:
            if kind != "adc":
                raise BoardError("%s: an analog mux channel is not a digital pin" % where)
            if r[1] >= len(self.cfg.get("amux", ())):
                raise BoardError("%s: analog mux %d is not in amux" % (where, r[1]))
            if r[2] > 15:
                raise BoardError("%s: analog mux channel %d outside 0..15" % (where, r[2]))
            if r[3] or r[4] is not None:
                raise BoardError("%s: an analog input takes no invert or pull" % where)
            self.claim(("a", r[1], r[2]), where, "analog mux channel a%d.%d" % (r[1], r[2]))
        return r


_TOP = ("board", "chip", "slot_count", "i2c", "spi", "mcp2515", "expanders", "muxes", "amux", "ntc",
        "slots", "cabinet", "description")
_SLOT = ("door", "presence", "lock", "lock_feedback", "charger", "temp", "battery", "current_limit_ma")
_CABINET = ("smoke", "estop", "fan", "alarm", "temp")


def validate(cfg):
    """Check a board dict; raise BoardError naming the field. Returns the parsed plan."""
    _obj(cfg, "board", _TOP, ("board", "chip", "slot_count", "i2c", "slots", "cabinet"))
    if not isinstance(cfg["board"], str) or not cfg["board"]:
        raise BoardError("board: non-empty string required")
    if cfg["chip"] not in CHIPS:
        raise BoardError("chip: %r is not one of %s" % (cfg["chip"], ", ".join(CHIPS)))
    p = _Plan(cfg, _chip(cfg["chip"]))
    n = _int(cfg["slot_count"], "slot_count", 1, 24)

    buses = {}
    for i, b in enumerate(_list(cfg["i2c"], "i2c", 1, 2)):
        w = "i2c[%d]" % i
        _obj(b, w, ("id", "scl", "sda", "freq", "use"), ("id", "scl", "sda", "freq"))
        bid = _int(b["id"], w + ".id", 0, 1)
        if bid in buses:
            raise BoardError("%s.id: bus %d defined twice" % (w, bid))
        buses[bid] = set()  # addresses on it
        p.gpio(b["scl"], w + ".scl", "out")
        p.gpio(b["sda"], w + ".sda", "out")
        _int(b["freq"], w + ".freq", 10000, 400000)

    def on_bus(d, w, lo, hi):
        bid = _int(d["bus"], w + ".bus", 0, 1)
        if bid not in buses:
            raise BoardError("%s.bus: I2C bus %d is not in i2c" % (w, bid))
        addr = _int(d["addr"], w + ".addr", lo, hi)
        if addr in buses[bid]:
            raise BoardError("%s.addr: 0x%02x used twice on I2C bus %d" % (w, addr, bid))
        buses[bid].add(addr)

    spi = cfg.get("spi")
    if spi is not None:
        _obj(spi, "spi", ("id", "sck", "mosi", "miso", "baudrate"), ("id", "sck", "mosi", "miso", "baudrate"))
        _int(spi["id"], "spi.id", 1, 2)
        p.gpio(spi["sck"], "spi.sck", "out")
        p.gpio(spi["mosi"], "spi.mosi", "out")
        p.gpio(spi["miso"], "spi.miso", "in")
        _int(spi["baudrate"], "spi.baudrate", 100000, 10000000)  # the MCP2515 tops out at 10 MHz
    can = cfg.get("mcp2515")
    if can is not None:
        if spi is None:
            raise BoardError("mcp2515: needs the spi bus")
        _obj(can, "mcp2515", ("cs", "int", "crystal_hz", "bitrate"), ("cs", "crystal_hz", "bitrate"))
        p.gpio(can["cs"], "mcp2515.cs", "out")
        if can.get("int") is not None:
            p.gpio(can["int"], "mcp2515.int", "in")
        if can["crystal_hz"] not in (8000000, 16000000):
            raise BoardError("mcp2515.crystal_hz: 8000000 or 16000000 required")
        if can["bitrate"] not in (250000, 500000):
            raise BoardError("mcp2515.bitrate: 250000 or 500000 required")

    for i, x in enumerate(_list(cfg.get("expanders", []), "expanders", 0, 8)):
        w = "expanders[%d]" % i
        _obj(x, w, ("bus", "addr"), ("bus", "addr"))
        on_bus(x, w, 0x20, 0x27)
    for i, m in enumerate(_list(cfg.get("muxes", []), "muxes", 0, 8)):
        w = "muxes[%d]" % i
        _obj(m, w, ("bus", "addr", "reset"), ("bus", "addr"))
        on_bus(m, w, 0x70, 0x77)
        r = m.get("reset")
        if r is not None and p.used.get(("gpio", r)) != "muxes.reset":
            p.gpio(r, w + ".reset", "out")  # muxes may share one reset line
            p.used[("gpio", r)] = "muxes.reset"
    for i, a in enumerate(_list(cfg.get("amux", []), "amux", 0, 4)):
        w = "amux[%d]" % i
        _obj(a, w, ("chip", "adc", "select"), ("chip", "adc", "select"))
        if a["chip"] != "cd74hc4067":
            raise BoardError("%s.chip: 'cd74hc4067' required" % w)
        p.gpio(a["adc"], w + ".adc", "adc")
        sel = _list(a["select"], w + ".select", 4, 4)
        first = cfg["amux"][0]["select"]
        for j in range(4):
            if i > 0 and sel[j] == first[j]:
                continue  # analog muxes share their select lines
            if i > 0:
                raise BoardError("%s.select[%d]: every analog mux shares amux[0]'s select lines" % (w, j))
            p.gpio(sel[j], "%s.select[%d]" % (w, j), "out")
    ntc = cfg.get("ntc", {})
    _obj(ntc, "ntc", ("r25", "beta", "r_fixed", "supply_mv", "full_scale_mv"))
    for k, lo, hi in (("r25", 100, 1000000), ("beta", 1000, 6000), ("r_fixed", 100, 1000000),
                      ("supply_mv", 1000, 5000), ("full_scale_mv", 1000, 5000)):
        if k in ntc:
            _int(ntc[k], "ntc." + k, lo, hi)

    slots = _list(cfg["slots"], "slots", n, n)
    muxes = cfg.get("muxes", [])
    can_nodes = {}
    charger_nodes = {}
    charger_first = None
    for i, s in enumerate(slots):
        w = "slots[%d]" % i
        _obj(s, w, _SLOT, _SLOT)
        p.pin(s["door"], w + ".door", "in")
        p.pin(s["presence"], w + ".presence", "in")
        p.pin(s["lock"], w + ".lock", "out")
        p.pin(s["lock_feedback"], w + ".lock_feedback", "in")
        p.pin(s["temp"], w + ".temp", "adc")
        _int(s["current_limit_ma"], w + ".current_limit_ma", 0, 100000)
        c = _obj(s["charger"], w + ".charger", ("kind", "enable", "node"), ("kind",))
        if c["kind"] == "enable":
            if "enable" not in c:
                raise BoardError("%s.charger.enable: missing" % w)
        elif c["kind"] == "can":
            if can is None:
                raise BoardError("%s.charger.kind: a CAN charger needs mcp2515" % w)
            node = _int(c.get("node"), w + ".charger.node", 0, 255)
            if node in charger_nodes:
                raise BoardError("%s.charger.node: %d already used by %s" % (w, node, charger_nodes[node]))
            charger_nodes[node] = w + ".charger.node"
            if charger_first is None:
                charger_first = node - i
            elif node != charger_first + i:  # tukar.cancharger addresses slot i's charger at first + i
                raise BoardError("%s.charger.node: %d required (node of the first CAN charger + slot index)"
                                 % (w, charger_first + i))
        else:
            raise BoardError("%s.charger.kind: 'enable' or 'can' required" % w)
        if "enable" in c:
            p.pin(c["enable"], w + ".charger.enable", "out")
        bat = _obj(s["battery"], w + ".battery", ("sbs", "can"))
        if not bat:
            raise BoardError("%s.battery: sbs, can or both required" % w)
        if "sbs" in bat:
            sb = _obj(bat["sbs"], w + ".battery.sbs", ("mux", "channel"), ("mux", "channel"))
            m = _int(sb["mux"], w + ".battery.sbs.mux", 0, 7)
            if m >= len(muxes):
                raise BoardError("%s.battery.sbs.mux: mux %d is not in muxes" % (w, m))
            ch = _int(sb["channel"], w + ".battery.sbs.channel", 0, 7)
            p.claim(("sbs", m, ch), w + ".battery.sbs", "mux %d channel %d" % (m, ch))
        if "can" in bat:
            if can is None:
                raise BoardError("%s.battery.can: needs mcp2515" % w)
            cb = _obj(bat["can"], w + ".battery.can", ("node",), ("node",))
            node = _int(cb["node"], w + ".battery.can.node", 0, 255)
            if node in can_nodes:
                raise BoardError("%s.battery.can.node: %d already used by %s" % (w, node, can_nodes[node]))
            can_nodes[node] = w + ".battery.can.node"

    cab = _obj(cfg["cabinet"], "cabinet", _CABINET, _CABINET)
    p.pin(cab["smoke"], "cabinet.smoke", "in")
    p.pin(cab["estop"], "cabinet.estop", "in")
    p.pin(cab["fan"], "cabinet.fan", "out")
    p.pin(cab["alarm"], "cabinet.alarm", "out")
    p.pin(cab["temp"], "cabinet.temp", "adc")
    for key in p.used:
        if key[0] == "x":
            bus = cfg["expanders"][key[1]]["bus"]
            if isinstance(bus, int) and bus not in buses:
                raise BoardError("expanders[%d].bus: I2C bus %d is not in i2c" % (key[1], bus))
    return p


def load(path):
    """Read and check a board file."""
    with open(path) as f:
        try:
            cfg = json.load(f)
        except ValueError as e:
            raise BoardError("%s: not JSON (%s)" % (path, e))
    validate(cfg)
    return cfg
