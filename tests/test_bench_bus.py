"""Bus figures of a full scan of the 12-slot cabinet (tukar_tools.bench_bus): the traffic the
drivers put on each bus, and no allocation under MicroPython."""
import pytest

from tukar_tools import bench_bus


def test_full_scan_reads_the_expanders_in_one_transaction_each_and_every_sbs_pack():
    r = bench_bus.bus_bytes()
    io, smbus = r["i2c"][0], r["i2c"][1]
    assert io["transactions"] == 4 and io["bytes"] == 4 * 5  # 4 MCP23017: addr, reg, addr, GPIOA, GPIOB
    # 12 packs x 7 word reads (address, command, address, 2 data bytes, PEC) plus the mux selects.
    assert smbus["bytes"] >= 12 * 7 * 6
    assert smbus["us_at_400khz"] < 50_000  # a whole round of the packs fits in one 50 ms tick at 400 kHz
    assert smbus["us_at_board_freq"] / 12 < 10_000  # one pack's poll at 100 kHz: under 10 ms
    # CANINTF and EFLG in one read; TEC and REC with them once a second.
    assert r["spi"]["bytes"] in (4, 8)


@pytest.mark.parametrize("scenario", ["quiet", "swap"])
def test_bus_time_per_control_tick_stays_within_its_budget(scenario):
    """Bus time of every tick (at the board's bus speeds), from the rig's bus models: at most
    3 ms on average and 10 ms in any tick (tukar_tools.bench_cpu, also in make bench)."""
    from tukar_tools import bench_cpu
    rec = bench_cpu.record(scenario)
    a, b = rec["windows"][scenario]
    bus = [t["bus_us"] for t in rec["ticks"][a:b]]
    assert len(bus) >= 40
    assert sum(bus) / len(bus) <= bench_cpu.GATES["bus_mean_us"]
    assert max(bus) <= bench_cpu.GATES["bus_max_us"]
    # Every tick reads the four expanders (at least 4 x 52 clocks at 400 kHz).
    assert min(bus) >= 4 * 52 * 1e6 / 400_000


def test_the_gates_fail_when_a_budget_is_exceeded():
    from tukar_tools import bench_cpu
    ok = {"quiet": {"fuel_max": 100, "bus_mean_us": 1000, "bus_max_us": 2000},
          "swap": {"fuel_max": 800_000, "bus_mean_us": 1500, "bus_max_us": 4000},
          "busy": {"fuel_mean": 200_000, "bus_mean_us": 1200, "bus_max_us": 5000}}
    assert all(g["ok"] for g in bench_cpu.gates(ok))
    ok["swap"]["fuel_max"] = 900_001
    bad = [g["name"] for g in bench_cpu.gates(ok) if not g["ok"]]
    assert bad == ["swap tick, worst"]


def test_a_tick_during_an_update_is_held_to_the_swap_ticks_budget():
    from tukar_tools import bench_cpu
    r = {"quiet": {"fuel_max": 170_000, "bus_mean_us": 1000, "bus_max_us": 2000},
         "swap": {"fuel_max": 800_000, "bus_mean_us": 1500, "bus_max_us": 4000},
         "busy": {"fuel_mean": 200_000, "bus_mean_us": 1200, "bus_max_us": 5000},
         "ota": {"chunk_bytes": 512, "chunk_fuel": 100_000, "tick_fuel": 9_000}}
    row = [g for g in bench_cpu.gates(r) if g["name"] == "tick in an update, worst"]
    assert row and row[0]["value"] == 279_000 and row[0]["ok"]
    r["ota"]["chunk_fuel"] = 900_000 - 179_000 + 1
    assert [g["name"] for g in bench_cpu.gates(r) if not g["ok"]] == ["tick in an update, worst"]


@pytest.mark.mpy
def test_an_update_costs_fuel_per_chunk_of_its_download_and_per_control_tick():
    """tukar.ota's own code in the VM: a 512-byte chunk read, hashed and written, and the control
    step's side of a running update."""
    from tukar_tools import bench_cpu
    o = bench_cpu.ota_costs(chunks=8, ticks=50)
    assert o["chunk_bytes"] == 512
    assert 10_000 < o["chunk_fuel"] < 900_000  # SHA-256 of 512 bytes alone is thousands
    assert 0 < o["tick_fuel"] < o["chunk_fuel"]


@pytest.mark.mpy
def test_the_tape_plays_the_same_ticks_back_in_the_micropython_vm():
    """The firmware in the VM makes the calls the rig recorded, in order (the playback checks
    its place on the tape after every tick and raises otherwise), and a tick costs fuel."""
    from tukar_tools import bench_cpu
    rec = bench_cpu.record("quiet")
    a, _ = rec["windows"]["quiet"]
    assert bench_cpu._tick_fuel((rec, a)) > 20_000


@pytest.mark.mpy
def test_full_scan_and_control_tick_allocate_nothing_under_micropython():
    a = bench_bus.vm_allocations(n=10)
    assert a["charging"] == 12 and a["events"] == []  # steady state: every pack charging
    assert a["per_scan"] == 0
    assert a["per_tick"] == 0


@pytest.mark.mpy
def test_the_ticks_readers_and_a_core_step_with_nothing_to_decide_put_no_frame_on_the_heap():
    # MicroPython puts the frame of a function with more than 11 words of state on the heap at
    # every call: in the busy minute such frames cost about half of a tick's fuel.
    a = bench_bus.vm_allocations(n=10)
    assert a["readers_frames"] == 0
    assert a["core_quiet_frames"] == 0


def test_the_calibration_turns_fuel_into_esp32_time_from_pystone():
    from tukar_tools import bench
    cal = bench.calibration(loops=20)
    assert cal is not None  # make test builds the MicroPython tree it reads perf_bench from
    # The published ESP32 pystone rate puts an ESP32 millisecond at 100 to 220 k fuel at 240 MHz.
    assert 100_000 <= cal["fuel_per_ms_240mhz"] <= 220_000
    assert cal["fuel_per_ms_160mhz"] == round(cal["fuel_per_ms_240mhz"] * 160 / 240)
