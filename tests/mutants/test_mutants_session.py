"""A rider who is owed a battery the cabinet no longer has gets their own back (mqtt.md's swap
session; cabinet.md: a quarantined battery is never dispensed), and cancel_swap relocks exactly the
rider's slot, wherever it is."""
from coreworld import Battery, stocked_rig

from tukar_tools import schemas


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
