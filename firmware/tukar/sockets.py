# The MQTT link's socket: every operation under the link's time limit (umqtt clears a socket's
# timeout whenever it calls setblocking(True); the guard re-arms it), bytes counted both ways, and
# when the broker last sent anything (the link's evidence of liveness); a payload with its `seq`
# spliced in as it is written. And the TLS context.
from tukar.clock import wrap_diff


class WithSeq:
    """A publish's payload: a JSON object's text (bytes) with `"seq":N` spliced in before its
    closing brace as the guard writes it. umqtt takes its len() and writes it with one
    sock.write(); no copy of the text is made (two copies of a 300-byte state a publish, in a
    fragmented heap, were the link's MemoryErrors)."""

    def __init__(self, text, seq):
        self.text = text
        self.tail = b'"seq":%d}' % seq if len(text) <= 2 else b',"seq":%d}' % seq

    def __len__(self):
        return len(self.text) - 1 + len(self.tail)

    def __bytes__(self):  # the host's umqtt stand-in builds the whole packet
        return self.text[:-1] + self.tail


class SocketGuard:
    """The client's socket, re-armed: umqtt's setblocking(True) becomes the link's time limit.
    It also counts bytes, notes when the broker last sent anything, and keeps the first byte of
    the packet being read (umqtt does not pass a PUBLISH's retain flag to the callback)."""

    def __init__(self, sock, raw, timeout_s, clock):
        self.sock = sock
        self.raw = raw  # the plain socket under TLS: MicroPython's SSL socket has no settimeout
        self.timeout_s = timeout_s
        self.clock = clock
        self.rx = 0
        self.tx = 0
        self.last_rx = clock.ticks_ms()
        self.header = 0
        self._byte = 0
        self.arm()

    def arm(self):
        s = self.sock
        if hasattr(s, "settimeout"):
            s.settimeout(self.timeout_s)
        elif self.raw is not None:
            s.setblocking(True)
            self.raw.settimeout(self.timeout_s)

    def read(self, n):
        data = self.sock.read(n)
        if data:
            self.rx += len(data)
            self.last_rx = self.clock.ticks_ms()
            if n == 1:
                self._byte = data[0]
        return data

    def write(self, buf, n=None):
        if isinstance(buf, WithSeq):
            t = buf.text
            self.sock.write(memoryview(t)[:len(t) - 1])
            r = self.sock.write(buf.tail)
        elif n is None:
            r = self.sock.write(buf)
        else:
            r = self.sock.write(buf, n)
        self.tx += n if n is not None else len(buf)
        return r

    def setblocking(self, flag):
        if flag:
            # umqtt calls this right after reading a packet's first byte: that byte is the header
            self.header = self._byte
            self.arm()
        else:
            self.sock.setblocking(False)

    def settimeout(self, t):
        self.arm()

    def close(self):
        self.sock.close()


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
