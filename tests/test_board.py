# Board files, their checks, and the Board that builds the drivers, against the host shim.
import copy
import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "firmware"), os.path.join(ROOT, "tools", "tukar_tools", "shim")):
    if p not in sys.path:
        sys.path.insert(0, p)

import machine  # noqa: E402  (the host shim)
from tukar import boardfile  # noqa: E402
from tukar.board import Board  # noqa: E402
from tukar.boardfile import BoardError, validate  # noqa: E402
from tukar.inputs import SENSOR_OK, SENSOR_OPEN, SENSOR_SHORT, CabinetInputs, SlotInputs  # noqa: E402
from tukar_tools.shim.board_hw import BoardHardware  # noqa: E402
from tukar_tools.shim.hw import Hardware, install  # noqa: E402
from tukar_tools.shim.i2c_chips import BatteryState, SmartBattery  # noqa: E402

BOARD_FILES = sorted(glob.glob(os.path.join(ROOT, "boards", "*", "board.json")))
WROOM = os.path.join(ROOT, "boards", "tukar-12-wroom", "board.json")
S3 = os.path.join(ROOT, "boards", "tukar-24-s3", "board.json")


def cfg_of(path):
    with open(path) as f:
        return json.load(f)


def build(path, input_only=range(34, 40)):
    cfg = cfg_of(path)
    hw = install(Hardware(input_only=input_only))
    world = BoardHardware(hw, cfg)
    b = Board(cfg, machine)
    assert b.safe_outputs() == 0
    n = b.slot_count
    return b, world, hw, [SlotInputs() for _ in range(n)], CabinetInputs()


@pytest.fixture
def wroom():
    return build(WROOM)


def test_board_files_exist_for_12_and_24_slots():
    counts = {cfg_of(p)["board"]: cfg_of(p)["slot_count"] for p in BOARD_FILES}
    assert counts["tukar-12-wroom"] == 12
    assert counts["tukar-24-s3"] == 24


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.split(os.sep)[-2])
def test_every_board_file_validates(path):
    cfg = boardfile.load(path)
    assert len(cfg["slots"]) == cfg["slot_count"]


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.split(os.sep)[-2])
def test_every_sbs_slot_has_its_own_mux_channel(path):
    seen = set()
    for s in cfg_of(path)["slots"]:
        sbs = s["battery"].get("sbs")
        if sbs:
            key = (sbs["mux"], sbs["channel"])
            assert key not in seen
            seen.add(key)


def _set(cfg, path, value):
    """Set cfg[path] where path is like 'slots[3].lock' or 'cabinet.temp'; value DELETE removes."""
    parts = []
    for part in path.split("."):
        while "[" in part:
            name, rest = part.split("[", 1)
            if name:
                parts.append(name)
            idx, part = rest.split("]", 1)
            parts.append(int(idx))
        if part:
            parts.append(part)
    node = cfg
    for k in parts[:-1]:
        node = node[k]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


class _Delete:
    def __repr__(self):
        return "<deleted>"


DELETE = _Delete()  # the field removed; a stable repr keeps test ids the same in every worker

# One broken board per kind of error: (board, field, value, exact start of the message).
BROKEN = [
    (WROOM, "slots[3].lock", 40, "slots[3].lock: pin 40 does not exist on esp32"),
    (WROOM, "slots[3].lock", 20, "slots[3].lock: pin 20 does not exist on esp32"),
    (WROOM, "cabinet.fan", 34, "cabinet.fan: pin 34 is input-only on esp32"),
    (WROOM, "cabinet.alarm", 7, "cabinet.alarm: pin 7 is wired to the SPI flash on esp32"),
    (WROOM, "cabinet.alarm", 12, "cabinet.alarm: pin 12 is a strapping pin on esp32"),
    (WROOM, "cabinet.alarm", 1, "cabinet.alarm: pin 1 is the UART0 console (TX) on esp32"),
    (WROOM, "cabinet.temp", 25, "cabinet.temp: pin 25 is not an ADC1 pin on esp32"),
    (WROOM, "cabinet.alarm", 32, "cabinet.alarm: pin 32 already used by cabinet.fan"),
    (WROOM, "cabinet.smoke", {"pin": 34, "pull": "up"}, "cabinet.smoke: pin 34 has no internal pull"),
    (WROOM, "slots[1].door", "x0.0", "slots[1].door: expander pin x0.0 already used by slots[0].door"),
    (WROOM, "slots[2].door", "x9.0", "slots[2].door: expander 9 is not in expanders"),
    (WROOM, "slots[2].door", "x0.16", "slots[2].door: expander pin 16 outside 0..15"),
    (WROOM, "slots[2].door", "door", "slots[2].door: pin 'door'"),
    (WROOM, "slots[2].temp", "x0.15", "slots[2].temp: an expander pin is not analog"),
    (WROOM, "slots[2].temp", "a0.0", "slots[2].temp: analog mux channel a0.0 already used by slots[0].temp"),
    (WROOM, "slots[2].door", "a0.15", "slots[2].door: an analog mux channel is not a digital pin"),
    (WROOM, "slots[0].temp", DELETE, "slots[0].temp: missing"),
    (WROOM, "slots[0].lok", "x0.15", "slots[0]: unknown field 'lok'"),
    (WROOM, "slots[4].charger.kind", "pwm", "slots[4].charger.kind: 'enable' or 'can' required"),
    (WROOM, "slots[4].charger", {"kind": "enable"}, "slots[4].charger.enable: missing"),
    (WROOM, "slots[4].current_limit_ma", -1, "slots[4].current_limit_ma: -1 outside"),
    (WROOM, "slots[5].battery.sbs.channel", 4, "slots[5].battery.sbs: mux 0 channel 4 already used by slots[4]"),
    (WROOM, "slots[5].battery.sbs.mux", 2, "slots[5].battery.sbs.mux: mux 2 is not in muxes"),
    (WROOM, "slots[5].battery.can.node", 1, "slots[5].battery.can.node: 1 already used by slots[0]"),
    (WROOM, "slots[5].battery", {}, "slots[5].battery: sbs, can or both required"),
    (WROOM, "expanders[1].addr", "0x28", "expanders[1].addr: 40 outside 32..39"),
    (WROOM, "expanders[1].addr", "0x20", "expanders[1].addr: 0x20 used twice on I2C bus 0"),
    (WROOM, "muxes[1].addr", 0x69, "muxes[1].addr: 105 outside 112..119"),
    (WROOM, "muxes[1].bus", 3, "muxes[1].bus: 3 outside 0..1"),
    (WROOM, "i2c[0].freq", 1000000, "i2c[0].freq: 1000000 outside 10000..400000"),
    (WROOM, "spi.baudrate", 20000000, "spi.baudrate: 20000000 outside 100000..10000000"),
    (WROOM, "mcp2515.bitrate", 125000, "mcp2515.bitrate: 250000 or 500000 required"),
    (WROOM, "mcp2515.crystal_hz", 20000000, "mcp2515.crystal_hz: 8000000 or 16000000 required"),
    (WROOM, "amux[0].select[1]", 34, "amux[0].select[1]: pin 34 is input-only on esp32"),
    (WROOM, "slot_count", 13, "slots: 12 entries, 13..13 allowed"),
    (WROOM, "chip", "esp32c3", "chip: 'esp32c3' is not one of esp32, esp32s3"),
    (WROOM, "ntc.beta", 9000, "ntc.beta: 9000 outside 1000..6000"),
    (S3, "slots[0].lock", 22, "slots[0].lock: pin 22 does not exist on esp32s3"),
    (S3, "cabinet.fan", 19, "cabinet.fan: pin 19 is USB D- on esp32s3"),
    (S3, "cabinet.fan", 35, "cabinet.fan: pin 35 is wired to the flash/PSRAM"),
    (S3, "cabinet.fan", 46, "cabinet.fan: pin 46 is a strapping pin on esp32s3"),
    (S3, "cabinet.temp", 11, "cabinet.temp: pin 11 is not an ADC1 pin on esp32s3"),
    (S3, "amux[1].select[0]", 47, "amux[1].select[0]: every analog mux shares amux[0]'s select lines"),
    (S3, "slots[7].charger.node", 0xE5, "slots[7].charger.node: 229 already used by slots[0]"),
    (S3, "slots[7].charger.node", 0x10, "slots[7].charger.node: 236 required"),
]


@pytest.mark.parametrize("path,field,value,message", BROKEN, ids=[b[1] + "=" + repr(b[2]) for b in BROKEN])
def test_broken_board_file_names_the_field(path, field, value, message):
    cfg = copy.deepcopy(cfg_of(path))
    _set(cfg, field, value)
    with pytest.raises(BoardError) as e:
        validate(cfg)
    assert str(e.value).startswith(message)


def test_load_rejects_a_file_that_is_not_json(tmp_path):
    p = tmp_path / "board.json"
    p.write_text("{slots: 12}")
    with pytest.raises(BoardError, match="not JSON"):
        boardfile.load(str(p))


def test_12_slot_board_builds_against_the_shim(wroom):
    b, world, hw, slots, cab = wroom
    assert b.slot_count == 12
    assert len(b.locks) == len(b.chargers) == 12
    assert len(b.expanders) == 4 and len(b.muxes) == 2


def test_24_slot_s3_board_builds_against_the_shim():
    b, world, hw, slots, cab = build(S3, input_only=())
    assert b.slot_count == 24
    assert len(b.expanders) == 8 and len(b.muxes) == 3
    assert len(b.can_chargers) == 24


def test_safe_outputs_leaves_locks_locked_and_chargers_off(wroom):
    b, world, hw, slots, cab = wroom
    for i in range(12):
        s = world.slot(i)
        assert world.output(s["lock"]) == 0  # solenoid released: bolt out
        assert world.output(s["charger"]["enable"]) == 0
    assert world.output(world.cfg["cabinet"]["fan"]) == 0
    assert world.output(world.cfg["cabinet"]["alarm"]) == 0


def test_scan_reads_one_i2c_transaction_per_expander(wroom):
    b, world, hw, slots, cab = wroom
    b.scan(slots, cab, 0)  # settle the analog mux on its first channel
    hw.i2c_bus(0).stats.reset()
    b.scan(slots, cab, 50)
    assert hw.i2c_bus(0).stats.transactions == 4
    assert hw.i2c_bus(1).stats.transactions == 0


def test_24_slot_scan_reads_one_i2c_transaction_per_expander():
    b, world, hw, slots, cab = build(S3, input_only=())
    hw.i2c_bus(0).stats.reset()
    b.scan(slots, cab, 0)
    assert hw.i2c_bus(0).stats.transactions == 8


def test_scan_fills_slot_and_cabinet_inputs_in_place(wroom):
    b, world, hw, slots, cab = wroom
    s3 = world.slot(3)
    world.set_input(s3["door"], True)
    world.set_input(s3["presence"], True)
    world.set_input(s3["lock_feedback"], True)
    world.set_temp(s3["temp"], 31.5)
    world.set_input(world.cfg["cabinet"]["smoke"], True)
    world.set_input(world.cfg["cabinet"]["estop"], False)
    world.set_temp(world.cfg["cabinet"]["temp"], 42.0)
    same = slots[3]
    b.scan(slots, cab, 0)
    assert slots[3] is same
    assert (same.door_closed, same.present, same.locked) == (True, True, True)
    assert abs(same.temp_dc - 315) <= 3 and same.sensor == SENSOR_OK
    assert (slots[4].door_closed, slots[4].present, slots[4].locked) == (False, False, False)
    assert cab.smoke is True and cab.estop is False
    assert abs(cab.temp_dc - 420) <= 3


def test_scan_reports_open_and_shorted_slot_sensors(wroom):
    b, world, hw, slots, cab = wroom
    world.set_temp(world.slot(0)["temp"], raw=4095)
    world.set_temp(world.slot(1)["temp"], raw=0)
    world.set_temp(world.slot(2)["temp"], 25.0)
    b.scan(slots, cab, 0)
    assert slots[0].sensor == SENSOR_OPEN
    assert slots[1].sensor == SENSOR_SHORT
    assert slots[2].sensor == SENSOR_OK


def test_unreadable_expander_reads_fail_safe(wroom):
    b, world, hw, slots, cab = wroom
    for i in range(3):
        world.set_input(world.slot(i)["door"], True)
        world.set_input(world.slot(i)["lock_feedback"], True)
    hw.fault(world.expanders[0], kind="absent")
    b.scan(slots, cab, 0)
    for i in range(3):  # door open and unlocked: no charging; present: nothing is put in
        assert (slots[i].door_closed, slots[i].locked, slots[i].present) == (False, False, True)


def _apply(b, locked, charge, fan=False, alarm=False, pulse=None):
    n = b.slot_count
    return b.apply(locked, pulse or [0] * n, charge, fan, alarm) >= 0  # -1: a write failed


def test_apply_drives_locks_chargers_fan_and_alarm(wroom):
    b, world, hw, slots, cab = wroom
    locked = [True] * 12
    locked[2] = False
    charge = [0] * 12
    charge[5] = 8000
    assert _apply(b, locked, charge, fan=True, alarm=True)
    assert world.output(world.slot(2)["lock"]) == 1
    assert world.output(world.slot(5)["lock"]) == 0
    assert world.output(world.slot(5)["charger"]["enable"]) == 1
    assert world.output(world.cfg["cabinet"]["fan"]) == 1
    assert world.output(world.cfg["cabinet"]["alarm"]) == 1


def test_apply_switches_charger_off_before_the_lock_opens(wroom):
    b, world, hw, slots, cab = wroom
    charge = [0] * 12
    charge[1] = 5000
    _apply(b, [True] * 12, charge)
    lock_bit = 1 << int(world.slot(1)["lock"].split(".")[1])
    en_bit = 1 << int(world.slot(1)["charger"]["enable"].split(".")[1])
    writes = []
    dev = b.expanders[0].dev
    real = dev.write
    dev.write = lambda v: (writes.append(v), real(v))[1]
    locked = [True] * 12
    locked[1] = False
    _apply(b, locked, [0] * 12)
    assert len(writes) == 2
    assert writes[0] & en_bit == 0 and writes[0] & lock_bit == 0  # charger off, still locked
    assert writes[1] & lock_bit  # then the lock opens


def test_apply_never_charges_a_slot_commanded_open(wroom):
    b, world, hw, slots, cab = wroom
    locked = [True] * 12
    locked[7] = False
    _apply(b, locked, [6000] * 12)
    assert world.output(world.slot(7)["charger"]["enable"]) == 0
    assert world.output(world.slot(6)["charger"]["enable"]) == 1


def test_apply_opens_no_lock_when_the_charger_off_write_fails(wroom):
    b, world, hw, slots, cab = wroom
    charge = [0] * 12
    charge[0] = 5000
    _apply(b, [True] * 12, charge)
    hw.fault(world.expanders[0], kind="nack", count=1)
    locked = [True] * 12
    locked[0] = False
    assert _apply(b, locked, [0] * 12) is False
    assert world.output(world.slot(0)["lock"]) == 0
    assert _apply(b, locked, [0] * 12) is True  # next tick: off first, then open
    assert world.output(world.slot(0)["charger"]["enable"]) == 0
    assert world.output(world.slot(0)["lock"]) == 1


def test_apply_writes_nothing_when_no_output_changes(wroom):
    b, world, hw, slots, cab = wroom
    _apply(b, [True] * 12, [0] * 12)
    hw.i2c_bus(0).stats.reset()
    _apply(b, [True] * 12, [0] * 12)
    assert hw.i2c_bus(0).stats.transactions == 0


def test_lock_retry_drops_the_solenoid_for_one_apply(wroom):
    b, world, hw, slots, cab = wroom
    locked = [True] * 12
    locked[4] = False
    pulse = [0] * 12
    _apply(b, locked, [0] * 12, pulse=pulse)
    assert world.output(world.slot(4)["lock"]) == 1
    pulse = list(pulse)
    pulse[4] = 1
    _apply(b, locked, [0] * 12, pulse=pulse)
    assert world.output(world.slot(4)["lock"]) == 0
    _apply(b, locked, [0] * 12, pulse=pulse)
    assert world.output(world.slot(4)["lock"]) == 1


def test_poll_bms_reads_one_sbs_slot_per_call_round_robin(wroom):
    b, world, hw, slots, cab = wroom
    packs = {}
    for i in (2, 9):  # slot 2 behind mux 0x70 channel 2, slot 9 behind 0x71 channel 1
        sbs = world.slot(i)["battery"]["sbs"]
        packs[i] = world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).attach(
            SmartBattery(BatteryState(soc_pct=40 + i)))
        world.set_input(world.slot(i)["presence"], True)
    b.scan(slots, cab, 0)
    b.poll_bms(slots, 100)
    assert slots[2].bms.valid and not slots[9].bms.valid
    b.poll_bms(slots, 200)
    assert slots[9].bms.valid
    assert slots[2].bms.soc_pm == 420 and slots[9].bms.soc_pm == 490


def test_poll_bms_never_routes_two_muxes_at_once(wroom):
    b, world, hw, slots, cab = wroom
    for i in (0, 8):  # both on channel 0, of mux 0x70 and 0x71: the same address behind each
        sbs = world.slot(i)["battery"]["sbs"]
        world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).attach(SmartBattery(BatteryState(soc_pct=30 + i)))
        world.set_input(world.slot(i)["presence"], True)
    b.scan(slots, cab, 0)
    for t in range(4):
        b.poll_bms(slots, 100 * t)
    assert slots[0].bms.soc_pm == 300 and slots[8].bms.soc_pm == 380
    assert not slots[0].bms.link_fault and not slots[8].bms.link_fault


def test_poll_bms_drains_can_frames_into_the_slot_readings(wroom):
    from tukar_tools import canprofile
    from tukar_tools.shim.bms_node import BmsNode
    from tukar_tools.shim.canbus import CanBus

    b, world, hw, slots, cab = wroom
    bus = CanBus(500_000)
    bus.attach_controller(world.mcp2515)
    profile = canprofile.load("ref48v")
    bus.attach(BmsNode(profile, 3))
    assert b.attach_can_bms([profile], slots) is not None
    bus.step(0)
    b.poll_bms(slots, 10)
    r = slots[3].bms
    assert r.valid and r.profile == "ref48v"
    assert r.soc_pm == 800 and r.voltage_mv == 51800
    assert not slots[2].bms.valid


def test_can_charger_gets_its_setpoint_after_the_lock_is_closed():
    from tukar_tools.shim.canbus import CanBus

    b, world, hw, slots, cab = build(S3, input_only=())
    bus = CanBus(500_000)
    bus.attach_controller(world.mcp2515)
    b.charge_voltage_mv[0] = 54600
    charge = [0] * 24
    charge[0] = 20000  # asks above the slot's 15 A limit
    assert _apply(b, [True] * 24, charge)
    bus.step(10)
    sent = [f for f in world.mcp2515.transmitted if f.id == 0x1806E5F4]
    assert len(sent) >= 1
    d = bytes(sent[-1].data)
    assert (d[0] << 8 | d[1], d[2] << 8 | d[3], d[4]) == (546, 150, 0)  # 54.6 V, 15.0 A, on
    assert world.output(world.slot(0)["charger"]["enable"]) == 1


VM_FAKE_MACHINE = r'''
from tukar.board import Board
from tukar.inputs import SlotInputs, CabinetInputs
b = Board(json.load(open('/input/board.json')), machine)
b.safe_outputs()
slots = [SlotInputs() for _ in range(12)]; cab = CabinetInputs()
lk = [True] * 12; pulse = [0] * 12; ma = [0] * 12
for t in range(3):
    b.scan(slots, cab, t); b.apply(lk, pulse, ma, False, False)
gc.collect(); a = gc.mem_alloc()
for t in range(20):
    b.scan(slots, cab, t)
s = gc.mem_alloc() - a
gc.collect(); a = gc.mem_alloc()
for t in range(20):
    b.apply(lk, pulse, ma, False, False)
print('alloc', s, gc.mem_alloc() - a, slots[0].temp_dc)
'''


@pytest.mark.mpy
def test_scan_and_apply_allocate_nothing_under_micropython():
    import pathlib

    from tukar_tools import mpvm

    out = mpvm.run(mpvm.FAKE_MACHINE + VM_FAKE_MACHINE, files={"board.json": pathlib.Path(WROOM)}, fuel=10**10, timeout=120)
    assert "alloc 0 0 250" in out.stdout


def _gpio_slot_board():
    """The 12-slot board with slot 1's switches and outputs moved from the expander to GPIOs
    (a board file may put them on either): door inverted, presence not; and the cabinet's smoke
    switch, fan and alarm moved the other way, onto the expander pins slot 1 no longer uses."""
    cfg = cfg_of(WROOM)
    s = cfg["slots"][0]
    cab = cfg["cabinet"]
    s["door"] = {"pin": 37, "invert": True}
    s["presence"] = 38
    s["lock_feedback"] = 34
    s["lock"] = 32
    s["charger"]["enable"] = {"pin": 33, "invert": True}
    cab["smoke"], cab["fan"], cab["alarm"] = "x0.0", "x0.3", "x0.4"
    hw = install(Hardware(input_only=range(34, 40)))
    world = BoardHardware(hw, cfg)
    b = Board(cfg, machine)
    assert b.safe_outputs() == 0
    return b, world, [SlotInputs() for _ in range(12)], CabinetInputs()


def test_slot_switches_and_outputs_on_gpios_read_and_drive_as_on_the_expander():
    b, world, slots, cab = _gpio_slot_board()
    s0 = world.slot(0)
    assert world.output(s0["lock"]) == 0 and world.output(s0["charger"]["enable"]) == 0  # rule 9
    for door, present, locked in ((True, False, True), (False, True, False), (True, True, True)):
        world.set_input(s0["door"], door)
        world.set_input(s0["presence"], present)
        world.set_input(s0["lock_feedback"], locked)
        b.scan(slots, cab, 0)
        assert (slots[0].door_closed, slots[0].present, slots[0].locked) == (door, present, locked)
        fresh = [SlotInputs() for _ in range(12)]
        reader = b.switch_reader(fresh, cab)
        moved = (door, present, locked) != (True, False, True)  # SlotInputs' initial levels
        assert bool(next(reader) & 2) == moved  # slot 1's switches are GPIOs: read every tick
        assert (fresh[0].door_closed, fresh[0].present, fresh[0].locked) == (door, present, locked)
    charge = [0] * 12
    charge[0] = 5000
    locked = [True] * 12
    assert _apply(b, locked, charge)
    assert world.output(s0["charger"]["enable"]) == 1 and world.output(s0["lock"]) == 0
    charge[0] = 0
    locked[0] = False
    assert _apply(b, locked, charge)
    assert world.output(s0["charger"]["enable"]) == 0 and world.output(s0["lock"]) == 1
    assert _apply(b, [True] * 12, [0] * 12, fan=True, alarm=False)
    assert world.output(cab_cfg(world)["fan"]) == 1 and world.output(cab_cfg(world)["alarm"]) == 0
    for smoke in (True, False):
        world.set_input(cab_cfg(world)["smoke"], smoke)
        b.scan(slots, cab, 0)
        assert cab.smoke is smoke
        assert next(b.switch_reader(slots, cab)) >= 0 and cab.smoke is smoke


def cab_cfg(world):
    return world.cfg["cabinet"]
