"""The web console under a fleet: N cabinets publishing contract messages (retained status, info,
state and slot states, then state changes, telemetry and events at a steady rate) into a loopback
Mosquitto, the console open in headless Chromium. Prints how long the page took to show them all,
and, over the measured window, the page's frame intervals, its render and per-message times, and
the long tasks (over 50 ms) the browser saw: the figures of docs/web.md.

    python -m tukar_tools.bench_web --cabinets 500 --rate 600 --seconds 20

The cabinets are a load generator speaking the contract, not simulated firmware: 500 simulated
cabinets would measure the simulator's host, not the page."""
import argparse
import json
import random
import sys
import threading
import time

from tukar_tools import broker, web
from tukar_tools.browser import Chromium

SLOTS = 12
STATES = ("ready", "charging", "charging", "empty", "ready", "charge_paused")
# one_change: 60 % a slot's state and its cabinet's (2 messages), 25 % telemetry, 15 % an event
MESSAGES_PER_CHANGE = 0.6 * 2 + 0.25 + 0.15


def cabinet_ids(n):
    return ["load-%03d" % (i + 1) for i in range(n)]


def slot_doc(n, state, soc, seq):
    battery = None if state == "empty" else {
        "serial": "P-%d" % n, "profile": "ref48v", "soc": soc, "soh": 95, "temp_c": 29.5,
        "voltage_v": 51.2, "current_a": 8.1 if state == "charging" else 0, "cycles": 211, "faults": []}
    return {"slot": n, "state": state, "door": "closed", "lock": "locked", "battery": battery,
            "charger": {"on": state == "charging", "current_a": 8.0 if state == "charging" else 0},
            "dispensable": state == "ready", "faults": [], "seq": seq}


def cabinet_doc(slots, seq, mode="in_service", alarms=()):
    count = {s: sum(1 for d in slots.values() if d["state"] == s) for s in
             ("ready", "empty", "charging", "fault")}
    return {"mode": mode, "ready": count["ready"], "empty": count["empty"],
            "charging": count["charging"], "faulted": count["fault"], "session": None,
            "temp_c": 31.2, "alarms": list(alarms), "seq": seq}


class Fleet:
    """N cabinets' contract messages, published from one paho client."""

    def __init__(self, port, n, prefix="tukar", seed=1):
        import paho.mqtt.client as paho
        self.prefix = prefix
        self.ids = cabinet_ids(n)
        self.rnd = random.Random(seed)
        self.slots = {c: {k: slot_doc(k, self.rnd.choice(STATES), self.rnd.randint(5, 100), 0)
                          for k in range(1, SLOTS + 1)} for c in self.ids}
        self.seq = dict.fromkeys(self.ids, 0)
        self.events = dict.fromkeys(self.ids, 0)
        self.sent = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="tukar-bench-web")
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def pub(self, cab, kind, doc, retain=False):
        payload = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
        self.client.publish("%s/%s/%s" % (self.prefix, cab, kind), payload, qos=0, retain=retain)
        self.sent += 1

    def next_seq(self, cab):
        self.seq[cab] = (self.seq[cab] + 1) % 256
        return self.seq[cab]

    def birth(self):
        for c in self.ids:
            self.pub(c, "info", {"id": c, "fw": "bench", "board": "tukar-12-wroom", "slots": SLOTS,
                                 "profiles": ["ref48v"], "bdseq": 1,
                                 "boot": {"reason": "power_on", "count": 1}, "time_synced": True},
                     retain=True)
            self.pub(c, "status", "online", retain=True)
            for n, d in self.slots[c].items():
                self.pub(c, "slot/%d/state" % n, dict(d, seq=self.next_seq(c)), retain=True)
            self.pub(c, "state", cabinet_doc(self.slots[c], self.next_seq(c)), retain=True)

    def one_change(self):
        """A random cabinet moves: a slot changes state and SoC (with its cabinet state), or it
        sends telemetry, or an event."""
        c = self.rnd.choice(self.ids)
        roll = self.rnd.random()
        if roll < 0.6:
            n = self.rnd.randint(1, SLOTS)
            d = slot_doc(n, self.rnd.choice(STATES), self.rnd.randint(5, 100), self.next_seq(c))
            self.slots[c][n] = d
            self.pub(c, "slot/%d/state" % n, d, retain=True)
            self.pub(c, "state", cabinet_doc(self.slots[c], self.next_seq(c)), retain=True)
        elif roll < 0.85:
            full = [n for n, d in sorted(self.slots[c].items()) if d["battery"]]
            self.pub(c, "telemetry", {"slots": full, "soc": [self.slots[c][n]["battery"]["soc"] for n in full],
                                      "temp_c": [29.5] * len(full), "voltage_v": [51.2] * len(full),
                                      "current_a": [8.1] * len(full), "cabinet_temp_c": 31.2,
                                      "ts": int(time.time()), "ready": 0, "empty": 0, "heap_free": None,
                                      "uptime_s": 100, "rssi": -67, "seq": self.next_seq(c)})
        else:
            self.events[c] += 1
            self.pub(c, "event", {"id": "%s-1-%d" % (c, self.events[c]), "type": "ChargeStarted",
                                  "ts": int(time.time()), "up_ms": 1000, "seq": self.next_seq(c),
                                  "slot": self.rnd.randint(1, SLOTS), "serial": "P-1"})

    def run(self, rate, stop):
        """About `rate` messages a second until `stop` is set."""
        period = MESSAGES_PER_CHANGE / max(rate, 1)
        due = time.monotonic()
        while not stop.is_set():
            self.one_change()
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


# Measures the page for `ms`: every frame's interval, the long tasks, the renders and messages.
_MEASURE = """
new Promise((resolve) => {
  const p = tukarConsole.perf;
  p.renders = [];
  const i0 = p.ingestMs, m0 = p.messages;
  const frames = [], longs = [];
  let obs = null;
  try {
    obs = new PerformanceObserver((l) => l.getEntries().forEach((e) => longs.push(e.duration)));
    obs.observe({type: "longtask"});
  } catch (e) {}
  let last = performance.now();
  const end = last + %(ms)d;
  function frame(t) {
    frames.push(t - last);
    last = t;
    if (t < end) requestAnimationFrame(frame);
    else {
      if (obs) obs.disconnect();
      resolve({frames, longs, renders: p.renders, ingest_ms: p.ingestMs - i0,
               messages: p.messages - m0});
    }
  }
  requestAnimationFrame(frame);
})
"""


def pct(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(m, seconds):
    f, r = m["frames"], m["renders"]
    return {"frames": len(f), "fps": round(len(f) / seconds, 1),
            "frame_ms_p50": round(pct(f, 50), 1), "frame_ms_p95": round(pct(f, 95), 1),
            "frame_ms_p99": round(pct(f, 99), 1), "frame_ms_max": round(max(f or [0]), 1),
            "frames_over_50ms": sum(1 for x in f if x > 50),
            "render_ms_p50": round(pct(r, 50), 2), "render_ms_p95": round(pct(r, 95), 2),
            "render_ms_max": round(max(r or [0]), 2),
            "ingest_us_mean": round(m["ingest_ms"] * 1000 / m["messages"], 1) if m["messages"] else 0.0,
            "messages_per_s": round(m["messages"] / seconds, 1),
            "long_tasks": len(m["longs"]), "long_task_ms_total": round(sum(m["longs"]), 1)}


def measure(cabinets=500, rate=600.0, seconds=20.0, width=1280, height=900):
    b = broker.start(ws_port=broker.free_port())
    server = web.serve()
    chrome = None
    fleet = None
    stop = threading.Event()
    try:
        fleet = Fleet(b.port, cabinets)
        fleet.birth()
        chrome = Chromium(width=width, height=height)
        url = web.console_url("127.0.0.1", server.server_port, "ws://127.0.0.1:%d/" % b.ws_port)
        t0 = time.monotonic()
        chrome.goto(url)
        chrome.wait("document.querySelectorAll('#fleet-rows tr').length === %d" % cabinets, 120,
                    "every cabinet in the fleet view")
        first = time.monotonic() - t0
        load = threading.Thread(target=fleet.run, args=(rate, stop), daemon=True)
        load.start()
        time.sleep(2)  # the load settles
        sent0 = fleet.sent
        fleet_view = summary(chrome.evaluate(_MEASURE % {"ms": seconds * 1000}, timeout=seconds + 60),
                             seconds)
        fleet_view["published_per_s"] = round((fleet.sent - sent0) / seconds, 1)
        chrome.evaluate("location.hash = '#/cabinet/%s'" % fleet.ids[0])
        chrome.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 30)
        cab_s = min(seconds, 10.0)
        cabinet_view = summary(chrome.evaluate(_MEASURE % {"ms": cab_s * 1000}, timeout=cab_s + 60),
                               cab_s)
        return {"cabinets": cabinets, "rate": rate, "seconds": seconds,
                "all_shown_s": round(first, 2), "retained_at_start": cabinets * (SLOTS + 3),
                "fleet_view": fleet_view, "cabinet_view": cabinet_view}
    finally:
        stop.set()
        if fleet is not None:
            fleet.close()
        if chrome is not None:
            chrome.close()
        server.shutdown()
        b.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tukar_tools.bench_web", description=__doc__.splitlines()[0])
    ap.add_argument("--cabinets", type=int, default=500)
    ap.add_argument("--rate", type=float, default=600.0, help="messages a second across the fleet")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window of the fleet view")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.cabinets, args.rate, args.seconds)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print_report(r)
    return 0


def print_report(r):
    print("Web console in headless Chromium, %d cabinets (%d retained messages at the start), "
          "%s messages/s published: all shown %.2f s after the page was opened"
          % (r["cabinets"], r["retained_at_start"], r["fleet_view"]["published_per_s"],
             r["all_shown_s"]))
    for view in ("fleet_view", "cabinet_view"):
        v = r[view]
        print("  %s: %s msg/s received; %s frames/s, interval p50 %s ms, p95 %s ms, p99 %s ms, "
              "max %s ms, %d over 50 ms; render p50 %s ms, p95 %s ms, max %s ms; %s us a message; "
              "long tasks %d (%s ms)" % (
                  view.replace("_", " "), v["messages_per_s"], v["fps"], v["frame_ms_p50"],
                  v["frame_ms_p95"], v["frame_ms_p99"], v["frame_ms_max"], v["frames_over_50ms"],
                  v["render_ms_p50"], v["render_ms_p95"], v["render_ms_max"], v["ingest_us_mean"],
                  v["long_tasks"], v["long_task_ms_total"]))


if __name__ == "__main__":
    sys.exit(main())
