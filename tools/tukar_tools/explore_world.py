"""The world `tukar explore` runs the unmodified core against, and its events: each slot empty or
holding a good, hot, cold or faulted pack, each door open or shut, each lock's bolt following
its command or jammed; smoke, the emergency stop, power cuts and every command. After each event
the core ticks 1 ms at a time until it is quiet (nothing published, persisted, switched or
emitted), so small steps never add up to a time-out; "wait lock" is one 500 ms tick (a lock window
of rule 8), "wait timeout" two of those and then 60 s (a session's insert or take time-out).

What the search knows of a state (Seen) is what the core publishes and persists: its outputs, its
slot and cabinet states, its journal; with the world, that is the state's identity."""
import hashlib
import json

from tukar_tools import hostenv  # noqa: F401  (MicroPython's built-in names, firmware/ on the path)
from tukar.clock import TICKS_PERIOD, wrap_add  # noqa: E402
from tukar.core import Core  # noqa: E402
from tukar.inputs import fault_bits  # noqa: E402

CABINET = "sim-1"  # the id `tukar sim` gives its first cabinet, so a scenario replays as written
KINDS = ("good", "hot", "cold", "faulted")
# kind: (temperature degC, BMS fault names). Good packs are at 95 % (dispensable, still charging).
PACKS = {"good": (25, []), "hot": (61, []), "cold": (-15, []), "faulted": (25, ["short_circuit"])}
SOC = 95
LOCK_WINDOW_MS = 500  # rule 8
TIMEOUT_MS = 60_000  # insert_timeout_s and take_timeout_s (mqtt.md defaults)
SETTLE_TICKS = 12  # a core that is not quiet after this many 1 ms ticks after an event is a finding
START_MS = TICKS_PERIOD - 30_000  # the ticks wrap inside the first long wait


class World:
    """The physical truth of one cabinet, as the simulator's world actions change it (mqtt.md)."""

    def __init__(self, n, now):
        self.n = n
        self.now = now
        self.serial: list = [None] * n
        self.kind: list = [None] * n
        self.door = [True] * n  # closed
        self.bolt = [True] * n  # locked; follows the lock command within a tick unless jammed
        self.jam = [False] * n
        self.smoke = False
        self.estop = False
        # What the path has used of each bound: power cuts, injected faults, operator commands
        # and swaps started.
        self.cuts = 0
        self.faults = 0
        self.ops = 0
        self.swaps = 0
        self.made = 0  # batteries made so far: fresh serial numbers (not part of the state)
        self.cmd = [True] * n  # each lock's command as last seen
        self.windows = [0] * n  # lock windows passed with the bolt away from its command (rule 8)

    def place(self, n, kind):
        self.made += 1
        self.serial[n - 1] = "%s%d" % (kind[0].upper(), self.made)
        self.kind[n - 1] = kind

    def copy(self):
        w = World.__new__(World)
        d = dict(self.__dict__)
        for k in ("serial", "kind", "door", "bolt", "jam", "cmd", "windows"):
            d[k] = list(d[k])
        w.__dict__ = d
        return w

    def used(self):
        return (self.cuts, self.faults, self.ops, self.swaps)

    def reachable(self, i):
        """A hand can reach into slot i: its door is open, or its bolt is in (sim: refused when
        the door is shut and locked)."""
        return not self.door[i] or not self.bolt[i]


def pack_spec(serial, kind):
    t, faults = PACKS[kind]
    spec = {"serial": serial, "soc": SOC, "soh": 95, "temp_c": t}
    if faults:
        spec["faults"] = list(faults)
    return spec


def fill(core, w):
    """The world into the core's input snapshots, as the drivers do before a tick."""
    for i in range(w.n):
        inp = core.slot_inputs[i]
        inp.door_closed = w.door[i]
        inp.present = w.serial[i] is not None
        inp.locked = w.bolt[i]
        inp.io_ok = True
        inp.sensor = 0
        b = inp.bms
        kind = w.kind[i]
        if kind is None:
            inp.temp_dc = 250
            if b.valid:
                b.clear()
            continue
        t, faults = PACKS[kind]
        inp.temp_dc = t * 10
        b.valid = True
        b.link_fault = False
        b.t_ms = w.now
        b.serial = w.serial[i]
        b.profile = "ref48v"
        b.soc_pm = SOC * 10
        b.soh_pct = 95
        b.temp_dc = t * 10
        b.voltage_mv = 42000 + (54600 - 42000) * SOC // 100
        b.current_ma = core.charge_ma[i]
        b.cycles = 10
        b.faults = fault_bits(faults)
        b.req_current_ma = -1
        b.full = False
    cab = core.cabinet
    cab.smoke = w.smoke
    cab.estop = w.estop
    cab.temp_dc = 250


def tick(core, w, dt, events):
    """One control tick dt ms after the last; True when anything moved, changed or was emitted."""
    w.now = wrap_add(w.now, dt)
    moved = False
    for i in range(w.n):
        if w.bolt[i] != core.lock_cmd[i] and not w.jam[i]:
            w.bolt[i] = core.lock_cmd[i]
            moved = True
    fill(core, w)
    core.tick(w.now)
    k = len(events)
    core.take_events(events.append)
    dirty = core.take_dirty()
    jdirty = core.take_journal()
    outs = core.take_outputs()
    return bool(moved or len(events) > k or dirty or jdirty or outs)


def settle(core, w, events):
    """Tick (1 ms apart) until the core is quiet; False when it never is."""
    for _ in range(SETTLE_TICKS):
        if not tick(core, w, 1, events):
            return True
    return False


def boot(n, stock):
    """A cabinet with `stock` (a kind or None per slot) behind shut doors, booted and settled."""
    w = World(n, START_MS)
    for i, kind in enumerate(stock):
        if kind is not None:
            w.place(i + 1, kind)
    core = Core(CABINET, n, now=w.now)
    events = []
    ok = settle(core, w, events)
    return core, w, events, ok


def power_cut(core, w):
    """The firmware's memory is lost; the journal survives (the shell writes it atomically).
    Fail-secure bolts fall locked unless jammed; doors and batteries stay as they are."""
    journal = json.loads(json.dumps(core.journal()))
    for i in range(w.n):
        if not w.jam[i]:
            w.bolt[i] = True
    w.cuts += 1
    core = Core(CABINET, w.n, journal=journal, boot_reason="power_loss", now=w.now)
    for i in range(w.n):  # a fresh lock command each: rule 8's windows count from the boot
        w.cmd[i] = core.lock_cmd[i]
        w.windows[i] = 0
    return core


# == events ====================================================================================
# ("wait", "lock" | "timeout"), ("insert", n, kind), ("take", n), ("open", n), ("close", n),
# ("force", n), ("jam", n, on), ("set", n, kind), ("smoke", on), ("estop", on), ("power_cycle",),
# ("cmd", name, ((key, value), ...)).
MODES = ("in_service", "maintenance", "out_of_service")


OPERATOR = ("set_mode", "open_slot", "quarantine", "release", "reset_emergency")


def commands(n, mode, w, bounds):
    """The commands worth sending: the rider's while swaps are left, the operator's while
    operator commands are left."""
    out: list = [("cmd", "cancel_swap", ())]
    if w.swaps < bounds["swaps"]:
        out.insert(0, ("cmd", "start_swap", (("id_token", "rider"),)))
    if w.ops >= bounds["operator"] or w.faults + w.ops >= bounds["disturbances"]:
        return out
    out += [("cmd", "set_mode", (("mode", m),)) for m in MODES if m != mode]
    for k in range(1, n + 1):
        out.append(("cmd", "open_slot", (("slot", k),)))
        out.append(("cmd", "quarantine", (("slot", k), ("reason", "operator"))))
        out.append(("cmd", "release", (("slot", k),)))
    out.append(("cmd", "reset_emergency", ()))
    return out


def world_events(seen, bounds):
    """What the world can do in a settled state, within the bounds."""
    w = seen.world
    out = []
    if any(w.bolt[i] != seen.lock_cmd[i] for i in range(w.n)):
        out.append(("wait", "lock"))
    if seen.cab["session"] is not None:
        out.append(("wait", "timeout"))
    may_fault = w.faults < bounds["faults"] and w.faults + w.ops < bounds["disturbances"]
    for i in range(w.n):
        n = i + 1
        if w.serial[i] is None:
            if w.reachable(i):
                out += [("insert", n, kind) for kind in KINDS]
        elif w.reachable(i):
            out.append(("take", n))
        if w.door[i]:
            if not w.bolt[i]:
                out.append(("open", n))
            elif may_fault:
                out.append(("force", n))
        else:
            out.append(("close", n))
        if w.jam[i]:
            out.append(("jam", n, False))
        elif may_fault:
            out.append(("jam", n, True))
        if w.kind[i] == "good" and may_fault:  # a pack in a slot overheats or flags a fault
            out += [("set", n, "hot"), ("set", n, "faulted")]
    for name in ("smoke", "estop"):
        on = getattr(w, name)
        if on or may_fault:
            out.append((name, not on))
    if w.cuts < bounds["power_cuts"]:
        out.append(("power_cycle",))
    return out


def apply(core, w, ev, events, info):
    """Perform one event and let the core settle; returns the (possibly new) core. `info` gets
    what the transition invariants and the scenario need (ack, serial, the boot outputs)."""
    kind = ev[0]
    if kind == "wait":
        tick(core, w, LOCK_WINDOW_MS, events)
        if ev[1] == "timeout":
            tick(core, w, LOCK_WINDOW_MS, events)
            tick(core, w, TIMEOUT_MS, events)
    elif kind == "cmd":
        body = {"req_id": "x-%d" % len(events), "ts": 0, "cmd": ev[1]}
        body.update(dict(ev[2]))
        ack = info["ack"] = core.command(body)
        core.take_events(events.append)
        if ack["ok"] and ev[1] == "start_swap":
            w.swaps += 1
        elif ack["ok"] and ev[1] in OPERATOR:
            w.ops += 1
    elif kind == "power_cycle":
        core = power_cut(core, w)
        info["boot_outputs"] = (list(core.lock_cmd), list(core.charge_ma))
    else:
        i = ev[1] - 1 if kind not in ("smoke", "estop") else 0
        if kind == "insert":
            w.place(ev[1], ev[2])
            w.door[i] = False
            info["serial"] = w.serial[i]
        elif kind == "take":
            info["serial"] = w.serial[i]
            w.serial[i] = None
            w.kind[i] = None
            w.door[i] = False
        elif kind in ("open", "force"):
            w.door[i] = False
        elif kind == "close":
            w.door[i] = True
        elif kind == "jam":
            w.jam[i] = ev[2]
        elif kind == "set":
            w.kind[i] = ev[2]
        else:
            setattr(w, kind, ev[1])
        if kind in ("force", "set") or (kind in ("jam", "smoke", "estop") and ev[-1]):
            w.faults += 1
    info["settled"] = settle(core, w, events)
    # Rule 8's clock, kept by the world: lock windows passed with the bolt away from its command.
    for i in range(w.n):
        c = core.lock_cmd[i]
        if c != w.cmd[i] or w.bolt[i] == c:
            w.cmd[i] = c
            w.windows[i] = 0
        elif kind == "wait":
            w.windows[i] = min(2, w.windows[i] + (1 if ev[1] == "lock" else 2))
    return core


class Seen:
    """What the checks and the state's identity read of one settled state: the world, and the
    core's outputs, published states and journal."""

    def __init__(self, core, w):
        self.world = w.copy()  # the world moves on; what was seen stays
        self.journal = core.journal()
        self.cab = core.cabinet_state()
        self.slots = [core.slot_state(n) for n in range(1, w.n + 1)]
        self.lock_cmd = list(core.lock_cmd)
        self.charge_ma = list(core.charge_ma)
        self.fan = core.fan
        self.alarm = core.alarm

    def key(self):
        """The state's identity: serials renamed in order of appearance, no absolute time."""
        names = {}

        def ren(s):
            if s is None:
                return None
            if s not in names:
                names[s] = len(names)
            return names[s]

        def view_serial(v):
            return ren(v.get("serial")) if isinstance(v, dict) else None

        w = self.world
        parts = [tuple((ren(w.serial[i]), w.kind[i], w.door[i], w.bolt[i], w.jam[i], w.windows[i])
                       for i in range(w.n)), w.smoke, w.estop]
        j = self.journal
        parts.append((j["mode"], j["causes"], tuple((ren(e[0]), e[1], e[2], e[3], e[4:])
                                                    for e in j["inventory"])))
        ss = j["session"]
        if ss is not None:
            parts.append((ss["phase"], ss["slot_in"], ss["slot_out"], ss["in_recorded"],
                          view_serial(ss["battery_in"]), view_serial(ss["battery_out"])))
        c = self.cab
        parts.append((c["ready"], c["empty"], c["charging"], c["faulted"], tuple(c["alarms"])))
        for s in self.slots:
            parts.append((s["state"], s["door"], s["lock"], s["charger"]["on"], s["dispensable"],
                          tuple(s["faults"]), s["reason"], view_serial(s["battery"])))
        parts.append((tuple(self.lock_cmd), tuple(ma > 0 for ma in self.charge_ma), self.fan,
                      self.alarm))
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest() + bytes(w.used())
