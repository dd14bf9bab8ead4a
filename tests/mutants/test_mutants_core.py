"""Safety rules of cabinet.md where a hand-made mutation round found the suite blind: every timed
rule to the tick, with the ticks wrapping inside its interval; the rider's lock confirmed before
any other door unlocks; rule 5 in both directions; BMS silence; quarantine while a slot's
switches are unreadable; cold and hot batteries refused; `hold_swaps`. One behaviour per test,
the spec's numbers in the assertions (docs/safety.md, "Mutation testing")."""
import json

import pytest
from coreworld import Battery, Rig, rider_inserts, stocked_rig

from tukar.clock import TICKS_PERIOD, wrap_diff
from tukar import slot as sl
from tukar.core import Core

TICK = 50


pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")


def settled(start_ms, **kw):
    """A stocked cabinet whose clock is at start_ms + 1000 after settling; start_ms may be chosen
    so that the wrap of ticks_ms falls inside the interval a test measures."""
    return stocked_rig(start_ms=start_ms % TICKS_PERIOD, **kw)


def ms_until(rig, cond, limit_ms):
    """Tick until cond() holds; the simulated ms that took (None if it never did)."""
    t0 = rig.now
    while wrap_diff(rig.now, t0) <= limit_ms:
        if cond():
            return wrap_diff(rig.now, t0)
        rig.tick()
    return None


# Each timed rule runs from a clock far from the wrap and from one that wraps inside the interval.
NEAR_WRAP = [0, TICKS_PERIOD - 1000 - 300]  # the second: the wrap comes 300 ms into the interval


# -- rule 8: 500 ms, one retry, then lock_jam -----------------------------------------------------
@pytest.mark.parametrize("start", NEAR_WRAP)
def test_a_jammed_lock_is_retried_at_500_ms_and_jammed_at_1000_ms_to_the_tick(start):
    rig = settled(start)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.world.slots[n - 1].jammed = True
    p0 = rig.core.lock_pulse[n - 1]
    assert ms_until(rig, lambda: rig.core.lock_pulse[n - 1] != p0, 2000) == 500
    assert rig.core.lock_pulse[n - 1] == p0 + 1
    assert ms_until(rig, lambda: rig.of("Fault"), 2000) == 500
    assert rig.of("Fault")[-1]["code"] == "lock_jam"
    assert rig.core.lock_pulse[n - 1] == p0 + 1  # one retry only


@pytest.mark.parametrize("start", NEAR_WRAP)
def test_a_lock_that_drifts_open_is_retried_then_jammed(start):
    rig = settled(start, full=1, half=0)
    rig.world.slots[1].locked = False  # the bolt of an empty slot slides back on its own
    rig.world.slots[1].jammed = True
    p0 = rig.core.lock_pulse[1]
    assert ms_until(rig, lambda: rig.core.lock_pulse[1] != p0, 2000) == 550  # seen, then 500 ms
    assert ms_until(rig, lambda: rig.of("Fault"), 2000) == 500
    assert rig.core.slot_state(2)["faults"] == ["lock_jam"]
    assert rig.core.lock_cmd[1] is True and rig.core.charge_ma[1] == 0


def test_a_jam_is_reported_once_and_cleared_once_the_bolt_moves_on_a_new_command():
    rig = settled(0, full=1, half=0)
    ws = rig.world.slots[1]
    ws.locked = False  # the bolt of an empty slot slides back and sticks there
    ws.jammed = True
    rig.run(3000)  # retried, jammed, and stuck open well past it
    faults = [e for e in rig.events if e["type"] in ("Fault", "FaultCleared")]
    assert [(e["type"], e["code"]) for e in faults] == [("Fault", "lock_jam")]
    ws.jammed = False
    rig.run(1000)  # the bolt follows the lock command again, but nothing commanded it anew
    assert rig.core.slot_state(2)["faults"] == ["lock_jam"]
    rig.cmd("set_mode", mode="maintenance")
    rig.cmd("open_slot", slot=2)  # a new command: the bolt moves on it
    rig.run(500)
    faults = [e for e in rig.events if e["type"] in ("Fault", "FaultCleared")]
    assert [(e["type"], e["code"]) for e in faults] == [("Fault", "lock_jam"), ("FaultCleared", "lock_jam")]
    assert rig.core.slot_state(2)["faults"] == []
    assert rig.core.slot_state(2)["lock"] == "unlocked"


def test_every_retry_of_a_drifting_lock_pulses_the_driver_anew():
    rig = settled(0, full=1, half=0)
    ws = rig.world.slots[1]
    pulses = [rig.core.lock_pulse[1]]
    for _ in range(3):  # the bolt slides back and sticks until the retry, three times over
        ws.locked = False
        ws.jammed = True
        assert ms_until(rig, lambda: rig.core.lock_pulse[1] != pulses[-1], 2000) is not None
        pulses.append(rig.core.lock_pulse[1])
        ws.jammed = False
        rig.run(500)
    assert pulses == [pulses[0] + k for k in range(4)]
    assert not rig.of("Fault") and rig.core.slot_state(2)["lock"] == "locked"


def test_locks_that_move_as_commanded_raise_and_clear_no_fault():
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=20), wait_ms=3000)
    assert rig.core.session is not None and rig.core.session.phase == "dispensing"
    assert not [e for e in rig.events if e["type"] in ("Fault", "FaultCleared")]


# -- rule 5: a sensor 10 degC away from the BMS for 1 s, in both directions -------------------------
@pytest.mark.parametrize("start", NEAR_WRAP)
@pytest.mark.parametrize("sensor_dc", [351, 149])  # battery at 25.0 degC: 10.1 above, 10.1 below
def test_a_sensor_more_than_10_degc_away_either_way_is_a_fault_after_1_s(start, sensor_dc):
    rig = settled(start, full=0, half=1)
    assert rig.core.charge_ma[0] > 0
    rig.world.slots[0].slot_temp_dc = sensor_dc
    rig.tick()  # the first tick that sees the disagreement starts the second
    assert ms_until(rig, lambda: rig.of("Fault"), 3000) == 1000
    assert rig.of("Fault")[-1]["code"] == "temp_mismatch"
    assert rig.core.charge_ma[0] == 0
    rig.world.slots[0].slot_temp_dc = None  # agreement again: the fault clears
    rig.run(200)
    assert rig.of("FaultCleared")[-1]["code"] == "temp_mismatch"
    assert rig.core.charge_ma[0] > 0


@pytest.mark.parametrize("sensor_dc", [350, 150])
def test_a_sensor_exactly_10_degc_away_either_way_is_no_fault(sensor_dc):
    rig = settled(0, full=0, half=1)
    rig.world.slots[0].slot_temp_dc = sensor_dc
    rig.run(3000)
    assert rig.of("Fault") == [] and rig.core.charge_ma[0] > 0


def test_a_mismatch_interrupted_by_agreement_starts_its_second_again():
    rig = settled(0, full=0, half=1)
    rig.world.slots[0].slot_temp_dc = 351
    rig.run(900)
    rig.world.slots[0].slot_temp_dc = None
    rig.tick()
    rig.world.slots[0].slot_temp_dc = 149
    rig.run(900)
    assert rig.of("Fault") == []
    rig.run(200)
    assert rig.of("Fault")[-1]["code"] == "temp_mismatch"


def test_an_empty_slot_sensor_is_not_compared_with_a_bms():
    rig = settled(0, full=0, half=0)
    rig.world.slots[0].slot_temp_dc = 450  # no battery: nothing to disagree with
    rig.run(3000)
    assert rig.of("Fault") == []


# -- BMS silence: charger off at 2 s, bms_link at 5 s, not dispensable -------------------------------
@pytest.mark.parametrize("start", NEAR_WRAP)
def test_bms_silence_stops_the_charger_2_s_after_the_last_reading_to_the_tick(start):
    rig = settled(start, full=0, half=1)
    assert rig.core.charge_ma[0] > 0
    rig.world.slots[0].bms_dead = True
    last = rig.core.slot_inputs[0].bms.t_ms
    while rig.core.charge_ma[0] > 0:
        rig.tick()
        assert wrap_diff(rig.now, last) <= 2000
    assert wrap_diff(rig.now, last) == 2000
    assert rig.of("ChargeStopped")[-1]["reason"] == "bms_stale"
    assert rig.core.slot_state(1)["reason"] == "bms_stale"
    assert ms_until(rig, lambda: rig.of("Fault"), 5000) == 3000  # bms_lost_ms 5000 after the reading
    assert rig.of("Fault")[-1]["code"] == "bms_link"
    rig.world.slots[0].bms_dead = False
    rig.run(300)
    assert rig.of("FaultCleared")[-1]["code"] == "bms_link"
    assert rig.core.charge_ma[0] > 0


@pytest.mark.parametrize("start", NEAR_WRAP)
def test_a_silent_bms_makes_a_full_battery_not_dispensable(start):
    rig = settled(start, full=1, half=0)
    assert rig.core.slot_state(1)["dispensable"] is True
    rig.world.slots[0].bms_dead = True
    last = rig.core.slot_inputs[0].bms.t_ms
    while rig.core.slot_state(1)["dispensable"]:
        rig.tick()
        assert wrap_diff(rig.now, last) <= 2000
    assert rig.cmd("start_swap", id_token="t")["error"] == "no_battery_available"


def test_a_bms_link_fault_stops_the_charger_at_once():
    rig = settled(0, full=0, half=1)
    rig.world.slots[0].bms_link_fault = True
    rig.tick()
    assert rig.core.charge_ma[0] == 0
    assert rig.core.slot_state(1)["faults"] == ["bms_link"]


def test_bms_silence_of_a_battery_being_identified_refuses_it_after_3_s():
    rig = settled(0, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    b = Battery("Q-1", soc=20)
    n = rig.core.session.slot_in
    rig.world.slots[n - 1].bms_dead = True
    rider_inserts(rig, b, wait_ms=0)
    assert ms_until(rig, lambda: rig.of("BatteryRejected"), 5000) is not None
    assert rig.of("BatteryRejected")[-1]["reason"] == "no_bms"
    assert not rig.of("BatteryIn")


# -- timed session rules across the wrap -----------------------------------------------------------
@pytest.mark.parametrize("start", [0, TICKS_PERIOD - 1000 - 1500])
def test_identification_times_out_3_s_after_the_lock_confirms_to_the_tick(start):
    rig = settled(start, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.world.slots[n - 1].bms_dead = True
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("Q-1", soc=20))
    rig.world.close_door(n)
    confirmed = None
    while confirmed is None:
        rig.tick()
        if rig.core.slots[n - 1].lock_confirmed() and rig.core.session.phase == "identifying":
            confirmed = rig.now
    # 3 s from the last tick that saw the bolt still away (the lock confirmed since then)
    assert ms_until(rig, lambda: rig.of("BatteryRejected"), 5000) == 3000 - TICK
    assert rig.of("BatteryRejected")[-1]["reason"] == "no_bms"
    assert rig.core.lock_cmd[n - 1] is False  # the rider gets the battery back


@pytest.mark.parametrize("start", [0, TICKS_PERIOD - 1000 - 30_000])
def test_a_refused_battery_left_in_is_quarantined_60_s_after_the_refusal(start):
    rig = settled(start, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("C-1", soc=20, temp=-11), wait_ms=0)
    ms_until(rig, lambda: rig.of("BatteryRejected"), 5000)
    n = rig.of("BatteryRejected")[-1]["slot"]
    assert ms_until(rig, lambda: rig.of("Quarantined"), 70_000) == 60_000
    assert rig.of("Quarantined")[-1]["reason"] == "rejected_not_taken"
    assert rig.of("SwapAborted")[-1]["reason"] == "rejected"
    assert rig.core.lock_cmd[n - 1] is True


@pytest.mark.parametrize("start", [0, TICKS_PERIOD - 1000 - 30_000])
def test_a_battery_not_taken_is_locked_in_again_60_s_after_its_door_opened(start):
    rig = settled(start)
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=20), wait_ms=0)
    ms_until(rig, lambda: rig.core.session is not None and rig.core.session.phase == "dispensing",
             5000)
    out = rig.core.session.slot_out
    assert ms_until(rig, lambda: rig.of("BatteryOutTimeout"), 70_000) == 60_000
    assert rig.of("SwapAborted")[-1]["reason"] == "not_taken"
    assert rig.core.lock_cmd[out - 1] is True


@pytest.mark.parametrize("start", [0, TICKS_PERIOD - 1000 - 30_000])
def test_the_insert_time_out_is_60_s_to_the_tick(start):
    rig = settled(start)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    assert ms_until(rig, lambda: rig.of("SwapAborted"), 70_000) == 60_000
    assert rig.of("SwapAborted")[-1]["reason"] == "timeout"
    assert rig.core.lock_cmd[n - 1] is True


@pytest.mark.parametrize("start", NEAR_WRAP)
def test_switches_unreadable_for_500_ms_are_a_slot_fault_to_the_tick(start):
    rig = settled(start, full=0, half=1)
    rig.world.slots[0].io_fault = True
    rig.tick()  # first seen
    assert rig.core.charge_ma[0] == 0
    assert ms_until(rig, lambda: rig.of("Fault"), 2000) == 500
    assert rig.of("Fault")[-1]["code"] == "slot_io"


def test_the_energy_of_a_charge_is_the_same_across_the_wrap():
    def energy(start):
        rig = settled(start, full=0, half=1)
        rig.run(10_000)
        rig.world.cab_temp_dc = 560  # rule 1: the charge stops
        rig.tick()
        e = rig.of("ChargeStopped")[-1]
        assert e["reason"] == "cabinet_temperature"
        return e["energy_wh"]
    # 10 A into a 60 % pack (about 49.6 V) for about 11 s: 1.5 Wh, the wrap inside the charge or not
    far = energy(0)
    assert 1.45 < far < 1.55
    assert energy(TICKS_PERIOD - 1000 - 5000) == far


def test_a_session_clock_set_back_is_not_a_time_out():
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    # A tick whose clock reads earlier than the last (wrap_diff negative) must not end the session.
    rig.now = (rig.now - 1000) % TICKS_PERIOD
    rig.tick()
    assert rig.core.session is not None and not rig.of("SwapAborted")


# -- the rider's lock confirmed before any other door unlocks -----------------------------------------
def test_no_door_unlocks_for_dispensing_until_the_riders_lock_is_confirmed():
    rig = settled(0)
    rig.world.lock_travel_ms = 400  # a slow bolt
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(600)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    for _ in range(100):
        rig.tick()
        others_unlocked = [i + 1 for i in range(12) if i + 1 != n and not rig.core.lock_cmd[i]]
        if others_unlocked:
            assert rig.world.slots[n - 1].locked, "slot %s unlocked before the rider's bolt" % (
                others_unlocked,)
            assert rig.of("BatteryIn")
        if rig.of("BatteryIn"):
            assert rig.world.slots[n - 1].locked
    assert rig.core.session.phase == "dispensing"


def test_a_riders_lock_that_never_locks_opens_no_other_door_and_ends_the_swap():
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.slots[n - 1].jammed = True  # the bolt stays back
    rig.world.close_door(n)
    for _ in range(60):
        rig.tick()
        assert all(rig.core.lock_cmd[i] for i in range(12) if i + 1 != n)
    assert not rig.of("BatteryIn")
    assert rig.of("Fault")[-1]["code"] == "lock_jam"
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"


def test_a_riders_door_left_open_with_the_battery_in_is_not_identified():
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.run(5000)  # door still open: the 3 s have not started
    assert not rig.of("BatteryIn") and not rig.of("BatteryRejected")
    assert all(rig.core.lock_cmd[i] for i in range(12) if i + 1 != n)
    rig.world.close_door(n)
    rig.run(1000)
    assert rig.of("BatteryIn")


# -- quarantine while a slot's switches are unreadable ---------------------------------------------------
@pytest.mark.parametrize("where", ["sensor", "bms"])
def test_a_slot_at_60_degc_is_quarantined_even_while_its_switches_are_unreadable(where):
    rig = settled(0, full=0, half=1)
    rig.world.slots[0].io_fault = True
    rig.tick()
    if where == "sensor":
        rig.world.slots[0].slot_temp_dc = 600
        rig.world.slots[0].battery.temp_dc = 550
    else:
        rig.world.slots[0].battery.temp_dc = 600
        rig.world.slots[0].slot_temp_dc = 550
    rig.run(200)
    assert rig.of("Quarantined")[-1]["reason"] == "overtemp"
    assert rig.core.charge_ma[0] == 0 and rig.core.lock_cmd[0] is True
    rig.world.slots[0].io_fault = False
    rig.run(200)
    assert rig.core.slot_state(1)["state"] == "quarantined"


def test_a_slot_at_59_9_degc_with_unreadable_switches_is_not_quarantined():
    rig = settled(0, full=0, half=1)
    rig.world.slots[0].io_fault = True
    rig.world.slots[0].slot_temp_dc = 599
    rig.world.slots[0].battery.temp_dc = 550
    rig.run(1000)
    assert not rig.of("Quarantined")


def test_unreadable_switches_conclude_no_break_in_and_no_missing_battery():
    rig = settled(0, full=1, half=1)
    rig.world.slots[0].io_fault = True  # fail levels: door open, lock open, battery present
    rig.run(2000)
    assert not rig.of("DoorForced") and not rig.of("BatteryMissing")
    assert rig.core.alarm is False
    rig.world.slots[0].io_fault = False
    rig.run(300)
    assert not rig.of("DoorForced")  # the door reads closed again: no edge is made of it


# -- cold and hot batteries refused --------------------------------------------------------------------
@pytest.mark.parametrize("temp_dc, refused", [(-101, True), (-100, False), (500, False), (501, True)])
def test_a_rider_battery_outside_minus_10_to_50_degc_is_refused(temp_dc, refused):
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    b = Battery("R-1", soc=20)
    b.temp_dc = temp_dc
    n = rider_inserts(rig, b, wait_ms=1000)
    if refused:
        assert rig.of("BatteryRejected")[-1]["reason"] == "temperature"
        assert not rig.of("BatteryIn") and rig.core.lock_cmd[n - 1] is False
    else:
        assert not rig.of("BatteryRejected") and rig.of("BatteryIn")


def test_a_cold_battery_found_in_a_slot_is_held_quarantined_and_never_charged():
    core = Core("cab-1", 4)
    rig = Rig(core)
    rig.world.place(1, Battery("C-1", soc=50, temp=-15))
    rig.run(2000)
    assert rig.of("Quarantined")[-1] == dict(rig.of("Quarantined")[-1], slot=1, reason="temperature")
    assert core.charge_ma[0] == 0 and core.lock_cmd[0] is True
    assert core.slot_state(1)["state"] == "quarantined"
    assert core.journal()["inventory"][0][4] is True  # held: the journal says a battery is there


def test_a_battery_below_0_degc_is_accepted_but_not_charged_until_3_degc():
    core = Core("cab-1", 4)
    rig = Rig(core)
    rig.world.place(1, Battery("C-1", soc=50, temp=-5))
    rig.run(2000)
    assert core.slot_state(1)["state"] == "charge_paused" and core.charge_ma[0] == 0
    rig.world.slots[0].battery.temp_dc = 29
    rig.run(300)
    assert core.charge_ma[0] == 0
    rig.world.slots[0].battery.temp_dc = 30
    rig.run(300)
    assert core.charge_ma[0] > 0


# -- hold_swaps: no new swap while the shell holds them ---------------------------------------------------
def test_a_held_cabinet_refuses_start_swap_and_opens_no_door():
    rig = settled(0)
    rig.core.hold("event outbox full (broker unreachable)")
    ack = rig.cmd("start_swap", id_token="t")
    assert (ack["ok"], ack["error"], ack["detail"]) == (False, "busy",
                                                         "event outbox full (broker unreachable)")
    rig.run(500)
    assert all(rig.core.lock_cmd) and rig.core.session is None and not rig.of("SwapStarted")
    rig.core.hold(None)
    assert rig.cmd("start_swap", id_token="t")["ok"] is True


def test_a_hold_lets_an_open_swap_finish():
    rig = settled(0)
    rig.cmd("start_swap", id_token="t")
    rig.core.hold("event outbox full (broker unreachable)")
    rider_inserts(rig, Battery("R-1", soc=20), wait_ms=0)
    ms_until(rig, lambda: rig.core.session.phase == "dispensing", 5000)
    out = rig.core.session.slot_out
    rig.run(300)
    rig.world.open_door(out)
    rig.world.take(out)
    rig.world.close_door(out)
    rig.run(300)
    assert rig.of("SwapCompleted")


# -- the clocks an event carries ------------------------------------------------------------------
def test_uptime_counts_every_whole_second_at_its_end_and_never_drifts():
    rig = Rig(Core("cab-1", 4))
    rig.run(950)
    assert (rig.core.up_s, rig.core.up_ms()) == (0, 950)
    rig.tick()  # 1000 ms exactly
    assert (rig.core.up_s, rig.core.up_ms()) == (1, 1000)
    rig.run(99_000)
    assert (rig.core.up_s, rig.core.up_ms()) == (100, 100_000)


def test_events_carry_the_wall_time_of_the_tick_that_made_them_or_null():
    rig = stocked_rig()
    wall = 1_764_547_200
    rig.now += 50
    rig.world.step(rig.now)
    rig.core.tick(rig.now, wall)
    a = rig.cmd("start_swap", id_token="t")
    assert a["ok"] and rig.core.events == [] and rig.of("SwapStarted")[-1]["ts"] == wall
    assert rig.core.telemetry()["ts"] == wall
    rig.tick()  # a tick without the wall clock (not synced): events say so
    rig.cmd("cancel_swap")
    assert rig.of("SwapAborted")[-1]["ts"] is None


# -- a slot's switches unreadable, then readable again ---------------------------------------------
def _faults(rig):
    return [(e["type"], e["code"]) for e in rig.events if e["type"] in ("Fault", "FaultCleared")]


def test_a_glitch_of_the_switches_shorter_than_500_ms_raises_and_clears_nothing():
    rig = settled(0)
    rig.world.slots[3].io_fault = True
    rig.run(400)
    rig.world.slots[3].io_fault = False
    rig.run(500)
    assert _faults(rig) == []


def test_unreadable_switches_neither_hide_nor_clear_a_latched_jam():
    rig = settled(0, full=1, half=0)
    ws = rig.world.slots[1]
    ws.locked = False
    ws.jammed = True
    rig.run(3000)
    ws.io_fault = True
    rig.run(1000)
    assert rig.core.slot_state(2)["faults"] == ["lock_jam", "slot_io"]
    ws.io_fault = False
    rig.run(500)
    assert _faults(rig) == [("Fault", "lock_jam"), ("Fault", "slot_io"), ("FaultCleared", "slot_io")]
    assert rig.core.slot_state(2)["faults"] == ["lock_jam"]


def test_a_door_forced_in_the_tick_after_the_switches_come_back_is_a_break_in():
    rig = settled(0)
    ws = rig.world.slots[0]
    ws.io_fault = True
    rig.run(1000)
    ws.io_fault = False
    rig.tick()  # readable again: the door reads shut and locked
    assert rig.world.open_door(1, force=True)
    rig.tick()
    assert [e["slot"] for e in rig.of("DoorForced")] == [1]


def test_a_pack_gone_silent_keeps_its_slots_sensor_fault_beside_the_link_fault():
    rig = settled(0, full=0, half=1)
    ws = rig.world.slots[0]
    ws.sensor = 1  # the slot's thermistor opens
    rig.run(200)
    assert rig.core.slot_state(1)["faults"] == ["temp_sensor_open"]
    ws.bms_dead = True
    rig.run(6000)  # past bms_lost_ms
    assert rig.core.slot_state(1)["faults"] == ["temp_sensor_open", "bms_link"]
    assert _faults(rig) == [("Fault", "temp_sensor_open"), ("Fault", "bms_link")]


@pytest.mark.parametrize("phase", ["P_AWAITING", "P_DISPENSING", "P_REJECTED"])
def test_a_slot_left_in_a_session_phase_with_no_session_is_locked_and_looked_at_again(phase):
    """State that cannot arise normally (a journal from another version, a bug elsewhere): the
    slot is made safe at its next evaluation, its lock commanded shut and its contents identified
    afresh."""
    rig = settled(0, full=1, half=1)
    for n in (2, 5):  # one holding a pack, one empty
        s = rig.core.slots[n - 1]
        s.phase = getattr(sl, phase)
        s.command_lock(False, rig.now)
        ws = rig.world.slots[n - 1]
        ws.locked = ws.lock_target = False  # its bolt drawn back: it has to travel shut
        ws.lock_t = rig.now
    rig.run(1000)
    assert rig.core.session is None
    assert rig.core.slot_state(2)["state"] in ("identifying", "charging", "ready")
    assert rig.core.slot_state(2)["lock"] == "locked"
    assert rig.core.slot_state(5)["state"] == "empty" and rig.core.slot_state(5)["lock"] == "locked"
    assert rig.core.lock_cmd[1] and rig.core.lock_cmd[4]


# -- outputs, wear and retirement where two things happen in one tick ---------------------------------
def test_two_charging_packs_gone_in_one_tick_both_switch_their_chargers_off():
    # The shell drives only the slots the core flags (take_outputs): each charger that has to
    # stop is flagged, not just the last one the tick looked at.
    rig = settled(0, full=0, half=3)
    assert [rig.core.charge_ma[i] > 0 for i in range(3)] == [True, True, True]
    rig.core.take_outputs()
    rig.world.slots[0].battery = None
    rig.world.slots[2].battery = None
    rig.tick()
    assert rig.core.charge_ma[0] == 0 and rig.core.charge_ma[2] == 0 and rig.core.charge_ma[1] > 0
    outs = rig.core.take_outputs()
    assert outs & (1 << 1) and outs & (1 << 3)
    assert sorted(e["slot"] for e in rig.of("ChargeStopped")) == [1, 3]


def test_an_overheat_counts_once_against_the_pack_and_nothing_else():
    # The wear ledger: BMS faults in the low byte, rule 4's overheats above it (tukar.packs).
    rig = settled(0, full=1, half=1)
    rig.world.slots[1].battery.temp_dc = 610
    rig.run(500)
    assert rig.core.slot_state(2)["reason"] == "overtemp"
    assert rig.core.journal()["wear"][:2] == [0, 256]


def test_an_overheat_while_the_slots_switches_are_unreadable_counts_once_against_the_pack():
    rig = settled(0, full=1, half=1)
    rig.world.slots[1].io_fault = True
    rig.world.slots[1].battery.temp_dc = 610
    rig.run(300)
    assert rig.core.slots[1].quarantine == "overtemp"
    assert rig.core.journal()["wear"][:2] == [0, 256]



def test_a_swap_in_a_two_slot_cabinet_under_the_multi_rate_tick_hands_out_the_quiet_slots_pack():
    # The shell's mask names only the rider's slot (the other is quiet: nothing sampled there);
    # the session's dispense slot is taken into the tick's evaluation when it is chosen.
    rig = stocked_rig(slots=2, full=0, half=0)
    rig.world.place(2, Battery("F-02", soc=100))
    rig.run(3000)
    assert rig.core.slot_state(2)["state"] == "ready"
    assert rig.cmd("start_swap", id_token="t")["ok"]
    n = rig.core.session.slot_in

    def step(mask):
        _masked_step(rig, mask)

    for _ in range(6):
        step(1 << n)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    for _ in range(60):
        step(1 << n)
        if rig.core.session.slot_out:
            break
    assert rig.core.session.slot_out == 2 and not rig.core.lock_cmd[1]
    for _ in range(6):
        step(1 << n)
    assert rig.world.open_door(2) and rig.world.take(2).serial == "F-02"
    rig.world.close_door(2)
    for _ in range(20):
        step(1 << 2)
    done = rig.of("SwapCompleted")
    assert done and done[0]["battery_out"] == "F-02" and rig.core.session is None


# -- a slot's own steps outside a session: identification, held packs, maintenance ------------------
def test_a_pack_taken_out_while_it_is_being_identified_leaves_the_slot_empty_and_in_use():
    rig = stocked_rig(slots=2, full=0, half=0)
    rig.world.place(1, Battery("D-1"))
    rig.world.slots[0].bms_dead = True  # no reading yet: identification waits up to 3 s
    rig.run(1000)
    assert rig.core.slot_state(1)["state"] == "identifying"
    rig.world.slots[0].battery = None
    rig.run(500)
    assert rig.core.slot_state(1)["state"] == "empty"
    assert not rig.of("Quarantined") and not rig.of("BatteryMissing")


def _masked_step(rig, mask):
    """One multi-rate tick in which the shell saw only the slots of `mask` change."""
    from tukar.clock import wrap_add
    rig.now = wrap_add(rig.now, rig.tick_ms)
    rig.world.step(rig.now)
    rig.core.step(rig.now, mask)
    rig.events.extend(rig.core.events)
    rig.core.events.clear()


def test_a_refused_pack_held_behind_its_shut_door_and_then_stolen_is_missing():
    # Refused at its identification behind a shut door, the pack is held under its BMS's serial;
    # the slot then goes quiet (nothing sampled there) until its door is forced and it is taken.
    rig = stocked_rig(slots=2, full=0, half=0)
    rig.world.place(1, Battery("X-9", profile="other72v"))
    for _ in range(100):
        rig.tick()
        if rig.of("Quarantined"):
            break
    assert rig.of("Quarantined")[0]["reason"] == "unknown_profile"
    for _ in range(5):
        _masked_step(rig, 0)
    assert rig.world.open_door(1, force=True)
    _masked_step(rig, 1 << 1)
    rig.world.take(1)
    _masked_step(rig, 1 << 1)
    assert [(e["slot"], e["serial"]) for e in rig.of("BatteryMissing")] == [(1, "X-9")]


def _rider_leaves_a_hot_pack_in_the_open_slot(rig):
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=40, temp=65))
    rig.run(300)
    assert rig.core.slots[n - 1].quarantine == "overtemp" and rig.core.session is None
    rig.run(500)  # the door still open
    return n


def test_a_hot_pack_the_rider_takes_back_before_the_door_shuts_simply_left():
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _rider_leaves_a_hot_pack_in_the_open_slot(rig)
    rig.world.take(n)
    rig.world.close_door(n)
    rig.run(500)
    assert not rig.of("BatteryMissing")
    assert rig.core.slot_state(n)["battery"] is None


def test_a_hot_pack_left_behind_a_shut_door_and_then_stolen_is_missing():
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _rider_leaves_a_hot_pack_in_the_open_slot(rig)
    rig.world.close_door(n)
    rig.run(1000)
    assert rig.world.open_door(n, force=True)
    rig.run(100)
    rig.world.take(n)
    rig.run(300)
    assert [(e["slot"], e["serial"]) for e in rig.of("BatteryMissing")] == [(n, "R-1")]


def test_a_retired_pack_taken_from_its_slot_releases_the_slot():
    rig = stocked_rig(slots=2, full=1, half=0)
    rig.cmd("retire", serial="F-01")
    rig.run(500)
    assert rig.core.slot_state(1)["reason"] == "retired"
    assert rig.world.open_door(1, force=True)
    rig.run(100)
    rig.world.take(1)
    rig.run(300)
    assert [(e["slot"], e["reason"]) for e in rig.of("QuarantineReleased")] == [(1, "retired")]
    assert rig.core.slots[0].quarantine is None


@pytest.mark.parametrize("leave_a_pack", [False, True])
def test_a_slot_shut_after_maintenance_is_published_as_what_it_holds_at_every_tick(leave_a_pack):
    rig = stocked_rig(slots=2, full=0, half=0)
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("open_slot", slot=1)["ok"]
    rig.run(300)
    assert rig.world.open_door(1)
    rig.run(100)
    if leave_a_pack:
        rig.world.insert(1, Battery("M-1"))
    rig.world.close_door(1)
    seen = set()
    for _ in range(40):
        rig.tick()
        seen.add(rig.core.slot_state(1)["state"])
    assert seen == ({"identifying", "charging"} if leave_a_pack else {"empty"}), seen


def test_a_rider_slot_that_overheats_while_its_switches_are_unreadable_is_locked_and_supervised():
    # Rule 4 needs no switch: the slot's own sensor reads 65 degC while its expander is silent.
    # The swap ends, the lock is commanded shut at that tick, and once the switches read again the
    # bolt is supervised from that command (rule 8), the cabinet's tick never failing.
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    assert not rig.core.lock_cmd[n - 1]
    ws = rig.world.slots[n - 1]
    ws.io_fault = True
    ws.jammed = True  # and the bolt, drawn back for the rider, will not go out again
    ws.slot_temp_dc = 650
    rig.run(200)
    assert rig.core.slots[n - 1].quarantine == "overtemp"
    assert rig.core.session is None and rig.core.lock_cmd[n - 1]
    ws.io_fault = False
    rig.run(2000)
    assert ("Fault", n, "lock_jam") in [(e["type"], e.get("slot"), e.get("code")) for e in rig.events]
    assert rig.core.slot_state(n)["state"] == "quarantined"


def test_a_core_made_without_a_reason_boots_as_powered_on():
    rig = Rig(Core("cab-1", 2))
    rig.tick()
    assert [e["reason"] for e in rig.of("Boot")] == ["power_on"]

def test_a_door_found_open_at_boot_behind_its_bolt_was_forced_while_the_power_was_out():
    # Doors are shut and bolted whenever nothing opened them (rule 9 at every boot): one found open
    # with its bolt out was opened past the bolt while the cabinet was dark. One whose bolt is in
    # was unlocked when the power went (a swap's or a technician's door): no break-in.
    rig = Rig(Core("cab-1", 3))
    rig.world.slots[0].door_closed = False
    ws = rig.world.slots[1]
    ws.door_closed = False
    ws.locked = ws.lock_target = False
    ws.lock_t = rig.now
    rig.run(1000)
    assert [e["slot"] for e in rig.of("DoorForced")] == [1]
    assert "door_forced" in rig.core.cabinet_state()["alarms"]
    rig.world.close_door(1)
    rig.run(200)
    assert rig.core.slot_state(1)["state"] == "empty"
    assert "door_forced" not in rig.core.cabinet_state()["alarms"]  # slot 2's door: still open


def test_a_pack_at_1_degc_charges_again_after_a_power_cut():
    # Rule 2's hold is the slot's memory of a pack that left the window; a power cut leaves none.
    rig = stocked_rig(slots=2, full=0, half=0)
    rig.world.place(1, Battery("C-1", soc=40, temp=1))
    rig.run(2000)
    assert rig.core.slot_state(1)["state"] == "charging"
    journal = json.loads(json.dumps(rig.core.journal()))
    rig.core = rig.world.core = Core("cab-1", 2, journal=journal, boot_reason="power_loss")
    rig.core.now = rig.now
    rig.run(3000)
    assert rig.core.slot_state(1)["state"] == "charging"


# -- the core's clock and its schedule -------------------------------------------------------------
def test_a_core_made_without_a_time_counts_its_uptime_from_0():
    """`now` defaults to 0, the start of ticks_ms: a first tick at 1000 ms is a second up."""
    core = Core("cab-1", 2)
    core.tick(1000)
    boot = [e for e in core.events if e["type"] == "Boot"]
    assert [e["up_ms"] for e in boot] == [1000]
    assert core.up_s == 1


def test_a_settled_cabinet_watches_nothing_until_a_lock_moves():
    """The multi-rate tick's rest (docs/core.md, the schedule): with its packs identified and
    charging and no lock in motion, the core watches no slot tick by tick (Core.watch, which the
    shell reads to let the loop stop for a TLS handshake: ControlCycle.may_stand_still); a door
    commanded open is watched until its bolt has moved."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.run(1000)
    assert rig.core.watch == 0
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    assert rig.cmd("open_slot", slot=5)["ok"]
    rig.tick()
    assert rig.core.watch == 1 << 5
    rig.run(1000)
    assert rig.core.watch == 0


def _counted(core):
    """The cabinet state's counts, worked out again from the slots' own published states."""
    states = [core.slot_state(n) for n in range(1, core.n_slots + 1)]
    return {"ready": sum(1 for s in states if s["dispensable"]),
            "empty": sum(1 for s in states if s["state"] == "empty"),
            "charging": sum(1 for s in states if s["charger"]["on"]),
            "faulted": sum(1 for s in states if s["state"] == "fault")}


def test_the_cabinet_s_counts_are_its_slots_counted_from_the_boot_on():
    """mqtt.md's cabinet state: ready, empty, charging and faulted are what the slots' own states
    say, each from 0 at the boot (the counts are kept by difference, slot by slot)."""
    rig = stocked_rig(slots=8, full=2, half=2)
    cab = rig.core.cabinet_state()
    assert {k: cab[k] for k in ("ready", "empty", "charging", "faulted")} == _counted(rig.core)
    assert (cab["empty"], cab["faulted"]) == (4, 0) and cab["charging"] >= 2
    rig.world.slots[7].io_fault = True  # an empty slot's switches stop answering: a slot fault
    rig.run(1000)
    cab = rig.core.cabinet_state()
    assert {k: cab[k] for k in ("ready", "empty", "charging", "faulted")} == _counted(rig.core)
    assert (cab["empty"], cab["faulted"]) == (3, 1)
