"""The cabinet rules and the core's edge where mutation testing found them unchecked: event ids
(docs/core.md: `<cabinet>-<boot>-<n>`), the emergency as a mode change and what it does to a door
open for maintenance, a new connection's republish surviving the tick the cabinet sensor fails,
and quarantine of a slot whose door is open (a battery swapped behind it, one
taken out, none there). Every event and state is checked against the contract's schemas."""
import pytest
from coreworld import Battery, Rig, stocked_rig

from tukar.clock import TICKS_PERIOD
from tukar.core import Core
from tukar.states import J_COUNTERS, J_INVENTORY, J_SESSION
from tukar_tools import schemas


pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")


def maintenance_open(rig, n):
    """Maintenance mode, slot n opened by the technician's command and its bolt drawn back."""
    assert rig.cmd("set_mode", mode="maintenance")["ok"] is True
    assert rig.cmd("open_slot", slot=n)["ok"] is True
    rig.run(300)
    assert rig.world.slots[n - 1].locked is False


# -- event ids -------------------------------------------------------------------------------------
def test_event_ids_are_the_cabinet_the_boot_count_and_the_event_count():
    core = Core("cab-7", 2)
    for code in ("a", "b", "c"):
        core.report_fault(code, "error")
    assert [e["id"] for e in core.events] == ["cab-7-1-1", "cab-7-1-2", "cab-7-1-3"]
    again = Core("cab-7", 2, journal=core.journal())  # a reboot: the counter goes on
    again.report_fault("d", "error")
    assert again.events[-1]["id"] == "cab-7-2-4"


def test_an_events_up_ms_is_the_milliseconds_since_boot_across_the_wrap():
    core = Core("cab-1", 2, now=TICKS_PERIOD - 1000)
    rig = Rig(core, start_ms=TICKS_PERIOD - 1000)
    rig.run(2500)  # the tick counter wraps 1 s in
    core.report_fault("flash", "warning")
    assert core.events[-1]["up_ms"] == 2500


# -- the emergency ---------------------------------------------------------------------------------
def test_an_emergency_is_a_mode_change_made_locally():
    rig = stocked_rig()
    rig.world.smoke = True
    rig.tick()
    assert rig.core.mode == "emergency"
    changes = rig.of("ModeChanged")
    assert len(changes) == 1
    assert (changes[0]["mode"], changes[0]["by"]) == ("emergency", "local")


def test_an_emergency_locks_a_slot_open_for_maintenance_and_identifies_its_battery_again():
    rig = stocked_rig(full=1, half=0)
    maintenance_open(rig, 1)
    rig.world.smoke = True
    rig.tick()
    assert rig.core.lock_cmd[0] is True  # rule 4: every door locked, in the tick
    rig.run(1000)
    assert rig.world.slots[0].locked is True and not rig.of("Fault")  # the bolt followed
    st = rig.core.slot_state(1)
    assert st["state"] != "maintenance_open" and st["battery"]["serial"] == "F-01"
    assert rig.core.charge_ma[0] == 0
    assert rig.core.journal()["inventory"][0][0] == "F-01"


def test_an_emergency_before_a_maintenance_door_has_unlocked_keeps_it_shut_and_identifies_again():
    rig = stocked_rig(full=1, half=0)
    assert rig.cmd("set_mode", mode="maintenance")["ok"] is True
    assert rig.cmd("open_slot", slot=1)["ok"] is True
    rig.world.smoke = True  # in the very next tick: the bolt has not moved yet
    rig.tick()
    assert rig.core.mode == "emergency" and rig.core.lock_cmd[0] is True
    rig.run(1000)
    assert rig.world.slots[0].locked is True
    st = rig.core.slot_state(1)
    assert st["state"] != "maintenance_open" and st["battery"]["serial"] == "F-01"


# -- a new connection republishes every state, whatever else its first tick brings -----------------
def test_a_new_connections_republish_is_kept_through_the_tick_the_cabinet_sensor_fails():
    rig = stocked_rig()
    rig.core.take_dirty()
    assert rig.core.connected(3) is True
    rig.world.cab_sensor = 1  # the cabinet thermistor opens
    rig.tick()
    assert rig.of("Fault")[-1]["code"] == "temp_sensor_open"
    assert rig.core.take_dirty() == (2 << 12) - 1


def test_a_new_connections_republish_is_kept_through_an_emergency_back_right_after_its_reset():
    rig = stocked_rig()
    rig.world.smoke = True
    rig.tick()
    rig.world.smoke = False
    rig.tick()
    rig.core.take_dirty()
    assert rig.core.connected(3) is True
    assert rig.cmd("reset_emergency")["ok"] is True
    rig.world.smoke = True  # back before the next tick: every slot is still stopped for emergency
    rig.tick()
    assert rig.core.mode == "emergency"
    assert rig.core.take_dirty() == (2 << 12) - 1


# -- quarantine of a slot whose door is open -------------------------------------------------------
def test_quarantining_a_slot_whose_battery_the_technician_swapped_reports_the_old_one_missing():
    rig = stocked_rig(full=1, half=0)
    maintenance_open(rig, 1)
    rig.world.open_door(1)
    assert rig.world.take(1).serial == "F-01"
    assert rig.world.insert(1, Battery("X-9", soc=50))
    rig.run(200)
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"] is True
    missing = rig.of("BatteryMissing")
    assert len(missing) == 1
    assert (missing[0]["slot"], missing[0]["serial"]) == (1, "F-01")
    assert rig.core.journal()["inventory"][0][0] == "X-9"  # what is held now, by its own serial


def test_a_battery_taken_out_of_a_slot_quarantined_with_its_door_open_simply_left():
    rig = stocked_rig(full=1, half=0)
    maintenance_open(rig, 1)
    rig.world.open_door(1)
    rig.tick()  # the core sees the door open
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"] is True
    assert rig.world.take(1).serial == "F-01"  # before the door shuts on it
    rig.world.close_door(1)
    rig.run(500)
    assert not rig.of("BatteryMissing")
    assert rig.core.slot_state(1)["battery"] is None
    assert rig.core.journal()["inventory"][0] == [None, None, False, "inspection", False]


def test_quarantining_an_empty_slot_open_for_maintenance_locks_it_and_leaves_it_empty():
    rig = stocked_rig(full=0, half=0)
    maintenance_open(rig, 1)
    a = rig.cmd("quarantine", slot=1, reason="broken hinge")
    assert (a["ok"], a["slot"]) == (True, 1)
    assert rig.core.slots[0].lock_cmd is True  # in the command, not a tick later
    rig.run(300)
    st = rig.core.slot_state(1)
    assert (st["state"], st["battery"], st["lock"]) == ("quarantined", None, "locked")
    assert rig.core.journal()["inventory"][0] == [None, None, False, "broken hinge", False]


def test_a_swap_ended_by_a_hot_battery_asks_to_persist_the_session_and_the_inventory():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.core.take_journal()
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20, temp=61))  # rule 4: >= 60 degC, quarantined
    while not rig.of("Quarantined"):
        rig.tick()
    assert rig.of("SwapAborted")[-1]["reason"] == "fault" and rig.core.session is None
    j = rig.core.take_journal()
    assert j & (J_SESSION | J_INVENTORY | J_COUNTERS) == J_SESSION | J_INVENTORY | J_COUNTERS
    assert rig.core.journal()["inventory"][n - 1][0] == "R-1"


def test_an_empty_slot_quarantined_for_maintenance_whose_switches_fail_at_once_stays_quarantined():
    rig = stocked_rig(full=0, half=0)
    maintenance_open(rig, 1)
    assert rig.cmd("quarantine", slot=1, reason="broken hinge")["ok"] is True
    rig.world.slots[0].io_fault = True  # its expander stops answering before the next tick
    rig.run(600)
    st = rig.core.slot_state(1)
    assert (st["state"], st["reason"], st["faults"]) == ("quarantined", "broken hinge", ["slot_io"])
    assert rig.core.slots[0].lock_cmd is True and rig.core.charge_ma[0] == 0


# -- a battery leaving the inventory is to be persisted --------------------------------------------
def test_a_battery_gone_from_behind_a_forced_door_asks_to_persist_the_inventory_and_the_counter():
    core = Core("cab-1", 4)
    rig = Rig(core)
    rig.world.place(1, Battery("F-01", soc=100))  # full: not charging
    rig.run(1000)
    assert rig.core.slot_state(1)["state"] == "ready"
    rig.core.take_journal()
    assert rig.world.open_door(1, force=True)  # a break-in
    assert rig.world.take(1).serial == "F-01"
    rig.tick()
    assert rig.of("DoorForced") and rig.of("BatteryMissing")[-1]["serial"] == "F-01"
    j = rig.core.take_journal()
    assert j & (J_INVENTORY | J_COUNTERS) == J_INVENTORY | J_COUNTERS
    assert rig.core.journal()["inventory"][0][0] is None


def test_a_held_battery_the_technician_takes_out_asks_to_persist_the_inventory():
    core = Core("cab-1", 4)
    rig = Rig(core)
    rig.world.place(1, Battery("C-1", soc=50, temp=-15))  # too cold: held, never accepted
    rig.run(2000)
    assert core.journal()["inventory"][0] == ["C-1", None, False, "temperature", True]
    maintenance_open(rig, 1)
    rig.world.open_door(1)
    rig.world.take(1)
    rig.tick()
    core.take_journal()
    rig.world.close_door(1)
    rig.tick()
    assert core.take_journal() & J_INVENTORY
    assert core.journal()["inventory"][0] == [None, None, False, "temperature", False]


@pytest.mark.parametrize("how", ["forced", "switch"])
def test_a_charging_pack_gone_between_two_samples_ends_its_charge_under_its_own_serial(how):
    """mqtt.md: ChargeStopped names its battery. A pack pulled through a forced door, or whose
    presence switch reads empty, was cleared from the inventory before the charge step ran, and
    its ChargeStopped went out with serial null (and its energy tied to no battery)."""
    rig = stocked_rig(full=0, half=1)
    rig.run(2000)
    assert rig.core.charge_ma[0] > 0
    if how == "forced":
        rig.world.open_door(1, force=True)
        rig.world.take(1)
    else:
        rig.world.slots[0].battery = None
    rig.tick()
    stop = rig.of("ChargeStopped")[-1]
    assert (stop["slot"], stop["serial"], stop["reason"]) == (1, "H-01", "no_battery")
    assert stop["energy_wh"] > 0
    assert rig.core.charge_ma[0] == 0 and len(rig.of("ChargeStopped")) == 1
    schemas.validate("event", dict(stop, seq=1))
