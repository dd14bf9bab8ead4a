"""Wiring table of a board file, as Markdown: what goes to which pin, for the person with the crimper.

    python -m tukar_tools.wiring boards/tukar-12-wroom/board.json > wiring.md
"""
import json
import sys


def _addr(v):
    return int(v, 16) if isinstance(v, str) else v


def _pin_name(pin):
    return ("GPA%d" if pin < 8 else "GPB%d") % (pin % 8)


def describe(cfg, ref):
    """Human description of a pin reference, and whether it is active low."""
    inv = False
    if isinstance(ref, dict):
        inv = ref.get("invert", False)
        ref = ref["pin"]
    if isinstance(ref, int):
        return "GPIO%d" % ref, inv
    kind = ref[0]
    a, b = (int(x) for x in ref[1:].split("."))
    if kind == "x":
        x = cfg["expanders"][a]
        return "MCP23017 #%d (0x%02X, I2C%d) %s" % (a, _addr(x["addr"]), x["bus"], _pin_name(b)), inv
    m = cfg["amux"][a]
    return "CD74HC4067 #%d channel %d -> GPIO%d (ADC1)" % (a, b, m["adc"]), inv


def rows(cfg):
    out = []
    for b in cfg["i2c"]:
        out.append(("I2C%d (%s)" % (b["id"], b.get("use", "")), "bus",
                    "SCL GPIO%d, SDA GPIO%d, %d kHz" % (b["scl"], b["sda"], b["freq"] // 1000), ""))
    spi = cfg.get("spi")
    if spi:
        out.append(("SPI%d" % spi["id"], "bus", "SCK GPIO%d, MOSI GPIO%d, MISO GPIO%d, %d MHz" % (
            spi["sck"], spi["mosi"], spi["miso"], spi["baudrate"] // 1000000), ""))
    can = cfg.get("mcp2515")
    if can:
        irq = ", INT GPIO%d" % can["int"] if can.get("int") is not None else ""
        out.append(("MCP2515", "chip", "CS GPIO%d%s, %d MHz crystal, %d kbit/s" % (
            can["cs"], irq, can["crystal_hz"] // 1000000, can["bitrate"] // 1000), ""))
    for i, x in enumerate(cfg.get("expanders", [])):
        out.append(("MCP23017 #%d" % i, "chip", "I2C%d address 0x%02X" % (x["bus"], _addr(x["addr"])), ""))
    for i, m in enumerate(cfg.get("muxes", [])):
        rst = ", RESET GPIO%d" % m["reset"] if m.get("reset") is not None else ""
        out.append(("TCA9548A #%d" % i, "chip", "I2C%d address 0x%02X%s" % (m["bus"], _addr(m["addr"]), rst), ""))
    for i, a in enumerate(cfg.get("amux", [])):
        out.append(("CD74HC4067 #%d" % i, "chip", "common GPIO%d, S0..S3 GPIO%s" % (
            a["adc"], "/".join(str(s) for s in a["select"])), ""))
    for i, s in enumerate(cfg["slots"]):
        n = i + 1  # slots are 1-based on the cabinet and in MQTT
        for key, label, direction in (("door", "door switch", "in"), ("presence", "presence switch", "in"),
                                      ("lock", "lock solenoid", "out"), ("lock_feedback", "lock feedback", "in"),
                                      ("temp", "NTC", "analog")):
            where, inv = describe(cfg, s[key])
            out.append(("slot %d %s" % (n, label), direction, where, "active low" if inv else ""))
        c = s["charger"]
        if "enable" in c:
            where, inv = describe(cfg, c["enable"])
            out.append(("slot %d charger enable" % n, "out", where, "active low" if inv else ""))
        if c["kind"] == "can":
            out.append(("slot %d charger" % n, "CAN", "node %d" % c["node"], ""))
        bat = s["battery"]
        if "sbs" in bat:
            m = cfg["muxes"][bat["sbs"]["mux"]]
            out.append(("slot %d battery SMBus" % n, "I2C", "TCA9548A #%d (0x%02X) channel %d, battery 0x0B" % (
                bat["sbs"]["mux"], _addr(m["addr"]), bat["sbs"]["channel"]), ""))
        if "can" in bat:
            out.append(("slot %d battery CAN" % n, "CAN", "node %d" % bat["can"]["node"], ""))
        out.append(("slot %d current limit" % n, "", "%.1f A" % (s["current_limit_ma"] / 1000), ""))
    for key, label, direction in (("smoke", "smoke detector", "in"), ("estop", "emergency stop", "in"),
                                  ("fan", "fan", "out"), ("alarm", "alarm", "out"),
                                  ("temp", "cabinet NTC", "analog")):
        where, inv = describe(cfg, cfg["cabinet"][key])
        out.append((label, direction, where, "active low" if inv else ""))
    return out


def markdown(cfg):
    lines = ["# Wiring of %s (%s, %d slots)" % (cfg["board"], cfg["chip"], cfg["slot_count"]), "",
             "| Signal | Direction | Connection | Note |", "|---|---|---|---|"]
    for r in rows(cfg):
        lines.append("| %s | %s | %s | %s |" % r)
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tukar_tools.wiring BOARD_JSON", file=sys.stderr)
        return 2
    from tukar_tools import hostenv  # noqa: F401  (firmware/ on the path)
    from tukar.boardfile import BoardError, load  # the device's own checks, field by field
    try:
        cfg = load(argv[0])
    except (OSError, BoardError) as e:
        print("wiring: %s" % e, file=sys.stderr)
        return 2
    sys.stdout.write(markdown(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
