# The host `machine` shim behaves like MicroPython's ESP32 port on the simulated electronics.
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(ROOT, "tools", "tukar_tools", "shim")
if SHIM not in sys.path:
    sys.path.insert(0, SHIM)

import hosttime  # noqa: E402
import machine  # noqa: E402
from tukar_tools.shim import hw as hwmod  # noqa: E402
from tukar_tools.shim.hw import Hardware, I2CDevice, install  # noqa: E402


class Echo(I2CDevice):
    """A register file: first written byte is the pointer, then sequential reads/writes."""

    def __init__(self, address):
        super().__init__(address)
        self.regs = bytearray(range(256))
        self.ptr = None

    def i2c_start(self, read):
        if not read:
            self.ptr = None
        return True

    def i2c_write(self, byte):
        if self.ptr is None:
            self.ptr = byte
        else:
            self.regs[self.ptr] = byte
            self.ptr = (self.ptr + 1) & 0xFF
        return True

    def i2c_read(self, ack):
        v = self.regs[self.ptr or 0]
        self.ptr = ((self.ptr or 0) + 1) & 0xFF
        return v


class Spy:
    def __init__(self):
        self.log = []

    def spi_select(self):
        self.log.append("sel")

    def spi_exchange(self, byte):
        self.log.append(byte)
        return byte ^ 0xFF

    def spi_deselect(self):
        self.log.append("desel")


@pytest.fixture
def hw():
    return install(Hardware())


def test_top_level_hw_import_is_the_package_module():
    import hw as top

    assert top is hwmod


def test_absent_i2c_device_raises_enodev_19(hw):
    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
    with pytest.raises(OSError) as e:
        i2c.readfrom(0x0B, 2)
    assert e.value.errno == 19


def test_stuck_bus_raises_etimedout_116_like_the_esp32_port(hw):
    i2c = machine.I2C(0, scl=22, sda=21)
    hw.fault(hw.i2c_bus(0), True)
    with pytest.raises(OSError) as e:
        i2c.writeto(0x20, b"\x00")
    assert e.value.errno == 116
    assert hw.pin(21).value == 0


def test_nine_scl_pulses_free_a_stuck_bus(hw):
    i2c = machine.I2C(0, scl=22, sda=21)
    hw.i2c_bus(0).attach(Echo(0x20))
    hw.fault(hw.i2c_bus(0), True)
    scl = machine.Pin(22, machine.Pin.OPEN_DRAIN, value=1)
    for _ in range(8):
        scl(0)
        scl(1)
    assert hw.pin(21).value == 0  # eight pulses are not enough
    scl(0)
    scl(1)
    assert hw.pin(21).value == 1
    assert i2c.scan() == [0x20]


def test_scan_probes_0x08_to_0x77(hw):
    bus = hw.i2c_bus(0)
    for a in (0x03, 0x08, 0x77, 0x78):
        bus.attach(Echo(a))
    assert machine.I2C(0).scan() == [0x08, 0x77]


def test_readfrom_mem_is_one_transaction_with_address_bytes_counted(hw):
    hw.i2c_bus(0).attach(Echo(0x20))
    i2c = machine.I2C(0)
    assert i2c.readfrom_mem(0x20, 0x12, 2) == b"\x12\x13"
    # write address, register, read address, 2 data bytes
    assert (i2c.stats.bytes, i2c.stats.transactions) == (5, 1)


def test_writeto_returns_acked_byte_count_and_writeto_mem_stores(hw):
    dev = hw.i2c_bus(0).attach(Echo(0x20))
    i2c = machine.I2C(0)
    assert i2c.writeto(0x20, b"\x14\xAA\x55") == 3
    i2c.writeto_mem(0x20, 0x02, bytes([7, 8]))
    assert dev.regs[0x14:0x16] == b"\xAA\x55" and dev.regs[2:4] == b"\x07\x08"


def test_stop_false_keeps_one_transaction_open(hw):
    hw.i2c_bus(0).attach(Echo(0x20))
    i2c = machine.I2C(0)
    i2c.writeto(0x20, b"\x05", False)
    buf = bytearray(1)
    i2c.readfrom_into(0x20, buf)
    assert buf[0] == 5 and i2c.stats.transactions == 1


def test_injected_nack_with_count_clears_itself(hw):
    dev = hw.i2c_bus(0).attach(Echo(0x20))
    i2c = machine.I2C(0)
    hw.fault(dev, True, "nack", count=1)
    with pytest.raises(OSError):
        i2c.readfrom(0x20, 1)
    assert i2c.readfrom(0x20, 1) == b"\x00"


def test_i2c_id_2_does_not_exist(hw):
    with pytest.raises(ValueError):
        machine.I2C(2)


def test_pin_irq_fires_on_world_falling_edge(hw):
    seen = []
    p = machine.Pin(4, machine.Pin.IN, machine.Pin.PULL_UP)
    p.irq(lambda pin: seen.append(pin.value()), machine.Pin.IRQ_FALLING)
    hw.set_input(4, 0)
    hw.set_input(4, 1)
    assert seen == [0]


def test_output_level_visible_to_the_world(hw):
    p = machine.Pin(5, machine.Pin.OUT, value=1)
    assert hw.output(5) == 1
    p.off()
    assert hw.output(5) == 0
    machine.Pin(6, machine.Pin.IN)
    with pytest.raises(ValueError):
        hw.output(6)


def test_input_only_pin_refuses_output(hw):
    with pytest.raises(ValueError):
        machine.Pin(34, machine.Pin.OUT)


def test_spi_routes_bytes_to_the_device_whose_cs_is_low(hw):
    spy = Spy()
    hw.spi_bus(2).attach(15, spy)
    spi = machine.SPI(2, baudrate=10_000_000, sck=18, mosi=23, miso=19)
    cs = machine.Pin(15, machine.Pin.OUT, value=1)
    assert spi.read(1, 0x03) == b"\xff"  # nobody selected: MISO floats high
    buf = bytearray(2)
    cs(0)
    spi.write_readinto(b"\x03\x0e", buf)
    cs(1)
    assert bytes(buf) == b"\xfc\xf1"
    assert spy.log == ["sel", 0x03, 0x0E, "desel"]
    assert (spi.stats.bytes, spi.stats.transactions) == (3, 1)


def test_spi_write_readinto_rejects_unequal_lengths(hw):
    spi = machine.SPI(1)
    with pytest.raises(ValueError):
        spi.write_readinto(b"\x00\x00", bytearray(1))


def test_adc_reads_raw_u16_and_microvolts(hw):
    hw.adc_set(32, 4095)
    adc = machine.ADC(machine.Pin(32), atten=machine.ADC.ATTN_11DB)
    assert (adc.read(), adc.read_u16(), adc.read_uv()) == (4095, 65535, 3_300_000)
    hw.adc_set(32, 2048)
    assert adc.read_uv() == 2048 * 3_300_000 // 4095


def test_wdt_feed_is_recorded_in_the_hardware(hw):
    clock = hosttime.install(hosttime.SimClock(manual=True, start_ms=1000))
    wdt = machine.WDT(timeout=8000)
    clock.advance(5000)
    wdt.feed()
    assert (hw.wdt.started, hw.wdt.timeout_ms, hw.wdt.last_feed_ms) == (True, 8000, 6000)
    clock.advance(8001)
    assert hw.wdt.starved()


def test_reset_cause_and_reset(hw):
    assert machine.reset_cause() == machine.PWRON_RESET == 1
    hw.reset_cause = machine.WDT_RESET
    assert machine.reset_cause() == 3
    with pytest.raises(machine.ResetRequested):
        machine.reset()


def test_objects_bind_to_the_hardware_current_at_construction():
    a = install(Hardware())
    pa = machine.Pin(5, machine.Pin.OUT, value=1)
    b = install(Hardware())
    machine.Pin(5, machine.Pin.OUT, value=0)
    pa.value(1)
    assert (a.output(5), b.output(5)) == (1, 0)


def test_absent_spi_device_leaves_miso_high(hw):
    spy = Spy()
    hw.spi_bus(1).attach(5, spy)
    hw.fault(spy, True, "absent")
    cs = machine.Pin(5, machine.Pin.OUT, value=0)
    assert machine.SPI(1).read(2, 0x03) == b"\xff\xff"
    cs(1)


def test_soft_i2c_on_the_pins_of_a_hardware_bus_shares_its_devices(hw):
    machine.I2C(0, scl=22, sda=21)
    hw.i2c_bus(0).attach(Echo(0x27))
    assert machine.SoftI2C(scl=machine.Pin(22), sda=machine.Pin(21)).scan() == [0x27]


def test_hardware_i2c_is_one_object_per_bus_with_no_init_as_on_the_esp32_port():
    hw = install(Hardware())
    a = machine.I2C(0, scl=18, sda=19, freq=100000)
    with pytest.raises(OSError) as e:
        a.init(scl=18, sda=19, freq=400000)
    assert e.value.errno == 95  # EOPNOTSUPP: machine_i2c_init without the port's init
    b = machine.I2C(0, scl=18, sda=19, freq=400000, timeout=10000)
    assert b is a  # constructing again configures the same bus afresh
    assert (a.freq, a.timeout) == (400000, 10000)
    assert hw.i2c_bus(0).configured == 2
    soft = machine.SoftI2C(scl=21, sda=22)
    soft.init(scl=21, sda=22, freq=100000)  # the bit-banged one keeps its init()
    assert soft.freq == 100000


def test_the_board_sets_an_i2c_timeout_well_under_the_ports_50_ms():
    from tukar import board as boardmod
    from tukar_tools.rig import Physical
    phys = Physical("tukar-12-wroom")
    boardmod.Board(phys.cfg, machine)
    for b in phys.cfg["i2c"]:
        assert phys.hw.i2c_bus(b["id"]).timeout_us == boardmod.I2C_TIMEOUT_US == 10000
