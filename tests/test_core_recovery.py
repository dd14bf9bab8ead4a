"""Persistence and boot-time reconciliation (cabinet.md): what the journal holds, and a power cut
at every tick of a swap reconciling to a safe state that loses no event and dispenses nothing twice."""
import json

import pytest
from coreworld import Battery, Rig, insert_until_dispensing, rider_inserts, stocked_rig
from invariants import check_history, check_tick

from tukar.core import Core


def reboot(rig, reason="power_loss"):
    journal = json.loads(json.dumps(rig.core.journal()))  # what LittleFS would hold
    for ws in rig.world.slots:  # fail-secure locks drop into the locked position without power
        ws.locked = True
        ws.lock_target = True
    core = Core(rig.core.id, rig.core.n_slots, journal=journal, boot_reason=reason)
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    return core


def swap_script(rig):
    """A rider's whole swap as one step per control tick, so a power cut can fall on any of them."""
    a = rig.cmd("start_swap", id_token="rider-1", request_id="req-1")
    assert a["ok"]
    n_in = a["slot"]
    yield
    for _ in range(6):
        yield
    rig.world.open_door(n_in)
    rig.world.insert(n_in, Battery("R-1", soc=12))
    yield
    rig.world.close_door(n_in)
    yield
    while rig.core.session is not None and rig.core.session.phase != "dispensing":
        yield
    for _ in range(6):
        yield
    n_out = rig.core.session.slot_out
    rig.world.open_door(n_out)
    yield
    rig.world.take(n_out)
    yield
    rig.world.close_door(n_out)
    for _ in range(6):
        yield


def full_swap_ticks():
    rig = stocked_rig(slots=6, full=2, half=2)
    n = 0
    for _ in swap_script(rig):
        rig.tick()
        n += 1
    assert rig.of("SwapCompleted")
    return n


def test_journal_holds_inventory_session_counters_mode_and_config():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("set_config", take_timeout_s=45)
    rig.cmd("quarantine", slot=3, reason="inspection")
    rig.cmd("start_swap", id_token="t", request_id="q-1")
    rig.tick()
    j = json.loads(json.dumps(rig.core.journal()))
    assert j["inventory"][0][:3] == ["F-01", "ref48v", True]
    assert j["inventory"][2][3] == "inspection"
    assert j["session"]["id"] == rig.core.session.id and j["session"]["phase"] == "awaiting_battery"
    assert j["counters"]["boot"] == 1 and j["counters"]["event"] == rig.core.event_n
    assert j["config"]["take_timeout_s"] == 45 and j["mode"] == "in_service"


def test_boot_count_and_event_ids_continue_across_reboots():
    rig = stocked_rig(slots=6, full=2, half=1)
    first = {e["id"] for e in rig.events}
    reboot(rig)
    rig.run(500)
    boot = rig.of("Boot")[-1]
    assert boot["id"].startswith("cab-1-2-")
    assert boot["reason"] == "power_loss"
    assert not first & {e["id"] for e in rig.events if e not in rig.events[:len(first)]}
    assert len({e["id"] for e in rig.events}) == len(rig.events)


def test_battery_listed_in_the_journal_but_not_seen_is_battery_missing():
    rig = stocked_rig(slots=6, full=2, half=0)
    rig.world.slots[1].battery = None  # taken while the cabinet had no power
    reboot(rig)
    rig.run(500)
    miss = rig.of("BatteryMissing")[-1]
    assert (miss["slot"], miss["serial"]) == (2, "F-02")
    assert rig.of("Boot")[-1]["recovered"]["missing"] == [2]
    assert rig.core.slot_state(2)["state"] == "empty"


def test_unknown_battery_found_at_boot_is_identified_again():
    rig = stocked_rig(slots=6, full=1, half=0)
    rig.world.slots[4].battery = Battery("NEW-5", soc=70)
    reboot(rig)
    rig.run(500)
    assert rig.of("Boot")[-1]["recovered"]["found"] == [5]
    assert rig.core.slot_state(5)["battery"]["serial"] == "NEW-5"
    assert rig.core.slot_state(5)["state"] == "charging"


def test_battery_changed_while_unpowered_is_missing_then_identified():
    rig = stocked_rig(slots=6, full=1, half=0)
    rig.world.slots[0].battery = Battery("OTHER", soc=95)
    reboot(rig)
    rig.run(500)
    assert rig.of("BatteryMissing")[-1]["serial"] == "F-01"
    assert rig.core.slots[0].serial == "OTHER"


def test_quarantine_survives_a_power_cut():
    rig = stocked_rig(slots=6, full=3, half=1)
    rig.cmd("quarantine", slot=1, reason="swollen")
    reboot(rig)
    rig.run(1000)
    assert rig.core.slot_state(1)["state"] == "quarantined"
    assert rig.cmd("start_swap", id_token="t")["ok"]
    assert rig.core.session is not None


def test_session_interrupted_before_battery_in_ends_with_power_loss():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t", request_id="q-7")
    rig.run(300)
    reboot(rig)
    rig.run(500)
    ab = rig.of("SwapAborted")[-1]
    assert (ab["reason"], ab["request_id"]) == ("power_loss", "q-7")
    assert all(rig.core.lock_cmd)


@pytest.mark.parametrize("cut", ["at BatteryIn, no battery chosen yet", "dispense door unlocked"])
def test_session_with_battery_in_recorded_still_completes_after_a_power_cut(cut):
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=10), wait_ms=0)
    while not rig.of("BatteryIn"):
        rig.tick()
    assert rig.core.session.slot_out is None  # the battery to hand out is chosen next tick
    if cut == "dispense door unlocked":
        rig.tick()
        assert rig.core.session.slot_out is not None
    reboot(rig)
    rig.run(400)
    assert rig.core.session is not None and rig.core.session.phase == "dispensing"
    out = rig.core.session.slot_out
    assert rig.core.lock_cmd[out - 1] is False
    rig.world.open_door(out)
    rig.world.take(out)
    rig.world.close_door(out)
    rig.run(300)
    assert rig.of("SwapCompleted")[-1]["battery_in"] == "R-1"
    assert not [e for e in rig.of("SwapAborted") if e["reason"] == "power_loss"]


def test_battery_taken_just_before_the_power_cut_completes_at_boot():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=10))
    rig.run(300)
    rig.world.open_door(out)
    b = rig.world.take(out)
    reboot(rig)  # the cut falls before the tick that would have seen the battery go
    rig.run(100)
    done = rig.of("SwapCompleted")[-1]
    assert done["battery_out"] == b.serial
    assert rig.of("BatteryOut")[-1]["slot"] == out


def test_not_taken_after_a_power_cut_is_reported_not_taken():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("set_config", take_timeout_s=20)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=10))
    reboot(rig)
    rig.run(21_000)
    assert rig.of("SwapAborted")[-1]["reason"] == "not_taken"
    assert rig.of("BatteryOutTimeout")


def test_journal_that_is_garbage_boots_safely():
    for junk in ({"inventory": "x"}, {"inventory": [[1, 2, 3, 4]] * 6, "session": {"slot_in": 99}},
                 {"counters": {"boot": "x"}, "mode": "party", "config": {"take_timeout_s": -1}}):
        core = Core("cab-1", 6, journal=junk)
        rig = Rig(core)
        rig.run(500)
        check_tick(rig)
        assert core.mode in ("in_service", "maintenance", "out_of_service", "emergency")
        assert core.session is None


TICKS = full_swap_ticks()


@pytest.mark.parametrize("cut", range(TICKS))
def test_power_cut_at_every_tick_of_a_swap(cut):
    rig = stocked_rig(slots=6, full=2, half=2)
    everyone = [ws.battery.serial for ws in rig.world.slots if ws.battery is not None] + ["R-1"]
    script = swap_script(rig)
    for _ in range(cut):
        next(script)
        rig.tick()
        check_tick(rig)
    had_battery_in = bool(rig.of("BatteryIn"))
    before = list(rig.events)
    reboot(rig)
    # After the reboot the rider takes a battery if a door opens for one (a charged one, or their
    # own given back), then leaves.
    for _ in range(20):
        rig.tick()
        check_tick(rig)
    ss = rig.core.session
    taken = None
    if ss is not None and ss.phase in ("dispensing", "rejected"):
        n = ss.slot_out if ss.phase == "dispensing" else ss.slot_in
        rig.world.open_door(n)
        taken = rig.world.take(n)
        rig.world.close_door(n)
    for ws in rig.world.slots:
        ws.door_closed = True
    for _ in range(130_000 // rig.tick_ms):
        rig.tick()
        check_tick(rig)
    check_history(rig)
    assert rig.events[:len(before)] == before  # nothing persisted before the cut is lost
    ends = [e for e in rig.events if e["type"] in ("SwapCompleted", "SwapAborted")]
    if rig.of("SwapStarted"):
        assert len(ends) == 1
        if had_battery_in:
            assert ends[0]["type"] == "SwapCompleted" or ends[0]["reason"] == "not_taken"
        elif not rig.of("SwapCompleted"):
            assert ends[0]["reason"] in ("power_loss", "timeout")
    # The rider's battery is either with the rider or in a slot the core knows.
    inside = [ws.battery.serial for ws in rig.world.slots if ws.battery is not None]
    known = [s.serial for s in rig.core.slots if s.serial is not None]
    assert sorted(inside) == sorted(known)
    # The rider leaves with one battery (a charged one, or their own), or with their own never
    # put in: never with two, never with none. What no slot holds is in the rider's hands.
    rider = sorted(set(everyone) - set(inside))
    assert len(rider) == 1, (rider, inside)


def test_a_quarantined_empty_slot_stays_out_of_use_across_power_cuts_with_nothing_missing():
    """Quarantining an empty slot takes it out of use with no battery implied: no boot after it
    reports a BatteryMissing, and the slot's state says why it is quarantined."""
    rig = stocked_rig(slots=6, full=2, half=1)
    assert rig.cmd("quarantine", slot=5, reason="door hinge broken")["ok"]
    for _ in range(2):
        reboot(rig)
        rig.run(1000)
        boot = rig.of("Boot")[-1]
        assert boot["recovered"]["missing"] == []
        assert not rig.of("BatteryMissing")
        st = rig.core.slot_state(5)
        assert (st["state"], st["reason"], st["battery"]) == ("quarantined", "door hinge broken", None)
    a = rig.cmd("start_swap", id_token="t")
    assert a["ok"] and a["slot"] != 5  # never the rider's slot


def test_a_refused_battery_held_and_taken_while_unpowered_is_still_missing():
    rig = stocked_rig(slots=6, full=2, half=0)
    rig.world.place(4, Battery("BAD-4", soc=50, faults=1))
    rig.run(1000)
    assert rig.core.slot_state(4)["state"] == "quarantined"
    rig.world.slots[3].battery = None  # taken while the power was off
    reboot(rig)
    rig.run(500)
    assert [e["slot"] for e in rig.of("BatteryMissing")] == [4]


def test_an_old_journal_without_the_held_flag_still_loads():
    rig = stocked_rig(slots=6, full=2, half=0)
    j = rig.core.journal()
    for e in j["inventory"]:
        del e[4]
    core = Core("cab-1", 6, journal=json.loads(json.dumps(j)))
    assert core.slots[0].serial == "F-01" and core.slots[0].accepted


def test_a_pack_swapped_into_the_dispense_slot_before_a_power_cut_is_never_taken_for_the_old():
    """make explore: the rider takes the battery handed out, pushes a cold one in, the power goes
    before the cabinet wrote the take; after the boot the dispense door opens again on the cold
    pack. Shut, it is identified (not kept as the battery that left) and held, and the battery that
    left is reported missing."""
    rig = stocked_rig(slots=6, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    old = rig.world.slots[out - 1].battery.serial
    rig.run(300)
    assert rig.world.open_door(out)
    assert rig.world.take(out).serial == old
    rig.world.slots[out - 1].battery = Battery("C-7", soc=40, temp=-15)  # in the same instant
    reboot(rig)
    rig.run(500)
    rig.world.close_door(out)
    rig.run(3000)
    s = rig.core.slots[out - 1]
    assert s.serial == "C-7" and not s.accepted and s.quarantine is not None
    assert old in [e["serial"] for e in rig.of("BatteryMissing")]
    assert rig.core.journal()["inventory"][out - 1][0] == "C-7"


def test_a_pack_changed_in_a_quarantined_slot_before_a_power_cut_is_identified_at_the_boot():
    """make explore: in maintenance a technician changes the pack of a quarantined slot and the
    power goes before the door shuts. At the boot the new pack is identified (the old one is
    missing), and the slot stays quarantined and off."""
    rig = stocked_rig(slots=6, full=2, half=0)
    old = rig.world.slots[0].battery.serial
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    assert rig.cmd("open_slot", slot=1)["ok"]
    rig.run(300)
    assert rig.world.open_door(1)
    assert rig.world.take(1).serial == old
    assert rig.world.insert(1, Battery("N-8", soc=70))
    reboot(rig)
    rig.world.close_door(1)
    rig.run(3000)
    s = rig.core.slots[0]
    assert s.serial == "N-8" and s.quarantine == "inspection"
    assert rig.core.journal()["inventory"][0][0] == "N-8"
    assert old in [e["serial"] for e in rig.of("BatteryMissing")]
    assert rig.core.charge_ma[0] == 0 and rig.core.lock_cmd[0]
