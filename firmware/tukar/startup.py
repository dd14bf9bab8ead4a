# The boot's part of tukar.device, in the order the safety rules ask: outputs safe (rule 9) before
# the config is even read; then the maintenance escape, before the watchdog (which nothing can stop
# once it runs); then config and secrets, the watchdog, Wi-Fi and time, and the application. Only
# the boot runs it: tukar.device unloads it once the application is built.
import json
import os

from tukar.device import (CRASH_FILE, CRASH_MAX, ESCAPE_FILE, RESET_FILE, STATE_DIR, Cabinet, Setup,
                          _say)

BOARD_FILE = "board.json"
CONFIG_FILE = "config.json"
SECRETS_FILE = "secrets.json"
CA_FILE = "ca.pem"
PROFILES_DIR = "profiles"
WDT_DEFAULT_MS = 5000
WDT_MIN_MS = 2000  # the supervisor feeds once a second: less would bite a healthy loop
# The heap is collected after every GC_EVERY bytes allocated, not only when it is full: garbage
# then never lies between the long-lived objects built after it, which first-fit allocation
# otherwise scatters over the whole heap (after the boot, the largest free block was 2.6 KB of
# 17 KB free; collected every 4 KB, 16 KB of it are one block).
GC_EVERY = 4096


# machine.reset_cause() -> the Boot event's reason. The ESP32 port reports a brown-out and the EN
# button as PWRON_RESET, and both machine.reset() and a panic as HARD_RESET: the note the firmware
# writes before it resets tells them apart ("reboot", "update" or "crash"; no note: "panic").
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
        return "reboot" if note == "command" else "update" if note == "ota" else "crash"
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


def boot(machine, root="", network=None, ntptime=None, app_class=None, cycle_class=None,
         client_class=None, net_class=None, esp32=None):
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
                        info_extra=report, esp32=esp32)
    except Exception as e:
        return Cabinet(board, setup, None, None, e)  # finish() records it and resets
    # Armed only now: construction (imports, the journal, the board) may take longer than the
    # shortest timeout, and an armed watchdog cannot be stopped, so a slow boot would reset forever.
    # Until here the outputs are safe and nothing moves.
    app.wdt = machine.WDT(timeout=setup.wdt_ms)
    return Cabinet(board, setup, app.wdt, net, app)
