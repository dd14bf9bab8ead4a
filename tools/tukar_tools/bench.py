"""`make bench`: the firmware's figures, measured on MicroPython: the core's cost in the 32-bit
MicroPython VM (fuel), and the whole firmware's heap in the 32-bit unix port (bench_mpy).

Cost is wasmtime fuel (deterministic: the same code burns the same fuel every run). The cost of
N control ticks is the fuel of a run with N ticks minus the same run with 0, and the harness's
own per-tick work (refreshing the BMS timestamps) is measured alone and subtracted. Memory comes
from `gc.mem_alloc()` around each tick, in a separate run, with the collector disabled."""
import argparse
import json
import os
import pathlib
import sys

from tukar_tools import mpvm

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORLD = ROOT / "tests" / "coreworld.py"

# Builds a 12-slot cabinet in a given condition, then runs N ticks of the core alone.
_VM = """
import gc, json
gc.collect()
base = gc.mem_alloc()
from tukar.core import Core
from coreworld import Rig, Battery
gc.collect()
imported = gc.mem_alloc()
CASE = %(case)r
# identifying: the rider's pack is in, its BMS silent; the longest identify time keeps it there.
core = Core("bench-1", 12, config={"identify_timeout_s": 10} if CASE == "identifying" else None)
gc.collect()
built = gc.mem_alloc()
rig = Rig(core)
if CASE == "idle":
    for n in range(1, 7):
        rig.world.place(n, Battery("B" + str(n), soc=100))
else:
    for n in range(1, 12):
        rig.world.place(n, Battery("B" + str(n), soc=90))
rig.run(2000)
if CASE != "idle":  # a session in the phase the case names
    a = rig.cmd("start_swap", id_token="rider")
    assert a["ok"], a
    rig.run(200)
    n_in = a["slot"]
    w = rig.world
    if CASE != "swap":
        rig.run(300)  # the lock's travel
        assert w.open_door(n_in)
        w.slots[n_in - 1].bms_dead = CASE == "identifying"
        w.insert(n_in, Battery("R1", soc=10, faults=4 if CASE == "rejected" else 0))
        w.close_door(n_in)
        want = {"identifying": "identifying", "rejected": "rejected", "dispensing": "dispensing"}[CASE]
        for i in range(100):
            rig.tick()
            if core.session.phase == want:
                break
        rig.run(300)
        assert core.session.phase == want, core.session.phase
rig.events.clear()
inputs = core.slot_inputs
now = rig.now
N = %(n)d
TICK = %(tick)d


def measure(now):  # locals only: a new global name would grow the module dict mid-run
    alloc = 0
    for i in range(N):
        now = (now + 50) & 0x3FFFFFFF
        for k in range(12):  # fresh BMS data (from a BMS that speaks); lock feedback follows
            inp = inputs[k]
            if inp.bms.valid:
                inp.bms.t_ms = now
            inp.locked = core.lock_cmd[k]
        if TICK == 2:  # allocation run: gc.mem_alloc() itself is too costly for the fuel runs
            m0 = gc.mem_alloc()
            core.tick(now)
            alloc += gc.mem_alloc() - m0
        elif TICK:
            core.tick(now)
    return alloc


gc.collect()
gc.disable()
alloc = measure(now)
gc.enable()
print(json.dumps({"imported": imported - base, "built": built - imported,
                  "alloc": alloc, "charging": core.counts[2],
                  "session": core.session.phase if core.session else None,
                  "events": [e["type"] for e in core.events]}))
"""


# The cabinet's conditions measured: idle, and a swap in each of its phases ("swap" is awaiting
# the rider's pack). Identifying lasts at most identify_timeout_s (10 s here): 150 ticks of it.
CASES = ("idle", "swap", "identifying", "rejected", "dispensing")
IDENTIFY_TICKS = 150


def _measure(case, n, tick):
    res = mpvm.run(_VM % {"case": case, "n": n, "tick": tick}, extra=[WORLD])
    line = [x for x in res.stdout.splitlines() if x.startswith("{")][-1]
    return res.fuel_used, json.loads(line)


def tick_cost(case, n=200):
    """Fuel per control tick and bytes allocated per tick for one cabinet condition."""
    f0, _ = _measure(case, 0, 1)
    fn, _ = _measure(case, n, 1)
    _, info = _measure(case, n, 2)
    h0, _ = _measure(case, 0, 0)
    hn, _ = _measure(case, n, 0)
    per_tick = ((fn - f0) - (hn - h0)) / n
    return {"case": case, "fuel_per_tick": round(per_tick), "bytes_per_tick": info["alloc"] / n,
            "charging": info["charging"], "session": info["session"], "events": info["events"],
            "heap_import": info["imported"], "heap_core": info["built"]}


def reference_loop_fuel(n=1000):
    """Fuel of one iteration of `for i in range(n): s += i`, to translate fuel into device time."""
    code = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s\nf(%d)\n"
    return round((mpvm.run(code % n).fuel_used - mpvm.run(code % 0).fuel_used) / n)


PYSTONE_PER_S_240MHZ = 1700  # published ESP32 results (micropython issues #6565, #5673)


def calibration(loops=200):
    """Fuel per ESP32 millisecond: MicroPython's own perf_bench pystone in the same VM, against
    the published ESP32 figure. None when the MicroPython source tree (make micropython) is absent."""
    src = ROOT / "build" / "micropython-1.28.0" / "tests" / "perf_bench" / "misc_pystone.py"
    if not src.is_file():
        return None
    code = src.read_text() + "\nSetup()\nProc0(%d)\n"
    per_loop = (mpvm.run(code % loops, fuel=10**11).fuel_used
                - mpvm.run(code % 0, fuel=10**11).fuel_used) / loops
    at_240 = per_loop * PYSTONE_PER_S_240MHZ / 1000
    return {"fuel_per_pystone": round(per_loop), "fuel_per_ms_240mhz": round(at_240),
            "fuel_per_ms_160mhz": round(at_240 * 160 / 240)}


def add_arguments(ap):
    ap.add_argument("--ticks", type=int, default=200, help="control ticks per measurement")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--sim-seconds", type=float, default=30.0,
                    help="how long the 50-cabinet simulator scale run lasts (0: skip it)")
    ap.add_argument("--mpy-outage-s", type=float, default=600.0,
                    help="MicroPython section: the broker outage's length (default 600 s)")
    ap.add_argument("--mpy-bisect-outage-s", type=float, default=20.0,
                    help="MicroPython section: the outage's length in the heap-size bisection")
    ap.add_argument("--web-seconds", type=float, default=20.0,
                    help="how long the web console is measured under 500 cabinets (0: skip it; "
                         "needs Chromium)")
    ap.add_argument("--no-mpy", action="store_true",
                    help="skip the MicroPython section (it takes about half an hour)")
    ap.add_argument("--no-cpu", action="store_true",
                    help="skip the control tick's CPU and bus budgets (about ten minutes)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tukar bench", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args):
    from tukar_tools import bench_bus, bench_cpu, bench_mpy, bench_sim, bench_web

    rows = [tick_cost(case, args.ticks if case != "identifying" else min(args.ticks, IDENTIFY_TICKS))
            for case in CASES]
    ref = reference_loop_fuel()
    cal = calibration()
    buses = bench_bus.report()
    cpu = None if args.no_cpu else bench_cpu.measure(
        out=lambda line: print(line, file=sys.stderr) if not args.json else None)
    scale = bench_sim.measure(50, args.sim_seconds) if args.sim_seconds > 0 else None
    console = None
    if args.web_seconds > 0:
        from tukar_tools.browser import CHROMIUM
        if os.path.exists(CHROMIUM):
            console = bench_web.measure(500, 600, args.web_seconds)
        else:
            print("bench: no Chromium at %s: the web console is not measured" % CHROMIUM,
                  file=sys.stderr)
    mpy = None if args.no_mpy else bench_mpy.measure(
        args.mpy_outage_s, args.mpy_bisect_outage_s,
        out=lambda line: print(line, file=sys.stderr) if not args.json else None)
    if args.json:
        print(json.dumps({"ticks": rows, "fuel_per_loop_iteration": ref, "calibration": cal,
                          "buses": buses, "control_tick": cpu, "simulator": scale,
                          "web_console": console, "micropython": mpy}, indent=2))
        return _exit(cpu, mpy)
    print("Core of a 12-slot cabinet, MicroPython 1.27 VM (32-bit), %d ticks per case" % args.ticks)
    print("  heap after importing the core:   %6d bytes" % rows[0]["heap_import"])
    print("  heap of one Core(12 slots):      %6d bytes" % rows[0]["heap_core"])
    print("  %-34s %12s %14s" % ("case", "fuel/tick", "bytes/tick"))
    for r in rows:
        label = {"idle": "idle (6 full batteries, 6 empty)",
                 "swap": "swap awaiting, %d charging" % r["charging"],
                 "identifying": "swap identifying, %d charging" % r["charging"],
                 "rejected": "swap rejected, %d charging" % r["charging"],
                 "dispensing": "swap dispensing, %d charging" % r["charging"]}[r["case"]]
        print("  %-34s %12d %14.1f" % (label, r["fuel_per_tick"], r["bytes_per_tick"]))
    print("  reference: one iteration of `for i in range(n): s += i` = %d fuel" % ref)
    for r in rows:
        print("  %s tick = %.0f such iterations" % (r["case"], r["fuel_per_tick"] / ref))
    if cal is not None:
        print("  calibration: pystone in this VM costs %d fuel a loop; at the published %d pystones/s"
              " an ESP32 millisecond is %d k fuel at 240 MHz, %d k at 160 MHz (the stock clock)"
              % (cal["fuel_per_pystone"], PYSTONE_PER_S_240MHZ, cal["fuel_per_ms_240mhz"] // 1000,
                 cal["fuel_per_ms_160mhz"] // 1000))
        for r in rows:
            print("  %s tick = %.1f ms at 160 MHz" % (r["case"], r["fuel_per_tick"] / cal["fuel_per_ms_160mhz"]))
    print()
    bench_bus.print_report(buses)
    if cal is not None:
        print("  = %.1f ms at 160 MHz, against a 50 ms tick" % (buses["fuel_per_step"] / cal["fuel_per_ms_160mhz"]))
    if cpu is not None:
        print()
        bench_cpu.print_report(cpu, cal)
    if scale is not None:
        print()
        bench_sim.print_report(scale)
    if console is not None:
        print()
        bench_web.print_report(console)
    if mpy is not None:
        print()
        bench_mpy.print_report(mpy)
    return _exit(cpu, mpy)


def _exit(cpu, mpy=None):
    """make bench fails when the control tick exceeds one of its budgets, or a phase of the
    MicroPython run does not complete in the heap budget."""
    from tukar_tools import bench_mpy
    bad = [g["name"] for g in cpu["gates"] if not g["ok"]] if cpu is not None else []
    bad += ["heap: %s" % name for name in bench_mpy.failed_gates(mpy)]
    if bad:
        print("bench: budget exceeded: %s" % "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
