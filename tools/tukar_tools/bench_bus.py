"""Bus figures of one full scan of a cabinet: bytes on each I2C bus and on the SPI bus, the bus
time they take, and the allocations of the same work under the MicroPython VM.

A full scan is what reads every slot once: Board.scan (expanders, NTCs), one BMS poll per SBS
slot (Board.poll_bms visits one slot per control tick, round-robin), the MCP2515's error check and
drain (ControlCycle's CAN service), and Board.apply. Measured in steady state on the simulated
12-slot cabinet with an identified sbs48v pack in every slot. Bus time counts 9 clocks per byte
(8 bits and the ACK) and 2 per transaction (START and STOP); SPI 8 clocks per byte.

    .venv/bin/python -m tukar_tools.bench_bus      (also the second section of `make bench`)
"""
import json
import sys

from tukar_tools import mpvm

I2C_HZ = 400_000
SPI_HZ = 10_000_000


def _full_scan(cab):
    b = cab.board
    core = cab.core
    b.scan(core.slot_inputs, core.cabinet, cab.now)
    for _ in range(len(b._sbs_slots)):
        b.poll_bms(core.slot_inputs, cab.now)
    b.can.service(cab.now)
    b.apply(core.lock_cmd, core.lock_pulse, core.charge_ma, core.fan, core.alarm)


def bus_bytes(board="tukar-12-wroom"):
    """Bytes and transactions per full scan on each bus, with the bus time they take."""
    from tukar_tools.rig import Cabinet

    cab = Cabinet(board)
    for n in range(1, cab.n + 1):
        cab.insert_sbs(n)
    cab.run(3000)  # identified, charging: steady state
    assert all(cab.core.charge_ma), "every slot should charge in steady state"
    for bus in cab.hw.i2c.values():
        bus.stats.reset()
    spi = cab.hw.spi_bus(cab.cfg["spi"]["id"]).stats
    spi.reset()
    _full_scan(cab)
    out = {"board": board, "slots": cab.n, "i2c": {}, "spi": None}
    for b in cab.cfg["i2c"]:
        st = cab.hw.i2c_bus(b["id"]).stats
        clocks = 9 * st.bytes + 2 * st.transactions
        out["i2c"][b["id"]] = {"use": b.get("use", ""), "bytes": st.bytes, "transactions": st.transactions,
                               "us_at_400khz": round(clocks * 1e6 / I2C_HZ),
                               "freq": b["freq"], "us_at_board_freq": round(clocks * 1e6 / b["freq"])}
    out["spi"] = {"bytes": spi.bytes, "transactions": spi.transactions,
                  "us_at_10mhz": round(spi.bytes * 8 * 1e6 / SPI_HZ, 1)}
    return out


# Inside the VM: a fake `machine` whose I2C answers like the cabinet's chips (expanders read all
# ones: doors closed, packs present, bolts out; every SBS command answers from a table with PEC).
_VM = r'''
def i2c_answer(addr, mem, buf):
    src = TABLE.get(mem) if addr == 0x0B else None
    for i in range(len(buf)):
        buf[i] = src[i] if src is not None else 0xFF
TABLE = %(table)s
from tukar.board import Board
from tukar.core import Core
from tukar.cycle import ControlCycle
from tukar.profile import load_dir
b = Board(json.load(open('/input/board.json')), machine)
b.safe_outputs()
profiles = load_dir('/input/profiles')
core = Core('bench-1', b.slot_count, profiles=profiles)
cycle = ControlCycle(b, core)
K = len(b._sbs_slots)
def full_scan(now):
    b.scan(core.slot_inputs, core.cabinet, now)
    for k in range(K):
        b.poll_bms(core.slot_inputs, now)
    b.can.service(now)
    b.apply(core.lock_cmd, core.lock_pulse, core.charge_ma, core.fan, core.alarm)
now = 0
for t in range(80):  # boot, identify every pack, start charging
    now += 50
    full_scan(now)
    cycle.step(now)
core.events.clear()
import micropython
FRAMES = [0]  # bytes allocated and freed again in the steps: frames MicroPython put on the heap
def measure(now, n, whole):
    alloc = 0
    for i in range(n):
        now += 50
        m0 = gc.mem_alloc()
        if whole:
            t0 = micropython.mem_total()
            cycle.step(now)
            FRAMES[0] += micropython.mem_total() - t0
        else:
            full_scan(now)
        alloc += gc.mem_alloc() - m0
    return alloc
def steps(now, n):  # the fuel runs: n control steps, nothing else
    for i in range(n):
        now += 50
        cycle.step(now)
FUEL = %(fuel)d
if FUEL >= 0:
    steps(now + 100, FUEL)
    print(json.dumps({"steps": FUEL}))
else:
    gc.collect()
    gc.disable()
    measure(now, 2, 0)
    scan = measure(now + 100, %(n)d, 0)
    tick = measure(now + 100 + 50 * %(n)d, %(n)d, 1)
    now += 100 + 100 * %(n)d
    # The tick's own stages, resumed or called alone: in steady state none puts a frame on the heap.
    sw = b.switch_reader(core.slot_inputs, core.cabinet)
    tr = b.temperature_reader(core.slot_inputs, core.cabinet)
    next(sw)
    next(tr)
    t0 = micropython.mem_total()
    for i in range(%(n)d):
        next(sw)
        next(tr)
    readers = micropython.mem_total() - t0
    t0 = micropython.mem_total()
    for i in range(%(n)d):
        now += 50
        core.step(now, 0)
    quiet = micropython.mem_total() - t0
    gc.enable()
    print(json.dumps({"scan": scan, "tick": tick, "frames": FRAMES[0], "readers": readers,
                      "core_quiet": quiet,
                      "charging": sum(1 for x in core.charge_ma if x),
                      "events": [e["type"] for e in core.events]}))
'''


def _sbs_table():
    from tukar import sbs
    from tukar_tools.shim.i2c_chips import BatteryState

    st = BatteryState(device_name="TK48S-30")
    table = {}
    for cmd in list(range(0x03, 0x1D)) + [0x20, 0x21]:
        w = st.word(cmd)
        if w is not None:
            data = bytes((w & 0xFF, w >> 8))
        else:
            blk = st.block(cmd)
            if blk is None:
                continue
            data = bytes((len(blk),)) + blk
        table[cmd] = data + bytes((sbs.crc8(bytes((0x16, cmd, 0x17)) + data),))
    return table


def vm_allocations(board="tukar-12-wroom", n=20):
    """Bytes allocated per full scan and per ControlCycle.step, under the MicroPython VM; and the
    bytes of the frames a step put on the heap and freed (frames_per_tick), and those of the
    board's switch and temperature readers and of Core.step with nothing to decide, alone."""
    from tukar_tools.rig import board_path

    code = _VM % {"table": repr(_sbs_table()), "n": n, "fuel": -1}
    res = mpvm.run(mpvm.FAKE_MACHINE + code, files={"board.json": board_path(board)}, fuel=10**11)
    info = json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])
    return {"per_scan": info["scan"] / n, "per_tick": info["tick"] / n,
            "frames_per_tick": info["frames"] / n, "readers_frames": info["readers"] / n,
            "core_quiet_frames": info["core_quiet"] / n, "charging": info["charging"],
            "events": info["events"]}


def step_fuel(board="tukar-12-wroom", n=20):
    """Fuel of one whole ControlCycle.step (drivers over the VM's fake buses, an SBS pack answering
    in every slot, the core), as the difference between runs of n steps and of none."""
    from tukar_tools.rig import board_path

    def run(k):
        code = _VM % {"table": repr(_sbs_table()), "n": n, "fuel": k}
        return mpvm.run(mpvm.FAKE_MACHINE + code, files={"board.json": board_path(board)},
                        fuel=10**11).fuel_used
    return round((run(n) - run(0)) / n)


def report(board="tukar-12-wroom"):
    b = bus_bytes(board)
    a = vm_allocations(board)
    b["alloc_per_scan"] = a["per_scan"]
    b["alloc_per_tick"] = a["per_tick"]
    b["fuel_per_step"] = step_fuel(board)
    return b


def print_report(r):
    print("Buses per full scan of the %d-slot cabinet %s (scan + BMS poll of every slot + apply)"
          % (r["slots"], r["board"]))
    for bid in sorted(r["i2c"]):
        x = r["i2c"][bid]
        print("  I2C bus %d (%s): %5d bytes in %3d transactions: %6d us at 400 kHz (%d us at the board's %d kHz)"
              % (bid, x["use"], x["bytes"], x["transactions"], x["us_at_400khz"], x["us_at_board_freq"],
                 x["freq"] // 1000))
    s = r["spi"]
    print("  SPI (MCP2515):    %5d bytes in %3d transactions: %6.1f us at 10 MHz"
          % (s["bytes"], s["transactions"], s["us_at_10mhz"]))
    print("  allocated under MicroPython: %.1f bytes per full scan, %.1f bytes per control tick"
          % (r["alloc_per_scan"], r["alloc_per_tick"]))
    print("  one whole control step (every driver and the core, an SBS pack in every slot): %d fuel"
          % r["fuel_per_step"])


def main(argv=None):
    r = report()
    if argv and "--json" in argv:
        print(json.dumps(r, indent=2))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
