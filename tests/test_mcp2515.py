"""MCP2515 driver against the register-level chip model (cabinet.md, CAN: MCP2515 essentials)."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "firmware", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tukar import mcp2515  # noqa: E402
from tukar.mcp2515 import MCP2515, MCP2515Error, CanFrame  # noqa: E402
from tukar_tools.shim.canbus import CanBus, Frame  # noqa: E402
from tukar_tools.shim.mcp2515_model import MCP2515Model, CANSTAT, CNF1, CNF2, CNF3  # noqa: E402
from tukar_tools.shim.mcp2515_model import DirectCs as Cs, DirectSpi as Spi  # noqa: E402


class IntPin:
    def __init__(self):
        self.level = 1

    def set(self, level):
        self.level = level

    def value(self):
        return self.level


pytestmark = pytest.mark.usefixtures("manual_clock")


def make(crystal_hz=8_000_000, bitrate=500_000, with_int=False, **model_kw):
    model = MCP2515Model(crystal_hz=crystal_hz, **model_kw)
    spi = Spi(model)
    pin = None
    if with_int:
        pin = IntPin()
        model.on_int = pin.set
    can = MCP2515(spi, Cs(model), crystal_hz=crystal_hz, bitrate=bitrate, int_pin=pin)
    return can, model, spi


def test_reset_waits_for_the_oscillator_before_config_mode():
    can, model, _ = make(osc_start_polls=3)
    can.reset()
    assert model.resets == 1
    assert model.regs[CANSTAT] >> 5 == 0b100
    assert can.mode == mcp2515.MODE_CONFIG


def test_absent_chip_reading_ff_raises_instead_of_hanging(manual_clock):
    clock = manual_clock
    can, model, spi = make()
    model.present = False
    t0 = clock.now_ms()
    with pytest.raises(OSError):
        can.reset()
    assert clock.now_ms() - t0 <= 20  # bounded: 20 polls, 1 ms apart
    assert spi.bytes <= 1 + 20 * 3


def test_oscillator_that_never_starts_raises_mcp2515_error():
    can, _, _ = make(osc_start_polls=1000)
    with pytest.raises(MCP2515Error):
        can.reset()


@pytest.mark.parametrize("crystal,bitrate,cnf", [
    (8_000_000, 500_000, (0x00, 0x90, 0x82)),
    (8_000_000, 250_000, (0x00, 0xB1, 0x85)),
    (16_000_000, 500_000, (0x00, 0xF0, 0x86)),
    (16_000_000, 250_000, (0x41, 0xF1, 0x85)),
])
def test_bit_timing_registers_follow_the_table(crystal, bitrate, cnf):
    can, model, _ = make(crystal, bitrate)
    can.init(mcp2515.MODE_NORMAL)
    assert (model.regs[CNF1], model.regs[CNF2], model.regs[CNF3]) == cnf
    assert model.bitrate == bitrate


@pytest.mark.parametrize("crystal,bitrate", [(8_000_000, 1_000_000), (12_000_000, 500_000), (16_000_000, 125_000)])
def test_bit_timing_outside_the_table_is_a_value_error(crystal, bitrate):
    with pytest.raises(ValueError):
        make(crystal, bitrate)


@pytest.mark.parametrize("mode", [mcp2515.MODE_NORMAL, mcp2515.MODE_LOOPBACK, mcp2515.MODE_LISTEN])
def test_mode_request_is_confirmed_in_canstat(mode):
    can, model, _ = make(mode_delay_polls=3)
    can.init(mode)
    assert model.mode == mode
    assert model.regs[CANSTAT] & 0xE0 == mode
    assert can.mode == mode


def test_mode_never_confirmed_raises():
    can, model, _ = make()
    can.init(mcp2515.MODE_CONFIG)
    model.stuck_mode = True
    with pytest.raises(MCP2515Error):
        can.set_mode(mcp2515.MODE_NORMAL)


def test_loopback_standard_frame_comes_back_with_id_dlc_and_data():
    can, _, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    assert can.send(0x305, b"\x01\x02\x03")
    buf = bytearray(13)
    assert can.recv_into(buf) == 0x305
    assert buf[4] & 0x0F == 3
    assert bytes(buf[5:8]) == b"\x01\x02\x03"
    assert can.recv_into(buf) == -1


def test_loopback_extended_frame_carries_the_29_bit_id():
    can, _, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    assert can.send(0x1806E5F4, b"\x02\x1c\x00\x64\x00\x00\x00\x00", extended=True)
    f = CanFrame()
    assert can.recv(f)
    assert (f.id, f.extended, f.dlc) == (0x1806E5F4, True, 8)
    assert bytes(f.data) == b"\x02\x1c\x00\x64\x00\x00\x00\x00"


def test_second_frame_rolls_over_into_rxb1_and_both_are_read_in_order():
    can, model, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    can.send(0x101, b"\x01")
    can.send(0x102, b"\x02")
    assert can.rx_status() >> 6 == 0b11  # both buffers full
    buf = bytearray(13)
    assert can.recv_into(buf) == 0x101
    assert can.recv_into(buf) == 0x102
    assert can.recv_into(buf) == -1


def test_third_frame_with_both_buffers_full_sets_the_overflow_flag():
    can, model, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    for i in range(3):
        can.send(0x100 + i, b"")
    eflg = can.read_errors()
    assert eflg & 0x80  # RX1OVR
    assert can.overflows == 1
    assert can.read_errors() & 0xC0 == 0  # cleared after counting


def test_send_reports_false_when_all_three_tx_buffers_are_pending():
    can, _, _ = make()
    can.init(mcp2515.MODE_CONFIG)  # nothing leaves in config mode
    assert [can.send(0x10, b"") for _ in range(4)] == [True, True, True, False]


def test_filters_and_mask_accept_only_the_profile_ids():
    can, _, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    can.set_filters((0x7E0, False, (0x300, 0x320)), (0x1FFFFF00, True, (0x18FF5000,)))
    buf = bytearray(13)
    for fid, ext, ok in [(0x301, False, True), (0x33F, False, True), (0x341, False, False),
                         (0x18FF50E5, True, True), (0x18FF51E5, True, False), (0x300, True, False)]:
        can.send(fid, b"\x00", extended=ext)
        got = can.recv_into(buf)
        assert got == (fid | (mcp2515.EXT if ext else 0) if ok else -1), hex(fid)


def test_filters_survive_a_controller_restart():
    can, model, _ = make()
    can.init(mcp2515.MODE_LOOPBACK)
    can.set_filters((0x7FF, False, (0x300,)))
    can.init(mcp2515.MODE_LOOPBACK)
    buf = bytearray(13)
    can.send(0x301, b"")
    assert can.recv_into(buf) == -1
    can.send(0x300, b"")
    assert can.recv_into(buf) == 0x300


def test_error_counters_and_warning_flags_are_read():
    can, model, _ = make()
    can.init()
    model.inject_errors(tx=12, rx=100)
    assert can.service(0) == mcp2515.ACTIVE
    assert (can.tec, can.rec) == (96, 100)
    assert can.eflg & 0x07 == 0x07  # TXWAR, RXWAR, EWARN


def test_error_passive_is_reported_from_128_errors():
    can, model, _ = make()
    can.init()
    model.inject_errors(tx=16)
    assert can.service(0) == mcp2515.PASSIVE
    assert can.tec == 128


def test_bus_off_is_detected_from_eflg_txbo():
    can, model, _ = make()
    can.init()
    model.inject_bus_off()
    assert can.service(0) == mcp2515.BUS_OFF
    assert can.eflg & 0x20
    assert can.bus_off_count == 1


def test_restart_after_bus_off_waits_the_back_off_then_resets_the_chip():
    can, model, _ = make()
    can.init()
    bus = CanBus(500_000)
    bus.attach_controller(model)
    model.inject_bus_off()
    assert can.service(0) == mcp2515.BUS_OFF
    resets = model.resets
    assert can.service(99) == mcp2515.BUS_OFF
    assert model.resets == resets
    assert can.service(100) == mcp2515.ACTIVE
    assert model.resets == resets + 1
    assert model.mode == mcp2515.MODE_NORMAL
    assert can.backoff_ms == 200


def test_back_off_doubles_while_the_bus_stays_broken():
    can, model, _ = make()
    can.init()
    bus = CanBus(500_000)
    bus.attach_controller(model)
    bus.fault = True  # every transmission fails: the chip goes bus-off again at once
    waits = []
    detected = None
    resets, offs = model.resets, 0
    for now in range(0, 4000, 10):
        can.send(0x1806E5F4, b"\x00" * 8, extended=True)
        can.service(now)
        if model.resets != resets:  # the driver restarted the chip
            waits.append(now - detected)
            resets = model.resets
        if can.bus_off_count != offs:  # the driver saw bus-off
            detected, offs = now, can.bus_off_count
    assert waits[:5] == [100, 200, 400, 800, 1600]


def test_back_off_returns_to_100_ms_after_60_s_without_bus_off():
    can, model, _ = make()
    can.init()
    model.inject_bus_off()
    can.service(0)
    can.service(100)
    assert can.backoff_ms == 200
    can.service(100 + 59_999)
    assert can.backoff_ms == 200
    can.service(100 + 60_000)
    assert can.backoff_ms == 100


def test_chip_recovers_by_itself_after_128_x_11_recessive_bits():
    can, model, _ = make()
    can.init()
    bus = CanBus(500_000)
    bus.attach_controller(model)
    model.inject_bus_off()
    bus.step(0)
    bus.step(2)  # 1000 bits at 500 kbit/s: not yet 1408
    assert model.bus_off
    bus.step(3)  # 1500 bits
    assert not model.bus_off
    assert can.service(3) == mcp2515.ACTIVE


def test_int_pin_low_announces_a_frame_and_high_skips_the_spi():
    can, model, spi = make(with_int=True)
    can.init(mcp2515.MODE_LOOPBACK)
    assert not can.pending()
    before = spi.bytes
    assert can.recv_into(bytearray(13)) == -1
    assert spi.bytes == before  # INT high: no SPI traffic at all
    can.send(0x123, b"\xAA")
    assert can.pending()
    assert can.recv_into(bytearray(13)) == 0x123
    assert not can.pending()


def test_a_received_frame_costs_16_spi_bytes():
    can, model, spi = make(with_int=True)
    can.init(mcp2515.MODE_NORMAL)
    bus = CanBus(500_000)
    bus.attach_controller(model)
    bus.transmit(Frame(0x301, bytes(8)))
    before = spi.bytes
    assert can.recv_into(bytearray(13)) == 0x301
    assert spi.bytes - before == 16  # RX STATUS (2) + READ RX (1 + 13)


def test_wrong_bitrate_hears_only_errors():
    can, model, _ = make(bitrate=250_000)
    can.init(mcp2515.MODE_NORMAL)
    bus = CanBus(500_000)
    bus.attach_controller(model)
    for _ in range(5):
        bus.transmit(Frame(0x301, bytes(8)))
    assert can.recv_into(bytearray(13)) == -1
    can.read_errors(counters=True)  # under 96 no flag rises: the counters are read on request
    assert can.rec == 5


def test_listen_only_receives_but_never_transmits():
    can, model, _ = make()
    can.init(mcp2515.MODE_LISTEN)
    bus = CanBus(500_000)
    bus.attach_controller(model)
    heard = []
    bus.attach(type("Spy", (), {"step": lambda s, t: (), "receive": lambda s, f: heard.append(f)})())
    can.send(0x555, b"\x01")
    assert heard == []
    bus.transmit(Frame(0x301, b"\x07"))
    assert can.recv_into(bytearray(13)) == 0x301


def test_driver_through_the_host_machine_shim():
    import machine
    from tukar_tools.shim.hw import Hardware, install

    hw = install(Hardware())
    model = hw.spi_bus(2).attach(5, MCP2515Model())
    model.on_int = lambda level: hw.set_input(4, level)
    hw.set_input(4, 1)
    spi = machine.SPI(2, baudrate=10_000_000, sck=18, mosi=23, miso=19)
    cs = machine.Pin(5, machine.Pin.OUT, value=1)
    irq = machine.Pin(4, machine.Pin.IN)
    can = MCP2515(spi, cs, int_pin=irq)
    can.init(mcp2515.MODE_NORMAL)
    bus = CanBus(500_000)
    bus.attach_controller(model)
    bus.transmit(Frame(0x18FF50E5, b"\x02\x1c\x00\x64\x00\x00\x00\x00", True))
    assert irq.value() == 0
    f = CanFrame()
    assert can.recv(f)
    assert (f.id, f.extended, bytes(f.data[:2])) == (0x18FF50E5, True, b"\x02\x1c")
    assert irq.value() == 1
    assert can.send(0x1806E5F4, bytes(8), extended=True)
    assert model.transmitted[-1].id == 0x1806E5F4
