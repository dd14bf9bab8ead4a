# Persistence on the device's LittleFS: each key is one JSON file, written to a temporary file,
# closed (LittleFS commits on close) and renamed over the old one (atomic across power loss).
# The text is streamed into the file piece by piece: no copy of a whole state in the heap (at the
# outbox's cap that would be a 9 KB block, which a fragmented 64 KB heap may not have). The caller
# saves only what changed; a key that changes often can be given a minimum interval, and its
# latest value is written when the interval has passed (flash wear).
import json
import os

from tukar.clock import wrap_diff


class Store:
    def __init__(self, root):
        self.root = root
        self.when = {}  # key -> ticks of the last write
        self.pending = {}  # key -> value (or writer) waiting for its interval, or for a retry
        self.interval = {}  # key -> minimum ms between writes
        self.writes = 0
        self.errors = 0
        self.last_error = None
        self._open = open  # the simulator swaps this to inject a flash fault
        path = ""
        for part in root.split("/"):
            path = path + "/" + part if path or root.startswith("/") else part
            if part:
                try:
                    os.mkdir(path)
                except OSError:
                    pass  # exists

    def _path(self, key):
        return self.root + "/" + key + ".json"

    def limit(self, key, min_interval_ms):
        """Write `key` at most once per `min_interval_ms`."""
        self.interval[key] = min_interval_ms

    def load(self, key):
        """The stored value, or None when absent or unreadable (a torn write never replaces it)."""
        try:
            with self._open(self._path(key)) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            if not isinstance(e, OSError):
                self.errors += 1
                self.last_error = "%s: %r" % (key, e)
            return None

    def save(self, key, value, now_ms):
        """Persist `value`: a JSON-able value, or a writer, a callable that writes the JSON text
        piece by piece into the file it is given (called again for a retry, so it writes what is
        current then). Returns True when written now."""
        gap = self.interval.get(key, 0)
        if gap and key in self.when and wrap_diff(now_ms, self.when[key]) < gap:
            self.pending[key] = value
            return False
        self.pending.pop(key, None)
        return self._write(key, value, now_ms)

    def flush(self, now_ms, force=False):
        """Write pending keys whose interval has passed (all of them when `force`)."""
        for key in list(self.pending):
            if force or wrap_diff(now_ms, self.when.get(key, now_ms)) >= self.interval.get(key, 0):
                self._write(key, self.pending.pop(key), now_ms)

    def _write(self, key, value, now_ms):
        path = self._path(key)
        tmp = path + ".tmp"
        try:
            with self._open(tmp, "w") as f:
                if callable(value):
                    value(f)
                else:
                    json.dump(value, f)
            os.rename(tmp, path)
        except OSError as e:
            self.errors += 1
            self.last_error = "%s: %r" % (key, e)
            self.pending[key] = value  # retried by flush()
            return False
        self.when[key] = now_ms
        self.writes += 1
        return True

    def remove(self, key):
        self.delete(key + ".json")

    # Files of the store's directory other than the keys' JSON (the outbox's spill file).
    def open(self, name, mode="rb"):
        return self._open(self.root + "/" + name, mode)

    def delete(self, name):
        try:
            os.remove(self.root + "/" + name)
        except OSError:
            pass

    def names(self):
        try:
            return os.listdir(self.root)
        except OSError:
            return []
