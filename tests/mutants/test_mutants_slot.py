"""A slot's `battery` object as mqtt.md publishes it (slot state, BatteryIn, BatteryRejected), where
mutation testing found it unchecked: every measurement in the contract's units, the serial and
profile the BMS gives for a battery the cabinet has not accepted, and, before the BMS has named
the battery, what the inventory lists. Every event and state is checked against the schemas."""
import json

import pytest
from coreworld import Battery, Rig, rider_inserts, stocked_rig

from tukar.core import Core
from tukar_tools import schemas


pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")


def reboot(rig):
    """A power cut: a new core from what the journal holds on flash, the same world."""
    journal = json.loads(json.dumps(rig.core.journal()))
    core = Core(rig.core.id, rig.core.n_slots, journal=journal, boot_reason="power_loss")
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    return core


def test_a_charging_slot_publishes_its_bms_reading_in_the_contracts_units():
    # mqtt.md's slot state: soc and soh in percent, temp_c in degC, voltage_v in V, current_a in A.
    rig = Rig(Core("cab-1", 2))
    b = Battery("B-0042", soh=96, cycles=211, req_ma=8100)
    b.soc_pm = 635  # 63.5 %
    b.temp_dc = 295  # 29.5 degC
    rig.world.place(1, b)
    rig.run(1000)
    st = rig.core.slot_state(1)
    assert st["state"] == "charging" and st["charger"]["current_a"] == 8.1
    assert st["battery"] == {"serial": "B-0042", "profile": "ref48v", "soc": 63.5, "soh": 96,
                             "temp_c": 29.5, "voltage_v": b.voltage_mv() / 1000,
                             "current_a": 8.1, "cycles": 211, "faults": []}


def test_a_refused_battery_is_reported_with_the_serial_and_profile_its_bms_gives():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("X-9", profile="other72v"), wait_ms=1000)
    r = rig.of("BatteryRejected")[-1]
    assert r["reason"] == "unknown_profile"
    assert (r["battery"]["serial"], r["battery"]["profile"]) == ("X-9", "other72v")


def test_a_battery_whose_bms_names_no_profile_is_refused_with_a_null_profile():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("X-9", profile=None), wait_ms=1000)
    r = rig.of("BatteryRejected")[-1]
    assert r["reason"] == "unknown_profile"
    assert (r["battery"]["serial"], r["battery"]["profile"]) == ("X-9", None)
    assert rig.core.slot_state(n)["battery"]["profile"] is None


def test_after_a_reboot_a_battery_its_bms_has_not_read_shows_the_inventorys_serial_and_profile():
    # The battery object's measurements are null while its BMS cannot be read (the schema).
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.world.slots[0].bms_dead = True
    reboot(rig)
    rig.run(500)
    assert rig.core.slot_state(1)["battery"] == {
        "serial": "F-01", "profile": "ref48v", "soc": None, "soh": None, "temp_c": None,
        "voltage_v": None, "current_a": None, "cycles": None, "faults": []}


def test_after_a_reboot_a_battery_read_before_its_serial_arrives_shows_the_inventorys_name():
    # A CAN BMS's serial and profile span frames: the first readings carry the measurements only.
    rig = stocked_rig(slots=4, full=1, half=0)
    b = rig.world.slots[0].battery
    b.serial = None
    b.profile = None
    reboot(rig)
    rig.run(500)
    v = rig.core.slot_state(1)["battery"]
    assert (v["serial"], v["profile"], v["soc"]) == ("F-01", "ref48v", 95.0)


# -- rule 1's window and rule 2's hysteresis, to the tenth of a degree -------------------------------
def _charging_rig(profile, soc=60, temp=25):
    from tukar.profile import load_dir
    from tukar_tools.hostenv import ROOT  # the checkout's, also where make mutate runs a copy of tests/
    shipped = load_dir(str(ROOT / "firmware" / "profiles"))
    rig = Rig(Core("cab-1", 4, profiles=shipped))
    rig.world.place(1, Battery("W-1", soc=soc, temp=temp, profile=profile))
    rig.run(1000)
    return rig, rig.world.slots[0].battery


def _at(rig, b, temp_dc=None, soc_pm=None):
    if temp_dc is not None:
        b.temp_dc = temp_dc
    if soc_pm is not None:
        b.soc_pm = soc_pm
    rig.run(300)  # fresh readings at the BMS period
    return rig.core.charge_ma[0]


@pytest.mark.parametrize("profile, lo, hi", [("ref48v", 0, 450), ("pack72v", 50, 400)])
def test_charging_holds_outside_the_window_and_resumes_3_degc_inside_it(profile, lo, hi):
    """The window is the config's 0..45 degC narrowed by the profile (pack72v: 5..40 degC); its
    edges charge; a tenth of a degree past one holds until 3.0 degC back inside (rule 2)."""
    rig, b = _charging_rig(profile)
    assert rig.core.charge_ma[0] > 0
    assert _at(rig, b, temp_dc=hi) > 0  # the edge itself charges
    assert _at(rig, b, temp_dc=hi + 1) == 0
    assert rig.core.slots[0].reason == "temperature"
    assert _at(rig, b, temp_dc=hi - 29) == 0  # 2.9 degC inside: still held
    assert _at(rig, b, temp_dc=hi - 30) > 0
    assert _at(rig, b, temp_dc=lo) > 0
    assert _at(rig, b, temp_dc=lo - 1) == 0
    assert _at(rig, b, temp_dc=lo + 29) == 0
    assert _at(rig, b, temp_dc=lo + 30) > 0


def test_a_full_battery_stops_at_100_percent_and_tops_up_below_97():
    rig, b = _charging_rig("ref48v", soc=99)
    assert _at(rig, b, soc_pm=999) > 0
    assert _at(rig, b, soc_pm=1000) == 0
    assert rig.core.slots[0].reason == "full"
    assert _at(rig, b, soc_pm=970) == 0  # 97.0 %: not below it
    assert _at(rig, b, soc_pm=969) > 0


def test_the_full_flag_or_100_percent_each_stop_the_charge_alone():
    rig, b = _charging_rig("ref48v", soc=99)
    b.says_full = True  # the BMS calls it full at 99.5 %
    assert _at(rig, b, soc_pm=995) == 0 and rig.core.slots[0].reason == "full"
    b.says_full = False  # a BMS that never raises the flag
    assert _at(rig, b, soc_pm=960) > 0
    assert _at(rig, b, soc_pm=1000) == 0 and rig.core.slots[0].reason == "full"


def test_a_temperature_hold_and_a_full_hold_each_keep_their_own_end():
    # Full, then too hot: cooled back inside, it stays held until below 97 %.
    rig, b = _charging_rig("ref48v", soc=99)
    assert _at(rig, b, soc_pm=1000) == 0
    assert _at(rig, b, soc_pm=980) == 0
    assert _at(rig, b, temp_dc=451) == 0 and rig.core.slots[0].reason == "temperature"
    assert _at(rig, b, temp_dc=400) == 0 and rig.core.slots[0].reason == "full"
    assert _at(rig, b, soc_pm=969) > 0
    # Too hot, then full: below 97 % again, it stays held until 3 degC inside the window.
    assert _at(rig, b, temp_dc=451) == 0
    assert _at(rig, b, temp_dc=430, soc_pm=1000) == 0
    assert _at(rig, b, soc_pm=960) == 0 and rig.core.slots[0].reason == "temperature"
    assert _at(rig, b, temp_dc=420) > 0


def test_a_temperature_hold_ending_does_not_make_a_97_percent_battery_full():
    rig, b = _charging_rig("ref48v", soc=97)
    assert _at(rig, b, soc_pm=975) > 0  # never full: it charges
    assert _at(rig, b, temp_dc=451) == 0
    assert _at(rig, b, temp_dc=400) > 0


# -- why a charger stops, as ChargeStopped and the paused slot's state say -------------------------
def _smoke(rig, n):
    rig.world.smoke = True


def _switches_unreadable(rig, n):
    rig.world.slots[n - 1].io_fault = True


def _quarantined(rig, n):
    rig.cmd("quarantine", slot=n, reason="inspection")


def _opened_for_maintenance(rig, n):
    rig.cmd("set_mode", mode="maintenance")
    rig.cmd("open_slot", slot=n)


def _door_forced_open(rig, n):
    assert rig.world.open_door(n, force=True)  # the pack still inside


def _taken_by_force(rig, n):
    assert rig.world.open_door(n, force=True)
    rig.world.take(n)


@pytest.mark.parametrize("cause, reason, state, state_reason", [
    (_smoke, "emergency", "charge_paused", "emergency"),
    (_switches_unreadable, "slot_io", "charge_paused", "slot_io"),
    (_quarantined, "quarantine", "quarantined", "inspection"),
    (_opened_for_maintenance, "door", "maintenance_open", None),
    (_door_forced_open, "door", "charge_paused", "door"),
    (_taken_by_force, "no_battery", "empty", None),
], ids=lambda x: getattr(x, "__name__", None) if callable(x) else None)
def test_a_charge_stopped_names_why(cause, reason, state, state_reason):
    rig = stocked_rig()
    n = 4
    assert rig.core.charge_ma[n - 1] > 0
    cause(rig, n)
    rig.run(500)
    assert [e["reason"] for e in rig.of("ChargeStopped") if e["slot"] == n] == [reason]
    st = rig.core.slot_state(n)
    assert (st["state"], st["reason"]) == (state, state_reason)
