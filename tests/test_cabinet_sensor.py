"""The cabinet's own thermistor, open or shorted: a cabinet fault that stops every charger (rule 1
needs the cabinet temperature; an open NTC reads -40 degC and would switch the 55 degC limit
off), reported as a Fault with slot null, the alarm `cabinet_sensor` and no temperature, and kept
out of the 70 degC emergency. Through the core alone, and through the board's ADC on the rig."""
import pytest
from coreworld import stocked_rig

from tukar.inputs import SENSOR_OPEN, SENSOR_OK, SENSOR_SHORT
from tukar_tools.rig import Cabinet

CODES = {SENSOR_OPEN: "temp_sensor_open", SENSOR_SHORT: "temp_sensor_short"}


@pytest.mark.parametrize("status, reads_dc", [(SENSOR_OPEN, -400), (SENSOR_SHORT, 1500)])
def test_a_faulted_cabinet_sensor_stops_every_charger_in_the_tick_it_is_seen(status, reads_dc):
    rig = stocked_rig(full=0, half=3)
    assert all(rig.core.charge_ma[i] > 0 for i in range(3))
    rig.events.clear()
    for ws in rig.world.slots:  # the empty slots' own sensors keep reading the air
        if ws.battery is None:
            ws.slot_temp_dc = 250
    rig.world.cab_sensor = status
    rig.world.cab_temp_dc = reads_dc  # what the broken NTC's code converts to
    rig.tick()
    assert rig.core.charge_ma[:3] == [0, 0, 0]
    assert [e["reason"] for e in rig.of("ChargeStopped")] == ["cabinet_sensor"] * 3
    assert [(e["slot"], e["code"], e["severity"]) for e in rig.of("Fault")] == [
        (None, CODES[status], "error")]
    for n in (1, 2, 3):
        st = rig.core.slot_state(n)
        assert (st["state"], st["reason"]) == ("charge_paused", "cabinet_sensor")
    cab = rig.core.cabinet_state()
    assert "cabinet_sensor" in cab["alarms"] and "cabinet_overtemp" not in cab["alarms"]
    assert cab["temp_c"] is None and rig.core.telemetry()["cabinet_temp_c"] is None
    # A shorted sensor reads 150 degC: not a fire. The cabinet stays in service, doors work,
    # and the fan runs because the cabinet's temperature is not known.
    assert rig.core.mode == "in_service" and rig.core.fan
    rig.run(5000)
    assert rig.core.charge_ma[:3] == [0, 0, 0]  # it lasts as long as the fault


def test_the_cabinet_sensor_mended_clears_the_fault_and_charging_resumes():
    rig = stocked_rig(full=0, half=2)
    rig.world.cab_sensor = SENSOR_OPEN
    rig.world.cab_temp_dc = -400
    rig.run(200)
    rig.events.clear()
    rig.world.cab_sensor = SENSOR_OK
    rig.world.cab_temp_dc = 300
    rig.tick()
    assert [(e["slot"], e["code"]) for e in rig.of("FaultCleared")] == [(None, "temp_sensor_open")]
    assert rig.core.charge_ma[0] > 0 and rig.core.charge_ma[1] > 0
    cab = rig.core.cabinet_state()
    assert cab["alarms"] == [] and cab["temp_c"] == 30


def test_an_open_sensor_turning_short_reports_both_codes():
    rig = stocked_rig(full=0, half=1)
    rig.events.clear()
    rig.world.cab_sensor = SENSOR_OPEN
    rig.tick()
    rig.world.cab_sensor = SENSOR_SHORT
    rig.tick()
    seen = [(e["type"], e["code"]) for e in rig.events if e["type"] in ("Fault", "FaultCleared")]
    assert seen == [("Fault", "temp_sensor_open"), ("FaultCleared", "temp_sensor_open"),
                    ("Fault", "temp_sensor_short")]
    assert rig.core.charge_ma[0] == 0


def test_a_slot_at_70_degc_is_still_an_emergency_with_the_cabinet_sensor_open():
    rig = stocked_rig(full=0, half=2)
    rig.world.cab_sensor = SENSOR_OPEN
    rig.world.cab_temp_dc = -400
    rig.run(200)
    rig.world.slots[1].slot_temp_dc = 700
    rig.run(200)
    assert rig.core.mode == "emergency"


# -- through the board: the cabinet NTC's ADC code ---------------------------------------------
def test_the_boards_cabinet_ntc_open_then_mended_on_the_rig():
    c = Cabinet("tukar-12-wroom")
    c.insert_sbs(3)
    c.run(1500)
    assert c.charger_on(3)
    c.events.clear()
    c.fault("cabinet_sensor", True)  # the lead breaks: ADC full scale
    c.run(1500)  # every sensor is sampled in turn
    assert not c.charger_on(3) and c.core.charge_ma[2] == 0
    assert [(e["slot"], e["code"]) for e in c.events_of("Fault")] == [(None, "temp_sensor_open")]
    assert c.core.slot_state(3)["reason"] == "cabinet_sensor"
    assert c.core.cabinet_state()["temp_c"] is None
    c.fault("cabinet_sensor", False)
    c.run(1500)
    assert [(e["slot"], e["code"]) for e in c.events_of("FaultCleared")] == [(None, "temp_sensor_open")]
    assert c.charger_on(3)
    assert c.core.cabinet_state()["temp_c"] == pytest.approx(25, abs=0.5)


def test_the_boards_cabinet_ntc_shorted_is_not_taken_for_a_fire():
    c = Cabinet("tukar-12-wroom")
    c.insert_sbs(3)
    c.run(1500)
    c.break_cabinet_sensor(0)
    c.run(1500)
    assert c.core.mode == "in_service"
    assert [e["code"] for e in c.events_of("Fault")] == ["temp_sensor_short"]
    assert not c.charger_on(3)


@pytest.mark.parametrize("status", [SENSOR_OPEN, SENSOR_SHORT])
def test_the_cabinet_state_is_published_again_in_the_tick_the_sensor_breaks_and_mends(status):
    """An idle cabinet (no charger to stop, no slot that changes): only the cabinet's own state
    says the sensor broke, and it must go out in that tick, and again when it is mended."""
    rig = stocked_rig(full=0, half=0)
    core = rig.core
    rig.run(500)
    core.take_dirty()
    rig.world.cab_sensor = status
    rig.tick()
    assert core.take_dirty() & 1
    assert "cabinet_sensor" in core.cabinet_state()["alarms"]
    rig.run(500)
    core.take_dirty()
    rig.world.cab_sensor = SENSOR_OK
    rig.tick()
    assert core.take_dirty() & 1
    assert "cabinet_sensor" not in core.cabinet_state()["alarms"]
