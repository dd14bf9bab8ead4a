"""Riders' swaps, step by step, with random physical events, BMS readings, operator commands,
time steps and power cuts slipped in between their steps, against the core; the safety invariants
of cabinet.md checked after every control tick, from the raw inputs. Shared by the property tests,
the power-cut recovery tests and `make soak`."""
import json

from hypothesis import strategies as st

from coreworld import Battery, Rig
from tukar import config as cf
from tukar import slot as sl
from tukar.clock import TICKS_PERIOD, wrap_diff
from tukar.core import Core

SLOTS = 6
STARTS = st.sampled_from([0, TICKS_PERIOD - 10_000, 123_456])
CAPACITY_MAH = 300  # small packs: a charger fills one in about 2 minutes, so the stock turns over
# The cabinet sensor's fault (open or shorted thermistor) stops every charger (docs/core.md).
CABINET_SENSOR_FAULT_STOPS_CHARGING = True

slot_no = st.integers(1, SLOTS)
# A fault's slot: 0 is the slot the rider is at (the session's door), so faults meet the swap.
at_slot = st.sampled_from([0, 0, 0] + list(range(1, SLOTS + 1)))
any_slot = st.integers(0, SLOTS + 1)  # operators mistype: 0 and SLOTS + 1 are refused
battery = st.builds(
    lambda serial, soc, temp, faults, profile: Battery(serial, soc=soc, temp=temp, faults=faults,
                                                       profile=profile, capacity_mah=CAPACITY_MAH),
    st.sampled_from(["B-1", "B-2", "B-3", "B-4", "X-1"]),
    st.integers(0, 100), st.sampled_from([-15, 0, 5, 25, 25, 25, 44, 46, 55, 61, 71]),
    st.sampled_from([0, 0, 0, 1, 4]), st.sampled_from(["ref48v", "ref48v", "unknown"]))
# What a rider brings, a flat pack: (temperature degC, fault bits, profile), three in four sound
# (the first, where examples shrink to), the others refused for one reason each.
PACKS = [(25, 0, "ref48v")] * 8 + [(30, 0, "ref48v"), (10, 0, "ref48v"), (40, 0, "ref48v"),
                                   (5, 0, "ref48v"), (44, 0, "ref48v")] + [
    (-15, 0, "ref48v"), (55, 0, "ref48v"), (61, 0, "ref48v"), (71, 0, "ref48v"), (25, 1, "ref48v"),
    (25, 4, "ref48v"), (25, 0, "unknown")]
# One in twenty is worn past the retirement policy (SoH below its floor, cycles above its ceiling):
# taken in, its swap completes and it is held for collection. (Told by its SoC, not drawn apart,
# so that the examples the other draws make stay those that reach every fault.)
WORN = {13: (60, 10), 31: (95, 2500)}
rider_pack = st.tuples(st.integers(0, 40), st.sampled_from(PACKS)).map(
    lambda p: (p[0],) + p[1] + WORN.get(p[0], (95, 10)))
command = st.one_of(
    st.tuples(st.just("start_swap"), st.fixed_dictionaries({"id_token": st.sampled_from(["t", ""])})),
    st.tuples(st.just("cancel_swap"), st.just({})),
    st.tuples(st.just("set_mode"), st.fixed_dictionaries(
        {"mode": st.sampled_from(["in_service", "maintenance", "out_of_service", "emergency"])})),
    st.tuples(st.just("open_slot"), st.fixed_dictionaries({"slot": any_slot})),
    st.tuples(st.just("quarantine"), st.fixed_dictionaries({"slot": any_slot, "reason": st.just("x")})),
    st.tuples(st.just("release"), st.fixed_dictionaries({"slot": any_slot})),
    st.tuples(st.just("reset_emergency"), st.just({})),
    st.tuples(st.just("set_config"), st.fixed_dictionaries(
        {"dispense_min_soc": st.integers(40, 101)})),
    st.tuples(st.just("rebirth"), st.just({})),
    st.tuples(st.just("reboot"), st.just({})),
)
advance = st.tuples(st.just("advance"), st.sampled_from([50, 100, 450, 550, 2100, 3100, 5100, 61_000]))
# A technician's visit: maintenance mode, one slot opened, its pack changed, the slot released.
visit = st.tuples(st.just("visit"), slot_no, st.sampled_from(["restock", "restock", "empty", "look"]))
# The cabinet-wide hazards, as one choice among the faults (each is an emergency).
hazard = st.tuples(st.just("hazard"), st.sampled_from(
    ["smoke", "estop", "cab_hot", "cab_warm", "cab_open", "cab_short", "clear"]))
# One thing that happens to the cabinet, outside any rider's doing: each an equal choice.
FAULTS = [
    advance,
    st.tuples(st.just("recover"), st.just(0)),
    st.tuples(st.just("open"), at_slot, st.booleans()),
    st.tuples(st.just("close"), at_slot),
    st.tuples(st.just("insert"), at_slot, battery),
    st.tuples(st.just("take"), at_slot),
    st.tuples(st.just("temp"), at_slot, st.sampled_from([5, 25, 44, 46, 58, 61, 71])),
    # The slot's own sensor, apart from the battery's (both ways; None: it follows the battery).
    st.tuples(st.just("slot_temp"), at_slot, st.sampled_from([None, 50, 120, 400, 480, 620])),
    st.tuples(st.just("slot_temp"), st.just(0), st.sampled_from([120, 400])),
    st.tuples(st.just("soc"), at_slot, st.sampled_from([50, 89, 95, 100])),
    st.tuples(st.just("fault"), at_slot, st.sampled_from([0, 0, 2])),
    st.tuples(st.just("bms"), at_slot, st.sampled_from(["dead", "link", "ok"])),
    st.tuples(st.just("bms"), slot_no, st.just("dead")),  # a stored pack's BMS falls silent
    # The rider's own door jams, or its switches stop answering: the faults that meet a swap.
    st.tuples(st.just("jam"), st.just(0), st.just(True)),
    st.tuples(st.just("jam"), slot_no, st.booleans()),
    st.tuples(st.just("io"), st.just(0), st.just(True)),
    st.tuples(st.just("io"), slot_no, st.booleans()),
    st.tuples(st.just("sensor"), at_slot, st.sampled_from([0, 1, 2])),
    hazard,
    visit,
    # An operator's command on a slot: the rider's (0) as often as any other, or out of range.
    st.tuples(st.just("cmd_at"), st.sampled_from(["quarantine", "release", "open_slot"]),
              st.sampled_from([0, 0, 0, SLOTS + 1] + list(range(1, SLOTS + 1)))),
    st.tuples(st.just("cmd"), command),
    st.tuples(st.just("cmd"), command),
]
fault = st.one_of(*FAULTS).map(tuple)
fault_or_cut = st.one_of(*FAULTS, st.just(("power_cut",))).map(tuple)
# A rider's swap, step by step (SWAP_STEPS), with what goes wrong slipped in between the steps.
# The variant is how the rider behaves; "whole" (first, where examples shrink to) is a swap done right.
VARIANTS = ["whole", "whole", "whole", "whole", "no_insert", "no_take", "leave_open", "pull_back",
            "slow", "late"]
SWAP_STEPS = 10


# Before the rider comes, someone may put the cabinet right: "recover" clears the hazards of an
# emergency and resets it, "repair" fixes every slot's faults too.
SERVICE = ["repair", "recover", "recover", "none"]


def swap_of(disturbance):
    return st.tuples(st.just("swap"), rider_pack, st.sampled_from(VARIANTS),
                     st.sampled_from([100, 2000, 20_000, 61_000]),
                     st.lists(st.tuples(st.integers(0, SWAP_STEPS - 1), disturbance), max_size=3),
                     st.sampled_from(SERVICE))


def actions_of(disturbance, max_size):
    """Riders' swaps, one after another; faults, commands, visits (and power cuts) slip in between
    their steps. Every example is at least one swap, and examples shrink towards one clean swap."""
    return st.lists(swap_of(disturbance), min_size=1, max_size=max_size)


actions = actions_of(fault, 8)
actions_with_cuts = actions_of(fault_or_cut, 8)
# The back end retires the serial of the pack in a slot (the rider's as often as any other: the
# dispense one, one behind a shut door ...), amid every fault and power cut: its own strategy, so
# that the examples the others make stay those that reach every fault.
retire_at = st.tuples(st.just("cmd_at"), st.just("retire"),
                      st.sampled_from([0, 0, 0] + list(range(1, SLOTS + 1))))
actions_retiring = actions_of(st.one_of(retire_at, fault_or_cut).map(tuple), 8)  # half retire


def new_rig(start):
    rig = Rig(Core("cab-p", SLOTS), start)
    for n in range(1, 5):
        rig.world.place(n, Battery("S-%d" % n, soc=95 if n < 4 else 50, capacity_mah=CAPACITY_MAH))
    return rig


def power_cut(rig):
    """The firmware's memory is lost; what the shell persisted (journal + outbox) survives.
    Locks are fail-secure (locked when unpowered); chargers are off without power."""
    journal = json.loads(json.dumps(rig.core.journal()))
    for ws in rig.world.slots:
        ws.locked = True
        ws.lock_target = True
    core = Core("cab-p", SLOTS, journal=journal, boot_reason="power_loss")
    core.now = rig.now
    # Rule 9: before its first tick the new core holds every charger off and every lock locked.
    assert core.charge_ma == [0] * core.n_slots and all(core.lock_cmd)
    rig.core = core
    rig.world.core = core
    rig.power_cuts = getattr(rig, "power_cuts", 0) + 1
    _watch(rig).clear()


def _serial(rig):
    """A serial no other pack in this run has."""
    rig.packs = getattr(rig, "packs", 0) + 1
    return "R-%d" % rig.packs


def ticks(rig, n, check):
    for _ in range(n):
        rig.tick()
        check(rig)


def swap(rig, a, check):
    """A rider arrives, starts a swap, opens the door the cabinet unlocked, pushes the pack in,
    shuts the door, waits, takes the charged pack and shuts that door, as the variant has it,
    with the disturbances of `a` slipped in before their steps."""
    _, pack, variant, gap, disturb, service = a
    w = rig.world
    if service != "none":
        recover(rig, check, repair=service == "repair")

    def before(k):
        for pos, d in disturb:
            if pos == k:
                act(rig, d, check)

    before(0)
    ticks(rig, gap // rig.tick_ms, check)
    before(1)
    ack = rig.cmd("start_swap", id_token="rider")
    rig.tick()
    check(rig)
    if not ack["ok"]:
        for k in range(2, SWAP_STEPS):
            before(k)
        return
    n_in = ack["slot"]
    soc, temp, faults, profile, soh, cycles = pack
    mine = Battery(_serial(rig), soc=soc, temp=temp, faults=faults, profile=profile,
                   capacity_mah=CAPACITY_MAH, soh=soh, cycles=cycles)
    before(2)
    ticks(rig, {"slow": 100, "late": 1240}.get(variant, 6), check)  # late: past insert_timeout_s
    before(3)
    opened = w.open_door(n_in)
    before(4)
    if opened and variant != "no_insert":
        w.insert(n_in, mine)
        if variant == "pull_back":  # shut, then pulled back out before the bolt caught it
            w.close_door(n_in)
            ticks(rig, 1, check)
            if w.open_door(n_in):
                w.take(n_in)
                ticks(rig, 2, check)
                w.insert(n_in, mine)
    before(5)
    if variant != "leave_open":
        w.close_door(n_in)
    before(6)
    for _ in range(120):  # identify_timeout_s is 3 s
        rig.tick()
        check(rig)
        ss = rig.core.session
        if ss is None or ss.phase in ("dispensing", "rejected"):
            break
    before(7)
    ss = rig.core.session
    n_out = None
    if ss is not None and ss.phase == "dispensing":
        n_out = ss.slot_out
    elif ss is not None and ss.phase == "rejected":
        n_out = ss.slot_in
    ticks(rig, 6, check)
    if n_out and variant != "no_take" and w.open_door(n_out):
        before(8)
        w.take(n_out)
        before(9)
        w.close_door(n_out)
    else:
        before(8)
        before(9)
    if variant == "leave_open":
        w.close_door(n_in)
    ticks(rig, 10, check)


def technician(rig, a, check):
    """Maintenance mode, the slot opened, its pack swapped for a full one (or taken, or only
    looked at), the door shut, the slot released, back in service."""
    _, n, op = a
    w = rig.world
    rig.cmd("set_mode", mode="maintenance")
    rig.cmd("open_slot", slot=n)
    ticks(rig, 6, check)
    if rig.core.slots[n - 1].phase == sl.P_MAINT_OPEN and w.open_door(n):
        if op != "look":
            w.take(n)
            ticks(rig, 2, check)
        if op == "restock":
            w.insert(n, Battery(_serial(rig), soc=100, capacity_mah=CAPACITY_MAH))
        ticks(rig, 2, check)
        w.close_door(n)
    ticks(rig, 6, check)
    rig.cmd("release", slot=n)
    ticks(rig, 80, check)  # the new pack identified
    rig.cmd("set_mode", mode="in_service")
    ticks(rig, 2, check)


def recover(rig, check, repair=False):
    """Smoke gone, the e-stop released, the heat gone, the cabinet sensor mended; then the
    emergency reset and the cabinet back in service. With `repair`, every slot mended too."""
    w = rig.world
    w.smoke = w.estop = False
    w.cab_temp_dc = 250
    w.cab_sensor = 0
    for ws in w.slots:
        ws.slot_temp_dc = None
        if ws.battery is not None and ws.battery.temp_dc >= 600:
            ws.battery.temp_dc = 300
        if repair:
            ws.jammed = ws.io_fault = ws.bms_dead = ws.bms_link_fault = False
            ws.sensor = 0
            ws.door_closed = True
    rig.tick()
    check(rig)  # every tick is checked: the checker's timers must see the conditions end
    if rig.core.mode == "emergency":
        rig.cmd("reset_emergency")
    if rig.core.mode != "in_service":
        rig.cmd("set_mode", mode="in_service")


SLOT_FAULTS = ("open", "close", "insert", "take", "temp", "slot_temp", "soc", "fault", "bms", "jam",
               "io", "sensor")


def rider_slot(rig):
    """The slot whose door the open session has unlocked or will; without a session, the slot
    the next one would open for the rider's pack (else slot 1)."""
    ss = rig.core.session
    if ss is None:
        for s in rig.core.slots:
            if s.is_free():
                return s.n
        return 1
    return ss.slot_out if ss.phase == "dispensing" and ss.slot_out else ss.slot_in or 1


def act(rig, a, check):
    kind = a[0]
    w = rig.world
    if kind in SLOT_FAULTS and a[1] == 0:
        a = (kind, rider_slot(rig)) + tuple(a[2:])
    ws = w.slots[a[1] - 1] if kind in ("open", "close", "insert", "take", "temp", "soc", "fault",
                                       "bms", "jam", "sensor", "io", "slot_temp") else None
    if kind == "advance":
        ticks(rig, a[1] // rig.tick_ms, check)
        return
    if kind == "swap":
        swap(rig, a, check)
        return
    if kind == "visit":
        technician(rig, a, check)
        return
    if kind == "power_cut":
        power_cut(rig)
        rig.tick()
        check(rig)
        return
    if kind == "recover":
        recover(rig, check)
    elif kind == "open":
        w.open_door(a[1], force=a[2])
    elif kind == "close":
        w.close_door(a[1])
    elif kind == "insert":
        b = a[2]
        w.insert(a[1], Battery(b.serial, soc=b.soc_pm // 10, temp=b.temp_dc // 10,
                               faults=b.faults, profile=b.profile, capacity_mah=CAPACITY_MAH))
    elif kind == "take":
        w.take(a[1])
    elif kind == "temp" and ws.battery is not None:
        ws.battery.temp_dc = a[2] * 10
    elif kind == "slot_temp":
        ws.slot_temp_dc = a[2]
    elif kind == "soc" and ws.battery is not None:
        ws.battery.soc_pm = a[2] * 10
    elif kind == "fault" and ws.battery is not None:
        ws.battery.faults = a[2]
    elif kind == "bms":
        ws.bms_dead = a[2] == "dead"
        ws.bms_link_fault = a[2] == "link"
    elif kind == "jam":
        ws.jammed = a[2]
    elif kind == "io":
        ws.io_fault = a[2]
    elif kind == "sensor":
        ws.sensor = a[2]
    elif kind == "hazard":
        # The cabinet's thermistor open reads -40 degC, shorted 150 degC (tukar.ntc's ends).
        h = a[1]
        if h == "clear":
            w.smoke = w.estop = False
            w.cab_temp_dc = 250
            w.cab_sensor = 0
        elif h == "smoke" or h == "estop":
            setattr(w, h, True)
        elif h.startswith("cab_"):
            if h in ("cab_hot", "cab_warm"):
                w.cab_temp_dc = 700 if h == "cab_hot" else 560
            else:
                w.cab_sensor = 1 if h == "cab_open" else 2
    elif kind == "smoke":
        w.smoke = a[1]
    elif kind == "estop":
        w.estop = a[1]
    elif kind == "cab":
        w.cab_temp_dc = a[1]
    elif kind == "cab_sensor":
        w.cab_sensor = a[1]
    elif kind == "cmd_at":
        n = a[2] or rider_slot(rig)
        args = {"slot": n, "reason": "operator"} if a[1] == "quarantine" else {"slot": n}
        if a[1] == "retire":
            b = w.slots[n - 1].battery if 1 <= n <= len(w.slots) else None
            args = {"serial": b.serial if b is not None else "X-9"}
        ack = rig.cmd(a[1], **args)
        rig.slot_cmds = getattr(rig, "slot_cmds", set())
        rig.slot_cmds.add((a[1], n, ack["ok"]))
    elif kind == "cmd":
        name, args = a[1]
        ack = rig.cmd(name, **args)
        assert set(ack) >= {"req_id", "ok", "error", "detail"}
        assert ack["ok"] == (ack["error"] is None)
    rig.tick()
    check(rig)


def _watch(rig):
    """The checker's own timers, kept on the rig: since when (now) a condition has held."""
    wt = getattr(rig, "watch", None)
    if wt is None:
        wt = rig.watch = {}
    return wt


def _held(wt, key, cond, now):
    """How long `cond` has held without a break, in ms (0 when it does not hold)."""
    if not cond:
        wt.pop(key, None)
        return 0
    t = wt.setdefault(key, now)
    return wrap_diff(now, t)


def check_tick(rig):
    """The invariants that must hold after every control tick."""
    core = rig.core
    ss = core.session
    now = core.now
    cab = core.cabinet
    cab_sensor = getattr(cab, "sensor", 0) or cab.temp_dc in (-400, 1500)  # tukar.ntc's ends
    fresh_ms = core.lim.fresh_ms
    wt = _watch(rig)
    seen = getattr(rig, "seen", None)
    if seen is None:
        seen = rig.seen = set()
    hottest = -1000 if cab_sensor else cab.temp_dc
    for i, s in enumerate(core.slots):
        inp = s.inp
        b = inp.bms
        ma = core.charge_ma[i]
        fresh = b.valid and not b.link_fault and wrap_diff(now, b.t_ms) < fresh_ms
        if ma:
            # Rule 1, checked from the raw inputs rather than through the core's own helpers.
            p = s.profile
            lo = max(0, core.cfg["charge_temp_min_c"] * 10, p.charge_min_dc)
            hi = min(450, core.cfg["charge_temp_max_c"] * 10, p.charge_max_dc)
            assert inp.io_ok and inp.present and inp.door_closed and inp.locked and core.lock_cmd[i]
            assert s.accepted and s.phase == sl.P_STORED and s.quarantine is None
            assert b.valid and not b.link_fault and wrap_diff(core.now, b.t_ms) < 2000
            assert lo <= b.temp_dc <= hi
            assert b.faults == 0 and s.faults == 0
            assert inp.sensor == 0, "rule 5: a charger on beside an open or shorted slot sensor"
            assert core.mode != "emergency"
            assert core.cabinet.temp_dc <= 550
            if CABINET_SENSOR_FAULT_STOPS_CHARGING:
                assert not cab_sensor, "a charger on while the cabinet's sensor is broken"
            assert not b.full and b.soc_pm < 1000
            assert 0 < ma <= 15000
        # Rule 5: sensor and BMS more than 10 degC apart for SENSOR_MISMATCH_MS is a slot fault.
        d = inp.temp_dc - b.temp_dc
        apart = inp.io_ok and inp.sensor == 0 and inp.present and fresh and (
            d > cf.SENSOR_MISMATCH_DC or d < -cf.SENSOR_MISMATCH_DC)
        if apart:
            seen.add("mismatch_hot" if d > 0 else "mismatch_cold")
        if _held(wt, ("apart", i), apart, now) >= cf.SENSOR_MISMATCH_MS + rig.tick_ms:
            assert s.faults & sl.TEMP_MISMATCH and not ma, (i + 1, d, s.faults)
        # Rule 4: 60 degC on the slot's sensor or its fresh BMS quarantines the slot.
        hot = inp.temp_dc if inp.sensor == 0 else -1000
        if inp.present and fresh and b.temp_dc > hot:
            hot = b.temp_dc
        if hot >= cf.QUARANTINE_DC:
            assert s.quarantine is not None, (i + 1, hot)
        hottest = max(hottest, hot)
        # Rule 8: feedback away from the command for the timeout, a retry and its timeout: lock_jam.
        cmd = core.lock_cmd[i]
        off = inp.io_ok and inp.locked != cmd
        for c in (True, False):
            if _held(wt, ("lock", i, c), off and cmd == c, now) >= 2 * cf.LOCK_TIMEOUT_MS + 2 * rig.tick_ms:
                assert s.faults & sl.LOCK_JAM, (i + 1, cmd)
        if not inp.io_ok:
            seen.add("io_fault")
        if s.faults & sl.LOCK_JAM:
            seen.add("lock_jam")
        if inp.present and b.valid and not fresh:
            seen.add("bms_silent")
        if not core.lock_cmd[i]:
            # Rule 7: a door unlocks only in a session, in maintenance, or for a give-back.
            n = i + 1
            in_session = ss is not None and (
                (n == ss.slot_in and ss.phase in ("awaiting_battery", "rejected"))
                or (n == ss.slot_out and ss.phase == "dispensing"))
            maint = core.mode == "maintenance" and s.phase == sl.P_MAINT_OPEN
            assert in_session or maint, (n, s.phase, core.mode, ss and ss.view())
        if s.accepted and s.phase == sl.P_STORED and s.serial is not None and (
                core.is_retired(s.serial) or 0 < b.soh_pct < core.cfg["retire_soh_min"] and b.valid
                or b.valid and b.cycles > core.cfg["retire_cycles_max"]):
            # Retirement: a pack retired, or past the policy's SoH floor or cycle ceiling, is
            # held for collection (so never dispensed: below).
            assert s.quarantine is not None, (i + 1, s.serial, b.soh_pct, b.cycles)
            seen.add("retired")
        if s.quarantine is not None:
            assert s.phase != sl.P_DISPENSING
            assert ss is None or ss.slot_out != i + 1 or ss.phase != "dispensing"
    # Rule 4: 70 degC anywhere, smoke or the emergency stop: emergency, in the same tick.
    if cab.smoke or cab.estop or hottest >= cf.EMERGENCY_DC:
        assert core.mode == "emergency", (cab.smoke, cab.estop, hottest)
    if cab_sensor:
        seen.add("cabinet_sensor")
    if cab.estop:
        seen.add("estop")
    if cab.smoke:
        seen.add("smoke")
    if core.mode == "in_service":
        assert core.lock_cmd.count(False) <= 1
    if core.mode == "emergency":
        assert core.charge_ma == [0] * core.n_slots and all(core.lock_cmd)
    # mqtt.md's cabinet state: its counts are the slots' own published states, counted.
    counts = [0, 0, 0, 0]
    for s in core.slots:
        counts[0] += 1 if s.dispensable else 0
        counts[1] += 1 if s.state == sl.EMPTY else 0
        counts[2] += 1 if s.charge_ma > 0 else 0
        counts[3] += 1 if s.state == sl.FAULT else 0
    assert core.counts[:4] == counts, (core.counts, counts)


def check_history(rig):
    """After the cabinet has been left alone long enough for every timeout to run out."""
    events = rig.events
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "event ids must be unique"
    started = [e["session"] for e in events if e["type"] == "SwapStarted"]
    ends = [e["session"] for e in events if e["type"] in ("SwapCompleted", "SwapAborted")]
    assert len(started) == len(set(started))
    assert rig.core.session is None
    assert sorted(started) == sorted(ends), "every session ends exactly once"
    # No double dispense: a battery handed out is not handed out again until it comes back.
    out = set()
    for e in events:
        if e["type"] == "BatteryOut":
            serial = e["battery"]["serial"]
            assert serial not in out
            out.add(serial)
        elif e["type"] == "BatteryIn":
            out.discard(e["battery"]["serial"])
    # Every battery physically in a slot is accounted for by the core.
    for i, ws in enumerate(rig.world.slots):
        s = rig.core.slots[i]
        if ws.battery is None:
            assert s.serial is None and not s.accepted
        elif s.accepted:
            assert s.serial == ws.battery.serial


def settle(rig, check):
    """Quiet world: doors shut, everything cleared, then long enough for all timeouts."""
    w = rig.world
    for ws in w.slots:
        ws.door_closed = True
        ws.jammed = False
        ws.io_fault = False
    for _ in range(130_000 // rig.tick_ms):
        rig.tick()
        check(rig)


def run_example(actions, start, check=check_tick, quiet_end=True):
    """One property example: the stocked cabinet, the actions, then (quiet_end) left alone until
    every timeout has run out and the whole history checked. Returns the rig."""
    rig = new_rig(start)
    rig.run(1000)
    for a in actions:
        act(rig, a, check)
    if quiet_end:
        settle(rig, check)
        check_history(rig)
    return rig


def reached(rig):
    """What an example reached: its event types, fault codes, what the checker saw (mismatch both
    ways, unreadable switches, a broken cabinet sensor ...), power cuts, and the commands that
    were carried out, by name and by slot."""
    got = set(getattr(rig, "seen", ()))
    for e in rig.events:
        got.add(e["type"])
        if e["type"] == "Fault":
            got.add("fault:" + e["code"])
        elif e["type"] == "SwapAborted":
            got.add("aborted:" + e["reason"])
        elif e["type"] == "Emergency":
            got.add("emergency:" + e["cause"])
    if getattr(rig, "power_cuts", 0):
        got.add("power_cut")
    for name, n, ok in getattr(rig, "slot_cmds", ()):
        got.add("cmd:%s:%d" % (name, n))
        if ok:
            got.add("cmd_ok:%s" % name)
    return got
