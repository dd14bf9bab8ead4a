# What the control tick reads from the board, at its rates (docs/hardware.md): the switches every
# tick, one temperature sensor in turn, a few SMBus words of one battery, and the CAN frames the
# receive task drains. Board derives from Sampling (`self` is the Board, which builds the tables).
# The per-tick stages are generators, created once and resumed every tick: MicroPython allocates
# the frame of a function with more than 11 words of state on the heap at every call (and counts
# it towards gc.threshold); a generator's frame is allocated once, with the generator.
# pyright: reportAttributeAccessIssue=false

# ADC codes a temperature may wander before it is stored again: the ESP32 ADC's noise. Two codes
# are under 0.1 degC from 0 to 70 degC on the 10 k NTC divider.
TEMP_NOISE = 2

_CAN_DRAIN_MAX = 32  # frames per poll_bms: 24 packs at 10 Hz send about 12 frames per 50 ms tick


def _gray_rank(ch):
    """The position of 4-bit code ch in the Gray sequence 0, 1, 3, 2, 6, 7, 5, 4, 12, ..."""
    r = ch
    r ^= r >> 1
    r ^= r >> 2
    return r


class Sampling:
    # -- the multi-rate scan: switches every tick, one temperature and a few SBS words per tick ---
    def switch_reader(self, slot_inputs, cabinet):
        """A generator: each next() reads every expander once and the cabinet's switches, refills
        the inputs of the slots whose switches changed, and yields their mask (bit n: slot n), with
        bit 0 when smoke or the emergency stop changed."""
        while True:
            last = self._x_last
            cand = self._gpio_slots
            j = 0
            for i2c, addr, buf in self._x_reads:  # the hot path: one read per expander, inline
                try:
                    i2c.readfrom_mem_into(addr, 0x12, buf)  # GPIOA, GPIOB
                    v = buf[0] | (buf[1] << 8)
                except OSError:
                    v = -1
                if v != last[j]:
                    cand |= self._x_changed(j, v)
                j += 1
            changed = 0
            if cand:
                if self._gpio_slots:
                    self.gpio.latch()
                banks = self.banks
                i = 0
                cand >>= 1
                while cand:
                    if cand & 1:
                        s = slot_inputs[i]
                        a = self.doors[i]  # bank << 5 | bit (tukar.pins.Gpio)
                        d = banks[a >> 5].state >> (a & 31) & 1 == 1
                        a = self.presence[i]
                        p = banks[a >> 5].state >> (a & 31) & 1 == 1
                        a = self._feedback[i]
                        lk = banks[a >> 5].state >> (a & 31) & 1 == 1
                        ok = True
                        for x in self.slot_x[i]:
                            if not x.ok:
                                ok = False
                        if d != s.door_closed or p != s.present or lk != s.locked or ok != s.io_ok:
                            s.door_closed = d
                            s.present = p
                            s.locked = lk
                            s.io_ok = ok
                            changed |= 2 << i
                    cand >>= 1
                    i += 1
            sm = self._smoke_pin.value() == self._smoke_on  # the raw pins where they are GPIOs
            es = self._estop_pin.value() == self._estop_on
            if sm != cabinet.smoke or es != cabinet.estop:
                cabinet.smoke = sm
                cabinet.estop = es
                changed |= 1
            yield changed

    def _x_changed(self, j, v):
        """Expander j read v (-1: it did not answer): its new state; the slots it carries."""
        x = self.expanders[j]
        old = self._x_last[j]
        self._x_last[j] = v
        if v < 0:
            x.state = x.fail
            x.ok = False
            x.errors += 1
            self.i2c_errors[x.bus] += 1
            return self._x_slots[j]
        x.state = v
        x.ok = True
        if old < 0:
            return self._x_slots[j]  # first read, or answering again: all its slots afresh
        d = v ^ old
        slots = 0
        for bits, bit in self._x_pins[j]:  # only the slots whose own switches moved
            if d & bits:
                slots |= bit
        return slots

    def temperature_reader(self, slot_inputs, cabinet):
        """A generator: each next() reads the next temperature sensor in turn (each one every
        len(_samples) calls) and yields its target (the slot index, or slot_count for the cabinet)
        when its reading moved by more than the ADC's noise (TEMP_NOISE codes) and was stored, else
        -1 - target."""
        while True:
            j = self._t_next
            samples = self._samples
            self._t_next = j + 1 if j + 1 < len(samples) else 0
            ch, adc, t = samples[j]
            if ch >= 0 and ch != self._sel_state:
                d = ch ^ self._sel_state
                if self._sel_state >= 0 and d & (d - 1) == 0:  # the Gray order's usual step
                    self._select[self._line[d]].value(1 if ch & d else 0)
                    self._sel_state = ch
                else:
                    self._select_channel(ch)
            code = adc.read_u16() >> 4
            d = code - self._t_code[j]
            if -TEMP_NOISE <= d and d <= TEMP_NOISE:
                yield -1 - t
            else:
                self._t_code[j] = code
                self._store(t, code, self.ntc, slot_inputs, cabinet)
                yield t

    def _select_channel(self, ch):
        """Route analog mux channel ch: only the select lines that differ are written."""
        sel = self._select
        changed = ch ^ self._sel_state if self._sel_state >= 0 else 0xF
        for b in range(4):
            if changed & (1 << b):
                sel[b].value((ch >> b) & 1)
        self._sel_state = ch

    def sbs_reader(self, slot_inputs, budget):
        """A generator: each send(now_ms) advances the SBS poll by at most `budget` word reads (a
        battery's poll spans ticks, so the SMBus time of one tick stays short) and yields the slot
        whose reading was just completed with a change a rule may look at, or failed; -2 - slot for
        a completed reading that changed nothing the rules look at; else -1. Started with next()."""
        r = -1
        while True:
            now_ms = yield r
            r = -1
            k = len(self._sbs_slots)
            i = self._sbs_cur
            if i < 0:
                for _ in range(k):
                    j = self._sbs_slots[self._sbs_next]
                    self._sbs_next = self._sbs_next + 1 if self._sbs_next + 1 < k else 0
                    if slot_inputs[j].present and not self.can_fed[j]:
                        i = j
                        break
                if i < 0:
                    continue
                for other in self._mux_others[self._sbs_mux[i]]:  # _isolate(i), inline
                    try:
                        other.deselect()
                    except OSError:
                        self.i2c_errors[self._sbs_bus[i]] += 1
            r = self.sbs[i].step(slot_inputs[i].bms, now_ms, budget)
            if r == 0:
                self._sbs_cur = i
                r = -1
                continue
            self._sbs_cur = -1
            if r < 0:
                self.i2c_errors[self._sbs_bus[i]] += 1
                r = i
            elif r == 2:
                r = -2 - i  # a fresh reading, every value a rule looks at as before
            else:
                r = i

    def _isolate(self, i):
        """Every battery answers at 0x0B: before slot i's mux routes its channel, the other muxes
        on its bus route none."""
        for other in self._mux_others[self._sbs_mux[i]]:
            try:
                other.deselect()
            except OSError:
                self.i2c_errors[self._sbs_bus[i]] += 1  # the poll fails on a collision: link_fault

    def set_sbs_names(self, names):
        """{SBS DeviceName: profile name} (tukar.profile.sbs_names) for every SBS slot."""
        for bat in self.sbs:
            if bat is not None:
                bat.profiles = names

    def attach_can_bms(self, profiles, slot_inputs):
        """Decode CAN battery frames (tukar.canbms, one decoder for every profile) into
        slot_inputs[i].bms. Without this call poll_bms reads SBS batteries only."""
        if self.can is None:
            return None
        from tukar.canbms import CanBms
        self.canbms = CanBms(profiles, [s.bms for s in slot_inputs])
        return self.canbms

    def poll_bms(self, slot_inputs, now_ms):
        """One SBS slot per call (round-robin over slots holding a battery); drain CAN frames."""
        k = len(self._sbs_slots)
        for _ in range(k):
            i = self._sbs_slots[self._sbs_next]
            self._sbs_next = (self._sbs_next + 1) % k
            if slot_inputs[i].present and not self.can_fed[i]:
                self._isolate(i)
                if not self.sbs[i].poll(slot_inputs[i].bms, now_ms):
                    self.i2c_errors[self._sbs_bus[i]] += 1
                break
        self.drain_can(now_ms)

    def on_can_frame(self, handler):
        """Call handler(pin) when the MCP2515 pulls INT low (a frame waits); False without INT."""
        if self.can_int is None:
            return False
        self.can_int.irq(handler=handler, trigger=self._m.Pin.IRQ_FALLING)
        return True

    def can_pending(self):
        """INT is low: the MCP2515 really has something for us. An edge alone is no proof: on
        GPIO36/39 the ESP32 sees ghost edges while ADC1 and Wi-Fi are in use (erratum 3.11)."""
        return self.can_int is not None and self.can_int.value() == 0

    def drain_can(self, now_ms):
        """Decode the frames waiting in the MCP2515 (at most 32): battery packs, then chargers.
        poll_bms calls it every tick; an INT-driven task may call it between ticks too."""
        can = self.can
        if self.canbms is not None and can is not None:
            rx = self._rx
            for _ in range(_CAN_DRAIN_MAX):  # bounded: a babbling node cannot stall the tick
                try:
                    fid = can.recv_into(rx)
                except OSError:
                    self.spi_errors += 1
                    break
                if fid < 0:
                    break
                dlc = rx[4] & 0x0F
                if dlc > 8:
                    dlc = 8
                slot = self.canbms.feed(fid, rx, 5, dlc, now_ms)
                if slot >= 0:
                    self.can_fed[slot] = True
                elif self.can_charger_bank is not None:
                    self.can_charger_bank.feed(fid, rx, 5, dlc, now_ms)

    def battery_removed(self, slot, reading):
        """The slot emptied: forget its battery so that the next one is identified afresh."""
        reading.clear()
        self.can_fed[slot] = False
        if self._sbs_cur == slot:
            self._sbs_cur = -1
        bat = self.sbs[slot]
        if bat is not None:
            bat.forget()
        if self.canbms is not None:
            self.canbms.forget(slot)
