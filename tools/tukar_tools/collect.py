"""`tukar collect`: stores everything the fleet publishes in the fleet database (fleetdb.py), for
the regulator's reports and to find worn packs.

It subscribes to every cabinet's events, states, telemetry, acks, info and status at QoS 1 on a
persistent session (what is published while it is down is delivered when it returns), stores what
arrives in batches, one transaction each, and acknowledges (PUBACK) a batch's messages only once
that transaction has committed: a crash loses nothing, the broker delivers again, and the database
keeps each event once. With --share several collectors split the fleet (`$share/GROUP/...`)."""
import collections
import datetime
import os
import queue
import re
import signal
import socket
import sys
import threading
import time

from tukar_tools import fleetdb, mqttc

# (kind, topic below P/C/) of what the collector stores, in the contract's words (docs/mqtt.md)
TOPICS = (("event", "event"), ("slot_state", "slot/+/state"), ("state", "state"),
          ("telemetry", "telemetry"), ("ack", "ack"), ("info", "info"), ("status", "status"))
CABINET_ID = re.compile(r"[a-z0-9-]{1,32}\Z")
EXIT_OK, EXIT_FAILED, EXIT_NO_BROKER = 0, 2, 3
BACKOFF_MAX_S = 30.0
LOG_PER_PERIOD = 20  # malformed or foreign messages described per stats period; the rest counted


def filters(prefix, cabinets=()):
    """The topic filters of a fleet, or of only the given cabinets."""
    return ["%s/%s/%s" % (prefix, c, t) for c in (cabinets or ["+"]) for _, t in TOPICS]


def classify(topic, prefix, cabinets=()):
    """(cabinet, kind, slot) of a contract topic, else None: a broker may deliver topics that match
    no subscription (amqtt's retained messages), and a cabinet id must be the contract's."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    cab, rest = parts[0], parts[1:]
    if not CABINET_ID.match(cab) or (cabinets and cab not in cabinets):
        return None
    if len(rest) == 1 and rest[0] in ("event", "state", "telemetry", "ack", "info", "status"):
        return cab, rest[0], None
    if len(rest) == 3 and rest[0] == "slot" and rest[2] == "state":
        n = rest[1]
        if n.isdigit() and n[0] != "0" and len(n) <= 4:
            return cab, "slot_state", int(n)
    return None


class Collector:
    """The collector: paho's network thread queues what arrives; run() (the caller's thread) opens
    the database, stores batches and acknowledges them. stop() ends run() cleanly."""

    def __init__(self, db_url, host, port, prefix=mqttc.DEFAULT_PREFIX, cabinets=(), share=None,
                 client_id=None, user=None, password=None, tls_ca=None, protocol="5",
                 session_expiry=7 * 86400, batch=500, stats_every=60.0, give_up=None,
                 out=sys.stdout, err=sys.stderr):
        self.db_url = db_url
        self.host, self.port = host, port
        self.prefix = prefix
        self.cabinets = tuple(cabinets or ())
        self.share = share
        self.client_id = client_id or default_client_id()
        self.user, self.password, self.tls_ca = user, password, tls_ca
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.batch = batch
        self.stats_every = stats_every
        self.give_up = give_up
        self.out, self.err = out, err
        self.filters = filters(prefix, self.cabinets)
        self.stored = collections.Counter()  # rows stored, per kind
        self.counts = collections.Counter()  # unchanged, duplicates, malformed, ignored, errors
        self.ready = threading.Event()  # subscribed: what is published now will be stored
        self._gone = threading.Event()  # the connection closed (after our DISCONNECT went out)
        self._stop = threading.Event()
        self._inbox = queue.Queue()
        self._gen = 0  # connection count: a PUBACK is owed only on the connection that delivered
        self._connected_once = False
        self._fatal = None
        self._logged = 0
        self.db = None
        self.client = None

    # --- output ---

    def say(self, text, err=False):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print("%s collect: %s" % (stamp, text), file=self.err if err else self.out, flush=True)

    def _complain(self, text):
        self._logged += 1
        if self._logged <= LOG_PER_PERIOD:
            self.say(text, err=True)
        elif self._logged == LOG_PER_PERIOD + 1:
            self.say("more messages refused; counted, not shown until the next count", err=True)

    def summary(self):
        kinds = ", ".join("%s %d" % (k, self.stored[k]) for k in fleetdb.KINDS)
        c = self.counts
        return ("stored %s | unchanged %d, duplicates %d, malformed %d, ignored %d, errors %d"
                % (kinds, c["unchanged"], c["duplicate"], c["malformed"], c["ignored"], c["error"]))

    # --- MQTT, on paho's thread ---

    def _make_client(self):
        import paho.mqtt.client as paho

        v5 = self.protocol == "5"
        kw = {} if v5 else {"clean_session": False}
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311, manual_ack=True, **kw)
        return mqttc.wire(client, self, self.user, self.password, self.tls_ca, BACKOFF_MAX_S)

    def _connect_args(self):
        if self.protocol != "5":
            return {}
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        props.ReceiveMaximum = max(1, min(65535, 2 * self.batch))  # unacked deliveries in flight
        return {"clean_start": False, "properties": props}

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        if reason.is_failure:
            if not self._connected_once:
                self._fatal = "the broker %s:%d refused the connection: %s" % (
                    self.host, self.port, reason)
            else:
                self.say("the broker refused the reconnection: %s; trying again" % reason, err=True)
            return
        self._gen += 1
        first = not self._connected_once
        self._connected_once = True
        resumed = bool(getattr(flags, "session_present", False))
        self.say("%s broker %s:%d as %s (MQTT %s, %s)" % (
            "connected to" if first else "reconnected to", self.host, self.port, self.client_id,
            "5" if self.protocol == "5" else "3.1.1",
            "session resumed" if resumed else "new session"))
        subs = [self._share(f) for f in self.filters]
        if self.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions

            # retained states again only for a new subscription, not on every resumed session
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            client.subscribe([(s, opts) for s in subs])
        else:
            client.subscribe([(s, 1) for s in subs])

    def _share(self, f):
        return "$share/%s/%s" % (self.share, f) if self.share else f

    def _on_subscribe(self, client, userdata, mid, reasons, properties=None):
        refused = [(f, r) for f, r in zip(self.filters, reasons) if r.is_failure]
        if refused:
            self._fatal = "the broker refused the subscription to %s: %s" % (
                self._share(refused[0][0]), refused[0][1])
            return
        if not self.ready.is_set():
            self.say("subscribed to %d topic filters under %s/%s at QoS 1%s" % (
                len(self.filters), self.prefix, "+" if not self.cabinets else
                "{%s}" % ",".join(self.cabinets),
                ", shared group %s" % self.share if self.share else ""))
            self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        self._gone.set()
        if not self._stop.is_set():
            self.ready.clear()
            self.say("lost the broker %s:%d (%s); reconnecting, waiting up to %d s between tries;"
                     " unacknowledged messages will be delivered again"
                     % (self.host, self.port, reason, BACKOFF_MAX_S), err=True)

    def _on_message(self, client, userdata, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._inbox.put((self._gen, topic, msg.payload, msg.qos, msg.mid, time.time()))

    # --- the shell ---

    def stop(self):
        self._stop.set()

    def run(self):
        """Collect until stop(); returns the exit status (0 stopped cleanly, 2 database or broker
        refused, 3 broker never reached: within give_up seconds, or before stop())."""
        try:
            self.db = fleetdb.connect(self.db_url)
        except (fleetdb.FleetDBError, ValueError) as e:
            self.say(str(e), err=True)
            return EXIT_FAILED
        try:
            self.say("database %s (schema version %d, %s)" % (
                fleetdb.display_url(self.db_url), self.db.version(), self.db.kind))
            try:
                self.client = self._make_client()
            except (OSError, ValueError) as e:  # a CA file that cannot be read
                self.say("cannot set up TLS with %s: %s" % (self.tls_ca, fleetdb._one_line(e)),
                         err=True)
                return EXIT_FAILED
            if not self._connect_broker():
                if self._stop.is_set():
                    self.say("stopped before the broker %s:%d was reached" % (self.host, self.port),
                             err=True)
                return EXIT_NO_BROKER
            self.client.loop_start()
            try:
                return self._collect()
            finally:
                self._stop.set()  # what follows is our own leaving, not a lost broker
                self._gone.clear()
                if self.client.disconnect() == 0:
                    self._gone.wait(5)  # the PUBACKs queued before the DISCONNECT are sent
                self.client.loop_stop()
        finally:
            self.db.close()

    def _connect_broker(self):
        delay, start = 1.0, time.monotonic()
        while not self._stop.is_set():
            try:
                self.client.connect(self.host, self.port, keepalive=30, **self._connect_args())
                return True
            except (OSError, ValueError) as e:
                waited = time.monotonic() - start
                if self.give_up is not None and waited + delay > self.give_up:
                    self.say("cannot reach the broker %s:%d (%s); gave up after %.0f s"
                             % (self.host, self.port, fleetdb._one_line(e), waited), err=True)
                    return False
                self.say("cannot reach the broker %s:%d (%s); trying again in %.0f s"
                         % (self.host, self.port, fleetdb._one_line(e), delay), err=True)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        return False

    def _collect(self):
        next_stats = time.monotonic() + self.stats_every
        while not self._stop.is_set():
            if self._fatal:
                self.say(self._fatal, err=True)
                return EXIT_FAILED
            batch = self._take(0.2)
            if batch:
                self._write(batch)
            if time.monotonic() >= next_stats:
                self.say(self.summary())
                self._logged = 0
                next_stats = time.monotonic() + self.stats_every
        # Stopping: store and acknowledge what has arrived; anything later stays with the broker.
        batch = self._take(0)
        while batch:
            if not self._write(batch, stopping=True):
                break
            batch = self._take(0)
        self.say("stopped; " + self.summary())
        return EXIT_OK

    def _take(self, timeout):
        try:
            batch = [self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()]
        except queue.Empty:
            return []
        while len(batch) < self.batch:  # whatever else is waiting joins this transaction
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch, stopping=False):
        """Store one batch, then acknowledge it. False when the database could not take it while
        stopping: those messages stay unacknowledged, and the broker delivers them again."""
        records = []
        for gen, topic, payload, qos, mid, received_at in batch:
            where = classify(topic, self.prefix, self.cabinets) if topic is not None else None
            if where is None:
                self.counts["ignored"] += 1
                self._complain("ignored a message on %r: not a topic of the contract" % (topic,))
                continue
            cab, kind, slot = where
            try:
                records.append(fleetdb.parse(cab, kind, payload, received_at, slot))
            except fleetdb.Malformed as e:
                self.counts["malformed"] += 1
                self._complain("malformed message on %s: %s" % (topic, e))
        outcomes = self._store(records, stopping)
        if outcomes is None:
            return False
        for r, outcome in zip(records, outcomes):
            if outcome == "stored":
                self.stored[r.kind] += 1
            else:
                self.counts[outcome] += 1
        gen = self._gen
        for g, _, _, qos, mid, _ in batch:
            if qos and g == gen:  # a message of an earlier connection is delivered again anyway
                self.client.ack(mid, qos)
        return True

    def _store(self, records, stopping):
        """One outcome per record. Retries while the database is away (the messages wait,
        unacknowledged); a batch that fails for another reason is stored one record at a time,
        and a record that fails alone is counted as an error and dropped."""
        outcomes, pending, single, delay = [], list(records), False, 1.0
        while pending:
            chunk = pending[:1] if single else pending
            try:
                done = self.db.store(chunk)
            except Exception as e:
                if self.db.transient(e) or self.db.conn is None:
                    if stopping or self._stop.is_set():
                        self.say("database error while stopping (%s): %d messages left to the"
                                 " broker" % (fleetdb._one_line(e), len(pending)), err=True)
                        return None
                    self.say("database error (%s); trying again in %.0f s, the messages wait"
                             " unacknowledged" % (fleetdb._one_line(e), delay), err=True)
                    self._stop.wait(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    self._reopen()
                    continue
                if not single:
                    single = True
                    continue
                done = ["error"]
                self.say("could not store a %s message of %s: %s" % (
                    chunk[0].kind, chunk[0].cabinet, fleetdb._one_line(e)), err=True)
            outcomes += done
            pending = pending[len(chunk):]
            delay = 1.0
        return outcomes

    def _reopen(self):
        try:
            self.db.reopen()
        except fleetdb.FleetDBError as e:
            self.say(str(e), err=True)


def default_client_id():
    """One persistent session per host: a second collector on the same host needs --client-id."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return "tukar-collect-" + host


def add_arguments(p):
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--cabinet", action="extend", nargs="+", default=[], metavar="C",
                   help="collect only these cabinets (default: every cabinet under the prefix)")
    p.add_argument("--db", default=os.environ.get("TUKAR_DB", "fleet.sqlite"),
                   help="the fleet database: a SQLite file path or sqlite:///path, or"
                        " postgresql://user@host/db (default $TUKAR_DB, else fleet.sqlite)")
    p.add_argument("--share", metavar="GROUP",
                   help="subscribe as a member of the shared group $share/GROUP/...: the collectors"
                        " of one group split the fleet's messages between them")
    p.add_argument("--client-id", help="MQTT client id, which names the persistent session"
                                       " (default tukar-collect-HOSTNAME; one per collector)")
    p.add_argument("--user", help="broker user name")
    p.add_argument("--password", default=os.environ.get("TUKAR_BROKER_PASSWORD"),
                   help="broker password (default $TUKAR_BROKER_PASSWORD)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate: connect with TLS (port 8883"
                                                     " unless --broker names one)")
    p.add_argument("--mqtt", choices=("5", "3.1.1"), default="5",
                   help="protocol version (default 5; 3.1.1 for brokers without it)")
    p.add_argument("--session-expiry", type=int, default=7 * 86400, metavar="S",
                   help="MQTT 5: seconds the broker keeps the session, and what is published for"
                        " it, while the collector is away (default 604800, a week)")
    p.add_argument("--batch", type=int, default=500, help="most messages stored per transaction")
    p.add_argument("--stats-every", type=float, default=60.0, metavar="S",
                   help="seconds between two count lines (default 60)")
    p.add_argument("--give-up", type=float, metavar="S",
                   help="exit (status 3) when the broker cannot be reached at start within S"
                        " seconds (default: keep trying)")


def run(args):
    try:
        host, port = mqttc.parse_broker(args.broker, 8883 if args.tls_ca else 1883)
        fleetdb.parse_url(args.db)
    except ValueError as e:
        print("tukar collect: %s" % e, file=sys.stderr)
        return EXIT_FAILED
    if args.batch < 1 or not 0 <= args.session_expiry < 1 << 32:
        print("tukar collect: --batch must be at least 1, --session-expiry 0 to 4294967295",
              file=sys.stderr)
        return EXIT_FAILED
    c = Collector(args.db, host, port, prefix=args.prefix, cabinets=args.cabinet, share=args.share,
                  client_id=args.client_id, user=args.user, password=args.password,
                  tls_ca=args.tls_ca, protocol=args.mqtt, session_expiry=args.session_expiry,
                  batch=args.batch, stats_every=args.stats_every, give_up=args.give_up)

    def stop(signum, frame):
        c.stop()

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return c.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
