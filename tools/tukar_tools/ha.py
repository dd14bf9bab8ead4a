"""`tukar ha`: Home Assistant MQTT discovery for every cabinet on a broker.

It reads the cabinets' retained `info`, `status`, `state` and slot states, and publishes, retained,
one device-based discovery config per cabinet (`homeassistant/device/<id>/config`, Home Assistant
2024.11 and later). Each entity in it reads the cabinet's own contract topics (docs/mqtt.md) with a
value template: the bridge announces, it never relays values, so Home Assistant keeps its readings
while the bridge is down. A cabinet seen later is announced when it appears; every config is
published again when Home Assistant's `homeassistant/status` says `online`, and after a reconnect.
`--remove` clears every config it created. It never publishes on a cabinet's topics."""
import datetime
import importlib.metadata
import json
import os
import queue
import re
import signal
import sys
import threading
import time
import uuid

from tukar_tools import mqttc, schemas
from tukar_tools.collect import CABINET_ID

DISCOVERY_PREFIX = "homeassistant"
ORIGIN = "tukar"
EXIT_OK, EXIT_FAILED, EXIT_NO_BROKER = 0, 2, 3
BACKOFF_MAX_S = 30.0
SETTLE_S = 0.5  # a new cabinet's retained topics arrive together: announce it once, complete
SYNC_TIMEOUT_S = 10.0
ONE_SHOT_GIVE_UP_S = 10.0

# The contract's words (docs/schemas/common.json, docs/mqtt.md)
_COMMON = schemas.load("common.json")["$defs"]
SLOT_STATES = tuple(_COMMON["slot_state"]["enum"])
MODES = tuple(_COMMON["mode"]["enum"])
ONLINE, OFFLINE = tuple(schemas.load("status.json")["enum"])
SLOT_FIELDS = ("state", "soc", "temperature", "occupied", "charging", "fault", "lock")
COUNTS = (("ready", "Ready batteries"), ("empty", "Empty slots"), ("charging", "Charging slots"),
          ("faulted", "Faulted slots"))
CABINET_FIELDS = ("mode", "alarms", "estop", "smoke", "temperature") + tuple(k for k, _ in COUNTS)


def tool_version():
    try:
        return importlib.metadata.version("tukar-tools")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def device_id(prefix, cabinet):
    """The cabinet's id in Home Assistant, unique across prefixes: a discovery topic level is
    [A-Za-z0-9_-]; a prefix that needed changing to fit gets its hash, so two cannot meet."""
    base = re.sub(r"[^A-Za-z0-9-]", "-", prefix)
    if base != prefix:
        base += "-" + uuid.uuid5(uuid.NAMESPACE_URL, prefix).hex[:8]
    return "%s_%s" % (base, cabinet)  # a cabinet id has no "_": the last one splits them


def config_topic(discovery_prefix, prefix, cabinet):
    return "%s/device/%s/config" % (discovery_prefix, device_id(prefix, cabinet))


# --- value templates: Jinja2 over the payload (`value_json`), only Jinja2's own builtins ---

def _on_if(condition):
    return "{{ 'ON' if %s else 'OFF' }}" % condition


def _column(name, n):
    """Slot n's entry of a telemetry column; None (Home Assistant: unknown) when slot n is not in
    this telemetry (no battery) or its BMS could not be read (null)."""
    return ("{{ value_json.%s[value_json.slots.index(%d)] if %d in value_json.slots else None }}"
            % (name, n, n))


def slot_components(prefix, cabinet, n, uid):
    base = "%s/%s" % (prefix, cabinet)
    st, tel = "%s/slot/%d/state" % (base, n), base + "/telemetry"
    name = "Slot %d " % n

    def c(key, platform, label, topic, template, **more):
        d = {"p": platform, "unique_id": "%s_slot%d_%s" % (uid, n, key), "name": name + label,
             "state_topic": topic, "value_template": template}
        d.update(more)
        return "slot%d_%s" % (n, key), d

    return dict([
        c("state", "sensor", "state", st, "{{ value_json.state }}", device_class="enum",
          options=list(SLOT_STATES), json_attributes_topic=st,
          json_attributes_template="{{ {'door': value_json.door,"
                                   " 'dispensable': value_json.dispensable,"
                                   " 'serial': value_json.battery.serial"
                                   " if value_json.battery else None,"
                                   " 'reason': value_json.get('reason')} | tojson }}"),
        c("soc", "sensor", "SoC", tel, _column("soc", n), device_class="battery",
          unit_of_measurement="%", state_class="measurement"),
        c("temperature", "sensor", "temperature", tel, _column("temp_c", n),
          device_class="temperature", unit_of_measurement="°C", state_class="measurement"),
        c("occupied", "binary_sensor", "occupied", st, _on_if("value_json.battery is not none"),
          device_class="occupancy"),
        c("charging", "binary_sensor", "charging", st, _on_if("value_json.charger.on"),
          device_class="battery_charging"),
        c("fault", "binary_sensor", "fault", st,
          _on_if("value_json.state == 'fault' or value_json.faults"
                 " or (value_json.battery and value_json.battery.faults)"),
          device_class="problem", json_attributes_topic=st,
          json_attributes_template="{{ {'faults': value_json.faults, 'battery_faults':"
                                   " value_json.battery.faults if value_json.battery else []}"
                                   " | tojson }}"),
        # device class lock: ON means unlocked
        c("lock", "binary_sensor", "lock", st, _on_if("value_json.lock == 'unlocked'"),
          device_class="lock"),
    ])


def cabinet_components(prefix, cabinet, uid):
    base = "%s/%s" % (prefix, cabinet)
    st, tel = base + "/state", base + "/telemetry"

    def c(key, platform, label, topic, template, **more):
        d = {"p": platform, "unique_id": "%s_%s" % (uid, key), "name": label,
             "state_topic": topic, "value_template": template}
        d.update(more)
        return key, d

    out = [
        c("mode", "sensor", "Mode", st, "{{ value_json.mode }}", device_class="enum",
          options=list(MODES)),
        c("alarms", "sensor", "Alarms",
          st, "{{ value_json.alarms | join(', ') if value_json.alarms else 'none' }}",
          json_attributes_topic=st, json_attributes_template="{{ {'alarms': value_json.alarms}"
                                                             " | tojson }}"),
        c("estop", "binary_sensor", "Emergency stop", st, _on_if("'estop' in value_json.alarms"),
          device_class="safety"),
        c("smoke", "binary_sensor", "Smoke", st, _on_if("'smoke' in value_json.alarms"),
          device_class="smoke"),
        c("temperature", "sensor", "Temperature", tel, "{{ value_json.cabinet_temp_c }}",
          device_class="temperature", unit_of_measurement="°C", state_class="measurement"),
    ]
    out += [c(key, "sensor", label, st, "{{ value_json.%s }}" % key, state_class="measurement")
            for key, label in COUNTS]
    return dict(out)


def device_config(prefix, cabinet, info=None, slots=0, support_url=None):
    """The device-based discovery payload of one cabinet with `slots` slots."""
    uid = device_id(prefix, cabinet)
    info = info or {}
    dev = {"ids": [uid], "name": "Cabinet %s" % cabinet, "mf": "tukar",
           "mdl": "battery-swap cabinet", "sn": cabinet}
    if isinstance(info.get("board"), str):
        dev["hw"] = info["board"]
    if isinstance(info.get("fw"), str):
        dev["sw"] = info["fw"]
    origin = {"name": ORIGIN, "sw": tool_version()}
    if support_url:
        origin["url"] = support_url
    cmps = cabinet_components(prefix, cabinet, uid)
    for n in range(1, slots + 1):
        cmps.update(slot_components(prefix, cabinet, n, uid))
    return {"dev": dev, "o": origin,
            "availability": [{"topic": "%s/%s/status" % (prefix, cabinet),
                              "payload_available": ONLINE, "payload_not_available": OFFLINE}],
            "qos": 1, "cmps": cmps}


class Seen:
    """What the bridge knows of one cabinet: enough to build its config."""

    def __init__(self):
        self.info = None
        self.slots_seen = 0
        self.changed_at = None  # monotonic time of the last change not yet announced
        self.published = None  # the payload last published

    @property
    def slots(self):
        n = self.info.get("slots") if self.info else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else self.slots_seen


class Bridge:
    """The bridge: paho's network thread queues what arrives; run() (the caller's thread) keeps
    what is known of each cabinet and publishes configs. stop() ends run() cleanly."""

    def __init__(self, host, port, prefix=mqttc.DEFAULT_PREFIX, cabinets=(),
                 discovery_prefix=DISCOVERY_PREFIX, user=None, password=None, tls_ca=None,
                 give_up=None, settle=SETTLE_S, support_url=None, out=sys.stdout, err=sys.stderr):
        self.host, self.port = host, port
        self.prefix = prefix
        self.cabinets = tuple(cabinets or ())
        self.discovery_prefix = discovery_prefix
        self.user, self.password, self.tls_ca = user, password, tls_ca
        self.give_up = give_up
        self.settle = settle
        self.support_url = support_url
        self.out, self.err = out, err
        self.client_id = "tukar-ha-%s" % uuid.uuid4().hex[:12]
        self.sync_topic = "%s/tukar-sync/%s" % (discovery_prefix, self.client_id)
        self.seen = {}
        self.ready = threading.Event()  # subscribed: configs follow what is published from now
        self.published = 0  # config messages published (a removal counts too)
        self._inbox = queue.Queue()
        self._stop = threading.Event()
        self._republish = threading.Event()  # Home Assistant came back, or we reconnected
        self._connected_once = False
        self._fatal = None
        self._extra_subs = []
        self.client = None

    # --- output ---

    def say(self, text, err=False):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print("%s ha: %s" % (stamp, text), file=self.err if err else self.out, flush=True)

    # --- MQTT, on paho's thread ---

    def filters(self):
        subs = ["%s/%s/%s" % (self.prefix, c, t) for c in (self.cabinets or ["+"])
                for t in ("info", "status", "state", "slot/+/state")]
        return subs + ["%s/status" % self.discovery_prefix, self.sync_topic] + self._extra_subs

    def _make_client(self):
        import paho.mqtt.client as paho

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv311)
        return mqttc.wire(client, self, self.user, self.password, self.tls_ca, BACKOFF_MAX_S)

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        if reason.is_failure:
            if not self._connected_once:
                self._fatal = "the broker %s:%d refused the connection: %s" % (
                    self.host, self.port, reason)
            else:
                self.say("the broker refused the reconnection: %s; trying again" % reason, err=True)
            return
        if self._connected_once:
            self.say("reconnected to the broker %s:%d; announcing every cabinet again"
                     % (self.host, self.port))
            self._republish.set()  # a broker without persistence lost the retained configs
        else:
            self.say("connected to the broker %s:%d" % (self.host, self.port))
        self._connected_once = True
        client.subscribe([(f, 1) for f in self.filters()])

    def _on_subscribe(self, client, userdata, mid, reasons, properties=None):
        refused = [(f, r) for f, r in zip(self.filters(), reasons) if r.is_failure]
        if refused:
            self._fatal = "the broker refused the subscription to %s: %s" % refused[0]
            return
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        if not self._stop.is_set():
            self.ready.clear()
            self.say("lost the broker %s:%d (%s); reconnecting" % (self.host, self.port, reason),
                     err=True)

    def _on_message(self, client, userdata, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        self._inbox.put((topic, bytes(msg.payload), bool(msg.retain)))

    # --- what the messages say ---

    def ingest(self, topic, payload, now):
        """Take one message into what is known; True when it changes a cabinet's config (a new
        cabinet, new info, a slot beyond those known)."""
        if topic == "%s/status" % self.discovery_prefix:
            if payload == b"online":
                self.say("Home Assistant is online; announcing every cabinet again")
                self._republish.set()
            return False
        if not topic.startswith(self.prefix + "/"):
            return False
        parts = topic[len(self.prefix) + 1:].split("/")
        cab, rest = parts[0], parts[1:]
        if not CABINET_ID.match(cab) or (self.cabinets and cab not in self.cabinets):
            return False
        if not payload:
            return False  # a retained topic cleared: nothing to announce from it
        seen = self.seen.get(cab)
        if seen is None:
            seen = self.seen[cab] = Seen()
            before = None
        else:
            before = (seen.slots, _device_part(seen.info))
        if rest == ["info"]:
            try:
                info = json.loads(payload)
            except ValueError:
                info = None
            if isinstance(info, dict):
                seen.info = info
        elif len(rest) == 3 and rest[0] == "slot" and rest[2] == "state":
            n = rest[1]
            if n.isdigit() and n[0] != "0" and len(n) <= 4:
                seen.slots_seen = max(seen.slots_seen, int(n))
        changed = before != (seen.slots, _device_part(seen.info))
        if changed:
            seen.changed_at = now
        return changed

    def config(self, cab):
        seen = self.seen[cab]
        return device_config(self.prefix, cab, seen.info, seen.slots, self.support_url)

    # --- the shell ---

    def stop(self):
        self._stop.set()

    def run(self, once=False):
        """Announce until stop() (once: the cabinets on the broker now, then return). Returns the
        exit status: 0 stopped cleanly, 2 the broker refused, 3 the broker was never reached."""
        return self._session(lambda: self._announce(once))

    def remove(self):
        """Clear every config this tool published under the prefix (for the given cabinets)."""
        self._extra_subs = ["%s/device/+/config" % self.discovery_prefix]
        return self._session(self._remove)

    def _session(self, body):
        try:
            self.client = self._make_client()
        except (OSError, ValueError) as e:
            self.say("cannot set up TLS with %s: %s" % (self.tls_ca, e), err=True)
            return EXIT_FAILED
        if not self._connect_broker():
            return EXIT_NO_BROKER
        self.client.loop_start()
        try:
            while not self.ready.is_set():
                if self._fatal or self._stop.wait(0.05):
                    break
            if self._fatal:
                self.say(self._fatal, err=True)
                return EXIT_FAILED
            return body()
        finally:
            self._stop.set()  # what follows is our own leaving, not a lost broker
            self.client.disconnect()
            self.client.loop_stop()

    def _connect_broker(self):
        delay, start = 1.0, time.monotonic()
        while not self._stop.is_set():
            try:
                self.client.connect(self.host, self.port, keepalive=30)
                return True
            except (OSError, ValueError) as e:
                waited = time.monotonic() - start
                if self.give_up is not None and waited + delay > self.give_up:
                    self.say("cannot reach the broker %s:%d (%s); gave up after %.0f s"
                             % (self.host, self.port, e, waited), err=True)
                    return False
                self.say("cannot reach the broker %s:%d (%s); trying again in %.0f s"
                         % (self.host, self.port, e, delay), err=True)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self.say("stopped before the broker %s:%d was reached" % (self.host, self.port), err=True)
        return False

    def _sync(self):
        """Wait until every retained message of our subscriptions has arrived: the broker sends
        them when it takes the SUBSCRIBE, so our own message published after the SUBACK comes
        after them. Takes in what arrives on the way."""
        marker = uuid.uuid4().hex.encode()
        self.client.publish(self.sync_topic, marker, qos=1)
        end = time.monotonic() + SYNC_TIMEOUT_S
        while time.monotonic() < end and not self._stop.is_set():
            try:
                topic, payload, retained = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if topic == self.sync_topic:
                if payload == marker:
                    return True
                continue
            self._take(topic, payload, retained)
        self.say("the broker did not return our own message within %.0f s; going on with what"
                 " arrived" % SYNC_TIMEOUT_S, err=True)
        return False

    def _take(self, topic, payload, retained):
        if topic.startswith(self.discovery_prefix + "/device/"):
            self._configs[topic] = payload
        elif topic != self.sync_topic:
            self.ingest(topic, payload, time.monotonic())

    def _announce(self, once):
        self._configs = {}
        self.say("watching %s under %s/; discovery under %s/device/" % (
            "every cabinet" if not self.cabinets else "cabinet(s) " + ", ".join(self.cabinets),
            self.prefix, self.discovery_prefix))
        if once:
            self._sync()
            for cab in sorted(self.seen):
                self._publish(cab, force=True)
            self.say("announced %d cabinet(s)" % len(self.seen))
            return EXIT_OK
        while not self._stop.is_set():
            if self._fatal:
                self.say(self._fatal, err=True)
                return EXIT_FAILED
            try:
                self._take(*self._inbox.get(timeout=0.1))
                while True:
                    self._take(*self._inbox.get_nowait())
            except queue.Empty:
                pass
            force = self._republish.is_set()
            self._republish.clear()
            now = time.monotonic()
            for cab in sorted(self.seen):
                seen = self.seen[cab]
                if force or (seen.changed_at is not None and now - seen.changed_at >= self.settle):
                    self._publish(cab, force=force)
        self.say("stopped; %d cabinet(s) announced" % len(self.seen))
        return EXIT_OK

    def _publish(self, cab, force=False):
        seen = self.seen[cab]
        seen.changed_at = None
        payload = json.dumps(self.config(cab), separators=(",", ":"), ensure_ascii=False).encode()
        if payload == seen.published and not force:
            return
        topic = config_topic(self.discovery_prefix, self.prefix, cab)
        if not self._put(topic, payload):
            return  # the reconnect announces every cabinet again
        if seen.published is None:
            self.say("announced cabinet %s: %d slot(s), %s" % (cab, seen.slots, topic))
        seen.published = payload

    def _put(self, topic, payload):
        """Publish one retained config (or its removal) and wait for the broker's PUBACK."""
        try:
            info = self.client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(10)
        except (RuntimeError, ValueError) as e:  # not connected: paho will not send it
            self.say("could not publish %s: %s" % (topic, e), err=True)
            return False
        if not info.is_published():
            self.say("the broker did not acknowledge %s within 10 s" % topic, err=True)
            return False
        self.published += 1
        return True

    def _remove(self):
        self._configs = {}
        self._sync()
        ours = sorted(t for t, p in self._configs.items() if p and self._is_ours(t, p))
        failed = [t for t in ours if not self._put(t, b"")]
        for topic in ours:
            if topic not in failed:
                self.say("removed %s" % topic)
        self.say("removed %d cabinet(s) from Home Assistant" % (len(ours) - len(failed)))
        return EXIT_FAILED if failed else EXIT_OK

    def _is_ours(self, topic, payload):
        """A config this tool published for a cabinet under our prefix (and --cabinet)."""
        object_id = topic[len(self.discovery_prefix) + len("/device/"):-len("/config")]
        cab = object_id.rpartition("_")[2]
        if not CABINET_ID.match(cab) or (self.cabinets and cab not in self.cabinets):
            return False
        if object_id != device_id(self.prefix, cab):
            return False
        try:
            cfg = json.loads(payload)
        except ValueError:
            return False
        return isinstance(cfg, dict) and isinstance(cfg.get("o"), dict) \
            and cfg["o"].get("name") == ORIGIN


def _device_part(info):
    """What of `info` goes into the config: a reconnect's new bdseq changes nothing there."""
    info = info or {}
    return info.get("slots"), info.get("board"), info.get("fw")


def add_arguments(p):
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--cabinet", action="extend", nargs="+", default=[], metavar="C",
                   help="announce only these cabinets (default: every cabinet under the prefix)")
    p.add_argument("--discovery-prefix", default=DISCOVERY_PREFIX,
                   help="Home Assistant's discovery prefix (default homeassistant)")
    p.add_argument("--remove", action="store_true",
                   help="clear every config this tool published (under --prefix, for --cabinet),"
                        " then exit: Home Assistant removes those devices and their entities")
    p.add_argument("--once", action="store_true",
                   help="announce the cabinets on the broker now, then exit")
    p.add_argument("--support-url", metavar="URL",
                   help="a support page shown in Home Assistant as where the devices come from")
    p.add_argument("--user", help="broker user name")
    p.add_argument("--password", default=os.environ.get("TUKAR_BROKER_PASSWORD"),
                   help="broker password (default $TUKAR_BROKER_PASSWORD)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate: connect with TLS (port 8883"
                                                     " unless --broker names one)")
    p.add_argument("--give-up", type=float, metavar="S",
                   help="exit (status 3) when the broker cannot be reached at start within S"
                        " seconds (default: keep trying; %.0f s with --once or --remove)"
                        % ONE_SHOT_GIVE_UP_S)


def run(args):
    try:
        host, port = mqttc.parse_broker(args.broker, 8883 if args.tls_ca else 1883)
    except ValueError as e:
        print("tukar ha: %s" % e, file=sys.stderr)
        return EXIT_FAILED
    bad = [c for c in args.cabinet if not CABINET_ID.match(c)]
    if bad:
        print("tukar ha: cabinet id %r: the contract's ids are [a-z0-9-]{1,32}" % bad[0],
              file=sys.stderr)
        return EXIT_FAILED
    for what, value in (("--prefix", args.prefix), ("--discovery-prefix", args.discovery_prefix)):
        if not value or any(ch in value for ch in "+#") or value.startswith("/") \
                or value.endswith("/"):
            print("tukar ha: %s %r: a topic without wildcards or a leading or trailing /"
                  % (what, value), file=sys.stderr)
            return EXIT_FAILED
    if args.remove and args.once:
        print("tukar ha: --remove and --once: choose one", file=sys.stderr)
        return EXIT_FAILED
    give_up = args.give_up
    if give_up is None and (args.once or args.remove):
        give_up = ONE_SHOT_GIVE_UP_S
    b = Bridge(host, port, prefix=args.prefix, cabinets=args.cabinet,
               discovery_prefix=args.discovery_prefix, user=args.user, password=args.password,
               tls_ca=args.tls_ca, give_up=give_up, support_url=args.support_url)

    def stop(signum, frame):
        b.stop()

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return b.remove() if args.remove else b.run(once=args.once)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
