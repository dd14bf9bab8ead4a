# Millisecond ticks with MicroPython's wrapping semantics. These are MicroPython's built-ins; on
# CPython the host supplies the same names (time.ticks_ms, asyncio.sleep_ms, ...) over its own,
# possibly sped-up, clock, so this module cannot tell where it runs.
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms  # type: ignore[attr-defined]

TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD >> 1

__all__ = ("sleep_ms", "ticks_add", "ticks_diff", "ticks_ms", "asleep_ms", "wait_for_ms",
           "wrap_diff", "wrap_add")


def asleep_ms(ms):
    """Awaitable sleep of ms milliseconds."""
    import asyncio  # here: the core imports this module on builds without asyncio
    return asyncio.sleep_ms(ms)  # type: ignore[attr-defined]


def wait_for_ms(awaitable, ms):
    """asyncio.wait_for with its time-out in milliseconds."""
    import asyncio
    return asyncio.wait_for_ms(awaitable, ms)  # type: ignore[attr-defined]


def wrap_diff(a, b):
    """Pure ticks_diff for code that must not depend on the platform (tests, the core's checks)."""
    return ((a - b + _HALF) & TICKS_MAX) - _HALF


def wrap_add(t, delta):
    return (t + delta) & TICKS_MAX
