# The cabinet core: modes, slots, the cabinet-wide safety rules, charging and events; the swap
# session, commands, journal, payloads, schedule, and events and the shell's edge are its methods
# too, each in a module of its own, absorbed into Core (tukar.absorb). Pure logic: it reads the
# input snapshots (filled in place by the drivers), and leaves its decisions in output fields and
# lists that the shell applies, publishes and persists. No I/O; a tick() or command() runs whole.
#
# Shell contract, per control tick:  drivers fill slot_inputs / cabinet -> tick(now_ms, wall_s)
#   -> apply charge_ma (chargers off first), then lock_cmd / lock_pulse, fan, alarm
#   -> move `events` to the outbox and persist journal() when `jdirty` is set (one atomic write)
#   -> publish cabinet_state() / slot_state(n) for the bits of `dirty`, then clear both.
# Commands that passed the gate go to command(body) between ticks; it returns the ack.
from micropython import const

from tukar import absorb, commands as _cm, config as cf, edge as _ed, journal as _jn
from tukar import packs as _pk, payloads as _pl, schedule as _sc, session as _ss, slot as sl
from tukar.clock import wrap_diff
from tukar.inputs import CabinetInputs, SlotInputs
from tukar.profile import DEFAULT
from tukar.states import (ALARMS, C_ESTOP, C_OVERTEMP, C_SMOKE, EMERGENCY, IN_SERVICE,
                          IO_FAULT_MS, J_CONFIG, J_COUNTERS, J_INVENTORY, J_MODE, J_SESSION,
                          S_DISPENSING, S_REJECTED)

_TICKS_MAX = const((1 << 30) - 1)  # tukar.clock.TICKS_MAX
_TICKS_HALF = const(1 << 29)
_CAB_SENSOR_CODES = (None, "temp_sensor_open", "temp_sensor_short")  # by tukar.inputs.SENSOR_*

TYPE_CHECKING = False  # the type checker takes it as True: it sees the parts as bases
if TYPE_CHECKING:
    class _Parts(_pl.Payloads, _sc.Schedule, _ss.SessionSteps, _cm.Commands, _jn.Journal, _ed.Edge,
                 _pk.Packs):
        pass
else:
    _Parts = object  # the parts are absorbed into Core, below


class Core(_Parts):
    def __init__(self, cabinet_id, slots, profiles=None, config=None, journal=None,
                 boot_reason="power_on", now=0):
        self.id = cabinet_id
        self.n_slots = slots
        self.profiles = profiles if profiles else {DEFAULT.name: DEFAULT}
        cfg = cf.defaults()
        if config:
            cfg = cf.validate_update(cfg, config, settable_only=False)
        self.cfg = cfg
        self.lim = cf.Limits(cfg)
        self.slot_inputs = [SlotInputs() for _ in range(slots)]
        self.cabinet = CabinetInputs()
        self.slots = [sl.Slot(i + 1, self.slot_inputs[i]) for i in range(slots)]
        # Outputs, read by the shell after every tick.
        self.lock_cmd = [True] * slots
        self.lock_pulse = [0] * slots
        self.charge_ma = [0] * slots
        self.fan = False
        self.alarm = False
        self.events = []
        self.dirty = 0  # bit 0: cabinet state; bit n: slot n state
        self.jdirty = 0
        self.rebirth = False
        self.reboot = False
        self.hold_swaps: "str | None" = None  # set by the shell (e.g. an outbox that cannot take more events)
        # Cabinet state.
        self.mode = IN_SERVICE
        self.causes = 0  # latched emergency causes
        self.present_causes = 0  # causes present at the last tick
        self.alarms = 0
        self.session = None
        self.counts = [0, 0, 0, 0, 0]  # ready, empty, charging, faulted; doors forced (unpublished)
        self.boot = 0
        self.event_n = 0
        self.counters = {}  # other persisted counters the shell keeps here (bdseq)
        self.boot_reason = boot_reason
        self.restored_session = False  # False until the first tick has reconciled the journal
        self.now = now
        self.wall = None
        self.up_s = 0
        self.up_rem = 0
        # The schedule (step): slots to evaluate every tick, slots a command touched, the
        # evaluated slots of this tick (a list allocated once), and slots whose outputs changed.
        self.all_slots = (2 << slots) - 1
        self.watch = 0  # evaluated every tick (a lock in motion)
        self.timed = 0  # evaluated when their timer ends (Slot.wake), else on news
        self.pending = 0
        self.outputs = self.all_slots
        self._ev = list(self.slots)  # overwritten in place by _gather
        # Per slot ints, kept here rather than on Slot (whose attribute table is at a size step),
        # in one list of seven runs of n (a list is 16 bytes of heap, its items rounded up to 16),
        # slot i's at run * n + i: 0 the charge in progress (mWh), 1 its remainder (0.1 W x ms),
        # 2 the energy the slot has drawn since commissioning (Wh), 3 its remainder (mWh), 4 the
        # pack's wear (BMS faults in bits 0 to 7, overheats in 8 to 15: tukar.packs), 5 when its
        # charge was last integrated, 6 its share of the counts (_publishable).
        self.ledger = [0] * (7 * slots)
        self._bit_slot = {}
        for s in self.slots:
            self._bit_slot[1 << s.n] = s
        self._touch = 0
        self._cab_over = False  # the cabinet blocks every charger: over its limit, or its sensor faulted
        self.cab_sensor = 0  # the cabinet thermistor's status as last reported (tukar.inputs.SENSOR_*)
        self.retired = []  # serials retired, as hashes (tukar.packs)
        if journal:
            self._restore(journal)
        # The energy drawn when the journal was last asked for, in Wh, x 16, plus the telemetry
        # messages since the last with the energy counters (tukar.packs.energy_columns).
        self._tel = sum(self.ledger[2 * slots:3 * slots]) << 4
        self.boot += 1
        self.jdirty = J_COUNTERS | J_INVENTORY | J_SESSION | J_MODE | J_CONFIG

    # == the control tick ==================================================================
    def tick(self, now, wall=None):
        """Every rule over every slot (boot, tests, rigs): step() with every slot in its mask."""
        self.step(now, self.all_slots, wall)

    def step(self, now, mask, wall=None):
        """The multi-rate tick. `mask` (bit n: slot n) names the slots whose inputs the shell saw
        change or sampled this tick; the cabinet rules run every tick, and so does every slot that
        needs watching (a session's, a lock in motion, identifying, a fault timer running), every
        slot a command touched, and, in an emergency, all of them. The others keep their last
        decisions until the shell samples them again (docs/core.md: the schedule).

        Kept within 11 words of state, so that MicroPython does not allocate its frame on the heap
        at every tick: what a tick with something to decide does is in _evaluate."""
        dt = ((now - self.now + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF  # wrap_diff, inline
        self.now = now
        self.wall = wall
        if dt > 0:
            dt += self.up_rem
            while dt >= 1000:
                dt -= 1000
                self.up_s += 1
            self.up_rem = dt
        if self.restored_session is not None:
            self._reconcile(now)  # the first tick (it sets restored_session None)
            mask = self.all_slots
        if self.timed:
            mask |= self._timers_due(now)
        if mask | self.watch | self.pending or self.mode == EMERGENCY:
            self._evaluate(now, mask)
        # else nothing changed, nothing sampled, nothing watched: the decisions stand

    def _evaluate(self, now, mask):
        """The slots of `mask`, those watched and those a command touched: the rules, the session,
        charging, what to publish, and when to look at each again."""
        mask |= self.watch | self.pending
        self.pending = 0
        full = self.all_slots
        cab = self.cabinet
        sensor = cab.sensor
        if sensor != self.cab_sensor:
            self._cabinet_sensor(sensor)
        # Every charger's rule 1 turns on the cabinet's temperature, which a faulted sensor
        # cannot give: an open thermistor reads -40 degC and would switch the limit off.
        over = sensor != 0 or cab.temp_dc > self.lim.cabinet_max_dc
        if over != self._cab_over:
            self._cab_over = over
            mask = full
        if self.mode == EMERGENCY:
            mask = full
        ev = self._ev
        k = self._gather(mask)
        self._cabinet_safety(now, k)
        if self.mode == EMERGENCY and mask != full:
            mask = full
            k = self._gather(full)
            self._observe(now, k)
        for j in range(k):
            self._slot_watch(ev[j], now)
        ss = self.session
        if ss is not None and mask & (1 << ss.slot_in | (1 << ss.slot_out if ss.slot_out else 0)):
            self._session_step(ss, now)
            # The session may have opened a dispense door outside the mask: it is decided now.
            n = ss.slot_out
            if n and not mask & (1 << n):
                mask |= 1 << n
                s = ev[k] = self.slots[n - 1]
                k += 1
                s.observe(now, self.lim.fresh_ms)
        for j in range(k):
            self._slot_step(ev[j], now)
        self._charge(now, k)
        self._publishable(now, k)
        self._schedule(k)

    def _cabinet_sensor(self, sensor):
        """The cabinet thermistor opened, shorted or came back: a cabinet fault (slot null) with
        the slots' own codes. While it lasts no charger is on and its reading counts for nothing."""
        was = self.cab_sensor
        self.cab_sensor = sensor
        if was:
            self._emit("FaultCleared", {"slot": None, "code": _CAB_SENSOR_CODES[was],
                                        "severity": "error"})
        if sensor:
            self._emit("Fault", {"slot": None, "code": _CAB_SENSOR_CODES[sensor],
                                 "severity": "error"})
        self.dirty |= 1

    def _cabinet_safety(self, now, k):
        """Rule 4 (cabinet part): smoke, emergency stop, 70 degC anywhere -> latched emergency.
        The slots evaluated this tick are observed afresh; the others keep their last hottest
        reading (a slot's temperature is only new when the shell has sampled it)."""
        cab = self.cabinet
        causes = 0
        if cab.smoke:
            causes |= C_SMOKE
        if cab.estop:
            causes |= C_ESTOP
        hot = cab.temp_dc if not cab.sensor else -1000  # a faulted sensor's reading means nothing
        ev = self._ev
        fresh = self.lim.fresh_ms
        for j in range(k):
            s = ev[j]
            s.observe(now, fresh)
            if s.hot > hot:
                hot = s.hot
        if hot >= cf.EMERGENCY_DC:
            causes |= C_OVERTEMP
        new = causes & ~self.causes
        if new:
            self.causes |= new
            self.jdirty |= J_MODE
            for i in range(3):
                if new & (1 << i):
                    self._emit("Emergency", {"cause": ALARMS[i]})
            if self.mode != EMERGENCY:
                self._enter_emergency(now)
        self.present_causes = causes

    def _enter_emergency(self, now):
        self.mode = EMERGENCY
        self._emit("ModeChanged", {"mode": EMERGENCY, "by": "local"})
        if self.session is not None:
            self._abort_session("emergency", now)
        for s in self.slots:
            s.command_lock(True, now)
            if s.phase in (sl.P_MAINT_OPEN, sl.P_AWAITING, sl.P_DISPENSING, sl.P_REJECTED):
                self._after_relock(s, now)
        self.dirty |= 1

    def _after_relock(self, s, now):
        """A door that was open for some purpose is locked again: find out what is behind it.
        Whatever is there is identified again, the cabinet's own pack included: while the door
        was unlocked it could have been taken and another pushed in."""
        if s.inp.present:
            s.phase = sl.P_IDENTIFYING
            s.ident_t = now
        else:
            self._clear_battery(s)
            s.phase = sl.P_EMPTY

    def _clear_battery(self, s):
        if s.charge_ma:
            # Gone while charging: the charge ends now, under the serial it began with (mqtt.md:
            # ChargeStopped names its battery), with the energy up to this tick.
            dt = (self.now - self.ledger[5 * self.n_slots + s.n - 1]) & _TICKS_MAX
            if 0 < dt < _TICKS_HALF:
                self._integrate(s, dt)
            self._charge_stopped(s, "no_battery")
            s.charge_ma = 0
            self.charge_ma[s.n - 1] = 0
            self.outputs |= 1 << s.n
        if s.serial is not None or s.accepted:
            self.jdirty |= J_INVENTORY
        s.serial = None
        s.profile = None
        s.accepted = False
        self.ledger[4 * self.n_slots + s.n - 1] = 0  # the pack's wear

    def _slot_watch(self, s, now):
        """Per-slot supervision: lock (rule 8), break-in, sensors (rule 5), BMS link, rule 4."""
        inp = s.inp
        if not inp.io_ok:
            # The slot's switches are unknown: its charger is off at once (charge_decision) and no
            # conclusion is drawn from them; lasting longer than a glitch, it is a slot fault.
            if s.io_bad_since is None:
                s.io_bad_since = now
            elif not s.faults & sl.SLOT_IO and wrap_diff(now, s.io_bad_since) >= IO_FAULT_MS:
                s.faults |= sl.SLOT_IO
                self._slot_fault_events(s, s.faults ^ sl.SLOT_IO, s.faults)
                self._session_slot_failed(s, now)  # a session through this slot cannot go on
            if s.quarantine is None and s.hot >= cf.QUARANTINE_DC:
                self._quarantine(s, "overtemp", now)  # the temperatures do not come from the switches
                self._worn(s, 256, now)
            return
        if s.io_bad_since is not None:
            s.io_bad_since = None
            s.door_was_closed = inp.door_closed
            if s.faults & sl.SLOT_IO:
                s.faults &= ~sl.SLOT_IO
                self._slot_fault_events(s, s.faults | sl.SLOT_IO, s.faults)
        r = s.supervise_lock(now) if s.lock_pending or inp.locked != s.lock_cmd else 0
        if r:
            self._slot_fault_events(s, s.faults ^ sl.LOCK_JAM, s.faults)
            if r > 0:
                self._session_slot_failed(s, now)
        closed = inp.door_closed
        if s.door_was_closed and not closed and s.lock_cmd and inp.locked and not s.lock_pending:
            s.forced = True
            self._emit("DoorForced", {"slot": s.n})
        if closed:
            s.forced = False
        s.door_was_closed = closed
        bits = s.sensor_faults(now)
        if s.phase == sl.P_STORED and inp.present:
            b = inp.bms
            if b.link_fault or not b.valid or wrap_diff(now, b.t_ms) >= self.lim.lost_ms:
                bits |= sl.BMS_LINK
        old = s.faults
        new = (old & sl.LOCK_JAM) | bits
        if new != old:
            s.faults = new
            self._slot_fault_events(s, old, new)
        if inp.bms.faults and not s.pub_io >> 9:  # a BMS fault flag rose (published: none)
            self._worn(s, 1, now)
        if s.quarantine is None and s.hot >= cf.QUARANTINE_DC:
            self._quarantine(s, "overtemp", now)
            self._worn(s, 256, now)

    def _session_slot_failed(self, s, now):
        """A slot the open session drives can no longer be trusted: end the session. (The
        rider's slot once BatteryIn is recorded holds the cabinet's battery: not the session's.)"""
        if self.session is not None and self._in_session(s):
            self._abort_session("fault", now)

    def _quarantine(self, s, reason, now):
        if s.quarantine is not None:
            return
        ss = self.session
        if ss is not None and self._in_session(s):
            if ss.phase != S_DISPENSING:
                self._abort_session("rejected" if ss.phase == S_REJECTED else "fault", now)
            elif ss.out_gone:
                self._complete(ss, s, now)  # the battery handed out has gone: the swap is done,
                # and what is in the slot now (pushed in since) is held below
            elif not s.inp.door_closed:
                self._abort_session("fault", now)
            # (Behind the dispense door, still shut: the session hands out another battery, or
            # gives the rider's back, in its step.)
        s.quarantine = reason
        self.jdirty |= J_INVENTORY
        self._emit("Quarantined", {"slot": s.n, "reason": reason})
        s.command_lock(True, now)
        if s.phase in (sl.P_AWAITING, sl.P_DISPENSING, sl.P_REJECTED, sl.P_MAINT_OPEN,
                       sl.P_IDENTIFYING):
            inp = s.inp
            if inp.present:
                # Its door was unlocked: whatever is in the slot now (a rider's pack, a
                # technician's replacement, the pack handed out or another) is held, known by its
                # BMS serial if it gave one, never taken for the pack the inventory named.
                b = inp.bms
                serial = b.serial if b.valid else None
                if s.serial is not None and serial is not None and s.serial != serial:
                    self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
                self._clear_battery(s)
                s.serial = serial
                if s.serial is not None:
                    self.jdirty |= J_INVENTORY
                s.phase = sl.P_HELD
                s.opened = not inp.door_closed  # it may yet be taken out before the door shuts
            else:
                self._clear_battery(s)
                s.phase = sl.P_EMPTY

    # == slots outside the session =========================================================
    def _in_session(self, s):
        """The session, not the slot's own logic, drives this slot now."""
        ss = self.session
        if ss is None:
            return False
        if ss.phase == S_DISPENSING:
            return s.n == ss.slot_out
        return s.n == ss.slot_in and not ss.in_recorded  # accepted: the battery is the cabinet's

    def _slot_step(self, s, now):
        inp = s.inp
        if not inp.io_ok or self.session is not None and self._in_session(s):
            return
        ph = s.phase
        if ph == sl.P_EMPTY:
            if inp.present:
                s.phase = sl.P_IDENTIFYING  # an unknown battery found in the slot
                s.ident_t = now
        elif ph == sl.P_IDENTIFYING:
            r = self._identify(s, now)
            if r == 1:
                self._accept(s)
                self._policy(s, now)
            elif r == "removed":
                self._clear_battery(s)
                s.phase = sl.P_EMPTY
            elif r:
                # No rider to hand it back to: keep it locked in until a technician looks.
                serial = inp.bms.serial if inp.bms.valid else None
                if s.serial is not None and s.serial != serial:
                    self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
                self._clear_battery(s)
                s.serial = serial
                s.phase = sl.P_HELD
                s.opened = False  # identified behind a shut door
                self._quarantine(s, r, now)
        elif ph == sl.P_STORED or ph == sl.P_HELD:
            if not inp.present:
                # Missing: a pack the cabinet named, gone from behind a door that had shut on it.
                # A pack held while its door was open and taken out before it shut (a rider's
                # hot pack, a technician's) simply left.
                if s.serial is not None and not (ph == sl.P_HELD and s.opened):
                    self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
                self._clear_battery(s)
                s.phase = sl.P_EMPTY
                if s.quarantine == _pk.RETIRED:
                    self._collected(s)
            elif s.opened and inp.door_closed and ph == sl.P_HELD:
                s.opened = False
        elif ph == sl.P_MAINT_OPEN:
            if not inp.door_closed:
                s.opened = True
            elif s.opened:
                s.command_lock(True, now)
                self._clear_battery(s)  # the technician may have changed the battery
                s.phase = sl.P_IDENTIFYING if inp.present else sl.P_EMPTY
                s.ident_t = now
                if not inp.present and s.quarantine == _pk.RETIRED:
                    self._collected(s)  # taken for collection
        else:
            # A session phase with no session (cannot normally happen): make the slot safe.
            s.command_lock(True, now)
            self._after_relock(s, now)

for _p in ((_pl, "Payloads"), (_sc, "Schedule"), (_ss, "SessionSteps"), (_cm, "Commands"),
           (_jn, "Journal"), (_ed, "Edge"), (_pk, "Packs")):
    absorb(Core, *_p)
del _p, _pl, _sc, _ss, _cm, _jn, _ed
