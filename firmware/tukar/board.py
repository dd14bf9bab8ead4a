# The controller board: reads a board file (boards/<name>/board.json, format in docs/boards.md),
# checks it against the chip's real pin set, and builds every driver from it. The only firmware
# module that touches `machine`; it is imported lazily, or passed in (the host shim in tests).
import json

from tukar.charger import Charger
from tukar.clock import ticks_diff
from tukar.inputs import SENSOR_OK
from tukar.lock import Lock
from tukar.ntc import NtcTable

# Per I2C transaction (microseconds). The ESP32 default is 50 ms, so one stuck or stretched
# transaction could take a whole tick; 10 ms is above what an SBS gauge stretches the clock for.
I2C_TIMEOUT_US = 10000

CHIPS = ("esp32", "esp32s3")
_CAN_DRAIN_MAX = 32  # frames per poll_bms: 24 packs at 10 Hz send about 12 frames per 50 ms tick


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


# -- pins as the drivers see them: value 1 = asserted, whatever the wiring ---------------------------
class _GpioIn:
    def __init__(self, pin, invert):
        self._pin = pin
        self._inv = 1 if invert else 0

    def value(self):
        return self._pin.value() ^ self._inv


class _GpioOut:
    def __init__(self, pin, invert):
        self._pin = pin
        self._inv = 1 if invert else 0
        self.level = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self._pin.value(self.level ^ self._inv)


class _Expander:
    """One MCP23017: the inputs latched by one read per scan, the outputs as a shadow word."""

    def __init__(self, dev, board, bus):
        self.dev = dev  # the MCP23017 driver; its masks are set once every pin is known
        self._board = board
        self.bus = bus  # I2C bus id, for the board's error counters
        self.inputs = 0xFFFF  # direction mask; output bits are cleared as outputs are attached
        self.pullups = 0
        self.invert = 0  # inputs inverted by the chip (IPOL)
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


class _XIn:
    def __init__(self, x, bit):
        self._x = x
        self._bit = bit

    def value(self):
        return (self._x.state >> self._bit) & 1


class _XOut:
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
_FAIL_LEVEL = {"door": 0, "presence": 1, "lock_feedback": 0, "smoke": 1, "estop": 1}


class _CanChargerLink:
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


class Board:
    """Every driver of one controller board, built from a checked board dict."""

    def __init__(self, cfg, machine=None):
        if machine is None:
            import machine  # type: ignore[no-redef]
        self._m = machine
        p = validate(cfg)
        # Only what the running board needs is kept: not the parsed board file (7 KB of heap).
        self.name = cfg["board"]
        self.chip = cfg["chip"]
        n = self.slot_count = cfg["slot_count"]
        Pin = machine.Pin

        self.i2c = {}
        self._sda = {}  # read while the bus is idle: low means a device holds the bus
        self.i2c_errors = [0, 0]  # failed transactions per I2C bus id
        self.i2c_recoveries = [0, 0]
        self.spi_errors = 0
        self._i2c_pins = {}  # bus id -> (scl, sda, freq), to construct the bus again
        self._mux_buses = [m["bus"] for m in cfg.get("muxes", ())]
        for b in cfg["i2c"]:
            self._i2c_pins[b["id"]] = (b["scl"], b["sda"], b["freq"])
            self.i2c[b["id"]] = machine.I2C(b["id"], scl=Pin(b["scl"]), sda=Pin(b["sda"]),
                                            freq=b["freq"], timeout=I2C_TIMEOUT_US)
            self._sda[b["id"]] = Pin(b["sda"])

        self.expanders = []
        if cfg.get("expanders"):
            from tukar.mcp23017 import MCP23017
            for x in cfg["expanders"]:
                self.expanders.append(_Expander(MCP23017(self.i2c[x["bus"]], _int(x["addr"], "", 0, 127)),
                                                self, x["bus"]))

        self.muxes = []
        if cfg.get("muxes"):
            from tukar.tca9548a import TCA9548A
            resets = {}
            for m in cfg["muxes"]:
                rst = None
                r = m.get("reset")
                if r is not None:
                    rst = resets.get(r)
                    if rst is None:
                        rst = resets[r] = Pin(r, Pin.OUT, value=1)
                self.muxes.append(TCA9548A(self.i2c[m["bus"]], _int(m["addr"], "", 0, 127), rst))

        self.spi = None
        self.can = None
        self.can_int = None
        spi = cfg.get("spi")
        if spi is not None:
            self.spi = machine.SPI(spi["id"], baudrate=spi["baudrate"], sck=Pin(spi["sck"]),
                                   mosi=Pin(spi["mosi"]), miso=Pin(spi["miso"]))
        can = cfg.get("mcp2515")
        if can is not None:
            from tukar.mcp2515 import MCP2515
            irq = Pin(can["int"], Pin.IN) if can.get("int") is not None else None
            self.can_int = irq
            self.can = MCP2515(self.spi, Pin(can["cs"], Pin.OUT, value=1), can["crystal_hz"],
                               can["bitrate"], irq)

        # Analog muxes share select lines (amux[0].select); each has its common on an ADC1 pin.
        self._select = []
        self._sel_state = -1
        self._adcs = []
        for i, a in enumerate(cfg.get("amux", [])):
            if i == 0:
                for s in a["select"]:
                    self._select.append(Pin(s, Pin.OUT, value=0))
            self._adcs.append(machine.ADC(Pin(a["adc"]), atten=machine.ADC.ATTN_11DB))
        ntc = cfg.get("ntc", {})
        self.ntc = NtcTable(ntc.get("r25", 10000), ntc.get("beta", 3950), ntc.get("r_fixed", 10000),
                            ntc.get("supply_mv", 3300), ntc.get("full_scale_mv", 3300))
        # Temperature targets: slot i is i, the cabinet is n. Mux channels are visited in order.
        self._tmap = [[-1] * 16 for _ in self._adcs]
        self._direct = []  # (ADC, target) for sensors on their own ADC1 pin
        self.cabinet_sensor = SENSOR_OK

        self._outs = []  # every output, for safe_outputs
        self.doors = []
        self.presence = []
        self.locks = []
        self.chargers = []
        self.limits = []
        self.can_chargers = []
        self.can_charger_bank = None  # tukar.cancharger.CanChargers, when a slot has a CAN charger
        self.charge_voltage_mv = [0] * n  # CAN chargers' voltage ceiling per slot; 0 keeps them off
        self._cmd_t = None
        self.slot_x = []  # per slot: the expanders its inputs come from, to tell when they are unknown
        for i, s in enumerate(cfg["slots"]):
            door = self._input(s["door"], "door")
            presence = self._input(s["presence"], "presence")
            feedback = self._input(s["lock_feedback"], "lock_feedback")
            self.doors.append(door)
            self.presence.append(presence)
            self.locks.append(Lock(self._output(s["lock"], 0), feedback))
            xs = []
            for inp in (door, presence, feedback):
                x = getattr(inp, "_x", None)
                if x is not None and x not in xs:
                    xs.append(x)
            self.slot_x.append(xs)
            c = s["charger"]
            en = self._output(c["enable"], 0) if "enable" in c else None
            link = None
            if c["kind"] == "can":
                link = self._can_charger(i, c["node"])
                self.can_chargers.append(link)
            self.chargers.append(Charger(en, link, s["current_limit_ma"]))
            self.limits.append(s["current_limit_ma"])
            self._temp(s["temp"], i)
        cab = cfg["cabinet"]
        self.smoke = self._input(cab["smoke"], "smoke")
        self.estop = self._input(cab["estop"], "estop")
        self.fan = self._output(cab["fan"], 0)
        self.alarm = self._output(cab["alarm"], 0)
        self._temp(cab["temp"], n)
        self._steps = []  # mux channels in use, ascending
        for ch in range(16):
            for t in self._tmap:
                if t[ch] >= 0:
                    self._steps.append(ch)
                    break
        for x in self.expanders:
            x.pullups &= x.inputs
            x.invert &= x.inputs
            x.dev.inputs = x.inputs
            x.dev.pullups = x.pullups
            x.dev.invert = x.invert

        # SBS batteries: one SmartBattery per slot, behind its mux channel; polled round-robin.
        self.sbs = [None] * n
        self._sbs_mux = [-1] * n
        # Every battery answers at 0x0B: before a mux routes a channel, the other muxes on its
        # bus must route none.
        self._mux_others = []
        muxes = cfg.get("muxes", [])
        for i, m in enumerate(muxes):
            self._mux_others.append([self.muxes[j] for j in range(len(muxes))
                                     if j != i and muxes[j]["bus"] == m["bus"]])
        self._sbs_slots = []
        self._sbs_bus = [0] * n
        self._sbs_next = 0
        for i, s in enumerate(cfg["slots"]):
            sb = s["battery"].get("sbs")
            if sb is not None:
                from tukar.sbs import SmartBattery
                self.sbs[i] = SmartBattery(self._mux_bus(sb["mux"]), self.muxes[sb["mux"]], sb["channel"])
                self._sbs_mux[i] = sb["mux"]
                self._sbs_bus[i] = muxes[sb["mux"]]["bus"]
                self._sbs_slots.append(i)
        self.can_nodes = [-1] * n
        for i, s in enumerate(cfg["slots"]):
            cb = s["battery"].get("can")
            if cb is not None:
                self.can_nodes[i] = cb["node"]
        self.canbms = None
        self.can_fed = [False] * n  # a CAN pack spoke for the slot's battery: no SBS polls there
        self._rx = bytearray(13)  # one received frame: SIDH SIDL EID8 EID0 DLC D0..D7

    # -- construction helpers ----------------------------------------------------------------------
    def _mux_bus(self, m):
        return self.i2c[self._mux_buses[m]]

    def _input(self, v, role):
        r = _ref(v, role)
        if r[0] == "gpio":
            Pin = self._m.Pin
            if r[4] == "up":
                return _GpioIn(Pin(r[1], Pin.IN, Pin.PULL_UP), r[3])
            if r[4] == "down":
                return _GpioIn(Pin(r[1], Pin.IN, Pin.PULL_DOWN), r[3])
            return _GpioIn(Pin(r[1], Pin.IN), r[3])
        x = self.expanders[r[1]]
        bit = 1 << r[2]
        if r[4] != "none":
            x.pullups |= bit  # switches to ground: the chip's 100 k pull-up by default
        if r[3]:
            x.invert |= bit
        if _FAIL_LEVEL[role]:
            x.fail |= bit
        return _XIn(x, r[2])

    def _output(self, v, level):
        r = _ref(v, "output")
        if r[0] == "gpio":
            Pin = self._m.Pin
            o = _GpioOut(Pin(r[1], Pin.OUT, value=level ^ (1 if r[3] else 0)), r[3])
            o.level = level
        else:
            x = self.expanders[r[1]]
            x.inputs &= ~(1 << r[2])
            if r[3]:
                x.out_invert |= 1 << r[2]
            o = _XOut(x, r[2])
            o.value(level)
        self._outs.append(o)
        return o

    def _temp(self, v, target):
        r = _ref(v, "temp")
        if r[0] == "a":
            self._tmap[r[1]][r[2]] = target
        else:
            self._direct.append((self._m.ADC(self._m.Pin(r[1]), atten=self._m.ADC.ATTN_11DB), target))

    def _can_charger(self, slot, node):
        if self.can_charger_bank is None:
            from tukar.cancharger import CanChargers
            self.can_charger_bank = CanChargers(self.slot_count, node - slot)
        return _CanChargerLink(self, slot)

    def repeat_charger_commands(self, now_ms):
        """CAN chargers stop by themselves without a command for 5 s: repeat each once a second."""
        bank = self.can_charger_bank
        if bank is None or self.can is None:
            return
        from tukar.cancharger import COMMAND_PERIOD_MS
        if self._cmd_t is not None and ticks_diff(now_ms, self._cmd_t) < COMMAND_PERIOD_MS:
            return
        self._cmd_t = now_ms
        for link in self.can_chargers:
            link.send()

    # -- rule 9 --------------------------------------------------------------------------------------
    def safe_outputs(self):
        """Chargers off, locks locked, fan and alarm off: before anything else runs.

        Each expander's output latch is written while its pins are still inputs (the power-on
        state), then the pins are made outputs, so no pin ever drives an unsafe level.
        Returns the number of devices that did not answer (their outputs stay undriven, which
        the board's pull resistors hold safe)."""
        for c in self.chargers:
            if c._link is None:
                c.off()
        for lk in self.locks:
            lk.lock()
        self.fan.value(0)
        self.alarm.value(0)
        failed = 0
        for x in self.expanders:
            x.written = -1
            try:
                x.dev.write(x.word())  # the latch first, while every pin is still an input
                x.dev.configure()  # rewrites the latch, then the directions
                x.written = x.word()
                x.ok = True
            except OSError:
                x.ok = False
                x.errors += 1
                failed += 1
        if self.can is not None:
            try:
                self.can.init()
            except OSError:
                failed += 1
        for c in self.chargers:
            if c._link is not None:
                try:
                    c.off()
                except OSError:
                    failed += 1
        return failed

    # -- inputs --------------------------------------------------------------------------------------
    def scan(self, slot_inputs, cabinet, now_ms):
        """Fill SlotInputs and CabinetInputs in place: one read per expander, every sensor."""
        for x in self.expanders:
            x.latch()
        for i in range(self.slot_count):
            s = slot_inputs[i]
            s.door_closed = self.doors[i].value() == 1
            s.present = self.presence[i].value() == 1
            s.locked = self.locks[i].locked()
            ok = True
            for x in self.slot_x[i]:
                if not x.ok:
                    ok = False
            s.io_ok = ok
        cabinet.smoke = self.smoke.value() == 1
        cabinet.estop = self.estop.value() == 1
        ntc = self.ntc
        sel = self._select
        for ch in self._steps:
            if ch != self._sel_state:
                changed = ch ^ self._sel_state if self._sel_state >= 0 else 0xF
                for b in range(4):
                    if changed & (1 << b):
                        sel[b].value((ch >> b) & 1)
                self._sel_state = ch
            for m in range(len(self._adcs)):
                t = self._tmap[m][ch]
                if t >= 0:
                    self._store(t, self._adcs[m].read_u16() >> 4, ntc, slot_inputs, cabinet)
        for adc, t in self._direct:
            self._store(t, adc.read_u16() >> 4, ntc, slot_inputs, cabinet)

    def _store(self, target, code, ntc, slot_inputs, cabinet):
        if target < self.slot_count:
            s = slot_inputs[target]
            s.temp_dc = ntc.temp_dc(code)
            s.sensor = ntc.status(code)
        else:
            cabinet.temp_dc = ntc.temp_dc(code)
            self.cabinet_sensor = ntc.status(code)

    def set_sbs_names(self, names):
        """{SBS DeviceName: profile name} (tukar.profile.sbs_names) for every SBS slot."""
        for bat in self.sbs:
            if bat is not None:
                bat.profiles = names

    def attach_can_bms(self, profiles, slot_inputs):
        """Decode CAN battery frames (tukar.canbms, one decoder for every profile) into
        slot_inputs[i].bms. Without this call poll_bms reads SBS batteries only."""
        if self.can is None:
            return None
        from tukar.canbms import CanBms
        self.canbms = CanBms(profiles, [s.bms for s in slot_inputs])
        return self.canbms

    def poll_bms(self, slot_inputs, now_ms):
        """One SBS slot per call (round-robin over slots holding a battery); drain CAN frames."""
        k = len(self._sbs_slots)
        for _ in range(k):
            i = self._sbs_slots[self._sbs_next]
            self._sbs_next = (self._sbs_next + 1) % k
            if slot_inputs[i].present and not self.can_fed[i]:
                bus = self._sbs_bus[i]
                for other in self._mux_others[self._sbs_mux[i]]:
                    try:
                        other.deselect()
                    except OSError:
                        self.i2c_errors[bus] += 1  # the poll below fails on a collision: link_fault
                if not self.sbs[i].poll(slot_inputs[i].bms, now_ms):
                    self.i2c_errors[bus] += 1
                break
        self.drain_can(now_ms)

    def on_can_frame(self, handler):
        """Call handler(pin) when the MCP2515 pulls INT low (a frame waits); False without INT."""
        if self.can_int is None:
            return False
        self.can_int.irq(handler=handler, trigger=self._m.Pin.IRQ_FALLING)
        return True

    def can_pending(self):
        """INT is low: the MCP2515 really has something for us. An edge alone is no proof: on
        GPIO36/39 the ESP32 sees ghost edges while ADC1 and Wi-Fi are in use (erratum 3.11)."""
        return self.can_int is not None and self.can_int.value() == 0

    def drain_can(self, now_ms):
        """Decode the frames waiting in the MCP2515 (at most 32): battery packs, then chargers.
        poll_bms calls it every tick; an INT-driven task may call it between ticks too."""
        can = self.can
        if self.canbms is not None and can is not None:
            rx = self._rx
            for _ in range(_CAN_DRAIN_MAX):  # bounded: a babbling node cannot stall the tick
                try:
                    fid = can.recv_into(rx)
                except OSError:
                    self.spi_errors += 1
                    break
                if fid < 0:
                    break
                dlc = rx[4] & 0x0F
                if dlc > 8:
                    dlc = 8
                slot = self.canbms.feed(fid, rx, 5, dlc, now_ms)
                if slot >= 0:
                    self.can_fed[slot] = True
                elif self.can_charger_bank is not None:
                    self.can_charger_bank.feed(fid, rx, 5, dlc, now_ms)

    def battery_removed(self, slot, reading):
        """The slot emptied: forget its battery so that the next one is identified afresh."""
        reading.clear()
        self.can_fed[slot] = False
        bat = self.sbs[slot]
        if bat is not None:
            bat.forget()
        if self.canbms is not None:
            self.canbms.forget(slot)

    def fail_inputs(self, slot_inputs, cabinet):
        """Every input at the level assumed when its chip does not answer (_FAIL_LEVEL)."""
        for s in slot_inputs:
            s.door_closed = _FAIL_LEVEL["door"] == 1
            s.present = _FAIL_LEVEL["presence"] == 1
            s.locked = _FAIL_LEVEL["lock_feedback"] == 1
        cabinet.smoke = _FAIL_LEVEL["smoke"] == 1
        cabinet.estop = _FAIL_LEVEL["estop"] == 1

    # -- a stuck I2C bus ------------------------------------------------------------------------------
    def i2c_stuck(self, bus):
        """SDA reads low between transactions: a device holds the bus (cut off mid-byte)."""
        return self._sda[bus].value() == 0

    def recover_i2c(self, bus):
        """Free a stuck bus: 9 SCL clocks and a STOP, the muxes on it reset (they isolate a battery
        that holds its channel low), then the bus re-initialised. True if SDA is high again."""
        from tukar.tca9548a import clock_free
        pins = self._i2c_pins.get(bus)
        if pins is None:
            return False
        Pin = self._m.Pin
        scl = Pin(pins[0])
        sda = Pin(pins[1])
        muxes = [self.muxes[j] for j in range(len(self.muxes)) if self._mux_buses[j] == bus]
        if muxes:
            muxes[0].recover(scl, sda)  # the muxes share one reset line
        else:
            clock_free(scl, sda)
        for m in muxes:
            m.forget()
        # The ESP32's hardware I2C has no init() (OSError): constructing it again takes the pins
        # back from GPIO and resets the controller. The port keeps one object per bus, so the
        # drivers' references stay valid.
        self.i2c[bus] = self._m.I2C(bus, scl=scl, sda=sda, freq=pins[2], timeout=I2C_TIMEOUT_US)
        self.i2c_recoveries[bus] += 1
        return not self.i2c_stuck(bus)

    # -- outputs -------------------------------------------------------------------------------------
    def _flush(self):
        ok = True
        for x in self.expanders:
            if not x.flush():
                ok = False
        return ok

    def apply(self, lock_cmd, lock_pulse, charge_ma, fan, alarm):
        """Drive outputs. Chargers switch off first and must reach the hardware before any lock
        opens; a slot whose lock is commanded open never charges; chargers switch on last."""
        n = self.slot_count
        for i in range(n):
            if charge_ma[i] <= 0 or not lock_cmd[i]:
                self.chargers[i].set(0)
        if not self._flush():
            return False  # a charger may still be on: open nothing this tick
        for i in range(n):
            self.locks[i].command(lock_cmd[i], lock_pulse[i])
        self.fan.value(1 if fan else 0)
        self.alarm.value(1 if alarm else 0)
        ok = self._flush()
        for i in range(n):
            if charge_ma[i] > 0 and lock_cmd[i]:
                self.chargers[i].set(charge_ma[i])
        return self._flush() and ok
