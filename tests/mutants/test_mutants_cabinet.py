"""The cabinet thermistor's fault (main's issue-11 fix) as the contract publishes it: a Fault and a
FaultCleared of severity `error`, each a valid event, and the cabinet state published at once."""
from coreworld import stocked_rig

from tukar.inputs import SENSOR_OK, SENSOR_OPEN
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
