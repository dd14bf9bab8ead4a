"""One slot's rules taken alone (tukar.slot.Slot over its inputs), where mutation testing found a
method's own contract unchecked: the lock's supervision (rule 8) when commands repeat, when the
bolt drifts and when a jam meets a command the bolt already matches; which temperatures a slot
trusts (rule 5); and rule 1's reasons, each in words, in the order the contract gives them."""
import pytest

from tukar import config as cf
from tukar import slot as sl
from tukar.inputs import SENSOR_OPEN, SENSOR_SHORT, SlotInputs

T0 = 10_000
LIM = cf.Limits(cf.defaults())


def _slot(locked=True):
    s = sl.Slot(1, SlotInputs())
    s.inp.locked = locked
    s.lock_cmd = locked
    return s


def _jam(s, t):
    """Command the lock the other way and hold the bolt where it is until rule 8 declares a jam."""
    s.command_lock(not s.inp.locked, t)
    assert s.supervise_lock(t + cf.LOCK_TIMEOUT_MS) == 0 and s.lock_pulse == 1  # the retry
    assert s.supervise_lock(t + 2 * cf.LOCK_TIMEOUT_MS) == 1
    assert s.faults & sl.LOCK_JAM
    return t + 2 * cf.LOCK_TIMEOUT_MS


# -- rule 8: the lock's supervision -------------------------------------------------------------------
def test_a_bolt_still_in_motion_is_not_confirmed_even_where_its_feedback_already_agrees():
    s = _slot(locked=True)
    s.command_lock(False, T0)
    s.inp.locked = False  # the feedback agrees, but supervision has not seen it yet
    assert not s.lock_confirmed()
    assert s.supervise_lock(T0 + 100) == 0
    assert s.lock_confirmed()


def test_a_bolt_that_drifted_from_its_command_is_not_confirmed_before_supervision_sees_it():
    s = _slot(locked=True)
    s.inp.locked = False  # nothing pending, the bolt out of place
    assert not s.lock_confirmed()
    assert not s.is_free()


def test_the_same_command_given_again_while_the_bolt_moves_does_not_put_off_its_retry_or_jam():
    s = _slot(locked=True)
    s.command_lock(False, T0)
    s.command_lock(False, T0 + 300)  # the same level again, the bolt still locked
    assert s.supervise_lock(T0 + cf.LOCK_TIMEOUT_MS) == 0
    assert s.lock_pulse == 1  # retried 500 ms after the first command, not after the second
    s.command_lock(False, T0 + 700)
    assert s.supervise_lock(T0 + 2 * cf.LOCK_TIMEOUT_MS) == 1


def test_a_command_given_again_to_a_drifted_bolt_restarts_supervision_from_that_command():
    s = _slot(locked=True)
    s.inp.locked = False  # drifted out
    s.command_lock(True, T0)  # the same level: the driver is told again, and timed from now
    assert s.lock_pending and s.lock_t == T0
    assert s.supervise_lock(T0 + cf.LOCK_TIMEOUT_MS - 1) == 0 and s.lock_pulse == 0
    assert s.supervise_lock(T0 + cf.LOCK_TIMEOUT_MS) == 0 and s.lock_pulse == 1


def test_a_jam_stays_when_the_next_command_asks_for_where_the_stuck_bolt_already_is():
    # Jammed unlocked while locking; told to unlock, the bolt "arrives" without moving.
    s = _slot(locked=False)
    t = _jam(s, T0)
    s.command_lock(False, t + 100)
    assert s.supervise_lock(t + 100) == 0
    assert s.faults & sl.LOCK_JAM
    # Told to lock again, the bolt moves this time: the jam is gone, reported as cleared (-1).
    s.command_lock(True, t + 200)
    s.inp.locked = True
    assert s.supervise_lock(t + 300) == -1
    assert not s.faults & sl.LOCK_JAM


def test_a_jammed_bolt_that_moves_after_its_retry_clears_the_jam():
    # Jammed locked while unlocking, then told to unlock again: it moves only after the retry.
    s = _slot(locked=True)
    t = _jam(s, T0)
    s.command_lock(True, t + 100)  # the bolt already is locked: no movement, still jammed
    assert s.supervise_lock(t + 100) == 0 and s.faults & sl.LOCK_JAM
    s.command_lock(False, t + 200)
    assert s.supervise_lock(t + 200 + cf.LOCK_TIMEOUT_MS) == 0 and s.lock_pulse == 2
    s.inp.locked = False
    assert s.supervise_lock(t + 300 + cf.LOCK_TIMEOUT_MS) == -1
    assert not s.faults & sl.LOCK_JAM


def test_a_jam_adds_to_the_slots_other_faults():
    s = _slot(locked=True)
    s.faults = sl.TEMP_MISMATCH | sl.BMS_LINK
    _jam(s, T0)
    assert s.faults == sl.TEMP_MISMATCH | sl.BMS_LINK | sl.LOCK_JAM


# -- rule 5: the temperatures a slot trusts -------------------------------------------------------
def _present(s, bms_temp_dc=250, age_ms=0, now=T0):
    s.inp.present = True
    b = s.inp.bms
    b.valid = True
    b.t_ms = now - age_ms
    b.temp_dc = bms_temp_dc


@pytest.mark.parametrize("sensor, reading", [(SENSOR_OPEN, -400), (SENSOR_SHORT, 1500)])
def test_a_faulted_slot_sensors_reading_is_not_taken_as_the_slots_temperature(sensor, reading):
    # An open thermistor reads -40 degC, a shorted one off the top of the scale: neither is the
    # battery's temperature; the fresh BMS reading is.
    s = _slot()
    _present(s, bms_temp_dc=310)
    s.inp.sensor = sensor
    s.inp.temp_dc = reading
    s.observe(T0, LIM.fresh_ms)
    assert s.hot == 310


def test_a_stale_bms_reading_raises_no_mismatch_with_the_slot_sensor():
    # Rule 5 compares the sensor with a fresh BMS reading only: a silent BMS's last word, 20 degC
    # off, is not a mismatch however long it lasts (the silence is the BMS rule's).
    s = _slot()
    _present(s, bms_temp_dc=450, age_ms=LIM.fresh_ms + 1)
    s.inp.temp_dc = 250
    for dt in (0, 1000, 2000, 5000):
        s.observe(T0 + dt, LIM.fresh_ms)
        assert not s.fresh
        assert s.sensor_faults(T0 + dt) == 0
    assert s.mismatch_since is None


def test_a_fresh_bms_reading_20_degc_off_the_sensor_is_a_mismatch_after_a_second():
    s = _slot()
    _present(s, bms_temp_dc=450)
    s.inp.temp_dc = 250
    s.observe(T0, LIM.fresh_ms)
    assert s.sensor_faults(T0) == 0
    s.inp.bms.t_ms = T0 + cf.SENSOR_MISMATCH_MS
    s.observe(T0 + cf.SENSOR_MISMATCH_MS, LIM.fresh_ms)
    assert s.sensor_faults(T0 + cf.SENSOR_MISMATCH_MS) == sl.TEMP_MISMATCH


def test_a_reading_that_arrived_in_the_very_tick_a_battery_went_in_belongs_to_it():
    s = _slot()
    _present(s, age_ms=0)
    assert s.bms_since(T0)
    assert not s.bms_since(T0 + 1)


# -- rule 1: the reasons, each in words -------------------------------------------------------------
def _stored(s, soc_pm=500, temp_dc=250, req_ma=-1):
    _present(s, bms_temp_dc=temp_dc)
    s.phase = sl.P_STORED
    s.accepted = True
    b = s.inp.bms
    b.soc_pm = soc_pm
    b.req_current_ma = req_ma
    s.observe(T0, LIM.fresh_ms)
    return s


def _decide(s):
    return s.charge_decision(T0, LIM, False, 250)


def test_a_stored_accepted_battery_charges_at_the_slot_limit_with_no_reason():
    s = _stored(_slot())
    s.reason = "full"
    assert _decide(s) == LIM.slot_limit_ma
    assert s.reason is None


def test_an_empty_slot_does_not_charge_for_want_of_a_battery():
    s = _slot()
    assert _decide(s) == 0
    assert s.reason == "no_battery"


@pytest.mark.parametrize("phase, accepted, lock_cmd, reason", [
    (sl.P_STORED, False, True, "not_accepted"),  # stored but not accepted
    (sl.P_IDENTIFYING, True, True, "not_accepted"),  # accepted but not yet stored
    (sl.P_IDENTIFYING, False, True, "not_accepted"),
    (sl.P_AWAITING, False, False, "door"),  # its door unlocked for a rider
    (sl.P_DISPENSING, True, False, "door"),
])
def test_a_battery_not_stored_and_accepted_does_not_charge(phase, accepted, lock_cmd, reason):
    s = _stored(_slot())
    s.phase = phase
    s.accepted = accepted
    s.lock_cmd = lock_cmd
    assert _decide(s) == 0
    assert s.reason == reason


def test_a_stored_battery_whose_bolt_is_not_in_does_not_charge():
    # Rule 1: door closed AND locked AND the bolt confirmed: the command alone is not enough.
    s = _stored(_slot())
    s.inp.locked = False
    assert _decide(s) == 0
    assert s.reason == "door"


def test_a_battery_that_asks_for_no_current_is_not_charged_and_says_so():
    s = _stored(_slot(), req_ma=0)
    assert _decide(s) == 0
    assert s.reason == "battery_request"


def test_a_battery_that_asks_for_a_single_milliamp_gets_it():
    s = _stored(_slot(), req_ma=1)
    assert _decide(s) == 1
    assert s.reason is None


# -- rule 6: dispensable from the configured SoC up ---------------------------------------------------
@pytest.mark.parametrize("soc_pm, ready", [(LIM.min_soc_pm - 1, False), (LIM.min_soc_pm, True),
                                           (1000, True)])
def test_a_stored_pack_is_dispensable_from_the_configured_soc_up(soc_pm, ready):
    s = _stored(_slot(), soc_pm=soc_pm)
    assert s.check_dispensable(T0, LIM) is ready
    assert s.dispensable is ready


def test_a_pack_that_asks_for_1_ma_is_charged_at_1_ma_and_its_slot_shows_charging():
    """The smallest current a BMS can ask for (its SBS ChargingCurrent, in mA) is still a charge:
    the slot is `charging`, not `ready` or `paused`."""
    s = _stored(_slot(), req_ma=1)
    s.charge_ma = _decide(s)
    assert s.charge_ma == 1 and s.reason is None
    assert s.derive_state() == sl.CHARGING
