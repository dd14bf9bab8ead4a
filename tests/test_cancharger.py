"""CAN charger option: setpoint frames 0x1806<addr>F4 and status frames 0x18FF50<addr>."""
import pathlib
import sys

import cantools
import pytest
from hypothesis import given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "firmware", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tukar import cancharger, mcp2515  # noqa: E402
from tukar.cancharger import CanChargers, EXT  # noqa: E402
from tukar_tools.shim.cancharger_model import ChargerNode  # noqa: E402
from tukar_tools.shim.canbus import CanBus, Frame  # noqa: E402
from tukar_tools.shim.mcp2515_model import DirectCs, DirectSpi, MCP2515Model  # noqa: E402

FUEL = 10**10

# The common layout of CAN-controlled chargers, written independently as a DBC for cantools.
CHARGER_DBC = """VERSION ""
NS_ :
BS_:
BU_: CABINET CHARGER
BO_ 2550588916 Command: 8 CABINET
 SG_ MaxVoltage : 7|16@0+ (0.1,0) [0|6553.5] "V" CHARGER
 SG_ MaxCurrent : 23|16@0+ (0.1,0) [0|6553.5] "A" CHARGER
 SG_ Control : 39|8@0+ (1,0) [0|1] "" CHARGER
BO_ 2566869221 Status: 8 CHARGER
 SG_ OutVoltage : 7|16@0+ (0.1,0) [0|6553.5] "V" CABINET
 SG_ OutCurrent : 23|16@0+ (0.1,0) [0|6553.5] "A" CABINET
 SG_ HwFail : 32|1@1+ (1,0) [0|1] "" CABINET
 SG_ OverTemp : 33|1@1+ (1,0) [0|1] "" CABINET
 SG_ InputFault : 34|1@1+ (1,0) [0|1] "" CABINET
 SG_ NoBattery : 35|1@1+ (1,0) [0|1] "" CABINET
 SG_ CommTimeout : 36|1@1+ (1,0) [0|1] "" CABINET
"""
DB = cantools.database.load_string(CHARGER_DBC, "dbc")


pytestmark = pytest.mark.usefixtures("manual_clock")


def test_command_for_57_6_v_10_a_on_is_the_known_frame():
    ch = CanChargers(1)
    fid = ch.command(0, 57_600, 10_000)
    assert fid == 0x1806E5F4
    assert bytes(ch.buf) == bytes.fromhex("0240006400000000")


def test_setpoint_zero_is_off():
    ch = CanChargers(1)
    ch.command(0, 54_600, 0)
    assert bytes(ch.buf) == bytes.fromhex("0000000001000000")


def test_setpoints_round_down_never_above_the_request():
    ch = CanChargers(1)
    ch.command(0, 54_699, 8_099)
    assert (ch.buf[0] << 8 | ch.buf[1], ch.buf[2] << 8 | ch.buf[3]) == (546, 80)


@settings(max_examples=100, deadline=None)
@given(mv=st.integers(1, 6_553_500), ma=st.integers(1, 6_553_500))
def test_command_decodes_in_cantools_as_the_floored_setpoint(mv, ma):
    ch = CanChargers(1)
    ch.command(0, mv, ma)
    d = DB.get_message_by_name("Command").decode(bytes(ch.buf), scaling=False)
    assert (d["MaxVoltage"], d["MaxCurrent"], d["Control"]) == (mv // 100, ma // 100, 0)


@settings(max_examples=100, deadline=None)
@given(dv=st.integers(0, 0xFFFF), da=st.integers(0, 0xFFFF), flags=st.integers(0, 0x1F))
def test_status_decodes_like_cantools(dv, da, flags):
    msg = DB.get_message_by_name("Status")
    payload = msg.encode({"OutVoltage": dv, "OutCurrent": da, "HwFail": flags & 1, "OverTemp": flags >> 1 & 1,
                          "InputFault": flags >> 2 & 1, "NoBattery": flags >> 3 & 1, "CommTimeout": flags >> 4 & 1},
                         scaling=False)
    ch = CanChargers(1)
    assert ch.feed(EXT | 0x18FF50E5, payload, 0, 8, 7) == 0
    assert (ch.out_mv[0], ch.out_ma[0], ch.flags[0]) == (dv * 100, da * 100, flags)


def test_each_slot_has_its_own_charger_address():
    ch = CanChargers(12)
    assert ch.command(1, 54_600, 5_000) == 0x1806E6F4
    assert ch.feed(EXT | 0x18FF50F0, bytes(8), 0, 8, 0) == 11


def test_other_frames_are_not_charger_status():
    ch = CanChargers(2)
    assert ch.feed(0x18FF50E5, bytes(8), 0, 8, 0) == -1  # 11-bit-flagged id: not the extended frame
    assert ch.feed(EXT | 0x18FF50E7, bytes(8), 0, 8, 0) == -1  # third charger of a 2-slot bus
    assert ch.feed(EXT | 0x18FF51E5, bytes(8), 0, 8, 0) == -1
    assert ch.feed(EXT | 0x18FF50E5, bytes(4), 0, 4, 0) == -1
    assert ch.seen == [False, False]


def test_hardware_fault_and_overtemperature_are_charger_faults():
    ch = CanChargers(1)
    for flags, fault in [(0, False), (cancharger.CH_HW_FAIL, True), (cancharger.CH_OVERTEMP, True),
                         (cancharger.CH_NO_BATTERY, False), (cancharger.CH_COMM_TIMEOUT, False)]:
        ch.feed(EXT | 0x18FF50E5, bytes((0, 0, 0, 0, flags, 0, 0, 0)), 0, 8, 0)
        assert ch.fault(0) == fault


def test_status_older_than_3_s_is_not_fresh():
    ch = CanChargers(1)
    assert not ch.fresh(0, 0)
    ch.feed(EXT | 0x18FF50E5, bytes(8), 0, 8, 1000)
    assert ch.fresh(0, 3999)
    assert not ch.fresh(0, 4000)


def rig():
    bus = CanBus(500_000)
    model = bus.attach_controller(MCP2515Model())

    can = mcp2515.MCP2515(DirectSpi(model), DirectCs(model))
    can.init(mcp2515.MODE_NORMAL)
    charger = bus.attach(ChargerNode(0xE6))
    charger.battery_mv = 52_000
    return bus, can, charger


def test_simulated_charger_obeys_the_setpoint_and_reports_it():
    bus, can, charger = rig()
    ch = CanChargers(2)
    rx = bytearray(13)
    assert ch.send(can, 1, 54_600, 8_000)
    bus.step(0)
    assert (charger.on, charger.set_mv, charger.output_ma) == (True, 54_600, 8_000)
    fid = can.recv_into(rx)
    assert ch.feed(fid, rx, 5, rx[4] & 0x0F, 0) == 1
    assert (ch.out_ma[1], ch.out_mv[1], ch.flags[1]) == (8_000, 52_000, 0)


def test_simulated_charger_stops_when_commands_stop_for_5_s():
    bus, can, charger = rig()
    ch = CanChargers(2)
    ch.send(can, 1, 54_600, 8_000)
    for now in range(0, 5000, 100):
        bus.step(now)
    assert charger.on
    bus.step(5000)
    assert not charger.on
    assert charger.status().data[4] & cancharger.CH_COMM_TIMEOUT


def test_simulated_charger_turns_off_on_setpoint_zero():
    bus, can, charger = rig()
    ch = CanChargers(2)
    ch.send(can, 1, 54_600, 8_000)
    bus.step(0)
    ch.send(can, 1, 54_600, 0)
    bus.step(100)
    assert (charger.on, charger.output_ma) == (False, 0)


VM_CHARGER = """
import gc
from tukar.cancharger import CanChargers
ch = CanChargers(12)
st = bytearray(b'\\x02\\x08\\x00\\x50\\x00\\x00\\x00\\x00')
ch.command(3, 54600, 8000)
ch.feed(0x20000000 | 0x18FF50E8, st, 0, 8, 0)
gc.collect()
gc.disable()
a = gc.mem_alloc()
for i in range(100):
    pass
# a first loop after gc.disable() allocates 16 bytes once, whatever its body
a = gc.mem_alloc()
for i in range(100):
    ch.command(i % 12, 54600, 8000 + i)
    ch.feed(0x20000000 | 0x18FF50E8, st, 0, 8, i)
print(gc.mem_alloc() - a, ch.out_mv[3], ch.out_ma[3])
"""


@pytest.mark.mpy
def test_commands_and_status_allocate_nothing_under_micropython():
    from tukar_tools import mpvm

    r = mpvm.run(VM_CHARGER, fuel=FUEL, timeout=120)
    assert r.stderr == ""
    assert r.stdout.split() == ["0", "52000", "8000"]
