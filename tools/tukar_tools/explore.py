"""`tukar explore` (`make explore`): every reachable state of a small cabinet, breadth first, with
the safety invariants (explore_invariants.py) checked in every state and on every transition.

The unmodified core runs against an abstract world (explore_world.py): packs good, hot, cold or
faulted, doors, locks that follow or jam, smoke, the emergency stop, power cuts (the core rebuilt
from its journal, as a boot does) and every command, with time reduced to the waits that change
behaviour. A state is what the core publishes and persists and the world, with serial numbers
renamed in order of appearance and no absolute time. Each path is bounded (BOUNDS), and a state
reached again having used more of the bounds is not expanded again. The first violation of each
invariant is reported with its shortest path, written as a scenario that `tukar sim --scenario`
replays (explore_scenario.py)."""
import os
import pickle
import sys
import time

from tukar_tools import explore_invariants as inv
from tukar_tools import explore_scenario as esc
from tukar_tools.explore_world import KINDS, Seen, apply, boot, commands, world_events

# Per path: power cuts, swaps started (accepted start_swap), operator commands (accepted),
# injected faults (a forced door, a jammed lock, a pack turning hot or faulted, smoke, the
# emergency stop), operator commands and faults together, and BFS levels (0: no limit).
BOUNDS = {"power_cuts": 1, "swaps": 2, "operator": 2, "faults": 1, "disturbances": 2, "depth": 0}
_USED = 4  # bytes at the end of a state's key: what its path used of the bounds


class Result:
    def __init__(self, n, stocks, bounds):
        self.n = n
        self.stocks = stocks
        self.bounds = bounds
        self.states = 0  # cabinet states (core and world), whatever the bounds used to get there
        self.nodes = 0  # states with what their path used of the bounds: what was expanded
        self.transitions = 0
        self.depth = 0  # BFS levels: the longest of the shortest paths
        self.deepest = None
        self.violations = {}  # invariant name -> (message, path)
        self.parent = {}  # key -> (parent key, event)
        self.first = {}  # event type -> key of the first state reached by emitting it
        self.seconds = 0.0

    def path(self, k):
        """The events from a stock to the state `k`."""
        out = []
        while k is not None:
            k, ev = self.parent[k]
            out.append(ev)
        out.reverse()
        return out


def _dominated(seen_used, used):
    """A state already reached having used no more of any bound can do all this one can."""
    for u in seen_used:
        if all(a <= b for a, b in zip(u, used)):
            return True
    return False


def explore(n=3, stocks=(("good", "good", None),), bounds=None, check=True, invariants=None,
            progress=None):
    """Breadth first over every state reachable from the stocks within the bounds (BOUNDS).
    Returns a Result; the first (shortest) violation of each invariant is kept with its path."""
    bounds = dict(BOUNDS, **(bounds or {}))
    checks = invariants or (inv.STATE, inv.STEP)
    t0 = time.perf_counter()
    res = Result(n, stocks, bounds)
    parent = res.parent
    used_at = {}  # state (key without the bounds used) -> the bounds used by each path expanded
    frontier = []
    level = frontier

    def note(events, k, ev):
        """The first transition that made the core emit each event type."""
        for e in events:
            if e["type"] not in res.first:
                res.first[e["type"]] = (k, ev)

    def admit(k, pk, ev, core, w):
        base, used = k[:-_USED], tuple(k[-_USED:])
        seen_used = used_at.setdefault(base, [])
        if k in parent or _dominated(seen_used, used):
            return
        seen_used.append(used)
        parent[k] = (pk, ev)
        level.append((k, pickle.dumps((core, w), -1)))

    for stock in stocks:
        core, w, events, ok = boot(n, stock)
        seen = Seen(core, w)
        k = seen.key()
        note(events, None, ("stock", stock))
        if check:
            _check(res, checks, None, ("stock", stock), events, {"settled": ok}, seen, None)
        admit(k, None, ("stock", stock), core, w)
    res.deepest = frontier[0][0] if frontier else None
    while frontier:
        if bounds["depth"] and res.depth >= bounds["depth"]:
            break
        level = []
        for k, blob in frontier:
            core, w = pickle.loads(blob)
            before = Seen(core, w)
            fresh = True
            for ev in world_events(before, bounds) + commands(n, before.cab["mode"], w, bounds):
                if not fresh:
                    core, w = pickle.loads(blob)
                fresh = False
                events = []
                info = {}
                core2 = apply(core, w, ev, events, info)
                res.transitions += 1
                after = Seen(core2, w)
                k2 = after.key()
                ack = info.get("ack")
                if ack is not None and not ack["ok"] and not events and k2 == k:
                    fresh = True  # a refused command changed nothing: this copy is still the state
                    continue
                note(events, k, ev)
                if check:
                    _check(res, checks, before, ev, events, info, after, k)
                admit(k2, k, ev, core2, w)
        if level:
            res.depth += 1
            res.deepest = level[0][0]
            if progress:
                progress(res, len(level), time.perf_counter() - t0)
        frontier = level
    res.nodes = len(parent)
    res.states = len(used_at)
    res.seconds = time.perf_counter() - t0
    return res


def _check(res, checks, before, ev, events, info, after, k):
    """The invariants on a state reached by `ev` from the state `k` (None: a stock)."""
    state_checks, step_checks = checks
    for name, fn in state_checks:
        if name not in res.violations:
            msg = fn(after)
            if msg:
                res.violations[name] = (msg, res.path(k) + [ev])
    if before is None:
        return
    for name, fn in step_checks:
        if name not in res.violations:
            msg = fn(before, ev, events, info, after)
            if msg:
                res.violations[name] = (msg, res.path(k) + [ev])


def path_to_event(res, etype):
    """The shortest path whose last event made the core emit `etype`, or None."""
    if etype not in res.first:
        return None
    k, ev = res.first[etype]
    return res.path(k) + [ev] if ev[0] != "stock" else [ev]


# == the command line ==========================================================================
def parse_stock(text, n):
    out = []
    for word in text.split(","):
        word = word.strip()
        if word in ("", "empty", "-"):
            out.append(None)
        elif word in KINDS:
            out.append(word)
        else:
            raise ValueError("stock: %r is not empty, %s" % (word, ", ".join(KINDS)))
    if len(out) != n:
        raise ValueError("stock: %d slots named, the cabinet has %d" % (len(out), n))
    return tuple(out)


def add_arguments(p):
    p.add_argument("--slots", type=int, default=3, help="slots in the cabinet (default 3)")
    p.add_argument("--stock", help="what each slot holds at the start, comma-separated: empty, "
                                   "good, hot, cold, faulted (default: good packs and one empty slot)")
    for name, help_text in (("power-cuts", "power cuts"), ("swaps", "swaps started"),
                            ("operator", "operator commands accepted"),
                            ("faults", "injected faults"),
                            ("disturbances", "operator commands and faults together"),
                            ("depth", "events (0: no limit)")):
        p.add_argument("--" + name, type=int, default=BOUNDS[name.replace("-", "_")],
                       help="at most this many %s per path (default %%(default)s)" % help_text)
    p.add_argument("--out", default="build/explore",
                   help="where violations are written as scenarios (default build/explore)")
    p.add_argument("--path-to", metavar="EVENT", action="append", default=[],
                   help="also write the shortest path to the first EVENT (e.g. SwapCompleted) "
                        "as a scenario")
    p.add_argument("--verbose", action="store_true", help="a line per BFS level")


def bounds_text(b):
    return ("power cuts %d, swaps %d, operator commands %d, faults %d, operator commands + faults "
            "%d, depth %s" % (b["power_cuts"], b["swaps"], b["operator"], b["faults"],
                              b["disturbances"], b["depth"] or "unbounded"))


def run(args):
    n = args.slots
    if not 1 <= n <= 6:
        print("tukar explore: --slots must be 1..6", file=sys.stderr)
        return 2
    try:
        stock = parse_stock(args.stock or ",".join(["good"] * (n - 1) + ["empty"]), n)
    except ValueError as e:
        print("tukar explore: %s" % e, file=sys.stderr)
        return 2
    bounds = {k: getattr(args, k) for k in BOUNDS}

    def progress(res, frontier, seconds):
        print("  level %d: %d states, frontier %d, %d transitions, %.1f s"
              % (res.depth, len(res.parent), frontier, res.transitions, seconds), flush=True)

    print("tukar explore: %d slots, stock %s" % (n, ",".join(k or "empty" for k in stock)))
    print("bounds per path: %s" % bounds_text(bounds), flush=True)
    res = explore(n, (stock,), bounds, progress=progress if args.verbose else None)
    print("states %d (%d with the bounds used), transitions %d, longest path %d, %.1f s"
          % (res.states, res.nodes, res.transitions, res.depth, res.seconds))
    print("longest path: %s" % " | ".join(esc.describe(e) for e in res.path(res.deepest)))
    print("invariants: %d in every state, %d on every transition"
          % (len(inv.STATE), len(inv.STEP)))
    print("events reached: %s" % ", ".join(sorted(res.first)))
    os.makedirs(args.out, exist_ok=True)
    for etype in args.path_to:
        path = path_to_event(res, etype)
        if path is None:
            print("%s: not reached" % etype)
            continue
        f = esc.write(os.path.join(args.out, "path-to-%s.json" % etype), n, path,
                      "explore: shortest path to %s" % etype,
                      "The shortest path tukar explore found to %s." % etype)
        print("%s: %d events, %s" % (etype, len(path), f))
    for name in sorted(res.violations):
        msg, path = res.violations[name]
        f = esc.write(os.path.join(args.out, name + ".json"), n, path, "explore: " + name,
                      "%s. The shortest path tukar explore found to this violation of %s "
                      "(explore_invariants.py); PASS means it reproduced." % (msg, name))
        print("VIOLATION %s: %s" % (name, msg))
        print("  path (%d events): %s" % (len(path), " | ".join(esc.describe(e) for e in path)))
        print("  scenario: %s (replay: .venv/bin/tukar sim --scenario %s)" % (f, f))
    if res.violations:
        print("%d invariant(s) violated" % len(res.violations))
        return 1
    print("no invariant violated")
    return 0
