# The packs' energy and wear: charging (rule 1's decision per slot, the charge's energy integrated
# from the BMS's voltage and current), the energy each slot has drawn since commissioning, the
# energy a swap hands over, and retirement: a pack that meets the retirement policy (SoH below a
# floor, cycles above a ceiling, repeated BMS faults or overheats while in this cabinet) or that the
# back end retires by command is held for collection, never dispensed, and refused if it comes
# back. Core derives from Packs (`self` is the Core; tukar.absorb).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from micropython import const

from tukar.states import EMERGENCY, J_COUNTERS, J_INVENTORY

_TICKS_MAX = const((1 << 30) - 1)  # tukar.clock.TICKS_MAX
_TICKS_HALF = const(1 << 29)
_RETIRED_MAX = const(64)  # serials remembered as retired (the oldest is forgotten past it)
_ENERGY_SAVE_WH = const(50)  # drawn since the last write: the journal is written again
RETIRED_MAX = _RETIRED_MAX
RETIRED = "retired"  # the quarantine reason of a pack held for collection
# The per-slot ints are in Core.ledger (its runs: core.py): the charge in progress, the slot's
# total and the pack's wear.


def serial_hash(serial):
    """A serial as one 30-bit number, a small int (no heap) on a 32-bit port: two multiplicative
    hashes of 22 bits, each step a bijection of its state, the second's low 8 bits beside the
    first. Two serials of one length that differ in one character never agree; others agree about
    once in 2^30, and then a good pack is refused (the safe way to be wrong)."""
    a = 0x2C9277
    b = 0x1F3D5B
    for c in serial:
        x = ord(c)
        a = ((a ^ x) * 167) & 0x3FFFFF
        b = ((b ^ x) * 131) & 0x3FFFFF
    return a << 8 | (b & 0xFF)


class Packs:
    # == charging ==========================================================================
    def _charge(self, now, k):
        em = self.mode == EMERGENCY
        cab = self.cabinet.temp_dc if not self.cabinet.sensor else None  # None: not known
        lim = self.lim
        ev = self._ev
        led = self.ledger
        at = 5 * self.n_slots - 1  # the ledger's run of when each charge was last integrated
        for j in range(k):
            s = ev[j]
            was = s.charge_ma
            if was:
                dt = (now - led[at + s.n]) & _TICKS_MAX  # wrap_diff, inline: a clock set back
                if 0 < dt < _TICKS_HALF:  # adds nothing
                    self._integrate(s, dt)
            led[at + s.n] = now
            ma = s.charge_decision(now, lim, em, cab)
            if ma and not was:
                self._emit("ChargeStarted", {"slot": s.n, "serial": s.serial})
            elif was and not ma:
                self._charge_stopped(s, s.reason or "stopped")
            if ma != was:
                s.charge_ma = ma
                self.charge_ma[s.n - 1] = ma
                self.outputs |= 1 << s.n

    def _charge_stopped(self, s, reason):
        """The charge's energy goes into the slot's total; a pack whose charge ended (its cycle
        count may have moved) is checked against the retirement policy."""
        e = self.ledger
        i = s.n - 1
        n = self.n_slots
        self._emit("ChargeStopped", {"slot": s.n, "serial": s.serial, "reason": reason,
                                     "energy_wh": e[i] / 1000})
        m = e[3 * n + i] + e[i]
        e[2 * n + i] += m // 1000
        e[3 * n + i] = m % 1000
        e[i] = 0
        e[n + i] = 0
        if s.accepted and s.quarantine is None:
            self._policy(s, self.now)

    # == energy ============================================================================
    def _integrate(self, s, dt_ms):
        """The charge's energy over dt_ms from the BMS's voltage and current (integers only)."""
        b = s.inp.bms
        ma = b.current_ma if b.current_ma > 0 else 0
        dw = (b.voltage_mv // 10) * (ma // 10) // 1000  # 0.1 W
        e = self.ledger
        i = s.n - 1
        r = self.n_slots + i
        acc = e[r] + dw * dt_ms
        e[i] += acc // 36000  # 1 mWh = 3.6 J = 36,000 x (0.1 W x 1 ms)
        e[r] = acc % 36000

    def drawn_wh(self, i):
        """Whole Wh slot i+1's charger has drawn since commissioning, the charge in progress
        included."""
        e = self.ledger
        n = self.n_slots
        return e[2 * n + i] + (e[3 * n + i] + e[i]) // 1000

    def _handed_over(self, out_view, in_view):
        """SwapCompleted's energy_wh: what the rider leaves with less what they brought, each
        SoC x SoH x the profile's capacity x its nominal voltage (the middle of its range); None
        when a part is unknown. SoC is a share of what the pack holds now, hence SoH."""
        wh = 0
        for view in (in_view, out_view):
            if not isinstance(view, dict):
                return None
            soc = view.get("soc")
            p = self.profiles.get(view.get("profile"))
            if soc is None or p is None:
                return None
            soh = view.get("soh")
            if not (isinstance(soh, (int, float)) and 0 < soh <= 100):
                soh = 100
            # % x % x mAh x (2 x nominal mV): Wh x 2e10. Few float operations (each allocates).
            wh = soc * soh * p.capacity_mah * (p.voltage_min_mv + p.voltage_max_mv) - wh
        return round(wh / 2e10, 1)

    # == retirement ========================================================================
    def is_retired(self, serial):
        return serial_hash(serial) in self.retired

    def _policy(self, s, now):
        """Retire the pack in slot s when it meets the policy (set_config's retire_* keys)."""
        if s.serial is None:
            return
        b = s.inp.bms
        cfg = self.cfg
        w = self.ledger[4 * self.n_slots + s.n - 1]
        why = None
        if b.valid and 0 < b.soh_pct < cfg["retire_soh_min"]:
            why = "soh"
        elif b.valid and b.cycles > cfg["retire_cycles_max"]:
            why = "cycles"
        elif w & 0xFF >= cfg["retire_bms_faults"]:
            why = "bms_faults"
        elif w >> 8 >= cfg["retire_overheats"]:
            why = "overheats"
        if why is not None:
            self._retire(s, why, now)

    def _worn(self, s, count, now):
        """Counted against the pack in slot s: a BMS fault flag that rose on a pack the cabinet
        holds (count 1), or rule 4's quarantine, which the caller has just made (count 256)."""
        if s.serial is not None and (s.accepted or count > 1):
            self.ledger[4 * self.n_slots + s.n - 1] += count
            self.jdirty |= J_INVENTORY
            if s.quarantine is None or count > 1:
                self._policy(s, now)

    def _remember_retired(self, serial):
        """True when the serial was not remembered yet."""
        h = serial_hash(serial)
        r = self.retired
        if h in r:
            return False
        if len(r) >= _RETIRED_MAX:
            r.pop(0)
        r.append(h)
        self.jdirty |= J_INVENTORY
        return True

    def _retire(self, s, why, now):
        """Hold the pack in slot s for collection (quarantine reason `retired`), remember its
        serial, announce it."""
        if s.quarantine == RETIRED:
            return
        self._remember_retired(s.serial)
        self._emit("BatteryRetired", {"slot": s.n, "serial": s.serial, "reason": why,
                                      "battery": s.battery_view()})
        if s.quarantine is None:
            self._quarantine(s, RETIRED, now)
        else:  # quarantined already (overheated): now for collection
            s.quarantine = RETIRED
            self.jdirty |= J_INVENTORY
            self.pending |= 1 << s.n

    def retire_serial(self, serial, now):
        """The `retire` command: remembered, and held wherever it is in this cabinet, behind the
        dispense door too (a rider's pack not yet taken in is refused at its identification
        instead). The slot, or None."""
        ss = self.session
        for s in self.slots:
            if s.serial == serial and not (ss is not None and s.n == ss.slot_in
                                           and not ss.in_recorded):
                self._retire(s, "command", now)  # the dispense pack too: another is handed out
                return s.n
        if self._remember_retired(serial):
            self._emit("BatteryRetired", {"slot": None, "serial": serial, "reason": "command",
                                          "battery": None})
        return None

    def _collected(self, s):
        """A pack held for collection has been taken out: the slot is in use again."""
        s.quarantine = None
        self.jdirty |= J_INVENTORY
        self._emit("QuarantineReleased", {"slot": s.n, "reason": RETIRED})

    def energy_columns(self):
        """Telemetry's energy counters: per slot and the cabinet's total, in Wh. Past
        ENERGY_SAVE_WH drawn since the journal was last asked for, it is asked for again (a power
        cut loses at most that, and one telemetry period's)."""
        per = [self.drawn_wh(i) for i in range(self.n_slots)]
        total = sum(per)
        if total - (self._tel >> 4) >= _ENERGY_SAVE_WH:
            self._tel = total << 4 | (self._tel & 15)
            self.jdirty |= J_COUNTERS
        return per, total
