# The cabinet core: modes, the swap session, commands, the cabinet-wide safety rules, events and
# the journal. Pure logic: it reads the input snapshots (filled in place by the drivers), and
# leaves its decisions in output fields and lists that the shell applies, publishes and persists.
# It performs no I/O. One call of tick() or command() runs to completion.
#
# Shell contract, per control tick:  drivers fill slot_inputs / cabinet -> tick(now_ms, wall_s)
#   -> apply charge_ma (chargers off first), then lock_cmd / lock_pulse, fan, alarm
#   -> move `events` to the outbox and persist journal() when `jdirty` is set (one atomic write)
#   -> publish cabinet_state() / slot_state(n) for the bits of `dirty`, then clear both.
# Commands that passed the gate go to command(body) between ticks; it returns the ack.
from tukar import config as cf
from tukar import errors as E
from tukar import slot as sl
from tukar.clock import wrap_diff
from tukar.errors import make_ack
from tukar.inputs import CabinetInputs, SlotInputs
from tukar.profile import DEFAULT

IN_SERVICE = "in_service"
MAINTENANCE = "maintenance"
OUT_OF_SERVICE = "out_of_service"
EMERGENCY = "emergency"
SETTABLE_MODES = (IN_SERVICE, MAINTENANCE, OUT_OF_SERVICE)

# Session phases (cabinet state `session.phase`).
S_AWAITING = "awaiting_battery"
S_IDENTIFYING = "identifying"
S_REJECTED = "rejected"
S_DISPENSING = "dispensing"

# Emergency causes (latched) and the other alarms, as bits; names as published.
C_SMOKE = 1
C_ESTOP = 2
C_OVERTEMP = 4
A_CABINET_OVERTEMP = 8
A_DOOR_FORCED = 16
ALARMS = ("smoke", "estop", "overtemp", "cabinet_overtemp", "door_forced")

# Journal sections that changed since the shell last persisted.
J_INVENTORY = 1
J_SESSION = 2
J_COUNTERS = 4
J_CONFIG = 8
J_MODE = 16

JOURNAL_VERSION = 1
IO_FAULT_MS = 500  # switches unreadable this long: slot fault `slot_io` (shorter: a glitch)
_MAX_TEXT = 64


class Session:
    """One swap: the rider's battery in, a charged one out. Separate from any charging."""

    def __init__(self, sid, request_id, id_token, slot_in, now):
        self.id = sid
        self.request_id = request_id
        self.id_token = id_token
        self.phase = S_AWAITING
        self.slot_in = slot_in  # 0 only for a journal's session that names no valid slot
        self.slot_out: "int | None" = None
        self.battery_in: "dict | None" = None  # battery view at BatteryIn
        self.battery_out: "dict | None" = None  # battery view when its door opened
        self.in_recorded = False  # BatteryIn was emitted: the swap must complete or be not_taken
        self.t_start = now
        self.t_phase = now

    def view(self):
        return {"id": self.id, "request_id": self.request_id, "phase": self.phase,
                "slot_in": self.slot_in, "slot_out": self.slot_out}


def _text(v):
    return isinstance(v, str) and 0 < len(v) <= _MAX_TEXT


def _serial_of(view):
    return view.get("serial") if isinstance(view, dict) else None


class CommandError(Exception):
    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Core:
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
        self.slots = [sl.Slot(i + 1, self.slot_inputs[i], self.lim.slot_limit_ma)
                      for i in range(slots)]
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
        self.counts = [0, 0, 0, 0]  # ready, empty, charging, faulted
        self.boot = 0
        self.event_n = 0
        self.session_n = 0
        self.counters = {}  # other persisted counters the shell keeps here (bdseq)
        self.boot_reason = boot_reason
        self.restored_session = None
        self.now = now
        self.wall = None
        self.up_s = 0
        self.up_rem = 0
        self.booted = False
        if journal:
            self._restore(journal)
        self.boot += 1
        self.jdirty = J_COUNTERS | J_INVENTORY | J_SESSION | J_MODE | J_CONFIG

    # == events ============================================================================
    def up_ms(self):
        return self.up_s * 1000 + self.up_rem

    def _emit(self, etype, fields):
        self.event_n += 1
        ev = {"id": "%s-%d-%d" % (self.id, self.boot, self.event_n), "type": etype,
              "ts": self.wall, "up_ms": self.up_ms()}
        for k in fields:
            ev[k] = fields[k]
        self.events.append(ev)
        self.jdirty |= J_COUNTERS
        return ev

    def _slot_fault_events(self, s, before, after):
        changed = before ^ after
        for i in range(len(sl.FAULT_CODES)):
            if changed & (1 << i):
                self._emit("Fault" if after & (1 << i) else "FaultCleared",
                           {"slot": s.n, "code": sl.FAULT_CODES[i],
                            "severity": sl.FAULT_SEVERITY[i]})

    def report_fault(self, code, severity, cleared=False):
        """A cabinet-level fault found by the shell (a task that crashed, flash that fails)."""
        self._emit("FaultCleared" if cleared else "Fault",
                   {"slot": None, "code": code, "severity": severity})

    # == the control tick ==================================================================
    def tick(self, now, wall=None):
        dt = wrap_diff(now, self.now)
        if dt < 0:
            dt = 0
        self.now = now
        self.wall = wall
        self.up_rem += dt
        while self.up_rem >= 1000:
            self.up_rem -= 1000
            self.up_s += 1
        if not self.booted:
            self.booted = True
            self._reconcile(now)
        self._cabinet_safety(now)
        for s in self.slots:
            self._slot_watch(s, now)
        ss = self.session
        if ss is not None:
            self._session_step(ss, now)
        for s in self.slots:
            self._slot_step(s, now)
        self._charge(now, dt)
        self._publishable(now)

    def _cabinet_safety(self, now):
        """Rule 4 (cabinet part): smoke, emergency stop, 70 degC anywhere -> latched emergency."""
        cab = self.cabinet
        fresh = self.lim.fresh_ms
        causes = 0
        if cab.smoke:
            causes |= C_SMOKE
        if cab.estop:
            causes |= C_ESTOP
        hot = cab.temp_dc
        for s in self.slots:
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
        """A door that was open for some purpose is locked again: find out what is behind it."""
        if s.inp.present:
            if s.accepted and s.phase == sl.P_DISPENSING:
                s.phase = sl.P_STORED
            else:
                s.phase = sl.P_IDENTIFYING
                s.ident_t = now
        else:
            self._clear_battery(s)
            s.phase = sl.P_EMPTY

    def _clear_battery(self, s):
        if s.serial is not None or s.accepted:
            self.jdirty |= J_INVENTORY
        s.serial = None
        s.profile = None
        s.accepted = False

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
            return
        if s.io_bad_since is not None:
            s.io_bad_since = None
            s.door_was_closed = inp.door_closed
            if s.faults & sl.SLOT_IO:
                s.faults &= ~sl.SLOT_IO
                self._slot_fault_events(s, s.faults | sl.SLOT_IO, s.faults)
        r = s.supervise_lock(now)
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
        if s.quarantine is None and s.hot >= cf.QUARANTINE_DC:
            self._quarantine(s, "overtemp", now)

    def _session_slot_failed(self, s, now):
        """A slot of the open session can no longer be trusted: end the session."""
        ss = self.session
        if ss is not None and (s.n == ss.slot_in or s.n == ss.slot_out):
            self._abort_session("fault", now)

    def _quarantine(self, s, reason, now):
        if s.quarantine is not None:
            return
        ss = self.session
        if ss is not None and (s.n == ss.slot_in or s.n == ss.slot_out):
            self._abort_session("rejected" if ss.phase == S_REJECTED else "fault", now)
        s.quarantine = reason
        self.jdirty |= J_INVENTORY
        self._emit("Quarantined", {"slot": s.n, "reason": reason})
        s.command_lock(True, now)
        if s.phase in (sl.P_AWAITING, sl.P_DISPENSING, sl.P_REJECTED, sl.P_MAINT_OPEN,
                       sl.P_IDENTIFYING):
            if s.inp.present:
                s.phase = sl.P_STORED if s.accepted else sl.P_HELD
            else:
                self._clear_battery(s)
                s.phase = sl.P_EMPTY

    # == identification ====================================================================
    def _identify(self, s, now):
        """0 while pending, 1 when accepted, else the refusal reason."""
        inp = s.inp
        if not inp.present:
            return "removed"
        if not inp.door_closed or not s.lock_confirmed():
            s.ident_t = now  # the 3 s start when the battery is shut in
            return 0
        b = inp.bms
        # Identified means a fresh reading that names the battery (a CAN serial spans frames).
        if s.bms_since(s.ident_t) and not b.link_fault and b.serial is not None:
            if b.profile not in self.profiles:
                return "unknown_profile"
            if b.faults:
                return "battery_fault"
            if b.temp_dc < cf.HANDLING_MIN_DC or b.temp_dc > cf.HANDLING_MAX_DC:
                return "temperature"
            if b.serial in self.lim.blocklist:
                return "blocklisted"
            return 1
        if wrap_diff(now, s.ident_t) >= self.lim.identify_ms:
            return "no_bms"
        return 0

    def _accept(self, s):
        b = s.inp.bms
        if s.serial is not None and s.serial != b.serial:
            self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
        s.serial = b.serial
        s.profile = self.profiles[b.profile]
        s.accepted = True
        s.temp_hold = False
        s.full_hold = False
        s.phase = sl.P_STORED
        self.jdirty |= J_INVENTORY

    # == the swap session ==================================================================
    def _session_step(self, ss, now):
        lim = self.lim
        s_in = self.slots[ss.slot_in - 1]
        inp = s_in.inp
        if ss.phase == S_AWAITING:
            if inp.present and inp.door_closed:
                s_in.command_lock(True, now)
                s_in.phase = sl.P_IDENTIFYING
                s_in.ident_t = now
                self._phase(ss, S_IDENTIFYING, now)
            elif wrap_diff(now, ss.t_phase) >= lim.insert_ms:
                s_in.command_lock(True, now)
                self._after_relock(s_in, now)
                self._abort_session("timeout", now)
        elif ss.phase == S_IDENTIFYING:
            r = self._identify(s_in, now)
            if r == 1:
                self._accept(s_in)
                ss.battery_in = s_in.battery_view()
                ss.in_recorded = True
                self._emit("BatteryIn", {"session": ss.id, "request_id": ss.request_id,
                                         "id_token": ss.id_token, "slot": s_in.n,
                                         "battery": ss.battery_in})
                best = self._choose_dispense()
                if best is None:
                    self._abort_session("no_battery_available", now)
                else:
                    self._dispense(ss, best, now)
            elif r == "removed":
                # The rider pulled the battery back out before the lock caught it.
                self._clear_battery(s_in)
                s_in.command_lock(False, now)
                s_in.phase = sl.P_AWAITING
                self._phase(ss, S_AWAITING, now)
            elif r:
                s_in.command_lock(False, now)
                s_in.phase = sl.P_REJECTED
                self._phase(ss, S_REJECTED, now)
                self._emit("BatteryRejected", {"session": ss.id, "slot": s_in.n,
                                               "battery": s_in.battery_view(), "reason": r})
        elif ss.phase == S_REJECTED:
            if not inp.present and inp.door_closed:
                s_in.command_lock(True, now)
                self._clear_battery(s_in)
                s_in.phase = sl.P_EMPTY
                self._abort_session("rejected", now)
            elif wrap_diff(now, ss.t_phase) >= lim.take_ms:
                s_in.command_lock(True, now)
                if inp.present:
                    self._abort_session("rejected", now)
                    s_in.phase = sl.P_HELD
                    self._quarantine(s_in, "rejected_not_taken", now)
                else:
                    self._clear_battery(s_in)
                    s_in.phase = sl.P_EMPTY
                    self._abort_session("rejected", now)
        elif ss.phase == S_DISPENSING:
            assert ss.slot_out is not None
            s_out = self.slots[ss.slot_out - 1]
            o = s_out.inp
            if not o.present and o.door_closed:
                s_out.command_lock(True, now)
                self._complete(ss, s_out, now)
            elif wrap_diff(now, ss.t_phase) >= lim.take_ms:
                s_out.command_lock(True, now)
                if not o.present:
                    self._complete(ss, s_out, now)  # taken, door left open: the lock latches later
                else:
                    s_out.phase = sl.P_STORED
                    self._emit("BatteryOutTimeout", {"session": ss.id,
                                                     "request_id": ss.request_id,
                                                     "slot": s_out.n, "battery": ss.battery_out})
                    self._abort_session("not_taken", now)

    def _phase(self, ss, phase, now):
        ss.phase = phase
        ss.t_phase = now
        self.jdirty |= J_SESSION
        self.dirty |= 1

    def _dispense(self, ss, s_out, now):
        # The charger goes off in this same tick (_charge), and the shell applies chargers first.
        s_out.phase = sl.P_DISPENSING
        s_out.command_lock(False, now)
        ss.slot_out = s_out.n
        ss.battery_out = s_out.battery_view()
        self._phase(ss, S_DISPENSING, now)

    def _complete(self, ss, s_out, now):
        self._emit("BatteryOut", {"session": ss.id, "request_id": ss.request_id,
                                  "id_token": ss.id_token, "slot": s_out.n,
                                  "battery": ss.battery_out})
        self._emit("SwapCompleted", {
            "session": ss.id, "request_id": ss.request_id, "id_token": ss.id_token,
            "slot_in": ss.slot_in, "slot_out": ss.slot_out,
            "battery_in": _serial_of(ss.battery_in), "battery_out": _serial_of(ss.battery_out),
            "duration_ms": wrap_diff(now, ss.t_start)})
        self._clear_battery(s_out)
        s_out.phase = sl.P_EMPTY
        self._end_session()

    def _abort_session(self, reason, now):
        ss = self.session
        if ss is None:
            return
        self._emit("SwapAborted", {"session": ss.id, "request_id": ss.request_id,
                                   "reason": reason})
        for n in (ss.slot_in, ss.slot_out):
            if n:
                s = self.slots[n - 1]
                if not s.lock_cmd:
                    s.command_lock(True, now)
                if s.phase in (sl.P_AWAITING, sl.P_DISPENSING, sl.P_REJECTED, sl.P_IDENTIFYING):
                    self._after_relock(s, now)
        self._end_session()

    def _end_session(self):
        self.session = None
        self.jdirty |= J_SESSION
        self.dirty |= 1

    def _choose_dispense(self):
        """Dispensable battery with the highest SoC; ties: fewest cycles, then lowest slot."""
        best = None
        for s in self.slots:
            if s.check_dispensable(self.now, self.lim):
                if best is None:
                    best = s
                else:
                    a = s.inp.bms
                    b = best.inp.bms
                    if a.soc_pm > b.soc_pm or a.soc_pm == b.soc_pm and a.cycles < b.cycles:
                        best = s
        return best

    # == slots outside the session =========================================================
    def _in_session(self, s):
        """The session, not the slot's own logic, drives this slot now."""
        ss = self.session
        if ss is None:
            return False
        if ss.phase == S_DISPENSING:
            return s.n == ss.slot_out
        return s.n == ss.slot_in

    def _slot_step(self, s, now):
        if self._in_session(s) or not s.inp.io_ok:
            return
        inp = s.inp
        ph = s.phase
        if ph == sl.P_EMPTY:
            if inp.present:
                s.phase = sl.P_IDENTIFYING  # an unknown battery found in the slot
                s.ident_t = now
        elif ph == sl.P_IDENTIFYING:
            r = self._identify(s, now)
            if r == 1:
                self._accept(s)
            elif r == "removed":
                self._clear_battery(s)
                s.phase = sl.P_EMPTY
            elif r:
                # No rider to hand it back to: keep it locked in until a technician looks.
                self._clear_battery(s)
                s.serial = inp.bms.serial if inp.bms.valid else None
                s.phase = sl.P_HELD
                self._quarantine(s, r, now)
        elif ph == sl.P_STORED or ph == sl.P_HELD:
            if not inp.present:
                self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
                self._clear_battery(s)
                s.phase = sl.P_EMPTY
        elif ph == sl.P_MAINT_OPEN:
            if not inp.door_closed:
                s.opened = True
            elif s.opened:
                s.command_lock(True, now)
                self._clear_battery(s)  # the technician may have changed the battery
                s.phase = sl.P_IDENTIFYING if inp.present else sl.P_EMPTY
                s.ident_t = now
        else:
            # A session phase with no session (cannot normally happen): make the slot safe.
            s.command_lock(True, now)
            self._after_relock(s, now)

    # == charging ==========================================================================
    def _charge(self, now, dt):
        em = self.mode == EMERGENCY
        cab = self.cabinet.temp_dc
        lim = self.lim
        for s in self.slots:
            was = s.charge_ma
            if was:
                s.add_energy(dt)
            ma = s.charge_decision(now, lim, em, cab)
            if ma and not was:
                s.energy_mwh = 0
                s.energy_acc = 0
                self._emit("ChargeStarted", {"slot": s.n, "serial": s.serial})
            elif was and not ma:
                self._emit("ChargeStopped", {"slot": s.n, "serial": s.serial,
                                             "reason": s.reason or "stopped",
                                             "energy_wh": s.energy_mwh / 1000})
            s.charge_ma = ma
            self.charge_ma[s.n - 1] = ma

    # == state to publish ==================================================================
    def _publishable(self, now):
        ready = empty = charging = faulted = 0
        forced = False
        lim = self.lim
        for s in self.slots:
            s.check_dispensable(now, lim)
            st = s.derive_state()
            inp = s.inp
            if (st != s.state or inp.door_closed != s.pub_door or inp.locked != s.pub_locked
                    or s.charge_ma != s.pub_ma or s.dispensable != s.pub_disp
                    or s.faults != s.pub_faults or inp.bms.faults != s.pub_bfaults
                    or s.reason != s.pub_reason):
                s.state = st
                s.pub_door = inp.door_closed
                s.pub_locked = inp.locked
                s.pub_ma = s.charge_ma
                s.pub_disp = s.dispensable
                s.pub_faults = s.faults
                s.pub_bfaults = inp.bms.faults
                s.pub_reason = s.reason
                self.dirty |= 1 << s.n
            if s.dispensable:
                ready += 1
            if st == sl.EMPTY:
                empty += 1
            elif st == sl.FAULT:
                faulted += 1
            if s.charge_ma:
                charging += 1
            if s.forced:
                forced = True
            n = s.n - 1
            self.lock_cmd[n] = s.lock_cmd
            self.lock_pulse[n] = s.lock_pulse
        c = self.counts
        if c[0] != ready or c[1] != empty or c[2] != charging or c[3] != faulted:
            c[0] = ready
            c[1] = empty
            c[2] = charging
            c[3] = faulted
            self.dirty |= 1
        alarms = self.causes
        if self.cabinet.temp_dc > lim.cabinet_max_dc:
            alarms |= A_CABINET_OVERTEMP
        if forced:
            alarms |= A_DOOR_FORCED
        if alarms != self.alarms:
            self.alarms = alarms
            self.dirty |= 1
        em = self.mode == EMERGENCY
        self.alarm = em or forced
        self.fan = em or charging > 0 or self.cabinet.temp_dc >= 400

    # == commands ==========================================================================
    def command(self, body):
        """Execute one authenticated command body; return its ack. Never raises."""
        req_id = body.get("req_id") if isinstance(body, dict) else None
        try:
            if not isinstance(body, dict):
                raise CommandError(E.BAD_ARGS, "command body must be an object")
            name = body.get("cmd")
            handler = _HANDLERS.get(name) if isinstance(name, str) else None
            if handler is None:
                raise CommandError(E.UNKNOWN_CMD, "unknown command %r" % (name,))
            result = handler(self, body)
            return make_ack(req_id, None, "", result)
        except CommandError as e:
            return make_ack(req_id, e.code, e.detail)
        except Exception as e:  # a bug must not take the cabinet down with it
            return make_ack(req_id, E.NOT_ALLOWED, "internal error: %r" % (e,))

    def _arg_slot(self, body):
        n = body.get("slot")
        if isinstance(n, bool) or not isinstance(n, int):
            raise CommandError(E.BAD_ARGS, "slot: an integer is required")
        if n < 1 or n > self.n_slots:
            raise CommandError(E.SLOT_RANGE, "slot %d is outside 1..%d" % (n, self.n_slots))
        return self.slots[n - 1]

    def _no_emergency(self):
        if self.mode == EMERGENCY:
            raise CommandError(E.EMERGENCY, "the cabinet is in emergency")

    def _cmd_start_swap(self, body):
        token = body.get("id_token")
        if not _text(token):
            raise CommandError(E.BAD_ARGS, "id_token: a non-empty string of at most 64 characters")
        request_id = body.get("request_id", body.get("req_id"))
        if request_id is not None and not _text(request_id):
            raise CommandError(E.BAD_ARGS, "request_id: a string of at most 64 characters")
        self._no_emergency()
        if self.mode != IN_SERVICE:
            raise CommandError(E.NOT_IN_SERVICE, "mode is %s" % self.mode)
        if self.session is not None:
            raise CommandError(E.BUSY, "session %s is open" % self.session.id)
        if self.hold_swaps:
            raise CommandError(E.BUSY, self.hold_swaps)
        for s in self.slots:
            if not s.lock_cmd:
                raise CommandError(E.BUSY, "slot %d is unlocked" % s.n)
        if self._choose_dispense() is None:
            raise CommandError(E.NO_BATTERY_AVAILABLE, "no dispensable battery")
        free = None
        for s in self.slots:
            if s.is_free():
                free = s
                break
        if free is None:
            raise CommandError(E.NO_EMPTY_SLOT, "no empty slot")
        now = self.now
        self.session_n += 1
        self.jdirty |= J_COUNTERS | J_SESSION
        ss = Session("s-%d" % self.session_n, request_id, token, free.n, now)
        self.session = ss
        free.phase = sl.P_AWAITING
        free.command_lock(False, now)
        self.dirty |= 1
        self._emit("SwapStarted", {"session": ss.id, "request_id": request_id,
                                   "id_token": token, "slot": free.n})
        return {"session": ss.id, "slot": free.n}

    def _cmd_cancel_swap(self, body):
        sid = body.get("session")
        if sid is not None and not _text(sid):
            raise CommandError(E.BAD_ARGS, "session: a string is required")
        ss = self.session
        if ss is None:
            raise CommandError(E.NOT_ALLOWED, "no open session")
        if sid is not None and sid != ss.id:
            raise CommandError(E.BAD_ARGS, "session %s is not the open session %s" % (sid, ss.id))
        if ss.phase != S_AWAITING:
            raise CommandError(E.NOT_ALLOWED, "session %s is %s" % (ss.id, ss.phase))
        s = self.slots[ss.slot_in - 1]
        s.command_lock(True, self.now)
        self._after_relock(s, self.now)
        self._abort_session("cancelled", self.now)
        return None

    def _cmd_set_mode(self, body):
        mode = body.get("mode")
        if mode not in SETTABLE_MODES:
            raise CommandError(E.BAD_ARGS, "mode: one of in_service, maintenance, out_of_service")
        self._no_emergency()
        if mode == self.mode:
            return {"mode": mode}
        if self.session is not None:
            raise CommandError(E.BUSY, "session %s is open" % self.session.id)
        for s in self.slots:
            if s.phase == sl.P_MAINT_OPEN:
                raise CommandError(E.BUSY, "slot %d is open for maintenance" % s.n)
        self.mode = mode
        self.jdirty |= J_MODE
        self.dirty |= 1
        self._emit("ModeChanged", {"mode": mode, "by": body.get("req_id")})
        return {"mode": mode}

    def _cmd_open_slot(self, body):
        s = self._arg_slot(body)
        self._no_emergency()
        if self.mode != MAINTENANCE:
            raise CommandError(E.WRONG_MODE, "open_slot needs maintenance mode")
        if s.phase != sl.P_MAINT_OPEN:
            s.phase = sl.P_MAINT_OPEN
            s.opened = False
            s.command_lock(False, self.now)
        return {"slot": s.n}

    def _cmd_quarantine(self, body):
        s = self._arg_slot(body)
        reason = body.get("reason")
        if not _text(reason):
            raise CommandError(E.BAD_ARGS, "reason: a non-empty string of at most 64 characters")
        self._quarantine(s, reason, self.now)
        return {"slot": s.n}

    def _cmd_release(self, body):
        s = self._arg_slot(body)
        self._no_emergency()
        if self.mode != MAINTENANCE:
            raise CommandError(E.WRONG_MODE, "release needs maintenance mode")
        if s.quarantine is None:
            raise CommandError(E.NOT_ALLOWED, "slot %d is not quarantined" % s.n)
        reason = s.quarantine
        s.quarantine = None
        self.jdirty |= J_INVENTORY
        self._emit("QuarantineReleased", {"slot": s.n, "reason": reason})
        if s.phase != sl.P_MAINT_OPEN:
            s.accepted = False
            s.phase = sl.P_IDENTIFYING if s.inp.present else sl.P_EMPTY
            s.ident_t = self.now
        return {"slot": s.n}

    def _cmd_reset_emergency(self, body):
        if self.mode != EMERGENCY:
            raise CommandError(E.WRONG_MODE, "the cabinet is not in emergency")
        still = self.present_causes
        if still:
            names = [ALARMS[i] for i in range(3) if still & (1 << i)]
            raise CommandError(E.EMERGENCY, "causes still present: %s" % ",".join(names))
        for i in range(3):
            if self.causes & (1 << i):
                self._emit("EmergencyCleared", {"cause": ALARMS[i]})
        self.causes = 0
        self.mode = MAINTENANCE
        self.jdirty |= J_MODE
        self.dirty |= 1
        self._emit("ModeChanged", {"mode": MAINTENANCE, "by": body.get("req_id")})
        return {"mode": MAINTENANCE}

    def _cmd_rebirth(self, body):
        self.rebirth = True
        self.dirty |= (2 << self.n_slots) - 1
        return None

    def _cmd_set_config(self, body):
        changes = {}
        for k in body:
            if k not in ("req_id", "ts", "cmd"):
                changes[k] = body[k]
        try:
            merged = cf.validate_update(self.cfg, changes)
        except cf.ConfigError as e:
            raise CommandError(E.BAD_ARGS, str(e))
        self.cfg = merged
        self.lim = cf.Limits(merged)
        self.jdirty |= J_CONFIG
        return {"config": self.settable_config()}

    def _cmd_reboot(self, body):
        if self.session is not None:
            raise CommandError(E.BUSY, "session %s is open" % self.session.id)
        self.reboot = True
        return None

    def settable_config(self):
        return {k: self.cfg[k] for k in cf.SETTABLE}

    # == payloads ==========================================================================
    def cabinet_state(self):
        return {"mode": self.mode, "ready": self.counts[0], "empty": self.counts[1],
                "charging": self.counts[2], "faulted": self.counts[3],
                "session": self.session.view() if self.session else None,
                "temp_c": self.cabinet.temp_dc / 10,
                "alarms": [ALARMS[i] for i in range(len(ALARMS)) if self.alarms & (1 << i)]}

    def slot_state(self, n):
        s = self.slots[n - 1]
        inp = s.inp
        return {"slot": n, "state": s.state, "door": "closed" if inp.door_closed else "open",
                "lock": "locked" if inp.locked else "unlocked",
                "battery": s.battery_view(),
                "charger": {"on": s.charge_ma > 0, "current_a": s.charge_ma / 1000},
                "dispensable": s.dispensable, "faults": sl.fault_list(s.faults),
                "reason": s.reason if s.state == sl.PAUSED else None}

    def telemetry(self):
        """Measurements of every occupied slot as columns aligned with `slots` (one list per
        quantity: the keys are written once, not once per slot), rounded to 0.1; null while a
        battery's BMS cannot be read. The shell adds heap_free, uptime_s and rssi."""

        def tenth(milli):  # 51234 mV -> 51.2; a whole number goes out as an int ("0", not "0.0")
            q = (milli + 50) // 100
            return q // 10 if q % 10 == 0 else q / 10

        slots, soc, temp, volt, amps = [], [], [], [], []
        for s in self.slots:
            if s.inp.present:
                b = s.inp.bms
                slots.append(s.n)
                soc.append(tenth(b.soc_pm * 100) if b.valid else None)
                temp.append(tenth(b.temp_dc * 100) if b.valid else None)
                volt.append(tenth(b.voltage_mv) if b.valid else None)
                amps.append(tenth(b.current_ma) if b.valid else None)
        return {"slots": slots, "soc": soc, "temp_c": temp, "voltage_v": volt, "current_a": amps,
                "cabinet_temp_c": tenth(self.cabinet.temp_dc * 100)}

    # == journal and recovery ==============================================================
    def journal(self):
        """Everything that must survive a power cut, as one JSON-able dict."""
        ss = self.session
        sj = None
        if ss is not None:
            sj = {"id": ss.id, "request_id": ss.request_id, "id_token": ss.id_token,
                  "phase": ss.phase, "slot_in": ss.slot_in, "slot_out": ss.slot_out,
                  "battery_in": ss.battery_in, "battery_out": ss.battery_out,
                  "in_recorded": ss.in_recorded, "age_ms": wrap_diff(self.now, ss.t_start)}
        counters = {"boot": self.boot, "event": self.event_n, "session": self.session_n}
        for k in self.counters:
            counters[k] = self.counters[k]
        return {"v": JOURNAL_VERSION, "counters": counters, "mode": self.mode,
                "causes": self.causes, "config": self.settable_config(),
                "inventory": [[s.serial, s.profile.name if s.profile else None, s.accepted,
                               s.quarantine] for s in self.slots],
                "session": sj}

    def _restore(self, j):
        """Load a journal. Anything malformed is skipped rather than trusted."""
        c = j.get("counters") or {}
        for k in c:
            if isinstance(c[k], int):
                if k == "boot":
                    self.boot = c[k]
                elif k == "event":
                    self.event_n = c[k]
                elif k == "session":
                    self.session_n = c[k]
                else:
                    self.counters[k] = c[k]
        if j.get("mode") in (IN_SERVICE, MAINTENANCE, OUT_OF_SERVICE, EMERGENCY):
            self.mode = j["mode"]
        if isinstance(j.get("causes"), int):
            self.causes = j["causes"] & 7
        if self.causes:
            self.mode = EMERGENCY
        try:
            self.cfg = cf.validate_update(self.cfg, j.get("config") or {})
            self.lim = cf.Limits(self.cfg)
        except cf.ConfigError:
            pass
        inv = j.get("inventory") or []
        for i in range(min(len(inv), self.n_slots)):
            e = inv[i]
            s = self.slots[i]
            if not isinstance(e, list) or len(e) != 4:
                continue
            s.serial = e[0] if isinstance(e[0], str) else None
            s.profile = self.profiles.get(e[1]) if isinstance(e[1], str) else None
            s.accepted = e[2] is True and s.profile is not None
            s.quarantine = e[3] if isinstance(e[3], str) else None
            if s.accepted:
                s.phase = sl.P_STORED
            elif s.serial is not None or s.quarantine is not None:
                s.phase = sl.P_HELD
        sj = j.get("session")
        if isinstance(sj, dict) and isinstance(sj.get("slot_in"), int):
            self.restored_session = sj

    def _reconcile(self, now):
        """First tick after boot: compare the journal with what the sensors see (cabinet.md)."""
        sj = self.restored_session
        self.restored_session = None
        missing = []
        found = []
        for s in self.slots:
            known = s.serial is not None or s.accepted
            if known and not s.inp.present:
                missing.append(s.n)
            elif not known and s.inp.present and s.quarantine is None:
                found.append(s.n)
        self._emit("Boot", {"reason": self.boot_reason, "recovered": {
            "session": sj.get("id") if sj else None,
            "session_phase": sj.get("phase") if sj else None,
            "batteries": sum(1 for s in self.slots if s.serial is not None),
            "missing": missing, "found": found, "mode": self.mode}})
        # Rule 9: every lock commanded locked before anything else.
        for s in self.slots:
            s.lock_cmd = True
            s.lock_pending = True
            s.lock_t = now
        for n in missing:
            s = self.slots[n - 1]
            self._emit("BatteryMissing", {"slot": n, "serial": s.serial})
            self._clear_battery(s)
            s.phase = sl.P_EMPTY
        for s in self.slots:
            if s.inp.present and s.quarantine is None:
                s.phase = sl.P_IDENTIFYING  # check that the battery is the one the journal names
                s.ident_t = now
        if sj:
            self._resume_session(sj, now)

    def _resume_session(self, sj, now):
        n_in = sj.get("slot_in")
        n_out = sj.get("slot_out")
        valid_in = isinstance(n_in, int) and 1 <= n_in <= self.n_slots
        valid_out = isinstance(n_out, int) and 1 <= n_out <= self.n_slots
        sid = sj.get("id")
        ss = Session(sid if isinstance(sid, str) else "s-?", sj.get("request_id"),
                     sj.get("id_token"), n_in if valid_in else 0, now)
        ss.slot_out = n_out if valid_out else None
        ss.battery_in = sj.get("battery_in")
        ss.battery_out = sj.get("battery_out")
        ss.in_recorded = sj.get("in_recorded") is True
        age = sj.get("age_ms")
        if isinstance(age, int):
            ss.t_start = now - age
        self.session = ss
        if not ss.in_recorded or not valid_out or not valid_in:
            ss.slot_out = None
            self._abort_session("power_loss", now)
            return
        s_out = self.slots[n_out - 1]
        if not s_out.inp.present:
            self._complete(ss, s_out, now)  # taken just before the power went
        elif self.mode != IN_SERVICE or s_out.quarantine is not None:
            self._abort_session("emergency" if self.mode == EMERGENCY else "power_loss", now)
        else:
            s_out.phase = sl.P_DISPENSING
            s_out.command_lock(False, now)
            ss.phase = S_DISPENSING
            ss.t_phase = now
            self.jdirty |= J_SESSION


_HANDLERS = {
    "start_swap": Core._cmd_start_swap,
    "cancel_swap": Core._cmd_cancel_swap,
    "set_mode": Core._cmd_set_mode,
    "open_slot": Core._cmd_open_slot,
    "quarantine": Core._cmd_quarantine,
    "release": Core._cmd_release,
    "reset_emergency": Core._cmd_reset_emergency,
    "rebirth": Core._cmd_rebirth,
    "set_config": Core._cmd_set_config,
    "reboot": Core._cmd_reboot,
}
