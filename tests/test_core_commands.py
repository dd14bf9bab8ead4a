"""Every command of mqtt.md's table: arguments checked, allowed-in rules, effects and results."""
import pytest
from coreworld import Battery, rider_inserts, stocked_rig

from tukar import config as cf

ACK_KEYS = {"req_id", "ok", "error", "detail"}


def test_ack_has_the_spec_keys_and_echoes_req_id():
    rig = stocked_rig()
    a = rig.cmd("rebirth")
    assert ACK_KEYS <= set(a)
    assert a["req_id"] == "r-1" and a["ok"] is True and a["error"] is None


def test_unknown_command_is_refused():
    assert stocked_rig().cmd("self_destruct")["error"] == "unknown_cmd"


@pytest.mark.parametrize("body", [None, [], "x", 3, {"cmd": 5}, {"cmd": None}])
def test_malformed_bodies_get_an_error_ack_and_never_raise(body):
    rig = stocked_rig()
    a = rig.core.command(body)
    assert a["ok"] is False and a["error"] in ("bad_args", "unknown_cmd")


# -- start_swap ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [{}, {"id_token": ""}, {"id_token": 7}, {"id_token": "x" * 65},
                                  {"id_token": "t", "request_id": 5}])
def test_start_swap_checks_its_arguments(args):
    rig = stocked_rig()
    assert rig.cmd("start_swap", **args)["error"] == "bad_args"
    assert all(rig.core.lock_cmd) and rig.core.session is None


@pytest.mark.parametrize("mode, code", [("maintenance", "not_in_service"),
                                        ("out_of_service", "not_in_service")])
def test_start_swap_only_in_service(mode, code):
    rig = stocked_rig()
    rig.cmd("set_mode", mode=mode)
    assert rig.cmd("start_swap", id_token="t")["error"] == code


def test_start_swap_in_emergency_gets_emergency():
    rig = stocked_rig()
    rig.world.smoke = True
    rig.tick()
    assert rig.cmd("start_swap", id_token="t")["error"] == "emergency"


# -- set_mode -----------------------------------------------------------------------------------
def test_set_mode_changes_mode_and_emits_mode_changed_by_req_id():
    rig = stocked_rig()
    a = rig.cmd("set_mode", mode="maintenance")
    assert a["ok"] and rig.core.mode == "maintenance"
    ev = rig.of("ModeChanged")[-1]
    assert ev["mode"] == "maintenance" and ev["by"] == a["req_id"]
    assert rig.core.cabinet_state()["mode"] == "maintenance"


@pytest.mark.parametrize("mode", ["emergency", "off", None, 3])
def test_set_mode_rejects_other_modes(mode):
    assert stocked_rig().cmd("set_mode", mode=mode)["error"] == "bad_args"


def test_set_mode_refused_in_emergency():
    rig = stocked_rig()
    rig.world.estop = True
    rig.tick()
    assert rig.cmd("set_mode", mode="in_service")["error"] == "emergency"


def test_set_mode_refused_during_a_session():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    assert rig.cmd("set_mode", mode="maintenance")["error"] == "busy"


# -- open_slot ----------------------------------------------------------------------------------
def test_open_slot_in_maintenance_unlocks_until_the_door_closes_again():
    rig = stocked_rig()
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("open_slot", slot=2)["ok"]
    rig.run(300)
    assert rig.core.slot_state(2)["state"] == "maintenance_open"
    assert rig.core.lock_cmd[1] is False and rig.core.charge_ma[1] == 0
    rig.world.open_door(2)
    rig.run(200)
    rig.world.close_door(2)
    rig.run(1000)
    assert rig.core.lock_cmd[1] is True
    assert rig.core.slot_state(2)["state"] in ("charging", "ready", "charge_paused")


def test_open_slot_outside_maintenance_is_wrong_mode():
    rig = stocked_rig()
    assert rig.cmd("open_slot", slot=2)["error"] == "wrong_mode"
    assert all(rig.core.lock_cmd)


@pytest.mark.parametrize("slot, code", [(0, "slot_range"), (13, "slot_range"), (-1, "slot_range"),
                                        ("2", "bad_args"), (None, "bad_args"), (True, "bad_args"),
                                        (2.0, "bad_args")])
def test_slot_argument_checked(slot, code):
    rig = stocked_rig()
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("open_slot", slot=slot)["error"] == code
    assert rig.cmd("quarantine", slot=slot, reason="x")["error"] == code
    assert all(rig.core.lock_cmd)


# -- quarantine / release -----------------------------------------------------------------------
def test_quarantine_in_any_mode_then_release_in_maintenance_identifies_again():
    rig = stocked_rig()
    a = rig.cmd("quarantine", slot=1, reason="swollen case")
    assert a["ok"]
    rig.tick()
    assert rig.core.slot_state(1)["state"] == "quarantined"
    assert rig.of("Quarantined")[-1] == {**rig.of("Quarantined")[-1], "slot": 1, "reason": "swollen case"}
    assert rig.cmd("release", slot=1)["error"] == "wrong_mode"
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("release", slot=1)["ok"]
    assert rig.of("QuarantineReleased")[-1]["slot"] == 1
    rig.run(500)
    assert rig.core.slot_state(1)["state"] in ("charging", "ready")


def test_released_battery_is_identified_again_and_requarantined_if_it_fails():
    rig = stocked_rig()
    rig.cmd("quarantine", slot=1, reason="inspection")
    rig.cmd("set_mode", mode="maintenance")
    rig.world.slots[0].bms_dead = True
    rig.run(2500)  # the old reading is stale now
    rig.cmd("release", slot=1)
    rig.tick()
    assert rig.core.slot_state(1)["state"] == "identifying"
    rig.run(3100)
    assert rig.core.slot_state(1)["state"] == "quarantined"
    assert rig.of("Quarantined")[-1]["reason"] == "no_bms"


def test_quarantine_needs_a_reason():
    assert stocked_rig().cmd("quarantine", slot=1)["error"] == "bad_args"


def test_release_of_a_slot_not_quarantined_is_not_allowed():
    rig = stocked_rig()
    rig.cmd("set_mode", mode="maintenance")
    assert rig.cmd("release", slot=1)["error"] == "not_allowed"


# -- reset_emergency ----------------------------------------------------------------------------
def test_reset_emergency_outside_emergency_is_wrong_mode():
    assert stocked_rig().cmd("reset_emergency")["error"] == "wrong_mode"


# -- rebirth ------------------------------------------------------------------------------------
def test_rebirth_marks_cabinet_and_every_slot_for_publishing():
    rig = stocked_rig()
    rig.core.dirty = 0
    assert rig.cmd("rebirth")["ok"]
    assert rig.core.rebirth is True
    assert rig.core.dirty == (1 << 13) - 1  # bit 0 cabinet, bits 1..12 slots


# -- set_config ---------------------------------------------------------------------------------
def test_set_config_applies_allowlisted_keys_and_returns_the_config():
    rig = stocked_rig()
    a = rig.cmd("set_config", insert_timeout_s=30, telemetry_period_s=120)
    assert a["ok"]
    assert a["config"]["insert_timeout_s"] == 30 and a["config"]["telemetry_period_s"] == 120
    rig.cmd("start_swap", id_token="t")
    rig.run(30_100)
    assert rig.of("SwapAborted")[-1]["reason"] == "timeout"


@pytest.mark.parametrize("key", sorted(cf.SETTABLE))
def test_set_config_refuses_values_beyond_the_hard_limits(key):
    lo, hi, _ = cf.SETTABLE[key]
    rig = stocked_rig()
    before = rig.core.settable_config()
    assert rig.cmd("set_config", **{key: hi + 1})["error"] == "bad_args"
    assert rig.cmd("set_config", **{key: lo - 1})["error"] == "bad_args"
    assert rig.cmd("set_config", **{key: "5"})["error"] == "bad_args"
    assert rig.cmd("set_config", **{key: True})["error"] == "bad_args"
    assert rig.core.settable_config() == before


@pytest.mark.parametrize("key", ["tick_ms", "slot_limit_a", "blocklist", "key", "mode"])
def test_set_config_refuses_keys_outside_the_allowlist(key):
    rig = stocked_rig()
    a = rig.cmd("set_config", **{key: 1})
    assert a["error"] == "bad_args" and key in a["detail"]


def test_set_config_is_all_or_nothing():
    rig = stocked_rig()
    a = rig.cmd("set_config", insert_timeout_s=30, take_timeout_s=9999)
    assert a["error"] == "bad_args"
    assert rig.core.settable_config()["insert_timeout_s"] == 60


def test_set_config_keeps_min_below_max_charge_temperature():
    rig = stocked_rig()
    assert rig.cmd("set_config", charge_temp_min_c=40, charge_temp_max_c=38)["error"] == "bad_args"


def test_set_config_without_keys_is_bad_args():
    assert stocked_rig().cmd("set_config")["error"] == "bad_args"


# -- reboot -------------------------------------------------------------------------------------
def test_reboot_is_refused_during_a_session_and_requested_otherwise():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    assert rig.cmd("reboot")["error"] == "busy"
    assert rig.core.reboot is False
    rig.cmd("cancel_swap")
    assert rig.cmd("reboot")["ok"] and rig.core.reboot is True


def test_commands_do_not_move_locks_or_chargers_when_refused():
    rig = stocked_rig()
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R", soc=10))
    locks, ma = list(rig.core.lock_cmd), list(rig.core.charge_ma)
    for name, args in [("start_swap", {"id_token": "u"}), ("open_slot", {"slot": 3}),
                       ("release", {"slot": 1}), ("cancel_swap", {}), ("set_mode", {"mode": "x"}),
                       ("reboot", {}), ("reset_emergency", {})]:
        assert rig.cmd(name, **args)["ok"] is False
    assert rig.core.lock_cmd == locks and rig.core.charge_ma == ma
