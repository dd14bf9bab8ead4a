# MCP23017 slot I/O expander: driver against the byte-level model (IOCON.BANK = 0).
import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
for p in (FIRMWARE, os.path.join(ROOT, "tools", "tukar_tools", "shim")):
    if p not in sys.path:
        sys.path.insert(0, p)

import machine  # noqa: E402
from tukar.mcp23017 import MCP23017  # noqa: E402
from tukar_tools.shim import i2c_chips  # noqa: E402
from tukar_tools.shim.hw import Hardware, install  # noqa: E402

# A slot board: GPA0..7 inputs (door, presence, lock feedback...), GPB0..7 outputs (lock, charger).
INPUTS = 0x00FF
PULLUPS = 0x00FF
INVERT = 0x0003


class Rig:
    def __init__(self, inputs=INPUTS, pullups=PULLUPS, invert=INVERT):
        self.hw = install(Hardware())
        self.i2c = machine.I2C(0, scl=22, sda=21)
        self.bus = self.hw.i2c_bus(0)
        self.chip = self.bus.attach(i2c_chips.MCP23017(0x21))
        self.io = MCP23017(self.i2c, 0x21, inputs, pullups, invert)
        self.io.configure()
        self.bus.stats.reset()


@pytest.fixture
def rig():
    return Rig()


def test_configure_sets_directions_pullups_and_polarity(rig):
    r = rig.chip.regs
    assert (r[0x00], r[0x01]) == (0xFF, 0x00)  # IODIRA, IODIRB
    assert (r[0x02], r[0x03]) == (0x03, 0x00)  # IPOLA, IPOLB
    assert (r[0x0C], r[0x0D]) == (0xFF, 0x00)  # GPPUA, GPPUB
    assert r[0x0A] & 0x80 == 0  # IOCON.BANK = 0


def test_configure_drives_outputs_low_from_the_latch():
    rig = Rig()
    assert rig.chip.outputs() == 0 and rig.chip.output(8) == 0


def test_read_is_one_transaction_of_five_bytes(rig):
    rig.io.read()
    # write address, GPIOA pointer, read address, GPIOA, GPIOB
    assert (rig.bus.stats.bytes, rig.bus.stats.transactions) == (5, 1)


def test_read_puts_gpiob_in_the_high_byte(rig):
    rig.chip.set_input(7, 0)
    rig.io.write(0xA500)
    assert rig.io.read() == 0xA500 | 0x7C  # pins 0, 1 inverted; 7 low; 2..6 pulled up


def test_inverted_inputs_read_1_when_the_switch_pulls_low(rig):
    rig.chip.set_input(0, 0)
    rig.chip.set_input(1, 1)
    v = rig.io.read()
    assert (v & 1, (v >> 1) & 1) == (1, 0)


def test_floating_input_without_pullup_reads_0():
    rig = Rig(pullups=0, invert=0)
    assert rig.io.read() & 0xFF == 0


def test_write_sets_both_latches_in_one_transaction_of_four_bytes(rig):
    rig.io.write(0x8100)
    assert (rig.bus.stats.bytes, rig.bus.stats.transactions) == (4, 1)
    assert rig.chip.outputs() == 0x8100
    assert (rig.chip.output(8), rig.chip.output(15), rig.chip.output(9)) == (1, 1, 0)


def test_set_changes_one_pin_through_the_cached_latch(rig):
    rig.io.write(0x0100)
    rig.io.set(12, 1)
    assert rig.chip.outputs() == 0x1100
    rig.io.set(8, 0)
    assert rig.chip.outputs() == 0x1000


def test_set_to_the_level_already_latched_writes_nothing(rig):
    rig.io.set(9, 1)
    rig.bus.stats.reset()
    rig.io.set(9, 1)
    assert rig.bus.stats.bytes == 0


def test_output_of_an_input_pin_is_refused_by_the_model(rig):
    with pytest.raises(ValueError):
        rig.chip.output(0)


def test_absent_expander_raises_enodev(rig):
    rig.hw.fault(rig.chip, True, "nack")
    with pytest.raises(OSError) as e:
        rig.io.read()
    assert e.value.errno == 19


@given(st.integers(0, 0xFF), st.integers(0, 0xFF))
def test_inputs_and_outputs_round_trip(levels, outs):
    rig = Rig(invert=0)
    for pin in range(8):
        rig.chip.set_input(pin, (levels >> pin) & 1)
    rig.io.write(outs << 8)
    assert rig.io.read() == levels | (outs << 8)


_VM_CODE = """
import sys, gc
sys.path.insert(0, '/input')
from tukar.mcp23017 import MCP23017

class Bus:
    def __init__(self):
        self.regs = bytearray(22)
    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = self.regs[reg + i]
    def writeto_mem(self, addr, reg, buf):
        for i in range(len(buf)):
            self.regs[reg + i] = buf[i]

bus = Bus()
io = MCP23017(bus, 0x20, 0x00FF, 0x00FF, 0)
io.configure()
bus.regs[0x12] = 0x5A

def measure(n):  # the caller collects first, at the top level (mpvm.nested_collects)
    gc.disable()
    before = gc.mem_alloc()
    v = 0
    for i in range(n):
        v = io.read()
        io.write(i & 0xFF00)
        io.set(3, i & 1)
    after = gc.mem_alloc()
    gc.enable()
    return v, after - before

gc.collect()
print(*measure(200))
"""


@pytest.mark.mpy
def test_micropython_read_and_write_allocate_nothing():
    from tukar_tools import mpvm

    res = mpvm.run(_VM_CODE, fuel=10**10, timeout=60)
    assert res.stderr == ""
    assert res.stdout.split() == [str(0x5A), "0"]
