"""`tukar`: the host side of the cabinet firmware, one command with subcommands.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`,
imported only when that subcommand runs (the simulator's dependencies never slow `tukar flash`)."""
import argparse
import importlib
import importlib.util
import sys

SUBCOMMANDS = (
    ("sim", "tukar_tools.sim", "run simulated cabinets: unmodified firmware, embedded broker, live view"),
    ("monitor", "tukar_tools.monitor", "live view of every cabinet on a broker"),
    ("web", "tukar_tools.web", "serve the operator's web console (MQTT over WebSockets, straight to the broker)"),
    ("collect", "tukar_tools.collect", "store what the fleet publishes in the fleet database (SQLite or PostgreSQL)"),
    ("ha", "tukar_tools.ha", "announce every cabinet to Home Assistant (MQTT discovery), or --remove them"),
    ("ocpp", "tukar_tools.ocpp_bridge", "bridge cabinets to a CSMS as OCPP 2.1 charging stations (WebSocket)"),
    ("cmd", "tukar_tools.cmdline", "sign and send one command, print its ack"),
    ("ota", "tukar_tools.ota", "update a cabinet's firmware over the air: serve the image, send the signed command, follow it"),
    ("world", "tukar_tools.worldcmd", "act as a simulated cabinet's physical world (sim/cmd)"),
    ("state", "tukar_tools.statecmd", "print a cabinet's current state, or one field of it"),
    ("flash", "tukar_tools.flash", "write a MicroPython image to an ESP32 (esptool)"),
    ("deploy", "tukar_tools.deploy", "compile the firmware to .mpy and copy what changed (mpremote)"),
    ("provision", "tukar_tools.provision", "write config and secrets to a device"),
    ("bench", "tukar_tools.bench", "measure the firmware under the MicroPython VM"),
    ("explore", "tukar_tools.explore", "check every reachable state of a small cabinet against the safety rules"),
    ("soak", "tukar_tools.soak", "random property runs for a time budget, and a simulated month of one cabinet"),
    ("crashpoints", "tukar_tools.crashpoints", "cut the power at every flash write and output change of a swap, in MicroPython"),
    ("report", "tukar_tools.report", "the fleet database's report for a time range: demand, availability, energy, pack health, Permen ESDM 1/2023 art. 21"),
)


def _available():
    out = []
    for name, module, help_text in SUBCOMMANDS:
        if importlib.util.find_spec(module) is not None:
            out.append((name, module, help_text))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="tukar", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    subs = _available()
    for name, module, help_text in subs:
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        ap.print_help()
        return 0 if argv else 2
    name = argv[0]
    match = [m for n, m, _ in subs if n == name]
    if not match:
        ap.error("unknown command %r (choose from %s)" % (name, ", ".join(n for n, _, _ in subs)))
    mod = importlib.import_module(match[0])
    p = argparse.ArgumentParser(prog="tukar " + name, description=dict(
        (n, h) for n, _, h in subs)[name])
    mod.add_arguments(p)
    args = p.parse_args(argv[1:])
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
