"""Commands and the core's edge where mutation testing found them unchecked: cancel_swap's and
quarantine's arguments (mqtt.md's command table), faults the shell reports, what a new broker
connection or set_config asks to persist, the session as the cabinet state publishes it, and a
slot outside the session failing. Every event and state is checked against the contract's schemas."""
import pytest
from coreworld import Battery, rider_inserts, stocked_rig

from tukar.core import Core
from tukar.states import J_CONFIG, J_COUNTERS, J_INVENTORY, J_MODE, J_SESSION
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


# -- every refusal's detail -----------------------------------------------------------------------
# mqtt.md fixes the error code; the detail is what the operator's console shows beside it. Each
# refusal names its own cause, never "internal error" (which is what a handler that raises
# anything but CommandError answers: a refusal that broke would still say not_allowed).
def _refusals():
    def cancel_bad(rig):
        rig.cmd("start_swap", id_token="t")
        return rig.cmd("cancel_swap", session=5), ("bad_args", "session: a string is required")

    def cancel_none(rig):
        return rig.cmd("cancel_swap"), ("not_allowed", "no open session")

    def cancel_other(rig):
        sid = rig.cmd("start_swap", id_token="t")["session"]
        return (rig.cmd("cancel_swap", session="s-999"),
                ("bad_args", "session s-999 is not the open session %s" % sid))

    def cancel_late(rig):
        sid = rig.cmd("start_swap", id_token="t")["session"]
        rider_inserts(rig, Battery("R-1", soc=20), wait_ms=0)
        rig.tick()
        return (rig.cmd("cancel_swap", session=sid),
                ("not_allowed", "session %s is %s" % (sid, rig.core.session.phase)))

    def mode_session(rig):
        sid = rig.cmd("start_swap", id_token="t")["session"]
        return rig.cmd("set_mode", mode="maintenance"), ("busy", "session %s is open" % sid)

    def mode_open_slot(rig):
        rig.cmd("set_mode", mode="maintenance")
        rig.cmd("open_slot", slot=4)
        return (rig.cmd("set_mode", mode="in_service"),
                ("busy", "slot 4 is open for maintenance"))

    def release_mode(rig):
        rig.cmd("quarantine", slot=1, reason="inspection")
        return rig.cmd("release", slot=1), ("wrong_mode", "release needs maintenance mode")

    def release_not_q(rig):
        rig.cmd("set_mode", mode="maintenance")
        return rig.cmd("release", slot=2), ("not_allowed", "slot 2 is not quarantined")

    def reset_not_emergency(rig):
        return rig.cmd("reset_emergency"), ("wrong_mode", "the cabinet is not in emergency")

    def reset_smoke(rig):
        rig.world.smoke = True
        rig.run(100)
        return rig.cmd("reset_emergency"), ("emergency", "causes still present: smoke")

    def reset_both(rig):
        rig.world.smoke = True
        rig.world.estop = True
        rig.run(100)
        return rig.cmd("reset_emergency"), ("emergency", "causes still present: smoke,estop")

    def reset_estop(rig):
        rig.world.estop = True
        rig.run(100)
        return rig.cmd("reset_emergency"), ("emergency", "causes still present: estop")

    def reboot_session(rig):
        sid = rig.cmd("start_swap", id_token="t")["session"]
        return rig.cmd("reboot"), ("busy", "session %s is open" % sid)

    def slot_range(rig):
        return rig.cmd("open_slot", slot=13), ("slot_range", "slot 13 is outside 1..12")

    def slot_not_int(rig):
        return rig.cmd("open_slot", slot="3"), ("bad_args", "slot: an integer is required")

    def slot_bool(rig):
        return rig.cmd("quarantine", slot=True, reason="x"), ("bad_args", "slot: an integer is required")

    def open_in_service(rig):
        return rig.cmd("open_slot", slot=3), ("wrong_mode", "open_slot needs maintenance mode")

    def mode_unknown(rig):
        return (rig.cmd("set_mode", mode="emergency"),
                ("bad_args", "mode: one of in_service, maintenance, out_of_service"))

    def quarantine_no_reason(rig):
        return (rig.cmd("quarantine", slot=2, reason=""),
                ("bad_args", "reason: a non-empty string of at most 64 characters"))

    def retire_no_serial(rig):
        return (rig.cmd("retire", serial=""),
                ("bad_args", "serial: a non-empty string of at most 64 characters"))

    def start_request_id(rig):
        return (rig.cmd("start_swap", id_token="t", request_id="q" * 65),
                ("bad_args", "request_id: a string of at most 64 characters"))

    def start_emergency(rig):
        rig.world.smoke = True
        rig.run(100)
        return rig.cmd("start_swap", id_token="t"), ("emergency", "the cabinet is in emergency")

    def start_not_in_service(rig):
        rig.cmd("set_mode", mode="maintenance")
        return rig.cmd("start_swap", id_token="t"), ("not_in_service", "mode is maintenance")

    def start_session_open(rig):
        sid = rig.cmd("start_swap", id_token="t")["session"]
        return rig.cmd("start_swap", id_token="u"), ("busy", "session %s is open" % sid)

    def start_slot_unlocked(rig):
        rig.core.slots[6].command_lock(False, rig.now)  # however it came to be unlocked
        return rig.cmd("start_swap", id_token="t"), ("busy", "slot 7 is unlocked")

    def start_nothing_to_dispense(rig):
        for n in range(1, 7):  # every pack held by the operator
            rig.cmd("quarantine", slot=n, reason="inspection")
        return rig.cmd("start_swap", id_token="t"), ("no_battery_available", "no dispensable battery")

    def start_no_empty_slot(rig):
        for n in range(7, 13):
            rig.cmd("quarantine", slot=n, reason="inspection")  # an empty slot taken out of use
        return rig.cmd("start_swap", id_token="t"), ("no_empty_slot", "no empty slot")

    def not_an_object(rig):
        a = rig.core.command(["start_swap"])
        rig.acks.append(a)
        return a, ("bad_args", "command body must be an object")

    return [cancel_bad, cancel_none, cancel_other, cancel_late, mode_session, mode_open_slot,
            release_mode, release_not_q, reset_not_emergency, reset_smoke, reset_both, reset_estop,
            reboot_session, slot_range, slot_not_int, slot_bool, open_in_service, mode_unknown,
            quarantine_no_reason, retire_no_serial, start_request_id, start_emergency,
            start_not_in_service, start_session_open, start_slot_unlocked,
            start_nothing_to_dispense, start_no_empty_slot, not_an_object]


def test_set_mode_acks_the_mode_whether_it_changes_or_already_holds():
    rig = stocked_rig()
    for mode in ("maintenance", "maintenance", "out_of_service", "in_service", "in_service"):
        a = rig.cmd("set_mode", mode=mode)
        assert a == dict(a, ok=True, mode=mode), a
        schemas.validate("ack", a)


@pytest.mark.parametrize("case", _refusals(), ids=lambda f: f.__name__)
def test_every_refusal_gives_its_code_and_a_detail_naming_its_cause(case):
    rig = stocked_rig()
    a, (code, detail) = case(rig)
    assert (a["ok"], a["error"], a["detail"]) == (False, code, detail)
    valid(rig)


# -- reset_emergency ------------------------------------------------------------------------------
def _emergency(rig, *causes):
    for c in causes:
        setattr(rig.world, c, True)
    rig.run(100)
    for c in causes:
        setattr(rig.world, c, False)
    rig.run(100)
    assert rig.core.mode == "emergency"


def test_reset_emergency_clears_every_latched_cause_and_says_so_once_each():
    rig = stocked_rig()
    _emergency(rig, "smoke", "estop")
    n = len(rig.events)
    a = rig.cmd("reset_emergency")
    assert a == dict(a, ok=True, mode="maintenance")
    assert sorted(e["cause"] for e in rig.of("EmergencyCleared")) == ["estop", "smoke"]
    assert [e["type"] for e in rig.events[n:]].count("EmergencyCleared") == 2
    rig.tick()
    assert rig.core.cabinet_state()["alarms"] == [] and rig.core.mode == "maintenance"
    valid(rig)


def test_reset_emergency_is_a_mode_change_by_the_request_persisted_and_published():
    rig = stocked_rig()
    _emergency(rig, "smoke")
    rig.core.take_dirty()
    rig.core.take_journal()
    rig.core.dirty = 1 << 5  # slot 4's state was already to be published
    a = rig.cmd("reset_emergency")
    assert a["ok"] is True
    assert rig.of("ModeChanged")[-1] == dict(rig.of("ModeChanged")[-1], mode="maintenance",
                                             by=a["req_id"])
    d = rig.core.take_dirty()
    assert d & 1 and d & 1 << 5  # the cabinet state too, and what was already due
    assert rig.core.take_journal() & J_MODE
    after = Core("cab-1", 12, journal=rig.core.journal())  # a power cut now: still maintenance, no cause latched
    assert after.mode == "maintenance" and after.cabinet_state()["alarms"] == []
    valid(rig)


def test_after_reset_emergency_a_new_cause_latches_again_and_only_it_is_cleared_next_time():
    rig = stocked_rig()
    _emergency(rig, "smoke")
    assert rig.cmd("reset_emergency")["ok"] is True
    _emergency(rig, "estop")
    assert rig.cmd("reset_emergency")["ok"] is True
    assert [e["cause"] for e in rig.of("EmergencyCleared")] == ["smoke", "estop"]
    valid(rig)


# -- cancel_swap's relock -------------------------------------------------------------------------
def test_cancel_swap_relocks_the_rider_slot_and_touches_no_other_slot():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    rig.run(300)
    before = {n: rig.core.slot_state(n) for n in range(1, 13) if n != s["slot"]}
    a = rig.cmd("cancel_swap", session=s["session"])
    assert a["ok"] is True
    assert rig.core.slots[s["slot"] - 1].lock_cmd is True  # in the command, not a tick later
    rig.tick()
    after = {n: rig.core.slot_state(n) for n in range(1, 13) if n != s["slot"]}
    assert {n: (st["state"], st["battery"]) for n, st in after.items()} == \
        {n: (st["state"], st["battery"]) for n, st in before.items()}
    assert not rig.of("BatteryIn")
    valid(rig)


def test_a_cancelled_swap_slot_is_evaluated_at_the_next_step_even_when_nothing_was_sampled():
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    rig.run(300)
    rig.core.take_dirty()
    assert rig.cmd("cancel_swap", session=s["session"])["ok"] is True
    rig.now += 50
    rig.world.step(rig.now)
    rig.core.step(rig.now, 0)  # the shell sampled nothing this tick
    d = rig.core.take_dirty()
    assert d & 1 and d & 1 << s["slot"]
    assert rig.core.slot_state(s["slot"])["state"] == "empty"


def test_a_battery_left_in_a_cancelled_swap_slot_is_identified_once_its_door_shuts():
    """No battery unaccounted for: one pushed in before the cancel, door still open, is found."""
    rig = stocked_rig()
    s = rig.cmd("start_swap", id_token="t")
    n = s["slot"]
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=20))
    rig.run(100)
    assert rig.cmd("cancel_swap", session=s["session"])["ok"] is True
    rig.run(200)
    rig.world.close_door(n)
    rig.run(3000)
    st = rig.core.slot_state(n)
    assert st["battery"]["serial"] == "R-1" and st["lock"] == "locked"
    assert Core("cab-1", 12, journal=rig.core.journal()).slots[n - 1].serial == "R-1"
    valid(rig)


# -- release --------------------------------------------------------------------------------------
def _quarantined_in_maintenance(rig, n):
    assert rig.cmd("quarantine", slot=n, reason="inspect")["ok"] is True
    rig.tick()
    assert rig.cmd("set_mode", mode="maintenance")["ok"] is True
    rig.run(100)


def test_release_checks_the_battery_again_and_one_now_too_hot_is_quarantined_for_temperature():
    rig = stocked_rig()
    _quarantined_in_maintenance(rig, 5)
    rig.world.slots[4].battery.temp_dc = 520  # 52 degC: above what a battery is accepted at
    rig.run(100)
    assert rig.cmd("release", slot=5)["ok"] is True
    rig.run(3000)
    assert rig.of("Quarantined")[-1] == dict(rig.of("Quarantined")[-1], slot=5,
                                             reason="temperature")
    st = rig.core.slot_state(5)
    assert (st["state"], st["reason"], st["charger"]["on"]) == ("quarantined", "temperature", False)
    valid(rig)


def test_release_persists_the_inventory_and_keeps_what_was_already_to_be_persisted():
    rig = stocked_rig()
    _quarantined_in_maintenance(rig, 5)
    rig.core.take_journal()
    rig.core.jdirty = J_CONFIG  # (every command also sets J_COUNTERS)
    assert rig.cmd("release", slot=5)["ok"] is True
    j = rig.core.take_journal()
    assert j & J_INVENTORY and j & J_CONFIG
    assert Core("cab-1", 12, journal=rig.core.journal()).slots[4].quarantine is None


def test_release_of_an_empty_quarantined_slot_leaves_it_empty_and_usable():
    rig = stocked_rig()
    _quarantined_in_maintenance(rig, 10)
    assert rig.cmd("release", slot=10)["ok"] is True
    rig.tick()
    assert rig.core.slot_state(10)["state"] == "empty"
    assert rig.cmd("set_mode", mode="in_service")["ok"] is True
    rig.tick()
    s = rig.cmd("start_swap", id_token="t")
    assert s["ok"] is True and s["slot"] == 7  # the first empty slot; 10 is among them again
    valid(rig)


def test_reset_emergency_keeps_what_was_already_to_be_persisted():
    rig = stocked_rig()
    _emergency(rig, "smoke")
    rig.core.take_journal()
    rig.core.jdirty = J_CONFIG  # (every command also sets J_COUNTERS)
    assert rig.cmd("reset_emergency")["ok"] is True
    j = rig.core.take_journal()
    assert j & J_MODE and j & J_CONFIG


# -- start_swap's session -------------------------------------------------------------------------
def test_sessions_are_numbered_from_s_1_and_the_count_outlives_a_power_cut():
    rig = stocked_rig()
    first = rig.cmd("start_swap", id_token="t")
    assert first["session"] == "s-1" and rig.core.session.id == "s-1"
    assert rig.of("SwapStarted")[-1]["session"] == "s-1"
    rig.cmd("cancel_swap")
    rig.run(500)
    assert rig.cmd("start_swap", id_token="t")["session"] == "s-2"
    after = stocked_rig(journal=rig.core.journal())  # a power cut with s-2 open: it ends
    assert after.core.counters["session"] == 2
    assert after.cmd("start_swap", id_token="t")["session"] == "s-3"


def test_start_swap_persists_the_count_and_the_session_and_publishes_the_cabinet():
    rig = stocked_rig()
    rig.core.take_journal()
    rig.core.take_dirty()
    rig.core.jdirty = J_MODE  # already owed to flash: still owed after
    rig.core.dirty = 1 << 5  # slot 5's state already owed to the broker: still owed after
    a = rig.cmd("start_swap", id_token="t")
    j = rig.core.take_journal()
    assert j & J_COUNTERS and j & J_SESSION and j & J_MODE, j
    d = rig.core.take_dirty()
    assert d & 1 and d & 1 << 5, bin(d)  # the cabinet state names the new session
    assert a["slot"] == rig.core.session.slot_in


# -- the command dispatcher's own answers --------------------------------------------------------------
@pytest.mark.parametrize("name", ["nope", ["start_swap"], {"cmd": "set_mode"}, 7, None])
def test_a_command_nobody_knows_is_unknown_cmd_with_its_name_in_words(name):
    # A name that is not text (a list or an object cannot even be looked up) is unknown as well,
    # not an internal error.
    rig = stocked_rig(slots=2, full=1, half=0)
    a = rig.cmd(name)
    assert a == {"req_id": "r-1", "ok": False, "error": "unknown_cmd",
                 "detail": "unknown command %r" % (name,)}
    valid(rig)


def test_an_accepted_commands_ack_carries_its_req_id_and_no_detail():
    rig = stocked_rig(slots=2, full=1, half=0)
    a = rig.cmd("set_mode", mode="maintenance")
    assert (a["req_id"], a["ok"], a["error"], a["detail"]) == ("r-1", True, None, "")


def test_a_refused_commands_ack_carries_its_req_id():
    rig = stocked_rig(slots=2, full=1, half=0)
    a = rig.cmd("start_swap")
    assert (a["req_id"], a["ok"], a["error"]) == ("r-1", False, "bad_args")


def test_a_handler_that_fails_is_answered_not_allowed_in_words_and_the_cabinet_goes_on(monkeypatch):
    # The last line of defence: a bug in one handler is an ack, never an exception in the control
    # task, and the next command is served.
    from tukar import commands

    def broken(self, body):
        raise ZeroDivisionError("x")

    rig = stocked_rig(slots=2, full=1, half=0)
    monkeypatch.setitem(commands._HANDLERS, "rebirth", broken)
    a = rig.cmd("rebirth")
    assert a == {"req_id": "r-1", "ok": False, "error": "not_allowed",
                 "detail": "internal error: ZeroDivisionError('x')"}
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    rig.run(200)
    assert rig.core.cabinet_state()["mode"] == "maintenance"
    valid(rig)


def test_an_event_the_shell_reports_is_emitted_as_the_cores_own_are():
    # An update's events (tukar.ota) go out through the core: numbered in its sequence, with the
    # tick's wall time and uptime, and what persists the event counter marked.
    rig = stocked_rig(slots=2, full=1, half=0)
    rig.core.take_journal()
    before = rig.core.event_n
    fields = {"version": "1.2.0", "bytes": 512, "size": 1024, "percent": 50}
    ev = rig.core.report("OtaProgress", fields)
    assert rig.core.events == [ev]
    assert ev == {"id": "cab-1-%d-%d" % (rig.core.boot, before + 1), "type": "OtaProgress",
                  "ts": rig.core.wall, "up_ms": rig.core.up_ms(), **fields}
    schemas.validate("event", dict(ev, seq=1))
    assert rig.core.take_journal() & J_COUNTERS
