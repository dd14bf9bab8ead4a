# The commands of the MQTT contract, after the gate has admitted them: argument checks, the
# modes each is allowed in, and what each does. Core derives from Commands (`self` is the Core).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from tukar import config as cf
from tukar import errors as E
from tukar import slot as sl
from tukar.errors import make_ack
from tukar.session import Session
from tukar.states import (ALARMS, EMERGENCY, IN_SERVICE, J_CONFIG, J_COUNTERS, J_INVENTORY, J_MODE,
                          J_SESSION, MAINTENANCE, S_AWAITING, SETTABLE_MODES)

_MAX_TEXT = 64


def _text(v):
    return isinstance(v, str) and 0 < len(v) <= _MAX_TEXT


class CommandError(Exception):
    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Commands:
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
            self._touch = self.all_slots  # what the next step evaluates afresh; a handler narrows it
            result = handler(self, body)
            self.pending |= self._touch
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
        self._touch = 1 | 1 << n
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
        c = self.counters
        c["session"] = c.get("session", 0) + 1
        self.jdirty |= J_COUNTERS | J_SESSION
        ss = Session("s-%d" % c["session"], request_id, token, free.n, now)
        self.session = ss
        free.phase = sl.P_AWAITING
        free.command_lock(False, now)
        self._touch = 1 | 1 << free.n
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
        self._touch = 1 | 1 << s.n
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
        self._touch = 1  # no slot rule depends on these modes
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
        if self.restored_session is not None:  # restored in emergency, and not yet ticked
            raise CommandError(E.BUSY, "the cabinet has not read its sensors since it started; "
                               "send it again")
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
        self._touch = 0
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
        for s in self.slots:  # the policy may have changed: every pack held is looked at again
            if s.accepted and s.quarantine is None:
                self._policy(s, self.now)
        return {"config": self.settable_config()}

    def _cmd_retire(self, body):
        serial = body.get("serial")
        if not _text(serial):
            raise CommandError(E.BAD_ARGS, "serial: a non-empty string of at most 64 characters")
        n = self.retire_serial(serial, self.now)
        self._touch = 1 | (1 << n if n else 0)
        return {"serial": serial, "slot": n}

    def _cmd_reboot(self, body):
        if self.session is not None:
            raise CommandError(E.BUSY, "session %s is open" % self.session.id)
        self.reboot = True
        return None

    def settable_config(self):
        return {k: self.cfg[k] for k in cf.SETTABLE}


_HANDLERS = {  # command name -> handler (a Core method)
    "start_swap": Commands._cmd_start_swap,
    "cancel_swap": Commands._cmd_cancel_swap,
    "set_mode": Commands._cmd_set_mode,
    "open_slot": Commands._cmd_open_slot,
    "quarantine": Commands._cmd_quarantine,
    "release": Commands._cmd_release,
    "reset_emergency": Commands._cmd_reset_emergency,
    "rebirth": Commands._cmd_rebirth,
    "set_config": Commands._cmd_set_config,
    "reboot": Commands._cmd_reboot,
    "retire": Commands._cmd_retire,
}
