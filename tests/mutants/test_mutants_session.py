"""A rider who is owed a battery the cabinet no longer has gets their own back (mqtt.md's swap
session; cabinet.md: a quarantined battery is never dispensed), and cancel_swap relocks exactly the
rider's slot, wherever it is. A swap that ends (not taken, a jammed or unreadable dispense slot
after the take) relocks exactly its slots and touches no other; what a session's step marks for
publishing and persisting. The session's less travelled paths, each to its end: a battery pulled
back out before the bolt catches it, a refusal or a give-back while nothing is left to hand out, a
dispense pack that turns bad and falls silent, the wait for a pack still being identified, and the
timers of a swap's slots when it ends unseen. Every event and state is checked against the
contract's schemas."""
import json

import pytest
from coreworld import Battery, Rig, insert_until_dispensing, rider_inserts, stocked_rig

from tukar.clock import wrap_add, wrap_diff
from tukar.core import Core
from tukar.states import J_COUNTERS, J_INVENTORY, J_SESSION
from tukar_tools import schemas


pytestmark = pytest.mark.usefixtures("every_event_and_state_fits_the_contract")


def test_with_nothing_left_to_hand_out_the_rider_gets_their_own_battery_back():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.tick()
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    for _ in range(40):
        rig.tick()
        if not rig.core.lock_cmd[n - 1]:
            break
    assert rig.core.lock_cmd[n - 1] is False  # the rider's door opens again
    assert all(rig.core.lock_cmd[i] for i in range(4) if i != n - 1)
    j = rig.core.journal()
    assert j["session"]["in_recorded"] is False  # a power cut now hands nothing out
    assert j["inventory"][n - 1][2] is False  # the rider's battery is not the cabinet's
    rig.run(300)
    rig.world.open_door(n)
    assert rig.world.take(n).serial == "R-1"
    rig.world.close_door(n)
    rig.run(500)
    assert rig.of("SwapAborted")[-1]["reason"] == "no_battery_available"
    assert rig.core.lock_cmd[n - 1] is True and rig.core.slot_state(n)["state"] == "empty"
    assert not rig.of("BatteryOut") and not rig.of("BatteryMissing")
    for e in rig.events:
        schemas.validate("event", dict(e, seq=1))


def test_a_give_back_is_kept_by_a_power_cut():
    from tukar.core import Core
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.tick()
    rig.cmd("quarantine", slot=1, reason="inspection")
    rig.run(500)
    j = rig.core.journal()
    core = Core("cab-1", 4, journal=j, boot_reason="power_loss")
    assert core.journal()["inventory"][0][3] == "inspection"
    assert core.journal()["inventory"][n - 1][2] is False


def test_cancel_swap_relocks_the_last_slot_and_leaves_the_others_alone():
    rig = stocked_rig(slots=4, full=3, half=0)
    s = rig.cmd("start_swap", id_token="t")
    assert s["slot"] == 4  # the only empty slot, the last
    rig.run(300)
    a = rig.cmd("cancel_swap")
    assert a["ok"] is True
    rig.tick()
    assert rig.core.lock_cmd == [True] * 4
    before = [rig.core.charge_ma[i] for i in range(3)]
    assert [rig.core.slot_state(i)["state"] for i in (1, 2, 3)] == ["charging"] * 3
    assert all(before)
    rig.run(500)
    assert rig.core.slot_state(4)["state"] == "empty"
    assert rig.of("SwapAborted")[-1]["reason"] == "cancelled"


def test_cancel_swap_of_the_first_slot_leaves_the_others_alone():
    rig = stocked_rig(slots=4, full=0, half=0)
    for n in (2, 3, 4):
        rig.world.place(n, Battery("F-%d" % n, soc=95))
    rig.run(1000)
    s = rig.cmd("start_swap", id_token="t")
    assert s["slot"] == 1
    rig.run(300)
    assert rig.cmd("cancel_swap")["ok"]
    rig.tick()
    assert rig.core.lock_cmd == [True] * 4
    assert [rig.core.slot_state(i)["state"] for i in (2, 3, 4)] == ["charging"] * 3


def _swap_to_dispensing(rig):
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while rig.core.session.phase != "dispensing":
        rig.tick()
    return rig.core.session.slot_out


def test_a_dispense_battery_at_exactly_minus_10_or_50_degc_is_still_handed_out():
    for temp_dc in (-100, 500):  # rule 6: inside -10 to 50 degC, the ends included
        rig = stocked_rig(slots=4, full=1, half=0)
        rig.world.slots[0].battery.temp_dc = temp_dc
        rig.world.slots[0].slot_temp_dc = temp_dc
        rig.run(300)
        out = _swap_to_dispensing(rig)
        assert out == 1
        rig.run(400)
        assert rig.core.lock_cmd[0] is False, temp_dc
        rig.world.open_door(1)
        rig.world.take(1)
        rig.world.close_door(1)
        rig.run(400)
        assert rig.of("SwapCompleted"), temp_dc


def test_quarantining_the_dispense_slot_with_its_door_open_ends_the_swap_as_a_fault():
    rig = stocked_rig()
    out = _swap_to_dispensing(rig)
    rig.run(300)
    assert rig.world.open_door(out)  # the rider has opened it, the battery still inside
    rig.tick()
    assert rig.cmd("quarantine", slot=out, reason="inspection")["ok"]
    rig.run(200)
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"
    assert rig.core.lock_cmd[out - 1] is True


def test_the_give_back_opens_the_riders_door_under_the_multi_rate_tick():
    # The device's step() evaluates only the slots its mask names and those the core watches:
    # the give-back must schedule the rider's slot itself.
    from tukar.clock import wrap_add
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.tick()
    rig.cmd("quarantine", slot=1, reason="inspection")
    for _ in range(60):  # with nothing in the shell's mask
        rig.now = wrap_add(rig.now, rig.tick_ms)
        rig.world.step(rig.now)
        rig.core.step(rig.now, 0)
        if rig.core.session is not None and rig.core.session.phase == "rejected":
            break
    assert rig.core.session.phase == "rejected"
    for _ in range(3):
        rig.now = wrap_add(rig.now, rig.tick_ms)
        rig.world.step(rig.now)
        rig.core.step(rig.now, 0)
    assert rig.core.lock_cmd[n - 1] is False


# -- the give-back after BatteryIn: the dispense battery gone between BatteryIn and the choice -----
def _battery_in_then_nothing_left(rig, quarantine_riders=False):
    """The rider's battery is accepted (BatteryIn); before the next tick chooses the battery to hand
    out, the only full one is quarantined (and the rider's, now the cabinet's, too if asked)."""
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while not rig.of("BatteryIn"):
        rig.tick()
    assert rig.core.session.in_recorded and rig.core.slots[n - 1].accepted
    if quarantine_riders:
        assert rig.cmd("quarantine", slot=n, reason="inspection")["ok"]
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    return n


def test_with_nothing_left_after_battery_in_and_nothing_identifying_the_give_back_is_at_once():
    # Nothing being identified can still qualify: no reason to wait out identify_timeout_s.
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _battery_in_then_nothing_left(rig)
    rig.tick()
    assert rig.core.session.phase == "rejected"
    assert rig.core.lock_cmd[n - 1] is False


def test_a_battery_given_back_after_battery_in_is_no_longer_the_cabinets_on_flash():
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _battery_in_then_nothing_left(rig)
    rig.core.take_journal()
    rig.tick()
    assert rig.core.session.phase == "rejected"
    assert rig.core.take_journal() & J_INVENTORY  # the inventory section changed: persisted
    assert rig.core.journal()["inventory"][n - 1][2] is False  # not accepted: the rider's again


def test_a_quarantined_riders_battery_owed_a_give_back_stays_locked_and_the_swap_ends_at_once():
    # Rule 7: a quarantined battery's door stays shut; the session ends no_battery_available now.
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _battery_in_then_nothing_left(rig, quarantine_riders=True)
    rig.tick()
    assert rig.core.session is None
    assert rig.of("SwapAborted")[-1]["reason"] == "no_battery_available"
    rig.run(500)
    assert rig.core.lock_cmd == [True] * 4
    assert rig.core.slot_state(n)["state"] == "quarantined"


def test_the_give_back_after_the_dispense_battery_turns_bad_opens_the_riders_door_next_tick():
    # The multi-rate tick: the shell's mask names only the dispense slot, whose BMS reported a
    # fault flag behind its shut door; the rider's slot, not sampled, must still open at once.
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(1000)
    rig.world.slots[out - 1].battery.faults = 1

    def step(mask):
        rig.now = wrap_add(rig.now, rig.tick_ms)
        rig.world.step(rig.now)
        rig.core.step(rig.now, mask)

    step(1 << out)
    assert rig.core.session.phase == "rejected"
    step(0)
    assert rig.core.lock_cmd[n - 1] is False
    assert rig.core.lock_cmd[out - 1] is True


# -- a swap ended while dispensing -----------------------------------------------------------------
def test_a_swap_not_taken_leaves_the_riders_accepted_battery_charging_undisturbed():
    # mqtt.md, step 5: not taken, the dispense battery is identified again; the rider's battery,
    # the cabinet's since BatteryIn, is not: it keeps charging without a stop.
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("set_config", take_timeout_s=10)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(1000)
    assert rig.core.slot_state(n)["state"] == "charging"
    k = len(rig.events)
    while rig.core.session is not None:
        rig.tick()
    assert rig.of("SwapAborted")[-1]["reason"] == "not_taken"
    assert rig.core.slot_state(n)["state"] == "charging"
    rig.tick()
    assert rig.core.slot_state(n)["state"] == "charging"
    assert not [e for e in rig.events[k:]
                if e.get("slot") == n and e["type"] != "BatteryOutTimeout"]


def _taken_door_left_open(rig):
    """A swap whose dispense battery the rider has taken, the door still open."""
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(300)
    rig.world.open_door(out)
    rig.world.take(out)
    rig.tick()
    assert rig.core.session.out_gone
    return out


def test_a_dispense_lock_jamming_after_the_take_completes_the_swap_and_relocks_that_slot():
    rig = stocked_rig(slots=4, full=2, half=1)
    out = _taken_door_left_open(rig)
    ws = rig.world.slots[out - 1]
    ws.locked = True  # the bolt slides out on its own while unlocked, and sticks there
    ws.jammed = True
    for _ in range(60):
        rig.tick()
        if rig.core.session is None:
            break
    assert rig.of("Fault")[-1]["code"] == "lock_jam"
    assert rig.of("BatteryOut")[-1]["slot"] == out  # the rider has it: the swap is done
    assert rig.of("SwapCompleted")[-1]["slot_out"] == out and not rig.of("SwapAborted")
    assert rig.core.lock_cmd == [True] * 4  # rule 7: no door unlocked without a session
    others = [i for i in range(1, 5) if i != out and i != rig.of("SwapCompleted")[-1]["slot_in"]]
    assert all(rig.core.slot_state(i)["battery"] is not None for i in others)


def test_dispense_switches_failing_after_the_take_complete_the_swap():
    # The rider has the battery; the slot's switches then read their fail levels (door open,
    # battery present): the swap is done, and the slot is identified again before any use.
    rig = stocked_rig(slots=4, full=2, half=1)
    out = _taken_door_left_open(rig)
    rig.world.slots[out - 1].io_fault = True
    rig.tick()
    assert rig.core.session is None
    assert rig.of("SwapCompleted")[-1]["slot_out"] == out
    assert rig.core.lock_cmd[out - 1] is True
    assert rig.core.slot_state(out)["state"] == "identifying"



def test_a_pack_pushed_into_the_dispense_slot_while_its_switches_fail_is_identified_after():
    # Taken, another pack pushed in, then the slot's switches fail (the swap completes) and read
    # again with the door shut: the newcomer is a battery found in the slot, identified afresh.
    rig = stocked_rig(slots=4, full=2, half=1)
    out = _taken_door_left_open(rig)
    assert rig.world.insert(out, Battery("N-1", soc=50))
    rig.tick()
    ws = rig.world.slots[out - 1]
    ws.io_fault = True
    rig.tick()
    assert rig.core.session is None and rig.of("SwapCompleted")[-1]["slot_out"] == out
    rig.world.close_door(out)
    rig.run(300)  # shorter than a slot_io fault
    ws.io_fault = False
    rig.run(1000)
    st = rig.core.slot_state(out)
    assert st["state"] == "charging" and st["battery"]["serial"] == "N-1"


def test_a_riders_lock_that_closes_within_one_tick_still_identifies_the_battery():
    # A latch faster than the 50 ms tick: confirmed at the next tick, identification starts then.
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.world.lock_travel_ms = 0
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    rig.run(500)
    assert rig.of("BatteryIn")[-1]["slot"] == n
    assert rig.core.session.phase == "dispensing"

# -- what a session's step marks -------------------------------------------------------------------
def _door_shut_on_the_riders_battery(rig):
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, Battery("R-1", soc=20))
    rig.tick()
    rig.world.close_door(n)
    return n


def test_a_session_phase_change_publishes_the_cabinet_state():
    # The cabinet state carries the session's phase (mqtt.md): awaiting_battery -> identifying.
    rig = stocked_rig(slots=4, full=1, half=0)
    _door_shut_on_the_riders_battery(rig)
    rig.core.take_dirty()
    rig.tick()
    assert rig.core.cabinet_state()["session"]["phase"] == "identifying"
    assert rig.core.take_dirty() & 1


def test_a_reconnect_in_the_tick_of_a_session_phase_change_still_republishes_every_slot():
    # connected() asks for every state afresh; the session's step in the next tick keeps that.
    rig = stocked_rig(slots=4, full=1, half=0)
    _door_shut_on_the_riders_battery(rig)
    rig.core.take_dirty()
    assert rig.core.connected(7)
    rig.tick()
    assert rig.core.session.phase == "identifying"
    assert rig.core.take_dirty() == 0b11111  # the cabinet and its 4 slots


def test_the_tick_that_records_battery_in_marks_inventory_session_and_counters_to_persist():
    rig = stocked_rig(slots=4, full=1, half=0)
    _door_shut_on_the_riders_battery(rig)
    while not rig.of("BatteryIn"):
        rig.core.take_journal()
        rig.tick()
    j = rig.core.take_journal()
    assert j & J_INVENTORY and j & J_SESSION and j & J_COUNTERS


@pytest.mark.parametrize("damaged", ["battery_in", "battery_out"])
def test_a_swap_resumed_from_a_journal_missing_a_battery_view_names_it_by_the_inventory(damaged):
    """mqtt.md: SwapCompleted names each battery by serial or object, never null; a journal whose
    view of a battery is damaged still has the battery's serial in its inventory."""
    import json
    rig = stocked_rig(slots=4, full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(300)
    assert rig.world.open_door(out) and rig.world.take(out)
    j = json.loads(json.dumps(rig.core.journal()))
    j["session"][damaged] = None
    for ws in rig.world.slots:
        ws.locked = ws.lock_target = True
    core = Core("cab-1", 4, journal=j, boot_reason="power_loss")
    core.now = rig.now
    rig.core = rig.world.core = core
    rig.run(100)
    done = rig.of("SwapCompleted")[-1]
    assert (done["battery_in"], done["battery_out"]) == ("R-1", "F-%02d" % out)
    assert rig.of("BatteryOut")[-1]["battery"]["serial"] == "F-%02d" % out
    assert not rig.of("BatteryMissing")  # taken by the rider, not missing
    assert rig.of("Boot")[-1]["recovered"]["missing"] == []


def test_a_battery_taken_with_the_door_left_open_completes_the_swap_at_the_take_timeout():
    """mqtt.md step 5: the battery was taken; the rider never shut the door. At take_timeout_s
    the swap completes (the rider has the battery), the door is commanded locked to latch when it
    shuts, and nothing is reported not taken."""
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(300)
    assert rig.world.open_door(out) and rig.world.take(out)
    rig.run(59_000)
    assert not rig.of("SwapCompleted") and rig.core.session is not None
    rig.run(2000)
    done = rig.of("SwapCompleted")
    assert done and done[-1]["battery_out"] == "F-%02d" % out and done[-1]["battery_in"] == "R-1"
    assert not rig.of("BatteryOutTimeout") and not rig.of("SwapAborted")
    assert rig.core.session is None and rig.core.slots[out - 1].lock_cmd is True


def test_a_dispense_battery_quarantined_as_its_door_opens_ends_the_swap_as_fault_and_relocks():
    """Rule 7 with the door already open: the battery is no longer offered, the swap ends
    `SwapAborted(fault)` (mqtt.md's reason), and the bolt is commanded shut to latch when the door
    shuts; no other door opens for it."""
    rig = stocked_rig(slots=6, full=2, half=1)
    rig.cmd("start_swap", id_token="rider")
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    rig.run(300)
    assert rig.world.open_door(out)  # before the next tick reads it, the operator quarantines it
    assert rig.cmd("quarantine", slot=out, reason="operator")["ok"]
    rig.tick()
    ab = rig.of("SwapAborted")
    assert ab and ab[-1]["reason"] == "fault" and rig.core.session is None
    assert rig.core.slots[out - 1].lock_cmd is True
    assert [n for n in range(1, 7) if not rig.core.lock_cmd[n - 1]] in ([], [out])
    rig.world.close_door(out)
    rig.run(1000)
    assert all(rig.core.lock_cmd) and not rig.of("BatteryOut")


# -- the session's less travelled paths, each to its end ------------------------------------------
def _step(rig, mask=0):
    """One control tick of the device's multi-rate step: only the slots of `mask` (bit n: slot n)
    are news from the shell; the events it emitted are collected. Returns them."""
    rig.now = wrap_add(rig.now, rig.tick_ms)
    rig.world.step(rig.now)
    rig.core.step(rig.now, mask)
    new = list(rig.core.events)
    rig.events.extend(new)
    rig.core.events.clear()
    return new


def _riders_battery_shut_in(rig, battery):
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, battery)
    rig.world.close_door(n)
    rig.tick()
    assert rig.core.session.phase == "identifying"
    return n


def test_a_battery_pulled_back_out_before_the_bolt_catches_it_lets_the_rider_try_again():
    """The rider shuts the door on the battery, opens it again before the bolt is out and pulls the
    battery back: nothing is refused; the session waits for a battery again with the door
    commanded open (the bolt, out by then, goes back), and the next try goes through to the end."""
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _riders_battery_shut_in(rig, Battery("R-1", soc=20))
    assert rig.core.lock_cmd[n - 1] is True
    rig.tick()
    assert rig.world.open_door(n)  # the bolt is on its way (150 ms)
    rig.tick()
    rig.tick()
    assert rig.world.take(n).serial == "R-1"
    rig.tick()
    assert rig.world.slots[n - 1].locked  # it came out with the door open
    assert rig.core.session.phase == "awaiting_battery"
    assert rig.core.lock_cmd[n - 1] is False
    assert rig.core.slot_state(n)["state"] == "awaiting_battery"
    rig.run(1500)  # longer than rule 8's 1 s: the bolt goes back and is seen back
    assert rig.core.session.phase == "awaiting_battery"
    assert rig.core.slot_state(n)["lock"] == "unlocked"
    assert not rig.of("Fault") and not rig.of("BatteryRejected") and not rig.of("DoorForced")
    assert rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while rig.core.session.phase != "dispensing":
        rig.tick()
    assert [e["slot"] for e in rig.of("BatteryIn")] == [n]
    out = rig.core.session.slot_out
    rig.run(300)
    assert rig.world.open_door(out) and rig.world.take(out)
    rig.world.close_door(out)
    rig.run(300)
    done = rig.of("SwapCompleted")
    assert done and (done[-1]["slot_in"], done[-1]["battery_in"]) == (n, "R-1")
    assert not rig.of("SwapAborted") and not rig.of("BatteryRejected")
    assert rig.core.lock_cmd == [True] * 4


def test_a_battery_given_back_after_battery_in_is_taken_back_and_the_swap_ends():
    """The give-back after BatteryIn carried to its end: the rider's door opens, they take their
    battery and shut it; `SwapAborted(no_battery_available)`, the slot empty and locked, and the
    battery the rider took back is not missing."""
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _battery_in_then_nothing_left(rig)
    rig.tick()
    assert rig.core.session.phase == "rejected"
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.take(n).serial == "R-1"
    rig.world.close_door(n)
    rig.run(300)
    assert rig.core.session is None
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["no_battery_available"]
    assert rig.core.lock_cmd == [True] * 4
    st = rig.core.slot_state(n)
    assert st["state"] == "empty" and st["battery"] is None and st["lock"] == "locked"
    assert not rig.of("BatteryMissing") and not rig.of("BatteryOut")


def test_a_faulty_battery_is_refused_for_its_fault_even_with_nothing_left_to_hand_out():
    """mqtt.md step 3: a battery with fault flags is refused (`BatteryRejected`, reason
    battery_fault, then `SwapAborted(rejected)`), also when the only full pack was quarantined
    while it was being identified: it is not given back as `no_battery_available`."""
    rig = stocked_rig(slots=4, full=1, half=0)
    n = _riders_battery_shut_in(rig, Battery("R-1", soc=20, faults=1))
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    for _ in range(40):
        rig.tick()
        if rig.core.session.phase == "rejected":
            break
    rej = rig.of("BatteryRejected")
    assert len(rej) == 1 and (rej[0]["slot"], rej[0]["reason"]) == (n, "battery_fault")
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.take(n)
    rig.world.close_door(n)
    rig.run(300)
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["rejected"]
    assert rig.core.lock_cmd == [True] * 4


def test_a_good_battery_given_back_and_left_in_is_held_under_its_serial():
    """Nothing left to hand out before BatteryIn: the rider's good battery goes back; left inside
    past take_timeout_s it is locked in and quarantined rejected_not_taken, held (not the
    cabinet's) under its serial, so that a pack later pulled through a forced door is reported
    missing by name."""
    rig = stocked_rig(slots=4, full=1, half=0)
    assert rig.cmd("set_config", take_timeout_s=10)["ok"]
    n = _riders_battery_shut_in(rig, Battery("R-1", soc=20))
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    while rig.core.session.phase != "rejected":
        rig.tick()
    assert not rig.of("BatteryIn") and not rig.of("BatteryRejected")
    rig.run(10_100)
    assert rig.core.session is None
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["no_battery_available"]
    q = [e for e in rig.of("Quarantined") if e["slot"] == n]
    assert len(q) == 1 and q[0]["reason"] == "rejected_not_taken"
    rig.run(1000)
    assert rig.core.journal()["inventory"][n - 1] == ["R-1", None, False, "rejected_not_taken", True]
    st = rig.core.slot_state(n)
    assert st["state"] == "quarantined" and st["battery"]["serial"] == "R-1"
    assert rig.core.lock_cmd == [True] * 4
    assert rig.world.open_door(n, force=True) and rig.world.take(n)
    rig.tick()
    missing = rig.of("BatteryMissing")
    assert [(e["slot"], e["serial"]) for e in missing] == [(n, "R-1")]


def _one_full_pack_in_the_last_slot(config=None):
    """Four slots, one full pack, in the last one (the schedule's bits stop at slot 4: a slot
    scheduled one past the dispense slot would be none), booted and settled: the rider's slot is
    1. `config`: Core's, identify_timeout_s included (not settable by command)."""
    rig = Rig(Core("cab-1", 4, config=config))
    rig.world.place(4, Battery("F-04", soc=95))
    rig.run(1000)
    return rig


@pytest.mark.parametrize("rider", ["takes_it_back", "leaves_it", "takes_it_door_left_open"])
def test_a_dispense_pack_that_turns_bad_and_falls_silent_is_identified_again_after_the_give_back(rider):
    """The only dispense pack reports a fault behind its shut door: it is locked in again and
    identified anew, and the rider's battery goes back. Its BMS then falls silent. However the
    rider ends the give-back (their battery taken back, left inside past take_timeout_s, taken
    with the door left open), the swap ends `no_battery_available`, every door ends commanded
    shut, and the silent pack, identified again from the swap's end, is refused no_bms."""
    rig = _one_full_pack_in_the_last_slot({"identify_timeout_s": 10, "take_timeout_s": 10})
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    assert (n, out) == (1, 4)
    rig.run(300)  # its door unlocked; the rider has not opened it yet
    rig.world.slots[out - 1].battery.faults = 1
    while rig.core.session.phase == "dispensing":
        rig.tick()
    rig.world.slots[out - 1].bms_dead = True
    assert rig.core.session.phase == "rejected"
    assert rig.core.lock_cmd[out - 1] is True
    assert rig.core.slot_state(out)["state"] == "identifying"
    rig.run(300)
    assert rig.core.lock_cmd[n - 1] is False
    if rider != "leaves_it":
        assert rig.world.open_door(n) and rig.world.take(n).serial == "R-1"
        if rider == "takes_it_back":
            rig.world.close_door(n)
    for _ in range(300):
        rig.tick()
        if rig.core.session is None:
            break
    assert [e["reason"] for e in rig.of("SwapAborted")] == ["no_battery_available"]
    assert rig.core.lock_cmd == [True] * 4
    assert rig.core.slot_state(out)["state"] == "identifying"
    rig.run(11_000)
    q = {e["slot"]: e["reason"] for e in rig.of("Quarantined")}
    assert q[out] == "no_bms"
    if rider == "leaves_it":
        assert q[n] == "rejected_not_taken"
        assert rig.core.slot_state(n)["battery"]["serial"] == "R-1"
    else:
        assert n not in q and rig.core.slot_state(n)["battery"] is None
    assert rig.core.lock_cmd == [True] * 4
    assert not rig.of("BatteryOut") and not rig.of("SwapCompleted")


def test_a_battery_pushed_into_the_dispense_slot_after_the_take_is_locked_in_and_identified():
    """Taken, then another battery pushed in and the door shut: the swap completes with the battery
    taken; the slot is commanded locked (rule 7: no door open without a session) and the newcomer
    identified as a battery found there, then charged."""
    rig = stocked_rig(slots=4, full=2, half=1)
    out = _taken_door_left_open(rig)
    assert rig.world.insert(out, Battery("N-1", soc=50))
    rig.world.close_door(out)
    rig.tick()
    assert rig.core.session is None
    done = rig.of("SwapCompleted")[-1]
    assert (done["slot_out"], done["battery_out"]) == (out, "F-%02d" % out)
    assert rig.core.lock_cmd == [True] * 4
    rig.run(1000)
    st = rig.core.slot_state(out)
    assert st["state"] == "charging" and st["battery"]["serial"] == "N-1" and st["lock"] == "locked"
    assert not rig.world.open_door(out)
    assert not rig.of("BatteryMissing") and not rig.of("SwapAborted")


def test_a_dispense_pack_quarantined_behind_its_shut_door_stays_held_while_another_is_handed_out():
    """The operator quarantines the dispense pack before the rider opens its door: another pack is
    handed out, and the quarantined one is held (its door was unlocked: it is not taken in again
    as the cabinet's pack), locked in, not charged."""
    rig = stocked_rig(slots=4, full=2, half=0)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    assert out == 1
    rig.run(300)
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]
    rig.tick()
    assert rig.core.session.slot_out == 2
    rig.run(1000)
    assert rig.core.journal()["inventory"][0] == ["F-01", None, False, "inspection", True]
    st = rig.core.slot_state(1)
    assert st["state"] == "quarantined" and st["lock"] == "locked" and not st["charger"]["on"]
    assert rig.core.lock_cmd[0] is True
    assert rig.world.open_door(2) and rig.world.take(2)
    rig.world.close_door(2)
    rig.run(300)
    done = rig.of("SwapCompleted")
    assert done and (done[-1]["slot_out"], done[-1]["battery_out"]) == (2, "F-02")
    assert rig.core.journal()["inventory"][0] == ["F-01", None, False, "inspection", True]


def test_after_battery_in_the_swap_waits_for_a_pack_being_identified_under_the_multi_rate_tick():
    """BatteryIn recorded, then nothing left to hand out but a pack found in another slot, being
    identified (it may yet qualify). The session waits for it every tick by itself, with nothing
    in the shell's mask; the pack is refused (no BMS answers it), and the rider's door opens at
    the next tick to give their battery back."""
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.world.place(4, Battery("X-04", soc=95))  # found in slot 4; its BMS has not answered
    rig.world.slots[3].bms_dead = True
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while not rig.of("BatteryIn"):
        rig.tick()
    assert rig.core.slot_state(4)["state"] == "identifying"
    assert rig.cmd("quarantine", slot=1, reason="inspection")["ok"]  # the only full pack
    for _ in range(80):
        new = _step(rig, 0)
        if [e for e in new if e["type"] == "Quarantined" and e["slot"] == 4]:
            break
        assert rig.core.session.phase == "identifying"
        assert rig.core.lock_cmd[n - 1] is True
    assert rig.of("Quarantined")[-1]["reason"] == "no_bms"
    assert rig.core.session.phase == "identifying"
    _step(rig, 0)
    assert rig.core.session.phase == "rejected"
    assert rig.core.lock_cmd[n - 1] is False
    assert not rig.of("BatteryOut")


def test_a_swap_resumed_after_battery_in_waits_identify_timeout_s_to_the_tick_then_gives_back():
    """A power cut just after BatteryIn: at the boot every pack is identified again, and the rider
    is owed one. The only full pack's BMS no longer answers: the session waits for it exactly
    identify_timeout_s (3 s, from the boot), stepping by itself, and at that tick gives the
    rider's battery back."""
    rig = stocked_rig(slots=3, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    rig.run(300)
    assert rig.world.open_door(n) and rig.world.insert(n, Battery("R-1", soc=20))
    rig.world.close_door(n)
    while not rig.of("BatteryIn"):
        rig.tick()
    j = json.loads(json.dumps(rig.core.journal()))  # the cut, before the next tick chooses
    assert j["session"]["in_recorded"] is True and j["session"]["slot_out"] is None
    rig.world.slots[0].bms_dead = True
    core = Core("cab-1", 3, journal=j, boot_reason="power_loss")
    core.now = rig.now
    rig.core = rig.world.core = core
    _step(rig, 0)  # the boot: every slot
    boot = rig.now
    while wrap_diff(rig.now, boot) < 2950:
        _step(rig, 0)
        assert rig.core.session.phase == "identifying"
        assert rig.core.lock_cmd[n - 1] is True
    assert rig.core.slot_state(n)["state"] == "charging"  # the rider's, identified again
    _step(rig, 0)
    assert wrap_diff(rig.now, boot) == 3000
    assert rig.core.session.phase == "rejected"
    assert rig.core.lock_cmd[n - 1] is False
    assert [e["reason"] for e in rig.of("Quarantined")] == ["no_bms"]


def test_sensor_mismatch_timers_fire_to_the_tick_across_the_end_of_a_swap_its_slots_did_not_see():
    """Rule 5 under the multi-rate tick: a mismatch on slot 2, and one on the rider's slot 3 (the
    cabinet's since BatteryIn) 400 ms later; the swap then completes in a tick that evaluates
    only the dispense slot. Each mismatch is a fault 1 s after it began, to the tick."""
    rig = stocked_rig(slots=4, full=1, half=1)
    rig.cmd("start_swap", id_token="t")
    n = rig.core.session.slot_in
    out = insert_until_dispensing(rig, Battery("R-1", soc=20))
    assert (n, out) == (3, 1)
    rig.run(300)
    rig.world.slots[1].slot_temp_dc = 450  # 20 degC above its pack
    _step(rig, 1 << 2)
    t2 = rig.now
    for _ in range(7):
        _step(rig, 0)
    rig.world.slots[n - 1].slot_temp_dc = 450
    _step(rig, 1 << n)
    t3 = rig.now
    assert rig.world.open_door(out) and rig.world.take(out)
    _step(rig, 1 << out)
    rig.world.close_door(out)
    _step(rig, 1 << out)
    assert rig.core.session is None and rig.of("SwapCompleted")
    faults = {}
    while wrap_diff(rig.now, t3) < 1500:
        for e in _step(rig, 0):
            if e["type"] == "Fault":
                faults[e["slot"]] = (e["code"], wrap_diff(rig.now, t2 if e["slot"] == 2 else t3))
    assert faults == {2: ("temp_mismatch", 1000), 3: ("temp_mismatch", 1000)}


# -- a pack accepted where the inventory named another --------------------------------------------------
def test_a_pack_found_in_place_of_another_after_a_cut_reports_that_one_missing_and_starts_its_own_wear():
    rig = stocked_rig(slots=4, full=2, half=1)
    journal = json.loads(json.dumps(rig.core.journal()))
    journal["wear"] = [2, 3, 4 | 256, 0]  # BMS faults and overheats counted against each pack
    rig.world.slots[1].battery = Battery("N-02", soc=95)  # exchanged while the power was out
    rig.core = rig.world.core = Core("cab-1", 4, journal=journal, boot_reason="power_loss")
    rig.core.now = rig.now
    rig.events.clear()
    rig.run(1500)
    assert [(e["slot"], e["serial"]) for e in rig.of("BatteryMissing")] == [(2, "F-02")]
    assert rig.core.slot_state(2)["battery"]["serial"] == "N-02"
    assert rig.core.journal()["wear"] == [2, 0, 4 | 256, 0]  # the new pack's own count; no other's


def test_a_new_pack_a_little_inside_the_charge_window_charges_at_once():
    # Rule 2's hysteresis holds a pack that left the window until it is 3 degC inside; a pack just
    # accepted has left nothing: at 1 degC (the window opens at 0) it charges.
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.cmd("start_swap", id_token="t")
    n = rider_inserts(rig, Battery("R-1", soc=40, temp=1), wait_ms=0)
    rig.run(3000)
    assert rig.core.slot_state(n)["state"] == "charging"
    assert rig.core.slot_state(n)["battery"]["serial"] == "R-1"
