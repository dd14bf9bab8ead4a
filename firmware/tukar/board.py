# The controller board: builds every driver from a checked board file (tukar.boardfile) and
# gives the control cycle its narrow interface: scan, poll_bms, apply, drain_can, recovery. The
# only firmware module that touches `machine`; it is imported lazily, or passed in (the host shim).
# tukar.boardfile is imported only while a Board is built: nothing here keeps a reference to it, so
# the device unloads it after the boot (tukar.device.unload).

from tukar.charger import Charger
from tukar.clock import ticks_diff
from tukar.lock import Lock
from tukar.ntc import NtcTable
from tukar.pins import FAIL_LEVEL, Bit, CanChargerLink, Expander, Gpio, input_pin, output_pin, raw_input
from tukar import absorb, sampling
from tukar.sampling import _gray_rank

# Per I2C transaction (microseconds). The ESP32 default is 50 ms, so one stuck or stretched
# transaction could take a whole tick; 10 ms is above what an SBS gauge stretches the clock for.
I2C_TIMEOUT_US = 10000


TYPE_CHECKING = False  # the type checker takes it as True: it sees Sampling as a base
_Parts = sampling.Sampling if TYPE_CHECKING else object  # absorbed into Board, below


class Board(_Parts):
    """Every driver of one controller board, built from a checked board dict."""

    def __init__(self, cfg, machine=None):
        if machine is None:
            import machine  # type: ignore[no-redef]
        self._m = machine
        from tukar.boardfile import _int, validate
        validate(cfg)  # its plan (a claim per pin, 4 KB) is let go before anything is built
        # Only what the running board needs is kept: not the parsed board file (7 KB of heap).
        self.name = cfg["board"]
        self.chip = cfg["chip"]
        n = self.slot_count = cfg["slot_count"]
        Pin = machine.Pin

        self.i2c = {}
        self._sda = {}  # read while the bus is idle: low means a device holds the bus
        self.i2c_errors = [0, 0]  # failed transactions per I2C bus id
        self.i2c_recoveries = [0, 0]
        self.spi_errors = 0
        self._i2c_pins = {}  # bus id -> (scl, sda, freq), to construct the bus again
        self._mux_buses = [m["bus"] for m in cfg.get("muxes", ())]
        for b in cfg["i2c"]:
            self._i2c_pins[b["id"]] = (b["scl"], b["sda"], b["freq"])
            self.i2c[b["id"]] = machine.I2C(b["id"], scl=Pin(b["scl"]), sda=Pin(b["sda"]),
                                            freq=b["freq"], timeout=I2C_TIMEOUT_US)
            self._sda[b["id"]] = Pin(b["sda"])

        self.expanders = []
        if cfg.get("expanders"):
            from tukar.mcp23017 import MCP23017
            for x in cfg["expanders"]:
                self.expanders.append(Expander(MCP23017(self.i2c[x["bus"]], _int(x["addr"], "", 0, 127)),
                                                self, x["bus"]))

        self.muxes = []
        if cfg.get("muxes"):
            from tukar.tca9548a import TCA9548A
            resets = {}
            for m in cfg["muxes"]:
                rst = None
                r = m.get("reset")
                if r is not None:
                    rst = resets.get(r)
                    if rst is None:
                        rst = resets[r] = Pin(r, Pin.OUT, value=1)
                self.muxes.append(TCA9548A(self.i2c[m["bus"]], _int(m["addr"], "", 0, 127), rst))

        self.spi = None
        self.can = None
        self.can_int = None
        spi = cfg.get("spi")
        if spi is not None:
            self.spi = machine.SPI(spi["id"], baudrate=spi["baudrate"], sck=Pin(spi["sck"]),
                                   mosi=Pin(spi["mosi"]), miso=Pin(spi["miso"]))
        can = cfg.get("mcp2515")
        if can is not None:
            from tukar.mcp2515 import MCP2515
            irq = Pin(can["int"], Pin.IN) if can.get("int") is not None else None
            self.can_int = irq
            self.can = MCP2515(self.spi, Pin(can["cs"], Pin.OUT, value=1), can["crystal_hz"],
                               can["bitrate"], irq)

        # Analog muxes share select lines (amux[0].select); each has its common on an ADC1 pin.
        self._select = []
        self._sel_state = -1
        self._line = (0, 0, 1, 0, 2, 0, 0, 0, 3)  # a select line's bit -> its index in _select
        self._adcs = []
        for i, a in enumerate(cfg.get("amux", [])):
            if i == 0:
                for s in a["select"]:
                    self._select.append(Pin(s, Pin.OUT, value=0))
            self._adcs.append(machine.ADC(Pin(a["adc"]), atten=machine.ADC.ATTN_11DB))
        ntc = cfg.get("ntc", {})
        self.ntc = NtcTable(ntc.get("r25", 10000), ntc.get("beta", 3950), ntc.get("r_fixed", 10000),
                            ntc.get("supply_mv", 3300), ntc.get("full_scale_mv", 3300))
        # Temperature targets: slot i is i, the cabinet is n. Mux channels are visited in order.
        self._tmap = [[-1] * 16 for _ in self._adcs]
        self._direct = []  # (ADC, target) for sensors on their own ADC1 pin

        # The banks of bits the switches and outputs are on: the expanders, then the GPIOs. A slot's
        # switch is a number, bank << 5 | bit (doors, presence, _feedback).
        self.gpio = Gpio()
        self.banks = self.expanders + [self.gpio]
        self.doors = []
        self.presence = []
        self._feedback = []
        self.locks = []
        self.chargers = []
        self.can_chargers = []
        self.can_charger_bank = None  # tukar.cancharger.CanChargers, when a slot has a CAN charger
        self.charge_voltage_mv = [0] * n  # CAN chargers' voltage ceiling per slot; 0 keeps them off
        self._cmd_t = None
        self.unflushed = False  # an expander's outputs did not reach it: apply() again next tick
        self._apply_idx = [0] * len(cfg["slots"])
        self.slot_x = []  # per slot: the expanders its inputs come from, to tell when they are unknown
        for i, s in enumerate(cfg["slots"]):
            door = self._input(s["door"], "door")
            presence = self._input(s["presence"], "presence")
            feedback = self._input(s["lock_feedback"], "lock_feedback")
            self.doors.append(self._ref(door))
            self.presence.append(self._ref(presence))
            self._feedback.append(self._ref(feedback))
            self.locks.append(Lock(self._output(s["lock"], 0), feedback))
            xs = []
            for x, _ in (door, presence, feedback):
                if x is not self.gpio and x not in xs:
                    xs.append(x)
            for other in self.slot_x:  # slots on the same expanders share one list
                if other == xs:
                    xs = other
                    break
            self.slot_x.append(xs)
            c = s["charger"]
            en = self._output(c["enable"], 0) if "enable" in c else None
            link = None
            if c["kind"] == "can":
                link = self._can_charger(i, c["node"])
                self.can_chargers.append(link)
            self.chargers.append(Charger(en, link, s["current_limit_ma"]))
            self._temp(s["temp"], i)
        cab = cfg["cabinet"]
        self.smoke = Bit(*self._input(cab["smoke"], "smoke"))
        self.estop = Bit(*self._input(cab["estop"], "estop"))
        # switch_reader reads a GPIO switch without its adapter: the pin and its asserted level.
        self._smoke_pin, self._smoke_on = raw_input(self.smoke)
        self._estop_pin, self._estop_on = raw_input(self.estop)
        self.fan = Bit(*self._output(cab["fan"], 0))
        self.alarm = Bit(*self._output(cab["alarm"], 0))
        self._temp(cab["temp"], n)
        self._steps = []  # mux channels in use, ascending
        for ch in range(16):
            for t in self._tmap:
                if t[ch] >= 0:
                    self._steps.append(ch)
                    break
        # The multi-rate scan (switch_reader): the slots each expander's inputs belong to, and
        # the slots with an input on a GPIO of its own (read every tick).
        self._x_slots = [0] * len(self.expanders)
        self._x_pins = [[] for _ in self.expanders]  # per expander: (its bits of a slot, the slot's bit)
        self._gpio_slots = 0
        ne = len(self.expanders)
        for i in range(n):
            bits = [0] * ne
            for a in (self.doors[i], self.presence[i], self._feedback[i]):
                j = a >> 5
                if j == ne:
                    self._gpio_slots |= 1 << (i + 1)
                else:
                    self._x_slots[j] |= 1 << (i + 1)
                    bits[j] |= 1 << (a & 31)
            for j in range(len(bits)):
                if bits[j]:
                    self._x_pins[j].append((bits[j], 1 << (i + 1)))
        self._x_last = [-2] * len(self.expanders)  # each expander's last word (-1: no answer)
        self._x_reads = [(x.dev.i2c, x.dev.addr, x.dev._b2) for x in self.expanders]
        # One temperature per tick (temperature_reader): (mux channel or -1, ADC, target) in turn.
        samples = []
        # Visited in Gray-code order: most steps change one select line, not two on average.
        for ch in sorted(self._steps, key=_gray_rank):
            for m in range(len(self._adcs)):
                if self._tmap[m][ch] >= 0:
                    samples.append((ch, self._adcs[m], self._tmap[m][ch]))
        for adc, t in self._direct:
            samples.append((-1, adc, t))
        self._samples = samples
        self._t_next = 0
        self._t_code = [-100] * len(samples)  # each sensor's last stored ADC code
        for x in self.expanders:
            d = x.dev
            d.pullups &= d.inputs
            d.invert &= d.inputs

        # SBS batteries: one SmartBattery per slot, behind its mux channel; polled round-robin.
        self.sbs = [None] * n
        self._sbs_mux = [-1] * n
        # Every battery answers at 0x0B: before a mux routes a channel, the other muxes on its
        # bus must route none.
        self._mux_others = []
        muxes = cfg.get("muxes", [])
        for i, m in enumerate(muxes):
            self._mux_others.append([self.muxes[j] for j in range(len(muxes))
                                     if j != i and muxes[j]["bus"] == m["bus"]])
        self._sbs_slots = []
        self._sbs_bus = [0] * n
        self._sbs_next = 0
        self._sbs_cur = -1  # the slot whose battery sbs_reader is part-way through
        for i, s in enumerate(cfg["slots"]):
            sb = s["battery"].get("sbs")
            if sb is not None:
                from tukar.sbs import SmartBattery
                self.sbs[i] = SmartBattery(self._mux_bus(sb["mux"]), self.muxes[sb["mux"]], sb["channel"])
                self._sbs_mux[i] = sb["mux"]
                self._sbs_bus[i] = muxes[sb["mux"]]["bus"]
                self._sbs_slots.append(i)
        self.can_nodes = [-1] * n
        for i, s in enumerate(cfg["slots"]):
            cb = s["battery"].get("can")
            if cb is not None:
                self.can_nodes[i] = cb["node"]
        self.canbms = None
        self.can_fed = [False] * n  # a CAN pack spoke for the slot's battery: no SBS polls there
        self._rx = bytearray(13)  # one received frame: SIDH SIDL EID8 EID0 DLC D0..D7

    # -- construction helpers ----------------------------------------------------------------------
    def _mux_bus(self, m):
        return self.i2c[self._mux_buses[m]]

    def _input(self, v, role):
        return input_pin(self._m, self.banks, v, role)

    def _output(self, v, level):
        return output_pin(self._m, self.banks, v, level)

    def _ref(self, bank_bit):
        """(bank, bit) as the number the switch lists hold: bank << 5 | bit."""
        return self.banks.index(bank_bit[0]) << 5 | bank_bit[1]

    def _temp(self, v, target):
        from tukar.boardfile import _ref
        r = _ref(v, "temp")
        if r[0] == "a":
            self._tmap[r[1]][r[2]] = target
        else:
            self._direct.append((self._m.ADC(self._m.Pin(r[1]), atten=self._m.ADC.ATTN_11DB), target))

    def _can_charger(self, slot, node):
        if self.can_charger_bank is None:
            from tukar.cancharger import CanChargers
            self.can_charger_bank = CanChargers(self.slot_count, node - slot)
        return CanChargerLink(self, slot)

    def repeat_charger_commands(self, now_ms):
        """CAN chargers stop by themselves without a command for 5 s: repeat each once a second."""
        bank = self.can_charger_bank
        if bank is None or self.can is None:
            return
        from tukar.cancharger import COMMAND_PERIOD_MS
        if self._cmd_t is not None and ticks_diff(now_ms, self._cmd_t) < COMMAND_PERIOD_MS:
            return
        self._cmd_t = now_ms
        for link in self.can_chargers:
            link.send()

    # -- rule 9 --------------------------------------------------------------------------------------
    def safe_outputs(self):
        """Chargers off, locks locked, fan and alarm off: before anything else runs.

        Each expander's output latch is written while its pins are still inputs (the power-on
        state), then the pins are made outputs, so no pin ever drives an unsafe level.
        Returns the number of devices that did not answer (their outputs stay undriven, which
        the board's pull resistors hold safe)."""
        for c in self.chargers:
            if c._link is None:
                c.off()
        for lk in self.locks:
            lk.lock()
        self.fan.value(0)
        self.alarm.value(0)
        failed = 0
        for x in self.expanders:
            x.written = -1
            try:
                x.dev.write(x.word())  # the latch first, while every pin is still an input
                x.dev.configure()  # rewrites the latch, then the directions
                x.written = x.word()
                x.ok = True
            except OSError:
                x.ok = False
                x.errors += 1
                failed += 1
        self.unflushed = failed > 0
        if self.can is not None:
            try:
                self.can.init()
            except OSError:
                failed += 1
        for c in self.chargers:
            if c._link is not None:
                try:
                    c.off()
                except OSError:
                    failed += 1
        return failed

    # -- inputs --------------------------------------------------------------------------------------
    def scan(self, slot_inputs, cabinet, now_ms):
        """Fill SlotInputs and CabinetInputs in place: one read per expander, every sensor."""
        for x in self.expanders:
            x.latch()
        self.gpio.latch()
        banks = self.banks
        for i in range(self.slot_count):
            s = slot_inputs[i]
            a = self.doors[i]
            s.door_closed = banks[a >> 5].state >> (a & 31) & 1 == 1
            a = self.presence[i]
            s.present = banks[a >> 5].state >> (a & 31) & 1 == 1
            s.locked = self.locks[i].locked()
            ok = True
            for x in self.slot_x[i]:
                if not x.ok:
                    ok = False
            s.io_ok = ok
        cabinet.smoke = self.smoke.value() == 1
        cabinet.estop = self.estop.value() == 1
        ntc = self.ntc
        for ch in self._steps:
            if ch != self._sel_state:
                self._select_channel(ch)
            for m in range(len(self._adcs)):
                t = self._tmap[m][ch]
                if t >= 0:
                    self._store(t, self._adcs[m].read_u16() >> 4, ntc, slot_inputs, cabinet)
        for adc, t in self._direct:
            self._store(t, adc.read_u16() >> 4, ntc, slot_inputs, cabinet)

    def _store(self, target, code, ntc, slot_inputs, cabinet):
        if target < self.slot_count:
            s = slot_inputs[target]
            s.temp_dc = ntc.temp_dc(code)
            s.sensor = ntc.status(code)
        else:
            cabinet.temp_dc = ntc.temp_dc(code)
            cabinet.sensor = ntc.status(code)

    def fail_inputs(self, slot_inputs, cabinet):
        """Every input at the level assumed when its chip does not answer (FAIL_LEVEL)."""
        for s in slot_inputs:
            s.door_closed = FAIL_LEVEL["door"] == 1
            s.present = FAIL_LEVEL["presence"] == 1
            s.locked = FAIL_LEVEL["lock_feedback"] == 1
        cabinet.smoke = FAIL_LEVEL["smoke"] == 1
        cabinet.estop = FAIL_LEVEL["estop"] == 1

    # -- a stuck I2C bus ------------------------------------------------------------------------------
    def i2c_stuck(self, bus):
        """SDA reads low between transactions: a device holds the bus (cut off mid-byte)."""
        return self._sda[bus].value() == 0

    def recover_i2c(self, bus):
        """Free a stuck bus: 9 SCL clocks and a STOP, the muxes on it reset (they isolate a battery
        that holds its channel low), then the bus re-initialised. True if SDA is high again."""
        from tukar.tca9548a import clock_free
        pins = self._i2c_pins.get(bus)
        if pins is None:
            return False
        Pin = self._m.Pin
        scl = Pin(pins[0])
        sda = Pin(pins[1])
        muxes = [self.muxes[j] for j in range(len(self.muxes)) if self._mux_buses[j] == bus]
        if muxes:
            muxes[0].recover(scl, sda)  # the muxes share one reset line
        else:
            clock_free(scl, sda)
        for m in muxes:
            m.forget()
        # The ESP32's hardware I2C has no init() (OSError): constructing it again takes the pins
        # back from GPIO and resets the controller. The port keeps one object per bus, so the
        # drivers' references stay valid.
        self.i2c[bus] = self._m.I2C(bus, scl=scl, sda=sda, freq=pins[2], timeout=I2C_TIMEOUT_US)
        self.i2c_recoveries[bus] += 1
        return not self.i2c_stuck(bus)

    # -- outputs -------------------------------------------------------------------------------------
    def _flush(self):
        ok = True
        for x in self.expanders:
            if x.out ^ x.out_invert != x.written and not x.flush():  # only words that changed
                ok = False
        self.unflushed = not ok
        return ok

    def apply(self, lock_cmd, lock_pulse, charge_ma, fan, alarm, mask=-1):
        """Drive the outputs of the slots in `mask` (bit n: slot n; bit 0 fan and alarm; -1 all).
        Chargers switch off first and must reach the hardware before any lock opens; a slot whose
        lock is commanded open never charges; chargers switch on last. Returns the slots that want
        another call next tick (a lock re-issuing an unlock), or -1 when a write failed."""
        if mask < 0:
            mask = (2 << self.slot_count) - 1
        idx = self._apply_idx  # the slots of the mask, gathered once (allocated once)
        k = 0
        m = mask >> 1
        i = 0
        while m:
            if m & 1:
                idx[k] = i
                k += 1
            m >>= 1
            i += 1
        chargers = self.chargers
        for j in range(k):
            i = idx[j]
            if charge_ma[i] <= 0 or not lock_cmd[i]:
                chargers[i].set(0)
        if not self._flush():
            return -1  # a charger may still be on: open nothing this tick
        again = 0
        locks = self.locks
        for j in range(k):
            i = idx[j]
            if locks[i].command(lock_cmd[i], lock_pulse[i]):
                again |= 2 << i
        if mask & 1:
            self.fan.value(1 if fan else 0)
            self.alarm.value(1 if alarm else 0)
        ok = self._flush()
        for j in range(k):
            i = idx[j]
            if charge_ma[i] > 0 and lock_cmd[i]:
                chargers[i].set(charge_ma[i])
        if self._flush() and ok:
            return again
        return -1


absorb(Board, sampling, "Sampling")
