"""Host shim of MicroPython's frozen `umqtt.simple`: the same API and the same failure behaviour,
over a real TCP connection (CPython sockets, TLS through `ssl`), so the firmware's MQTT link runs
unchanged against a real broker.

Behaviour kept on purpose, because the link must survive it on the device:
- `connect(timeout=...)` sets the socket time limit for connect, TLS handshake and CONNACK, and
  leaves it set; a refused CONNACK raises MQTTException(return code).
- `wait_msg()` calls `sock.setblocking(True)` after the first byte, which clears any time limit.
- `publish(qos=1)` and `subscribe()` wait for their PUBACK / SUBACK with no time limit of their own,
  handing any PUBLISH that arrives meanwhile to the callback.
- PINGRESP is consumed silently (`wait_msg` returns None for it, as for "no data").
- Network faults are OSError (a closed connection is OSError(-1)); QoS 2 is not supported.
- The callback is called as `cb(topic, msg)`: the retain flag is not passed.
- `sock` is a MicroPython-like stream: read(n), write(buf, n), setblocking, settimeout, close.
"""
import socket
import ssl as _ssl
import struct
import tempfile


class MQTTException(Exception):
    pass


class _Stream:
    """A CPython socket seen through MicroPython's stream API."""

    def __init__(self, sock):
        self.sock = sock  # the CPython socket (an ssl.SSLSocket under TLS)

    def read(self, n):
        """Up to n bytes; blocking: until n or EOF; non-blocking: None when nothing is there."""
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (BlockingIOError, _ssl.SSLWantReadError):
                return buf or None
            except socket.timeout as e:
                raise OSError(110, "ETIMEDOUT") from e
            if not chunk:
                break
            buf += chunk
        return buf

    def write(self, buf, n=None):
        data = bytes(buf if n is None else memoryview(buf)[:n])
        try:
            self.sock.sendall(data)
        except socket.timeout as e:
            raise OSError(110, "ETIMEDOUT") from e
        return len(data)

    def setblocking(self, flag):
        self.sock.setblocking(flag)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _context(params):
    """An SSLContext from umqtt's legacy ssl_params (MicroPython's ssl.wrap_socket keywords)."""
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    reqs = params.get("cert_reqs", _ssl.CERT_NONE)
    ctx.check_hostname = reqs == _ssl.CERT_REQUIRED and bool(params.get("server_hostname"))
    ctx.verify_mode = _ssl.CERT_REQUIRED if reqs == _ssl.CERT_REQUIRED else _ssl.CERT_NONE
    ca = params.get("cadata")
    if ca:
        ctx.load_verify_locations(cadata=ca.decode() if isinstance(ca, (bytes, bytearray)) else ca)
    cert, key = params.get("cert"), params.get("key")
    if cert:
        ctx.load_cert_chain(*[_path(x) for x in (cert, key or cert)])
    return ctx


def _path(pem):
    """CPython loads client certificates from files only; MicroPython takes the bytes."""
    if isinstance(pem, str):
        return pem
    f = tempfile.NamedTemporaryFile(prefix="tukar-tls-", suffix=".pem", delete=False)
    f.write(pem)
    f.close()
    return f.name


def _mqtt_str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + bytes(s)


def _remaining(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=None, ssl_params={}):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None
        self.server = server
        self.port = port
        self.ssl = ssl
        self.ssl_params = dict(ssl_params)
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2
        assert topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def _open(self, timeout):
        """TCP (and TLS) to the broker as a stream; the benchmark swaps in a counting one."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        try:
            raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
            if self.ssl is True:
                params = dict(self.ssl_params)
                hostname = params.pop("server_hostname", None)
                raw = _context(dict(params, server_hostname=hostname)).wrap_socket(
                    raw, server_hostname=hostname)
            elif self.ssl:
                raw = self.ssl.wrap_socket(raw, server_hostname=self.server)
        except socket.timeout as e:
            raw.close()
            raise OSError(110, "ETIMEDOUT") from e
        except OSError:
            raw.close()
            raise
        return _Stream(raw)

    def connect(self, clean_session=True, timeout=None):
        self.sock = self._open(timeout)
        flags = (2 if clean_session else 0)
        payload = _mqtt_str(self.client_id)
        if self.lw_topic:
            flags |= 4 | (self.lw_qos & 3) << 3 | (1 if self.lw_retain else 0) << 5
            payload += _mqtt_str(self.lw_topic) + _mqtt_str(self.lw_msg)
        if self.user:
            flags |= 0xC0
            payload += _mqtt_str(self.user) + _mqtt_str(self.pswd or b"")
        assert self.keepalive < 65536
        var = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", self.keepalive)
        body = var + payload
        self.sock.write(b"\x10" + _remaining(len(body)) + body)
        resp = self.sock.read(4)
        if not resp or len(resp) < 4:
            raise OSError(-1, "connection closed before CONNACK")
        assert resp[0] == 0x20 and resp[1] == 0x02
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.write(b"\xe0\x00")
        self.sock.close()

    def ping(self):
        self.sock.write(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        assert qos in (0, 1), "QoS 2 is not supported"
        if isinstance(msg, str):
            msg = msg.encode()
        var = _mqtt_str(topic)
        pid = 0
        if qos:
            self.pid = self.pid % 65535 + 1
            pid = self.pid
            var += struct.pack("!H", pid)
        n = len(var) + len(msg)
        assert n < 2097152
        self.sock.write(bytes((0x30 | qos << 1 | (1 if retain else 0),)) + _remaining(n) + var
                        + bytes(msg))
        if qos == 1:
            while True:
                if self.wait_msg() == 0x40:
                    size = self.sock.read(1)
                    assert size == b"\x02"
                    got = self.sock.read(2)
                    if got and len(got) == 2 and (got[0] << 8 | got[1]) == pid:
                        return

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self.pid = self.pid % 65535 + 1
        body = struct.pack("!H", self.pid) + _mqtt_str(topic) + bytes((qos,))
        self.sock.write(b"\x82" + _remaining(len(body)) + body)
        while True:
            if self.wait_msg() == 0x90:
                resp = self.sock.read(4)
                if not resp or len(resp) < 4:
                    raise OSError(-1, "connection closed in SUBACK")
                assert resp[1] == self.pid >> 8 and resp[2] == self.pid & 0xFF
                if resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def wait_msg(self):
        res = self.sock.read(1)
        self.sock.setblocking(True)  # as on the device: this clears any socket time limit
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":  # PINGRESP
            size = self.sock.read(1)
            if not size:
                raise OSError(-1)
            assert size[0] == 0
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        size = self._recv_len()
        head = self.sock.read(2)
        if not head or len(head) < 2:
            raise OSError(-1)
        tlen = head[0] << 8 | head[1]
        topic = self.sock.read(tlen)
        size -= tlen + 2
        pid = 0
        if op & 6:
            p = self.sock.read(2)
            if not p or len(p) < 2:
                raise OSError(-1)
            pid = p[0] << 8 | p[1]
            size -= 2
        msg = self.sock.read(size) if size else b""
        if msg is None or len(msg) < size:
            raise OSError(-1)
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.write(struct.pack("!BBH", 0x40, 2, pid))
        elif op & 6 == 4:
            assert 0, "QoS 2 is not supported"
        return op

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()

    def _recv_len(self):
        n = 0
        sh = 0
        while True:
            b = self.sock.read(1)
            if not b:
                raise OSError(-1)
            n |= (b[0] & 0x7F) << sh
            if not b[0] & 0x80:
                return n
            sh += 7
