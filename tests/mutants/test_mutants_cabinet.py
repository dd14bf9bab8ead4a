"""The cabinet thermistor's fault (main's issue-11 fix) as the contract publishes it: a Fault and a
FaultCleared of severity `error`, each a valid event, and the cabinet state published at once."""
from coreworld import stocked_rig

from tukar.inputs import SENSOR_OK, SENSOR_OPEN
from tukar.states import J_CONFIG, J_MODE
from tukar_tools import schemas


def test_the_cabinet_sensor_fault_and_its_clearing_are_errors_of_the_contract():
    rig = stocked_rig(full=0, half=1)
    rig.events.clear()
    rig.world.cab_sensor = SENSOR_OPEN
    rig.world.cab_temp_dc = -400
    rig.run(200)
    rig.world.cab_sensor = SENSOR_OK
    rig.world.cab_temp_dc = 300
    rig.run(200)
    faults = [(e["type"], e["slot"], e["code"], e["severity"]) for e in rig.events
              if e["type"] in ("Fault", "FaultCleared")]
    assert faults == [("Fault", None, "temp_sensor_open", "error"),
                      ("FaultCleared", None, "temp_sensor_open", "error")]
    for e in rig.events:
        schemas.validate("event", dict(e, seq=1))


def test_the_cabinet_state_is_published_in_the_tick_the_sensor_fails():
    rig = stocked_rig(full=0, half=0, slots=2)  # nothing charging: no slot changes with it
    rig.core.take_dirty()
    rig.world.cab_sensor = SENSOR_OPEN
    rig.world.cab_temp_dc = -400
    rig.tick()
    assert rig.core.take_dirty() & 1
    assert rig.core.cabinet_state()["temp_c"] is None


# -- rule 4's causes --------------------------------------------------------------------------------
def test_the_cabinets_own_70_degc_latches_the_emergency_with_every_slot_cool():
    rig = stocked_rig()
    for ws in rig.world.slots:
        ws.slot_temp_dc = 300  # every slot's sensor reads 30 degC, empty or not
    rig.world.cab_temp_dc = 700
    rig.run(200)
    assert rig.core.mode == "emergency"
    assert [e["cause"] for e in rig.of("Emergency")] == ["overtemp"]


def test_causes_that_start_in_one_tick_each_latch_and_each_is_announced():
    rig = stocked_rig()
    rig.core.take_journal()
    rig.core.jdirty = J_CONFIG  # already owed to flash: still owed after
    rig.world.smoke = True
    rig.world.estop = True
    rig.world.cab_temp_dc = 700
    rig.tick()
    assert sorted(e["cause"] for e in rig.of("Emergency")) == ["estop", "overtemp", "smoke"]
    assert rig.core.take_journal() & (J_MODE | J_CONFIG) == J_MODE | J_CONFIG
    a = rig.cmd("reset_emergency")
    assert a["error"] == "emergency" and a["detail"] == "causes still present: smoke,estop,overtemp"


def test_causes_that_start_one_after_another_all_stay_latched_until_reset():
    rig = stocked_rig()
    rig.world.smoke = True
    rig.run(100)
    rig.world.smoke = False
    rig.world.estop = True
    rig.run(100)
    rig.world.estop = False
    rig.run(100)
    assert [e["cause"] for e in rig.of("Emergency")] == ["smoke", "estop"]
    assert rig.cmd("reset_emergency")["ok"]
    assert sorted(e["cause"] for e in rig.of("EmergencyCleared")) == ["estop", "smoke"]


def test_chargers_stop_above_the_cabinets_charge_limit_not_at_it():
    rig = stocked_rig(full=0, half=2)
    assert rig.core.charge_ma[0] > 0
    rig.world.cab_temp_dc = 550  # cabinet_charge_max_c: 55 degC, the edge itself
    rig.run(200)
    assert rig.core.charge_ma[0] > 0 and rig.core.charge_ma[1] > 0
    rig.world.cab_temp_dc = 551
    rig.run(200)
    assert rig.core.charge_ma[0] == 0 and rig.core.charge_ma[1] == 0
