# The core's events and its edge to the shell: emitting an event, and what the shell tells the
# core (hold, connected) and takes from it after a tick (events, dirty states, the journal's
# changed sections). Core derives from Edge (`self` is the Core); the shell never writes a core
# field itself.
# pyright: reportAttributeAccessIssue=false
from tukar import slot as sl
from tukar.states import J_COUNTERS


class Edge:
    # == events ============================================================================
    def up_ms(self):
        return self.up_s * 1000 + self.up_rem

    def _emit(self, etype, fields):
        """`fields` (a dict of the caller's own, made for this event) becomes the event: not copied
        into another, which a burst of events would hold twice on the heap."""
        self.event_n += 1
        ev = fields
        ev["id"] = "%s-%d-%d" % (self.id, self.boot, self.event_n)
        ev["type"] = etype
        ev["ts"] = self.wall
        ev["up_ms"] = self.up_ms()
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

    # == the shell's edge: what it is told, what it takes ======================================
    def hold(self, reason):
        """New swaps are refused (`busy`, with `reason`) until hold(None): the shell's outbox is
        full during a long broker outage, and swap events must never be dropped."""
        self.hold_swaps = reason

    def connected(self, bdseq):
        """A new broker connection (`bdseq`): persisted with the counters, and every state is to be
        published afresh (the birth repeats the last texts, minutes old after an outage)."""
        if self.counters.get("bdseq") == bdseq:
            return False
        self.counters["bdseq"] = bdseq
        self.jdirty |= J_COUNTERS
        self.dirty |= (2 << self.n_slots) - 1
        return True

    def take_events(self, sink):
        """Hand every event emitted since the last call to sink(event), oldest first. Each event
        is let go as it is handed over, so a burst (ten ChargeStopped in one tick) is not held as
        dicts and as the outbox's texts at once. If sink raises, the events it took are gone from
        here and the rest stay, for the next call."""
        ev = self.events
        i = 0
        try:
            while i < len(ev):
                e = ev[i]
                ev[i] = None
                try:
                    sink(e)
                except BaseException:
                    ev[i] = e
                    raise
                i += 1
        finally:
            if i:  # (a slice is an allocation: none in a tick without events)
                del ev[:i]

    def take_dirty(self):
        """The states to publish (bit 0 the cabinet, bit n slot n) since the last call."""
        d = self.dirty
        self.dirty = 0
        return d

    def take_rebirth(self):
        """True once after a `rebirth` command."""
        r = self.rebirth
        self.rebirth = False
        return r

    def take_journal(self):
        """The journal sections changed since the last call (0: nothing to persist)."""
        j = self.jdirty
        self.jdirty = 0
        return j

    def report(self, etype, fields):
        """An event the shell has to tell (a firmware update's): emitted as the core's own are."""
        return self._emit(etype, fields)

    def report_fault(self, code, severity, cleared=False):
        """A cabinet-level fault found by the shell (a task that crashed, flash that fails)."""
        self._emit("FaultCleared" if cleared else "Fault",
                   {"slot": None, "code": code, "severity": severity})
