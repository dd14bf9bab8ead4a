# TLS for the link: the handshake gate and the socket wrapper umqtt takes as `ssl`. Imported by
# tukar.link only when the broker is reached over TLS: a cabinet on plain MQTT keeps neither class
# (224 bytes of heap, with their methods more) nor the `ssl` import.
from tukar.clock import wrap_diff


class HandshakeGate:
    """A TLS handshake computes with the GIL held, 1.2 to 2 s on an ESP32: for that long the
    control loop cannot run. So the link thread asks first (begin), and the control loop grants
    it only when the cabinet can stand still: no swap session and no lock in motion, with every
    charger switched off at the hardware until the handshake ends (end). No rule can then be
    broken while the loop stands still. A cabinet that stays busy longer than `wait_ms` fails the
    connection attempt; the link backs off and asks again."""

    def __init__(self, clock, wait_ms=10000):
        self.clock = clock
        self.wait_ms = wait_ms
        self.wanted = False  # link thread -> control loop
        self.granted = False  # control loop -> link thread
        self.count = 0
        self.deferred = 0  # requests the cabinet made wait
        self.put_off = 0  # requests that timed out
        self.last_ms = 0  # the last handshake's duration, and the longest
        self.max_ms = 0
        self._t = 0

    def begin(self):
        clock = self.clock
        t0 = clock.ticks_ms()
        self.wanted = True
        waited = False
        while not self.granted:
            if wrap_diff(clock.ticks_ms(), t0) > self.wait_ms:
                self.wanted = False
                self.put_off += 1
                raise OSError("TLS handshake put off: the cabinet stayed busy")
            waited = True
            clock.sleep_ms(20)
        if waited:
            self.deferred += 1
        self._t = clock.ticks_ms()

    def end(self):
        d = wrap_diff(self.clock.ticks_ms(), self._t)
        self.last_ms = d
        if d > self.max_ms:
            self.max_ms = d
        self.count += 1
        self.wanted = False
        self.granted = False


class TlsWrap:
    """The `ssl` argument umqtt gets: wraps the socket with the context, keeping the raw socket;
    the handshake waits for the control loop's grant when a gate is given."""

    def __init__(self, ctx, gate=None):
        self.ctx = ctx
        self.raw = None
        self.gate = gate

    def wrap_socket(self, sock, server_hostname=None):
        self.raw = sock
        g = self.gate
        if g is None:
            return self.ctx.wrap_socket(sock, server_hostname=server_hostname)
        g.begin()
        try:
            return self.ctx.wrap_socket(sock, server_hostname=server_hostname)
        finally:
            g.end()


def tls_context(cfg):
    """A verifying client context from cfg: `ca` (PEM), optional `cert` and `key` (bytes on the
    device; file paths on both)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # type: ignore[attr-defined]
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
    ca = cfg.get("ca")
    if ca:
        try:
            ctx.load_verify_locations(cadata=ca)
        except Exception:  # CPython takes PEM as str only
            pem = ca.decode() if isinstance(ca, bytes) else ca
            ctx.load_verify_locations(cadata=pem)  # type: ignore[arg-type]
    if cfg.get("cert"):
        ctx.load_cert_chain(cfg["cert"], cfg.get("key") or cfg["cert"])
    return ctx
