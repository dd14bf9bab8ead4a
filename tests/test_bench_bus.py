"""Bus figures of a full scan of the 12-slot cabinet (tukar_tools.bench_bus): the traffic the
drivers put on each bus, and no allocation under MicroPython."""
import pytest

from tukar_tools import bench_bus


def test_full_scan_reads_the_expanders_in_one_transaction_each_and_every_sbs_pack():
    r = bench_bus.bus_bytes()
    io, smbus = r["i2c"][0], r["i2c"][1]
    assert io["transactions"] == 4 and io["bytes"] == 4 * 5  # 4 MCP23017: addr, reg, addr, GPIOA, GPIOB
    # 12 packs x 9 word reads (address, command, address, 2 data bytes, PEC) plus the mux selects.
    assert smbus["bytes"] >= 12 * 9 * 6
    assert smbus["us_at_400khz"] < 50_000  # a whole round of the packs fits in one 50 ms tick at 400 kHz
    assert smbus["us_at_board_freq"] / 12 < 10_000  # one pack per tick at 100 kHz: under 10 ms
    assert r["spi"]["bytes"] == 10  # TEC/REC, EFLG, CANINTF: the bus-off check of each tick


@pytest.mark.mpy
def test_full_scan_and_control_tick_allocate_nothing_under_micropython():
    a = bench_bus.vm_allocations(n=10)
    assert a["charging"] == 12 and a["events"] == []  # steady state: every pack charging
    assert a["per_scan"] == 0
    assert a["per_tick"] == 0


def test_the_calibration_turns_fuel_into_esp32_time_from_pystone():
    from tukar_tools import bench
    cal = bench.calibration(loops=20)
    assert cal is not None  # make test builds the MicroPython tree it reads perf_bench from
    # The published ESP32 pystone rate puts an ESP32 millisecond at 100 to 220 k fuel at 240 MHz.
    assert 100_000 <= cal["fuel_per_ms_240mhz"] <= 220_000
    assert cal["fuel_per_ms_160mhz"] == round(cal["fuel_per_ms_240mhz"] * 160 / 240)
