"""JSON Schemas of the cabinet MQTT interface (docs/schemas), picked by topic, for tests and tools."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, cast

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "schemas"

# topic suffix (after P/C/) -> schema file; sim/ack before ack, slot/N/state before state
_TOPICS = (
    (re.compile(r"(?:^|/)slot/([0-9]+)/state$"), "slot-state.json"),
    (re.compile(r"(?:^|/)sim/cmd$"), "sim-cmd.json"),
    (re.compile(r"(?:^|/)sim/ack$"), "sim-ack.json"),
    (re.compile(r"(?:^|/)sim/world$"), "sim-world.json"),
    (re.compile(r"(?:^|/)status$"), "status.json"),
    (re.compile(r"(?:^|/)info$"), "info.json"),
    (re.compile(r"(?:^|/)state$"), "state.json"),
    (re.compile(r"(?:^|/)event$"), "event.json"),
    (re.compile(r"(?:^|/)telemetry$"), "telemetry.json"),
    (re.compile(r"(?:^|/)ack$"), "ack.json"),
    (re.compile(r"(?:^|/)cmd$"), "cmd-envelope.json"),
)

# telemetry's per-slot columns: each has one entry per entry of its `slots`
TELEMETRY_COLUMNS = ("soc", "temp_c", "voltage_v", "current_a")

_cache: dict = {}


def load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


def registry() -> Registry:
    """Every schema file under its file name, so relative $refs between them resolve."""
    if "registry" not in _cache:
        resources = [(p.name, Resource.from_contents(load(p.name)))
                     for p in sorted(SCHEMA_DIR.glob("*.json"))]
        _cache["registry"] = Registry().with_resources(resources)
    return _cache["registry"]


def validator(name: str) -> Draft202012Validator:
    key = "v:" + name
    if key not in _cache:
        _cache[key] = Draft202012Validator(load(name), registry=registry())
    return _cache[key]


def schema_for(topic: str) -> tuple[str, re.Match]:
    """The schema file for a topic, given whole (`tukar/cab-1/state`) or as a suffix (`state`)."""
    for pattern, name in _TOPICS:
        m = pattern.search(topic)
        if m:
            return name, m
    raise ValueError("no schema for topic %r" % topic)


def validate(topic_suffix: str, payload: Any) -> None:
    """Raise jsonschema.ValidationError (or ValueError) unless payload fits the topic's schema.

    payload: a dict (or `online`/`offline` for status); bytes or str JSON are parsed first.
    The slot in slot/N/state must equal N; telemetry's columns must each be as long as its
    `slots`; a command's body is checked inside its envelope.
    """
    name, m = schema_for(topic_suffix)
    data: Any = payload
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    if isinstance(data, str) and name != "status.json":
        data = json.loads(data)
    validator(name).validate(data)
    if name == "status.json":
        return
    doc = cast(dict, data)
    if name == "slot-state.json" and doc["slot"] != int(m.group(1)):
        raise ValueError("slot %r published on the topic of slot %s" % (doc["slot"], m.group(1)))
    if name == "telemetry.json":
        n = len(doc["slots"])
        for col in TELEMETRY_COLUMNS:
            if len(doc[col]) != n:
                raise ValueError("telemetry column %s has %d entries for %d slots"
                                 % (col, len(doc[col]), n))
    if name == "cmd-envelope.json":
        validator("cmd-body.json").validate(json.loads(doc["body"]))


def errors(topic_suffix: str, payload: Any) -> list[str]:
    """Every problem found, as readable lines; empty when the payload is valid."""
    try:
        validate(topic_suffix, payload)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        name, _ = schema_for(topic_suffix)
        if isinstance(payload, dict):
            found = sorted(validator(name).iter_errors(payload), key=lambda x: list(x.path))
            if found:
                return ["%s: %s" % ("/".join(map(str, x.path)) or "(root)", x.message) for x in found]
        return [str(e).splitlines()[0]]
    return []
