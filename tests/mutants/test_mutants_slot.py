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
