# The device's start-up and its end: main.py calls start(), which boots the cabinet (tukar.startup,
# unloaded once the application is built) and runs it. A crash is recorded to flash for the next
# boot's `info`. Whenever the application ends, the outputs are made safe and the board resets.
# main.py passes `machine` in: only entry points import it.
import json
import os
import sys

ESCAPE_FILE = "maintenance"  # present: stay in the REPL, outputs safe, no watchdog
CRASH_FILE = "crash.json"
STATE_DIR = "state"
CRASH_MAX = 1024  # characters of traceback kept: the tail, where the exception is named

# Modules of the tukar package only the boot uses. Once the application is built nothing refers to
# them, and unload() lets their function and class objects go (frozen code takes no heap, but
# the objects an import creates do). A class whose instances outlive the boot (Setup, Cabinet)
# stays out of them: its methods would keep the whole module.
BOOT_ONLY = ("startup", "boardfile", "profilefile", "cancompile")

RESET_FILE = "reset.json"  # why the firmware itself reset the board; read (and removed) at boot


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


class Setup:
    """What config.json, secrets.json and ca.pem say, in the shapes App, Net and WDT take."""

    def __init__(self, app_cfg, key, wifi_ssid, wifi_password, ntp, wdt_ms):
        self.app_cfg = app_cfg
        self.key = key
        self.wifi_ssid = wifi_ssid
        self.wifi_password = wifi_password
        self.ntp = ntp
        self.wdt_ms = wdt_ms


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


def _boot(machine, root, parts):
    from tukar.startup import boot
    return boot(machine, root, **parts)  # no reference to tukar.startup outlives this call


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
    cab = _boot(machine, root, parts)
    unload()
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
