# The MQTT link: everything that crosses the wire, in its own thread. umqtt.simple blocks (connect,
# TLS handshake, a QoS 1 publish waiting for PUBACK), so the thread owns the client and the control
# loop only hands over, through a lock held for list operations, never for I/O:
#   post_state / post_telemetry / post_ack / request_rebirth / stop   (control loop -> link)
#   take_commands, connected, bdseq, stats, last_error                 (link -> control loop)
# The link publishes what it is given and queues raw command payloads; the gate and the core
# run in the control loop.
#
# Liveness is the link's own: every socket operation has a time limit (umqtt clears it whenever it
# calls setblocking(True): the socket is wrapped so that call re-arms it), a ping every keepalive/2,
# and no byte from the broker for keepalive x 1.5 means the connection is dead: it is torn down
# without DISCONNECT (the broker publishes the Last Will) and rebuilt after an exponential back-off
# with jitter, capped at 60 s. Nothing else reconnects.
import random
import time

import _thread
from micropython import const

from tukar.clock import wrap_add, wrap_diff
from tukar.outbox import EVENT, dumps
from tukar.sockets import SocketGuard, WithSeq
from tukar.threads import LINK_STACK, LINK_STACK_TLS, spawn

STATE_PER_S = const(5)  # change-driven state publishes in any 1000 ms
STATE_WAITING = const(2)  # state texts waiting to be published, at most, before state_room() is 0
MAX_COMMANDS = const(16)  # received, not yet taken by the control loop
MAX_ACKS = const(16)
BATCH = const(4)  # publishes of one kind per pass, so receiving stays responsive
IDLE_MS = const(20)
BACKOFF_BASE_MS = const(1000)
BACKOFF_CAP_MS = const(60000)


class Backoff:
    """Reconnect delays: base x 2^n, capped, with jitter in [delay/2, delay] (never a tight loop,
    never over the cap, and a fleet rebooted together does not reconnect in step)."""

    def __init__(self, base_ms=BACKOFF_BASE_MS, cap_ms=BACKOFF_CAP_MS, rand=None):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._rand = rand if rand is not None else _rand_unit
        self.n = 0

    def next_ms(self):
        d = self.base_ms << self.n if self.n < 16 else self.cap_ms
        if d > self.cap_ms:
            d = self.cap_ms
        else:
            self.n += 1
        half = d // 2
        return half + int((d - half) * self._rand())

    def reset(self):
        self.n = 0


def _rand_unit():
    return random.getrandbits(16) / 65536


class Link:
    def __init__(self, cfg, client_class, outbox, info, bdseq=0, clock=None, rand=None,
                 time_known=None):
        p = "%s/%s/" % (cfg.get("prefix") or "tukar", cfg["id"])
        self.prefix = p  # status, info and ack: topics made when published (3 attributes fewer)
        self.t_cmd = (p + "cmd").encode()
        self.t_event = (p + "event").encode()
        self.t_telemetry = (p + "telemetry").encode()
        self.cfg = cfg
        self.client_class = client_class
        self.outbox = outbox
        self.info = info
        # 60 s: a ping every 30 s keeps a cellular NAT mapping open; a dead link seen in 90 s
        self.keepalive_s = cfg.get("keepalive_s") or 60
        self.io_timeout_s = cfg.get("io_timeout_s") or 10
        # ticks_ms() that wrap as MicroPython's do, and sleep_ms(): the time module's own, or a
        # fake one the tests pass
        self.clock = clock if clock is not None else time
        # TLS checks the certificates' dates: before NTP has set the clock every handshake fails,
        # and each one holds the GIL for 1.2 to 2 s on an ESP32. `time_known()` says when to try.
        self.time_known = time_known
        # The control loop grants each handshake (HandshakeGate): App.control_step.
        self.handshake = None
        if cfg.get("ssl"):
            from tukar.tls import HandshakeGate
            self.handshake = HandshakeGate(self.clock, cfg.get("handshake_wait_ms") or 10000)
        self.backoff = Backoff(cfg.get("backoff_base_ms") or BACKOFF_BASE_MS,
                               cfg.get("backoff_cap_ms") or BACKOFF_CAP_MS, rand)
        self._lock = _thread.allocate_lock()
        # link -> control loop
        self.connected = False
        self.running = False
        self.passes = 0
        self.bdseq = bdseq & 0xFF
        self.last_error = None
        self.stats = {"tx_bytes": 0, "rx_bytes": 0, "publishes": 0, "connects": 0,
                      "reconnects": 0, "commands": 0, "commands_dropped": 0,
                      "ignored_topics": 0, "acks_dropped": 0}
        self._cmds = []
        # control loop -> link
        self._state = {}  # suffix -> its latest JSON text, until published
        self._pending = []  # those suffixes, in the order posted
        self._acks = []
        self._rebirth = False
        self._stop = False
        self._abandon = False
        self._lost = False  # a connection was lost and no new one is up yet
        # link thread only
        self._client = None
        self._guard = None
        self._seq = 0
        self._sent = [0] * STATE_PER_S  # ticks of the last state publishes, a ring
        self._n_sent = 0
        self._i_sent = 0
        self._retry_at = None
        self._last_ping = 0

    # == control loop side: never blocks on the network, never raises =====================
    def post_state(self, suffix, payload):
        """Retained state for `state` or `slot/N/state`; only the newest per topic is kept, and only
        until it is published. While a lost connection waits to be rebuilt nothing is kept: at
        every new connection the core posts every state afresh (Core.connected), so a text kept
        through an outage would only be published to be replaced."""
        try:
            if self._lost:
                return
            text = dumps(payload).encode()  # bytes: published without a copy (WithSeq)
            with self._lock:
                if self._lost:
                    return
                self._state[suffix] = text
                if suffix not in self._pending:
                    self._pending.append(suffix)
        except Exception as e:
            self.last_error = "post_state: %r" % (e,)

    def state_room(self):
        """How many more states post_state() should be given now: the control loop keeps the rest
        marked and works them out when the link has published these (a large number while a lost
        connection is rebuilt: they are dropped, and every state is posted at the next one)."""
        if self._lost:
            return 1 << 30
        return STATE_WAITING - len(self._pending)

    def post_telemetry(self, payload):
        try:
            self.outbox.add_telemetry(payload)
        except Exception as e:
            self.last_error = "post_telemetry: %r" % (e,)

    def post_ack(self, ack):
        try:
            text = dumps(ack)
            with self._lock:
                if len(self._acks) >= MAX_ACKS:
                    self._acks.pop(0)
                    self.stats["acks_dropped"] += 1
                self._acks.append(text)
        except Exception as e:
            self.last_error = "post_ack: %r" % (e,)

    def take_commands(self):
        """[(payload bytes, retained flag)] received on P/C/cmd since the last call."""
        with self._lock:
            cmds = self._cmds
            if not cmds:
                return cmds
            self._cmds = []
        return cmds

    def request_rebirth(self):
        self._rebirth = True

    def stop(self):
        """Orderly end: the thread publishes `offline` (retained), disconnects and exits."""
        self._stop = True

    def abandon(self):
        """Power lost: the thread exits without a goodbye and the TCP connection just drops, so
        the broker publishes the Last Will (`offline`). Used by the simulator's power cut."""
        self._abandon = True
        self._stop = True
        self.drop()

    def drop(self):
        """Cut the TCP connection without DISCONNECT, as a lost network does; the thread notices
        on its next socket operation and reconnects with back-off (unless stopped)."""
        g = self._guard
        if g is not None:
            try:
                s = g.raw if g.raw is not None else g.sock
                inner = getattr(s, "sock", None)  # a wrapper around the real socket (host shim)
                if inner is not None and hasattr(inner, "shutdown"):
                    s = inner
                if hasattr(s, "shutdown"):
                    s.shutdown(2)  # SHUT_RDWR: the blocked read in the link thread returns at once
                else:
                    s.close()
            except Exception as e:
                self.last_error = "drop: %r" % (e,)

    # == the thread ==========================================================================
    def start(self):
        """Start the link's thread, sized for TLS or plain TCP. Raises when it cannot start;
        `running` then stays False, so the supervisor tries again."""
        self.running = True
        try:
            spawn(self._run, LINK_STACK_TLS if self.cfg.get("ssl") else LINK_STACK)
        except BaseException:
            self.running = False
            raise

    def _run(self):
        try:
            while not self._stop:
                self.step()
            if self._abandon:
                self._teardown()
            else:
                self._goodbye()
        finally:
            self.connected = False
            self.running = False

    def step(self):
        """One pass of the thread: connect when due, else receive, publish, keep alive."""
        self.passes += 1  # progress, for the watchdog's supervisor
        now = self.clock.ticks_ms()
        if self._client is None:
            if self._retry_at is not None:
                wait = wrap_diff(self._retry_at, now)
                if wait > 0:
                    self.clock.sleep_ms(wait if wait < 100 else 100)  # stop() stays prompt
                    return
            if self.cfg.get("ssl") and self.time_known is not None and not self.time_known():
                self.last_error = "waiting for the clock (NTP) before TLS"
                self.clock.sleep_ms(100)
                return
            try:
                self._connect()
                self._retry_at = None
            except Exception as e:
                self._fail(e)
            return
        try:
            busy = self._service(now)
        except Exception as e:
            self._fail(e)
            return
        if not busy:
            self.clock.sleep_ms(IDLE_MS)

    def _fail(self, e):
        self.last_error = repr(e)
        if self._client is not None:
            self.stats["reconnects"] += 1
        self._teardown()
        self._retry_at = wrap_add(self.clock.ticks_ms(), self.backoff.next_ms())

    def _teardown(self):
        """Drop the connection without DISCONNECT, so the broker publishes the Last Will."""
        g = self._guard
        self.connected = False
        with self._lock:
            if self._client is not None:
                self._lost = True
                self._state.clear()  # the next connection's states are posted afresh
                del self._pending[:]
            self._client = None
        self._guard = None
        if g is not None:
            self.stats["tx_bytes"] += g.tx
            self.stats["rx_bytes"] += g.rx
            try:
                g.close()
            except Exception:
                pass

    def _connect(self):
        cfg = self.cfg
        tls = None
        if cfg.get("ssl"):
            from tukar.tls import TlsWrap, tls_context
            tls = TlsWrap(tls_context(cfg), self.handshake)
        port = cfg.get("port") or (8883 if tls else 1883)
        c = self.client_class(cfg.get("client_id") or cfg["id"], cfg["host"], port,
                              cfg.get("user"), cfg.get("password"), self.keepalive_s, ssl=tls)
        c.set_callback(self._on_message)
        c.set_last_will(self._topic("status"), b"offline", retain=True, qos=1)
        try:
            c.connect(clean_session=True, timeout=self.io_timeout_s)
        except Exception:
            if c.sock is not None:
                try:
                    c.sock.close()
                except Exception:
                    pass
            raise
        self._guard = SocketGuard(c.sock, tls.raw if tls else None, self.io_timeout_s, self.clock)
        c.sock = self._guard
        with self._lock:
            self._client = c
            self._lost = False
        self.stats["connects"] += 1
        self.bdseq = (self.bdseq + 1) & 0xFF
        self._seq = 0
        self._last_ping = self.clock.ticks_ms()
        c.subscribe(self.t_cmd, 1)
        self._rebirth = False  # a connect is a birth
        self._birth(True)
        self.connected = True
        self.backoff.reset()

    def _birth(self, status):
        """info, then `online` (on connect), then every state waiting to be published. The core
        posts every state afresh at each new connection and at a rebirth; those the link gets
        after the birth follow at the state rate."""
        info = self.info()
        info["bdseq"] = self.bdseq
        self._publish(self._topic("info"), dumps(info), True, 1)
        if status:
            self._publish(self._topic("status"), b"online", True, 1)
        with self._lock:
            waiting = list(self._pending)
        for suffix in waiting:
            self._publish_state(suffix)

    def _goodbye(self):
        c = self._client
        if c is None:
            return
        try:
            self._publish(self._topic("status"), b"offline", True, 1)
            c.disconnect()
        except Exception as e:
            self.last_error = repr(e)
        self._teardown()

    def _on_message(self, topic, msg, retained=None):
        if bytes(topic) != self.t_cmd:  # brokers may deliver more than was subscribed (amqtt)
            self.stats["ignored_topics"] += 1
            return
        if retained is None:
            g = self._guard
            retained = bool(g.header & 1) if g is not None else False
        with self._lock:
            if len(self._cmds) >= MAX_COMMANDS:
                self._cmds.pop(0)
                self.stats["commands_dropped"] += 1
            self._cmds.append((bytes(msg), retained))
            self.stats["commands"] += 1

    def _next_seq(self):
        s = self._seq
        self._seq = (s + 1) & 0xFF
        return s

    def _topic(self, suffix):
        return (self.prefix + suffix).encode()

    def _publish(self, topic, msg, retain, qos):
        c = self._client
        assert c is not None
        if isinstance(msg, str):
            msg = msg.encode()
        c.publish(topic, msg, retain, qos)
        self.stats["publishes"] += 1

    def _publish_state(self, suffix):
        with self._lock:
            text = self._state.pop(suffix, None)
            if suffix in self._pending:
                self._pending.remove(suffix)
        if text is None:
            return
        # the window counts from when a publish goes out, not from when it ends
        now: int = self.clock.ticks_ms()  # type: ignore[assignment]
        self._publish(self._topic(suffix), WithSeq(text, self._next_seq()), True, 1)
        self._sent[self._i_sent] = now
        self._i_sent = (self._i_sent + 1) % STATE_PER_S
        if self._n_sent < STATE_PER_S:
            self._n_sent += 1

    def _state_allowed(self, now):
        # > 1000: whole milliseconds, so two starts 1000 apart may be 999.x ms apart in fact
        return self._n_sent < STATE_PER_S or wrap_diff(now, self._sent[self._i_sent]) > 1000

    def _service(self, now):
        c = self._client
        g = self._guard
        assert c is not None and g is not None
        busy = False
        for _ in range(BATCH):  # receive
            if c.check_msg() is None:
                break
            busy = True
        now = self.clock.ticks_ms()
        if wrap_diff(now, g.last_rx) > self.keepalive_s * 1500:
            raise OSError(110, "no byte from the broker for %d ms" % wrap_diff(now, g.last_rx))
        if wrap_diff(now, self._last_ping) >= self.keepalive_s * 500:
            c.ping()
            self._last_ping = now
        if self._rebirth:
            self._rebirth = False
            self._birth(False)
            busy = True
        for _ in range(BATCH):  # acks
            with self._lock:
                text = self._acks[0] if self._acks else None
            if text is None:
                break
            self._publish(self._topic("ack"), text, False, 1)
            with self._lock:
                if self._acks and self._acks[0] is text:
                    self._acks.pop(0)
            busy = True
        ob = self.outbox
        for _ in range(BATCH):  # events and telemetry, in order
            item = ob.peek()
            if item is None:
                break
            if item[0] == EVENT:
                self._publish(self.t_event, WithSeq(item[2], self._next_seq()), False, 1)
            else:
                self._publish(self.t_telemetry, WithSeq(item[2], self._next_seq()), False, 0)
            ob.done(item)
            busy = True
        while self._pending and self._state_allowed(self.clock.ticks_ms()):  # coalesced state
            with self._lock:
                suffix = self._pending[0] if self._pending else None
            if suffix is None:
                break
            self._publish_state(suffix)
            busy = True
        return busy

    def counters(self):
        """Bytes so far, including the open connection's."""
        g = self._guard
        tx = self.stats["tx_bytes"] + (g.tx if g is not None else 0)
        rx = self.stats["rx_bytes"] + (g.rx if g is not None else 0)
        return tx, rx
