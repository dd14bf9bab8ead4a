# The event outbox: events (and the latest telemetry) waiting for the broker, oldest first.
# The control loop adds, the MQTT link's thread takes and removes after PUBACK; a lock guards both.
# The app persists write_events() with the core's journal whenever `dirty` is set, then clears it.
#
# Bounds, decided here (mqtt.md: "when full, the oldest telemetry is dropped first, never a swap
# or safety event"):
# - At most `capacity_telemetry` telemetry items: a new one drops the oldest. Telemetry is QoS 0
#   and is neither persisted nor a reason to write flash.
# - `capacity_events` is the soft bound of the whole queue: an event added at it first drops the
#   oldest telemetry. With no telemetry left the event is kept anyway, up to the hard cap
#   (2 x capacity_events); at the hard cap the oldest routine event (ChargeStarted, ModeChanged,
#   Boot) makes room. Swap and safety events are never dropped: past the hard cap they are kept
#   and counted in `over_cap`. `saturated` (events at the soft bound) tells the app to refuse new
#   swaps (`busy`) until the broker takes events again, so a cabinet offline for a long time stops
#   producing the events it cannot keep rather than losing them.
#
# Heap. Each item is kept as the bytes it is published as (the link splices in its `seq`); an
# event keeps its `id` through retries and reboots because that text is what is persisted. Given a
# store, only the first `ram_events` events stay in RAM (the head): the app's persist task moves
# the newer ones to a spill file (spill(), just before it writes the state, which names the file's
# generation and the byte range owed) and reads them back as the link empties the head (refill()).
# Order: head, spill file, tail (what came since the last spill). docs/mqtt.md has the details.
import json

import _thread

_SEP = (",", ":")  # compact JSON: a tenth fewer bytes on a metered link


# CPython and MicroPython both take `separators` by keyword (MICROPY_PY_JSON_SEPARATORS is on by
# default in py/mpconfig.h, so in the stock ESP32 image too).
def dump(obj, f):
    """dumps() streamed into file f."""
    return json.dump(obj, f, separators=_SEP)  # type: ignore  (missing from the ESP32 stubs)


def dumps(obj):
    return json.dumps(obj, separators=_SEP)


EVENT = 0
TELEMETRY = 1

# Routine events: the only ones dropped past the hard cap.
ROUTINE = ("ChargeStarted", "ModeChanged", "Boot")

# Spill file lines: a tag byte, the item's text, "\n". In RAM each spilled line owed has its tag
# in `_flags`, or _GONE once dropped.
_EV = 69  # "E": an event
_RT = 82  # "R": a routine event
_TM = 84  # "T": telemetry (not read back after a reboot: telemetry is not persisted)
_GONE = 0
SPILL = "outbox."  # the spill file's name, before its generation number


class _Gone(Exception):
    """The spill file holds less than the range the state names, or is not there."""


class Outbox:
    def __init__(self, capacity_events=64, capacity_telemetry=4, store=None, ram_events=4,
                 hold=False):
        self.capacity_events = capacity_events
        self.hard_cap = 2 * capacity_events
        self.capacity_telemetry = capacity_telemetry
        self.ram_events = ram_events
        self._store = store  # tukar.store.Store: where the spill file lives; None: all in RAM
        self._items = []  # the head: [kind, routine, text bytes], oldest first
        self._tail = []  # items after the spilled ones (only while lines are spilled)
        self._flags = bytearray()  # tags of the spilled lines owed, from index _fi on
        self._fi = 0
        self._gen = 0  # the spill file's generation (0: none yet)
        self._read = 0  # byte offset of the first line owed
        self._end = 0  # byte offset past the last line written
        self._rewrite = False  # the file holds more than _end (a failed append): start a new one
        self._stale = []  # generations to delete once a state without them is written
        self._n_events = 0
        self._n_telemetry = 0
        # hold: an event is published only once a state that holds it is on flash (persisted()),
        # so the broker never has an event a power cut then takes from the cabinet. _unsure: the
        # newest events not yet written so
        self._hold = hold
        self._unsure = 0
        self._lock = _thread.allocate_lock()
        self.dirty = False  # the persisted part changed since the app last saved it
        self.dropped_telemetry = 0
        self.dropped_routine = 0
        self.over_cap = 0
        self.spill_errors = 0
        self.lost = 0  # events a damaged or missing spill file no longer held

    def __len__(self):
        return self._n_events + self._n_telemetry

    events = property(lambda self: self._n_events)

    @property
    def saturated(self):
        return self._n_events >= self.capacity_events

    def _spilled(self):
        return self._fi < len(self._flags)

    # -- control loop side ----------------------------------------------------------------
    def add_event(self, ev):
        text = dumps(ev).encode()
        with self._lock:
            if len(self) >= self.capacity_events and self._n_telemetry:
                self._drop_kind(TELEMETRY, False)
            if self._n_events >= self.hard_cap:
                if not self._drop_kind(EVENT, True):
                    self.over_cap += 1
            item = [EVENT, ev.get("type") in ROUTINE, text]
            (self._tail if self._spilled() else self._items).append(item)
            self._n_events += 1
            if self._hold:
                self._unsure += 1
            self.dirty = True

    def add_telemetry(self, t):
        text = dumps(t).encode()
        with self._lock:
            if self._n_telemetry >= self.capacity_telemetry or len(self) >= self.capacity_events:
                if not self._drop_kind(TELEMETRY, False):
                    return  # full of events: this telemetry is the one dropped
            (self._tail if self._spilled() else self._items).append([TELEMETRY, False, text])
            self._n_telemetry += 1

    def _drop_kind(self, kind, routine):
        """Drop the oldest item of `kind` (a routine one, if `routine`): in the head, the spilled
        lines, then the tail. Lock held."""
        want = _TM if kind == TELEMETRY else _RT  # (only routine events are ever dropped)
        for items in (self._items, None, self._tail):
            if items is None:
                for i in range(self._fi, len(self._flags)):
                    if self._flags[i] == want:
                        self._flags[i] = _GONE  # refill() skips it
                        return self._dropped(kind)
                continue
            for i in range(len(items)):
                it = items[i]
                if it[0] == kind and (not routine or it[1]):
                    items.pop(i)
                    return self._dropped(kind)
        if kind == TELEMETRY:
            self.dropped_telemetry += 1
        return False

    def _dropped(self, kind):
        if kind == TELEMETRY:
            self._n_telemetry -= 1
            self.dropped_telemetry += 1
        else:
            self._n_events -= 1
            if self._unsure > self._n_events:
                self._unsure = self._n_events  # (a dropped durable one leaves it: held longer)
            self.dropped_routine += 1
            self.dirty = True
        return True

    # -- link side ------------------------------------------------------------------------
    def peek(self):
        """The oldest item, [kind, routine, text bytes], or None. It stays until done(item). An
        event not yet on flash (hold) is not offered, nor anything after it."""
        with self._lock:
            if not self._items:
                return None
            it = self._items[0]
            if it[0] == EVENT and self._n_events <= self._unsure:
                return None  # the oldest event is among the newest, unwritten ones
            return it

    def done(self, item):
        """The broker has the item (PUBACK, or written for QoS 0): remove it if still queued."""
        with self._lock:
            items = self._items
            for i in range(len(items)):
                if items[i] is item:
                    items.pop(i)
                    if item[0] == EVENT:
                        self._n_events -= 1
                        self.dirty = True
                    else:
                        self._n_telemetry -= 1
                    return

    # -- the spill file (the app's persist task: flash I/O) ---------------------------------
    def _name(self, gen):
        return "%s%d" % (SPILL, gen)

    def _file(self, mode, gen=None):  # (never without a store: nothing is spilled then)
        return self._store.open(self._name(self._gen if gen is None else gen), mode)  # type: ignore

    def wants_refill(self):
        """Spilled lines are owed and the head runs low: refill() has work."""
        return self._spilled() and len(self._items) < (self.ram_events + 1) // 2

    def spill(self):
        """Move the events past the head's `ram_events` (and the tail) into the spill file. False
        on a flash error: nothing moved (the app then persists nothing either)."""
        if self._store is None:
            return True
        with self._lock:
            if self._spilled():
                move = list(self._tail)
            else:
                move = []
                n = 0
                items = self._items
                for i in range(len(items)):
                    if items[i][0] == EVENT:
                        n += 1
                        if n > self.ram_events:
                            move = items[i:]
                            break
        if not move:
            return True
        gen = self._gen
        fresh = not self._spilled() or self._rewrite
        try:
            if fresh:
                gen += 1
            f = self._file("wb" if fresh else "ab", gen)
            with f:
                size = 0
                if fresh and self._spilled():  # what is still owed, copied into the new file
                    size = self._copy(f)
                for it in move:
                    f.write(b"T" if it[0] == TELEMETRY else (b"R" if it[1] else b"E"))
                    f.write(it[2])
                    f.write(b"\n")
                    size += len(it[2]) + 2
        except _Gone:
            self._forsake()
            return self.spill()  # what the head holds past ram_events, into a new file
        except OSError:
            self.spill_errors += 1
            if not fresh:
                self._rewrite = True  # the append may have left part of a line behind
            return False
        with self._lock:
            if fresh:
                if self._gen:
                    self._stale.append(self._gen)
                self._gen = gen
                self._flags = self._flags[self._fi:]
                self._fi = 0
                self._read = 0
                self._end = size
                self._rewrite = False
            else:
                self._end += size
            for it in move:  # a line each, in the order written
                self._flags.append(self._unqueue(it))
            self.dirty = True
        return True

    def _unqueue(self, it):
        """A moved item out of the head or tail: its tag; _GONE if the link took it while the file
        was written (its line is then skipped, not counted and published twice). Lock held."""
        for items in (self._items, self._tail):
            for i in range(len(items)):
                if items[i] is it:
                    items.pop(i)
                    return _TM if it[0] == TELEMETRY else (_RT if it[1] else _EV)
        return _GONE

    def _copy(self, dst):
        """The lines still owed, from the current file into dst; returns their size."""
        with self._file("rb") as src:
            src.seek(self._read)
            left = self._end - self._read
            while left > 0:
                chunk = src.read(128 if left > 128 else left)
                if not chunk:
                    raise _Gone()
                dst.write(chunk)
                left -= len(chunk)
        return self._end - self._read

    def refill(self):
        """Read spilled lines back into the head, up to `ram_events` events. False on a flash
        error (tried again on the next call)."""
        if not self.wants_refill():
            return True
        try:
            with self._file("rb") as f:
                f.seek(self._read)
                while self._spilled() and len(self._items) < self.ram_events:
                    line = f.readline()
                    if len(line) < 2 or line[-1] != 10:
                        raise _Gone()
                    tag = self._flags[self._fi]
                    with self._lock:
                        if tag != _GONE:
                            self._items.append([TELEMETRY if tag == _TM else EVENT, tag == _RT,
                                                line[1:-1]])
                        self._fi += 1
                        self._read += len(line)
        except (OSError, _Gone) as e:
            self.spill_errors += 1
            if isinstance(e, _Gone) or e.args and e.args[0] == 2:  # ENOENT
                self._forsake()
            return False
        with self._lock:
            if not self._spilled():  # every line read: the tail follows the head
                self._items.extend(self._tail)
                self._tail = []
                self._flags = bytearray()
                self._fi = 0
                self._stale.append(self._gen)
            self.dirty = True  # the state's read offset moved
        return True

    def _forsake(self):
        """A spill file short of its range, or gone: what it lacks is `lost`; the tail follows."""
        with self._lock:
            gone = 0
            for i in range(self._fi, len(self._flags)):
                f = self._flags[i]
                if f == _TM:
                    self._n_telemetry -= 1
                elif f != _GONE:
                    gone += 1
            self._n_events -= gone
            self.lost += gone
            self._items.extend(self._tail)
            self._tail = []
            self._flags = bytearray()
            self._fi = 0
            self._rewrite = False
            if self._gen:
                self._stale.append(self._gen)
            self.dirty = True

    def spill_ref(self):
        """[generation, first byte owed, end] of the spill file for the persisted state, or None."""
        return [self._gen, self._read, self._end] if self._spilled() else None

    def persisted(self, complete=True, written=True):
        """A state written: spill files it no longer names are deleted; with `complete` (its spill
        succeeded too) every event added before it is on flash, and may be published. Not
        `written` (the flash failed): the events go out unwritten, nothing is held."""
        if complete:
            with self._lock:
                self._unsure = 0
        if not written:
            return
        stale = self._stale
        while stale and self._store is not None:
            gen = stale.pop()
            if gen != self._gen or not self._spilled():
                self._store.delete(self._name(gen))

    # -- persistence ----------------------------------------------------------------------
    def event_texts(self):
        """The head's events, as the texts they are published as, oldest first."""
        with self._lock:
            return [it[2] for it in self._items if it[0] == EVENT]

    def write_events(self, f):
        """The head's events, streamed into file `f` as a JSON array, one text at a time (the
        spilled ones are in the spill file, which spill_ref() names)."""
        f.write("[")
        sep = ""
        for t in self.event_texts():
            f.write(sep + t.decode())
            sep = ","
        f.write("]")

    def snapshot(self):
        """Every event still owed to the broker, as dicts, oldest first (tests, tools)."""
        out = [json.loads(t) for t in self.event_texts()]
        if self._spilled():
            with self._file("rb") as f:
                f.seek(self._read)
                for i in range(self._fi, len(self._flags)):
                    line = f.readline()
                    if self._flags[i] in (_EV, _RT):
                        out.append(json.loads(line[1:-1]))
        out.extend(json.loads(it[2]) for it in self._tail if it[0] == EVENT)
        return out

    def restore(self, events, spill=None):
        """Put back persisted events (dicts or JSON text) and the spill file they name ahead of
        anything added since boot. Spill files the state does not name are deleted."""
        items = []
        for ev in events or ():
            try:
                if isinstance(ev, (str, bytes)):
                    ev = json.loads(ev)  # type: ignore[arg-type]
                if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
                    continue  # a damaged entry cannot be published with a stable id
                items.append([EVENT, ev.get("type") in ROUTINE, dumps(ev).encode()])
            except Exception:
                continue
        flags, gen, read, end, rewrite = self._scan(spill)
        with self._lock:
            later = self._items
            self._items = items
            self._n_events += len(items)
            if flags:
                self._flags, self._fi, self._gen, self._read, self._end, self._rewrite = \
                    flags, 0, gen, read, end, rewrite
                self._tail = later + self._tail
                self._n_events += sum(1 for f in flags if f != _GONE)
            else:
                self._items.extend(later)
        self._sweep()

    def _scan(self, spill):
        """The tags of the lines a persisted spill reference names, checked line by line."""
        try:
            gen, read, end = spill
            if not (isinstance(gen, int) and isinstance(read, int) and isinstance(end, int)) \
                    or self._store is None or not 0 <= read < end:
                raise ValueError
        except (TypeError, ValueError):
            return None, 0, 0, 0, False
        flags = bytearray()
        try:
            with self._file("rb", gen) as f:
                f.seek(read)
                at = read
                while at < end:
                    line = f.readline()
                    if len(line) < 4 or line[-1] != 10 or line[1] != 123 or line[-2] != 125:
                        break  # not a line this outbox wrote: what is before it is kept
                    tag = line[0]
                    flags.append(tag if tag in (_EV, _RT) else _GONE)
                    at += len(line)
                more = f.read(1)
        except OSError:
            self.spill_errors += 1  # the events it held cannot be read back
            return None, 0, 0, 0, False
        return flags, gen, read, at, bool(more) or at != end

    def _sweep(self):
        """Delete the spill files of other generations (a power cut's); new ones start above."""
        store = self._store
        if store is None:
            return
        keep = self._gen if self._spilled() else -1
        for name in store.names():
            if name.startswith(SPILL) and name[7:].isdigit() and int(name[7:]) != keep:
                store.delete(name)
                if keep < 0:
                    self._gen = max(self._gen, int(name[7:]))
