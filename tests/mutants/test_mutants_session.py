"""A rider who is owed a battery the cabinet no longer has gets their own back (mqtt.md's swap
session; cabinet.md: a quarantined battery is never dispensed), and cancel_swap relocks exactly the
rider's slot, wherever it is. A swap that ends (not taken, a jammed or unreadable dispense slot
after the take) relocks exactly its slots and touches no other; what a session's step marks for
publishing and persisting. Every event and state is checked against the contract's schemas."""
import pytest
from coreworld import Battery, insert_until_dispensing, stocked_rig

from tukar.clock import wrap_add
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
