"""The packs (tukar.packs): energy metering per slot and per swap, and retirement, by policy and by
the signed `retire` command, with what survives a power cut."""
import json

from hypothesis import given, strategies as st

from coreworld import Battery, insert_until_dispensing, rider_inserts, rider_takes, stocked_rig

from tukar.core import Core
from tukar.packs import RETIRED_MAX, serial_hash
from tukar.states import J_COUNTERS
from tukar_tools import schemas


def reboot(rig):
    """A power cut: the journal as the flash holds it, a new core on it, the locks fall shut."""
    journal = json.loads(json.dumps(rig.core.journal()))
    for ws in rig.world.slots:
        ws.locked = True
        ws.lock_target = True
    core = Core(rig.core.id, rig.core.n_slots, journal=journal, boot_reason="power_loss")
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    rig.run(1000)
    return core


def valid_events(rig):
    for i, e in enumerate(rig.events):
        schemas.validate("event", dict(e, seq=i % 256))


# == energy ===============================================================================
def test_a_slot_s_energy_is_integrated_from_the_bms_voltage_and_current_while_charging():
    rig = stocked_rig(full=0, half=1)  # slot 1 at 60 %, charging at 10 A
    core = rig.core
    assert core.charge_ma[0] == 10000
    rig.run(360_000)  # 6 minutes
    v = rig.world.slots[0].battery.voltage_mv()
    # about V x 10 A x 0.1 h: 49.6..50 V -> about 50 Wh (the voltage rises as it charges)
    wh = core.drawn_wh(0)
    assert abs(wh - v * 10 * 0.1 / 1000) < 2, (wh, v)
    t = core.telemetry()
    assert t["energy_wh"][0] == wh and t["energy_wh_total"] == sum(t["energy_wh"]) == wh
    assert all(x == 0 for x in t["energy_wh"][1:])


def test_a_charge_that_ends_goes_into_the_slot_s_total_once():
    rig = stocked_rig(full=0, half=1)
    rig.world.slots[0].battery.soc_pm = 995
    rig.run(600_000)
    stop = rig.of("ChargeStopped")[-1]
    assert stop["reason"] == "full"
    total = rig.core.drawn_wh(0)
    assert int(stop["energy_wh"]) == total and total > 0
    rig.run(60_000)  # stopped: nothing more is drawn, nothing counted twice
    assert rig.core.drawn_wh(0) == total
    assert rig.core.ledger[0] == 0  # the charge in progress: none


def test_the_energy_counters_survive_a_power_cut():
    rig = stocked_rig(full=0, half=2)
    rig.run(600_000)
    before = [rig.core.drawn_wh(i) for i in range(12)]
    assert before[0] > 50 and before[1] > 50
    core = reboot(rig)
    assert [core.drawn_wh(i) for i in range(12)] >= before  # and charging again since
    assert core.telemetry()["energy_wh"][:2] >= before[:2]


def test_drawn_energy_not_yet_written_asks_for_a_journal_write_past_50_wh():
    rig = stocked_rig(full=0, half=1)
    core = rig.core
    core.telemetry()
    core.jdirty = 0
    for _ in range(9):
        core.telemetry()  # the next with the counters is the 10th
    rig.run(240_000)  # about 33 Wh
    core.jdirty = 0
    core.telemetry()
    assert not core.jdirty & J_COUNTERS
    for _ in range(9):
        core.telemetry()
    rig.run(240_000)  # about 66 Wh since the last write
    core.jdirty = 0
    core.telemetry()
    assert core.jdirty & J_COUNTERS


def test_swap_completed_carries_the_energy_handed_over_from_soc_soh_and_the_profile():
    rig = stocked_rig(full=3, half=0)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=12, soh=90))
    out = rig.core.session.battery_out
    rider_takes(rig)
    done = rig.of("SwapCompleted")[-1]
    # ref48v: 30 Ah, 42.0..54.6 V -> 48.3 V nominal
    expect = (out["soc"] / 100 * out["soh"] / 100 - 0.12 * 0.90) * 30 * 48.3
    assert abs(done["energy_wh"] - expect) <= 0.06, (done["energy_wh"], expect)
    valid_events(rig)


# == retirement by policy =================================================================
def test_a_pack_below_the_soh_floor_found_in_a_slot_is_retired_and_held():
    rig = stocked_rig(full=2, half=0)
    rig.world.place(5, Battery("W-5", soc=95, soh=65))
    rig.run(1000)
    ev = rig.of("BatteryRetired")
    assert [(e["slot"], e["serial"], e["reason"]) for e in ev] == [(5, "W-5", "soh")]
    st5 = rig.core.slot_state(5)
    assert (st5["state"], st5["reason"], st5["dispensable"]) == ("quarantined", "retired", False)
    assert rig.core.charge_ma[4] == 0
    valid_events(rig)


def test_a_pack_past_the_cycle_ceiling_is_retired_and_the_ceiling_is_settable():
    rig = stocked_rig(full=1, half=0)
    rig.world.place(4, Battery("C-4", soc=95, cycles=1500))
    rig.run(1000)
    assert not rig.of("BatteryRetired")
    assert rig.cmd("set_config", retire_cycles_max=1000)["ok"]  # every pack looked at again
    assert [(e["slot"], e["reason"]) for e in rig.of("BatteryRetired")] == [(4, "cycles")]


def test_a_pack_whose_cycles_pass_the_ceiling_as_it_charges_is_retired_when_the_charge_ends():
    rig = stocked_rig(full=1, half=0)
    rig.world.place(4, Battery("C-4", soc=99, cycles=2000))
    rig.run(1000)
    assert rig.core.charge_ma[3] and not rig.of("BatteryRetired")
    rig.world.slots[3].battery.cycles = 2001  # the BMS counts the cycle near its end
    rig.run(120_000)
    assert rig.of("ChargeStopped")[-1]["slot"] == 4
    assert [(e["slot"], e["reason"]) for e in rig.of("BatteryRetired")] == [(4, "cycles")]


def test_a_pack_worn_since_it_was_accepted_is_held_rather_than_handed_out():
    rig = stocked_rig(full=0, half=0)
    rig.world.place(2, Battery("A-2", soc=100, cycles=10))
    rig.world.place(3, Battery("B-3", soc=95, cycles=10))
    rig.run(1000)
    rig.world.slots[1].battery.cycles = 2500  # counted up outside any charge the cabinet saw end
    rig.run(500)
    rig.cmd("start_swap", id_token="t")
    assert insert_until_dispensing(rig, Battery("R-1", soc=10)) == 3
    assert [(e["slot"], e["reason"]) for e in rig.of("BatteryRetired")] == [(2, "cycles")]


def test_repeated_bms_faults_retire_a_pack_at_the_third():
    rig = stocked_rig(full=0, half=0)
    rig.world.place(2, Battery("F-2", soc=80))
    rig.run(1000)
    b = rig.world.slots[1].battery
    for k in range(3):
        assert not rig.of("BatteryRetired"), k
        b.faults = 1
        rig.run(500)
        b.faults = 0
        rig.run(500)
    assert [(e["slot"], e["serial"], e["reason"]) for e in rig.of("BatteryRetired")] == \
        [(2, "F-2", "bms_faults")]


def test_a_second_overheat_retires_a_pack_that_the_first_quarantined():
    rig = stocked_rig(full=0, half=0)
    rig.world.place(3, Battery("H-3", soc=80))
    rig.run(1000)
    b = rig.world.slots[2].battery
    b.temp_dc = 620
    rig.run(500)
    assert rig.core.slot_state(3)["reason"] == "overtemp" and not rig.of("BatteryRetired")
    b.temp_dc = 300
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    assert rig.cmd("release", slot=3)["ok"]
    rig.run(1000)
    b.temp_dc = 610
    rig.run(500)
    assert [(e["slot"], e["reason"]) for e in rig.of("BatteryRetired")] == [(3, "overheats")]
    assert rig.core.slot_state(3)["reason"] == "retired"


def test_a_worn_pack_a_rider_returns_completes_their_swap_and_is_then_held():
    rig = stocked_rig(full=3, half=0)
    rig.cmd("start_swap", id_token="t")
    insert_until_dispensing(rig, Battery("R-1", soc=20, soh=60))
    rider_takes(rig)
    assert len(rig.of("SwapCompleted")) == 1
    slot_in = rig.of("SwapCompleted")[-1]["slot_in"]
    assert [(e["slot"], e["serial"], e["reason"]) for e in rig.of("BatteryRetired")] == \
        [(slot_in, "R-1", "soh")]
    assert rig.core.slot_state(slot_in)["state"] == "quarantined"


def test_a_retired_pack_is_never_dispensed_even_when_it_is_the_fullest():
    rig = stocked_rig(full=1, half=0)
    rig.world.place(6, Battery("OLD", soc=100, soh=55))
    rig.run(1000)
    rig.cmd("start_swap", id_token="t")
    out = insert_until_dispensing(rig, Battery("R-1", soc=10))
    assert out == 1


def test_the_retirement_limits_are_hard():
    rig = stocked_rig()
    for key, bad in (("retire_soh_min", 40), ("retire_soh_min", 95), ("retire_cycles_max", 100),
                     ("retire_bms_faults", 0), ("retire_overheats", 11), ("retire_soh_min", "x")):
        a = rig.cmd("set_config", **{key: bad})
        assert (a["ok"], a["error"]) == (False, "bad_args"), (key, bad)
    a = rig.cmd("set_config", retire_soh_min=80, retire_overheats=1)
    assert a["ok"] and a["config"]["retire_soh_min"] == 80
    assert rig.core.cfg["retire_soh_min"] == 80 and rig.core.cfg["retire_overheats"] == 1


# == retirement by command ================================================================
def test_retire_holds_the_named_pack_where_it_is():
    rig = stocked_rig(full=3, half=0)
    a = rig.cmd("retire", serial="F-02")
    assert a["ok"] and a["slot"] == 2 and a["serial"] == "F-02"
    assert [(e["slot"], e["reason"]) for e in rig.of("BatteryRetired")] == [(2, "command")]
    rig.run(200)
    assert rig.core.slot_state(2)["reason"] == "retired"
    valid_events(rig)


def test_a_pack_retired_by_command_elsewhere_is_refused_when_a_rider_brings_it_back():
    rig = stocked_rig(full=3, half=0)
    a = rig.cmd("retire", serial="X-77")
    assert a["ok"] and a["slot"] is None
    assert rig.of("BatteryRetired")[-1]["slot"] is None
    core = reboot(rig)  # the list survives a power cut
    assert core.is_retired("X-77")
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("X-77", soc=10), wait_ms=1000)
    rej = rig.of("BatteryRejected")[-1]
    assert (rej["reason"], rej["battery"]["serial"]) == ("retired", "X-77")
    assert not rig.of("BatteryIn")


def test_the_retired_list_keeps_the_last_64():
    rig = stocked_rig()
    for i in range(RETIRED_MAX + 6):
        assert rig.cmd("retire", serial="S-%03d" % i)["ok"]
    assert len(rig.core.retired) == RETIRED_MAX
    assert not rig.core.is_retired("S-000") and rig.core.is_retired("S-069")


def test_retire_with_bad_arguments_is_refused_and_moves_nothing():
    rig = stocked_rig(full=3, half=0)
    locks = list(rig.core.lock_cmd)
    for bad in ({}, {"serial": ""}, {"serial": 7}, {"serial": "x" * 65}):
        a = rig.cmd("retire", **bad)
        assert (a["ok"], a["error"]) == (False, "bad_args"), bad
    assert rig.core.lock_cmd == locks and rig.core.retired == [] and not rig.of("BatteryRetired")


def test_a_retired_pack_taken_out_in_maintenance_frees_its_slot():
    rig = stocked_rig(full=3, half=0)
    rig.cmd("retire", serial="F-03")
    rig.run(200)
    assert rig.cmd("set_mode", mode="maintenance")["ok"]
    assert rig.cmd("open_slot", slot=3)["ok"]
    rig.run(300)
    assert rig.world.open_door(3)
    rig.run(200)
    rig.world.take(3)
    rig.world.close_door(3)
    rig.run(1000)
    rel = rig.of("QuarantineReleased")
    assert [(e["slot"], e["reason"]) for e in rel] == [(3, "retired")]
    assert rig.core.slot_state(3)["state"] == "empty"


def test_releasing_a_retired_pack_holds_it_again():
    rig = stocked_rig(full=3, half=0)
    rig.cmd("retire", serial="F-01")
    rig.run(200)
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("release", slot=1)["ok"]
    rig.run(1000)
    assert rig.core.slot_state(1)["state"] == "quarantined"
    assert rig.core.slot_state(1)["reason"] == "retired"


@given(st.text(min_size=1, max_size=24), st.integers(0, 23), st.characters())
def test_serials_that_differ_in_one_character_never_share_a_hash(serial, i, c):
    i %= len(serial)
    other = serial[:i] + c + serial[i + 1:]
    h = serial_hash(serial)
    assert 0 <= h < 1 << 30
    assert (h == serial_hash(other)) == (serial == other)
