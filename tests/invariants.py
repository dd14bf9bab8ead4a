"""Random physical events, BMS readings, commands and time steps against the core, with the
safety invariants of cabinet.md checked after every control tick. Shared by the property tests
and the power-cut recovery tests."""
import json

from hypothesis import strategies as st

from coreworld import Battery, Rig
from tukar import slot as sl
from tukar.clock import TICKS_PERIOD, wrap_diff
from tukar.core import Core

SLOTS = 6
STARTS = st.sampled_from([0, TICKS_PERIOD - 10_000, 123_456])

slot_no = st.integers(1, SLOTS)
battery = st.builds(
    lambda serial, soc, temp, faults, profile: Battery(serial, soc=soc, temp=temp, faults=faults,
                                                       profile=profile),
    st.sampled_from(["B-1", "B-2", "B-3", "B-4", "X-1"]),
    st.integers(0, 100), st.sampled_from([-15, 0, 5, 25, 25, 25, 44, 46, 55, 61, 71]),
    st.sampled_from([0, 0, 0, 1, 4]), st.sampled_from(["ref48v", "ref48v", "unknown"]))
command = st.one_of(
    st.tuples(st.just("start_swap"), st.fixed_dictionaries({"id_token": st.sampled_from(["t", ""])})),
    st.tuples(st.just("cancel_swap"), st.just({})),
    st.tuples(st.just("set_mode"), st.fixed_dictionaries(
        {"mode": st.sampled_from(["in_service", "maintenance", "out_of_service", "emergency"])})),
    st.tuples(st.just("open_slot"), st.fixed_dictionaries({"slot": st.integers(0, SLOTS + 1)})),
    st.tuples(st.just("quarantine"), st.fixed_dictionaries({"slot": slot_no, "reason": st.just("x")})),
    st.tuples(st.just("release"), st.fixed_dictionaries({"slot": slot_no})),
    st.tuples(st.just("reset_emergency"), st.just({})),
    st.tuples(st.just("set_config"), st.fixed_dictionaries(
        {"dispense_min_soc": st.integers(40, 101)})),
    st.tuples(st.just("reboot"), st.just({})),
)
advance = st.tuples(st.just("advance"), st.sampled_from([50, 100, 450, 550, 2100, 3100, 5100, 61_000]))
swap = st.tuples(st.just("cmd"), st.tuples(st.just("start_swap"), st.just({"id_token": "rider"})))
ride = st.tuples(st.just("rider"), st.just(0))
full_swap = st.tuples(st.just("full_swap"), battery, st.booleans())
# Weighted towards whole swaps, so that random runs spend most of their time inside sessions.
action = st.one_of(
    advance, advance, advance, swap, swap, ride, ride, ride, full_swap, full_swap, full_swap,
    st.tuples(st.just("recover"), st.just(0)),
    st.tuples(st.just("open"), slot_no, st.booleans()),
    st.tuples(st.just("close"), slot_no),
    st.tuples(st.just("insert"), slot_no, battery),
    st.tuples(st.just("take"), slot_no),
    st.tuples(st.just("temp"), slot_no, st.sampled_from([5, 25, 44, 46, 58, 61, 71])),
    st.tuples(st.just("soc"), slot_no, st.sampled_from([50, 89, 95, 100])),
    st.tuples(st.just("fault"), slot_no, st.sampled_from([0, 0, 2])),
    st.tuples(st.just("bms"), slot_no, st.sampled_from(["ok", "dead", "link"])),
    st.tuples(st.just("jam"), slot_no, st.booleans()),
    st.tuples(st.just("io"), slot_no, st.sampled_from([False, False, True])),
    st.tuples(st.just("sensor"), slot_no, st.sampled_from([0, 0, 1, 2])),
    st.tuples(st.just("smoke"), st.sampled_from([False, False, True])),
    st.tuples(st.just("estop"), st.sampled_from([False, False, True])),
    st.tuples(st.just("cab"), st.sampled_from([250, 250, 560, 700])),
    st.tuples(st.just("cmd"), command),
)


def new_rig(start):
    rig = Rig(Core("cab-p", SLOTS), start)
    for n in range(1, 4):
        rig.world.place(n, Battery("S-%d" % n, soc=95 if n < 3 else 50))
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
    rig.core = core
    rig.world.core = core


def rider(rig):
    """A rider acting on whatever the open session expects."""
    ss = rig.core.session
    w = rig.world
    if ss is None:
        return
    if ss.phase == "awaiting_battery":
        n = ss.slot_in
        if w.open_door(n):
            w.insert(n, Battery("R-%d" % len(rig.events), soc=15))
            w.close_door(n)
    elif ss.phase in ("dispensing", "rejected"):
        n = ss.slot_out if ss.phase == "dispensing" else ss.slot_in
        if w.open_door(n):
            w.take(n)
            w.close_door(n)


def act(rig, a, check):
    kind = a[0]
    w = rig.world
    ws = w.slots[a[1] - 1] if kind in ("open", "close", "insert", "take", "temp", "soc", "fault",
                                       "bms", "jam", "sensor", "io") else None
    if kind == "advance":
        for _ in range(a[1] // rig.tick_ms):
            rig.tick()
            check(rig)
        return
    if kind == "full_swap":
        a0 = rig.cmd("start_swap", id_token="rider")
        if a0["ok"]:
            b = a[1]
            good = Battery(b.serial + "r", soc=10, temp=25) if b.faults == 0 else Battery(
                b.serial + "r", soc=10, temp=b.temp_dc // 10, faults=b.faults, profile=b.profile)
            for _ in range(6):
                rig.tick()
                check(rig)
            n = a0["slot"]
            if w.open_door(n) and w.insert(n, good):
                w.close_door(n)
            for _ in range(80):
                rig.tick()
                check(rig)
                ss = rig.core.session
                if ss is None or ss.phase in ("dispensing", "rejected"):
                    break
            if a[2]:
                for _ in range(6):
                    rig.tick()
                    check(rig)
                rider(rig)
        return
    if kind == "rider":
        for _ in range(6):  # the rider reaches the door once the lock has moved
            rig.tick()
            check(rig)
        rider(rig)
    elif kind == "recover":
        w.smoke = w.estop = False
        w.cab_temp_dc = 250
        for other in w.slots:
            if other.battery is not None and other.battery.temp_dc >= 600:
                other.battery.temp_dc = 300
        rig.tick()
        rig.cmd("reset_emergency")
        rig.cmd("set_mode", mode="in_service")
    elif kind == "open":
        w.open_door(a[1], force=a[2])
    elif kind == "close":
        w.close_door(a[1])
    elif kind == "insert":
        b = a[2]
        w.insert(a[1], Battery(b.serial, soc=b.soc_pm // 10, temp=b.temp_dc // 10,
                               faults=b.faults, profile=b.profile))
    elif kind == "take":
        w.take(a[1])
    elif kind == "temp" and ws.battery is not None:
        ws.battery.temp_dc = a[2] * 10
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
    elif kind == "smoke":
        w.smoke = a[1]
    elif kind == "estop":
        w.estop = a[1]
    elif kind == "cab":
        w.cab_temp_dc = a[1]
    elif kind == "cmd":
        name, args = a[1]
        ack = rig.cmd(name, **args)
        assert set(ack) >= {"req_id", "ok", "error", "detail"}
        assert ack["ok"] == (ack["error"] is None)
    rig.tick()
    check(rig)


def check_tick(rig):
    """The invariants that must hold after every control tick."""
    core = rig.core
    ss = core.session
    for i, s in enumerate(core.slots):
        inp = s.inp
        b = inp.bms
        ma = core.charge_ma[i]
        if ma:
            # Rule 1, checked from the raw inputs rather than through the core's own helpers.
            p = s.profile
            lo = max(0, core.cfg["charge_temp_min_c"] * 10, p.charge_min_dc)
            hi = min(450, core.cfg["charge_temp_max_c"] * 10, p.charge_max_dc)
            assert inp.present and inp.door_closed and inp.locked and core.lock_cmd[i]
            assert s.accepted and s.phase == sl.P_STORED and s.quarantine is None
            assert b.valid and not b.link_fault and wrap_diff(core.now, b.t_ms) < 2000
            assert lo <= b.temp_dc <= hi
            assert b.faults == 0 and s.faults == 0
            assert core.mode != "emergency"
            assert core.cabinet.temp_dc <= 550
            assert not b.full and b.soc_pm < 1000
            assert 0 < ma <= 15000
        if not core.lock_cmd[i]:
            # Rule 7: a door unlocks only in a session, in maintenance, or for a give-back.
            n = i + 1
            in_session = ss is not None and (
                (n == ss.slot_in and ss.phase in ("awaiting_battery", "rejected"))
                or (n == ss.slot_out and ss.phase == "dispensing"))
            maint = core.mode == "maintenance" and s.phase == sl.P_MAINT_OPEN
            assert in_session or maint, (n, s.phase, core.mode, ss and ss.view())
        if s.quarantine is not None:
            assert s.phase != sl.P_DISPENSING
            assert ss is None or ss.slot_out != i + 1 or ss.phase != "dispensing"
    if core.mode == "in_service":
        assert core.lock_cmd.count(False) <= 1
    if core.mode == "emergency":
        assert core.charge_ma == [0] * SLOTS and all(core.lock_cmd)


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
