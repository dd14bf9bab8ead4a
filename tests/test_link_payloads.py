# Every payload the link publishes validates against docs/schemas: a real core in a simulated
# world does a whole swap, driven by signed commands over a real broker, through the link.
import json
import time

import pytest
from brokers import Watcher, broker, wait_until  # noqa: F401
from coreworld import Battery, rider_inserts, rider_takes, stocked_rig
from umqtt.simple import MQTTClient

from tukar.gate import Gate
from tukar.link import Link
from tukar.outbox import Outbox
from tukar_tools import schemas
from tukar_tools.sign import command, sign

pytestmark = pytest.mark.timeout(60)
KEY = bytes(range(32))


class Shell:
    """The app's duties toward the link, cut down: events to the outbox, dirty state posted,
    commands through the gate into the core, acks back, telemetry now and then."""

    def __init__(self, rig, link):
        self.rig = rig
        self.link = link
        self.gate = Gate(KEY)

    def pump(self):
        core = self.rig.core
        for ev in self.rig.events:
            self.link.outbox.add_event(ev)
        self.rig.events.clear()
        if core.dirty & 1:
            self.link.post_state("state", core.cabinet_state())
        for n in range(1, core.n_slots + 1):
            if core.dirty & (1 << n):
                self.link.post_state("slot/%d/state" % n, core.slot_state(n))
        core.dirty = 0
        for payload, retained in self.link.take_commands():
            body, ack = self.gate.admit(payload, retained, self.rig.now, None)
            if body is not None:
                ack = core.command(body)
                self.gate.remember(body["req_id"], ack)
                self.rig.events.extend(core.events)
                core.events.clear()
            self.link.post_ack(ack)

    def telemetry(self):
        t = self.rig.core.telemetry()
        t.update({"ts": None, "up_ms": self.rig.core.up_ms(), "heap_free": 90000,
                  "uptime_s": self.rig.core.up_ms() // 1000, "rssi": -61})
        self.link.post_telemetry(t)

    def run(self, ms):
        self.rig.run(ms)
        self.pump()


def test_every_payload_published_in_a_swap_validates(broker):
    rig = stocked_rig()
    cab = "pay-%d" % broker.port
    link = Link({"id": cab, "host": "127.0.0.1", "port": broker.port, "keepalive_s": 5,
                 "io_timeout_s": 2},
                MQTTClient, Outbox(), lambda: {"id": cab, "fw": "0.1.0", "board": "test",
                                               "slots": 12, "profiles": ["ref48v"],
                                               "boot": {"reason": "power_on", "count": 1},
                                               "time_synced": False})
    shell = Shell(rig, link)
    w = Watcher(broker.port, "tukar/%s/#" % cab)
    shell.pump()
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "connected")
        shell.telemetry()
        w.publish("tukar/%s/cmd" % cab, sign(command("start_swap", "r-1", id_token="rider-7"), KEY))
        w.publish("tukar/%s/cmd" % cab, b"{not json")
        w.publish("tukar/%s/cmd" % cab, sign(command("start_swap", "r-1", id_token="rider-7"), KEY))
        wait_until(lambda: (shell.pump(), rig.core.session is not None)[1], 10, "session open")
        shell.pump()
        rider_inserts(rig, Battery("B-0042", soc=20))
        shell.pump()
        rider_takes(rig)
        shell.run(1000)
        shell.telemetry()
        w.publish("tukar/%s/cmd" % cab, sign(command("rebirth", "r-2"), KEY))
        wait_until(lambda: (shell.pump(), len(w.on("ack")) >= 4)[1], 10, "4 acks")
        wait_until(lambda: len(link.outbox) == 0, 10, "outbox drained")
        time.sleep(1.2)  # the last coalesced states
    finally:
        link.stop()
        wait_until(lambda: not link.running, 10, "stopped")
    w.close()
    seen = {}
    for topic, payload, _ in w.messages:
        suffix = topic.split("/", 2)[2]
        if suffix == "cmd":
            continue
        kind = suffix if not suffix.startswith("slot/") else "slot/N/state"
        seen[kind] = seen.get(kind, 0) + 1
        assert schemas.errors(suffix, payload if kind == "status" else json.loads(payload)) == [], \
            (suffix, payload)
    assert set(seen) == {"info", "status", "state", "slot/N/state", "event", "telemetry", "ack"}
    types = [json.loads(p)["type"] for p, _ in w.on("event")]
    for t in ("Boot", "SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted"):
        assert t in types
    acks = [json.loads(p) for p, _ in w.on("ack")]
    assert [a.get("duplicate") for a in acks if a["req_id"] == "r-1"] == [None, True]
    assert any(a["error"] == "bad_json" for a in acks)
