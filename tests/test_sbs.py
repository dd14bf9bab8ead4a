# SBS smart battery driver against the byte-level battery model, per cabinet.md "SMBus Smart Battery".
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
SHIM = os.path.join(ROOT, "tools", "tukar_tools", "shim")
for p in (FIRMWARE, SHIM):
    if p not in sys.path:
        sys.path.insert(0, p)

import machine  # noqa: E402
from tukar import sbs  # noqa: E402
from tukar.inputs import F_OVERCHARGED, F_OVERTEMP, BmsReading  # noqa: E402
from tukar.tca9548a import TCA9548A  # noqa: E402
from tukar_tools.shim import i2c_chips  # noqa: E402
from tukar_tools.shim.hw import Hardware, install  # noqa: E402

SLOT_CH = 3
RESET_PIN = 27


class Cabinet:
    """One I2C bus, a TCA9548A at 0x70 and an SBS battery on channel 3."""

    def __init__(self, state=None, mux=True, profiles=None):
        self.hw = install(Hardware())
        self.i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
        self.bus = self.hw.i2c_bus(0)
        self.state = state or i2c_chips.BatteryState()
        self.battery = i2c_chips.SmartBattery(self.state)
        if mux:
            self.mux_model = self.bus.attach(i2c_chips.TCA9548A(self.hw, 0x70, RESET_PIN))
            self.mux_model.channel_bus(SLOT_CH).attach(self.battery)
            self.mux = TCA9548A(self.i2c, 0x70)
        else:
            self.bus.attach(self.battery)
            self.mux = None
        self.driver = sbs.SmartBattery(self.i2c, self.mux, SLOT_CH, profiles=profiles)
        self.reading = BmsReading()

    def poll(self, now_ms=1000):
        return self.driver.poll(self.reading, now_ms)


@pytest.fixture
def cab():
    return Cabinet()


# PEC ----------------------------------------------------------------------------------------

def test_crc8_check_value_of_123456789_is_0xf4():
    assert sbs.crc8(b"123456789") == 0xF4


def test_cabinet_example_temperature_read_has_pec_0x2a_and_is_25_1_degc():
    wire = bytes([0x16, 0x08, 0x17, 0xA6, 0x0B])
    assert sbs.crc8(wire) == 0x2A
    assert sbs.pec_ok(0x0B, 0x08, bytes([0xA6, 0x0B, 0x2A]), 2)
    assert sbs.temp_dc(0x0BA6) == 251


def test_crc8_chains_across_calls():
    assert sbs.crc8(b"6789", sbs.crc8(b"12345")) == 0xF4


@given(st.binary(min_size=1, max_size=34))
def test_host_model_and_firmware_crc8_agree(data):
    assert sbs.crc8(data) == i2c_chips.smbus_crc8(data)


@given(st.binary(min_size=3, max_size=3), st.integers(0, 23))
def test_pec_detects_every_single_bit_flip(word_and_pec, bit):
    w = bytearray(word_and_pec[:2])
    w.append(sbs.crc8(bytes([0x16, 0x09, 0x17]) + bytes(w)))
    assert sbs.pec_ok(0x0B, 0x09, w, 2)
    w[bit // 8] ^= 1 << (bit % 8)
    assert not sbs.pec_ok(0x0B, 0x09, w, 2)


def test_model_temperature_read_matches_the_cabinet_example_bytes(cab):
    cab.state.temp_dk = 0x0BA6
    cab.mux.select(SLOT_CH)
    assert cab.i2c.readfrom_mem(0x0B, 0x08, 3) == bytes([0xA6, 0x0B, 0x2A])


# Decoding -----------------------------------------------------------------------------------

@given(st.integers(0, 0xFFFF))
def test_temperature_from_0_1_kelvin(raw):
    assert sbs.temp_dc(raw) == raw - 2731


@given(st.integers(-32768, 32767))
def test_current_is_signed_16_bit(ma):
    assert sbs.signed16(ma & 0xFFFF) == ma


@given(st.integers(0, 0xFFFF))
def test_soc_is_clamped_to_0_1000_per_mille(raw):
    pm = sbs.soc_pm(raw)
    assert 0 <= pm <= 1000 and pm == min(raw, 100) * 10


@given(st.integers(1980, 2107), st.integers(1, 12), st.integers(1, 31))
def test_manufacture_date_round_trips(y, m, d):
    assert sbs.manufacture_date(((y - 1980) << 9) | (m << 5) | d) == (y, m, d)


def test_soh_is_full_over_design_capacity():
    assert sbs.soh_pct(27000, 30000) == 90
    assert sbs.soh_pct(31000, 30000) == 100
    assert sbs.soh_pct(1, 0) == 0


def test_status_alarms_map_to_fault_bits_and_the_error_code_does_not():
    assert sbs.status_faults(0x8000) == F_OVERCHARGED
    assert sbs.status_faults(0x1000) == F_OVERTEMP
    assert sbs.status_faults(0x000F | 0x0800 | 0x0200 | 0x00C0) == 0


def test_terminate_charge_or_fully_charged_mean_full():
    assert sbs.status_full(0x4000) and sbs.status_full(0x0020)
    assert not sbs.status_full(0x00C0)


def test_capacity_in_10_mwh_converts_at_pack_voltage():
    assert sbs.capacity_mah(156, 0x8000, 52000) == 30  # 1560 mWh / 52 V
    assert sbs.capacity_mah(156, 0x0000, 52000) == 156


def test_pec_enabled_only_for_spec_version_3():
    assert sbs.pec_enabled(0x0031) and not sbs.pec_enabled(0x0021)


# Poll ---------------------------------------------------------------------------------------

def test_poll_fills_the_reading_in_place(cab):
    cab.state.current_ma = -2500
    cab.state.full_capacity = 27000
    reading = cab.reading
    assert cab.poll(4242)
    assert reading.valid and reading.t_ms == 4242
    assert (reading.temp_dc, reading.voltage_mv, reading.current_ma) == (250, 52000, -2500)
    assert (reading.soc_pm, reading.soh_pct, reading.cycles) == (800, 90, 12)
    assert reading.req_current_ma == 10000
    assert (reading.faults, reading.full, reading.link_fault) == (0, False, False)


def test_serial_is_maker_date_and_serial_word(cab):
    cab.poll()
    assert cab.reading.serial == "TUKAR-20240315-0042"


def test_profile_is_the_device_name_or_its_mapping():
    c = Cabinet()
    c.poll()
    assert c.reading.profile == "ref48v"
    c = Cabinet(profiles={"ref48v": "acme-48v-30ah"})
    c.poll()
    assert c.reading.profile == "acme-48v-30ah"


@settings(max_examples=40, deadline=None)
@given(temp=st.integers(2331, 3431), mv=st.integers(0, 0xFFFF), ma=st.integers(-32768, 32767),
       rsoc=st.integers(0, 255), status=st.integers(0, 0xFFFF), cycles=st.integers(0, 0xFFFF),
       req=st.integers(0, 0xFFFF))
def test_poll_round_trips_any_battery_words(temp, mv, ma, rsoc, status, cycles, req):
    c = Cabinet(i2c_chips.BatteryState(temp_dk=temp, voltage_mv=mv, current_ma=ma, soc_pct=rsoc,
                                       status=status, cycles=cycles, charging_current_ma=req))
    assert c.poll()
    r = c.reading
    assert (r.temp_dc, r.voltage_mv, r.current_ma, r.cycles) == (temp - 2731, mv, ma, cycles)
    assert r.soc_pm == min(rsoc, 100) * 10
    assert r.req_current_ma == (-1 if req == 0xFFFF else req)
    assert bool(r.faults & F_OVERCHARGED) == bool(status & 0x8000)
    assert bool(r.faults & F_OVERTEMP) == bool(status & 0x1000)
    assert r.full == bool(status & 0x4020)


def test_over_charged_and_over_temp_alarms_set_faults(cab):
    cab.state.status = 0x8000 | 0x1000 | 0x00C0
    cab.poll()
    assert cab.reading.faults == F_OVERCHARGED | F_OVERTEMP


def test_soc_above_100_percent_reads_1000_per_mille(cab):
    cab.state.soc_pct = 104
    cab.poll()
    assert cab.reading.soc_pm == 1000


def test_capacity_mode_10_mwh_keeps_soh_and_converts_remaining():
    state = i2c_chips.BatteryState(mode=0x8000, remaining=12480, full_capacity=14040,
                                   design_capacity=15600, voltage_mv=52000)
    c = Cabinet(state)
    assert c.poll()
    assert c.reading.soh_pct == 90
    assert c.driver.capacities(c.reading.voltage_mv)[0] == 2400  # 124.8 Wh at 52 V


def test_steady_poll_is_seven_word_reads_of_six_bytes_and_no_mux_write(cab):
    cab.poll()
    cab.bus.stats.reset()
    writes = cab.mux_model.writes
    assert cab.poll()
    # write address, command, read address, 2 data bytes, PEC
    assert (cab.bus.stats.bytes, cab.bus.stats.transactions) == (42, 7)
    assert cab.mux_model.writes == writes


def test_a_poll_spread_over_ticks_reads_at_most_its_budget_each_and_commits_once_whole(cab):
    cab.poll()
    cab.state.voltage_mv = 50123
    stamp = cab.reading.t_ms
    steps = []
    for t in range(10):
        cab.bus.stats.reset()
        r = cab.driver.step(cab.reading, 2000 + 50 * t, 3)
        steps.append((r, cab.bus.stats.transactions))
        if r != sbs.MORE:
            break
        assert cab.reading.t_ms == stamp and cab.reading.voltage_mv != 50123  # nothing half-written
    # Only the voltage moved: the rules' words are as before, and the step says so.
    assert steps == [(sbs.MORE, 3), (sbs.MORE, 3), (sbs.SAME, 1)]
    assert cab.reading.voltage_mv == 50123 and cab.reading.t_ms == 2100


def _bus_us(stats, hz=100_000):
    return (9 * stats.bytes + 2 * stats.transactions) * 1e6 / hz


def test_identifying_takes_two_ticks_then_the_first_poll_whole(cab):
    steps = []
    for t in range(8):
        cab.bus.stats.reset()
        r = cab.driver.step(cab.reading, 1000 + 50 * t, 3)
        steps.append((r, cab.bus.stats.transactions, _bus_us(cab.bus.stats)))
        if r != sbs.MORE:
            break
        assert not cab.reading.valid  # nothing committed before a whole poll
    assert [x[0] for x in steps] == [sbs.MORE, sbs.MORE, sbs.DONE]
    # the mux and eight words; two blocks of two transactions; then the first poll, whole
    assert [x[1] for x in steps] == [9, 4, 7]
    assert max(x[2] for x in steps) <= 5500  # no tick over 5.5 ms of bus at 100 kHz
    assert cab.reading.serial == "TUKAR-20240315-0042" and cab.reading.profile == "ref48v"
    assert cab.reading.cycles == cab.state.cycles and cab.reading.soh_pct > 0
    # then the poll goes on at its budget
    assert [cab.driver.step(cab.reading, 1200 + 50 * t, 3) for t in range(3)] == \
        [sbs.MORE, sbs.MORE, sbs.SAME]


def test_identification_that_fails_half_way_starts_again_from_its_first_part(cab):
    assert cab.driver.step(cab.reading, 1000, 3) == sbs.MORE  # part 0
    cab.hw.fault(cab.battery, True, "nack", count=1)
    assert cab.driver.step(cab.reading, 1050, 3) == sbs.FAILED  # part 1 fails
    cab.state.serial = 0x0077  # (another pack would be read from the start)
    results = [cab.driver.step(cab.reading, 1100 + 50 * t, 3) for t in range(3)]
    assert results == [sbs.MORE, sbs.MORE, sbs.DONE]
    assert cab.reading.serial == "TUKAR-20240315-0077"


def test_twelve_packs_found_at_once_are_all_read_within_the_identify_time_out():
    """At a boot every pack is identified again, and each must answer within the core's
    identify_timeout_s (3 s): none of twelve is refused as no_bms."""
    from tukar_tools.rig import Cabinet as Rig
    cab = Rig("tukar-12-wroom")
    for n in range(1, cab.n + 1):
        cab.insert_sbs(n)
    cab.run(3000)
    states = [cab.core.slots[i].state for i in range(cab.n)]
    assert "quarantined" not in states and "identifying" not in states, states
    assert not [e for e in cab.events if e["type"] == "Quarantined"]


@pytest.mark.parametrize("field,value", [("temp_dk", 3081), ("soc_pct", 37), ("status", 0x1000)])
def test_a_poll_that_moves_a_value_a_rule_reads_is_done_not_same(cab, field, value):
    cab.poll()
    assert cab.driver.step(cab.reading, 2000, 99) == sbs.SAME
    setattr(cab.state, field, value)
    assert cab.driver.step(cab.reading, 2050, 99) == sbs.DONE
    assert cab.driver.step(cab.reading, 2100, 99) == sbs.SAME


def test_capacities_and_cycles_are_read_at_identification_then_one_per_poll_in_turn(cab):
    assert cab.poll()
    assert (cab.reading.soh_pct, cab.reading.cycles) != (0, 0)  # known from the first reading
    cab.state.cycles = 999
    seen = []
    for _ in range(3):
        assert cab.poll()
        seen.append(cab.reading.cycles)
    assert seen[-1] == 999 and seen[0] != 999  # the cycle count comes round within three polls


def test_battery_without_pec_is_read_two_bytes_per_word():
    c = Cabinet(i2c_chips.BatteryState(spec_info=0x0021))
    c.poll()
    c.bus.stats.reset()
    assert c.poll() and not c.driver.pec
    assert c.bus.stats.bytes == 35  # seven words of five bytes


def test_one_corrupt_pec_discards_the_reading_but_is_no_link_fault(cab):
    cab.poll(1000)
    cab.state.temp_dk = 3031
    cab.hw.fault(cab.battery, True, "corrupt_pec", count=1)
    assert not cab.poll(2000)
    r = cab.reading
    assert (r.temp_dc, r.t_ms, r.link_fault) == (250, 1000, False)
    assert cab.poll(3000) and r.temp_dc == 300


def test_a_corrupt_data_byte_fails_pec(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "corrupt", count=1)
    assert not cab.poll()


def test_three_pec_failures_in_a_row_are_a_link_fault(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "corrupt_pec", count=3)
    assert not cab.poll() and not cab.reading.link_fault
    assert not cab.poll() and not cab.reading.link_fault
    assert not cab.poll() and cab.reading.link_fault


def test_link_fault_clears_on_the_next_good_read(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "corrupt_pec")
    for _ in range(3):
        cab.poll()
    assert cab.reading.link_fault
    cab.hw.fault(cab.battery, False, "corrupt_pec")
    assert cab.poll() and not cab.reading.link_fault


def test_a_good_read_resets_the_failure_count(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "corrupt_pec", count=2)
    cab.poll()
    cab.poll()
    assert cab.poll()
    cab.hw.fault(cab.battery, True, "corrupt_pec", count=2)
    cab.poll()
    cab.poll()
    assert not cab.reading.link_fault


def test_three_nacks_are_a_link_fault(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "nack")
    assert [cab.poll() for _ in range(3)] == [False, False, False]
    assert cab.reading.link_fault


def test_absent_battery_is_a_link_fault_after_three_polls():
    c = Cabinet()
    c.mux_model.channel_bus(SLOT_CH).detach(c.battery)
    for _ in range(3):
        assert not c.poll()
    assert c.reading.link_fault and not c.reading.valid


def test_mux_failure_counts_as_a_failed_poll(cab):
    cab.poll()
    cab.mux.forget()
    cab.hw.fault(cab.mux_model, True, "nack")
    for _ in range(3):
        assert not cab.poll()
    assert cab.reading.link_fault


def test_battery_is_identified_again_after_a_link_fault(cab):
    cab.poll()
    cab.hw.fault(cab.battery, True, "nack", count=3)
    for _ in range(3):
        cab.poll()
    cab.state.serial = 0x0043
    assert cab.poll()
    assert cab.reading.serial == "TUKAR-20240315-0043"


def test_cleared_reading_makes_the_driver_identify_the_new_battery(cab):
    cab.poll()
    cab.reading.clear()
    cab.state.device_name = "ref72v"
    assert cab.poll() and cab.reading.profile == "ref72v"


def test_battery_directly_on_the_bus_without_mux():
    c = Cabinet(mux=False)
    assert c.poll() and c.reading.temp_dc == 250


# MicroPython VM -----------------------------------------------------------------------------

def _vm_table(state):
    """Bytes the battery would put on the wire for each command: data then PEC."""
    table = {}
    for cmd in list(range(0x03, 0x1D)):
        w = state.word(cmd)
        if w is None:
            continue
        data = bytes((w & 0xFF, w >> 8))
        table[cmd] = data + bytes((sbs.crc8(bytes((0x16, cmd, 0x17)) + data),))
    for cmd in (0x20, 0x21):
        blk = state.block(cmd)
        data = bytes((len(blk),)) + blk
        table[cmd] = data + bytes((sbs.crc8(bytes((0x16, cmd, 0x17)) + data),))
    return table


_VM_CODE = """
import sys, gc
sys.path.insert(0, '/input')
from tukar import sbs
from tukar.inputs import BmsReading

class Bus:
    def __init__(self, table):
        self.t = table
    def readfrom_mem_into(self, addr, cmd, buf):
        src = self.t[cmd]
        for i in range(len(buf)):
            buf[i] = src[i]

assert sbs.crc8(b'123456789') == 0xF4
assert sbs.crc8(bytes([0x16, 0x08, 0x17, 0xA6, 0x0B])) == 0x2A
bat = sbs.SmartBattery(Bus(TABLE))
r = BmsReading()
assert bat.poll(r, 1)  # identifies: the serial and names are allocated here, once
bat.poll(r, 2)  # first steady poll

def measure(n):  # the caller collects first, at the top level (mpvm.nested_collects)
    gc.disable()
    before = gc.mem_alloc()
    for i in range(n):
        bat.poll(r, i)
    after = gc.mem_alloc()
    gc.enable()
    return after - before

gc.collect()
print(r.temp_dc, r.soc_pm, r.serial, r.profile, measure(N))
"""


def _vm_poll(n):
    from tukar_tools import mpvm

    code = _VM_CODE.replace("TABLE", repr(_vm_table(i2c_chips.BatteryState()))).replace("N", str(n))
    return mpvm.run(code, fuel=10**10, timeout=60)


@pytest.mark.mpy
def test_micropython_poll_decodes_and_allocates_nothing_per_poll():
    res = _vm_poll(50)
    assert res.stderr == ""
    assert res.stdout.split() == ["250", "800", "TUKAR-20240315-0042", "ref48v", "0"]


def test_model_nacks_a_command_the_battery_does_not_know(cab):
    cab.mux.select(SLOT_CH)
    with pytest.raises(OSError) as e:
        cab.i2c.readfrom_mem(0x0B, 0x3C, 3)
    assert e.value.errno == 19
