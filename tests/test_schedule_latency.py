"""The multi-rate control tick (ControlCycle.step) keeps the latencies the safety rules need, as
properties over random event sequences on the 12-slot cabinet (the unmodified drivers and core
against the register-level chip models):

- the emergency stop, smoke, a forced door and a removed battery reach the outputs within one
  50 ms tick;
- a slot sensor at 60 degC (quarantine) or 70 degC (emergency), and a pack's BMS reporting a
  temperature outside the charge window, turn the charger off within 1 s of the firmware's
  reading of it (a slot sensor is read every 650 ms; an SBS pack every `bms_period` ms);
- a pack that falls silent stops its charger within 1 s of its data going stale (bms_fresh_ms);
- the lock feedback's 500 ms rule: the retry at 500 ms, `lock_jam` at 1 s, each to the tick.
"""
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tukar.cycle import SBS_WORDS
from tukar.sbs import WORDS
from tukar_tools.rig import Cabinet

TICK = 50
SBS = (1, 2, 3, 4)
CAN = (5, 6, 7)
FRESH_MS = 2000
SENSOR_ROUND_MS = 13 * TICK  # 12 slot sensors and the cabinet's, one per tick
# Each SBS pack's poll takes ceil(WORDS / SBS_WORDS) ticks, the packs in turn.
BMS_PERIOD_MS = len(SBS) * -(-WORDS // SBS_WORDS) * TICK


def _cabinet():
    c = Cabinet("tukar-12-wroom")
    for n in SBS:
        c.insert_sbs(n, soc_pct=50)
    for n in CAN:
        c.insert_can(n, SoC=50.0)
    c.run(2500)
    assert all(c.charger_on(n) for n in SBS + CAN), [c.state(n) for n in SBS + CAN]
    c.events.clear()
    return c


def _alarm(c):
    return c.world.output(c.cfg["cabinet"]["alarm"]) == 1


def _within(c, ms, cond):
    """Step tick by tick until cond() holds; the number of ms it took, or None past `ms`."""
    for k in range(ms // TICK + 1):
        if cond():
            return k * TICK
        c.step()
    return 0 if cond() else None


def _no_charger_on(c):
    return not any(c.charger_on(n) for n in range(1, c.n + 1))


def _all_locked_outputs(c):
    return not any(c.lock_energised(n) for n in range(1, c.n + 1))


KINDS = {
    "estop": st.tuples(st.just("estop")),
    "smoke": st.tuples(st.just("smoke")),
    "force": st.tuples(st.just("force"), st.sampled_from(SBS + CAN)),
    "remove": st.tuples(st.just("remove"), st.sampled_from(SBS + CAN)),
    "slot_hot": st.tuples(st.just("slot_hot"), st.sampled_from(SBS + CAN), st.integers(60, 79)),
    "bat_hot": st.tuples(st.just("bat_hot"), st.sampled_from(SBS + CAN), st.integers(46, 55)),
    "silent": st.tuples(st.just("silent"), st.sampled_from(SBS + CAN)),
}
# Events that leave the cabinet running, to come before the one under test.
BEFORE = st.one_of(KINDS["force"], KINDS["remove"], KINDS["slot_hot"].filter(lambda e: e[2] < 70),
                   KINDS["bat_hot"], KINDS["silent"])


def _apply_and_check(c, ev):
    """Make the event happen now; assert its effect reaches the outputs in time. Returns False
    when the event ends what later events could test (an emergency)."""
    kind = ev[0]
    if kind in ("estop", "smoke"):
        c.set_cabinet(**{kind: True})
        took = _within(c, TICK, lambda: c.core.mode == "emergency" and _no_charger_on(c)
                       and _all_locked_outputs(c) and _alarm(c))
        assert took is not None and took <= TICK, (ev, took)
        return False
    n = ev[1]
    if kind in ("force", "remove"):
        if c.core.slots[n - 1].phase != 3 or not c.charger_on(n):
            return True  # already out of charge (a previous event): nothing to time here
        c.open_door(n, force=True)
        if kind == "remove":
            c.remove(n)
        took = _within(c, TICK, lambda: not c.charger_on(n) and _alarm(c))
        assert took is not None and took <= TICK, (ev, took)
        return True
    if not c.charger_on(n):
        return True
    if kind == "slot_hot":
        c.set_slot_temp(n, float(ev[2]))
        took = _within(c, SENSOR_ROUND_MS + 1000, lambda: not c.charger_on(n)
                       and c.core.slots[n - 1].quarantine is not None)
        assert took is not None and took <= SENSOR_ROUND_MS + TICK, (ev, took)
        if ev[2] >= 70:
            assert c.core.mode == "emergency" and _no_charger_on(c)
            return False
        return True
    if kind == "bat_hot":
        if n in SBS:
            c.batteries[n - 1].state.temp_dk = 2731 + 10 * ev[2]
            limit = BMS_PERIOD_MS + 1000
        else:
            c.batteries[n - 1].set(TempMax=ev[2])
            limit = 1000
        took = _within(c, limit + 1000, lambda: not c.charger_on(n))
        assert took is not None and took <= limit, (ev, took)
        return True
    if kind == "silent":
        if n in SBS:
            c.hw.fault(c.batteries[n - 1], True, "absent")
        else:
            c.batteries[n - 1].silent = True
        # Stale once the last reading is FRESH_MS old: at most a poll period after silence began.
        limit = FRESH_MS + (BMS_PERIOD_MS if n in SBS else 2 * TICK) + 1000
        took = _within(c, limit + 1000, lambda: not c.charger_on(n))
        assert took is not None and took <= limit, (ev, took)
        return True
    raise AssertionError(ev)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_safety_conditions_reach_the_outputs_within_their_latency(kind, data):
    """Any phase of the sensor, SBS and CAN rounds; other events before; then `kind`, timed."""
    c = _cabinet()
    for wait, ev in data.draw(st.lists(st.tuples(st.integers(0, 30), BEFORE), max_size=2)):
        for _ in range(wait):
            c.step()
        assert _apply_and_check(c, ev)
    for _ in range(data.draw(st.integers(0, 26))):
        c.step()
    ev = data.draw(KINDS[kind])
    n = ev[1] if len(ev) > 1 else None
    if n is not None and not c.charger_on(n):
        n = next((m for m in SBS + CAN if c.charger_on(m)), None)
        if n is None:
            return  # every charger already off (earlier events): nothing left to time
        ev = (ev[0], n) + ev[2:]
    _apply_and_check(c, ev)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 19), st.sampled_from((8, 9, 10, 11, 12)))
def test_the_lock_feedback_500_ms_rule_holds_to_the_tick(phase, n):
    c = _cabinet()
    for _ in range(phase):  # any phase of the sensor and SBS rounds
        c.step()
    assert c.cmd("set_mode", mode="maintenance")["ok"]
    c.jam_lock(n)
    assert c.cmd("open_slot", slot=n)["ok"]
    pulses = []
    pulse = c.core.lock_pulse[n - 1]
    t0 = c.now  # the command takes the time of the last tick (the core's now)
    for _ in range(30):
        c.step()
        if c.core.lock_pulse[n - 1] != pulse:
            pulse = c.core.lock_pulse[n - 1]
            pulses.append(c.now - t0)
        if c.core.slots[n - 1].faults & 1:
            break
    jam_at = c.now - t0
    assert pulses == [500] and jam_at == 1000, (pulses, jam_at)
    assert c.events_of("Fault", slot=n, code="lock_jam")


def _step_checked(c):
    """One tick, then rule 7 and the charger/lock ordering as the outputs show them."""
    c.step()
    ss = c.core.session
    for n in range(1, c.n + 1):
        if c.lock_energised(n):
            assert ss is not None and n in (ss.slot_in, ss.slot_out), (n, ss and ss.view())
            assert not c.charger_on(n)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 30), min_size=6, max_size=6), st.integers(0, 26))
def test_a_swap_under_the_multi_rate_tick_completes_with_every_door_accounted_for(waits, phase):
    """A rider at random speeds, from any phase of the sensor and SBS rounds: only the session's
    doors ever unlock, a charger is never on behind an unlocked door, and the swap completes."""
    c = _cabinet()
    for n in SBS:
        c.batteries[n - 1].state.soc_pct = 95
    for n in CAN:
        c.batteries[n - 1].set(SoC=95.0)
    for _ in range(phase + 60):
        _step_checked(c)
    a = c.cmd("start_swap", id_token="prop")
    assert a["ok"], a
    n_in = a["slot"]
    for _ in range(10):  # the rider's door unlocks within the lock's travel after the command
        _step_checked(c)
        if not c.locks[n_in - 1].locked:
            break
    for _ in range(waits[0]):
        _step_checked(c)
    assert c.open_door(n_in)
    for _ in range(waits[1]):
        _step_checked(c)
    c.insert_sbs(n_in, soc_pct=20, serial=0x3000 + phase)
    for _ in range(waits[2]):
        _step_checked(c)
    c.close_door(n_in)
    for _ in range(120):
        _step_checked(c)
        ss = c.core.session
        if ss is not None and ss.slot_out is not None and not c.locks[ss.slot_out - 1].locked:
            break
    ss = c.core.session
    assert ss is not None and ss.slot_out is not None, c.events
    n_out = ss.slot_out
    for _ in range(waits[3]):
        _step_checked(c)
    assert c.open_door(n_out)
    for _ in range(waits[4]):
        _step_checked(c)
    c.remove(n_out)
    for _ in range(waits[5]):
        _step_checked(c)
    c.close_door(n_out)
    for _ in range(40):
        _step_checked(c)
    kinds = [e["type"] for e in c.events]
    assert "SwapCompleted" in kinds and "SwapAborted" not in kinds, kinds
    assert c.core.session is None and all(c.core.lock_cmd)
    # The session's time-outs ended with it: no slot keeps a timer the schedule looks at
    # every tick (each one costs the quiet tick until it would have run out).
    assert not c.core.timed & (1 << n_in | 1 << n_out), bin(c.core.timed)
