# The journal, what must survive a power cut (inventory, the session, counters, mode and latched
# causes, config), and the recovery at the first tick after a boot: what is found again, what is
# missing, an interrupted session ended or resumed. Core derives from Journal (`self` is the Core).
# pyright: reportAttributeAccessIssue=false, reportOptionalMemberAccess=false
from tukar import config as cf
from tukar import slot as sl
from tukar.clock import wrap_diff
from tukar.session import Session
from tukar.states import (EMERGENCY, IN_SERVICE, J_SESSION, JOURNAL_VERSION, MAINTENANCE,
                          OUT_OF_SERVICE, S_DISPENSING, S_IDENTIFYING, S_REJECTED)


class Journal:
    def journal(self):
        """Everything that must survive a power cut, as one JSON-able dict."""
        return {"v": JOURNAL_VERSION, "counters": self._j_counters(), "mode": self.mode,
                "causes": self.causes, "config": self.settable_config(),
                "inventory": [self._j_slot(s) for s in self.slots], "session": self._j_session(),
                "energy_wh": [self.drawn_wh(i) for i in range(self.n_slots)],
                "wear": self.ledger[4 * self.n_slots:5 * self.n_slots], "retired": self.retired}

    def write_journal(self, f, dump):
        """journal() streamed into file f as its JSON text, a part at a time with `dump` (that of
        tukar.outbox): never the whole dict in the heap, which at every persist of an outage was
        a kilobyte of small objects while the outbox spills and the link reconnects."""
        f.write('{"v":%d,"counters":' % JOURNAL_VERSION)
        dump(self._j_counters(), f)
        f.write(',"mode":')
        dump(self.mode, f)
        f.write(',"causes":')
        dump(self.causes, f)
        f.write(',"config":')
        dump(self.settable_config(), f)
        f.write(',"inventory":[')
        sep = ""
        for s in self.slots:
            f.write(sep)
            dump(self._j_slot(s), f)
            sep = ","
        f.write('],"session":')
        dump(self._j_session(), f)
        f.write(',"energy_wh":[')
        sep = ""
        for i in range(self.n_slots):
            f.write(sep)
            f.write(str(self.drawn_wh(i)))
            sep = ","
        f.write('],"wear":[')
        sep = ""
        for i in range(4 * self.n_slots, 5 * self.n_slots):
            f.write(sep)
            f.write(str(self.ledger[i]))
            sep = ","
        f.write("]")
        f.write(',"retired":')
        dump(self.retired, f)
        f.write("}")

    def _j_counters(self):
        counters = {"boot": self.boot, "event": self.event_n}  # the session's is in counters
        for k in self.counters:
            counters[k] = self.counters[k]
        return counters

    def _j_slot(self, s):
        return [s.serial, s.profile.name if s.profile else None, s.accepted, s.quarantine,
                s.phase == sl.P_HELD]

    def _j_session(self):
        ss = self.session
        if ss is None:
            return None
        return {"id": ss.id, "request_id": ss.request_id, "id_token": ss.id_token,
                "phase": ss.phase, "slot_in": ss.slot_in, "slot_out": ss.slot_out,
                "battery_in": ss.battery_in, "battery_out": ss.battery_out,
                "in_recorded": ss.in_recorded, "age_ms": wrap_diff(self.now, ss.t_start)}

    def _restore(self, j):
        """Load a journal. Anything malformed is skipped rather than trusted."""
        c = j.get("counters") or {}
        for k in c:
            if isinstance(c[k], int):
                if k == "boot":
                    self.boot = c[k]
                elif k == "event":
                    self.event_n = c[k]
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
            if not isinstance(e, list) or len(e) not in (4, 5):
                continue
            s.serial = e[0] if isinstance(e[0], str) else None
            s.profile = self.profiles.get(e[1]) if isinstance(e[1], str) else None
            s.accepted = e[2] is True and s.profile is not None
            s.quarantine = e[3] if isinstance(e[3], str) else None
            # A battery held behind the door (refused, or quarantined with it), as the journal
            # says; a journal without the flag took any quarantine for one. A quarantined empty
            # slot is out of use with no battery implied: it stays empty, and nothing is missing.
            held = e[4] is True if len(e) == 5 else s.quarantine is not None
            if s.accepted:
                s.phase = sl.P_STORED
            elif s.serial is not None or held:
                s.phase = sl.P_HELD
        self._restore_packs(j)
        sj = j.get("session")
        if isinstance(sj, dict) and isinstance(sj.get("slot_in"), int):
            if not isinstance(sj.get("id"), str):
                sj["id"] = "s-?"  # damaged: Boot and SwapAborted still name it as text
            self.restored_session = sj

    def _restore_packs(self, j):
        """The packs' part (tukar.packs): energy drawn per slot, wear per slot, serials retired."""
        n = self.n_slots
        led = self.ledger
        for key, at in (("energy_wh", 2 * n), ("wear", 4 * n)):
            v = j.get(key)
            if isinstance(v, list):
                for i in range(min(len(v), n)):
                    if isinstance(v[i], int) and not isinstance(v[i], bool) and v[i] >= 0:
                        led[at + i] = v[i]
        r = j.get("retired")
        if isinstance(r, list):
            for h in r[-64:]:
                if isinstance(h, int) and not isinstance(h, bool) and h not in self.retired:
                    self.retired.append(h)

    def _reconcile(self, now):
        """First tick after boot: compare the journal with what the sensors see (cabinet.md)."""
        sj = self.restored_session
        self.restored_session = None
        missing = []
        found = []
        # The battery being handed out, gone: the rider took it before the cut (the session
        # completes below), not a battery missing.
        taken = sj.get("slot_out") if sj and sj.get("in_recorded") is True else None
        # The rider's own battery being given back (the swap rejected), gone: they took it back.
        back = sj.get("slot_in") if sj and sj.get("phase") == S_REJECTED else None
        for s in self.slots:
            known = s.serial is not None or s.accepted
            if known and not s.inp.present:
                if s.n != taken and s.n != back:
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
            s.lock_pending = 5  # in motion, from locked (slot._LOCK_PENDING | slot._LOCK_FROM)
            s.lock_t = now
        for n in missing:
            s = self.slots[n - 1]
            self._emit("BatteryMissing", {"slot": n, "serial": s.serial})
            self._clear_battery(s)
            s.phase = sl.P_EMPTY
        for s in self.slots:
            if s.inp.present:
                # Check that the battery is the one the journal names, in a quarantined slot too
                # (a technician may have changed it in maintenance just before the cut): it stays
                # quarantined, shut and off whatever the answer.
                s.phase = sl.P_IDENTIFYING
                s.ident_t = now
            elif s.n == back:
                self._clear_battery(s)
                s.phase = sl.P_EMPTY
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
        if not ss.in_recorded or not valid_in:
            ss.slot_out = None
            s_in = self.slots[n_in - 1] if valid_in else None
            if (s_in is not None and s_in.inp.present and s_in.quarantine is None
                    and self.mode == IN_SERVICE):
                # The power went after the rider's battery went in and before BatteryIn was
                # written: the battery is the rider's, and it goes back to them. The session ends
                # as power_loss once it is taken (or, left, it is held as rejected_not_taken).
                s_in.phase = sl.P_REJECTED
                s_in.command_lock(False, now)
                ss.phase = S_REJECTED
                ss.t_phase = now
                ss.end_reason = "power_loss"
                self.jdirty |= J_SESSION
                return
            self._abort_session("power_loss", now)
            return
        s_out = self.slots[n_out - 1] if valid_out else None
        if s_out is not None and not s_out.inp.present:
            self._complete(ss, s_out, now)  # taken just before the power went
        elif s_out is not None and self.mode != IN_SERVICE:
            self._abort_session("emergency" if self.mode == EMERGENCY else "power_loss", now)
        elif s_out is None or s_out.quarantine is not None:
            # The rider's battery was taken in and no battery chosen yet, or the one chosen was
            # quarantined just before the cut (it stays locked in): the rider is owed one, chosen
            # once the batteries have been identified again, or their own back (SessionSteps).
            ss.slot_out = None
            ss.phase = S_IDENTIFYING
            ss.t_phase = now
            self.pending |= 1 << n_in
            self.jdirty |= J_SESSION
        else:
            s_out.phase = sl.P_DISPENSING
            s_out.command_lock(False, now)
            ss.phase = S_DISPENSING
            ss.t_phase = now
            self.jdirty |= J_SESSION
