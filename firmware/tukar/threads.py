# Threads on the ESP32 port. `_thread.stack_size()` is global: a thread started after another
# inherits its size unless each start sets its own, so every start here names its size and puts
# the previous one back. A start that fails raises (out of memory for the stack): the caller's
# flag must not say "running" then, or nothing would ever start it again.
import _thread

from micropython import const

# Sizes (bytes), chosen per thread: the port's default is 4 KB plus a 1 KB margin.
LINK_STACK = const(8192)  # umqtt over plain TCP: connect, publish, and the JSON of a birth
LINK_STACK_TLS = const(16384)  # the TLS handshake's frames on top of that
NTP_STACK = const(4096)  # one DNS lookup and one UDP exchange
OTA_STACK = const(8192)  # a firmware download: DNS, HTTP over a socket, hashing, flash writes


def spawn(fn, stack):
    """Start fn() on a new thread with `stack` bytes of stack; raises when it cannot start."""
    prev = _thread.stack_size(stack)
    try:
        _thread.start_new_thread(fn, ())
    finally:
        _thread.stack_size(prev)
