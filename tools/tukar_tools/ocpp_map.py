"""The OCPP 2.1 side of a cabinet, as data: what the bridge (`tukar ocpp`, ocpp_bridge.py) sends a
CSMS for what the cabinet publishes on MQTT, each payload built with the schema's own camelCase
keys and checked against the OCPP 2.1 JSON schema that the `ocpp` package ships. No I/O here.

The payloads are dicts, not the package's dataclasses: ocpp 2.1.0 turns the dataclass field `soc`
into `SoC` and leaves `soh` as it is, where BatteryDataType requires `soC` and `soH`, so a
BatterySwap built from `BatteryDataType(soc=..., soh=...)` never validates (docs/ocpp.md)."""
from __future__ import annotations

import datetime
import functools
import json
import pathlib
import re

import jsonschema
from jsonschema import validators
import ocpp.v21

SCHEMAS = pathlib.Path(ocpp.v21.__file__).parent / "schemas"
VENDOR = "tukar"
MODEL_DEFAULT = "tukar-cabinet"
CONNECTOR = 1  # one connector per EVSE: the slot's door

# Cabinet boot reason (startup.py) -> BootReasonEnumType
BOOT_REASONS = {"power_on": "PowerUp", "brownout": "PowerUp", "watchdog": "Watchdog",
                "reboot": "RemoteReset", "soft": "LocalReset", "deep_sleep": "PowerUp",
                "crash": "Unknown", "panic": "Unknown"}

# Slot state (mqtt.md) -> ConnectorStatusEnumType, while the cabinet is online and in service
SLOT_STATUS = {"empty": "Available", "awaiting_battery": "Occupied", "identifying": "Occupied",
               "charging": "Occupied", "charge_paused": "Occupied", "ready": "Occupied",
               "dispensing": "Occupied", "rejected": "Occupied", "quarantined": "Unavailable",
               "fault": "Faulted", "maintenance_open": "Unavailable"}

SWAP_EVENTS = ("BatteryIn", "BatteryOut", "BatteryOutTimeout")  # = BatterySwapEventEnumType
TOKEN_TYPE_DEFAULT = "Central"  # a rider's token from the operator's back end
NO_TOKEN = {"idToken": "", "type": "NoAuthorization"}  # a swap whose token the bridge never saw


class SchemaError(ValueError):
    """A payload that the OCPP 2.1 JSON schema refuses."""


FORMATS = jsonschema.FormatChecker(formats=())  # date-time only: jsonschema's needs a package


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(text):
    if not isinstance(text, str):
        return True
    if not DATE_TIME.match(text):
        raise ValueError("not an RFC 3339 date-time")
    datetime.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    return True


DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z")


@functools.lru_cache(maxsize=None)
def validator(action: str, kind: str = "Request"):
    """The JSON-schema validator of `action`'s Request or Response, straight from the schema file
    (draft-06), with date-time checked."""
    path = SCHEMAS / ("%s%s.json" % (action, kind))
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = validators.validator_for(schema)
    return cls(schema, format_checker=FORMATS)


def errors(action: str, payload, kind: str = "Request") -> list:
    return ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)", e.message)
            for e in validator(action, kind).iter_errors(payload)]


def check(action: str, payload, kind: str = "Request"):
    found = errors(action, payload, kind)
    if found:
        raise SchemaError("%s%s not valid: %s" % (action, kind, "; ".join(found)))
    return payload


def timestamp(ts=None) -> str:
    """OCPP date-time, UTC with a Z: the cabinet's `ts` when its clock was synced, else now."""
    if ts is None:
        when = datetime.datetime.now(datetime.timezone.utc)
    else:
        when = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def boot_notification(cabinet: str, info: dict | None, reason: str | None) -> dict:
    info = info or {}
    station = {"model": str(info.get("board") or MODEL_DEFAULT)[:20], "vendorName": VENDOR,
               "serialNumber": cabinet[:25]}
    if info.get("fw"):
        station["firmwareVersion"] = str(info["fw"])[:50]
    return {"reason": BOOT_REASONS.get(reason or "", "Unknown" if reason else "PowerUp"),
            "chargingStation": station}


def connector_status(online: bool, mode: str | None, slot_state: str | None) -> str:
    """One EVSE's connector status: Unavailable unless the cabinet is online and in service."""
    if not online or (mode or "in_service") != "in_service":
        return "Unavailable"
    return SLOT_STATUS.get(slot_state or "", "Unavailable")


def status_notification(evse: int, status: str, ts=None) -> dict:
    return {"timestamp": timestamp(ts), "connectorStatus": status, "evseId": evse,
            "connectorId": CONNECTOR}


def battery_data(slot: int, battery: dict | None) -> dict:
    """BatteryDataType from the contract's battery: serial, soc, soh -> serialNumber, soC, soH.
    A value the BMS could not give (null) goes out as "" or 0: the schema requires all four."""
    b = battery or {}
    soc, soh = b.get("soc"), b.get("soh")
    return {"evseId": slot, "serialNumber": str(b.get("serial") or "")[:50],
            "soC": min(100, max(0, soc if soc is not None else 0)),
            "soH": min(100, max(0, soh if soh is not None else 0))}


def id_token(token: str | None, token_type: str | None) -> dict:
    if not token:
        return dict(NO_TOKEN)
    return {"idToken": token[:255], "type": (token_type or TOKEN_TYPE_DEFAULT)[:20]}


def battery_swap(event: dict, request_id: int, token: dict) -> dict:
    """BatterySwapRequest from a BatteryIn, BatteryOut or BatteryOutTimeout event; the event's id
    and session ride in customData, so a CSMS can de-duplicate on the cabinet's own key."""
    return {"eventType": event["type"], "requestId": request_id, "idToken": token,
            "batteryData": [battery_data(event["slot"], event.get("battery"))],
            "customData": {"vendorId": VENDOR, "eventId": event["id"],
                           "session": event.get("session")}}


def meter_values(telemetry: dict) -> list:
    """MeterValuesRequests from a telemetry message that carries the energy counters: EVSE 0 (the
    cabinet's meter) with energy_wh_total, and each slot's own register. [] without counters."""
    per_slot = telemetry.get("energy_wh")
    if per_slot is None or telemetry.get("energy_wh_total") is None:
        return []
    when = timestamp(telemetry.get("ts"))

    def one(evse, wh):
        return {"evseId": evse, "meterValue": [{"timestamp": when, "sampledValue": [{
            "value": wh, "measurand": "Energy.Active.Import.Register", "context": "Sample.Periodic",
            "unitOfMeasure": {"unit": "Wh"}}]}]}

    return [one(0, telemetry["energy_wh_total"])] + [one(n, wh) for n, wh in
                                                     enumerate(per_slot, start=1)]


def request_id_of(text) -> int | None:
    """The OCPP requestId carried in the contract's string `request_id`, when it is one."""
    if isinstance(text, str) and text.lstrip("-").isdigit() and len(text) <= 11:
        n = int(text)
        if -2 ** 31 <= n < 2 ** 31:
            return n
    return None


def status_info(code: str | None, detail: str | None = None) -> dict:
    info = {"reasonCode": (code or "Unknown")[:20]}
    if detail:
        info["additionalInfo"] = str(detail)[:1024]
    return info
