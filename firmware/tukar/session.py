# The swap session, one rider's swap from the open door to the battery handed out: the Session
# record and the session's steps, which Core runs as its own methods (Core derives from
# SessionSteps; `self` is the Core). Timeouts, refusal and give-back, the dispense choice.
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from tukar import config as cf
from tukar import slot as sl
from tukar.clock import wrap_diff
from tukar.states import J_INVENTORY, J_SESSION, S_AWAITING, S_DISPENSING, S_IDENTIFYING, S_REJECTED


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
        self.end_reason = "rejected"  # SwapAborted's reason once a battery given back is taken
        self.out_gone = False  # the battery handed out has left its slot
        self.t_start = now
        self.t_phase = now

    def view(self):
        return {"id": self.id, "request_id": self.request_id, "phase": self.phase,
                "slot_in": self.slot_in, "slot_out": self.slot_out}


def _serial_of(view):
    return view.get("serial") if isinstance(view, dict) else None


class SessionSteps:
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
            if ss.in_recorded:
                # Accepted last tick (or before a power cut): now the battery to hand out, in a
                # tick of its own so that neither tick does all of a swap's work. Rule 6 is
                # checked on the chosen slot now. A battery still being identified (after a boot,
                # every one is) may yet qualify: wait for it, as long as identifying may take.
                best = self._choose_dispense()
                if best is not None:
                    self._dispense(ss, best, now)
                elif self._any_identifying() and wrap_diff(now, ss.t_phase) < lim.identify_ms:
                    self.pending |= 1 << ss.slot_in
                else:
                    self._give_back(ss, s_in, "no_battery_available", now)
                return
            r = self._identify(s_in, now)
            if r == 1 and not self._any_dispensable():
                # Good, but nothing left to hand out (the last one turned bad, was quarantined or
                # forced since the swap began): the rider's own goes back, no BatteryIn.
                s_in.serial = inp.bms.serial
                self._give_back(ss, s_in, "no_battery_available", now)
            elif r == 1:
                self._accept(s_in)
                ss.battery_in = s_in.battery_view()
                ss.in_recorded = True
                self._emit("BatteryIn", {"session": ss.id, "request_id": ss.request_id,
                                         "id_token": ss.id_token, "slot": s_in.n,
                                         "battery": ss.battery_in})
                self.pending |= 1 << s_in.n  # the session goes on next tick
                self._phase(ss, S_IDENTIFYING, now)
                self._policy(s_in, now)  # the cabinet's now: a worn one is kept for collection
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
                self._abort_session(ss.end_reason, now)
            elif wrap_diff(now, ss.t_phase) >= lim.take_ms:
                s_in.command_lock(True, now)
                if inp.present:
                    self._abort_session(ss.end_reason, now)
                    s_in.phase = sl.P_HELD
                    self._quarantine(s_in, "rejected_not_taken", now)
                else:
                    self._clear_battery(s_in)
                    s_in.phase = sl.P_EMPTY
                    self._abort_session(ss.end_reason, now)
        elif ss.phase == S_DISPENSING:
            assert ss.slot_out is not None
            s_out = self.slots[ss.slot_out - 1]
            o = s_out.inp
            if not o.present:
                ss.out_gone = True
            if not o.present and o.door_closed:
                s_out.command_lock(True, now)
                self._complete(ss, s_out, now)
            elif ss.out_gone and o.door_closed:
                # Taken, and another battery pushed in before the door shut: the swap is done,
                # and the newcomer is a battery found in the slot, identified before anything.
                s_out.command_lock(True, now)
                self._complete(ss, s_out, now)
                s_out.phase = sl.P_IDENTIFYING
                s_out.ident_t = now
            elif self._turned_bad(s_out) and not o.door_closed:
                # Turned bad (quarantined by the operator as the rider opened the door, say) with
                # the door open: no longer offered; the bolt latches when the door shuts.
                s_out.command_lock(True, now)
                self._abort_session("fault", now)
            elif self._turned_bad(s_out):
                # The battery turned bad (fault flag, slot fault, out of the handling window,
                # quarantined) and its door is shut: it is not handed out.
                s_out.command_lock(True, now)
                if s_out.phase == sl.P_DISPENSING:  # its door was unlocked: identified again
                    s_out.phase = sl.P_IDENTIFYING
                    s_out.ident_t = now
                self.pending |= 1 << s_out.n
                best = self._choose_dispense()
                if best is not None:
                    self._dispense(ss, best, now)
                else:
                    self._give_back(ss, s_in, "no_battery_available", now)
            elif wrap_diff(now, ss.t_phase) >= lim.take_ms:
                s_out.command_lock(True, now)
                if ss.out_gone:
                    self._complete(ss, s_out, now)  # taken, door left open: the lock latches later
                    if o.present:  # and another pushed in
                        s_out.phase = sl.P_IDENTIFYING
                        s_out.ident_t = now
                elif not o.present:
                    self._complete(ss, s_out, now)
                else:
                    # Not taken, or so it seems: the door was unlocked for a minute (and the
                    # cabinet may have lost sight of a take in a power cut): identified again.
                    s_out.phase = sl.P_IDENTIFYING
                    s_out.ident_t = now
                    self._emit("BatteryOutTimeout", {"session": ss.id,
                                                     "request_id": ss.request_id,
                                                     "slot": s_out.n, "battery": ss.battery_out})
                    self._abort_session("not_taken", now)

    def _any_dispensable(self):
        for s in self.slots:
            if s.dispensable:
                return True
        return False

    def _turned_bad(self, s):
        """Rule 6 without the door: the battery in dispense slot s may no longer be handed out."""
        b = s.inp.bms
        return (s.quarantine is not None or s.faults != 0 or b.faults != 0 or not s.inp.io_ok
                or b.temp_dc < cf.HANDLING_MIN_DC or b.temp_dc > cf.HANDLING_MAX_DC)

    def _give_back(self, ss, s_in, reason, now):
        """The rider's battery goes back to them (no battery to hand out, or a cut before its
        BatteryIn was written): its slot opens as for a refused battery; the session ends
        `reason` once it is taken, or it is held as rejected_not_taken. A quarantined one stays
        shut (rule 7): the session ends `reason` now."""
        if s_in.quarantine is not None:
            self._abort_session(reason, now)
            return
        if s_in.accepted:
            s_in.accepted = False  # it is the rider's again, not the cabinet's
            s_in.profile = None
            self.jdirty |= J_INVENTORY
        s_in.phase = sl.P_REJECTED
        s_in.command_lock(False, now)
        ss.end_reason = reason
        ss.in_recorded = False  # nothing is owed now: after a power cut it is not handed out
        self.pending |= 1 << s_in.n
        self._phase(ss, S_REJECTED, now)

    def _any_identifying(self):
        for s in self.slots:
            if s.phase == sl.P_IDENTIFYING:
                return True
        return False

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
        # A session restored from a damaged journal may lack the views: the inventory names the
        # batteries then (mqtt.md: a battery object, or a serial, never null).
        out = ss.battery_out if isinstance(ss.battery_out, dict) else s_out.battery_view()
        serial_out = _serial_of(out) or s_out.serial
        self._emit("BatteryOut", {"session": ss.id, "request_id": ss.request_id,
                                  "id_token": ss.id_token, "slot": s_out.n, "battery": out})
        self._emit("SwapCompleted", {
            "session": ss.id, "request_id": ss.request_id, "id_token": ss.id_token,
            "slot_in": ss.slot_in, "slot_out": ss.slot_out,
            "battery_in": _serial_of(ss.battery_in) or self.slots[ss.slot_in - 1].serial,
            "battery_out": serial_out,
            "duration_ms": wrap_diff(now, ss.t_start),
            "energy_wh": self._handed_over(out, ss.battery_in)})
        self._clear_battery(s_out)
        s_out.phase = sl.P_EMPTY
        self._end_session()

    def _abort_session(self, reason, now):
        ss = self.session
        if ss is None:
            return
        if ss.phase == S_DISPENSING and ss.out_gone and ss.slot_out:
            # The battery handed out has already left: the rider has it, the swap is done.
            s_out = self.slots[ss.slot_out - 1]
            if not s_out.lock_cmd:
                s_out.command_lock(True, now)
            self._complete(ss, s_out, now)
            if s_out.inp.present:  # pushed in since: a battery found in the slot
                s_out.phase = sl.P_IDENTIFYING
                s_out.ident_t = now
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
        ss = self.session
        self.session = None
        self.jdirty |= J_SESSION
        self.dirty |= 1
        if ss is not None:
            # The session's time-outs end with it: a slot not evaluated in this tick would keep
            # a stale timer, and every tick would look at it until it ran out.
            for n in (ss.slot_in, ss.slot_out):
                if n and self.timed & (1 << n):
                    t = self._wake(self.slots[n - 1], None)
                    if t is None:
                        self.timed &= ~(1 << n)
                    else:
                        self.slots[n - 1].wake = t

    def _choose_dispense(self):
        """Rule 6: the dispensable battery with the highest SoC; ties: fewest cycles, then lowest
        slot. Ranked as each slot's last evaluation left it; the winner is checked again now (its
        BMS age, its switches) and, when it no longer qualifies, the next one is tried."""
        now = self.now
        lim = self.lim
        while True:
            best = None
            soc = -1
            cycles = 0
            for s in self.slots:
                if s.dispensable:
                    b = s.inp.bms
                    if b.soc_pm > soc or b.soc_pm == soc and b.cycles < cycles:
                        best = s
                        soc = b.soc_pm
                        cycles = b.cycles
            if best is None:
                return None
            best.observe(now, lim.fresh_ms)
            if best.check_dispensable(now, lim):
                self._policy(best, now)  # worn since it was accepted: held, not handed out
                if best.quarantine is None:
                    return best
            self.pending |= 1 << best.n  # no longer dispensable: its state is published next tick

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
            if self.is_retired(b.serial):
                return "retired"
            return 1
        if wrap_diff(now, s.ident_t) >= self.lim.identify_ms:
            return "no_bms"
        return 0

    def _accept(self, s):
        b = s.inp.bms
        if s.serial != b.serial:
            if s.serial is not None:
                self._emit("BatteryMissing", {"slot": s.n, "serial": s.serial})
            self.ledger[4 * self.n_slots + s.n - 1] = 0  # another pack: its wear begins
        s.serial = b.serial
        s.profile = self.profiles[b.profile]
        s.accepted = True
        s.holds = 0
        s.phase = sl.P_STORED
        self.jdirty |= J_INVENTORY
