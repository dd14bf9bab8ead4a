"""`make bench`, MicroPython section: the firmware frozen in the 32-bit unix port (the production
freeze), one 12-slot cabinet (`tukar sim --runtime micropython`) on a loopback Mosquitto.

For each phase, boot, a swap, a broker outage with the outbox at its cap followed by the
reconnection and the drain, and a firmware update (a small image downloaded over HTTP into the next
OTA partition, the reset into it and its self-test, until OtaApplied), it reports the GC heap's
high-water mark and the smallest largest free block. A probe runs every PROBE_S in the firmware
process: gc.collect(), then gc.mem_alloc() (live data) and micropython.mem_info()'s largest free
block. Then, by bisection, the smallest
`-X heapsize` with which each phase completes: its expectations met, no MemoryError printed, no
crash or watchdog reset.

The budget (issue 10): every phase completes with `-X heapsize=64K` (HEAP_BUDGET_K), the update
with 68K (HEAP_OTA_BUDGET_K). A phase whose smallest heap is above its budget fails the gate, and
`make bench` (and this module alone) exits 1. Without bisection, each phase is attempted at its
budget instead; either way, when the phases fit with the short outage of the bisection, the whole
run up to the outage is attempted once more at 64K with the full outage. `make test` holds every
phase to HEAP_HELD_K (the update to HEAP_OTA_HELD_K), what the firmware fits now, so a regression
fails there at once (tests/test_heap_budget.py).

    python -m tukar_tools.bench_mpy [--outage-s 600] [--bisect-outage-s 20] [--json]
    python -m tukar_tools.bench_mpy --boot-steps   # where the heap goes, part by part
"""
import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time

from tukar_tools import broker, hostenv, sim  # noqa: F401  (hostenv: the shim on the path)

import hosttime  # noqa: E402
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner, ScenarioFailed
from tukar_tools.sign import parse_key

PROBE_S = 0.5
PHASES = ("boot", "swap", "outage", "ota")
FILL = 11  # every slot but one holds a pack: a swap has its empty slot
CHARGING = FILL - 1  # all but the last charge; the last, full, is the one a swap hands out
CAP = 64  # the outbox's capacity_events: saturated at this many waiting events
OTA_IMAGE = 65536  # bytes of the simulated image the ota phase downloads (the heap does not grow
# with it: one buffer of tukar.ota.CHUNK whatever the size)
HEAP_RANGE_K = (32, 512)
HEAP_STEP_K = 8
HEAP_BUDGET_K = 64  # issue 10: boot, a swap, a 10-minute outage at the cap and the drain, in 64 KB
# A firmware update (issue 14) is budgeted apart: run after the outage, at the cabinet's highest
# steady heap, its code (tukar.ota, some 2 KB once imported) and the download's buffer and socket
# do not fit the 64 K the other phases keep to; it completes at 68 K. Below that the `ota` command
# is refused (busy, "not enough free memory") or the update ends in OtaFailed: never a crash. The
# ESP32's heap grows past 64 K by itself (docs/micropython.md), so this is the margin an update
# spends, not a wall (docs/ota.md, "Heap").
HEAP_OTA_BUDGET_K = 68
# What make test holds every phase to: the firmware completes them in 64 K (the budget; bench_mpy.attempt,
# the 600 s outage included), with some 2.4 K free at its high water; where the link's thread
# allocates relative to the control loop varies run to run, so 4 K above keeps the test about the
# firmware. The update, likewise, 4 K above its own budget.
HEAP_HELD_K = 68
HEAP_OTA_HELD_K = 72


def budget_k(phase):
    """The heap, in K, in which `phase` must complete."""
    return HEAP_OTA_BUDGET_K if phase == "ota" else HEAP_BUDGET_K


def run_sim(s, script, timeout=60):
    """Run Simulation `s` on an event loop in a thread of its own while `script(s)` runs here."""
    result = {}
    ready = threading.Event()
    stop = threading.Event()

    async def main():
        until = asyncio.Event()
        task = asyncio.ensure_future(s.run(until))
        while s.loop is None:
            await asyncio.sleep(0.01)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        until.set()
        await task

    def loop():
        try:
            asyncio.run(main())
        except BaseException as e:  # reported to the caller
            result["error"] = e

    hosttime.install(hosttime.SimClock())
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    end = time.monotonic() + 30
    while not ready.wait(0.1):
        if "error" in result:
            raise result["error"]
        if time.monotonic() > end:
            raise RuntimeError("the simulator did not start within 30 s")
    try:
        return script(s)
    finally:
        stop.set()
        t.join(timeout)
        if "error" in result:
            raise result["error"]


class Prober:
    """Heap probes of one cabinet's firmware process every PROBE_S, filed under the phase now set."""

    def __init__(self, cab):
        self.cab = cab
        self.phase = None
        self.by_phase = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        fw = self.cab.fw
        while not self._stop.wait(PROBE_S):
            if self.phase is None or not fw.proc.running:
                continue
            p = fw.proc.probe(fw.server, timeout=2.0)
            if p is not None and self.phase is not None:
                self.by_phase.setdefault(self.phase, []).append(p)

    def stop(self):
        self._stop.set()
        self._t.join(5)

    def summary(self, phase):
        ps = self.by_phase.get(phase, [])
        if not ps:
            return None
        return {"probes": len(ps), "high_water": max(p[0] for p in ps),
                "min_largest_free": min(p[2] for p in ps if p[2] is not None),
                "heap": ps[0][0] + ps[0][1]}


def _call(s, fn):
    done = threading.Event()
    s.loop.call_soon_threadsafe(lambda: (fn(), done.set()))
    done.wait(5)


def _event_counter(ev):
    return int(ev["id"].rsplit("-", 1)[1])


def phases(s, upto, outage_s, prober=None, out=lambda line: None):
    """Drive the cabinet through the phases up to `upto`; returns {phase: seconds}. Raises
    ScenarioFailed when a phase's expectation is not met."""
    cab = s.cabinets[0]
    r = Runner("127.0.0.1", s.port, s.prefix, cab.id, s.key, 1.0, out=out)
    took = {}
    try:
        t0 = time.monotonic()
        if prober:
            prober.phase = "boot"
        r.step({"do": "expect_status", "value": "online", "within_s": 30})
        fw = cab.fw
        if fw.server.wdt_armed_at is not None and fw.proc.started_at is not None:
            took["to_watchdog_ms"] = round((fw.server.wdt_armed_at - fw.proc.started_at) * 1000)
        for n in range(1, FILL + 1):  # half-empty packs charge; the last is full
            _call(s, lambda n=n: cab.set_battery(n, soc=50 if n <= CHARGING else 100))
        r.step({"do": "expect_state", "match": {"charging": CHARGING, "ready": 1,
                                                "session": None}, "within_s": 30})
        took["boot"] = time.monotonic() - t0
        if upto == "boot":
            return took
        t0 = time.monotonic()
        if prober:
            prober.phase = "swap"
        for st in SWAP:
            r.step(st)
        took["swap"] = time.monotonic() - t0
        if upto == "swap":
            return took
        t0 = time.monotonic()
        if prober:
            prober.phase = "outage"
        before = max((_event_counter(e) for e in r.obs.events), default=0)
        _call(s, lambda: cab.fault("mqtt", True))
        queued = 0
        while queued < CAP + 8:  # ChargeStopped and ChargeStarted for every pack, until at the cap
            for temp in (52, 30):
                for n in range(1, CHARGING + 1):
                    _call(s, lambda n=n, temp=temp: cab.set_battery(n, temp_c=temp))
                time.sleep(2.5)  # rule 1 acts within a second; the 3 degC hysteresis is passed
                queued += CHARGING
        rest = outage_s - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
        _call(s, lambda: cab.fault("mqtt", False))
        r.step({"do": "expect_status", "value": "online", "within_s": 120})
        want = before + queued

        def drained():
            got = {_event_counter(e) for e in r.obs.events}
            return all(i in got for i in range(before + 1, want + 1)) or None
        r.wait_for(drained, 120, "every event queued in the outage")
        took["outage"] = time.monotonic() - t0
        took["outage_events"] = queued
        if upto == "outage":
            return took
        t0 = time.monotonic()
        if prober:
            prober.phase = "ota"
        update(r, cab)
        took["ota"] = time.monotonic() - t0
        return took
    finally:
        r.obs.close()


def update(r, cab):
    """The ota phase: maintenance mode, then a whole update of a small image served from here, the
    reset into it and its self-test (tukar ota's path: docs/ota.md)."""
    import os
    import tukar
    from tukar_tools import ota
    from tukar_tools.shim import esp32 as shim_esp32
    version = tukar.FW_VERSION + ".1"  # newer than the factory image the cabinet runs
    with tempfile.TemporaryDirectory(prefix="tukar-bench-ota-") as d:
        path = os.path.join(d, "fw.bin")
        with open(path, "wb") as f:
            f.write(shim_esp32.make_image(version, cab.board_name, cab.phys.cfg["chip"],
                                          size=OTA_IMAGE))
        server = ota.ImageServer(path, host="127.0.0.1")
        try:
            r.step({"do": "cmd", "cmd": "set_mode", "args": {"mode": "maintenance"}})
            r.step({"do": "cmd", "cmd": "ota", "args": ota.manifest(
                path, version, cab.board_name, cab.phys.cfg["chip"], server.url("127.0.0.1"))})
            r.step({"do": "expect_event", "type": "OtaApplied", "match": {"version": version},
                    "within_s": 90})
        finally:
            server.close()


SWAP = (
    {"do": "cmd", "cmd": "start_swap", "args": {"id_token": "bench"}, "save": {"slot_in": "slot"}},
    {"do": "expect_slot", "slot": "$slot_in", "match": {"state": "awaiting_battery",
                                                         "lock": "unlocked"}, "within_s": 5},
    {"do": "world", "action": "insert", "slot": "$slot_in",
     "battery": {"serial": "BENCH-IN", "soc": 10, "soh": 90, "temp_c": 30}},
    {"do": "world", "action": "close_door", "slot": "$slot_in"},
    {"do": "expect_state", "match": {"session": {"phase": "dispensing"}}, "within_s": 20,
     "save": {"slot_out": "session.slot_out"}},
    {"do": "expect_slot", "slot": "$slot_out", "match": {"state": "dispensing",
                                                          "lock": "unlocked"}, "within_s": 5},
    {"do": "world", "action": "take", "slot": "$slot_out"},
    {"do": "world", "action": "close_door", "slot": "$slot_out"},
    {"do": "expect_event", "type": "SwapCompleted", "within_s": 10},
)


def attempt(port, heap, upto, outage_s, probe=False, micropython=None):
    """One fresh cabinet with `heap`, driven through the phases up to `upto`. Returns
    (ok, why, probes_by_phase, seconds_by_phase)."""
    with tempfile.TemporaryDirectory(prefix="tukar-bench-mpy-") as state:
        s = sim.Simulation("127.0.0.1", port, prefix="bmpy%d" % int(time.monotonic() * 1000 % 1e6),
                           cabinets=1, slots=12, state_dir=state, fill=FILL, runtime="micropython",
                           heap=heap, micropython=micropython, key=parse_key(SIM_KEY_HEX))
        cab = s.cabinets[0]
        box = {}

        def script(s):
            prober = Prober(cab) if probe else None
            try:
                box["took"] = phases(s, upto, outage_s, prober)
            except ScenarioFailed as e:
                box["why"] = str(e)
            finally:
                if prober:
                    prober.stop()
                    box["probes"] = {p: prober.summary(p) for p in PHASES}
        run_sim(s, script)
        memory = cab.fw.proc.memory_errors
        bad = [x for x in cab.reports]
        if memory:
            return False, "MemoryError printed %d times, first: %s" % (
                memory, " | ".join(cab.fw.proc.first_memory_error or [])), box.get("probes"), box.get("took")
        if bad:
            return False, bad[0].splitlines()[0], box.get("probes"), box.get("took")
        if "why" in box:
            return False, box["why"][:200], box.get("probes"), box.get("took")
        return True, "", box.get("probes"), box.get("took")


def _attempt(port, heap, upto, outage_s, micropython=None, out=None):
    """attempt(), once more when the harness itself failed (not the firmware)."""
    for i in range(2):
        try:
            return attempt(port, heap, upto, outage_s, micropython=micropython)[:2]
        except (RuntimeError, OSError) as e:
            if out:
                out("  %-6s -X heapsize=%s: the harness failed (%s), %s" % (
                    upto, heap, e, "again" if i == 0 else "counted as a failure"))
    return False, "harness"


def smallest_heap(port, upto, outage_s, micropython=None, out=None):
    """Bisection over -X heapsize (KB, in HEAP_STEP_K steps) for the phases up to `upto`."""
    lo, hi = HEAP_RANGE_K
    ok, why = _attempt(port, "%dK" % hi, upto, outage_s, micropython, out)
    if not ok:
        return None, why
    while hi - lo > HEAP_STEP_K:
        mid = (lo + hi) // 2 // HEAP_STEP_K * HEAP_STEP_K
        ok, why = _attempt(port, "%dK" % mid, upto, outage_s, micropython, out)
        if out:
            out("  %-6s -X heapsize=%dK: %s" % (upto, mid, "completes" if ok else "fails (%s)" % why))
        if ok:
            hi = mid
        else:
            lo = mid
    return hi, ""


def measure(outage_s=600.0, bisect_outage_s=20.0, heap="512K", bisect=True, micropython=None,
            out=None):
    b = broker.Mosquitto().start() if broker.mosquitto_path() else broker.start()
    try:
        ok, why, probes, took = attempt(b.port, heap, PHASES[-1], outage_s, probe=True,
                                        micropython=micropython)
        res = {"heap": heap, "completed": ok, "why": why, "phases": probes or {},
               "seconds": took or {}, "outage_s": outage_s, "smallest_heap_k": {},
               "bisect_outage_s": bisect_outage_s, "shim_heap": shim_heap(micropython)}
        if bisect:
            for phase in PHASES:
                k, why = smallest_heap(b.port, phase, bisect_outage_s, micropython, out)
                res["smallest_heap_k"][phase] = k
        res["gates"] = gates(b.port, res, outage_s, bisect_outage_s, micropython, out)
    finally:
        b.stop()
    return res


def gates(port, res, outage_s, bisect_outage_s, micropython=None, out=None):
    """[{"name", "heap_k", "ok", "why"}]: each phase at HEAP_BUDGET_K (from the bisection when it
    ran, else attempted there), then, when they all fit, the whole run with the full outage."""
    rows = []
    for phase in PHASES:
        if res["smallest_heap_k"]:
            k = res["smallest_heap_k"].get(phase)
            ok = k is not None and k <= budget_k(phase)
            why = "" if ok else "needs %s" % ("%d K" % k if k else "more than %d K" % HEAP_RANGE_K[1])
        else:
            ok, why = _attempt(port, "%dK" % budget_k(phase), phase, bisect_outage_s, micropython,
                               out)
        rows.append({"name": "%s (%.0f s outage)" % (phase, bisect_outage_s) if phase == "outage"
                     else phase, "heap_k": budget_k(phase), "ok": ok, "why": why})
    if all(r["ok"] for r in rows):
        ok, why = _attempt(port, "%dK" % HEAP_BUDGET_K, "outage", outage_s, micropython, out)
        rows.append({"name": "outage (%.0f s outage)" % outage_s, "heap_k": HEAP_BUDGET_K,
                     "ok": ok, "why": why})
    return rows


_SHIM_COST = """
import gc
gc.collect()
a = gc.mem_alloc()
import network, ntptime
gc.collect()
b = gc.mem_alloc()
import machine
gc.collect()
c = gc.mem_alloc()
import tukar
gc.collect()
d = gc.mem_alloc()
import esp32
gc.collect()
e = gc.mem_alloc()
esp32.Partition
gc.collect()
print(b - a, c - b, e - d, gc.mem_alloc() - e)
"""


def _answer_hello(listener):
    """Enough of mprt.HardwareServer for `machine` to import: accept its two sockets and answer
    every call with success and no data."""
    import socket
    import struct
    try:
        rpc, _ = listener.accept()
        note, _ = listener.accept()
    except OSError:
        return
    with rpc, note:
        f = rpc.makefile("rb")
        while True:
            head = f.read(2)
            if len(head) < 2:
                return
            f.read(struct.unpack("<H", head)[0])
            try:
                rpc.sendall(struct.pack("<HB", 1, 0))
            except OSError:
                return


def shim_heap(micropython=None):
    """Heap that the host's stand-ins for the ESP32's built-ins take in the firmware process
    (included in every figure above), as imported from the binary make micropython builds:
    `network` and `ntptime` frozen Python; `machine` the C module _tukarhw, whose import leaves
    the module object machine.py is imported as and builtins.open's override (the flash fault);
    `esp32` (its lookup function) and its partition model, which only an update imports."""
    import socket
    import subprocess
    from tukar_tools import mprt
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    threading.Thread(target=_answer_hello, args=(listener,), daemon=True).start()
    try:
        r = subprocess.run([str(mprt.binary(micropython)), "-c", _SHIM_COST], capture_output=True,
                           text=True, timeout=30, cwd="/",
                           env={"MICROPYPATH": ".frozen:%s" % mprt.MPSHIM,
                                "TUKAR_HW": "127.0.0.1:%d" % listener.getsockname()[1]})
    finally:
        listener.close()
    try:
        net, mach, esp, part = (int(x) for x in r.stdout.split())
    except ValueError:
        return {}
    return {"network_ntptime": net, "machine": mach, "esp32": esp, "esp32_partition": part}


# The boot's parts one at a time, as tukar.startup.boot builds them, with gc.mem_alloc() after
# gc.collect() between them: run as the cabinet's main.py, in place of the firmware's own.
_BOOT_STEPS = """
import gc
gc.collect()
def step(name, _l=[0]):
    gc.collect()
    a = gc.mem_alloc()
    print("tukar-step %d %s" % (a - _l[0], name))
    _l[0] = a
step("the interpreter and main.py")
import machine, network, ntptime
step("the host's stand-ins: machine (C), network and ntptime (frozen)")
import asyncio
from umqtt.simple import MQTTClient
step("asyncio and umqtt.simple, frozen")
from tukar import device
gc.threshold(4096)  # tukar.startup.GC_EVERY, as the boot sets it
import tukar.app, tukar.cycle, tukar.net, tukar.board, tukar.pins, tukar.charger, tukar.lock
import tukar.mcp23017, tukar.tca9548a, tukar.mcp2515, tukar.sbs, tukar.canbms, tukar.profile
import asyncio.event
step("the tukar modules the running cabinet keeps, frozen")
import tukar.startup, tukar.boardfile, tukar.profilefile, tukar.cancompile
step("the boot-only modules (unloaded after the boot, below)")
from tukar import startup
board = startup.safe_board(machine)
step("the Board")
setup = startup.load_setup("", board.slot_count)
from tukar.profile import load_dir
profiles = load_dir("profiles", True)
del load_dir
step("the setup and the profiles, compact")
from tukar.net import Net
net = Net(setup.wifi_ssid, setup.wifi_password, network=network, ntptime=ntptime, report={},
          hostname="x")
del Net
step("Net")
from tukar.core import Core
core = Core(setup.app_cfg["id"], setup.app_cfg["slots"], profiles=profiles,
            config=setup.app_cfg.get("core"))
step("the Core")
from tukar.cycle import ControlCycle
cycle = ControlCycle(board, core)
step("ControlCycle")
from tukar.store import Store
from tukar.outbox import Outbox
from tukar.link import Link
store = Store("state")
outbox = Outbox(store=store)
link = Link(setup.app_cfg["mqtt"], MQTTClient, outbox, lambda: {}, 0)
step("Store, Outbox (empty), Link")
from tukar.gate import Gate
gate = Gate(setup.key)
step("Gate")
del startup
device.unload()
step("the boot-only modules unloaded")
print("tukar-step-end")
"""


def boot_steps(micropython=None, heap="512K"):
    """[(bytes, part)]: the live heap each part of the boot adds (_BOOT_STEPS), in `heap`."""
    import os
    b = broker.Mosquitto().start() if broker.mosquitto_path() else broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tukar-bench-steps-") as state:
            s = sim.Simulation("127.0.0.1", b.port, prefix="bsteps", cabinets=1, slots=12,
                               state_dir=state, fill=FILL, runtime="micropython", heap=heap,
                               micropython=micropython, key=parse_key(SIM_KEY_HEX))
            cab = s.cabinets[0]
            with open(os.path.join(cab.flash, "main.py"), "w") as f:
                f.write(_BOOT_STEPS)
            log = os.path.join(cab.flash, "console.log")

            def script(s):
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    time.sleep(0.2)
                    if os.path.exists(log) and "tukar-step-end" in open(log).read():
                        return
            run_sim(s, script)
            rows = []
            for line in open(log).read().splitlines():
                if line.startswith("tukar-step "):
                    _, n, part = line.split(" ", 2)
                    rows.append((int(n), part))
                elif line.startswith("tukar-step-end"):
                    break
            return rows
    finally:
        b.stop()


def print_report(r, out=sys.stdout):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("MicroPython 1.28 unix port, 32-bit, GIL, firmware frozen; one 12-slot cabinet, %d packs"
      " (%d charging)" % (FILL, CHARGING))
    p("  run at -X heapsize=%s: %s" % (r["heap"], "completed" if r["completed"] else
                                       "FAILED (%s)" % r["why"]))
    p("  %-44s %12s %18s %8s" % ("phase", "high water", "min largest free", "probes"))
    labels = {"boot": "boot, %d packs identified" % FILL,
              "swap": "a swap",
              "outage": "%.0f s broker outage, outbox at its cap, drain" % r["outage_s"],
              "ota": "an update of %d KB, its reset and self-test" % (OTA_IMAGE // 1024)}
    for ph in PHASES:
        s = r["phases"].get(ph)
        if s:
            p("  %-44s %10d B %16d B %8d" % (labels[ph], s["high_water"], s["min_largest_free"],
                                             s["probes"]))
        else:
            p("  %-44s %12s" % (labels[ph], "not reached"))
    if r.get("seconds", {}).get("to_watchdog_ms") is not None:
        p("  process start to watchdog armed (imports, journal, board, app; this host's time): %d ms"
          % r["seconds"]["to_watchdog_ms"])
    if r.get("seconds", {}).get("outage_events"):
        p("  events queued in the outage: %d (the outbox saturates at %d)"
          % (r["seconds"]["outage_events"], CAP))
    if r["smallest_heap_k"]:
        p("  smallest -X heapsize that completes (%d K steps; outage phase with a %.0f s outage):"
          % (HEAP_STEP_K, r["bisect_outage_s"]))
        for ph in PHASES:
            k = r["smallest_heap_k"].get(ph)
            p("    %-8s %s" % (ph, "%d K" % k if k else "none up to %d K" % HEAP_RANGE_K[1]))
    sh = r.get("shim_heap") or {}
    p("  included above, the host's stand-ins for the ESP32's built-ins (as imported): machine (C)"
      " %s B, network and ntptime (frozen) %s B; while an update runs, esp32 (frozen) %s B and its"
      " partition model %s B" % (sh.get("machine"), sh.get("network_ntptime"), sh.get("esp32"),
                                 sh.get("esp32_partition")))
    if r.get("gates"):
        p("  budget: every phase completes with -X heapsize=%dK, the update with %dK" % (
            HEAP_BUDGET_K, HEAP_OTA_BUDGET_K))
        for g in r["gates"]:
            p("    %-32s %3d K  %s" % (g["name"], g["heap_k"],
                                      "ok" if g["ok"] else "EXCEEDED (%s)" % g["why"]))


def failed_gates(r):
    """The names of the budget's gates that failed (empty: within budget)."""
    return ["%s at %d K" % (g["name"], g["heap_k"]) for g in (r or {}).get("gates") or ()
            if not g["ok"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage-s", type=float, default=600.0)
    ap.add_argument("--bisect-outage-s", type=float, default=20.0)
    ap.add_argument("--heap", default="512K")
    ap.add_argument("--no-bisect", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--boot-steps", action="store_true",
                    help="only the live heap each part of the boot adds, in --heap")
    a = ap.parse_args(argv)
    if a.boot_steps:
        rows = boot_steps(heap=a.heap)
        for n, part in rows:
            print("  %7d B  %s" % (n, part))
        print("  %7d B  live after the boot (in the bench, the running cabinet adds its tasks, the"
              " MQTT client and what is on its way)" % sum(n for n, _ in rows))
        return 0 if rows else 1
    r = measure(a.outage_s, a.bisect_outage_s, a.heap, not a.no_bisect,
                out=lambda line: print(line, file=sys.stderr))
    print(json.dumps(r, indent=2)) if a.json else print_report(r)
    bad = failed_gates(r)
    if bad:
        print("bench_mpy: heap budget exceeded: %s" % "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
