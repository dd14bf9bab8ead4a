"""Quarantine while a slot's door is open: the pack then in the slot is not the one the inventory
named (make explore found both: docs/safety.md, violations 1 and 4)."""
from coreworld import Battery, stocked_rig


def test_a_hot_pack_pushed_into_the_swap_slot_and_taken_back_is_not_reported_missing():
    rig = stocked_rig(full=2, half=0)
    n = rig.cmd("start_swap", id_token="t")["slot"]
    rig.run(300)
    assert rig.world.open_door(n)
    assert rig.world.insert(n, Battery("HOT-1", soc=50, temp=65))
    rig.run(300)  # its sensor reads 65 degC: quarantined at once, the swap aborts
    assert rig.of("Quarantined")[-1]["slot"] == n
    assert rig.of("SwapAborted")[-1]["reason"] == "fault"
    assert rig.world.take(n) is not None  # the door is still open: the rider takes it back
    rig.world.close_door(n)
    rig.run(1000)
    assert not rig.of("BatteryMissing")
    s = rig.core.slots[n - 1]
    assert s.serial is None and not s.accepted and s.quarantine == "overtemp"


def test_a_pack_changed_in_maintenance_for_a_hot_one_is_not_kept_as_the_old_pack():
    rig = stocked_rig(full=2, half=0)
    old = rig.world.slots[0].battery.serial
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    assert rig.cmd("open_slot", slot=1)["ok"]
    rig.run(300)
    assert rig.world.open_door(1)
    assert rig.world.take(1).serial == old
    assert rig.world.insert(1, Battery("HOT-2", soc=50, temp=65))
    rig.run(300)  # quarantined with the door open
    rig.world.close_door(1)
    rig.run(1000)
    s = rig.core.slots[0]
    assert s.quarantine == "overtemp" and not s.accepted
    assert s.serial in (None, "HOT-2")
    assert rig.core.journal()["inventory"][0][0] != old
    assert rig.core.charge_ma[0] == 0
