# The electronics a board file describes, as host models: the CD74HC4067 analog mux in front of
# the ESP32 ADC, and `wire(hw, cfg)` that attaches a model of every chip of a board to a Hardware.
from tukar_tools.shim.hw import ADC_MAX
from tukar_tools.shim.i2c_chips import MCP23017, TCA9548A

_KELVIN = 273.15


class CD74HC4067:
    """16:1 analog mux: the select lines (MCU outputs) route one channel to the common ADC pin."""

    def __init__(self, hw, select, common):
        self.hw = hw
        self.select = list(select)
        self.common = common
        self.raw = [ADC_MAX] * 16  # ADC code each channel presents; an empty socket reads open
        self.switches = 0  # select changes seen, for bus-traffic figures
        self._ch = None
        for n in self.select:
            hw.pin(n).listeners.append(self._route)
        self._route()

    def channel(self):
        ch = 0
        for i, n in enumerate(self.select):
            ch |= (self.hw.pin(n).value & 1) << i
        return ch

    def set_raw(self, ch, raw12):
        self.raw[ch] = raw12
        self._route()

    def _route(self, *_):
        ch = self.channel()
        if ch != self._ch:
            self.switches += 1
            self._ch = ch
        self.hw.adc_set(self.common, self.raw[ch])


def ntc_raw(temp_c, r25=10000, beta=3950, r_fixed=10000, supply_mv=3300, full_scale_mv=3300):
    """ADC code of an NTC divider (NTC to ground) at temp_c, as the board's ntc settings wire it."""
    import math
    r = r25 * math.exp(beta * (1 / (temp_c + _KELVIN) - 1 / (25 + _KELVIN)))
    return max(0, min(ADC_MAX, round(ADC_MAX * supply_mv * r / ((r + r_fixed) * full_scale_mv))))


def _addr(v):
    return int(v, 16) if isinstance(v, str) else v


_REFS = {}


def _ref(v):
    """Board-file pin reference -> (kind, a, b, invert), parsed once per reference."""
    key = v if isinstance(v, (str, int)) else (v["pin"], v.get("invert", False))
    r = _REFS.get(key)
    if r is None:
        r = _REFS[key] = _parse_ref(v)
    return r


def _parse_ref(v):
    inv = False
    if isinstance(v, dict):
        inv = v.get("invert", False)
        v = v["pin"]
    if isinstance(v, int):
        return ("gpio", v, 0, inv)
    a, b = v[1:].split(".")
    return (v[0], int(a), int(b), inv)


class BoardHardware:
    """The chip models of one board file, attached to `hw`, with the world's side of every signal."""

    def __init__(self, hw, cfg):
        self.hw = hw
        self.cfg = cfg
        self.expanders = []
        for x in cfg.get("expanders", []):
            self.expanders.append(hw.i2c_bus(x["bus"]).attach(MCP23017(_addr(x["addr"]))))
        self.muxes = []
        for m in cfg.get("muxes", []):
            self.muxes.append(hw.i2c_bus(m["bus"]).attach(TCA9548A(hw, _addr(m["addr"]), m.get("reset"))))
        self.amux = []
        for a in cfg.get("amux", []):
            self.amux.append(CD74HC4067(hw, a["select"], a["adc"]))
        self.mcp2515 = None
        can = cfg.get("mcp2515")
        if can is not None:
            from tukar_tools.shim.mcp2515_model import MCP2515Model
            self.mcp2515 = MCP2515Model(can["crystal_hz"])
            hw.spi_bus(cfg["spi"]["id"]).attach(can["cs"], self.mcp2515)
            if can.get("int") is not None:
                n = can["int"]
                hw.set_input(n, 1)
                self.mcp2515.on_int = lambda level: hw.set_input(n, level)
        ntc = cfg.get("ntc", {})
        self._ntc = dict(ntc)

    # -- the world drives inputs (logical levels: 1 = door closed, present, locked, smoke, estop) --
    def set_input(self, ref, asserted):
        kind, a, b, inv = _ref(ref)
        level = (1 if asserted else 0) ^ (1 if inv else 0)
        if kind == "gpio":
            self.hw.set_input(a, level)
        else:
            self.expanders[a].set_input(b, level)

    def output(self, ref):
        """Logical level of an output (1 = energised / on)."""
        kind, a, b, inv = _ref(ref)
        level = self.hw.output(a) if kind == "gpio" else self.expanders[a].pin_level(b)
        return level ^ (1 if inv else 0)

    def set_temp(self, ref, temp_c=None, raw=None):
        """An NTC at temp_c (or a raw ADC code: 4095 open, 0 shorted) on a slot or cabinet sensor."""
        kind, a, b, _ = _ref(ref)
        if raw is None:
            raw = ntc_raw(temp_c, **self._ntc)
        if kind == "a":
            self.amux[a].set_raw(b, raw)
        else:
            self.hw.adc_set(a, raw)

    def slot(self, i):
        return self.cfg["slots"][i]
