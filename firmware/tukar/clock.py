# Millisecond ticks with MicroPython's wrapping semantics, on the device and on the host.
# On MicroPython these are the built-ins; on CPython the host shim's `hosttime` supplies the
# (possibly simulated, sped-up) clock and the pure functions below do the wrapping arithmetic.
TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD >> 1

try:
    from time import ticks_ms, ticks_diff, ticks_add, sleep_ms  # type: ignore[attr-defined]
except ImportError:  # CPython: host shim
    from hosttime import ticks_ms, sleep_ms, asleep_ms, seconds  # type: ignore[import-not-found]

    def ticks_diff(a, b):
        """a - b in ms, correct across the wrap while |a - b| < 2**29."""
        return ((a - b + _HALF) & TICKS_MAX) - _HALF

    def ticks_add(t, delta):
        return (t + delta) & TICKS_MAX
else:
    def asleep_ms(ms):
        """Awaitable sleep in ms (the simulator scales it with its speed)."""
        import asyncio
        return asyncio.sleep_ms(ms)  # type: ignore[attr-defined]

    def seconds(ms):
        """A duration for asyncio.wait_for (the simulator scales it with its speed)."""
        return ms / 1000


def wrap_diff(a, b):
    """Pure ticks_diff for code that must not depend on the platform (tests, the core's checks)."""
    return ((a - b + _HALF) & TICKS_MAX) - _HALF


def wrap_add(t, delta):
    return (t + delta) & TICKS_MAX
