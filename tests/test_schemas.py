"""The AsyncAPI document and JSON Schemas describe exactly the MQTT contract of mqtt.md."""
import json
import pathlib
import sys

import jsonschema
import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "firmware", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tukar import errors as fw_errors  # noqa: E402
from tukar.gate import Gate, make_ack  # noqa: E402
from tukar_tools import schemas  # noqa: E402
from tukar_tools.sign import command, sign  # noqa: E402

DOCS = ROOT / "docs"
SCHEMA_FILES = sorted(p.name for p in (DOCS / "schemas").glob("*.json"))
ASYNCAPI = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())

# topic suffix -> (retained, QoS, direction) as in mqtt.md's tables
TOPICS = {
    "status": (True, 1, "send"), "info": (True, 1, "send"), "state": (True, 1, "send"),
    "slot/{slot}/state": (True, 1, "send"), "event": (False, 1, "send"),
    "telemetry": (False, 0, "send"), "ack": (False, 1, "send"), "cmd": (False, 1, "receive"),
    "sim/cmd": (False, 1, "receive"), "sim/ack": (False, 1, "send"), "sim/world": (True, 1, "send"),
}
SLOT_STATES = ["empty", "awaiting_battery", "identifying", "charging", "charge_paused", "ready",
               "dispensing", "rejected", "quarantined", "fault", "maintenance_open"]
KEY = b"k" * 32

# --- the spec's own examples ----------------------------------------------------------

STATE = {"mode": "in_service", "ready": 5, "empty": 6, "charging": 3, "faulted": 0,
         "session": {"id": "s-41", "request_id": "r-9", "phase": "awaiting_battery",
                     "slot_in": 7, "slot_out": None},
         "temp_c": 31.2, "alarms": [], "seq": 17}
BATTERY = {"serial": "B-0042", "profile": "ref48v", "soc": 63.5, "soh": 96, "temp_c": 29.5,
           "voltage_v": 51.2, "current_a": 8.1, "cycles": 211, "faults": []}
SLOT = {"slot": 3, "state": "charging", "door": "closed", "lock": "locked", "battery": BATTERY,
        "charger": {"on": True, "current_a": 8.0}, "dispensable": False, "faults": [], "seq": 88}
BODY = '{"req_id":"r-9","ts":1764300000,"cmd":"start_swap","id_token":"rider-77"}'
INFO = {"id": "cab-1", "fw": "0.1.0", "board": "esp32-devkit", "slots": 12,
        "profiles": ["ref48v"], "bdseq": 3, "boot": {"reason": "power_on", "count": 7},
        "time_synced": True}
TELEMETRY = {"seq": 4, "heap_free": 61000, "uptime_s": 3600, "rssi": -67, "tick_lag_ms": 3,
             "slots": [3, 4], "soc": [63.5, None], "temp_c": [29.5, None],
             "voltage_v": [51.2, None], "current_a": [8.1, None], "cabinet_temp_c": 31.2}
WORLD = {"slots": [{"slot": 1, "door": "closed", "lock": "locked", "charger_on": True,
                    "battery": {"serial": "B-1", "soc": 80, "soh": 95, "temp_c": 25}},
                   {"slot": 2, "door": "open", "lock": "unlocked", "battery": None,
                    "charger_on": False}],
         "smoke": False, "estop": False, "temp_c": 30.5}

HEAD = {"id": "cab-1-7-12", "ts": 1764300000, "up_ms": 123456, "seq": 9}
EVENTS = {
    "Boot": {"reason": "power_on", "recovered": {"session": None}},
    "SwapStarted": {"session": "s-41", "request_id": "r-9", "id_token": "rider-77", "slot": 7},
    "BatteryIn": {"session": "s-41", "request_id": "r-9", "id_token": "rider-77", "slot": 7,
                  "battery": BATTERY},
    "BatteryRejected": {"session": "s-41", "slot": 7, "battery": {"serial": "B-9"},
                        "reason": "bms_link"},
    "BatteryOut": {"session": "s-41", "request_id": None, "id_token": "rider-77", "slot": 2,
                   "battery": BATTERY},
    "BatteryOutTimeout": {"session": "s-41", "request_id": "r-9", "slot": 2, "battery": BATTERY},
    "SwapCompleted": {"session": "s-41", "request_id": "r-9", "id_token": "rider-77",
                      "slot_in": 7, "slot_out": 2, "battery_in": BATTERY,
                      "battery_out": BATTERY, "duration_ms": 41000, "energy_wh": 812.5},
    "BatteryRetired": {"slot": 4, "serial": "B-0042", "reason": "soh", "battery": BATTERY},
    "SwapAborted": {"session": "s-41", "request_id": "r-9", "reason": "timeout"},
    "ChargeStarted": {"slot": 3, "serial": "B-0042"},
    "ChargeStopped": {"slot": 3, "serial": "B-0042", "reason": "full", "energy_wh": 812.5},
    "Fault": {"slot": 4, "code": "lock_jam", "severity": "error"},
    "FaultCleared": {"slot": None, "code": "can_bus", "severity": "warning"},
    "Quarantined": {"slot": 5, "reason": "overtemp"},
    "QuarantineReleased": {"slot": 5, "reason": "released"},
    "DoorForced": {"slot": 6},
    "BatteryMissing": {"slot": 8, "serial": "B-0007"},
    "Emergency": {"cause": "smoke"},
    "EmergencyCleared": {"cause": "estop"},
    "ModeChanged": {"mode": "maintenance", "by": "r-9"},
}


def event(kind, **over):
    e = dict(HEAD, type=kind, **EVENTS[kind])
    e.update(over)
    return e


def fails(topic, payload):
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        schemas.validate(topic, payload)


# --- schemas themselves ---------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_json_schema_2020_12(name):
    schema = json.loads((DOCS / "schemas" / name).read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_ref_between_schema_files_resolves():
    reg = schemas.registry()
    for name in SCHEMA_FILES:
        resolver = reg.resolver(base_uri=name)
        for ref in refs(json.loads((DOCS / "schemas" / name).read_text())):
            assert resolver.lookup(ref).contents is not None, (name, ref)


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


# --- the AsyncAPI document ------------------------------------------------------------

def test_asyncapi_document_is_version_3_0_0():
    assert ASYNCAPI["asyncapi"] == "3.0.0"
    assert ASYNCAPI["defaultContentType"] == "application/json"


def test_asyncapi_has_a_channel_for_every_topic_of_the_contract():
    addresses = {c["address"] for c in ASYNCAPI["channels"].values()}
    assert addresses == {"{prefix}/{cabinet}/" + t for t in TOPICS}


def pointer(doc, ptr):
    node = doc
    for part in ptr.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_in_the_asyncapi_document_resolves():
    seen_files = set()
    for ref in refs(ASYNCAPI):
        target, _, ptr = ref.partition("#")
        if target:
            path = (DOCS / target).resolve()
            assert path.is_file(), ref
            seen_files.add(path.name)
            if ptr:
                pointer(json.loads(path.read_text()), ptr)
        else:
            pointer(ASYNCAPI, ptr)
    # common.json and cmd-body.json are reached through the schemas that use them
    assert seen_files | {"common.json", "cmd-body.json"} == set(SCHEMA_FILES)


@pytest.mark.parametrize("suffix", sorted(TOPICS))
def test_operation_bindings_carry_the_contracts_retain_and_qos(suffix):
    retained, qos, action = TOPICS[suffix]
    ops = [op for op in ASYNCAPI["operations"].values()
           if pointer(ASYNCAPI, op["channel"]["$ref"][1:])["address"] == "{prefix}/{cabinet}/" + suffix]
    assert len(ops) == 1
    assert ops[0]["action"] == action
    assert ops[0]["bindings"]["mqtt"]["qos"] == qos
    assert ops[0]["bindings"]["mqtt"]["retain"] is retained


def test_asyncapi_payloads_name_json_schema_2020_12():
    for msg in ASYNCAPI["components"]["messages"].values():
        assert msg["payload"]["schemaFormat"] == "application/schema+json;version=draft-2020-12"


# --- the spec's examples validate -----------------------------------------------------

def test_spec_cabinet_state_example_validates():
    schemas.validate("state", STATE)


def test_spec_slot_state_example_validates():
    schemas.validate("slot/3/state", SLOT)


def test_spec_command_example_validates_with_its_body():
    schemas.validate("tukar/cab-1/cmd", sign(BODY, KEY))


def test_spec_ack_shape_validates():
    schemas.validate("ack", {"req_id": "r-9", "ok": True, "error": None, "detail": "",
                             "session": "s-41", "slot": 7})


@pytest.mark.parametrize("topic,payload", [
    ("info", INFO), ("telemetry", TELEMETRY), ("sim/world", WORLD), ("status", "online"),
    ("status", b"offline"), ("sim/ack", {"action": "insert", "ok": False, "error": "door locked"}),
])
def test_other_payloads_validate(topic, payload):
    schemas.validate(topic, payload)


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_event_type_validates(kind):
    schemas.validate("event", event(kind))


@pytest.mark.parametrize("reason", ["timeout", "cancelled", "rejected", "not_taken",
                                    "no_battery_available", "fault", "emergency", "power_loss"])
def test_every_swap_aborted_reason_of_the_spec_validates(reason):
    schemas.validate("event", event("SwapAborted", reason=reason))


@pytest.mark.parametrize("state", SLOT_STATES)
def test_every_one_of_the_11_slot_states_validates(state):
    schemas.validate("slot/3/state", dict(SLOT, state=state))


def test_slot_state_enum_is_exactly_the_11_states():
    common = schemas.load("common.json")
    assert common["$defs"]["slot_state"]["enum"] == SLOT_STATES


def test_ack_error_enum_is_exactly_the_firmware_error_codes():
    assert set(schemas.load("common.json")["$defs"]["error_code"]["enum"]) == set(fw_errors.ALL)


@pytest.mark.parametrize("body", [
    command("start_swap", "r-1", ts=1, id_token="t", request_id="q"),
    command("cancel_swap", "r-2", ts=1), command("cancel_swap", "r-2", ts=1, session="s-1"),
    command("set_mode", "r-3", ts=1, mode="maintenance"),
    command("open_slot", "r-4", ts=1, slot=2), command("quarantine", "r-5", ts=1, slot=2, reason="x"),
    command("release", "r-6", ts=1, slot=2), command("reset_emergency", "r-7", ts=1),
    command("rebirth", "r-8", ts=1), command("reboot", "r-9", ts=1),
    command("set_config", "r-10", ts=1, telemetry_period_s=30, dispense_min_soc=90),
])
def test_every_command_of_the_spec_validates_inside_a_signed_envelope(body):
    schemas.validate("cmd", sign(body, KEY))


@pytest.mark.parametrize("action", [
    {"action": "insert", "slot": 1, "battery": {"serial": "B-1", "soc": 50, "soh": 90,
                                                "temp_c": 25, "profile": "ref48v", "faults": []}},
    {"action": "take", "slot": 1}, {"action": "close_door", "slot": 1},
    {"action": "open_door", "slot": 1, "force": True},
    {"action": "set_battery", "slot": 1, "soc": 95}, {"action": "set_input", "name": "smoke",
                                                      "value": True},
    {"action": "set_cabinet_temp", "temp_c": 41}, {"action": "fault", "target": "lock:3",
                                                   "on": True},
    {"action": "fault", "target": "cabinet_sensor", "on": True},
    {"action": "power_cycle"},
])
def test_every_simulator_action_validates(action):
    schemas.validate("sim/cmd", action)


def test_gate_acks_validate():
    g = Gate(KEY)
    for p in (b"x", sign(command("rebirth", "r", ts=0), b"other"), sign(BODY, KEY),
              sign(BODY, KEY)):
        body, ack = g.admit(p, False, 0, None)
        if body:
            g.remember(body["req_id"], make_ack(body["req_id"], result={"session": "s", "slot": 1}))
        else:
            schemas.validate("ack", ack)
    assert ack["duplicate"] is True


# --- wrong payloads fail --------------------------------------------------------------

def test_unknown_slot_state_fails():
    fails("slot/3/state", dict(SLOT, state="sleeping"))


def test_slot_state_on_another_slots_topic_fails():
    fails("tukar/cab-1/slot/4/state", SLOT)


@pytest.mark.parametrize("topic,payload", [
    ("state", STATE), ("slot/3/state", SLOT), ("event", event("DoorForced")),
    ("telemetry", TELEMETRY)])
def test_missing_seq_fails(topic, payload):
    fails(topic, {k: v for k, v in payload.items() if k != "seq"})


@pytest.mark.parametrize("column", ["soc", "temp_c", "voltage_v", "current_a"])
def test_telemetry_column_shorter_than_its_slots_fails(column):
    fails("telemetry", dict(TELEMETRY, **{column: TELEMETRY[column][:1]}))


@pytest.mark.parametrize("column", ["soc", "temp_c", "voltage_v", "current_a"])
def test_telemetry_without_a_measurement_the_reporting_duties_need_fails(column):
    fails("telemetry", {k: v for k, v in TELEMETRY.items() if k != column})


@pytest.mark.parametrize("field", ["heap_free", "uptime_s", "rssi"])
def test_telemetry_without_a_health_field_of_the_contract_fails(field):
    fails("telemetry", {k: v for k, v in TELEMETRY.items() if k != field})


def test_telemetry_soc_over_100_fails():
    fails("telemetry", dict(TELEMETRY, soc=[100.1, None]))


def test_telemetry_one_object_per_slot_is_not_the_layout():
    fails("telemetry", dict(TELEMETRY, slots=[{"slot": 3, "soc": 63.5}]))


def test_seq_over_255_fails():
    fails("state", dict(STATE, seq=256))


def test_wrong_error_code_fails():
    fails("ack", {"req_id": "r-9", "ok": False, "error": "nope", "detail": ""})


def test_ok_ack_with_an_error_fails():
    fails("ack", {"req_id": "r-9", "ok": True, "error": "busy", "detail": ""})


def test_unknown_swap_aborted_reason_fails():
    fails("event", event("SwapAborted", reason="bored"))


def test_unknown_emergency_cause_fails():
    fails("event", event("Emergency", cause="flood"))


def test_event_missing_its_type_specific_field_fails():
    e = event("BatteryIn")
    del e["battery"]
    fails("event", e)


def test_event_with_a_field_of_another_type_fails():
    fails("event", event("DoorForced", battery=BATTERY))


def test_unknown_key_in_cabinet_state_fails():
    fails("state", dict(STATE, extra=1))


def test_soc_as_a_string_fails():
    fails("slot/3/state", dict(SLOT, battery=dict(BATTERY, soc="63.5")))


def test_set_config_key_outside_the_allowlist_fails():
    fails("cmd", sign(command("set_config", "r", ts=1, wifi_password="x"), KEY))


def test_unsigned_looking_envelope_fails():
    fails("cmd", {"body": BODY, "sig": "<hex>"})


def test_sim_fault_on_unknown_target_fails():
    fails("sim/cmd", {"action": "fault", "target": "wifi", "on": True})


# --- picking the schema by topic ------------------------------------------------------

@pytest.mark.parametrize("topic,name", [
    ("status", "status.json"), ("tukar/cab-1/status", "status.json"),
    ("a/b/c/cab-1/slot/12/state", "slot-state.json"), ("state", "state.json"),
    ("sim/ack", "sim-ack.json"), ("tukar/cab-1/ack", "ack.json"),
    ("tukar/cab-1/sim/cmd", "sim-cmd.json"), ("cmd", "cmd-envelope.json"),
])
def test_validate_picks_the_schema_by_topic(topic, name):
    assert schemas.schema_for(topic)[0] == name


def test_unknown_topic_is_refused():
    with pytest.raises(ValueError):
        schemas.validate("tukar/cab-1/bogus", {})


def test_errors_lists_problems_readably():
    assert schemas.errors("state", STATE) == []
    assert any("seq" in line for line in schemas.errors("state", dict(STATE, seq=-1)))


def test_battery_whose_bms_cannot_be_read_validates_with_null_measurements():
    unread = {k: None for k in BATTERY}
    unread["faults"] = []
    schemas.validate("slot/3/state", dict(SLOT, state="identifying", battery=unread))


def test_swap_completed_may_name_its_batteries_by_serial():
    schemas.validate("event", event("SwapCompleted", battery_in="R-1", battery_out="F-01"))


def test_simulated_battery_without_soc_fails():
    fails("sim/cmd", {"action": "insert", "slot": 1,
                      "battery": {"serial": "B-1", "soc": None, "soh": 90, "temp_c": 25}})
