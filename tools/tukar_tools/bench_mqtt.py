"""Bytes on the wire for a 12-slot cabinet: a steady-state day and one swap, against a naive
design that republishes every value every 10 s. Measured in one run, at simulated time.

The real core runs in the tests' simulated world (tests/coreworld.py); a cut-down shell hands its
events, state and telemetry to the real Link, whose client is the host shim of umqtt.simple over a
counting in-memory broker: the bytes are the shim's own MQTT encoding (fixed header, topic, packet
id, payload) in both directions, PUBACKs, pings and the connect included. TCP/IP and TLS framing
come on top (see docs/mqtt.md).

    .venv/bin/python -m tukar_tools.bench_mqtt [--hours H]
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _p in (ROOT / "firmware", ROOT / "tests", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from umqtt.simple import MQTTClient, _remaining  # noqa: E402  (the host shim: one MQTT encoder)

KEY = bytes(range(32))
TICK_MS = 50
DAY_S = 86400
# Each MQTT packet rides in at least one TCP segment (IPv4 20 + TCP 20 bytes of headers) and,
# under TLS 1.2 with AES-GCM, one record (5 header + 8 nonce + 16 tag): an estimate, before TCP's
# own acknowledgements, retransmissions and the cellular bearer's overhead.
TCP_IP_BYTES = 40
TLS_RECORD_BYTES = 29


class CountingBroker:
    """An in-memory broker behind a MicroPython-like stream: answers CONNECT, SUBSCRIBE, QoS 1
    PUBLISH and PINGREQ as a broker would, and counts bytes per topic suffix and direction."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.inbox = bytearray()  # broker -> cabinet
        self.outbuf = bytearray()  # cabinet -> broker, not yet a whole packet
        self.bytes = {}  # category -> bytes (both directions)
        self.packets = 0
        self.packets_by = {}  # category -> packets (both directions)
        self.blocking = True

    def count(self, cat, n):
        self.bytes[cat] = self.bytes.get(cat, 0) + n
        self.packets += 1
        self.packets_by[cat] = self.packets_by.get(cat, 0) + 1

    def total(self, cats=None):
        return sum(v for k, v in self.bytes.items() if cats is None or k in cats)

    def deliver(self, topic, payload, qos=1, pid=1):
        """A message from the back end (a command) on its way to the cabinet."""
        var = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"")
        body = var + payload
        pkt = bytes((0x30 | qos << 1,)) + _remaining(len(body)) + body
        self.inbox += pkt
        self.count("cmd", len(pkt))

    # -- stream API seen by the shim --------------------------------------------------------
    def read(self, n):
        if not self.inbox:
            if not self.blocking:
                return None
            raise OSError(110, "ETIMEDOUT")
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out

    def write(self, buf, n=None):
        data = bytes(buf if n is None else memoryview(buf)[:n])
        self.outbuf += data
        self._parse()
        return len(data)

    def setblocking(self, flag):
        self.blocking = flag

    def settimeout(self, t):
        self.blocking = True

    def close(self):
        pass

    def _parse(self):
        b = self.outbuf
        while len(b) >= 2:
            n, shift, i = 0, 0, 1
            while True:
                if i >= len(b):
                    return
                n |= (b[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not b[i - 1] & 0x80:
                    break
            if len(b) < i + n:
                return
            pkt = bytes(b[:i + n])
            del b[:i + n]
            self._answer(pkt[0], pkt[i:], len(pkt))

    def _answer(self, head, body, size):
        kind = head & 0xF0
        if kind == 0x10:
            self.count("connect", size)
            self.inbox += b"\x20\x02\x00\x00"
            self.count("connect", 4)
        elif kind == 0x80:
            self.count("connect", size)
            self.inbox += b"\x90\x03" + body[:2] + b"\x01"
            self.count("connect", 5)
        elif kind == 0xC0:
            self.count("ping", size)
            self.inbox += b"\xd0\x00"
            self.count("ping", 2)
        elif kind == 0x30:
            tlen = body[0] << 8 | body[1]
            topic = body[2:2 + tlen].decode()
            cat = topic[len(self.prefix):]
            cat = "slot/N/state" if cat.startswith("slot/") else cat
            self.count(cat, size)
            if head & 6:
                pid = body[2 + tlen:4 + tlen]
                self.inbox += b"\x40\x02" + pid
                self.count(cat, 4)
        elif kind == 0x40:
            self.count("cmd", size)  # our PUBACK of a command
        else:
            self.count("other", size)


class SimClock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now & 0x3FFFFFFF

    def sleep_ms(self, ms):
        pass  # the bench drives time


def counting_client(broker):
    class Counting(MQTTClient):
        def _open(self, timeout):
            return broker
    return Counting


class Cabinet:
    """Core + world + link + the app's duties toward the link, at simulated time."""

    def __init__(self, slots=12):
        from coreworld import stocked_rig
        from tukar.gate import Gate
        from tukar.link import Link
        from tukar.outbox import Outbox
        # every slot but one occupied: the most telemetry, and room for a swap
        self.rig = stocked_rig(slots=slots, full=slots // 2, half=slots - slots // 2 - 1)
        self.broker = CountingBroker("tukar/cab-1/")
        self.clock = SimClock()
        # keepalive_s left out: the firmware's default is what a cabinet uses
        self.link = Link({"id": "cab-1", "host": "sim", "port": 1883},
                         counting_client(self.broker), Outbox(), self._info, 0, clock=self.clock)
        self.gate = Gate(KEY)
        self.period_ms = self.rig.core.cfg.get("telemetry_period_s", 60) * 1000
        self.next_telemetry = 0

    def _info(self):
        return {"id": "cab-1", "fw": "0.1.0", "board": "bench", "slots": self.rig.core.n_slots,
                "profiles": sorted(self.rig.core.profiles), "time_synced": True,
                "boot": {"reason": "power_on", "count": self.rig.core.boot}}

    def tick(self):
        rig, core, link = self.rig, self.rig.core, self.link
        rig.tick()
        self.clock.now = rig.now
        for ev in rig.events:
            link.outbox.add_event(ev)
        rig.events.clear()
        if core.dirty & 1:
            link.post_state("state", core.cabinet_state())
        for n in range(1, core.n_slots + 1):
            if core.dirty & (1 << n):
                link.post_state("slot/%d/state" % n, core.slot_state(n))
        core.dirty = 0
        for payload, retained in link.take_commands():
            body, ack = self.gate.admit(payload, retained, rig.now, None)
            if body is not None:
                ack = core.command(body)
                self.gate.remember(body["req_id"], ack)
                rig.events.extend(core.events)
                core.events.clear()
            link.post_ack(ack)
        if rig.now >= self.next_telemetry:
            self.next_telemetry += self.period_ms
            link.post_telemetry(app_telemetry(core))
        link.step()
        link.step()

    def run(self, ms):
        for _ in range(ms // TICK_MS):
            self.tick()

    def command(self, cmd, req_id, **args):
        from tukar_tools.sign import command, sign
        self.broker.deliver(b"tukar/cab-1/cmd", sign(command(cmd, req_id, ts=0, **args), KEY))


def app_telemetry(core):
    """What App.telemetry publishes: the core's measurements plus cabinet health, with the
    widest values a device reports (6-digit heap, 3-digit signal, a 4-digit tick lag)."""
    t = core.telemetry()
    t.update({"heap_free": 61234, "uptime_s": core.up_ms() // 1000, "rssi": -67,
              "tick_lag_ms": 1234})
    return t


def naive_day(cab):
    """Every value every 10 s: the cabinet state, 12 slot states (retained, QoS 1) and the
    telemetry (QoS 0) republished as they are, no coalescing, no change detection."""
    from tukar.outbox import dumps
    core = cab.rig.core
    per_round = 0
    docs = [("tukar/cab-1/state", core.cabinet_state(), 1)]
    docs += [("tukar/cab-1/slot/%d/state" % n, core.slot_state(n), 1)
             for n in range(1, core.n_slots + 1)]
    docs.append(("tukar/cab-1/telemetry", app_telemetry(core), 0))
    for topic, doc, qos in docs:
        payload = dumps(dict(doc, seq=1)).encode()  # the same compact JSON as the link
        var = 2 + len(topic) + (2 if qos else 0)
        per_round += 1 + len(_remaining(var + len(payload))) + var + len(payload)
        per_round += 4 if qos else 0  # PUBACK
    return per_round * DAY_S // 10


def measure(hours):
    from coreworld import Battery
    cab = Cabinet()
    cab.run(5000)  # connect, birth, settle
    born = cab.broker.total()
    b0 = dict(cab.broker.bytes)
    p0, pings0 = cab.broker.packets, cab.broker.packets_by.get("ping", 0)
    sim_ms = int(hours * 3600 * 1000)
    cab.run(sim_ms)
    steady = cab.broker.total() - born
    per_day = steady * DAY_S * 1000 // sim_ms
    by_cat = {k: (v - b0.get(k, 0)) * DAY_S * 1000 // sim_ms for k, v in cab.broker.bytes.items()}
    packets = (cab.broker.packets - p0) * DAY_S * 1000 // sim_ms
    pings = (cab.broker.packets_by.get("ping", 0) - pings0) * DAY_S * 1000 // sim_ms
    telemetry_bytes = cab.broker.bytes.get("telemetry", 0) - b0.get("telemetry", 0)
    telemetry_msgs = cab.broker.packets_by.get("telemetry", 0)

    swap_cats = ("event", "ack", "cmd", "state", "slot/N/state")
    before = cab.broker.total(swap_cats)
    cab.command("start_swap", "r-1", id_token="rider-77")
    cab.run(600)
    core, world = cab.rig.core, cab.rig.world
    n = core.session.slot_in
    world.open_door(n)
    world.insert(n, Battery("B-9001", soc=18))
    world.close_door(n)
    cab.run(1500)
    n = core.session.slot_out
    world.open_door(n)
    world.take(n)
    world.close_door(n)
    cab.run(3000)
    per_swap = cab.broker.total(swap_cats) - before
    framing = packets * (TCP_IP_BYTES + TLS_RECORD_BYTES)
    return {"telemetry_bytes": telemetry_bytes * 1000 * cab.period_ms // sim_ms // 1000,
            "telemetry_period_s": cab.period_ms // 1000, "telemetry_messages": telemetry_msgs,
            "per_day": per_day, "per_swap": per_swap, "naive_per_day": naive_day(cab),
            "packets_per_day": packets, "ping_packets_per_day": pings,
            "framing_per_day": framing, "keepalive_s": cab.link.keepalive_s,
            "by_category_per_day": by_cat, "birth": born, "hours": hours,
            "slots": core.n_slots, "occupied": sum(1 for s in core.slots if s.inp.present)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0, help="simulated steady state (default 2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.hours)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print("12-slot cabinet, %d slots occupied, %.1f h simulated steady state" %
          (r["occupied"], r["hours"]))
    print("  this link: %8d bytes/day   (%s)" % (r["per_day"], ", ".join(
        "%s %d" % kv for kv in sorted(r["by_category_per_day"].items(), key=lambda x: -x[1]))))
    print("  naive:     %8d bytes/day   (every value every 10 s)" % r["naive_per_day"])
    print("  telemetry: %8d bytes each, every %d s" % (r["telemetry_bytes"],
                                                         r["telemetry_period_s"]))
    print("  ratio:     %8.1f x" % (r["naive_per_day"] / max(1, r["per_day"])))
    print("  one swap:  %8d bytes        (command, acks, events, state changes)" % r["per_swap"])
    print("  birth:     %8d bytes        (connect, subscribe, info, status, 13 states, telemetry)"
          % r["birth"])
    print("  packets:   %8d per day      (%d of them pings and replies, keepalive %d s)" % (
        r["packets_per_day"], r["ping_packets_per_day"], r["keepalive_s"]))
    print("  framing:   %8d bytes/day   (estimate: %d bytes TCP/IPv4 + %d bytes TLS record per "
          "packet; total with MQTT %d)" % (r["framing_per_day"], TCP_IP_BYTES, TLS_RECORD_BYTES,
                                           r["per_day"] + r["framing_per_day"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
