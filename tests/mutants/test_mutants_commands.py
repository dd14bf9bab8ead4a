"""Commands and the core's edge where mutation testing found them unchecked: cancel_swap's and
quarantine's arguments (mqtt.md's command table), faults the shell reports, what a new broker
connection or set_config asks to persist, the session as the cabinet state publishes it, and a
slot outside the session failing. Every event and state is checked against the contract's schemas."""
import pytest
from coreworld import Battery, stocked_rig

from tukar.core import Core
from tukar.states import J_CONFIG, J_COUNTERS, J_INVENTORY
from tukar_tools import schemas


def valid(rig):
    for e in rig.events:
        schemas.validate("event", dict(e, seq=1))
    schemas.validate("state", dict(rig.core.cabinet_state(), seq=1))
    for n in range(1, rig.core.n_slots + 1):
        schemas.validate("slot/%d/state" % n, dict(rig.core.slot_state(n), seq=1))
    for a in rig.acks:
        schemas.validate("ack", a)


# -- cancel_swap ----------------------------------------------------------------------------------
def test_cancel_swap_without_an_open_session_is_not_allowed():
    rig = stocked_rig()
    a = rig.cmd("cancel_swap")
    assert (a["ok"], a["error"]) == (False, "not_allowed") and a["detail"]
    valid(rig)


@pytest.mark.parametrize("sid", [5, "", "s" * 65, ["s-1"]])
def test_cancel_swap_with_a_session_that_is_not_a_short_string_is_bad_args(sid):
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    a = rig.cmd("cancel_swap", session=sid)
    assert (a["ok"], a["error"]) == (False, "bad_args") and a["detail"]
    assert rig.core.session is not None and not rig.of("SwapAborted")
    valid(rig)


def test_cancel_swap_of_another_session_is_bad_args_and_the_open_one_goes_on():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    a = rig.cmd("cancel_swap", session="s-999")
    assert (a["ok"], a["error"]) == (False, "bad_args")
    assert s["session"] in a["detail"] and "s-999" in a["detail"]
    rig.tick()
    assert rig.core.session is not None and rig.core.lock_cmd[s["slot"] - 1] is False
    a = rig.cmd("cancel_swap", session=s["session"])
    assert a["ok"] is True
    rig.run(200)
    assert rig.core.lock_cmd[s["slot"] - 1] is True
    assert rig.of("SwapAborted")[-1] == dict(rig.of("SwapAborted")[-1], session=s["session"],
                                             reason="cancelled")
    valid(rig)


def test_cancel_swap_without_a_session_argument_cancels_the_open_one():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    assert rig.cmd("cancel_swap")["ok"] is True
    rig.run(300)
    assert rig.core.session is None and rig.core.lock_cmd[s["slot"] - 1] is True
    assert rig.core.slot_state(s["slot"])["state"] == "empty"
    valid(rig)


def test_cancel_swap_after_the_battery_is_in_names_the_phase():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.run(1000)
    a = rig.cmd("cancel_swap")
    assert a["error"] == "not_allowed" and rig.core.session.phase in a["detail"]


# -- quarantine -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", [None, "", "r" * 65, 7])
def test_quarantine_needs_a_reason_of_1_to_64_characters(reason):
    rig = stocked_rig()
    a = rig.cmd("quarantine", slot=1, reason=reason) if reason is not None else \
        rig.cmd("quarantine", slot=1)
    assert (a["ok"], a["error"]) == (False, "bad_args") and "reason" in a["detail"]
    assert not rig.of("Quarantined")
    valid(rig)


def test_quarantine_with_a_64_character_reason_answers_the_slot():
    rig = stocked_rig()
    a = rig.cmd("quarantine", slot=2, reason="r" * 64)
    assert a["ok"] is True and a["slot"] == 2
    assert rig.of("Quarantined")[-1] == dict(rig.of("Quarantined")[-1], slot=2, reason="r" * 64)
    valid(rig)


def test_quarantining_the_open_swap_slot_relocks_it_under_rule_8():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    n = s["slot"]
    rig.run(300)  # unlocked
    rig.world.slots[n - 1].jammed = True
    assert rig.cmd("quarantine", slot=n, reason="inspection")["ok"]
    rig.tick()
    assert rig.core.lock_cmd[n - 1] is True
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"
    rig.run(1100)  # the bolt does not follow: retried at 500 ms, jammed at 1 s
    assert rig.of("Fault")[-1]["code"] == "lock_jam"
    valid(rig)


# -- faults the shell reports, and what it is asked to persist --------------------------------------
def test_a_fault_the_shell_reports_is_a_cabinet_fault_event():
    core = Core("c-1", 2)
    core.report_fault("task_control", "error")
    core.report_fault("flash", "warning", cleared=True)
    e1, e2 = core.events
    assert (e1["type"], e1["slot"], e1["code"], e1["severity"]) == ("Fault", None, "task_control",
                                                                     "error")
    assert (e2["type"], e2["slot"], e2["code"], e2["severity"]) == ("FaultCleared", None, "flash",
                                                                     "warning")
    for e in core.events:
        schemas.validate("event", dict(e, seq=1))


def test_a_new_connection_keeps_what_was_already_to_be_persisted():
    core = Core("c-1", 2)
    core.take_journal()
    core.jdirty |= J_INVENTORY
    assert core.connected(5)
    assert core.take_journal() == J_INVENTORY | J_COUNTERS


def test_set_config_keeps_what_was_already_to_be_persisted():
    core = Core("c-1", 2)
    core.take_journal()
    core.jdirty |= J_INVENTORY
    a = core.command({"cmd": "set_config", "req_id": "r", "insert_timeout_s": 30})
    assert a["ok"] and a["config"]["insert_timeout_s"] == 30
    assert core.take_journal() & (J_INVENTORY | J_CONFIG) == J_INVENTORY | J_CONFIG


def test_the_cabinet_state_names_the_open_session():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t", request_id="req-7")
    st = rig.core.cabinet_state()["session"]
    assert st == {"id": s["session"], "request_id": "req-7", "phase": "awaiting_battery",
                  "slot_in": s["slot"], "slot_out": None}
    valid(rig)


# -- a slot outside the session fails ------------------------------------------------------------------
def test_switches_lost_on_a_slot_outside_the_session_do_not_end_it():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    other = 12 if s["slot"] != 12 else 11
    rig.world.slots[other - 1].io_fault = True
    rig.run(1000)
    assert rig.of("Fault")[-1] == dict(rig.of("Fault")[-1], slot=other, code="slot_io")
    assert rig.core.session is not None and not rig.of("SwapAborted")
    valid(rig)


def test_switches_lost_on_the_session_slot_end_it_and_its_lock_is_still_supervised():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    n = s["slot"]
    rig.run(300)
    rig.world.slots[n - 1].io_fault = True
    rig.world.slots[n - 1].jammed = True
    rig.run(600)
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"
    assert rig.core.lock_cmd[n - 1] is True
    rig.world.slots[n - 1].io_fault = False  # readable again, the bolt still back
    rig.run(1200)
    assert rig.of("Fault")[-1] == dict(rig.of("Fault")[-1], slot=n, code="lock_jam")
    valid(rig)


# -- quarantine inside a swap (rule 7: a quarantined battery is never dispensed) -----------------------
def test_quarantining_a_refused_battery_before_it_is_taken_back_ends_the_swap_as_rejected():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("C-1", soc=20, temp=-15))
    rig.world.close_door(n)
    rig.run(1000)
    assert rig.of("BatteryRejected")[-1]["reason"] == "temperature"
    assert rig.cmd("quarantine", slot=n, reason="inspection")["ok"]
    rig.run(300)
    assert rig.of("SwapAborted")[-1]["reason"] == "rejected"
    assert rig.core.lock_cmd[n - 1] is True
    assert rig.core.slot_state(n)["state"] == "quarantined"
    assert rig.core.journal()["inventory"][n - 1][3:] == ["inspection", True]  # held behind it
    rig.run(5000)
    assert not rig.of("BatteryMissing")
    valid(rig)


def test_quarantining_the_dispense_slot_keeps_its_battery_locked_in_and_hands_out_another():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while rig.core.session.phase != "dispensing":
        rig.tick()
    out = rig.core.session.slot_out
    serial = rig.core.slot_state(out)["battery"]["serial"]
    assert rig.cmd("quarantine", slot=out, reason="inspection")["ok"]
    rig.run(500)
    assert not rig.of("SwapAborted")  # the rider is still owed a battery: another one
    assert rig.core.session.slot_out not in (None, out)
    assert rig.core.lock_cmd[out - 1] is True
    st = rig.core.slot_state(out)
    assert st["state"] == "quarantined" and st["battery"]["serial"] is not None
    inv = rig.core.journal()["inventory"][out - 1]
    assert (inv[0], inv[3]) == (serial, "inspection")  # kept, named, quarantined
    assert not rig.of("BatteryMissing") and not rig.of("BatteryOut")
    valid(rig)


def test_quarantining_the_empty_swap_slot_ends_the_swap_and_leaves_it_empty():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    rig.run(300)
    assert rig.cmd("quarantine", slot=s["slot"], reason="broken hinge")["ok"]
    rig.run(300)
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"
    assert rig.core.lock_cmd[s["slot"] - 1] is True
    assert rig.core.journal()["inventory"][s["slot"] - 1] == [None, None, False, "broken hinge",
                                                            False]
    assert rig.core.slot_state(s["slot"])["state"] == "quarantined"
    valid(rig)


def test_quarantining_another_slot_leaves_the_swap_open():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    other = 5 if s["slot"] != 5 else 4
    assert rig.cmd("quarantine", slot=other, reason="inspection")["ok"]
    rig.run(300)
    assert rig.core.session is not None and not rig.of("SwapAborted")
    valid(rig)


def test_quarantine_keeps_what_was_already_to_be_persisted():
    core = Core("c-1", 2)
    core.take_journal()
    core.jdirty |= J_CONFIG
    assert core.command({"cmd": "quarantine", "req_id": "r", "slot": 1, "reason": "x"})["ok"]
    assert core.take_journal() & (J_CONFIG | J_INVENTORY) == J_CONFIG | J_INVENTORY


def test_quarantining_a_slot_open_for_maintenance_keeps_the_battery_and_locks_it():
    rig = stocked_rig(full=1, half=0)
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("open_slot", slot=1) == dict(rig.acks[-1], ok=True, slot=1)
    rig.run(300)
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]
    rig.run(300)
    assert rig.core.lock_cmd[0] is True and rig.core.slot_state(1)["state"] == "quarantined"
    assert rig.core.journal()["inventory"][0][0] == "F-01"
    valid(rig)


# -- release and open_slot ----------------------------------------------------------------------------
def test_release_outside_maintenance_is_wrong_mode_and_of_a_slot_not_quarantined_not_allowed():
    rig = stocked_rig()
    rig.cmd("quarantine", slot=1, reason="inspection")
    a = rig.cmd("release", slot=1)
    assert (a["error"], bool(a["detail"])) == ("wrong_mode", True)
    rig.cmd("set_mode", mode="maintenance")
    a = rig.cmd("release", slot=2)
    assert a["error"] == "not_allowed" and "2" in a["detail"]
    a = rig.cmd("release", slot=1)
    assert a["ok"] is True and a["slot"] == 1
    assert rig.of("QuarantineReleased")[-1] == dict(rig.of("QuarantineReleased")[-1], slot=1,
                                                   reason="inspection")
    valid(rig)


def test_open_slot_outside_maintenance_is_wrong_mode():
    rig = stocked_rig()
    a = rig.cmd("open_slot", slot=1)
    assert (a["error"], bool(a["detail"])) == ("wrong_mode", True)
    rig.run(300)
    assert all(rig.core.lock_cmd)
    valid(rig)


def test_reboot_during_a_session_is_busy_naming_the_session():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    a = rig.cmd("reboot")
    assert a["error"] == "busy" and s["session"] in a["detail"]
    valid(rig)
