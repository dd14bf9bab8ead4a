# TCA9548A switch: driver against the byte-level model; every SBS battery answers at 0x0B.
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "firmware"), os.path.join(ROOT, "tools", "tukar_tools", "shim")):
    if p not in sys.path:
        sys.path.insert(0, p)

import machine  # noqa: E402
from tukar.tca9548a import TCA9548A  # noqa: E402
from tukar_tools.shim import i2c_chips  # noqa: E402
from tukar_tools.shim.hw import Hardware, install  # noqa: E402

SCL, SDA, RESET = 22, 21, 27


class Rig:
    def __init__(self, reset=True):
        self.hw = install(Hardware())
        self.i2c = machine.I2C(0, scl=machine.Pin(SCL), sda=machine.Pin(SDA))
        self.bus = self.hw.i2c_bus(0)
        self.model = self.bus.attach(i2c_chips.TCA9548A(self.hw, 0x70, RESET))
        self.batteries = []
        for ch in range(8):
            st = i2c_chips.BatteryState(serial=ch)
            self.batteries.append(self.model.channel_bus(ch).attach(i2c_chips.SmartBattery(st)))
        self.reset_pin = machine.Pin(RESET, machine.Pin.OUT, value=1) if reset else None
        self.mux = TCA9548A(self.i2c, 0x70, self.reset_pin)

    def serial(self):
        return self.i2c.readfrom_mem(0x0B, 0x1C, 2)[0]


@pytest.fixture
def rig():
    return Rig()


def test_select_writes_one_control_byte_with_the_channel_bit(rig):
    rig.mux.select(5)
    assert rig.model.control == 0x20
    assert (rig.bus.stats.bytes, rig.bus.stats.transactions) == (2, 1)


def test_select_of_the_routed_channel_writes_nothing(rig):
    rig.mux.select(2)
    rig.bus.stats.reset()
    rig.mux.select(2)
    assert rig.bus.stats.bytes == 0 and rig.model.writes == 1


def test_batteries_at_0x0b_are_reached_one_channel_at_a_time(rig):
    for ch in (0, 7, 3):
        rig.mux.select(ch)
        assert rig.serial() == ch


def test_no_battery_is_reachable_with_no_channel_routed(rig):
    rig.mux.select(1)
    rig.mux.deselect()
    assert rig.model.control == 0
    with pytest.raises(OSError) as e:
        rig.i2c.readfrom_mem(0x0B, 0x1C, 2)
    assert e.value.errno == 19


def test_model_routes_several_channels_at_once(rig):
    rig.i2c.writeto(0x70, bytes([0x05]))
    assert 0x0B in rig.i2c.scan() and 0x70 in rig.i2c.scan()
    # two batteries answer together: the wire is the AND of serials 0 and 2
    assert rig.serial() == 0 & 2


def test_channel_out_of_range_is_refused(rig):
    with pytest.raises(ValueError):
        rig.mux.select(8)


def test_failed_select_forgets_the_cache_so_the_next_select_writes(rig):
    rig.mux.select(4)
    rig.hw.fault(rig.model, True, "nack", count=1)
    with pytest.raises(OSError):
        rig.mux.select(6)
    assert rig.mux.channel is None
    rig.mux.select(4)
    assert rig.model.control == 0x10 and rig.model.writes == 2


def test_a_battery_holding_sda_low_stalls_the_whole_bus(rig):
    rig.mux.select(3)
    rig.hw.fault(rig.model.channel_bus(3), True)
    with pytest.raises(OSError) as e:
        rig.i2c.writeto(0x70, b"\x00")
    assert e.value.errno == 116


def test_recover_clocks_nine_pulses_and_resets_the_switch(rig):
    rig.mux.select(3)
    rig.hw.fault(rig.model.channel_bus(3), True)
    scl = machine.Pin(SCL)
    sda = machine.Pin(SDA)
    assert rig.mux.recover(scl, sda)
    assert rig.model.control == 0 and rig.mux.channel is None
    rig.mux.select(3)
    assert rig.serial() == 3


def test_recover_without_a_reset_pin_frees_the_bus_by_clocking_alone():
    rig = Rig(reset=False)
    rig.hw.fault(rig.bus, True)
    assert rig.mux.recover(machine.Pin(SCL), machine.Pin(SDA))
    rig.mux.select(6)
    assert rig.serial() == 6


def test_recover_stops_clocking_once_sda_is_released(rig):
    pulses = []
    rig.hw.pin(SCL).listeners.append(lambda _p, level: level and pulses.append(1))
    rig.bus.stick(pulses=2)
    rig.mux.recover(machine.Pin(SCL), machine.Pin(SDA))
    assert len(pulses) == 2 + 1  # two clocks, then the STOP's rising SCL


def test_reset_pin_low_clears_the_control_register_in_the_model(rig):
    rig.mux.select(2)
    rig.reset_pin(0)
    rig.reset_pin(1)
    assert rig.model.control == 0
