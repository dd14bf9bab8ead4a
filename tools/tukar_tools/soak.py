"""`make soak` / `tukar soak`: the core's safety properties for as long as you give them.

properties: the property tests' random world (tests/invariants.py: riders' swaps with faults,
  commands and power cuts between their steps), randomized, not derandomized, until a time budget
  or a number of control ticks (default 1,000,000) is spent. Prints the seed; on a failure, the
  shrunk example, and exits 1. `--seed S` replays a run.
month: one 12-slot cabinet for 30 simulated days, its clock started just before ticks_ms wraps
  (so it wraps 3 times), riders arriving at random, the events going through an Outbox to a broker
  that has outages. Every tick is checked against the same invariants; prints swaps completed,
  violations (exit 1 when any), the core's size at the start and the end, outbox and journal sizes,
  and the host's time per tick. Sped up: 50 ms ticks while anything moves, `--idle-tick-ms` when
  the cabinet is quiet."""
import gc
import json
import pathlib
import random
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _say(text):
    print(text, flush=True)


def _world():
    """The tests' world and invariants (this checkout's tests/)."""
    from tukar_tools import hostenv  # noqa: F401  (MicroPython's names, firmware/ on the path)

    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import invariants

    return invariants


# == (a) property runs ======================================================================
def properties(minutes=None, ticks=1_000_000, seed=None, chunk=25, out=None, shrink=True):
    """Random property examples until `minutes` pass (when given) or `ticks` control ticks have
    run. Returns {"seed", "examples", "ticks", "seconds", "failure"} (failure: None or the text,
    with the example, shrunk unless `shrink` is false: shrinking replays it many times)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out = out or _say
    inv = _world()
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    out("soak properties: seed %d (replay: tukar soak properties --seed %d)" % (seed, seed))
    count = {"ticks": 0, "examples": 0}

    def check(rig):
        count["ticks"] += 1
        inv.check_tick(rig)

    t0 = time.monotonic()
    end = t0 + minutes * 60 if minutes else None
    rnd = random.Random(seed)
    failure = None
    while failure is None:
        if end is not None and time.monotonic() >= end:
            break
        if end is None and count["ticks"] >= ticks:
            break
        for strategy in (inv.actions, inv.actions_with_cuts):

            @hseed(rnd.randrange(1 << 64))
            @settings(max_examples=chunk, derandomize=False, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), print_blob=False,
                      phases=list(Phase) if shrink else [Phase.generate])
            @given(strategy, inv.STARTS)
            def run(acts, start):
                count["examples"] += 1
                inv.run_example(acts, start, check)

            try:
                run()
            except Exception as e:  # hypothesis has shrunk it: the notes name the example
                failure = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                for note in getattr(e, "__notes__", ()):
                    if note not in failure:  # Python 3.11 prints the notes with the traceback
                        failure += note + "\n"
                break
    secs = time.monotonic() - t0
    out("soak properties: %d examples, %d control ticks, %.0f s, %s"
        % (count["examples"], count["ticks"], secs, "FAILED" if failure else "no violation"))
    if failure:
        out(failure)
    return {"seed": seed, "examples": count["examples"], "ticks": count["ticks"],
            "seconds": secs, "failure": failure}


# == (b) a month of one cabinet =============================================================
def deep_size(root):
    """Bytes of every object reachable from `root` (CPython's sizes; shared classes and
    functions not counted): how much state the core holds."""
    seen = set()
    stack = [root]
    total = 0
    skip = (type, type(deep_size), type(sys), type(len))
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


class Month:
    """One cabinet, riders at random, a broker with outages; every tick checked."""

    def __init__(self, seed, slots=12, start=None, idle_tick_ms=2000, mean_gap_s=1200,
                 outage_every_h=36, outage_h=(0.05, 8)):
        inv = self.inv = _world()
        from coreworld import Battery, Rig
        from tukar.clock import TICKS_PERIOD
        from tukar.core import Core
        from tukar.outbox import Outbox

        self.Battery = Battery
        self.rnd = random.Random(seed)
        self.seed = seed
        self.idle_tick_ms = idle_tick_ms
        self.mean_gap_ms = mean_gap_s * 1000
        self.outage_every_ms = outage_every_h * 3600_000
        self.outage_h = outage_h
        start = TICKS_PERIOD - 60_000 if start is None else start
        self.rig = Rig(Core("cab-soak", slots), start)
        for n in range(1, slots):
            self.rig.world.place(n, Battery("M-%d" % n, soc=self.rnd.randint(60, 100),
                                            cycles=self.rnd.randint(0, 300)))
        self.rig.packs = 0
        self.outbox = Outbox()
        self.sim_ms = 0
        self.ticks = 0
        self.wraps = 0
        self.tick_s = []  # the host's seconds per tick (sampled)
        self.worst_tick_s = 0.0
        self.events = 0
        self.types = {}
        self.violations = []
        self.open_sessions = set()
        self.ids = set()
        self.out_serials = set()
        self.outbox_max = 0
        self.outage_until = -1
        self.next_outage = self.rnd.expovariate(1 / self.outage_every_ms)
        self.next_rider = self.rnd.expovariate(1 / self.mean_gap_ms)

    # -- one tick, as the shell runs it: tick, events to the outbox, the broker takes them ----
    def check(self, rig):
        inv = self.inv
        self.ticks += 1
        self.sim_ms += rig.tick_ms
        try:
            inv.check_tick(rig)
        except AssertionError as e:
            self.violations.append((self.sim_ms, "tick: %r" % (e,)))
        if rig.now < rig.tick_ms:
            self.wraps += 1
        for ev in rig.events:
            self._event(ev)
        rig.events.clear()
        ob = self.outbox
        if self.sim_ms >= self.next_outage and self.outage_until < 0:
            self.outage_until = self.sim_ms + self.rnd.uniform(*self.outage_h) * 3600_000
        if 0 <= self.outage_until <= self.sim_ms:
            self.outage_until = -1
            self.next_outage = self.sim_ms + self.rnd.expovariate(1 / self.outage_every_ms)
        if self.outage_until < 0:
            while True:
                item = ob.peek()
                if item is None:
                    break
                ob.done(item)
        self.outbox_max = max(self.outbox_max, len(ob))
        rig.core.hold("outbox full" if ob.saturated else None)

    def _event(self, ev):
        self.events += 1
        t = ev["type"]
        self.types[t] = self.types.get(t, 0) + 1
        if ev["id"] in self.ids:
            self.violations.append((self.sim_ms, "event id %s twice" % ev["id"]))
        self.ids.add(ev["id"])
        if t == "SwapStarted":
            self.open_sessions.add(ev["session"])
        if t == "SwapAborted":
            k = "aborted:" + str(ev["reason"])
            self.types[k] = self.types.get(k, 0) + 1
        if t == "SwapStarted":
            pass
        elif t in ("SwapCompleted", "SwapAborted"):
            if ev["session"] not in self.open_sessions:
                self.violations.append((self.sim_ms, "session %s ended twice" % ev["session"]))
            self.open_sessions.discard(ev["session"])
        elif t == "BatteryOut":
            serial = ev["battery"]["serial"]
            if serial in self.out_serials:
                self.violations.append((self.sim_ms, "%s dispensed twice" % serial))
            self.out_serials.add(serial)
        elif t == "BatteryIn":
            self.out_serials.discard(ev["battery"]["serial"])
        self.outbox.add_event(ev)

    def _moving(self):
        core = self.rig.core
        return core.session is not None or not all(core.lock_cmd) or any(
            s.lock_pending or s.phase == 2 for s in core.slots)  # 2: slot.P_IDENTIFYING

    def _rider(self):
        inv = self.inv
        r = self.rnd
        variant = r.choice(inv.VARIANTS[:-1] + ["whole"] * 20)  # most riders do it right
        soc = r.randint(5, 35)
        pack = (soc,) + r.choice(inv.PACKS) + inv.WORN.get(soc, (95, 10))  # a few worn
        self.rig.tick_ms = 50
        core = self.rig.core
        if core.mode != "in_service":  # a hot pack's emergency: the operator resets it remotely
            inv.recover(self.rig, self.check)
            self.types["Recovered"] = self.types.get("Recovered", 0) + 1
        if core.session is None and not any(s.is_free() for s in core.slots):
            # A pack not taken (or a refused one left) fills the cabinet: the technician's round.
            full = [s.n for s in core.slots if s.inp.present and s.lock_confirmed()]
            if full:
                inv.technician(self.rig, ("visit", r.choice(full), "empty"), self.check)
                self.types["TechnicianVisit"] = self.types.get("TechnicianVisit", 0) + 1
        inv.swap(self.rig, ("swap", pack, variant, 100, [], "none"), self.check)

    def run(self, days, out=None, report_every_days=1.0):
        out = out or _say
        rig = self.rig
        total = int(days * 86400_000)
        gc.collect()
        self.size_start = deep_size(rig.core)
        self.size_day1 = None  # after the first day: the dicts and lists at their working size
        self.journal_start = len(json.dumps(rig.core.journal()))
        next_report = report_every_days * 86400_000
        t0 = time.monotonic()
        while self.sim_ms < total:
            if self.sim_ms >= self.next_rider:
                self._rider()
                self.next_rider = self.sim_ms + self.rnd.expovariate(1 / self.mean_gap_ms)
                continue
            rig.tick_ms = 50 if self._moving() else self.idle_tick_ms
            h = time.perf_counter()
            rig.tick()
            h = time.perf_counter() - h
            if h > self.worst_tick_s:
                self.worst_tick_s = h
            if self.ticks % 997 == 0:
                self.tick_s.append(h)
            self.check(rig)
            if self.sim_ms >= next_report:
                next_report += report_every_days * 86400_000
                if self.size_day1 is None:
                    self.size_day1 = deep_size(rig.core)
                out("  day %.0f: %d ticks, %d swaps completed, %d violations, outbox %d, %.0f s"
                    % (self.sim_ms / 86400_000, self.ticks, self.types.get("SwapCompleted", 0),
                       len(self.violations), len(self.outbox), time.monotonic() - t0))
        gc.collect()
        self.seconds = time.monotonic() - t0
        self.size_end = deep_size(rig.core)
        self.journal_end = len(json.dumps(rig.core.journal()))
        return self.summary()

    def summary(self):
        ts = sorted(self.tick_s) or [0.0]
        return {
            "seed": self.seed, "days": self.sim_ms / 86400_000, "ticks": self.ticks,
            "wraps": self.wraps, "swaps_started": self.types.get("SwapStarted", 0),
            "swaps_completed": self.types.get("SwapCompleted", 0),
            "swaps_aborted": self.types.get("SwapAborted", 0), "events": self.events,
            "violations": len(self.violations), "first_violations": self.violations[:5],
            "aborted": {k[8:]: v for k, v in sorted(self.types.items()) if k.startswith("aborted:")},
            "technician_visits": self.types.get("TechnicianVisit", 0),
            "emergencies_reset": self.types.get("Recovered", 0),
            "core_bytes_start": self.size_start, "core_bytes_day1": self.size_day1,
            "core_bytes_end": self.size_end,
            "journal_bytes_start": self.journal_start, "journal_bytes_end": self.journal_end,
            "outbox_end": len(self.outbox), "outbox_max": self.outbox_max,
            "outbox_dropped_routine": self.outbox.dropped_routine,
            "outbox_over_cap": self.outbox.over_cap,
            "host_ms_per_tick_median": ts[len(ts) // 2] * 1000,
            "host_ms_per_tick_p99": ts[min(len(ts) - 1, len(ts) * 99 // 100)] * 1000,
            "host_ms_per_tick_worst": self.worst_tick_s * 1000, "seconds": self.seconds,
        }


def month(days=30.0, seed=None, out=None, **kw):
    out = out or _say
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    out("soak month: seed %d, %g simulated days (replay: tukar soak month --seed %d --days %g)"
        % (seed, days, seed, days))
    m = Month(seed, **kw)
    s = m.run(days, out=out)
    out("soak month: %.2f days, %d ticks, ticks_ms wrapped %d times" % (s["days"], s["ticks"], s["wraps"]))
    out("  swaps: %d started, %d completed, %d aborted; %d events"
        % (s["swaps_started"], s["swaps_completed"], s["swaps_aborted"], s["events"]))
    out("  aborted by reason: %s; technician visits %d, emergencies reset %d"
        % (", ".join("%s %d" % kv for kv in s["aborted"].items()), s["technician_visits"],
           s["emergencies_reset"]))
    out("  invariant violations: %d %s" % (s["violations"], s["first_violations"] or ""))
    out("  core: %d bytes at the start, %s after a day, %d at the end (CPython deep size)"
        % (s["core_bytes_start"], "-" if s["core_bytes_day1"] is None else s["core_bytes_day1"],
           s["core_bytes_end"]))
    out("  journal: %d bytes at the start, %d at the end" % (s["journal_bytes_start"], s["journal_bytes_end"]))
    out("  outbox: %d items at the end, at most %d (outages included); routine events dropped %d, "
        "over the hard cap %d" % (s["outbox_end"], s["outbox_max"], s["outbox_dropped_routine"],
                                  s["outbox_over_cap"]))
    out("  host time per tick (tick + world): median %.3f ms, p99 %.3f ms, worst %.1f ms; %.0f s"
        % (s["host_ms_per_tick_median"], s["host_ms_per_tick_p99"], s["host_ms_per_tick_worst"],
           s["seconds"]))
    return s


def add_arguments(p):
    p.add_argument("what", nargs="?", choices=("all", "properties", "month"), default="all",
                   help="which soak (default all: properties, then month)")
    p.add_argument("--minutes", type=float, help="properties: run this long (default: until --ticks)")
    p.add_argument("--ticks", type=int, default=1_000_000,
                   help="properties: control ticks to cover (default 1,000,000)")
    p.add_argument("--days", type=float, default=30.0, help="month: simulated days (default 30)")
    p.add_argument("--idle-tick-ms", type=int, default=2000,
                   help="month: tick while nothing moves (default 2000, the BMS freshness limit; 50 while anything does)")
    p.add_argument("--seed", type=int, help="replay a run (printed at its start)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")


def run(args):
    res = {}
    ok = True
    if args.what in ("all", "properties"):
        res["properties"] = p = properties(args.minutes, args.ticks, args.seed)
        ok = ok and p["failure"] is None
    if args.what in ("all", "month"):
        res["month"] = m = month(args.days, args.seed, idle_tick_ms=args.idle_tick_ms)
        ok = ok and m["violations"] == 0
    if args.json:
        print(json.dumps(res, default=str))
    return 0 if ok else 1


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="tukar soak", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
