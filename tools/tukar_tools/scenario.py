"""Scripted scenarios: a sequence of world actions, signed commands and expectations, driven
through MQTT only (as an outside tool would), with times in simulated seconds.

A scenario file is JSON: {"name", "description", "cabinet"?, "slots"?, "fill"?, "stock"?, "speed"?,
"steps": [...]}; `tukar sim --scenario` builds its cabinet with `slots` slots, `fill` random packs
or exactly the `stock` ([{"slot", "battery": an `insert` battery}]), at `speed`. Steps:
  {"do": "world", "action": ..., ...fields}           a `sim/cmd` action; must be acked ok
                                                        (unless "expect_error": "prefix")
  {"do": "cmd", "cmd": ..., "args": {...}, "expect": {...}, "save": {"var": "field"}}
  {"do": "expect_event", "type": ..., "match": {...}, "within_s": 5, "save": {...}}
      the next such event after the previous matched one (events are ordered)
  {"do": "expect_no_event", "type": ..., "for_s": 2}
  {"do": "expect_state", "match": {...}, "within_s": 5, "save": {...}}   cabinet state
  {"do": "expect_slot", "slot": N, "match": {...}, "within_s": 5}           slot state
  {"do": "expect_world", "match": {...}, "within_s": 5}                    sim/world
  {"do": "expect_status", "value": "online" | "offline", "within_s": 5}
  {"do": "wait", "s": 1.5}
Strings "$name" are replaced by values saved earlier; "save" maps a name to a dotted path
(e.g. "session.slot_out") in what the step matched."""
import json
import time
import uuid

from tukar_tools import mqttc
from tukar_tools.sign import command, sign


class ScenarioFailed(AssertionError):
    pass


def subst(v, env):
    if isinstance(v, str) and v.startswith("$"):
        if v[1:] not in env:
            raise ScenarioFailed("variable %s was never saved" % v)
        return env[v[1:]]
    if isinstance(v, dict):
        return {k: subst(x, env) for k, x in v.items()}
    if isinstance(v, list):
        return [subst(x, env) for x in v]
    return v


_OPS = {"$gte": lambda a, b: a >= b, "$lte": lambda a, b: a <= b, "$ne": lambda a, b: a != b,
        "$in": lambda a, b: a in b}


def matches(actual, want):
    """`want` is a subset of `actual` (recursively); lists must match element by element;
    {"$gte": x}, {"$lte": x}, {"$ne": x} and {"$in": [..]} compare instead of equating."""
    if isinstance(want, dict) and len(want) == 1 and next(iter(want)) in _OPS:
        op, ref = next(iter(want.items()))
        try:
            return actual is not None and _OPS[op](actual, ref)
        except TypeError:
            return False
    if isinstance(want, dict):
        return isinstance(actual, dict) and all(k in actual and matches(actual[k], v)
                                                for k, v in want.items())
    if isinstance(want, list):
        return isinstance(actual, list) and len(actual) == len(want) and all(
            matches(a, w) for a, w in zip(actual, want))
    return actual == want


def dig(d, path):
    for part in path.split("."):
        if isinstance(d, list):
            d = d[int(part)]
        elif isinstance(d, dict):
            d = d.get(part)
        else:
            return None
    return d


class Observer:
    """Everything a cabinet publishes, kept for expectations; `records` holds every message seen
    under the cabinet's topics, in arrival order, as (topic, payload bytes, retained)."""

    def __init__(self, host, port, prefix, cabinet):
        self.base = "%s/%s/" % (prefix, cabinet)
        self.events = []
        self.event_ids = set()
        self.state = None
        self.slots = {}
        self.world = None
        self.status = None
        self.acks = {}
        self.sim_acks = []
        self.records = []
        self.client = mqttc.Client(host, port, name="tukar-scenario",
                                   subscriptions=[self.base + "#"])
        self.client.on_message = self._on

    def _on(self, topic, payload, retained):
        if topic.startswith(self.base):  # amqtt delivers retained messages that match no filter
            self.records.append((topic, bytes(payload), bool(retained)))
        kind = topic[len(self.base):]
        if kind == "status":
            self.status = payload.decode("utf-8", "replace")
            return
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if kind == "event" and isinstance(data, dict):
            if data.get("id") not in self.event_ids:
                self.event_ids.add(data.get("id"))
                self.events.append(data)
        elif kind == "state":
            self.state = data
        elif kind.startswith("slot/") and kind.endswith("/state") and isinstance(data, dict):
            self.slots[data.get("slot")] = data
        elif kind == "sim/world":
            self.world = data
        elif kind == "ack" and isinstance(data, dict):
            self.acks[data.get("req_id")] = data
        elif kind == "sim/ack":
            self.sim_acks.append(data)

    def close(self):
        self.client.close()


class Runner:
    def __init__(self, host, port, prefix, cabinet, key, speed=1.0, out=print, wall=time.time,
                 sim_ms=None):
        self.obs = Observer(host, port, prefix, cabinet)
        self.key = key
        self.speed = speed
        self.wall = wall  # the cabinet's clock, for the commands' ts (a sped-up one runs ahead)
        # The simulation's own clock (ms), when the runner runs beside it (tukar sim --scenario):
        # a host that cannot keep up slows a sped-up simulation down (hosttime.SimClock.lead),
        # so windows measured on the wall would end before the simulation got there.
        self.sim_ms = sim_ms
        self.env = {}
        self.cursor = 0  # events before this index are consumed by earlier expectations
        self.out = out

    def real(self, sim_s):
        return sim_s / self.speed

    def _window(self, sim_s):
        """The end of a window of sim_s simulated seconds: on the simulation's clock when the
        runner has it, else on the wall clock scaled by the speed. The wall end also bounds a
        simulation that has stopped altogether."""
        wall_end = time.monotonic() + self.real(sim_s)
        if self.sim_ms is None:
            return None, wall_end
        return self.sim_ms() + sim_s * 1000, wall_end + max(30.0, 10 * self.real(sim_s))

    def _over(self, window):
        sim_end, wall_end = window
        if sim_end is not None and self.sim_ms() >= sim_end:
            return True
        return time.monotonic() > wall_end

    def _sleep(self, sim_s):
        w = self._window(sim_s)
        while not self._over(w):
            time.sleep(0.01)

    def wait_for(self, check, within_s, what):
        w = self._window(within_s)
        while True:
            r = check()
            if r is not None:
                return r
            if self._over(w):
                raise ScenarioFailed("%s not seen within %.1f s" % (what, within_s))
            time.sleep(0.02)

    def step(self, st):
        st = subst(st, self.env)
        do = st.get("do")
        obs = self.obs
        if do == "world":
            msg = {k: v for k, v in st.items() if k not in ("do", "expect_error", "note")}
            n = len(obs.sim_acks)
            obs.client.publish(obs.base + "sim/cmd", json.dumps(msg), qos=1)
            ack = self.wait_for(lambda: next((a for a in obs.sim_acks[n:]
                                              if a.get("action") == msg.get("action")), None),
                                10 * self.speed, "sim/ack for %s" % msg.get("action"))
            want = st.get("expect_error")
            if want is None and not ack.get("ok"):
                raise ScenarioFailed("world action %s refused: %s" % (msg, ack.get("error")))
            if want is not None and (ack.get("ok") or not str(ack.get("error")).startswith(want)):
                raise ScenarioFailed("world action %s: wanted error %s, got %s" % (msg, want, ack))
            return ack
        if do == "cmd":
            body = command(st["cmd"], "sc-" + uuid.uuid4().hex[:10], int(self.wall()),
                           **st.get("args", {}))
            obs.client.publish(obs.base + "cmd", sign(body, self.key), qos=1)
            ack = self.wait_for(lambda: obs.acks.get(body["req_id"]), 10 * self.speed,
                                "ack of %s" % st["cmd"])
            want = st.get("expect", {"ok": True})
            if not matches(ack, want):
                raise ScenarioFailed("%s: ack %s does not match %s" % (st["cmd"], ack, want))
            self._save(st, ack)
            return ack
        if do == "expect_event":
            want = dict(st.get("match", {}))
            want["type"] = st["type"]

            def find():
                for i in range(self.cursor, len(obs.events)):
                    if matches(obs.events[i], want):
                        self.cursor = i + 1
                        return obs.events[i]
                return None
            try:
                ev = self.wait_for(find, st.get("within_s", 10), "event %s" % json.dumps(want))
            except ScenarioFailed as e:
                seen = [json.dumps(x, sort_keys=True) for x in obs.events[self.cursor:]]
                raise ScenarioFailed("%s; events since the last match: %s"
                                     % (e, "; ".join(seen) or "none")) from None
            self._save(st, ev)
            return ev
        if do == "expect_no_event":
            start = len(obs.events)
            self._sleep(st.get("for_s", 2))
            bad = [e for e in obs.events[start:] if e.get("type") == st["type"]]
            if bad:
                raise ScenarioFailed("unexpected %s: %s" % (st["type"], bad[0]))
            return None
        if do in ("expect_state", "expect_slot", "expect_world"):
            if do == "expect_state":
                get, what = (lambda: obs.state), "cabinet state"
            elif do == "expect_world":
                get, what = (lambda: obs.world), "sim/world"
            else:
                n = st["slot"]
                get, what = (lambda: obs.slots.get(n)), "slot %d state" % n
            want = st.get("match", {})
            try:
                got = self.wait_for(lambda: get() if matches(get(), want) else None,
                                    st.get("within_s", 10),
                                    "%s matching %s" % (what, json.dumps(want)))
            except ScenarioFailed as e:
                raise ScenarioFailed("%s; last seen: %s"
                                     % (e, json.dumps(get(), sort_keys=True))) from None
            self._save(st, got)
            return got
        if do == "expect_status":
            return self.wait_for(lambda: obs.status if obs.status == st["value"] else None,
                                 st.get("within_s", 10), "status %s" % st["value"])
        if do == "wait":
            self._sleep(st.get("s", 1))
            return None
        raise ScenarioFailed("unknown step %r" % do)

    def _save(self, st, source):
        for name, path in st.get("save", {}).items():
            self.env[name] = dig(source, path)

    def run(self, scenario):
        for i, st in enumerate(scenario["steps"]):
            label = st.get("note") or "%s %s" % (st.get("do"), st.get("action") or st.get("cmd")
                                                 or st.get("type") or "")
            try:
                self.step(st)
            except ScenarioFailed as e:
                self.out("FAIL step %d (%s): %s" % (i + 1, label.strip(), e))
                raise
            self.out("ok   step %d: %s" % (i + 1, label.strip()))


def load(path):
    with open(path) as f:
        sc = json.load(f)
    if not isinstance(sc, dict) or not isinstance(sc.get("steps"), list):
        raise ValueError("%s: a scenario is an object with a list of steps" % path)
    return sc
