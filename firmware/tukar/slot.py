# One slot of the cabinet: its control phase, lock supervision (rule 8), sensor checks (rule 5),
# charge conditions (rules 1-3), dispensability (rule 6) and the published state it derives.
# The cabinet core (core.py) drives the phases; this module holds what is local to one slot.
# Nothing here allocates in steady state: all per-tick work is integer arithmetic on attributes.
from micropython import const

from tukar import config as cf
from tukar.clock import wrap_diff
from tukar.inputs import fault_names

try:
    from typing import TYPE_CHECKING  # device-ok: only for the type checker
except ImportError:
    TYPE_CHECKING = False
if TYPE_CHECKING:
    from tukar.profile import Profile

# Published slot states (mqtt.md).
EMPTY = "empty"
AWAITING = "awaiting_battery"
IDENTIFYING = "identifying"
CHARGING = "charging"
PAUSED = "charge_paused"
READY = "ready"
DISPENSING = "dispensing"
REJECTED = "rejected"
QUARANTINED = "quarantined"
FAULT = "fault"
MAINT_OPEN = "maintenance_open"

# Control phases. STORED: an accepted battery behind a locked door (charging, paused or ready).
P_EMPTY = 0
P_AWAITING = 1
P_IDENTIFYING = 2
P_STORED = 3
P_DISPENSING = 4
P_REJECTED = 5
P_MAINT_OPEN = 6
P_HELD = 7  # a battery behind a locked door that is not accepted (shown quarantined)

_PHASE_STATE = (EMPTY, AWAITING, IDENTIFYING, None, DISPENSING, REJECTED, MAINT_OPEN, QUARANTINED)

# Slot fault bits and their published codes.
LOCK_JAM = 1
SENSOR_OPEN = 2
SENSOR_SHORT = 4
TEMP_MISMATCH = 8
BMS_LINK = 16
SLOT_IO = 32
FAULT_CODES = ("lock_jam", "temp_sensor_open", "temp_sensor_short", "temp_mismatch", "bms_link",
               "slot_io")
FAULT_SEVERITY = ("error", "error", "error", "warning", "warning", "error")

# Private (a const with a leading underscore takes no room in the module's dict); the core and the
# journal name the values where they read or set them.
_LOCK_PENDING = const(1)  # Slot.lock_pending's bits
_LOCK_RETRIED = const(2)
_LOCK_FROM = const(4)
_HOLD_TEMP = const(1)  # Slot.holds' bits
_HOLD_FULL = const(2)
_PUB_BFAULTS = const(9)  # where a BMS's fault bits start in Slot.pub_io


def fault_list(bits):
    out = []
    for i in range(len(FAULT_CODES)):
        if bits & (1 << i):
            out.append(FAULT_CODES[i])
    return out


class Slot:
    # A Slot's attributes are kept to 29, the size of a MicroPython attribute table (37 would
    # cost 64 bytes a slot): booleans that go together share an int, the charge's energy is the
    # Core's (tukar.packs), and the slot's current limit (rule 3) is the config's.
    def __init__(self, n, inputs):
        self.n = n  # 1-based slot number
        self.inp = inputs  # SlotInputs, filled in place by the drivers
        self.phase = P_EMPTY
        self.state: "str | None" = EMPTY  # published state
        # Battery bookkeeping (persisted as inventory).
        self.serial: "str | None" = None
        self.profile: "Profile | None" = None  # of the accepted battery
        self.accepted = False
        self.quarantine: "str | None" = None  # reason while quarantined
        self.faults = 0
        # Lock: the commanded level, when it was commanded and the supervision (rule 8):
        # lock_pending is 0 once confirmed, else _LOCK_PENDING, with _LOCK_RETRIED once the command
        # was given again and _LOCK_FROM when the feedback said locked as it was given (did the
        # bolt move since?). Tested for truth as "in motion".
        self.lock_cmd = True
        self.lock_pulse = 0
        self.lock_t = 0
        self.lock_pending = 0
        # Door edge detection for break-ins.
        self.door_was_closed = True
        self.forced = False
        # Charging.
        self.charge_ma = 0
        self.holds = 0  # _HOLD_TEMP: out of the window, until 3 degC inside; _HOLD_FULL: until 97 %
        self.reason: "str | None" = None  # why the charger is off while the battery waits
        self.dispensable = False
        self.fresh = False  # the BMS reading is younger than bms_fresh_ms (set by observe)
        self.hot = -1000  # highest trustworthy temperature this tick, 0.1 degC (set by observe)
        self.ident_t = 0  # when identification began
        self.wake = 0  # when the core must look at the slot again without news (Core._schedule)
        self.io_bad_since: "int | None" = None  # ticks since the slot's switches read
        self.mismatch_since: "int | None" = None  # ticks since sensor and BMS disagree (rule 5)
        self.opened = False  # maintenance_open: the door has been opened since the unlock;
        # held (quarantined with its door open): the door has not shut since
        # What was last published, to publish on change only. pub_io: door closed, locked and
        # dispensable (4, 2, 1), the slot's faults (<< 3) and its BMS's (<< _PUB_BFAULTS) as one int.
        self.pub_io = -1
        self.pub_ma = -1
        self.pub_reason: "str | None" = None

    # -- lock supervision (rule 8) ---------------------------------------------------------
    def command_lock(self, locked, now):
        if self.lock_cmd != locked or not self.lock_pending and self.inp.locked != locked:
            self.lock_cmd = locked
            self.lock_t = now
            self.lock_pending = _LOCK_PENDING | _LOCK_FROM if self.inp.locked else _LOCK_PENDING

    def lock_confirmed(self):
        """The lock is where it was told to be, and the feedback says so."""
        return not self.lock_pending and self.inp.locked == self.lock_cmd

    def supervise_lock(self, now):
        """Returns 1 when a jam was just declared, -1 when a jam cleared, else 0."""
        inp = self.inp
        if inp.locked == self.lock_cmd:
            p = self.lock_pending
            moved = p and (p & _LOCK_FROM != 0) != self.lock_cmd
            self.lock_pending = 0
            if moved and self.faults & LOCK_JAM:
                self.faults &= ~LOCK_JAM  # the bolt moved on command again: the jam is gone
                return -1
            return 0
        if not self.lock_pending:
            if self.faults & LOCK_JAM:
                return 0
            # Feedback drifted away from the command: supervise it like a fresh command.
            self.lock_pending = _LOCK_PENDING | _LOCK_FROM if inp.locked else _LOCK_PENDING
            self.lock_t = now
            return 0
        if wrap_diff(now, self.lock_t) < cf.LOCK_TIMEOUT_MS:
            return 0
        if not self.lock_pending & _LOCK_RETRIED:
            self.lock_pending |= _LOCK_RETRIED
            self.lock_pulse += 1  # the driver re-issues the command
            self.lock_t = now
            return 0
        self.lock_pending = 0
        self.faults |= LOCK_JAM
        return 1

    # -- sensors (rule 5) -------------------------------------------------------------------
    def observe(self, now, fresh_ms):
        """Once per tick, before anything else looks: is the BMS reading fresh, and the slot's
        highest trustworthy temperature (sensor and fresh BMS)."""
        inp = self.inp
        b = inp.bms
        fresh = b.valid and not b.link_fault and wrap_diff(now, b.t_ms) < fresh_ms
        self.fresh = fresh
        t = inp.temp_dc if inp.sensor == 0 else -1000
        if inp.present and fresh and b.temp_dc > t:
            t = b.temp_dc
        self.hot = t

    def sensor_faults(self, now):
        """Recompute the temperature-sensor fault bits; return the new bits (without lock/BMS bits).
        A mismatch with the BMS counts once it has lasted SENSOR_MISMATCH_MS."""
        inp = self.inp
        bits = 0
        apart = False
        if inp.sensor == 1:
            bits = SENSOR_OPEN
        elif inp.sensor == 2:
            bits = SENSOR_SHORT
        elif inp.present and self.fresh:
            d = inp.temp_dc - inp.bms.temp_dc
            apart = d > cf.SENSOR_MISMATCH_DC or d < -cf.SENSOR_MISMATCH_DC
        since = self.mismatch_since
        if apart:
            if since is None:
                self.mismatch_since = now
            elif wrap_diff(now, since) >= cf.SENSOR_MISMATCH_MS:
                bits = TEMP_MISMATCH
        elif since is not None:
            self.mismatch_since = None
        return bits

    def bms_since(self, t):
        """A reading arrived at or after ticks t (so it belongs to the battery inserted since)."""
        b = self.inp.bms
        return b.valid and wrap_diff(b.t_ms, t) >= 0

    # -- charging (rules 1 to 3) ------------------------------------------------------------
    def charge_decision(self, now, lim, emergency, cabinet_dc):
        """Rule 1: the setpoint in mA when every condition holds, else 0 with self.reason set."""
        inp = self.inp
        b = inp.bms
        # Rule 1's temperature window: the hard 0..45 degC narrowed by config and profile.
        lo = lim.charge_lo_dc
        hi = lim.charge_hi_dc
        p = self.profile
        if p is not None:
            if p.charge_min_dc > lo:
                lo = p.charge_min_dc
            if p.charge_max_dc < hi:
                hi = p.charge_max_dc
        # Hysteresis and full latches update on every fresh reading, charging or not.
        fresh = self.fresh
        if fresh:
            t = b.temp_dc
            if t < lo or t > hi:
                self.holds |= _HOLD_TEMP
            elif self.holds & _HOLD_TEMP and t >= lo + cf.HYSTERESIS_DC and t <= hi - cf.HYSTERESIS_DC:
                self.holds &= ~_HOLD_TEMP
            if b.full or b.soc_pm >= cf.FULL_SOC_PM:
                self.holds |= _HOLD_FULL
            elif self.holds & _HOLD_FULL and b.soc_pm < cf.RESUME_SOC_PM:
                self.holds &= ~_HOLD_FULL
        if emergency:
            self.reason = "emergency"
        elif not inp.io_ok:
            self.reason = "slot_io"
        elif self.quarantine is not None:
            self.reason = "quarantine"
        elif self.faults:
            self.reason = "fault"
        elif not inp.present:
            self.reason = "no_battery"
        elif self.phase != P_STORED or not self.accepted:
            self.reason = "door" if not self.lock_cmd else "not_accepted"
        elif not inp.door_closed or not self.lock_cmd or not inp.locked:
            self.reason = "door"
        elif not fresh:
            self.reason = "bms_stale"
        elif b.faults:
            self.reason = "battery_fault"
        elif self.holds & _HOLD_TEMP:
            self.reason = "temperature"
        elif cabinet_dc is None:
            self.reason = "cabinet_sensor"
        elif cabinet_dc > lim.cabinet_max_dc:
            self.reason = "cabinet_temperature"
        elif self.holds & _HOLD_FULL:
            self.reason = "full"
        else:
            ma = lim.slot_limit_ma
            if p is not None and p.max_charge_ma < ma:
                ma = p.max_charge_ma
            if b.req_current_ma >= 0 and b.req_current_ma < ma:
                ma = b.req_current_ma
            if ma > 0:
                self.reason = None
                return ma
            self.reason = "battery_request"
        return 0

    # -- dispensability (rule 6) ------------------------------------------------------------
    def check_dispensable(self, now, lim):
        inp = self.inp
        b = inp.bms
        ok = (self.phase == P_STORED and self.accepted and self.quarantine is None
              and not self.faults and inp.io_ok and inp.present and inp.door_closed and self.lock_cmd
              and inp.locked and self.fresh and not b.faults
              and b.soc_pm >= lim.min_soc_pm
              and b.temp_dc >= cf.HANDLING_MIN_DC and b.temp_dc <= cf.HANDLING_MAX_DC)
        self.dispensable = ok
        return ok

    def derive_state(self):
        """The published state for the current phase and conditions."""
        ph = self.phase
        if ph == P_STORED or ph == P_EMPTY or ph == P_IDENTIFYING:
            if self.quarantine is not None:
                return QUARANTINED
            if self.faults:
                return FAULT
            if ph == P_EMPTY:
                return EMPTY
            if ph == P_IDENTIFYING:
                return IDENTIFYING
            if self.charge_ma > 0:
                return CHARGING
            return READY if self.dispensable else PAUSED
        return _PHASE_STATE[ph]

    def is_free(self):
        """An empty slot that a swap may open for the rider's battery."""
        inp = self.inp
        return (self.phase == P_EMPTY and self.quarantine is None and not self.faults
                and inp.io_ok and not inp.present and inp.door_closed and self.lock_confirmed())

    def battery_view(self):
        """The `battery` object of the slot state (None without a battery)."""
        if not self.inp.present and self.serial is None:
            return None
        b = self.inp.bms
        if not b.valid:
            return {"serial": self.serial, "profile": self.profile.name if self.profile else None,
                    "soc": None, "soh": None, "temp_c": None, "voltage_v": None,
                    "current_a": None, "cycles": None, "faults": []}
        return {"serial": b.serial if b.serial is not None else self.serial,
                "profile": b.profile if b.profile is not None else (
                    self.profile.name if self.profile else None),
                "soc": b.soc_pm / 10, "soh": b.soh_pct, "temp_c": b.temp_dc / 10,
                "voltage_v": b.voltage_mv / 1000, "current_a": b.current_ma / 1000,
                "cycles": b.cycles, "faults": fault_names(b.faults)}
