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
RETIRED_MAX = const(64)  # serials remembered as retired (the oldest is forgotten past it)
ENERGY_SAVE_WH = const(50)  # drawn since the last write: the journal is written again
RETIRED = "retired"  # the quarantine reason of a pack held for collection


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
        charge_t = self._charge_t
        for j in range(k):
            s = ev[j]
            was = s.charge_ma
            i = s.n - 1
            if was:
                dt = (now - charge_t[i]) & _TICKS_MAX  # wrap_diff, inline: a clock set back
                if 0 < dt < _TICKS_HALF:  # adds nothing
                    s.add_energy(dt)
            charge_t[i] = now
            ma = s.charge_decision(now, lim, em, cab)
            if ma and not was:
                s.energy_mwh = 0
                s.energy_acc = 0
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
        self._emit("ChargeStopped", {"slot": s.n, "serial": s.serial, "reason": reason,
                                     "energy_wh": s.energy_mwh / 1000})
        i = s.n - 1
        m = self.e_mwh[i] + s.energy_mwh
        self.e_wh[i] += m // 1000
        self.e_mwh[i] = m % 1000
        s.energy_mwh = 0
        s.energy_acc = 0
        if s.accepted and s.quarantine is None:
            self._policy(s, self.now)

    # == energy ============================================================================
    def drawn_wh(self, i):
        """Whole Wh slot i+1's charger has drawn since commissioning, the charge in progress
        included."""
        return self.e_wh[i] + (self.e_mwh[i] + self.slots[i].energy_mwh) // 1000

    def _energy_columns(self):
        """Telemetry's energy: per slot and the cabinet's total, in Wh. Drawn since the journal
        was last written: written again past ENERGY_SAVE_WH (a power cut loses at most that, and
        one telemetry period's)."""
        per = [self.drawn_wh(i) for i in range(self.n_slots)]
        total = sum(per)
        if total - self._e_saved >= ENERGY_SAVE_WH:
            self._e_saved = total
            self.jdirty |= J_COUNTERS
        return per, total

    def _stored_wh(self, view):
        """The energy a pack holds from its battery view: SoC x SoH x the profile's capacity x its
        nominal voltage (the middle of its range); None when a part is unknown."""
        if not isinstance(view, dict):
            return None
        soc = view.get("soc")
        p = self.profiles.get(view.get("profile"))
        if soc is None or p is None:
            return None
        soh = view.get("soh")
        f = soh / 100 if isinstance(soh, (int, float)) and 0 < soh <= 100 else 1
        return soc / 100 * f * p.capacity_mah * (p.voltage_min_mv + p.voltage_max_mv) / 2e6

    def _handed_over(self, out_view, in_view):
        """SwapCompleted's energy_wh: what the rider leaves with less what they brought."""
        a = self._stored_wh(out_view)
        b = self._stored_wh(in_view)
        if a is None or b is None:
            return None
        return round(a - b, 1)

    # == retirement ========================================================================
    def is_retired(self, serial):
        return serial_hash(serial) in self.retired

    def _policy(self, s, now):
        """Retire the pack in slot s when it meets the policy (set_config's retire_* keys)."""
        if s.serial is None:
            return
        b = s.inp.bms
        lim = self.lim
        w = self.wear[s.n - 1]
        why = None
        if b.valid and 0 < b.soh_pct < lim.retire_soh:
            why = "soh"
        elif b.valid and b.cycles > lim.retire_cycles:
            why = "cycles"
        elif w & 0xFF >= lim.retire_faults:
            why = "bms_faults"
        elif w >> 8 >= lim.retire_heats:
            why = "overheats"
        if why is not None:
            self._retire(s, why, now)

    def _policy_all(self, now):
        """The policy changed (set_config): every pack the cabinet holds is looked at again."""
        for s in self.slots:
            if s.accepted and s.quarantine is None:
                self._policy(s, now)

    def _bms_fault_seen(self, s, now):
        """A BMS fault flag rose on a pack the cabinet holds: counted against it."""
        if s.serial is not None and s.accepted:
            self.wear[s.n - 1] += 1
            self.jdirty |= J_INVENTORY
            if s.quarantine is None:
                self._policy(s, now)

    def _overheat(self, s, now):
        """Rule 4: the slot is quarantined; the pack's overheat is counted against it."""
        self._quarantine(s, "overtemp", now)
        if s.serial is not None:
            self.wear[s.n - 1] += 256
            self.jdirty |= J_INVENTORY
            self._policy(s, now)

    def _remember_retired(self, serial):
        h = serial_hash(serial)
        r = self.retired
        if h not in r:
            if len(r) >= RETIRED_MAX:
                r.pop(0)
            r.append(h)
            self.jdirty |= J_INVENTORY

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
        if not self.is_retired(serial):
            self._remember_retired(serial)
            self._emit("BatteryRetired", {"slot": None, "serial": serial, "reason": "command",
                                          "battery": None})
        return None

    def _collected(self, s):
        """A pack held for collection has been taken out: the slot is in use again."""
        s.quarantine = None
        self.jdirty |= J_INVENTORY
        self._emit("QuarantineReleased", {"slot": s.n, "reason": RETIRED})
