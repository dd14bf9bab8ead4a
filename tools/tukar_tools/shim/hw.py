# The simulated electronics of one cabinet: pins, ADC inputs, the watchdog, and I2C/SPI buses
# modelled at byte level, so that the host `machine` shim and the chip models meet on a wire.
import os
import sys

# The firmware's clock imports the top-level `hosttime`; share that very module for WDT times.
_SHIM_DIR = os.path.dirname(os.path.abspath(__file__))
if _SHIM_DIR not in sys.path:
    sys.path.append(_SHIM_DIR)
import hosttime  # noqa: E402
from typing import Any, Callable  # noqa: E402

if __name__ != "tukar_tools.shim.hw":  # imported as top-level `hw`: use the one canonical module
    import importlib

    sys.modules[__name__] = importlib.import_module("tukar_tools.shim.hw")

# errno values of the ESP32 port (newlib): ETIMEDOUT differs from Linux's 110.
ENODEV = 19
ETIMEDOUT = 116

# machine.reset_cause() values of the ESP32 port.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

ADC_FULL_SCALE_UV = 3_300_000  # 11 dB attenuation, taken as linear
ADC_MAX = 4095
I2C_RECOVERY_PULSES = 9


class PinModel:
    """One GPIO as seen on the wire: who drives it, and who watches its edges."""

    def __init__(self, hw, n):
        self.hw = hw
        self.id = n
        self.mode: "str | None" = None  # 'in', 'out' or None (unconfigured, or owned by a peripheral)
        self.open_drain = False
        self.pull: "str | None" = None  # 'up', 'down' or None
        self.external_pullup = False  # a resistor on the board (I2C lines)
        self.driven = 0  # level the MCU drives while an output
        self.world: "int | None" = None  # level the world drives on the wire; None = not driven
        self.listeners = []  # callables(pin_model, level), called on every change of .value
        self.irq_handler: "Callable[[Any], Any] | None" = None
        self.irq_trigger = 0
        self.irq_pin: Any = None  # the machine.Pin handed to the handler
        self._last = self._level()

    def _level(self):
        if self.mode == "out" and not (self.open_drain and self.driven):
            return self.driven
        if self.world is not None:
            return self.world
        if self.open_drain or self.pull == "up" or self.external_pullup:
            return 1
        return 0

    @property
    def value(self):
        return self._level()

    def update(self):
        """Recompute the wire level; tell listeners and the IRQ handler about an edge."""
        new = self._level()
        old = self._last
        if new == old:
            return
        self._last = new
        for fn in list(self.listeners):
            fn(self, new)
        if self.irq_handler is not None:
            rising = 1 if new else 2  # IRQ_RISING, IRQ_FALLING of the ESP32 port
            if self.irq_trigger & rising:
                self.irq_handler(self.irq_pin)


class BusStats:
    """Traffic on one bus: bytes on the wire (I2C: address bytes included) and transactions."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.bytes = 0
        self.transactions = 0
        self.calls = 0  # machine-level method calls

    def __repr__(self):
        return "BusStats(bytes=%d, transactions=%d, calls=%d)" % (
            self.bytes, self.transactions, self.calls)


def _faults(target):
    f = getattr(target, "faults", None)
    if f is None:
        f = {}
        setattr(target, "faults", f)
    return f


def _fault_active(target, kind):
    f = getattr(target, "faults", None)
    return bool(f) and kind in f


def _fault_consume(target, kind):
    """True if `kind` is injected on target; counts down faults injected with a count."""
    f = getattr(target, "faults", None)
    if not f or kind not in f:
        return False
    n = f[kind]
    if n is not None:
        if n <= 1:
            del f[kind]
        else:
            f[kind] = n - 1
    return True


class I2CDevice:
    """Base of byte-level I2C device models. Subclasses override the four bus events."""

    address = 0

    def __init__(self, address):
        self.address = address
        self.faults = {}

    def i2c_start(self, read: bool) -> bool:
        return True

    def i2c_write(self, byte: int) -> bool:
        return True

    def i2c_read(self, ack: bool) -> int:
        return 0xFF

    def i2c_stop(self) -> None:
        pass


class I2CBusModel:
    """SDA/SCL with the devices on them. Devices behind a mux are reached through its channels."""

    def __init__(self, hw, bus_id, parent=None):
        self.hw = hw
        self.id = bus_id
        self.parent = parent
        self.devices = []
        self.stats = BusStats()
        self.stuck_pulses = 0  # > 0: a device holds SDA low until this many SCL pulses
        self.scl = None
        self.sda = None
        self._addressed = []
        self._open = False

    def attach(self, device):
        if not hasattr(device, "faults"):
            device.faults = {}
        if hasattr(device, "routed_buses"):
            device.upstream = self
        self.devices.append(device)
        return device

    def detach(self, device):
        self.devices.remove(device)

    def reachable(self):
        """Devices a START on this bus reaches now: our own, plus those a mux routes to."""
        for d in self.devices:
            yield d
            routed = getattr(d, "routed_buses", None)
            if routed is not None:
                for bus in routed():
                    yield from bus.reachable()

    def routed(self):
        for d in self.devices:
            routed = getattr(d, "routed_buses", None)
            if routed is not None:
                for bus in routed():
                    yield bus
                    yield from bus.routed()

    # Stuck bus ------------------------------------------------------------------------------
    def stick(self, pulses=I2C_RECOVERY_PULSES):
        """A device holds SDA low; `pulses` SCL clocks (at most 9) make it let go."""
        self.stuck_pulses = max(1, min(pulses, I2C_RECOVERY_PULSES))
        self._refresh_sda()

    def unstick(self):
        self.stuck_pulses = 0
        self._refresh_sda()

    def is_stuck(self):
        if self.stuck_pulses:
            return True
        return any(b.stuck_pulses for b in self.routed())

    def root(self):
        """The bus the MCU drives; a mux's channel bus has the mux as parent."""
        b = self
        while b.parent is not None:
            p = b.parent
            up = p if isinstance(p, I2CBusModel) else getattr(p, "upstream", None)
            if up is None:
                break
            b = up
        return b

    def _refresh_sda(self):
        root = self.root()
        if root.sda is not None:
            root.sda.world = 0 if root.is_stuck() else None
            root.sda.update()

    def bind_pins(self, scl, sda):
        """Called by machine.I2C: SCL edges made through Pin can clock a stuck device free."""
        if self.scl is not None and self.scl.id == scl:
            return
        self.scl = self.hw.pin(scl)
        self.sda = self.hw.pin(sda)
        self.scl.external_pullup = self.sda.external_pullup = True
        self.scl.update()
        self.sda.update()
        self.scl.listeners.append(self._on_scl)
        self._refresh_sda()

    def _on_scl(self, pin, level):
        if not level:
            return
        for b in [self] + list(self.routed()):
            if b.stuck_pulses:
                b.stuck_pulses -= 1
        self._refresh_sda()

    # Transfers ------------------------------------------------------------------------------
    def _stop(self):
        for d in self._addressed:
            d.i2c_stop()
        self._addressed = []
        if self._open:
            self.stats.transactions += 1
        self._open = False

    def _start(self, addr, read):
        self._open = True
        self.stats.bytes += 1
        acked = []
        for d in list(self.reachable()):
            if d.address != addr:
                continue
            if _fault_consume(d, "nack") or _fault_active(d, "absent"):
                continue
            if d.i2c_start(read):
                acked.append(d)
                if d not in self._addressed:
                    self._addressed.append(d)
        return acked

    def transfer(self, segments, stop=True):
        """Run [(addr, write_bytes_or_None, read_len)] as one transaction with repeated STARTs.

        Returns (bytes read, number of ACKed written bytes). Raises OSError like the ESP32 port:
        ENODEV on any NACK, ETIMEDOUT when SDA is held low.
        """
        if self.is_stuck():
            self._stop()
            raise OSError(ETIMEDOUT, "ETIMEDOUT")
        out = bytearray()
        acks = 0
        try:
            for addr, wdata, rlen in segments:
                if wdata is not None:
                    targets = self._start(addr, False)
                    if not targets:
                        raise OSError(ENODEV, "ENODEV")
                    acks += 1
                    for b in wdata:
                        self.stats.bytes += 1
                        ok = [d.i2c_write(b) for d in targets]
                        if not any(ok):
                            raise OSError(ENODEV, "ENODEV")
                        acks += 1
                if rlen:
                    targets = self._start(addr, True)
                    if not targets:
                        raise OSError(ENODEV, "ENODEV")
                    for i in range(rlen):
                        self.stats.bytes += 1
                        v = 0xFF
                        for d in targets:  # open drain: the wire is the AND of all senders
                            v &= d.i2c_read(i < rlen - 1) & 0xFF
                        out.append(v)
                    if rlen and any(_fault_consume(d, "corrupt") for d in targets):
                        out[-1] ^= 0xFF
        except OSError:
            self._stop()
            raise
        if stop:
            self._stop()
        return bytes(out), acks


class SPIBusModel:
    """SCK/MOSI/MISO; each byte goes to the device whose chip-select the MCU drives low."""

    def __init__(self, hw, bus_id):
        self.hw = hw
        self.id = bus_id
        self.stats = BusStats()
        self._devices = []  # [cs_pin_number, device, selected]

    def attach(self, cs_pin, device):
        if not hasattr(device, "faults"):
            device.faults = {}
        entry = [cs_pin, device, False]
        self._devices.append(entry)
        pm = self.hw.pin(cs_pin)
        pm.listeners.append(lambda _pin, _level, e=entry: self._cs_changed(e))
        self._cs_changed(entry)
        return device

    def detach(self, device):
        for e in list(self._devices):
            if e[1] is device:
                self._devices.remove(e)

    def _cs_changed(self, entry):
        pm = self.hw.pin(entry[0])
        sel = pm.mode == "out" and pm.value == 0
        if sel == entry[2]:
            return
        entry[2] = sel
        if sel:
            self.stats.transactions += 1
            entry[1].spi_select()
        else:
            entry[1].spi_deselect()

    def exchange(self, byte):
        self.stats.bytes += 1
        v = 0xFF
        for _cs, dev, sel in self._devices:
            if sel and not _fault_active(dev, "absent"):
                v &= dev.spi_exchange(byte) & 0xFF
        return v

    def transfer(self, src):
        """A whole transfer (full duplex): the bytes MISO returns for the bytes in `src`. The
        selected devices are found once per transfer rather than once per byte."""
        n = len(src)
        devs = [dev for _cs, dev, sel in self._devices
                if sel and not _fault_active(dev, "absent")]
        self.stats.bytes += n
        if not devs:
            return bytes(b"\xff" * n)
        if len(devs) == 1:
            ex = devs[0].spi_exchange
            return bytes(ex(b) & 0xFF for b in src)
        out = bytearray(n)
        for i in range(n):
            v = 0xFF
            for dev in devs:
                v &= dev.spi_exchange(src[i]) & 0xFF
            out[i] = v
        return bytes(out)


class WdtModel:
    """The task watchdog as machine.WDT leaves it; the simulator judges starvation."""

    def __init__(self):
        self.started = False
        self.timeout_ms = 0
        self.last_feed_ms: "int | None" = None  # hosttime clock, not wrapped
        self.feeds = 0

    def starved(self, now_ms=None):
        if not self.started or self.last_feed_ms is None:
            return False
        if now_ms is None:
            now_ms = hosttime.current().now_ms()
        return now_ms - self.last_feed_ms > self.timeout_ms


class Hardware:
    """Everything outside the MCU of one cabinet's controller board."""

    def __init__(self, input_only=range(34, 40)):
        self.pins = {}
        self.input_only = frozenset(input_only)
        self.adc_raw = {}
        self.adc_uv = {}
        self.i2c = {}
        self.spi = {}
        self.reset_cause = PWRON_RESET
        self.wdt = WdtModel()
        self.unique_id = b"\x24\x0a\xc4\x00\x00\x01"
        self.cpu_freq = 160_000_000

    def pin(self, n):
        pm = self.pins.get(n)
        if pm is None:
            pm = self.pins[n] = PinModel(self, n)
        return pm

    def ghost_edge(self, n):
        """An edge the pin's IRQ sees without the level changing (ESP32 erratum 3.11: GPIO36/39
        with ADC1 and Wi-Fi in use)."""
        m = self.pin(n)
        if m.irq_handler is not None and m.irq_trigger & 2:  # IRQ_FALLING
            m.irq_handler(m.irq_pin)

    def set_input(self, n, level):
        """The world drives pin n (level 0/1, or None to let it float)."""
        pm = self.pin(n)
        pm.world = None if level is None else (1 if level else 0)
        pm.update()

    def output(self, n):
        pm = self.pins.get(n)
        if pm is None or pm.mode != "out":
            raise ValueError("pin %r is not an output" % (n,))
        return pm.value

    def adc_set(self, n, raw12):
        if not 0 <= raw12 <= ADC_MAX:
            raise ValueError("raw ADC value outside 0..4095")
        self.adc_raw[n] = raw12
        self.adc_uv[n] = raw12 * ADC_FULL_SCALE_UV // ADC_MAX

    def adc_set_uv(self, n, uv):
        raw = max(0, min(ADC_MAX, (uv * ADC_MAX + ADC_FULL_SCALE_UV // 2) // ADC_FULL_SCALE_UV))
        self.adc_raw[n] = raw
        self.adc_uv[n] = max(0, min(ADC_FULL_SCALE_UV, uv))

    def i2c_bus(self, bus_id):
        b = self.i2c.get(bus_id)
        if b is None:
            b = self.i2c[bus_id] = I2CBusModel(self, bus_id)
        return b

    def spi_bus(self, bus_id):
        b = self.spi.get(bus_id)
        if b is None:
            b = self.spi[bus_id] = SPIBusModel(self, bus_id)
        return b

    def fault(self, target, on=True, kind=None, count=None):
        """Inject (on) or clear a fault.

        target an I2C bus: kind 'stuck' (default; SDA held low until 9 SCL pulses or a mux reset).
        target a device: 'nack' (default; address NACKed), 'absent' (never answers),
        'corrupt' (last byte of each read inverted: on an SBS read that is the PEC), or a kind
        the device model itself knows (the SBS model: 'corrupt_pec').
        count: the fault clears itself after that many transactions (None: until cleared).
        """
        if isinstance(target, I2CBusModel) and kind in (None, "stuck"):
            if on:
                target.stick()
            else:
                target.unstick()
            return
        kind = kind or "nack"
        f = _faults(target)
        if on:
            f[kind] = count
        else:
            f.pop(kind, None)


_current = Hardware()


def install(hw):
    """Make hw the Hardware that machine.* objects constructed from now on bind to."""
    global _current
    _current = hw
    return hw


def current():
    return _current
