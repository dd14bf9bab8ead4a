# The device's start-up, in the order the safety rules ask: outputs safe (rule 9) before the config
# is even read; then the maintenance escape, before the watchdog (which nothing can stop once it
# runs); then config and secrets, the watchdog, Wi-Fi and time, and the application. A crash is
# recorded to flash for the next boot's `info`. Whenever the application ends, the outputs are made
# safe and the board resets. main.py passes `machine` in: only entry points import it.
import json
import os
import sys

BOARD_FILE = "board.json"
CONFIG_FILE = "config.json"
SECRETS_FILE = "secrets.json"
CA_FILE = "ca.pem"
ESCAPE_FILE = "maintenance"  # present: stay in the REPL, outputs safe, no watchdog
CRASH_FILE = "crash.json"
STATE_DIR = "state"
PROFILES_DIR = "profiles"
CRASH_MAX = 1024  # characters of traceback kept: the tail, where the exception is named
WDT_DEFAULT_MS = 5000
WDT_MIN_MS = 2000  # the supervisor feeds once a second: less would bite a healthy loop
# The heap is collected after every GC_EVERY bytes allocated, not only when it is full: garbage
# then never lies between the long-lived objects built after it, which first-fit allocation
# otherwise scatters over the whole heap (after the boot, the largest free block was 2.6 KB of
# 17 KB free; collected every 4 KB, 16 KB of it are one block).
GC_EVERY = 4096

# Modules of the tukar package only the boot uses. Once the application is built nothing refers to
# them, and unload() lets their function and class objects go (frozen code takes no heap, but
# the objects an import creates do).
BOOT_ONLY = ("boardfile", "profilefile", "cancompile")

RESET_FILE = "reset.json"  # why the firmware itself reset the board; read (and removed) at boot

# machine.reset_cause() -> the Boot event's reason. The ESP32 port reports a brown-out and the EN
# button as PWRON_RESET, and both machine.reset() and a panic as HARD_RESET: the note the firmware
# writes before it resets tells them apart ("reboot" or "crash"; no note: "panic").
# BROWNOUT_RESET exists on other ports only.
_CAUSES = (("PWRON_RESET", "power_on"), ("WDT_RESET", "watchdog"), ("SOFT_RESET", "soft"),
           ("BROWNOUT_RESET", "brownout"), ("DEEPSLEEP_RESET", "deep_sleep"))


class SetupError(ValueError):
    pass


def boot_reason(machine, root=""):
    """The Boot event's reason. Takes (removes) the note of the last reset the firmware made, so
    a note never outlives the boot it was written for (a power cut may come between)."""
    note = _take_reset_note(root)
    cause = machine.reset_cause()
    if getattr(machine, "HARD_RESET", None) == cause:
        if note is None:
            return "panic"  # nobody in Python asked for it: a fatal error below the interpreter
        return "reboot" if note == "command" else "crash"
    for name, reason in _CAUSES:
        if getattr(machine, name, None) == cause:
            return reason
    return "unknown"


def _take_reset_note(root):
    try:
        with open(root + RESET_FILE) as f:
            why = json.load(f).get("why")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        os.remove(root + RESET_FILE)
    except OSError:
        pass
    return why


def note_reset(root, why):
    """Written just before the firmware resets the board; never raises."""
    try:
        with open(root + RESET_FILE, "w") as f:
            json.dump({"why": why}, f)
    except OSError:
        pass


def unload(names=BOOT_ONLY):
    """Forget the modules `names` of the tukar package (MicroPython only: under CPython, tests and
    tools hold their classes and expect them to stay the same objects)."""
    if sys.implementation.name != "micropython":
        return
    pkg = sys.modules.get("tukar")
    for name in names:
        if sys.modules.pop("tukar." + name, None) is not None and pkg is not None:
            try:
                delattr(pkg, name)
            except AttributeError:
                pass


def safe_board(machine, root=""):
    """Rule 9: the board built from its file and every output driven safe. Raises BoardError/OSError."""
    from tukar.board import Board
    from tukar.boardfile import load
    board = Board(load(root + BOARD_FILE), machine)
    board.safe_outputs()
    return board


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def escape_requested(root=""):
    return _exists(root + ESCAPE_FILE)


def _json(path, required=True):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        if required:
            raise SetupError("%s: missing (run `tukar provision`)" % path)
        return {}
    except ValueError as e:
        raise SetupError("%s: not JSON (%s)" % (path, e))


def _unhex(text, what):
    from binascii import unhexlify
    try:
        return unhexlify(text)
    except (ValueError, TypeError):
        raise SetupError("%s: hex string required" % what)


class Setup:
    """What config.json, secrets.json and ca.pem say, in the shapes App, Net and WDT take."""

    def __init__(self, app_cfg, key, wifi_ssid, wifi_password, ntp, wdt_ms):
        self.app_cfg = app_cfg
        self.key = key
        self.wifi_ssid = wifi_ssid
        self.wifi_password = wifi_password
        self.ntp = ntp
        self.wdt_ms = wdt_ms


def load_setup(root, slots):
    """Read the provisioned files; SetupError names the file and the field."""
    cfg = _json(root + CONFIG_FILE)
    sec = _json(root + SECRETS_FILE)
    if not isinstance(cfg, dict) or not isinstance(sec, dict):
        raise SetupError("config.json and secrets.json: JSON objects required")
    cid = cfg.get("id")
    if not isinstance(cid, str) or not cid:
        raise SetupError("config.json id: cabinet id required")
    n = cfg.get("slots", slots)
    if n != slots:
        raise SetupError("config.json slots: %r, but the board file has %d" % (n, slots))
    mqtt = dict(cfg.get("mqtt") or {})
    if not mqtt.get("host"):
        raise SetupError("config.json mqtt.host: broker host required")
    mqtt["id"] = cid
    if sec.get("mqtt_password"):
        mqtt["password"] = sec["mqtt_password"]
    if mqtt.get("ssl") and _exists(root + CA_FILE):
        with open(root + CA_FILE, "rb") as f:
            mqtt["ca"] = f.read()  # pinned CA, PEM
    key = sec.get("key")
    if not isinstance(key, str) or len(key) < 32:
        raise SetupError("secrets.json key: the cabinet's HMAC key in hex (at least 16 bytes) required")
    wifi = cfg.get("wifi") or {}
    if not wifi.get("ssid"):
        raise SetupError("config.json wifi.ssid: network name required")
    wdt_ms = cfg.get("wdt_ms", WDT_DEFAULT_MS)
    if isinstance(wdt_ms, bool) or not isinstance(wdt_ms, int) or wdt_ms < WDT_MIN_MS:
        raise SetupError("config.json wdt_ms: an integer of at least %d required" % WDT_MIN_MS)
    app_cfg = {"id": cid, "slots": slots, "mqtt": mqtt}
    if cfg.get("core"):
        app_cfg["core"] = cfg["core"]
    return Setup(app_cfg, _unhex(key, "secrets.json key"), wifi["ssid"],
                 sec.get("wifi_password") or "", cfg.get("ntp") or {}, wdt_ms)


# -- the crash record ----------------------------------------------------------------------------
def trace_text(e):
    """The traceback as text, also printed on the console. Out of memory, the exception's own
    line is all there is room for: a crash record must not fail the way the crash did."""
    import gc
    gc.collect()
    try:
        import io
        buf = io.StringIO()
        pe = getattr(sys, "print_exception", None)
        if pe is not None:
            pe(e, buf)
        else:  # CPython
            buf.write("%s: %s\n" % (type(e).__name__, e))  # type: ignore[attr-defined]
        text = buf.getvalue()  # type: ignore[attr-defined]
    except MemoryError:
        text = "%s: %s\n" % (type(e).__name__, e)
    print(text, end="")
    return text


def record_crash(root, text, boot=None):
    """Write {"boot", "trace"} (the trace's last CRASH_MAX characters) atomically; never raises."""
    path = root + CRASH_FILE
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"boot": boot, "trace": text[-CRASH_MAX:]}, f)
        os.rename(path + ".tmp", path)
        return True
    except OSError:
        return False


def last_crash(root=""):
    """The last crash record, kept until the next crash replaces it; None when there is none."""
    try:
        rec = _json(root + CRASH_FILE, required=False)
    except SetupError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("trace"), str):
        return None
    return {"boot": rec.get("boot") if isinstance(rec.get("boot"), int) else None,
            "trace": rec["trace"][-CRASH_MAX:]}


# -- the run -------------------------------------------------------------------------------------
async def serve(app, net):
    """The application and the network task, until the application ends; returns its reason."""
    import asyncio
    task = asyncio.create_task(net.run())
    try:
        return await app.run()
    finally:
        task.cancel()


def _say(msg):
    print("tukar: " + msg)


class Cabinet:
    """What boot() built: the board (outputs already safe), the setup, the watchdog, the network
    and the application."""

    def __init__(self, board, setup, wdt, net, app):
        self.board = board
        self.setup = setup
        self.wdt = wdt
        self.net = net
        self.app = app


def boot(machine, root="", network=None, ntptime=None, app_class=None, cycle_class=None,
         client_class=None, net_class=None):
    """Everything up to the running application, in rule 9's order, the watchdog armed last.
    Returns a Cabinet, or the reason to stay in the REPL: "no_board", "escape" or "no_setup".
    A construction that raised is in Cabinet.app (finish() records it and resets)."""
    import gc
    threshold = getattr(gc, "threshold", None)  # MicroPython's; CPython has no such call
    if threshold is not None:
        threshold(GC_EVERY)
    try:
        board = safe_board(machine, root)
    except MemoryError:
        raise  # not the board file's fault: the traceback names it (the outputs are as below)
    except Exception as e:  # BoardError, OSError: the hardware's pull-downs keep outputs safe
        _say("board file %s: %s. Outputs are left to the board's pull resistors (chargers off, locks "
             "locked). Staying in the REPL." % (root + BOARD_FILE, e))
        return "no_board"
    if escape_requested(root):
        _say("maintenance escape: %s exists. Outputs safe, no watchdog, staying in the REPL. "
             "`mpremote rm :%s + reset` starts the cabinet." % (root + ESCAPE_FILE, ESCAPE_FILE))
        return "escape"
    reason = boot_reason(machine, root)
    try:
        setup = load_setup(root, board.slot_count)
        from tukar.profile import load_dir
        profiles = load_dir(root + PROFILES_DIR, True) if _exists(root + PROFILES_DIR) else {}
    except (SetupError, ValueError) as e:
        _say("%s. Outputs safe, staying in the REPL." % e)
        return "no_setup"
    crash = last_crash(root)
    report: dict = {"rssi": None}  # the app's info_extra: Net keeps "rssi" current for telemetry
    if crash is not None:
        report["last_crash"] = crash
    try:
        if app_class is None:
            from tukar.app import App as app_class  # type: ignore[no-redef]
        if cycle_class is None:
            from tukar.cycle import ControlCycle as cycle_class  # type: ignore[no-redef]
        if client_class is None:
            from umqtt.simple import MQTTClient as client_class  # type: ignore[no-redef]
        if net_class is None:
            from tukar.net import Net as net_class  # type: ignore[no-redef]
        ntp = setup.ntp
        net = net_class(setup.wifi_ssid, setup.wifi_password, network=network, ntptime=ntptime,
                        report=report, ntp_host=ntp.get("host"), resync_s=ntp.get("resync_s", 21600),
                        hostname=setup.app_cfg["id"])
        app = app_class(setup.app_cfg, board, cycle_class, client_class, root + STATE_DIR, setup.key,
                        profiles, boot_reason=reason, wall=net.wall, wdt=None, board_name=board.name,
                        info_extra=report)
    except Exception as e:
        return Cabinet(board, setup, None, None, e)  # finish() records it and resets
    unload()
    # Armed only now: construction (imports, the journal, the board) may take longer than the
    # shortest timeout, and an armed watchdog cannot be stopped, so a slow boot would reset forever.
    # Until here the outputs are safe and nothing moves.
    app.wdt = machine.WDT(timeout=setup.wdt_ms)
    return Cabinet(board, setup, app.wdt, net, app)


def finish(machine, root, cab, why, exc=None):
    """The end of every run: a crash recorded, outputs safe, the board reset. Returns `why`."""
    app = cab.app if not isinstance(cab.app, Exception) else None
    if exc is not None:
        record_crash(root, trace_text(exc), app.core.boot if app is not None else None)
    elif why == "crash" and app is not None:  # three task crashes within a minute: App.faults says which
        record_crash(root, "tasks: %r" % (app.faults[-3:],), app.core.boot)
    try:
        cab.board.safe_outputs()
    finally:
        _say("reset (%s)" % why)
        note_reset(root, why)
        machine.reset()
    return why


def _interrupted(cab):
    cab.board.safe_outputs()
    _say("interrupted: outputs safe. The watchdog resets the board within %d ms; to stay in the "
         "REPL, create :%s and reset." % (cab.setup.wdt_ms, ESCAPE_FILE))
    return "interrupted"


async def main(machine, root="", run=None, **parts):
    """Boot the cabinet and run it in the running event loop: what start() does, for a host that
    already has one (the simulator). `run(app, net)`, when given, runs the application instead
    (tests). Same returns as start()."""
    cab = boot(machine, root, **parts)
    if isinstance(cab, str):
        return cab
    if isinstance(cab.app, Exception):
        return finish(machine, root, cab, "crash", cab.app)
    try:
        why = await serve(cab.app, cab.net) if run is None else run(cab.app, cab.net)
    except KeyboardInterrupt:
        return _interrupted(cab)
    except Exception as e:
        return finish(machine, root, cab, "crash", e)
    return finish(machine, root, cab, why)


def start(machine, root="", **parts):
    """Boot the cabinet (main.py). Returns (without resetting) only when it must stay in the REPL:
    "no_board", "escape", "no_setup" or "interrupted"; otherwise it ends in machine.reset()."""
    import asyncio
    return asyncio.run(main(machine, root, **parts))
