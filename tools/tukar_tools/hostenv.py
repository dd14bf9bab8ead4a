"""What MicroPython has built in, supplied on CPython under the same names, so that firmware/ runs
unmodified on the host and never imports host code: `time.ticks_ms`, `ticks_diff`, `ticks_add` and
`sleep_ms` over the simulator's clock (hosttime: real, sped up, or stepped by hand),
`asyncio.sleep_ms` and `asyncio.wait_for_ms` scaled with that clock's speed, `_thread.stack_size`
with MicroPython's range, and the `micropython` module (`const`, `schedule`). `install()` also puts firmware/ and the shim on sys.path."""
import asyncio
import os
import pathlib
import sys
import time
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]
# TUKAR_FIRMWARE: another tree holding tukar/ (`make mutate` points it at mutmut's mutated copy).
FIRMWARE = pathlib.Path(os.environ.get("TUKAR_FIRMWARE") or ROOT / "firmware")
SHIM = ROOT / "tools" / "tukar_tools" / "shim"
_PERIOD = 1 << 30
_HALF = _PERIOD >> 1


def _ticks_diff(a, b):
    return ((a - b + _HALF) & (_PERIOD - 1)) - _HALF


def _ticks_add(t, delta):
    return (t + delta) & (_PERIOD - 1)


def _micropython():
    m = types.ModuleType("micropython")
    m.const = lambda x: x
    m.schedule = lambda fn, arg: fn(arg)
    m.alloc_emergency_exception_buf = lambda n: None
    return m


_stack = [0]
stacks_asked = []  # every size the firmware asked for, newest last (the last 100)


def _stack_size(size=None):
    """MicroPython's `_thread.stack_size`: any size is taken and the previous one returned. The
    host's threads keep CPython's own stacks (its minimum is 32 KB); the sizes are recorded."""
    prev = _stack[0]
    if size is not None:
        _stack[0] = size
        stacks_asked.append(size)
        del stacks_asked[:-100]
    return prev


def install():
    """Idempotent: the host-side names, and firmware/ and the shim first on sys.path."""
    for p in (FIRMWARE, SHIM):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    if getattr(time, "ticks_ms", None) is not None:
        return
    import hosttime

    def sleep_ms_async(ms):
        return asyncio.sleep(ms / 1000 / hosttime.current().speed)

    def wait_for_ms(aw, ms):
        return asyncio.wait_for(aw, ms / 1000 / hosttime.current().speed)

    import _thread
    _thread.stack_size = _stack_size
    time.ticks_ms = hosttime.ticks_ms
    time.ticks_diff = _ticks_diff
    time.ticks_add = _ticks_add
    time.sleep_ms = hosttime.sleep_ms
    asyncio.sleep_ms = sleep_ms_async
    asyncio.wait_for_ms = wait_for_ms
    if "micropython" not in sys.modules:
        sys.modules["micropython"] = _micropython()


install()
