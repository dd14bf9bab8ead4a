"""`tukar monitor`: a live view of every cabinet on a broker, as an operator would watch a fleet:
online state, mode, session phase, each slot's state, SoC, temperature and faults, the latest
events. `--json` prints every message as one JSON line instead."""
import collections
import json
import sys
import time

from tukar_tools import mqttc

EVENTS_KEPT = 8
_STATE_STYLE = {"empty": "dim", "charging": "yellow", "ready": "green", "charge_paused": "cyan",
                "awaiting_battery": "bold magenta", "identifying": "magenta",
                "dispensing": "bold magenta", "rejected": "bold red", "quarantined": "bold red",
                "fault": "red", "maintenance_open": "blue"}


class Cabinet:
    def __init__(self, cid):
        self.id = cid
        self.status = None
        self.info = {}
        self.state = {}
        self.slots = {}
        self.events = collections.deque(maxlen=EVENTS_KEPT)
        self.event_ids = set()
        self.telemetry = {}
        self.measured = {}  # slot -> {"soc", "temp_c", ...} from the latest telemetry
        self.world = None
        self.last_seen = 0.0


class Fleet:
    """What the monitor knows, built from messages only (the same view an outside tool has)."""

    def __init__(self, prefix=mqttc.DEFAULT_PREFIX, only=None):
        self.prefix = prefix
        self.only = only
        self.cabinets = {}

    def ingest(self, topic, payload, retained=False):
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != self.prefix:
            return None
        cid, kind = parts[1], "/".join(parts[2:])
        if self.only and cid != self.only:
            return None
        cab = self.cabinets.get(cid)
        if cab is None:
            cab = self.cabinets[cid] = Cabinet(cid)
        cab.last_seen = time.time()
        if kind == "status":
            cab.status = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
            return cab
        try:
            data = json.loads(payload)
        except ValueError:
            return cab
        if not isinstance(data, dict):
            return cab
        if kind == "info":
            cab.info = data
        elif kind == "state":
            cab.state = data
        elif kind.startswith("slot/") and kind.endswith("/state"):
            n = data.get("slot")
            if isinstance(n, int):
                cab.slots[n] = data
        elif kind == "event":
            eid = data.get("id")
            if eid not in cab.event_ids:  # at-least-once delivery: de-duplicate by id
                cab.event_ids.add(eid)
                cab.events.append(data)
        elif kind == "telemetry":
            cab.telemetry = data
            slots = data.get("slots")
            if isinstance(slots, list):  # columns aligned with `slots`
                cab.measured = {}
                for i, n in enumerate(slots):
                    cab.measured[n] = {k: data[k][i] for k in ("soc", "temp_c", "voltage_v",
                                                              "current_a")
                                       if isinstance(data.get(k), list) and i < len(data[k])}
        elif kind == "sim/world":
            cab.world = data
        return cab


def _event_text(e):
    skip = {"id", "type", "ts", "up_ms", "seq"}
    rest = " ".join("%s=%s" % (k, v if not isinstance(v, dict) else v.get("serial", "{..}"))
                    for k, v in e.items() if k not in skip)
    return "%s %s" % (e.get("type"), rest)


def render(fleet, detail=None):
    """A rich renderable of the fleet: one line per cabinet, and slot detail for small fleets."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cabs = [fleet.cabinets[k] for k in sorted(fleet.cabinets)]
    if detail is None:
        detail = len(cabs) <= 2
    top = Table(title="tukar monitor: %d cabinet(s)" % len(cabs), expand=True)
    for col in ("cabinet", "status", "mode", "session", "ready", "empty", "charging", "faulted",
                "temp", "alarms", "last event"):
        top.add_column(col)
    for c in cabs:
        s = c.state
        sess = s.get("session") or {}
        phase = "%s in:%s out:%s" % (sess.get("phase"), sess.get("slot_in"), sess.get("slot_out")) \
            if sess else "-"
        status = Text(c.status or "?", style="green" if c.status == "online" else "bold red")
        last = _event_text(c.events[-1]) if c.events else ""
        top.add_row(c.id, status, str(s.get("mode", "?")), phase, str(s.get("ready", "")),
                    str(s.get("empty", "")), str(s.get("charging", "")), str(s.get("faulted", "")),
                    "" if s.get("temp_c") is None else "%.1f" % s["temp_c"],
                    ",".join(s.get("alarms", [])), last[:60])
    parts = [top]
    if detail:
        for c in cabs:
            t = Table(title="%s slots" % c.id, expand=True)
            for col in ("slot", "state", "door", "lock", "battery", "SoC %", "temp", "charger A",
                        "ready", "faults"):
                t.add_column(col)
            for n in sorted(c.slots):
                d = c.slots[n]
                b = dict(d.get("battery") or {})
                if b and n in c.measured:  # telemetry is fresher than the state's snapshot
                    b.update({k: v for k, v in c.measured[n].items() if v is not None})
                faults = list(d.get("faults") or []) + list(b.get("faults") or [])
                if d.get("reason"):
                    faults.append("(%s)" % d["reason"])
                ch = d.get("charger") or {}
                t.add_row(str(n), Text(d.get("state", "?"), style=_STATE_STYLE.get(d.get("state"), "")),
                          d.get("door", ""), d.get("lock", ""), str(b.get("serial") or ""),
                          "" if b.get("soc") is None else "%.1f" % b["soc"],
                          "" if b.get("temp_c") is None else "%.1f" % b["temp_c"],
                          "%.1f" % ch["current_a"] if ch.get("on") else "-",
                          "yes" if d.get("dispensable") else "", " ".join(faults))
            parts.append(t)
            ev = Table(title="%s latest events" % c.id, expand=True, show_header=False)
            ev.add_column("event")
            for e in list(c.events)[::-1]:
                ev.add_row(_event_text(e))
            parts.append(ev)
    return Group(*parts)


def add_arguments(p):
    mqttc.add_broker_argument(p)
    p.add_argument("--cabinet", help="show only this cabinet, with its slots")
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--json", action="store_true", help="print every message as one JSON line")
    p.add_argument("--duration", type=float, help="stop after this many seconds")


def json_line(topic, payload, retained):
    try:
        body = json.loads(payload)
    except ValueError:
        body = payload.decode("utf-8", "replace")
    return json.dumps({"topic": topic, "retained": retained, "payload": body})


def watch(host, port, prefix, cabinet=None, as_json=False, duration=None, out=sys.stdout,
          stop=None):
    """Run the monitor until Ctrl-C, `duration` seconds, or `stop` (a threading.Event) is set."""
    sub = "%s/%s/#" % (prefix, cabinet or "+")
    client = mqttc.Client(host, port, name="tukar-monitor", subscriptions=[sub])
    fleet = Fleet(prefix, cabinet)
    end = time.monotonic() + duration if duration else None
    try:
        if as_json:
            while (end is None or time.monotonic() < end) and not (stop and stop.is_set()):
                m = client.get(0.2)
                if m is not None:
                    print(json_line(*m), file=out, flush=True)
            return fleet
        from rich.live import Live
        with Live(render(fleet, cabinet is not None or None), refresh_per_second=4,
                  screen=False) as live:
            while (end is None or time.monotonic() < end) and not (stop and stop.is_set()):
                m = client.get(0.25)
                changed = False
                while m is not None:
                    fleet.ingest(*m)
                    changed = True
                    m = client.get(0)
                if changed:
                    live.update(render(fleet, cabinet is not None or None))
        return fleet
    finally:
        client.close()


def run(args):
    try:
        host, port = mqttc.parse_broker(args.broker)
        watch(host, port, args.prefix, args.cabinet, args.json, args.duration)
    except (ValueError, ConnectionError) as e:
        print("tukar monitor: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
