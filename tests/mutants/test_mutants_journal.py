"""Persistence and recovery (cabinet.md) where the mutation run of journal.py found the suite
blind: what the journal keeps across a power cut (counters, mode, latched causes, the session's
token, request and age), what the boot reports (mqtt.md's `Boot.recovered`), a damaged journal
skipped entry by entry, and a swap resumed at the boot wherever its slots are. One behaviour per
test (docs/safety.md, "Mutation testing")."""
import json

import pytest
from coreworld import Battery, Rig, insert_until_dispensing, rider_inserts, stocked_rig

from tukar.clock import wrap_diff
from tukar.core import Core
from tukar.states import J_COUNTERS, J_SESSION
from tukar_tools import schemas


pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")


def saved(rig):
    """The journal as LittleFS would hold it after the last write."""
    return json.loads(json.dumps(rig.core.journal()))


def reboot(rig, journal=None, reason="power_loss"):
    """A power cut: the core boots again from `journal` (by default what the cabinet last wrote);
    fail-secure locks have dropped into the locked position."""
    if journal is None:
        journal = saved(rig)
    for ws in rig.world.slots:
        ws.locked = True
        ws.lock_target = True
    core = Core(rig.core.id, rig.core.n_slots, journal=journal, boot_reason=reason)
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    return core


def rig_with(slots, packs):
    """A settled cabinet with the given {slot: Battery}."""
    rig = Rig(Core("cab-1", slots))
    for n in packs:
        rig.world.place(n, packs[n])
    rig.run(1000)
    return rig


def take(rig, n):
    rig.world.open_door(n)
    b = rig.world.take(n)
    rig.world.close_door(n)
    return b


def boot_report(rig):
    return rig.of("Boot")[-1]["recovered"]


# -- what the boot reports (mqtt.md: Boot.recovered) -----------------------------------------------
def test_the_boot_report_names_the_interrupted_session_and_its_phase():
    rig = stocked_rig(slots=6, full=2, half=1)
    sid = rig.cmd("start_swap", id_token="t", request_id="q-1")["session"]
    rig.run(300)
    reboot(rig)
    rig.run(200)
    rec = boot_report(rig)
    assert (rec["session"], rec["session_phase"]) == (sid, "awaiting_battery")


def test_a_held_battery_taken_while_unpowered_is_in_the_boot_report_as_missing():
    rig = stocked_rig(slots=6, full=2, half=0)
    rig.world.place(4, Battery("BAD-4", soc=50, faults=1))  # refused: held, quarantined
    rig.run(1000)
    assert rig.core.slot_state(4)["state"] == "quarantined"
    rig.world.slots[3].battery = None
    reboot(rig)
    rig.run(200)
    assert boot_report(rig)["missing"] == [4]


# -- what the journal keeps ------------------------------------------------------------------------
def test_the_event_counter_continues_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=1)
    last = int(rig.events[-1]["id"].rsplit("-", 1)[1])
    reboot(rig)
    rig.run(200)
    assert rig.of("Boot")[-1]["id"] == "cab-1-2-%d" % (last + 1)


def test_bdseq_is_kept_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.core.connected(7)
    reboot(rig)
    assert rig.core.counters.get("bdseq", 0) == 7  # what the link counts on from


@pytest.mark.parametrize("mode", ["maintenance", "out_of_service"])
def test_the_mode_set_by_a_command_survives_a_power_cut(mode):
    rig = stocked_rig(slots=4, full=1, half=0)
    assert rig.cmd("set_mode", mode=mode)["ok"]
    reboot(rig)
    rig.run(200)
    assert boot_report(rig)["mode"] == mode
    assert rig.core.cabinet_state()["mode"] == mode


def test_a_latched_emergency_keeps_its_cause_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.world.smoke = True
    rig.run(200)
    rig.world.smoke = False  # gone, but latched until reset_emergency
    rig.run(200)
    reboot(rig)
    rig.run(200)
    st = rig.core.cabinet_state()
    assert st["mode"] == "emergency" and st["alarms"] == ["smoke"]
    assert rig.cmd("reset_emergency")["ok"]
    assert [e["cause"] for e in rig.of("EmergencyCleared")] == ["smoke"]


# -- a damaged journal: each malformed entry skipped, the rest trusted -----------------------------
def test_a_malformed_inventory_entry_is_skipped_and_the_entries_after_it_restored():
    rig = stocked_rig(slots=4, full=2, half=0)
    j = saved(rig)
    j["inventory"][0] = j["inventory"][0][:3]  # cut short
    rig.world.slots[1].battery = None  # slot 2's pack went while the power was off
    reboot(rig, j)
    rig.run(200)
    assert boot_report(rig)["missing"] == [2]


@pytest.mark.parametrize("entry", [[123, None, False, None, False],  # a serial that is no text
                                   [None, "ref48v", False, None, False]])  # a profile, not accepted
def test_an_inventory_entry_that_names_no_battery_reports_none_missing(entry):
    rig = stocked_rig(slots=4, full=1, half=0)
    j = saved(rig)
    j["inventory"][3] = entry
    reboot(rig, j)  # slot 4 is empty
    rig.run(500)
    assert boot_report(rig)["missing"] == []
    assert not rig.of("BatteryMissing")
    assert rig.core.slot_state(4)["state"] == "empty"


def test_an_inventory_entry_whose_profile_is_not_a_name_is_identified_again():
    rig = stocked_rig(slots=4, full=1, half=0)
    j = saved(rig)
    j["inventory"][0][1] = {"name": "ref48v"}
    reboot(rig, j)
    rig.run(1000)
    st = rig.core.slot_state(1)
    assert st["state"] in ("charging", "ready") and st["battery"]["profile"] == "ref48v"


def test_a_quarantine_entry_that_is_not_a_reason_publishes_no_such_reason():
    rig = stocked_rig(slots=4, full=1, half=0)
    j = saved(rig)
    j["inventory"][0][3] = 1
    reboot(rig, j)
    rig.run(1000)
    st = rig.core.slot_state(1)
    assert st["reason"] is None or isinstance(st["reason"], str)
    schemas.validate("slot/1/state", dict(st, seq=1))


# -- a swap resumed at the boot --------------------------------------------------------------------
def cut_at_battery_in(rig):
    """The rider's battery accepted (BatteryIn written), no battery chosen yet: the power goes."""
    rider_inserts(rig, Battery("R-1", soc=10), wait_ms=0)
    while not rig.of("BatteryIn"):
        rig.tick()
    assert rig.core.session.slot_out is None
    reboot(rig)


def cut_before_battery_in(rig):
    """The rider's battery is in, its door shut, not yet identified: the power goes."""
    rider_inserts(rig, Battery("R-1", soc=10), wait_ms=0)
    rig.tick()
    assert rig.core.session.phase == "identifying" and not rig.of("BatteryIn")
    reboot(rig)


@pytest.mark.parametrize("first, last", [(1, 4), (4, 1)])
def test_a_swap_between_the_first_and_the_last_slot_completes_across_a_power_cut(first, last):
    """The rider's slot and the dispense slot at the ends of the cabinet's numbering: the battery
    taken just before the cut completes the swap at the boot, and no other door opens."""
    packs = {n: Battery("H-%d" % n, soc=60, cycles=n) for n in (2, 3)}
    packs[last] = Battery("F-%d" % last, soc=95)
    rig = rig_with(4, packs)
    rig.cmd("start_swap", id_token="t")
    assert rig.core.session.slot_in == first
    out = insert_until_dispensing(rig, Battery("R-1", soc=10))
    assert out == last
    rig.run(300)
    rig.world.open_door(out)
    rig.world.take(out)
    reboot(rig)
    rig.run(3000)
    done = rig.of("SwapCompleted")
    assert [(e["slot_in"], e["slot_out"]) for e in done] == [(first, last)]
    assert not rig.of("SwapAborted") and all(rig.core.lock_cmd)


def test_a_swap_resumed_after_a_power_cut_keeps_the_rider_s_token_and_request():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="rider-7", request_id="q-7")
    insert_until_dispensing(rig, Battery("R-1", soc=10))
    reboot(rig)
    rig.run(300)
    take(rig, rig.core.session.slot_out)
    rig.run(300)
    for e in rig.of("BatteryOut") + rig.of("SwapCompleted"):
        assert (e["id_token"], e["request_id"]) == ("rider-7", "q-7")
    assert len(rig.of("SwapCompleted")) == 1


def test_a_swap_s_duration_counts_the_time_before_the_power_cut():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    t0 = rig.now
    insert_until_dispensing(rig, Battery("R-1", soc=10))
    rig.run(1000)
    before = rig.now - t0
    reboot(rig)
    rig.run(300)
    take(rig, rig.core.session.slot_out)
    rig.run(300)
    total = rig.now - t0
    assert before <= rig.of("SwapCompleted")[-1]["duration_ms"] <= total


def test_a_session_restored_without_its_age_completes_timed_from_the_boot():
    """A journal whose session lacks its age (damaged, or written before it was kept): the swap
    still completes, its duration counted from the boot."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=10))
    j = saved(rig)
    del j["session"]["age_ms"]
    booted = rig.now
    reboot(rig, j)
    rig.run(300)
    take(rig, rig.core.session.slot_out)
    rig.run(300)
    assert 0 < rig.of("SwapCompleted")[-1]["duration_ms"] <= rig.now - booted


def test_a_cut_before_battery_in_gives_the_rider_s_battery_back_with_no_dispense_slot():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    cut_before_battery_in(rig)
    rig.tick()
    assert rig.core.lock_cmd[n - 1] is False  # the rider's door opens again
    ss = rig.core.cabinet_state()["session"]
    assert (ss["phase"], ss["slot_in"], ss["slot_out"]) == ("rejected", n, None)


def test_a_cut_at_battery_in_shows_no_dispense_slot_until_one_is_chosen():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    cut_at_battery_in(rig)
    rig.tick()
    ss = rig.core.cabinet_state()["session"]
    assert (ss["phase"], ss["slot_in"], ss["slot_out"]) == ("identifying", n, None)


@pytest.mark.parametrize("cut", ["before BatteryIn", "at BatteryIn", "dispensing"])
def test_the_boot_tick_marks_the_resumed_session_and_the_counters_to_be_written(cut):
    """The shell has the journal it booted from on flash (take_journal) when the first tick runs,
    before any pack's BMS has answered: that tick moves the session on (a door to open again, or a
    battery to choose) and emits Boot, so the session and the counters are among the sections it
    reports changed, the session before any door opens (the write-ahead of ControlCycle)."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    if cut == "before BatteryIn":
        cut_before_battery_in(rig)
    elif cut == "at BatteryIn":
        cut_at_battery_in(rig)
    else:
        insert_until_dispensing(rig, Battery("R-1", soc=10))
        reboot(rig)
    for ws in rig.world.slots:
        ws.bms_dead = True
    rig.core.take_journal()
    rig.tick()
    assert rig.core.session is not None
    changed = rig.core.take_journal()
    assert changed & J_SESSION and changed & J_COUNTERS


def test_a_battery_quarantined_behind_the_dispense_door_before_a_cut_is_not_handed_out_after_it():
    """Rule 7: the operator quarantines the battery the cabinet was handing out, its door still
    shut, and the power goes before the next tick: after the boot that door stays locked."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=10))
    assert rig.cmd("quarantine", slot=out, reason="inspection")["ok"]
    reboot(rig)
    for _ in range(60):
        rig.tick()
        assert rig.core.lock_cmd[out - 1] is True
    assert rig.core.slot_state(out)["state"] == "quarantined"
    assert "emergency" not in [e["reason"] for e in rig.of("SwapAborted")]


def emergency_journal(rig):
    """What the cabinet wrote, with a smoke emergency latched beside the open swap (a journal this
    firmware does not write, as an emergency ends the swap in the tick that finds it)."""
    j = saved(rig)
    j["mode"] = "emergency"
    j["causes"] = 1
    return j


def test_a_swap_found_open_in_a_journal_with_a_latched_emergency_ends_as_emergency():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=10))
    reboot(rig, emergency_journal(rig))
    rig.run(500)
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["emergency"]
    assert all(rig.core.lock_cmd) and rig.core.session is None


def test_a_rider_s_battery_found_in_a_cabinet_booting_in_emergency_stays_locked_in():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rider_inserts(rig, Battery("R-1", soc=10), wait_ms=0)
    rig.tick()
    assert not rig.of("BatteryIn")
    reboot(rig, emergency_journal(rig))
    rig.run(3000)
    assert rig.core.session is None and all(rig.core.lock_cmd)
    assert rig.core.slot_state(n)["battery"]["serial"] == "R-1"


def test_a_restored_session_whose_id_is_not_text_is_ended_under_a_text_id():
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t", request_id="q-1")
    rig.run(300)
    j = saved(rig)
    j["session"]["id"] = 42
    reboot(rig, j)
    rig.run(200)
    ab = rig.of("SwapAborted")[-1]
    assert (ab["reason"], ab["request_id"]) == ("power_loss", "q-1")
    assert isinstance(ab["session"], str) and ab["session"]
    boot = rig.of("Boot")[-1]["recovered"]
    assert boot["session"] == ab["session"]  # the Boot report names it the same way


def test_a_swap_whose_dispense_battery_was_quarantined_before_a_cut_hands_out_another_after_it():
    """cabinet.md: a swap whose BatteryIn was recorded still completes after a power cut. The
    battery chosen was quarantined just before the cut: the rider gets another one, as without
    the cut, and the quarantined one stays locked in."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=10))
    assert rig.cmd("quarantine", slot=out, reason="inspection")["ok"]
    reboot(rig)
    rig.run(1000)
    ss = rig.core.session
    assert ss is not None and ss.phase == "dispensing" and ss.slot_out not in (None, out)
    other = ss.slot_out
    assert rig.core.lock_cmd[other - 1] is False and rig.core.lock_cmd[out - 1] is True
    rig.run(300)
    assert rig.world.open_door(other) and rig.world.take(other)
    rig.world.close_door(other)
    rig.run(1000)
    done = rig.of("SwapCompleted")
    assert done and done[-1]["battery_in"] == "R-1" and not rig.of("SwapAborted")
    assert rig.core.slot_state(out)["state"] == "quarantined"


@pytest.mark.parametrize("after_battery_in", [False, True])
def test_a_battery_given_back_and_taken_back_during_a_power_cut_is_not_missing(after_battery_in):
    """Nothing left to hand out: the rider's battery goes back to them, its door unlocked; the
    power goes, and the rider takes their battery while it is out. The boot ends the swap
    (`SwapAborted(power_loss)`, cabinet.md) with the slot empty: the rider's own battery, which
    the cabinet was giving back, is not a battery missing (no BatteryMissing, no theft alarm), as
    it is not when they take it with the power on."""
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.tick()
    while after_battery_in and not rig.of("BatteryIn"):
        rig.tick()
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    while rig.core.session.phase != "rejected":
        rig.tick()
    rig.run(300)
    assert rig.core.lock_cmd[n - 1] is False
    j = saved(rig)
    assert j["inventory"][n - 1][0] == "R-1" and j["session"]["phase"] == "rejected"
    assert take(rig, n).serial == "R-1"  # while the power is out
    reboot(rig, j)
    rig.run(1000)
    assert boot_report(rig)["missing"] == []
    assert not rig.of("BatteryMissing")
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["power_loss"]
    st = rig.core.slot_state(n)
    assert st["state"] == "empty" and st["battery"] is None
    assert rig.core.lock_cmd == [True] * 4
    assert rig.core.journal()["inventory"][n - 1][0] is None


def test_the_energy_handed_over_is_reported_for_a_swap_completed_after_a_power_cut():
    """SwapCompleted.energy_wh needs the rider's battery as it was taken in: the journal's, since
    the slot now names the cabinet's pack, not the rider's reading."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=12, soh=90))
    expect_out = rig.core.session.battery_out
    reboot(rig)
    rig.run(300)
    take(rig, rig.core.session.slot_out)
    rig.run(300)
    done = rig.of("SwapCompleted")[-1]
    expect = (expect_out["soc"] / 100 * expect_out["soh"] / 100 - 0.12 * 0.90) * 30 * 48.3
    assert done["energy_wh"] is not None and abs(done["energy_wh"] - expect) <= 0.06, done


@pytest.mark.parametrize("slot_in", [99, 0, -1])
def test_a_restored_session_with_no_valid_rider_slot_moves_no_slot(slot_in):
    """A damaged journal's session names no slot of this cabinet: it ends power_loss, and no door
    (slot 1's least of all) is unlocked or given a phase by it."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="t")
    rig.run(300)
    j = saved(rig)
    j["session"]["slot_in"] = slot_in
    j["session"]["in_recorded"] = False
    reboot(rig, j)
    rig.run(1000)
    ab = rig.of("SwapAborted")[-1]
    assert ab["reason"] == "power_loss"
    assert all(rig.core.lock_cmd) and rig.core.session is None
    assert rig.core.slot_state(1)["state"] in ("ready", "charging"), rig.core.slot_state(1)


def test_the_boot_report_counts_the_journal_s_batteries_and_finds_only_unknown_packs_in_use():
    """Boot.recovered, whole: `batteries` is what the journal held (a pack taken since counts: it
    is the one missing); `found` is a pack nobody recorded in a slot in use, and neither a known
    pack, an empty slot nor a pack in a slot an operator took out of use."""
    rig = rig_with(6, {1: Battery("K-1"), 2: Battery("K-2")})
    assert rig.cmd("quarantine", slot=4, reason="door seal")["ok"]
    rig.run(200)
    j = saved(rig)
    rig.world.slots[1].battery = None  # taken while the cabinet had no power
    rig.world.place(3, Battery("U-3"))
    rig.world.place(4, Battery("U-4"))  # behind the quarantined door
    reboot(rig, j)
    rig.run(200)
    assert boot_report(rig) == {"session": None, "session_phase": None, "batteries": 2,
                                "missing": [2], "found": [3], "mode": "in_service"}


def test_a_bolt_found_open_at_the_boot_is_driven_in_retried_at_500_ms_and_jammed_at_1000_ms():
    """Rule 9 at the boot, with rule 8 after it: every lock is commanded in at the first tick,
    and one whose bolt stays out is supervised from that tick: the driver pulsed again at 500 ms,
    lock_jam at 1000 ms, never before."""
    rig = rig_with(4, {1: Battery("K-1")})
    reboot(rig)
    ws = rig.world.slots[1]
    ws.locked = False  # its bolt stuck out through the power cut
    ws.jammed = True
    s = rig.core.slots[1]
    rig.tick()  # the boot tick: reconciled, every lock commanded in
    t0 = rig.now
    assert s.lock_cmd is True
    while wrap_diff(rig.now, t0) < 450:
        rig.tick()
    assert s.lock_pulse == 0 and not rig.of("Fault")
    while wrap_diff(rig.now, t0) < 500:
        rig.tick()
    assert s.lock_pulse == 1 and not rig.of("Fault")
    while wrap_diff(rig.now, t0) < 950:
        rig.tick()
    assert not rig.of("Fault")
    while wrap_diff(rig.now, t0) < 1000:
        rig.tick()
    assert [(f["slot"], f["code"]) for f in rig.of("Fault")] == [(2, "lock_jam")]


def test_an_emergency_restored_from_the_journal_is_not_reset_before_the_cabinet_reads_its_sensors():
    """Before its first tick the cabinet does not know whether the cause is still there: a
    reset_emergency then is refused (busy); once it has looked, and the cause is gone, it is not."""
    rig = stocked_rig(slots=6, full=2, half=1)
    j = saved(rig)
    j["mode"] = "emergency"
    j["causes"] = 2  # the emergency stop, released while the cabinet had no power
    core = reboot(rig, j)
    a = rig.cmd("reset_emergency")
    assert a["error"] == "busy"
    assert a["detail"] == "the cabinet has not read its sensors since it started; send it again"
    assert core.mode == "emergency"
    rig.tick()
    assert rig.cmd("reset_emergency")["ok"]
    assert core.mode == "maintenance"


def test_a_bolt_commanded_in_at_the_boot_is_timed_from_that_command_through_unreadable_switches():
    """Rule 8 counts from the command, and the boot's relock is one: a slot whose switches cannot
    be read for the first 2 s, and whose bolt is still out when they come back, is retried at
    once (its 500 ms are long gone) and jammed 500 ms later, not given a fresh 500 ms."""
    rig = rig_with(4, {1: Battery("K-1")})
    reboot(rig)
    ws = rig.world.slots[1]
    ws.locked = False
    ws.jammed = True
    ws.io_fault = True
    s = rig.core.slots[1]
    rig.tick()  # the boot tick: every lock commanded in
    rig.run(2000)
    assert s.lock_pulse == 0
    ws.io_fault = False
    rig.tick()
    t0 = rig.now
    assert s.lock_pulse == 1
    jams = lambda: [f for f in rig.of("Fault") if f["code"] == "lock_jam"]  # noqa: E731
    while wrap_diff(rig.now, t0) < 450:
        rig.tick()
    assert not jams()
    while wrap_diff(rig.now, t0) < 500:
        rig.tick()
    assert [f["slot"] for f in jams()] == [2]
