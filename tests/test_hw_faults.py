"""Faults injected on the simulated wires of a 12-slot cabinet, seen through the real drivers and
the ControlCycle: every bus error ends in cabinet.md's safe state (charger off within one tick,
slot state `fault`, a Fault event with the code) and never in an exception."""
import pytest

from tukar_tools.rig import Cabinet

SBS_SLOT = 3  # slot 3: mux 0x70 channel 2 on I2C bus 1
CAN_SLOT = 5  # slot 5: CAN node 5 on the MCP2515


@pytest.fixture
def cab():
    c = Cabinet("tukar-12-wroom")
    c.insert_sbs(SBS_SLOT)
    c.insert_can(CAN_SLOT)
    c.run(1500)
    assert c.core.charge_ma[SBS_SLOT - 1] == 10000  # sbs48v: min(10 A slot, 10 A profile, battery)
    assert c.core.charge_ma[CAN_SLOT - 1] == 8000  # ref48v pack asks for 8 A
    assert c.charger_on(SBS_SLOT) and c.charger_on(CAN_SLOT)
    c.events.clear()
    return c


def faults_of(c, n):
    return [e["code"] for e in c.events_of("Fault", slot=n)]


def in_fault_with_charger_off(c, n, code, output=True):
    """Slot state `fault` with `code`, the core's setpoint 0 and (output) the enable pin low."""
    return (c.state(n) == "fault" and c.core.charge_ma[n - 1] == 0
            and (not output or not c.charger_on(n))
            and code in c.core.slot_state(n)["faults"] and faults_of(c, n) == [code])


def sbs_model(c):
    return c.batteries[SBS_SLOT - 1]


# -- SMBus (I2C bus 1, behind the TCA9548A) ---------------------------------------------------
@pytest.mark.parametrize("kind", ["corrupt_pec", "nack"])
def test_one_bad_sbs_read_is_discarded_and_charging_goes_on(cab, kind):
    before = cab.core.slot_inputs[SBS_SLOT - 1].bms.t_ms
    cab.hw.fault(sbs_model(cab), True, kind, count=1)
    cab.step()
    r = cab.core.slot_inputs[SBS_SLOT - 1].bms
    assert r.t_ms == before and not r.link_fault  # the bad reading left the snapshot untouched
    assert cab.board.i2c_errors[1] == 1
    cab.run(500)
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000 and faults_of(cab, SBS_SLOT) == []


@pytest.mark.parametrize("kind", ["corrupt_pec", "nack"])
def test_three_bad_sbs_reads_in_a_row_are_a_bms_link_fault_and_the_charger_goes_off(cab, kind):
    cab.hw.fault(sbs_model(cab), True, kind)
    cab.step()
    cab.step()
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000  # two failures: still fresh data
    cab.step()  # the third failure in a row: link fault, charger off in this same tick
    assert cab.core.slot_inputs[SBS_SLOT - 1].bms.link_fault
    assert in_fault_with_charger_off(cab, SBS_SLOT, "bms_link")
    assert cab.core.charge_ma[CAN_SLOT - 1] == 8000  # the CAN slot is not touched
    cab.hw.fault(sbs_model(cab), False, kind)
    cab.run(1000)
    assert cab.events_of("FaultCleared", slot=SBS_SLOT, code="bms_link")
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000


# -- CAN (MCP2515 on SPI) -----------------------------------------------------------------------
def test_bus_off_turns_the_can_slots_chargers_off_within_one_tick(cab):
    cab.world.mcp2515.inject_bus_off()
    cab.step()
    assert cab.cycle.can_state == 2 and cab.board.can.bus_off_count == 1
    assert in_fault_with_charger_off(cab, CAN_SLOT, "bms_link")
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000  # the SMBus pack charges on


def test_bus_off_restarts_with_back_off_and_charging_resumes(cab):
    mcp = cab.world.mcp2515
    cab.can.fault = True  # a shorted bus: the chip returns to bus-off after each restart
    mcp.inject_bus_off()
    resets = mcp.resets
    restarts = []
    for _ in range(60):  # 3 s
        cab.step()
        if mcp.resets != resets:
            restarts.append(cab.now)
            resets = mcp.resets
            mcp.inject_bus_off()  # still shorted: off again right after the restart
        assert cab.core.charge_ma[CAN_SLOT - 1] == 0
    gaps = [b - a for a, b in zip(restarts, restarts[1:])]
    assert len(restarts) >= 4
    # Off again one 50 ms tick after each restart, then a back-off of 200, 400, 800 ms (100 ms
    # doubling); the restart's own oscillator waits add a few ms.
    assert [g - 50 - b for g, b in zip(gaps, (200, 400, 800))] == [2, 2, 2]
    assert cab.core.charge_ma[CAN_SLOT - 1] == 0
    cab.can.fault = False
    cab.run(3000)
    assert cab.cycle.can_state == 0
    assert cab.events_of("FaultCleared", slot=CAN_SLOT, code="bms_link")
    assert cab.core.charge_ma[CAN_SLOT - 1] == 8000 and cab.charger_on(CAN_SLOT)


def test_an_mcp2515_that_does_not_restart_keeps_the_can_slots_off_without_raising(cab):
    cab.world.mcp2515.inject_bus_off()
    cab.world.mcp2515.present = False  # MISO floats high: the restart finds no oscillator
    cab.run(1000)
    assert cab.cycle.can_restart_errors >= 2 and cab.cycle.bus_errors()["spi"] >= 2
    assert in_fault_with_charger_off(cab, CAN_SLOT, "bms_link")


# -- MCP23017 (I2C bus 0) -----------------------------------------------------------------------
def test_expander_not_answering_reads_safe_nothing_charges_and_nothing_unlocks(cab):
    # Expander 0 carries slots 1-3: slot 3's charger is on it.
    cab.hw.fault(cab.world.expanders[0], True, "absent")
    cab.step()
    assert cab.core.charge_ma[SBS_SLOT - 1] == 0  # door reads open: charger off in this tick
    assert all(cab.core.lock_cmd) and not any(cab.lock_energised(n) for n in range(1, 13))
    assert cab.cycle.bus_errors()["i2c0"] >= 1
    assert cab.events_of("DoorForced") == []
    cab.run(1500)  # the switches stay unknown past 500 ms: slot fault slot_io, nothing concluded
    # The silent chip's own latch cannot be written: its outputs are the board's pull-downs' job.
    assert in_fault_with_charger_off(cab, SBS_SLOT, "slot_io", output=False)
    assert cab.events_of("Quarantined") == [] and cab.events_of("BatteryMissing") == []
    assert [e["code"] for e in cab.events_of("Fault")] == ["slot_io"] * 3  # slots 1-3
    assert cab.core.charge_ma[CAN_SLOT - 1] == 8000  # expander 1 still answers
    cab.hw.fault(cab.world.expanders[0], False, "absent")
    cab.run(1000)
    # The chip answers again: the fault clears and slot 3 charges again.
    assert [e["code"] for e in cab.events_of("FaultCleared")] == ["slot_io"] * 3
    assert cab.state(SBS_SLOT) == "charging" and cab.core.charge_ma[SBS_SLOT - 1] == 10000


def test_a_stuck_i2c_bus_is_clocked_free_and_the_tick_goes_on(cab):
    cab.hw.fault(cab.hw.i2c_bus(0), True)  # a device holds SDA low on the expander bus
    cab.step()
    assert cab.board.i2c_recoveries[0] == 1
    assert cab.core.charge_ma[SBS_SLOT - 1] == 0  # the tick read safe levels
    assert not cab.hw.i2c_bus(0).is_stuck()
    cab.run(500)
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000 and cab.events_of("Fault") == []


def test_a_battery_holding_its_mux_channel_low_is_freed_by_the_mux_reset(cab):
    sbs = cab.slot_cfg(SBS_SLOT - 1)["battery"]["sbs"]
    cab.world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).stick()
    cab.step()
    assert cab.board.i2c_recoveries[1] == 1 and not cab.hw.i2c_bus(1).is_stuck()
    cab.run(500)
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000 and faults_of(cab, SBS_SLOT) == []


# -- locks ----------------------------------------------------------------------------------
def test_a_lock_that_never_follows_is_retried_once_after_500ms_then_lock_jam(cab):
    # A slot whose bolt is stuck out: the technician's unlock never shows on the feedback.
    cab.remove(CAN_SLOT)
    cab.run(200)
    cab.jam_lock(CAN_SLOT)
    assert cab.cmd("set_mode", mode="maintenance")["ok"]
    cab.step()
    assert cab.cmd("open_slot", slot=CAN_SLOT)["ok"]
    seen = []
    for _ in range(30):  # 1.5 s
        cab.step()
        seen.append(cab.lock_energised(CAN_SLOT))
    drops = [k for k in range(1, len(seen)) if seen[k - 1] and not seen[k]]
    assert len(drops) == 1 and 9 <= drops[0] <= 11  # one retry, 500 ms after the command
    assert cab.core.lock_pulse[CAN_SLOT - 1] == 1
    assert faults_of(cab, CAN_SLOT) == ["lock_jam"]
    assert cab.core.slot_state(CAN_SLOT)["faults"] == ["lock_jam"]


def test_a_lock_jammed_open_at_boot_is_a_lock_jam_fault_and_the_battery_never_charges():
    c = Cabinet("tukar-12-wroom")
    c.locks[SBS_SLOT - 1].locked = False  # the bolt stuck in: the door cannot be shut in
    c.jam_lock(SBS_SLOT)
    c.insert_sbs(SBS_SLOT)
    c.run(1500)
    assert in_fault_with_charger_off(c, SBS_SLOT, "lock_jam")
    assert c.core.lock_cmd[SBS_SLOT - 1] is True


# -- slot NTC ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,code", [(4095, "temp_sensor_open"), (0, "temp_sensor_short")])
def test_open_or_shorted_slot_sensor_is_a_slot_fault_and_the_charger_goes_off(cab, raw, code):
    cab.set_slot_temp(SBS_SLOT, raw=raw)
    # One sensor is read per tick, each in turn: the fault and the charger's cut come together,
    # within one round of the sensors (13 ticks on this board, 650 ms).
    rounds = len(cab.board._samples)
    for t in range(rounds + 1):
        cab.step()
        if cab.state(SBS_SLOT) == "fault":
            break
    assert t < rounds and in_fault_with_charger_off(cab, SBS_SLOT, code)
    cab.set_slot_temp(SBS_SLOT, 25.0)
    cab.run(1000)
    assert cab.events_of("FaultCleared", slot=SBS_SLOT, code=code)
    assert cab.core.charge_ma[SBS_SLOT - 1] == 10000


def test_no_bus_error_escapes_the_cycle_when_every_chip_fails_at_once(cab):
    for x in cab.world.expanders:
        cab.hw.fault(x, True, "absent")
    for m in cab.world.muxes:
        cab.hw.fault(m, True, "absent")
    cab.world.mcp2515.present = False
    cab.world.mcp2515.inject_bus_off()
    cab.run(2000)
    assert not any(cab.core.charge_ma) and all(cab.core.lock_cmd)
    errs = cab.cycle.bus_errors()
    assert errs["i2c0"] > 0 and errs["i2c1"] >= 0 and errs["spi"] > 0
