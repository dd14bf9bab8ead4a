# The control tick as the runtime calls it every 50 ms: the drivers fill the core's input
# snapshots, the core decides, the drivers apply its outputs. A bus error never escapes: the
# driver counts it, the inputs it could not read take their safe levels, and the tick still runs
# and applies the (then safe) outputs. Steady state allocates nothing.
from tukar.clock import ticks_diff

_BUS_OFF = 2  # tukar.mcp2515.BUS_OFF, without importing the driver on boards without CAN
_RECOVER_MS = 1000  # at most one recovery attempt per second on a stuck I2C bus
# SBS words read per tick: a poll (7 words) spans three ticks, so a tick's SMBus time stays
# under 2 ms at 100 kHz, and each of 11 packs is read again every 1.65 s (fresh: < 2 s).
SBS_WORDS = 3
CAN_SERVICE_TICKS = 20  # error passive or after a restart: the CAN controller is read every 1 s
_WAL = 3  # tukar.states J_INVENTORY | J_SESSION: what a door may not open ahead of

# Stages whose OSError no driver caught (a bug or an unforeseen bus error), counted apart.
STAGES = ("scan", "bms", "can", "tick_apply", "repeat")


class ControlCycle:
    def __init__(self, board, core):
        """Wire `board` to `core` (the one place it is done, for the device, the simulator, the
        rigs and the benches): the battery links learn the core's profiles, SBS by DeviceName and
        CAN by frame layout, and fill the core's input snapshots."""
        from tukar.profile import sbs_names
        self.board = board
        self.core = core
        board.set_sbs_names(sbs_names(core.profiles))
        board.attach_can_bms([p.decoder() for p in core.profiles.values() if p.link == "can"],
                             core.slot_inputs)
        n = core.n_slots
        self.ticks = 0
        self.escaped = [0] * len(STAGES)  # OSErrors caught here, per stage
        self.can_state = 0  # ACTIVE, PASSIVE or BUS_OFF as the last service() saw it
        self.can_restart_errors = 0
        can_names = []
        for name in core.profiles:
            if core.profiles[name].link == "can":
                can_names.append(name)
        self._can_names = tuple(can_names)
        # Slots a CAN bus-off reaches: a CAN charger, or a battery link over CAN.
        self._can_charger = [c._link is not None for c in board.chargers]
        self._can_only = [board.can_nodes[i] >= 0 and board.sbs[i] is None for i in range(n)]
        self._can_link = [board.can_nodes[i] >= 0 for i in range(n)]
        self._marked = [False] * n  # link_fault set by a bus-off, to clear at recovery
        self._can_up_t = 0  # when the controller came back from bus-off
        self._can_wait = False  # marked slots wait for a frame received since then
        self._present = [False] * n
        self._again = 0  # outputs to drive again next tick (-1: all, after a failed write)
        # Write-ahead: called with the journal's changes unwritten and a lock about to open; it
        # writes them to flash first (App.persist). None: nothing persists (rigs, benches).
        self.commit = None
        self.commits = 0
        self.held = False  # every charger kept off at the hardware (hold_chargers)
        self._zero = [0] * n
        self._seen = list(board.i2c_errors)
        self._recover_t = [0] * len(self._seen)
        self._recovered = [False] * len(self._seen)  # a recovery time is in _recover_t
        self._now = 0  # the tick's arguments, for the generator that runs it
        self._wall = None
        self._run = self._ticks()

    def _opens(self, outs):
        """Some slot in `outs` is commanded unlocked (-1: every slot)."""
        cmd = self.core.lock_cmd
        for i in range(len(cmd)):
            if not cmd[i] and outs & (2 << i):
                return True
        return False

    # -- the tick ----------------------------------------------------------------------------
    def step(self, now_ms, wall=None):
        """One control tick, multi-rate (docs/core.md, the schedule): every tick the switches, the
        emergency stop and smoke, the CAN controller and the outputs that changed; one temperature
        sensor in turn; a few SBS words. The core evaluates the slots whose inputs changed or were
        sampled, and the slots it watches; a quiet cabinet does little more than read its
        expanders. The first tick reads everything and evaluates every slot."""
        self._now = now_ms
        self._wall = wall
        if not next(self._run, False):  # ended: what escaped the last tick ended it
            self._run = self._ticks()
            next(self._run)

    def _ticks(self):
        """The tick's body, a generator resumed once a tick by step(), like the board's readers
        (tukar.sampling): its frame, and theirs, are allocated once and not at every tick."""
        b = self.board
        core = self.core
        inputs = core.slot_inputs
        cabinet = core.cabinet
        switches = b.switch_reader(inputs, cabinet)
        temperatures = b.temperature_reader(inputs, cabinet)
        sbs = b.sbs_reader(inputs, SBS_WORDS)
        next(sbs)
        while True:
            now_ms = self._now
            mask = 0
            if self.ticks == 0:
                mask = core.all_slots
                try:
                    b.scan(inputs, cabinet, now_ms)
                except OSError:
                    self.escaped[0] += 1
                    b.fail_inputs(inputs, cabinet)
                self._removals(inputs, mask)
            else:
                try:
                    mask = next(switches)
                except OSError:
                    switches = b.switch_reader(inputs, cabinet)
                    self.escaped[0] += 1
                    b.fail_inputs(inputs, cabinet)
                    mask = core.all_slots
                if mask > 1:
                    self._removals(inputs, mask)  # presence moves only with the switches
                try:
                    t = next(temperatures)
                    if t >= 0:
                        mask |= 2 << t if t < core.n_slots else 1
                    else:
                        t = -1 - t  # unchanged; a slot's turn is when its BMS age is looked at
                        if t < core.n_slots and core.due(t, now_ms):
                            mask |= 2 << t
                except OSError:
                    temperatures = b.temperature_reader(inputs, cabinet)
                    self.escaped[0] += 1
            try:
                i = sbs.send(now_ms)
                if i >= 0:
                    mask |= 2 << i
                elif i < -1 and not core.slots[-2 - i].fresh:
                    mask |= 2 << (-2 - i)  # the same values, but fresh again (a slot identifying
                    # is watched every tick anyway)
            except OSError:
                sbs = b.sbs_reader(inputs, SBS_WORDS)
                next(sbs)
                self.escaped[1] += 1
            if b.can is not None:
                # The MCP2515 pulls INT low on a frame and on any change of its error flags (ERRIE):
                # with INT high and the bus error-free, nothing waits and its error state is as last
                # read. The receive task drains frames between ticks; this is the backstop. Off the
                # error-free state, or after a restart, the state is read once a second as well.
                # (An INT line stuck high would starve the CAN packs: stale, their chargers stop.)
                pin = b.can_int
                if (pin is None or not pin.value() or self.can_state == _BUS_OFF
                        or self.ticks % CAN_SERVICE_TICKS == 0 and (self.can_state or b.can.restarting())):
                    try:
                        b.drain_can(now_ms)
                    except OSError:
                        self.escaped[2] += 1
                    mask |= self._can_service(now_ms)
                if b.canbms is not None and b.canbms.changed:
                    mask |= b.canbms.take_changed()
            if b.i2c_errors != self._seen:
                self._i2c_recovery(now_ms)
            core.step(now_ms, mask, self._wall)
            if core.outputs or self._again or b.unflushed:
                outs = core.take_outputs() | self._again
                if core.jdirty & _WAL and self.commit is not None and self._opens(outs):
                    # A door that opens commits the cabinet to the rider (a battery handed out,
                    # the rider's own given back): what the cabinet knows is on flash before the
                    # bolt moves, so a power cut after it finds the session and inventory as they are.
                    self.commits += 1
                    self.commit()
                try:
                    self._again = b.apply(core.lock_cmd, core.lock_pulse,
                                          self._zero if self.held else core.charge_ma, core.fan,
                                          core.alarm, -1 if self._again < 0 else outs)
                except OSError:
                    self.escaped[3] += 1
                    self._chargers_off()
                    self._again = -1
            if b.can_charger_bank is not None:
                try:
                    b.repeat_charger_commands(now_ms)
                except OSError:
                    self.escaped[4] += 1
            self.ticks += 1
            yield True

    def hold_chargers(self, on):
        """Keep every charger off at the hardware (on), whatever the core decides, or give the
        chargers back to the core's decisions (off: every output is driven again next tick). For
        the control loop to stand still safely: a TLS handshake (tukar.tls.HandshakeGate)."""
        if on and not self.held:
            self.held = True
            self._chargers_off()
        elif not on and self.held:
            self.held = False
            self._again = -1

    def may_stand_still(self):
        """Nothing the loop must follow tick by tick: no swap session, no lock in motion, no
        battery being identified (Core.watch)."""
        core = self.core
        return core.session is None and not core.watch

    def _removals(self, inputs, mask):
        pres = self._present
        m = mask >> 1
        i = 0
        while m:
            if m & 1:
                p = inputs[i].present
                if pres[i] and not p:
                    self.board.battery_removed(i, inputs[i].bms)
                    self._marked[i] = False
                pres[i] = p
            m >>= 1
            i += 1

    def _i2c_recovery(self, now_ms):
        """A bus whose transactions failed this tick while SDA stays low is clocked free."""
        b = self.board
        seen = self._seen
        for bus in range(len(seen)):
            e = b.i2c_errors[bus]
            if e == seen[bus]:
                continue
            seen[bus] = e
            if bus not in b.i2c or not b.i2c_stuck(bus):
                continue
            if self._recovered[bus] and ticks_diff(now_ms, self._recover_t[bus]) < _RECOVER_MS:
                continue
            self._recovered[bus] = True
            self._recover_t[bus] = now_ms
            try:
                b.recover_i2c(bus)
            except OSError:
                self.escaped[0] += 1

    def _can_service(self, now_ms):
        """Bus-off: every CAN slot's BMS link is down this very tick, so the core switches its
        charger off; the driver restarts the controller with its back-off; recovery clears it."""
        can = self.board.can
        if can is None:
            return 0
        try:
            st = can.service(now_ms)
        except OSError:
            self.can_restart_errors += 1
            self.board.spi_errors += 1
            st = _BUS_OFF  # the restart failed: still off, the next try backs off further
        mask = 0
        if st == _BUS_OFF:
            if self.can_state != _BUS_OFF:
                mask = self.core.all_slots  # the marked slots' chargers go off this very tick
            inputs = self.core.slot_inputs
            names = self._can_names
            for i in range(len(inputs)):
                r = inputs[i].bms
                if self._can_charger[i] or self._can_only[i] or (
                        self._can_link[i] and r.valid and r.profile in names):
                    r.link_fault = True
                    self._marked[i] = True
        else:
            if self.can_state == _BUS_OFF:
                self._can_up_t = now_ms
                self._can_wait = True
            if self._can_wait:
                self._can_wait = self._clear_marks()
                mask = self.core.all_slots if not self._can_wait else 0
        self.can_state = st
        return mask

    def _clear_marks(self):
        """Back on the bus: a slot's link is up again once its pack has spoken since the restart.
        Returns True while some slot still waits."""
        inputs = self.core.slot_inputs
        up = self._can_up_t
        waiting = False
        for i in range(len(inputs)):
            if self._marked[i]:
                r = inputs[i].bms
                if self._can_charger[i] and not (self._can_only[i] or r.profile in self._can_names):
                    pass  # an SBS pack behind a CAN charger: the bus being back is the evidence
                elif not (r.valid and ticks_diff(r.t_ms, up) >= 0):
                    waiting = True
                    continue
                r.link_fault = False
                self._marked[i] = False
        return waiting

    def _chargers_off(self):
        for c in self.board.chargers:
            try:
                c.off()
            except OSError:
                pass
        try:
            self.board._flush()
        except OSError:
            pass

    # -- telemetry ---------------------------------------------------------------------------
    def bus_errors(self):
        """Error counters per bus for telemetry (allocates: call it when publishing)."""
        b = self.board
        out = {}
        for bus in b.i2c:
            out["i2c%d" % bus] = b.i2c_errors[bus]
            out["i2c%d_recoveries" % bus] = b.i2c_recoveries[bus]
        if b.spi is not None:
            out["spi"] = b.spi_errors
        if b.can is not None:
            out["can_bus_off"] = b.can.bus_off_count
            out["can_restart_failed"] = self.can_restart_errors
        for k in range(len(STAGES)):
            if self.escaped[k]:
                out["escaped_" + STAGES[k]] = self.escaped[k]
        return out
