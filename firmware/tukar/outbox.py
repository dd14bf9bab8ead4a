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
# Items are stored as JSON text (a third of a dict's heap on MicroPython); an event keeps its `id`
# through retries and reboots because the text is what is persisted and republished.
import json

import _thread

_SEP = (",", ":")  # compact JSON: a tenth fewer bytes on a metered link


def _separators_by():
    try:
        json.dumps(0, _SEP)  # MicroPython (when built with separators) takes them by position
        return 1
    except TypeError:
        pass
    try:
        json.dumps(0, separators=_SEP)  # CPython by keyword only
        return 2
    except TypeError:
        return 0  # a build without them: the default ", " and ": "


_BY = _separators_by()


def dump(obj, f):
    """dumps() streamed into file f."""
    if _BY == 2:
        return json.dump(obj, f, separators=_SEP)  # type: ignore  (CPython)
    if _BY == 1:
        try:
            return json.dump(obj, f, _SEP)  # type: ignore  (MicroPython takes them by position)
        except TypeError:  # a build whose dump() lacks them: raised before anything is written
            pass
    return json.dump(obj, f)


def dumps(obj):
    if _BY == 1:
        return json.dumps(obj, _SEP)
    if _BY == 2:
        return json.dumps(obj, separators=_SEP)
    return json.dumps(obj)


EVENT = 0
TELEMETRY = 1

# Routine events: the only ones dropped past the hard cap.
ROUTINE = ("ChargeStarted", "ModeChanged", "Boot")


class Outbox:
    def __init__(self, capacity_events=64, capacity_telemetry=4):
        self.capacity_events = capacity_events
        self.hard_cap = 2 * capacity_events
        self.capacity_telemetry = capacity_telemetry
        self._items = []  # [kind, type, text], oldest first
        self._n_events = 0
        self._n_telemetry = 0
        self._lock = _thread.allocate_lock()
        self.dirty = False  # the persisted part changed since the app last saved it
        self.dropped_telemetry = 0
        self.dropped_routine = 0
        self.over_cap = 0

    def __len__(self):
        return len(self._items)

    @property
    def events(self):
        return self._n_events

    @property
    def saturated(self):
        return self._n_events >= self.capacity_events

    # -- control loop side ----------------------------------------------------------------
    def add_event(self, ev):
        text = dumps(ev)
        with self._lock:
            if len(self._items) >= self.capacity_events and self._n_telemetry:
                self._drop_kind(TELEMETRY, None)
            if self._n_events >= self.hard_cap:
                if not self._drop_kind(EVENT, ROUTINE):
                    self.over_cap += 1
            self._items.append([EVENT, ev.get("type"), text])
            self._n_events += 1
            self.dirty = True

    def add_telemetry(self, t):
        text = dumps(t)
        with self._lock:
            if self._n_telemetry >= self.capacity_telemetry or \
                    len(self._items) >= self.capacity_events:
                if not self._drop_kind(TELEMETRY, None):
                    return  # full of events: this telemetry is the one dropped
            self._items.append([TELEMETRY, None, text])
            self._n_telemetry += 1

    def _drop_kind(self, kind, types):
        """Drop the oldest item of `kind` (and of one of `types`, if given). Lock held."""
        items = self._items
        for i in range(len(items)):
            it = items[i]
            if it[0] == kind and (types is None or it[1] in types):
                items.pop(i)
                if kind == TELEMETRY:
                    self._n_telemetry -= 1
                    self.dropped_telemetry += 1
                else:
                    self._n_events -= 1
                    self.dropped_routine += 1
                    self.dirty = True
                return True
        if kind == TELEMETRY:
            self.dropped_telemetry += 1
        return False

    # -- link side ------------------------------------------------------------------------
    def peek(self):
        """The oldest item, [kind, type, text], or None. It stays until done(item)."""
        with self._lock:
            return self._items[0] if self._items else None

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

    # -- persistence ----------------------------------------------------------------------
    def event_texts(self):
        """The events still owed to the broker, as the JSON texts they are published as, oldest
        first (a new list of the same strings: nothing is copied or parsed)."""
        with self._lock:
            return [it[2] for it in self._items if it[0] == EVENT]

    def write_events(self, f):
        """The events owed, streamed into file `f` as a JSON array, one text at a time."""
        f.write("[")
        sep = ""
        for t in self.event_texts():
            f.write(sep)
            f.write(t)
            sep = ","
        f.write("]")

    def snapshot(self):
        """The events still owed to the broker, as dicts, oldest first (tests, tools)."""
        return [json.loads(t) for t in self.event_texts()]

    def restore(self, events):
        """Put back persisted events (dicts or JSON text) ahead of anything added since boot."""
        items = []
        for ev in events or ():
            try:
                if isinstance(ev, str):
                    ev = json.loads(ev)
                if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
                    continue  # a damaged entry cannot be published with a stable id
                items.append([EVENT, ev.get("type"), dumps(ev)])
            except Exception:
                continue
        with self._lock:
            self._items = items + self._items
            self._n_events += len(items)
