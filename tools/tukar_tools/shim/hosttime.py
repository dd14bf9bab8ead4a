# The host shim's clock for the firmware's `tukar.clock`: MicroPython tick semantics over a
# clock the simulator can speed up, start near the wrap, or step by hand in tests.
import time as _time

_PERIOD = 1 << 30


class SimClock:
    """Milliseconds since an arbitrary start, scaled by `speed`, or stepped manually; and the
    wall clock that goes with it: `wall_start` (Unix seconds, default now) when the clock started."""

    def __init__(self, speed=1.0, start_ms=0, manual=False, wall_start=None):
        self.speed = speed
        self.manual = manual
        self._start_real = _time.monotonic()
        self._start_ms = start_ms
        self._manual_ms = start_ms
        self.wall_start = _time.time() if wall_start is None else float(wall_start)
        self._limit = None  # see lead()

    def _raw_ms(self):
        return self._start_ms + int((_time.monotonic() - self._start_real) * 1000 * self.speed)

    def now_ms(self):
        if self.manual:
            return self._manual_ms
        t = self._raw_ms()
        lim = self._limit
        return t if lim is None or t < lim else lim

    def lead(self, max_ms):
        """The simulation has moved its world to now: from here the clock runs at most max_ms
        further until the next call, and stands still there. Time a stalled host would have made
        the clock jump (a sped-up jump passes every deadline of the firmware at once) is dropped,
        never taken back: the clock stays monotonic. Returns the ms dropped."""
        raw = self._raw_ms()
        dropped = 0
        if self._limit is not None and raw > self._limit:
            dropped = raw - self._limit
            self._start_real += dropped / 1000 / self.speed
            raw = self._limit
        self._limit = raw + max_ms
        return dropped

    def advance(self, ms):
        """Manual clocks only: move time forward."""
        self._manual_ms += ms

    def sleep_ms(self, ms):
        if self.manual:
            self._manual_ms += ms
        else:
            _time.sleep(ms / 1000 / self.speed)


_clock = SimClock()


def install(clock):
    """Make `clock` the process-wide time source for the firmware."""
    global _clock
    _clock = clock
    return clock


def current():
    return _clock


def ticks_ms():
    return _clock.now_ms() & (_PERIOD - 1)


def sleep_ms(ms):
    _clock.sleep_ms(ms)


def asleep_ms(ms):
    """asyncio sleep of `ms` simulated milliseconds."""
    import asyncio
    return asyncio.sleep(ms / 1000 / _clock.speed)


def seconds(ms):
    """Real seconds that `ms` simulated milliseconds take (for asyncio.wait_for)."""
    return ms / 1000 / _clock.speed


def wall_s():
    """Unix time (float seconds) as the simulated device sees it: the clock's start date plus the
    simulated time since, so a sped-up day lasts a day on the cabinet's own clock too."""
    c = _clock
    return c.wall_start + (c.now_ms() - c._start_ms) / 1000
