"""The swap session of mqtt.md, step by step: one test per transition, with the spec's numbers."""
from coreworld import Battery, insert_until_dispensing, rider_inserts, rider_takes, stocked_rig

from tukar import slot as sl


def test_start_swap_opens_one_empty_slot_and_reports_session_and_slot():
    rig = stocked_rig()
    a = rig.cmd("start_swap", id_token="rider-77", request_id="r-9")
    assert a["ok"] and a["error"] is None
    assert a["slot"] == 7  # the first empty slot after the six stocked ones
    assert a["session"] == rig.core.session.id
    rig.run(100)
    assert rig.core.lock_cmd[6] is False
    assert rig.core.slot_state(7)["state"] == "awaiting_battery"
    ev = rig.of("SwapStarted")[0]
    assert (ev["session"], ev["request_id"], ev["id_token"], ev["slot"]) == (a["session"], "r-9", "rider-77", 7)
    assert rig.core.cabinet_state()["session"]["phase"] == "awaiting_battery"


def test_request_id_defaults_to_the_commands_req_id():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="rider-1")
    assert rig.core.session.request_id == rig.acks[-1]["req_id"]


def test_battery_in_and_door_closed_locks_and_identifies():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=12), wait_ms=0)
    rig.tick()
    assert rig.core.lock_cmd[n - 1] is True
    assert rig.core.session.phase == "identifying"
    assert rig.core.slot_state(n)["state"] == "identifying"


def test_insert_timeout_relocks_and_aborts_after_60_s():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(59_900)
    assert rig.core.session is not None
    rig.run(200)
    assert rig.core.session is None
    assert rig.core.lock_cmd[n - 1] is True
    assert rig.of("SwapAborted")[-1]["reason"] == "timeout"


def test_accepted_battery_emits_battery_in_and_dispenses_highest_soc():
    rig = stocked_rig()
    rig.world.slots[1].battery.soc_pm = 990  # slot 2 at 99 % beats 95 %
    rig.run(500)
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=12))
    ev = rig.of("BatteryIn")[-1]
    assert ev["slot"] == n and ev["battery"]["serial"] == "R-1"
    assert rig.core.session.phase == "dispensing"
    assert rig.core.session.slot_out == 2
    assert rig.core.lock_cmd[1] is False


def test_dispense_ties_go_to_fewest_cycles_then_lowest_slot():
    rig = stocked_rig(full=0, half=0)
    for n, cycles in ((3, 50), (5, 20), (8, 20)):
        rig.world.place(n, Battery("B-%d" % n, soc=95, cycles=cycles))
    rig.run(1000)
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=12))
    assert rig.core.session.slot_out == 5


def test_identification_completes_within_3_s_of_the_door_closing():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=12), wait_ms=0)
    t0 = rig.core.up_ms()
    while not rig.of("BatteryIn"):
        rig.tick()
        assert rig.core.up_ms() - t0 <= 3000
    # Controller's share: lock travel (world) + one BMS period + ticks; well under 0.5 s here.
    assert rig.core.up_ms() - t0 <= 500


def test_battery_taken_and_door_closed_completes_the_swap():
    rig = stocked_rig()
    a = rig.cmd("start_swap", id_token="rider-77", request_id="r-9")
    n_in = rider_inserts(rig, Battery("R-1", soc=12))
    n_out, b = rider_takes(rig)
    out = rig.of("BatteryOut")[-1]
    done = rig.of("SwapCompleted")[-1]
    assert out["slot"] == n_out and out["battery"]["serial"] == b.serial
    assert (done["session"], done["slot_in"], done["slot_out"]) == (a["session"], n_in, n_out)
    assert (done["battery_in"], done["battery_out"], done["id_token"]) == ("R-1", b.serial, "rider-77")
    assert done["duration_ms"] > 0
    assert rig.core.session is None
    assert rig.core.slot_state(n_out)["state"] == "empty"
    assert rig.types().index("BatteryOut") < rig.types().index("SwapCompleted")


def test_battery_not_taken_relocks_after_60_s_and_keeps_charging():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=12))
    out = rig.core.session.slot_out
    rig.run(60_100)
    assert rig.core.session is None
    assert rig.of("BatteryOutTimeout")[-1]["slot"] == out
    assert rig.of("SwapAborted")[-1]["reason"] == "not_taken"
    assert rig.core.lock_cmd[out - 1] is True
    rig.run(500)
    assert rig.core.slot_state(out)["state"] in ("charging", "ready")


def test_refused_battery_is_unlocked_for_the_rider_and_the_swap_aborts_once_taken():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-bad", soc=12, faults=1))
    rej = rig.of("BatteryRejected")[-1]
    assert rej["slot"] == n and rej["reason"] == "battery_fault"
    assert rig.core.slot_state(n)["state"] == "rejected"
    assert rig.core.lock_cmd[n - 1] is False
    rig.run(300)
    rig.world.open_door(n)
    rig.world.take(n)
    rig.world.close_door(n)
    rig.run(200)
    assert rig.of("SwapAborted")[-1]["reason"] == "rejected"
    assert rig.core.slot_state(n)["state"] == "empty"
    assert not rig.of("BatteryIn")


def test_refused_battery_left_inside_past_60_s_is_locked_in_and_quarantined():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-bad", soc=12, temp=55))
    assert rig.of("BatteryRejected")[-1]["reason"] == "temperature"
    rig.run(60_100)
    assert rig.core.lock_cmd[n - 1] is True
    assert rig.core.slot_state(n)["state"] == "quarantined"
    assert rig.of("Quarantined")[-1]["slot"] == n
    assert rig.of("SwapAborted")[-1]["reason"] == "rejected"


def test_battery_without_bms_answer_is_refused_after_3_s():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.world.slots[n - 1].bms_dead = True
    rider_inserts(rig, Battery("R-1", soc=12), wait_ms=2500)
    assert not rig.of("BatteryRejected")
    rig.run(1000)
    assert rig.of("BatteryRejected")[-1]["reason"] == "no_bms"


def test_unknown_profile_and_blocklisted_serial_are_refused():
    rig = stocked_rig(config={"blocklist": ["STOLEN-1"]})
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=12, profile="other72v"))
    assert rig.of("BatteryRejected")[-1]["reason"] == "unknown_profile"
    rig2 = stocked_rig(config={"blocklist": ["STOLEN-1"]})
    rig2.cmd("start_swap", id_token="t")
    rider_inserts(rig2, Battery("STOLEN-1", soc=12))
    assert rig2.of("BatteryRejected")[-1]["reason"] == "blocklisted"


def test_cancel_swap_while_awaiting_battery_relocks():
    rig = stocked_rig()
    a = rig.cmd("start_swap", id_token="t")
    rig.run(300)
    c = rig.cmd("cancel_swap", session=a["session"])
    assert c["ok"]
    rig.tick()
    assert rig.core.lock_cmd[a["slot"] - 1] is True
    assert rig.of("SwapAborted")[-1]["reason"] == "cancelled"


def test_cancel_swap_after_the_battery_is_in_is_not_allowed():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=12))
    c = rig.cmd("cancel_swap")
    assert c["error"] == "not_allowed"


def test_start_swap_refused_when_no_battery_is_dispensable_before_any_door_opens():
    rig = stocked_rig(full=0, half=4)
    a = rig.cmd("start_swap", id_token="t")
    assert a["error"] == "no_battery_available"
    assert all(rig.core.lock_cmd)
    assert not rig.of("SwapStarted")


def test_start_swap_refused_when_no_slot_is_empty():
    rig = stocked_rig(slots=4, full=4, half=0)
    a = rig.cmd("start_swap", id_token="t")
    assert a["error"] == "no_empty_slot"
    assert all(rig.core.lock_cmd)


def test_one_session_at_a_time():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    assert rig.cmd("start_swap", id_token="u")["error"] == "busy"


def test_in_service_only_one_door_is_unlocked_during_a_swap():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    while rig.core.session is not None and rig.core.session.phase != "dispensing":
        if rig.core.session.phase == "awaiting_battery":
            rider_inserts(rig, Battery("R-1", soc=12), wait_ms=0)
        rig.tick()
        assert rig.core.lock_cmd.count(False) <= 1
    for _ in range(40):
        rig.tick()
        assert rig.core.lock_cmd.count(False) <= 1


def test_charger_of_the_dispensed_slot_goes_off_in_the_tick_its_lock_opens():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    assert rig.core.lock_cmd[out - 1] is False
    assert rig.core.charge_ma[out - 1] == 0
    assert rig.of("ChargeStopped")[-1]["slot"] == out


def rider_takes_back(rig, n):
    rig.run(300)
    assert rig.world.open_door(n)
    b = rig.world.take(n)
    rig.world.close_door(n)
    rig.run(300)
    return b


def test_nothing_left_to_hand_out_gives_the_riders_battery_back_without_battery_in():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    rig.world.slots[0].battery.soc_pm = 500  # the only full battery drops below 90 % meanwhile
    n = rider_inserts(rig, Battery("R-1", soc=12))
    assert not rig.of("BatteryIn") and not rig.of("SwapAborted")
    assert rig.core.session.phase == "rejected" and rig.core.lock_cmd[n - 1] is False
    assert rig.core.slot_state(n)["state"] == "rejected"
    assert rider_takes_back(rig, n).serial == "R-1"
    assert rig.of("SwapAborted")[-1]["reason"] == "no_battery_available"
    assert rig.core.session is None and rig.core.slots[n - 1].serial is None
    assert all(rig.core.lock_cmd)


def test_the_last_battery_turning_bad_after_battery_in_gives_the_riders_back():
    """BatteryIn recorded, then the one battery to hand out fails rule 6 at the choice (a tick
    later): the rider's own goes back; nothing is owed after it (in_recorded cleared)."""
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=12), wait_ms=0)
    while not rig.of("BatteryIn"):
        rig.tick()
    rig.world.slots[0].battery.faults = 4  # the BMS raises a fault flag before the choice
    rig.run(300)
    assert not rig.of("BatteryOut")
    ss = rig.core.session
    assert ss.phase == "rejected" and ss.slot_in == n and not ss.in_recorded
    assert rig.core.lock_cmd[0] is True and rig.core.lock_cmd[n - 1] is False
    assert rider_takes_back(rig, n).serial == "R-1"
    assert rig.of("SwapAborted")[-1]["reason"] == "no_battery_available"
    assert rig.core.slots[n - 1].serial is None and not rig.core.slots[n - 1].accepted


def test_a_battery_turning_bad_behind_a_closed_dispense_door_is_not_handed_out():
    rig = stocked_rig(full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    rig.world.slots[out - 1].battery.faults = 4  # before the rider opens the door
    rig.run(300)
    ss = rig.core.session
    assert ss.phase == "dispensing" and ss.slot_out != out
    assert rig.core.lock_cmd[out - 1] is True
    n, b = rider_takes(rig)
    assert b.serial != rig.world.slots[out - 1].battery.serial
    assert rig.of("SwapCompleted")[-1]["battery_out"] == b.serial


def test_the_dispense_battery_quarantined_before_its_door_opens_hands_out_another():
    rig = stocked_rig(full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    assert rig.cmd("quarantine", slot=out, reason="recall")["ok"]
    rig.run(300)
    ss = rig.core.session
    assert ss is not None and ss.phase == "dispensing" and ss.slot_out not in (None, out)
    rider_takes(rig)
    assert rig.of("SwapCompleted") and not rig.of("SwapAborted")


def test_a_pack_pushed_into_the_dispense_slot_after_the_take_is_identified_not_charged_blind():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    rig.run(300)
    assert rig.world.open_door(out)
    taken = rig.world.take(out)
    rig.tick()
    assert rig.world.insert(out, Battery("X-9", soc=40, faults=4))  # a faulted pack pushed in
    rig.world.close_door(out)
    rig.run(5000)
    done = rig.of("SwapCompleted")
    assert done and done[-1]["battery_out"] == taken.serial
    assert not rig.of("BatteryOutTimeout")
    s = rig.core.slots[out - 1]
    assert rig.core.charge_ma[out - 1] == 0 and s.quarantine == "battery_fault"
    assert s.serial == "X-9" and not s.accepted


def test_slot_states_over_a_swap_use_only_the_spec_names():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=12))
    rider_takes(rig)
    states = {"empty", "awaiting_battery", "identifying", "charging", "charge_paused", "ready",
              "dispensing", "rejected", "quarantined", "fault", "maintenance_open"}
    for n in range(1, 13):
        assert rig.core.slot_state(n)["state"] in states
    assert sl.EMPTY == "empty" and sl.MAINT_OPEN == "maintenance_open"


def test_a_reading_without_a_serial_does_not_identify_the_battery():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery(None, soc=12), wait_ms=0)  # the serial frames never arrive
    rig.run(2500)
    assert not rig.of("BatteryIn") and not rig.of("BatteryRejected")
    rig.run(1000)
    assert rig.of("BatteryRejected")[-1]["reason"] == "no_bms"


def test_a_battery_turning_bad_after_the_rider_opened_and_shut_its_door_is_not_handed_out():
    rig = stocked_rig(full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    rig.run(300)
    assert rig.world.open_door(out)  # the rider looks, and shuts it without taking
    rig.tick()
    rig.world.slots[out - 1].battery.faults = 4
    rig.world.close_door(out)
    rig.run(300)
    ss = rig.core.session
    assert ss.phase == "dispensing" and ss.slot_out != out and rig.core.lock_cmd[out - 1]


def test_the_riders_slot_quarantined_after_battery_in_still_hands_the_rider_a_battery():
    rig = stocked_rig(full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    n_in = insert_until_dispensing(rig, Battery("R-1", soc=12)) and rig.core.session.slot_in
    assert rig.cmd("quarantine", slot=n_in, reason="recall")["ok"]
    rig.tick()
    assert rig.core.session is not None and rig.core.session.phase == "dispensing"
    rider_takes(rig)
    assert rig.of("SwapCompleted") and not rig.of("SwapAborted")
    assert rig.core.slots[n_in - 1].quarantine == "recall" and rig.core.lock_cmd[n_in - 1]


def test_a_hot_pack_pushed_into_the_dispense_slot_after_the_take_completes_the_swap_and_is_held():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    old = rig.world.slots[out - 1].battery.serial
    rig.run(300)
    assert rig.world.open_door(out)
    assert rig.world.take(out).serial == old
    rig.tick()
    assert rig.world.insert(out, Battery("HOT-3", soc=50, temp=65))
    rig.run(300)  # quarantined with its door open
    rig.world.close_door(out)
    rig.run(2000)
    assert rig.of("SwapCompleted")[-1]["battery_out"] == old
    s = rig.core.slots[out - 1]
    assert s.quarantine == "overtemp" and s.serial != old and not s.accepted
    assert rig.core.charge_ma[out - 1] == 0


def test_taken_then_another_pushed_in_and_an_emergency_completes_the_swap():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    old = rig.world.slots[out - 1].battery.serial
    rig.run(300)
    assert rig.world.open_door(out)
    assert rig.world.take(out).serial == old
    rig.tick()
    assert rig.world.insert(out, Battery("X-5", soc=40))
    rig.world.smoke = True
    rig.tick()
    assert rig.core.mode == "emergency"
    assert rig.of("SwapCompleted")[-1]["battery_out"] == old and not rig.of("SwapAborted")
    rig.world.close_door(out)
    rig.run(1000)
    s = rig.core.slots[out - 1]
    assert s.serial == "X-5" and rig.core.charge_ma[out - 1] == 0


def test_a_battery_not_taken_is_identified_again_before_it_charges():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=12))
    old = rig.world.slots[out - 1].battery.serial
    rig.run(300)
    assert rig.world.open_door(out)
    rig.world.take(out)  # taken and swapped for another: the cabinet does not see it (the
    rig.world.slots[out - 1].battery = Battery("X-6", soc=40)  # presence switch stays pressed)
    rig.world.close_door(out)
    rig.run(61_000)
    assert rig.of("BatteryOutTimeout")
    s = rig.core.slots[out - 1]
    assert s.serial == "X-6"
    assert rig.of("BatteryMissing")[-1]["serial"] == old
