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
