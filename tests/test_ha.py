# `tukar ha`, the Home Assistant discovery bridge, against a real Mosquitto: fake cabinets that
# publish what docs/mqtt.md says, and `tukar sim` (the unmodified firmware) whose real payloads
# every value template is rendered against, with Jinja2 in a sandbox as Home Assistant renders it.
# Each test has its own topic prefix and discovery prefix.
import contextlib
import io
import json
import pathlib
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from brokers import Broker, Watcher, free_port, require, wait_until
from tukar_tools import ha, schemas
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner
from tukar_tools.sign import parse_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEED = 2.0  # the simulator's, as in test_sim_e2e.py
SLOT_KEYS = ("state", "soc", "temperature", "occupied", "charging", "fault", "lock")
CABINET_KEYS = ("mode", "alarms", "estop", "smoke", "temperature", "ready", "empty", "charging",
                "faulted")


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    require("mosquitto")
    b = Broker("mosquitto", tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def prefix():
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def disco():
    return "ha" + uuid.uuid4().hex[:10]


# --- what Home Assistant requires of a device-based discovery payload ---------------------------
# From Home Assistant's MQTT documentation (device discovery, sensor, binary sensor, availability):
# `dev` (identifiers) and `o` (origin name) at the root, shared options limited to availability,
# origin, state/command topic, qos and encoding; every component a mapping with its platform `p`
# and, being an entity, a `unique_id`; a sensor and a binary sensor need a state topic; a device
# class from the platform's list; an enum sensor lists its options and has neither a unit nor a
# state class; a numeric device class takes only its own units.

ROOT_KEYS = {"dev", "o", "cmps", "availability", "availability_mode", "qos", "encoding",
             "state_topic", "command_topic"}
COMMON_KEYS = {"p", "unique_id", "name", "state_topic", "value_template", "availability",
               "availability_mode", "json_attributes_topic", "json_attributes_template", "icon",
               "entity_category", "enabled_by_default", "default_entity_id", "qos", "encoding",
               "expire_after", "force_update"}
PLATFORM_KEYS = {
    "sensor": COMMON_KEYS | {"device_class", "unit_of_measurement", "state_class", "options",
                             "suggested_display_precision", "last_reset_value_template"},
    "binary_sensor": COMMON_KEYS | {"device_class", "payload_on", "payload_off", "off_delay"},
}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window"}
SENSOR_CLASS_UNITS = {"battery": {"%"}, "temperature": {"°C", "°F", "K"}, "enum": {None}}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
TOPIC_LEVEL = re.compile(r"[a-zA-Z0-9_-]+\Z")
JINJA = ImmutableSandboxedEnvironment()  # Home Assistant's templates run in this sandbox


def valid_topic(t):
    return isinstance(t, str) and t and "+" not in t and "#" not in t


def shape_errors(topic, cfg):
    """Everything in one discovery message that Home Assistant would refuse."""
    errs = []
    parts = topic.split("/")
    if len(parts) != 4 or parts[1] != "device" or parts[3] != "config" \
            or not TOPIC_LEVEL.match(parts[2]):
        errs.append("topic %s is not <prefix>/device/<object id>/config" % topic)
    errs += ["root key %s" % k for k in set(cfg) - ROOT_KEYS]
    dev = cfg.get("dev") or {}
    if not (isinstance(dev.get("ids"), list) and dev["ids"] and isinstance(dev.get("name"), str)):
        errs.append("dev needs ids and a name: %r" % dev)
    if not isinstance((cfg.get("o") or {}).get("name"), str):
        errs.append("o needs a name")
    shared_avail = cfg.get("availability")
    for a in shared_avail or []:
        if not valid_topic(a.get("topic")) or set(a) - {"topic", "payload_available",
                                                        "payload_not_available", "value_template"}:
            errs.append("availability %r" % a)
    cmps = cfg.get("cmps")
    if not isinstance(cmps, dict) or not cmps:
        return errs + ["cmps must be a non-empty mapping"]
    for cid, c in cmps.items():
        where = "component %s" % cid
        if not TOPIC_LEVEL.match(cid):
            errs.append("%s: id" % where)
        p = c.get("p")
        if p not in PLATFORM_KEYS:
            errs.append("%s: platform %r" % (where, p))
            continue
        errs += ["%s: unknown key %s" % (where, k) for k in set(c) - PLATFORM_KEYS[p]]
        if not isinstance(c.get("unique_id"), str) or not c["unique_id"]:
            errs.append("%s: unique_id required" % where)
        if not valid_topic(c.get("state_topic", cfg.get("state_topic"))):
            errs.append("%s: state_topic required" % where)
        for k in ("value_template", "json_attributes_template"):
            if k in c:
                try:
                    JINJA.from_string(c[k])
                except Exception as e:
                    errs.append("%s: %s does not parse: %s" % (where, k, e))
        dc = c.get("device_class")
        if p == "binary_sensor" and dc is not None and dc not in BINARY_SENSOR_CLASSES:
            errs.append("%s: binary sensor device class %r" % (where, dc))
        if p == "sensor":
            if dc is not None and dc not in SENSOR_CLASS_UNITS:
                errs.append("%s: sensor device class %r (not checked here)" % (where, dc))
            elif dc is not None and c.get("unit_of_measurement") not in SENSOR_CLASS_UNITS[dc]:
                errs.append("%s: unit %r for %s" % (where, c.get("unit_of_measurement"), dc))
            if dc == "enum":
                opts = c.get("options")
                if not (isinstance(opts, list) and opts and all(isinstance(o, str) for o in opts)):
                    errs.append("%s: an enum sensor lists its options" % where)
                if "state_class" in c:
                    errs.append("%s: an enum sensor has no state class" % where)
            elif "options" in c:
                errs.append("%s: options only for an enum sensor" % where)
            if "state_class" in c and c["state_class"] not in STATE_CLASSES:
                errs.append("%s: state class %r" % (where, c["state_class"]))
        if not shared_avail and "availability" not in c:
            errs.append("%s: no availability" % where)
    ids = [c.get("unique_id") for c in cmps.values()]
    if len(set(ids)) != len(ids):
        errs.append("unique ids repeat")
    return errs


def render(template, payload):
    """What Home Assistant's state becomes: the template over `value` and `value_json`."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    try:
        value_json = json.loads(text)
    except ValueError:
        value_json = None
    return JINJA.from_string(template).render(value=text, value_json=value_json)


def on_off(b):
    return "ON" if b else "OFF"


def none_or(v):
    return "None" if v is None else str(v)


def expected(key, n, data):
    """The value each entity must show for a payload, restated from docs/mqtt.md and the
    telemetry schema (`key` is the component's key without its slot part)."""
    if n is not None:
        b = data.get("battery") if "battery" in data else None
        if key == "state":
            return data["state"]
        if key in ("soc", "temperature"):
            col = data["soc" if key == "soc" else "temp_c"]
            return none_or(col[data["slots"].index(n)]) if n in data["slots"] else "None"
        if key == "occupied":
            return on_off(b is not None)
        if key == "charging":
            return on_off(data["charger"]["on"])
        if key == "fault":
            return on_off(data["state"] == "fault" or data["faults"] or (b and b["faults"]))
        if key == "lock":
            return on_off(data["lock"] == "unlocked")  # device class lock: ON is unlocked
    if key == "mode":
        return data["mode"]
    if key == "alarms":
        return ", ".join(data["alarms"]) or "none"
    if key == "estop":
        return on_off("estop" in data["alarms"])
    if key == "smoke":
        return on_off("smoke" in data["alarms"])
    if key == "temperature":
        return none_or(data["cabinet_temp_c"])
    return str(data[key])  # the counts


def split_key(cid):
    m = re.match(r"slot(\d+)_(\w+)\Z", cid)
    return (m.group(2), int(m.group(1))) if m else (cid, None)


# --- running the bridge ------------------------------------------------------------------------

@contextlib.contextmanager
def bridging(port, prefix, disco, **kw):
    out = io.StringIO()
    b = ha.Bridge("127.0.0.1", port, prefix=prefix, discovery_prefix=disco, settle=0.2,
                  out=out, err=out, **kw)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", b.run()), daemon=True)
    t.start()
    try:
        wait_until(lambda: b.ready.is_set() or "rc" in result, 10, "the bridge subscribed")
        assert b.ready.is_set(), out.getvalue()
        yield b
    finally:
        b.stop()
        t.join(10)
    assert result.get("rc") == ha.EXIT_OK, out.getvalue()


def close(w):
    """A watcher's DISCONNECT first: it wakes paho's loop, which otherwise sleeps out a second."""
    w.client.disconnect()
    w.client.loop_stop()


def retained(port, disco):
    """Every retained config under the discovery prefix, as a fresh subscriber (Home Assistant
    starting) gets them: {topic: payload}. Our own message, published after the SUBACK, comes
    back after every retained one (Mosquitto), so none is missed."""
    w = Watcher(port, "%s/#" % disco)
    try:
        mark = uuid.uuid4().hex.encode()
        w.publish("%s/mark" % disco, mark)
        w.wait(lambda msgs: any(p == mark for t, p, r in msgs), 10, "our own mark")
        return {t: p for t, p, r in w.messages if r and t.endswith("/config")}
    finally:
        close(w)


def retained_configs(port, disco, want=1, timeout=10):
    """The retained configs, once there are at least `want` of them: {topic: config}."""
    end = time.monotonic() + timeout
    while True:
        got = retained(port, disco)
        if len(got) >= want:
            return {t: json.loads(p) for t, p in got.items()}
        assert time.monotonic() < end, "%d retained config(s), not %d: %s" % (len(got), want,
                                                                             sorted(got))
        time.sleep(0.1)


def retained_config_topics(port, disco):
    return sorted(retained(port, disco))


class Cabinet:
    """A fake cabinet: publishes its retained topics as the contract says."""

    def __init__(self, port, prefix, cid, slots=3):
        self.w = Watcher(port, "%s/%s/#" % (prefix, cid))
        self.base = "%s/%s/" % (prefix, cid)
        self.slots = slots

    def boot(self, fw="0.1.0"):
        self.w.publish(self.base + "info", json.dumps(
            {"id": "x", "fw": fw, "board": "tukar-test", "slots": self.slots, "profiles": [],
             "bdseq": 1, "boot": {"reason": "power_on", "count": 1}, "time_synced": False}),
            retain=True)
        self.w.publish(self.base + "status", "online", retain=True)
        self.w.publish(self.base + "state", json.dumps(CABINET_STATE), retain=True)
        for n in range(1, self.slots + 1):
            self.w.publish(self.base + "slot/%d/state" % n,
                           json.dumps(dict(EMPTY_SLOT, slot=n)), retain=True)
        return self

    def close(self):
        close(self.w)


CABINET_STATE = {"mode": "in_service", "ready": 0, "empty": 3, "charging": 0, "faulted": 0,
                 "session": None, "temp_c": 25.0, "alarms": [], "seq": 1}
EMPTY_SLOT = {"slot": 1, "state": "empty", "door": "closed", "lock": "locked", "battery": None,
              "charger": {"on": False, "current_a": 0.0}, "dispensable": False, "faults": [],
              "reason": None, "seq": 2}
BATTERY = {"serial": "B-0042", "profile": "ref48v", "soc": 63.5, "soh": 96, "temp_c": 29.5,
           "voltage_v": 51.2, "current_a": 8.1, "cycles": 211, "faults": []}


# --- the config itself -------------------------------------------------------------------------

def test_a_cabinet_gets_seven_entities_per_slot_and_every_cabinet_wide_one_in_the_shape_ha_needs():
    cfg = ha.device_config("tukar", "cab-0042", {"slots": 12, "fw": "0.1.0", "board": "b"}, 12)
    want = {"slot%d_%s" % (n, k) for n in range(1, 13) for k in SLOT_KEYS} | set(CABINET_KEYS)
    assert set(cfg["cmps"]) == want
    assert shape_errors(ha.config_topic("homeassistant", "tukar", "cab-0042"), cfg) == []
    assert cfg["availability"] == [{"topic": "tukar/cab-0042/status", "payload_available": "online",
                                    "payload_not_available": "offline"}]
    assert cfg["o"]["name"] == "tukar" and cfg["o"]["sw"]
    assert cfg["dev"]["sw"] == "0.1.0" and cfg["dev"]["ids"] == ["tukar_cab-0042"]


def test_the_shape_check_refuses_what_home_assistant_refuses():
    cfg = ha.device_config("tukar", "c", None, 1)
    topic = ha.config_topic("homeassistant", "tukar", "c")
    for breaks in (lambda c: c["cmps"]["slot1_soc"].pop("p"),
                   lambda c: c["cmps"]["mode"].pop("options"),
                   lambda c: c["cmps"]["slot1_soc"].update(unit_of_measurement="V"),
                   lambda c: c["cmps"]["slot1_lock"].update(device_class="locked"),
                   lambda c: c["cmps"]["smoke"].update(unique_id=c["cmps"]["estop"]["unique_id"]),
                   lambda c: c["cmps"]["ready"].pop("state_topic"),
                   lambda c: c.pop("o")):
        broken = json.loads(json.dumps(cfg))
        breaks(broken)
        assert shape_errors(topic, broken), breaks


def test_device_ids_fit_a_topic_level_and_stay_apart_across_prefixes():
    ids = {ha.device_id(p, "cab-1") for p in ("tukar", "a/b", "a-b", "a b", "fleet/jkt")}
    assert len(ids) == 5
    assert all(TOPIC_LEVEL.match(i) for i in ids)
    assert ha.device_id("tukar", "cab-1") == "tukar_cab-1"


SLOT_CASES = [  # (what, slot state payload, the values the slot's entities show)
    ("empty", EMPTY_SLOT, {"state": "empty", "occupied": "OFF", "charging": "OFF", "fault": "OFF",
                           "lock": "OFF"}),
    ("charging", dict(EMPTY_SLOT, state="charging", battery=BATTERY,
                      charger={"on": True, "current_a": 8.0}),
     {"state": "charging", "occupied": "ON", "charging": "ON", "fault": "OFF"}),
    ("unlocked for a swap", dict(EMPTY_SLOT, state="awaiting_battery", lock="unlocked"),
     {"lock": "ON", "occupied": "OFF"}),
    ("lock jam", dict(EMPTY_SLOT, state="fault", faults=["lock_jam"]), {"fault": "ON"}),
    ("BMS fault flags", dict(EMPTY_SLOT, state="quarantined", reason="bms_fault",
                             battery=dict(BATTERY, faults=["overvoltage"])), {"fault": "ON"}),
    ("BMS not read", dict(EMPTY_SLOT, state="identifying", battery=dict(
        BATTERY, serial=None, soc=None, temp_c=None)), {"occupied": "ON", "fault": "OFF"}),
]


@pytest.mark.parametrize("what, payload, want", SLOT_CASES, ids=[c[0] for c in SLOT_CASES])
def test_slot_templates_show_what_the_slot_state_says(what, payload, want):
    topic = "tukar/c/slot/1/state"
    assert schemas.errors(topic, json.dumps(payload)) == []  # a payload the contract allows
    cmps = ha.device_config("tukar", "c", None, 1)["cmps"]
    got = {k: render(cmps["slot1_" + k]["value_template"], json.dumps(payload)) for k in want}
    assert got == want
    attrs = json.loads(render(cmps["slot1_fault"]["json_attributes_template"], json.dumps(payload)))
    assert attrs["faults"] == payload["faults"]


TELEMETRY = {"seq": 9, "slots": [2, 3], "soc": [61.5, None], "temp_c": [31, None],
             "voltage_v": [50.1, None], "current_a": [9.9, None], "cabinet_temp_c": None,
             "heap_free": None, "uptime_s": 60, "rssi": None}


@pytest.mark.parametrize("slot, soc, temp", [(2, "61.5", "31"), (3, "None", "None"),
                                             (1, "None", "None")])
def test_soc_and_temperature_come_from_the_telemetry_column_of_their_slot(slot, soc, temp):
    # slot 3: its BMS could not be read (null); slot 1: no battery (not in `slots`): unknown
    assert schemas.errors("tukar/c/telemetry", json.dumps(TELEMETRY)) == []
    cmps = ha.device_config("tukar", "c", None, 3)["cmps"]
    payload = json.dumps(TELEMETRY)
    assert render(cmps["slot%d_soc" % slot]["value_template"], payload) == soc
    assert render(cmps["slot%d_temperature" % slot]["value_template"], payload) == temp
    assert render(cmps["temperature"]["value_template"], payload) == "None"


def test_cabinet_templates_show_mode_alarms_estop_smoke_and_counts():
    cmps = ha.device_config("tukar", "c", None, 0)["cmps"]
    calm = json.dumps(CABINET_STATE)
    alarmed = json.dumps(dict(CABINET_STATE, mode="emergency", alarms=["smoke", "estop"],
                              ready=2, faulted=1))
    for payload in (calm, alarmed):
        assert schemas.errors("tukar/c/state", payload) == []
    keys = [k for k in CABINET_KEYS if k != "temperature"]  # from telemetry: tested above
    assert [render(cmps[k]["value_template"], calm) for k in keys] == \
        ["in_service", "none", "OFF", "OFF", "0", "3", "0", "0"]
    assert [render(cmps[k]["value_template"], alarmed) for k in keys] == \
        ["emergency", "smoke, estop", "ON", "ON", "2", "3", "0", "1"]
    assert json.loads(render(cmps["alarms"]["json_attributes_template"], alarmed)) == \
        {"alarms": ["smoke", "estop"]}


# --- against a broker, with fake cabinets ------------------------------------------------------

def test_a_cabinet_that_appears_later_is_announced_when_first_seen(mosquitto, prefix, disco):
    a = Cabinet(mosquitto.port, prefix, "cab-a").boot()
    with bridging(mosquitto.port, prefix, disco) as b:
        retained_configs(mosquitto.port, disco, want=1)
        c = Cabinet(mosquitto.port, prefix, "cab-b", slots=5).boot()
        configs = retained_configs(mosquitto.port, disco, want=2)
        assert b.published == 2
    assert sorted(configs) == [ha.config_topic(disco, prefix, "cab-a"),
                               ha.config_topic(disco, prefix, "cab-b")]
    late = configs[ha.config_topic(disco, prefix, "cab-b")]
    assert {k for k in late["cmps"] if k.startswith("slot")} == \
        {"slot%d_%s" % (n, k) for n in range(1, 6) for k in SLOT_KEYS}
    a.close()
    c.close()


def test_a_cabinet_known_only_by_its_slot_states_gets_the_slots_seen(mosquitto, prefix, disco):
    w = Watcher(mosquitto.port, "%s/#" % prefix)
    for n in (1, 2, 4):
        w.publish("%s/cab-s/slot/%d/state" % (prefix, n), json.dumps(dict(EMPTY_SLOT, slot=n)),
                  retain=True)
    with bridging(mosquitto.port, prefix, disco):
        cfg = retained_configs(mosquitto.port, disco)[ha.config_topic(disco, prefix, "cab-s")]
    assert {k for k in cfg["cmps"] if k.endswith("_state")} == {"slot%d_state" % n
                                                               for n in range(1, 5)}
    close(w)


def test_new_firmware_in_info_updates_the_config(mosquitto, prefix, disco):
    cab = Cabinet(mosquitto.port, prefix, "cab-f").boot(fw="0.1.0")
    seen = Watcher(mosquitto.port, "%s/device/+/config" % disco)
    with bridging(mosquitto.port, prefix, disco):
        seen.wait(lambda m: len(m) == 1, 10, "the first config")
        info = json.loads(cab.w.on("info")[-1][0])
        cab.w.publish(cab.base + "info", json.dumps(dict(info, bdseq=3, fw="0.2.0")), retain=True)
        seen.wait(lambda m: len(m) == 2, 10, "the config with the new firmware")
    assert json.loads(seen.messages[-1][1])["dev"]["sw"] == "0.2.0"
    close(seen)
    cab.close()


def test_only_what_goes_into_the_config_makes_it_announce_again():
    b = ha.Bridge("127.0.0.1", 1, prefix="p", discovery_prefix="d")
    info = {"id": "c", "fw": "0.1.0", "board": "b", "slots": 2, "profiles": [], "bdseq": 1,
            "boot": {"reason": "power_on", "count": 1}, "time_synced": False}
    assert b.ingest("p/c/status", b"online", 0) is True  # a new cabinet
    assert b.ingest("p/c/info", json.dumps(info).encode(), 0) is True  # its slots
    assert b.ingest("p/c/info", json.dumps(dict(info, bdseq=2)).encode(), 0) is False  # reconnect
    assert b.ingest("p/c/slot/2/state", json.dumps(EMPTY_SLOT).encode(), 0) is False
    assert b.ingest("p/c/state", json.dumps(CABINET_STATE).encode(), 0) is False
    assert b.ingest("p/c/info", json.dumps(dict(info, fw="0.2.0")).encode(), 0) is True
    assert b.ingest("p/Bad_id/info", json.dumps(info).encode(), 0) is False
    assert b.ingest("q/c2/info", json.dumps(info).encode(), 0) is False
    assert sorted(b.seen) == ["c"] and b.seen["c"].slots == 2


def test_home_assistant_coming_online_makes_it_announce_every_cabinet_again(mosquitto, prefix,
                                                                            disco):
    cab = Cabinet(mosquitto.port, prefix, "cab-h").boot()
    seen = Watcher(mosquitto.port, "%s/device/+/config" % disco)
    with bridging(mosquitto.port, prefix, disco):
        seen.wait(lambda m: len(m) == 1, 10, "the first announcement")
        seen.publish("%s/status" % disco, "offline")
        seen.publish("%s/status" % disco, "online")  # Home Assistant's birth message
        seen.wait(lambda m: len(m) == 2, 10, "a second announcement")
    first, second = seen.messages
    assert first[1] == second[1]
    close(seen)
    cab.close()


def test_a_broker_that_lost_its_retained_configs_gets_them_again_after_the_reconnect(
        tmp_path, prefix, disco):
    require("mosquitto")
    b = Broker("mosquitto", tmp_path).start()  # no persistence: a restart forgets what it held
    try:
        cab = Cabinet(b.port, prefix, "cab-r").boot()
        with bridging(b.port, prefix, disco):
            retained_configs(b.port, disco)
            close(cab.w)
            b.stop()
            b.start()
            configs = retained_configs(b.port, disco, timeout=20)
        assert list(configs) == [ha.config_topic(disco, prefix, "cab-r")]
    finally:
        b.stop()


def test_remove_clears_every_config_it_created_and_nothing_else(mosquitto, prefix, disco):
    cabs = [Cabinet(mosquitto.port, prefix, c).boot() for c in ("cab-1", "cab-2")]
    other = Cabinet(mosquitto.port, prefix + "x", "cab-1").boot()
    with bridging(mosquitto.port, prefix, disco):
        retained_configs(mosquitto.port, disco, want=2)
    with bridging(mosquitto.port, prefix + "x", disco):
        retained_configs(mosquitto.port, disco, want=3)
    foreign = "%s/device/someone-else/config" % disco
    cabs[0].w.publish(foreign, json.dumps({"dev": {"ids": ["x"]}, "o": {"name": "other"},
                                           "cmps": {}}), retain=True)
    assert len(retained_configs(mosquitto.port, disco, want=4)) == 4
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "ha", "--remove", "--broker",
                          "127.0.0.1:%d" % mosquitto.port, "--prefix", prefix,
                          "--discovery-prefix", disco], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "removed 2 cabinet(s)" in out.stdout
    left = retained_config_topics(mosquitto.port, disco)
    assert sorted(left) == sorted([foreign, ha.config_topic(disco, prefix + "x", "cab-1")])
    for c in cabs + [other]:
        c.close()


def test_remove_of_one_cabinet_leaves_the_others(mosquitto, prefix, disco):
    cabs = [Cabinet(mosquitto.port, prefix, c).boot() for c in ("cab-1", "cab-2")]
    with bridging(mosquitto.port, prefix, disco):
        retained_configs(mosquitto.port, disco, want=2)
    b = ha.Bridge("127.0.0.1", mosquitto.port, prefix=prefix, cabinets=["cab-2"],
                  discovery_prefix=disco, out=io.StringIO(), err=io.StringIO())
    assert b.remove() == ha.EXIT_OK
    assert retained_config_topics(mosquitto.port, disco) == [
        ha.config_topic(disco, prefix, "cab-1")]
    for c in cabs:
        c.close()


def test_once_announces_what_the_broker_holds_and_exits(mosquitto, prefix, disco):
    cab = Cabinet(mosquitto.port, prefix, "cab-o", slots=2).boot()
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "ha", "--once", "--broker",
                          "127.0.0.1:%d" % mosquitto.port, "--prefix", prefix,
                          "--discovery-prefix", disco], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "announced 1 cabinet(s)" in out.stdout
    cfg = retained_configs(mosquitto.port, disco)[ha.config_topic(disco, prefix, "cab-o")]
    assert len(cfg["cmps"]) == 2 * len(SLOT_KEYS) + len(CABINET_KEYS)
    cab.close()


def test_an_unreachable_broker_is_a_clear_error_and_exit_status_3():
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "ha", "--broker",
                          "127.0.0.1:%d" % port, "--give-up", "2.5"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cannot reach the broker 127.0.0.1:%d" % port in out.stderr
    assert "gave up after" in out.stderr


@pytest.mark.parametrize("argv, says", [
    (["--cabinet", "Cab_1"], "cabinet id 'Cab_1'"),
    (["--prefix", "tukar/+"], "--prefix 'tukar/+'"),
    (["--discovery-prefix", "homeassistant/"], "--discovery-prefix"),
    (["--broker", "h:x"], "the port must be a number"),
    (["--once", "--remove"], "choose one"),
])
def test_bad_arguments_are_a_clear_error_and_exit_status_2(argv, says):
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "ha", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and says in out.stderr, out.stderr


# --- against the simulator ---------------------------------------------------------------------

def start_sim(port, state_dir, prefix, id_prefix):
    return subprocess.Popen([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                             "127.0.0.1:%d" % port, "--no-monitor", "--state-dir", str(state_dir),
                             "--speed", str(SPEED), "--prefix", prefix, "--fill", "6",
                             "--id-prefix", id_prefix],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_sim(proc):
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err, err


def boot_count(event):
    return int(event["id"].rsplit("-", 2)[1])  # ids are C-<boot count>-<counter>


class Sim:
    """`tukar sim` with one cabinet, `<id_prefix>-1`: two simulators on one broker need two ids,
    since the cabinet's MQTT client id is its own id (a second would take the first's session)."""

    def __init__(self, port, state_dir, id_prefix="sim"):
        self.prefix = "s" + uuid.uuid4().hex[:10]
        self.disco = "ha" + uuid.uuid4().hex[:10]
        self.cabinet = id_prefix + "-1"
        self.proc = start_sim(port, state_dir, self.prefix, id_prefix)
        self.r = Runner("127.0.0.1", port, self.prefix, self.cabinet, parse_key(SIM_KEY_HEX),
                        SPEED, out=lambda line: None)
        self.r.step({"do": "expect_status", "value": "online", "within_s": 30})
        self.r.step({"do": "expect_state", "match": {"ready": {"$gte": 2}, "session": None},
                     "within_s": 30})

    def telemetry_every_10_s(self):
        """As test_sim_e2e.py: the new period applies from the next boot."""
        r = self.r
        r.step({"do": "cmd", "cmd": "set_config", "args": {"telemetry_period_s": 10}})
        time.sleep(1 / SPEED)
        r.step({"do": "world", "action": "power_cycle"})
        r.wait_for(lambda: next((e for e in r.obs.events if e["type"] == "Boot"
                                 and boot_count(e) >= 2), None), 30, "Boot after the power cycle")
        r.step({"do": "expect_status", "value": "online", "within_s": 30})
        r.step({"do": "expect_state", "match": {"ready": {"$gte": 2}, "session": None},
                "within_s": 30})

    def latest(self, topic):
        return next((p for t, p, _ in reversed(self.r.obs.records) if t == topic), None)

    def close(self):
        self.r.obs.close()
        stop_sim(self.proc)


@pytest.fixture(scope="module")
def sim(mosquitto, tmp_path_factory):
    s = Sim(mosquitto.port, tmp_path_factory.mktemp("sim"))
    try:
        s.telemetry_every_10_s()
        with bridging(mosquitto.port, s.prefix, s.disco) as b:
            s.bridge = b
            yield s
    finally:
        s.close()


def test_against_the_simulator_the_retained_config_covers_every_slot_and_the_cabinet(sim,
                                                                                    mosquitto):
    configs = retained_configs(mosquitto.port, sim.disco)
    topic = ha.config_topic(sim.disco, sim.prefix, "sim-1")
    assert list(configs) == [topic]
    cfg = configs[topic]
    slots = json.loads(sim.latest("%s/sim-1/info" % sim.prefix))["slots"]
    assert slots == 12
    assert set(cfg["cmps"]) == {"slot%d_%s" % (n, k) for n in range(1, slots + 1)
                                for k in SLOT_KEYS} | set(CABINET_KEYS)
    assert shape_errors(topic, cfg) == []
    base = "%s/sim-1/" % sim.prefix
    assert cfg["availability"][0]["topic"] == base + "status"
    # every entity reads one of the cabinet's own contract topics
    own = {base + "state", base + "telemetry"} | {base + "slot/%d/state" % n
                                                  for n in range(1, slots + 1)}
    assert {c["state_topic"] for c in cfg["cmps"].values()} == own
    for cid, c in cfg["cmps"].items():
        key, n = split_key(cid)
        if n is not None and c["state_topic"].endswith("/state"):
            assert c["state_topic"] == base + "slot/%d/state" % n, cid


def test_every_template_gives_the_right_value_on_the_simulators_own_payloads(sim, mosquitto):
    r = sim.r
    base = "%s/sim-1/" % sim.prefix
    start = len(r.obs.records)
    r.wait_for(lambda: next((1 for t, _, _ in r.obs.records[start:] if t == base + "telemetry"),
                            None), 30, "telemetry")
    cmps = retained_configs(mosquitto.port, sim.disco)[
        ha.config_topic(sim.disco, sim.prefix, "sim-1")]["cmps"]

    def check_all():
        shown = {}
        for cid, c in cmps.items():
            payload = sim.latest(c["state_topic"])
            assert payload is not None, (cid, c["state_topic"])
            assert schemas.errors(c["state_topic"], payload) == []
            key, n = split_key(cid)
            shown[cid] = render(c["value_template"], payload)
            assert shown[cid] == expected(key, n, json.loads(payload)), (cid, payload)
            if "json_attributes_template" in c:
                assert isinstance(json.loads(render(c["json_attributes_template"], payload)), dict)
        return shown

    shown = check_all()
    assert shown["mode"] == "in_service" and shown["smoke"] == "OFF" and shown["estop"] == "OFF"
    # and they agree with the simulated world itself
    world = r.obs.world
    for s in world["slots"]:
        n, b = s["slot"], s["battery"]
        assert shown["slot%d_occupied" % n] == on_off(b is not None)
        assert shown["slot%d_lock" % n] == on_off(s["lock"] == "unlocked")
        if b is not None:
            assert abs(float(shown["slot%d_soc" % n]) - b["soc"]) <= 2.0, (n, shown, b)
        else:
            assert shown["slot%d_soc" % n] == "None"
    assert sum(shown["slot%d_occupied" % n] == "ON" for n in range(1, 13)) == 6
    assert float(shown["temperature"]) == pytest.approx(world["temp_c"], abs=1.0)

    # a battery's BMS reports a fault: the slot's fault sensor turns on
    assert shown["slot1_fault"] == "OFF"
    r.step({"do": "world", "action": "set_battery", "slot": 1, "faults": ["short_circuit"]})
    r.wait_for(lambda: 1 if (r.obs.slots[1]["battery"] or {}).get("faults") else None, 10,
               "slot 1's battery fault")
    shown = check_all()
    assert shown["slot1_fault"] == "ON"
    # smoke, then the e-stop: the cabinet's own alarms reach the binary sensors
    r.step({"do": "world", "action": "set_input", "name": "smoke", "value": True})
    r.step({"do": "expect_state", "match": {"mode": "emergency"}, "within_s": 10})
    r.step({"do": "world", "action": "set_input", "name": "estop", "value": True})
    r.wait_for(lambda: 1 if "estop" in r.obs.state["alarms"] else None, 10, "the estop alarm")
    shown = check_all()
    assert (shown["mode"], shown["smoke"], shown["estop"]) == ("emergency", "ON", "ON")
    assert "smoke" in shown["alarms"] and "estop" in shown["alarms"]


def test_availability_follows_the_status_the_simulator_publishes_and_leaves_behind(mosquitto,
                                                                                   tmp_path):
    s = Sim(mosquitto.port, tmp_path, id_prefix="av")
    try:
        with bridging(mosquitto.port, s.prefix, s.disco):
            cfg = retained_configs(mosquitto.port, s.disco)[
                ha.config_topic(s.disco, s.prefix, "av-1")]
        statuses = [p for t, p, _ in s.r.obs.records if t.endswith("/status")]
    finally:
        s.close()
    avail = cfg["availability"]
    assert len(avail) == 1 and avail[0]["topic"] == "%s/av-1/status" % s.prefix
    assert statuses == [avail[0]["payload_available"].encode()]  # while it ran
    # the simulator has stopped: what a subscriber (Home Assistant, restarting) finds retained
    w = Watcher(mosquitto.port, avail[0]["topic"])
    try:
        got = w.wait(lambda m: any(r for _, _, r in m), 10, "the retained status")
    finally:
        close(w)
    assert [p for _, p, r in got if r] == [avail[0]["payload_not_available"].encode()]
