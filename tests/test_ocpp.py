"""`tukar ocpp` against a CSMS written here with the `ocpp` package's v2.1 ChargePoint, over a real
WebSocket, with real Mosquitto: the bridge in its own process, the cabinet either `tukar sim` or a
scripted cabinet on MQTT (it signs nothing, it checks the signatures and acks as the gate does).
Every frame that crosses the WebSocket, both ways, is validated against the OCPP 2.1 JSON schema
files with jsonschema here, independently of the package's and the bridge's own checks."""
import asyncio
import base64
import datetime
import hmac
import http
import json
import os
import pathlib
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time

import jsonschema
import ocpp.v21
import pytest
from brokers import Broker, mqtt_broker, require  # noqa: F401 (a fixture)
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call, call_result, datatypes

from tukar_tools import mqttc, ocpp_map
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner
from tukar_tools.sign import parse_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMAS = pathlib.Path(ocpp.v21.__file__).parent / "schemas"
KEY = parse_key(SIM_KEY_HEX)
SPEED = 2.0
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")
CALL_ERRORS = {"FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
               "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
               "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError",
               "SecurityError", "TypeConstraintViolation"}


# --- the schemas, read here ----------------------------------------------------------------------

FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(lambda v: not isinstance(v, str) or bool(RFC3339.match(v)))


def schema_errors(action, kind, payload):
    schema = json.loads((SCHEMAS / ("%s%s.json" % (action, kind))).read_text())
    v = jsonschema.Draft6Validator(schema, format_checker=FORMATS)
    return [e.message for e in v.iter_errors(payload)]


def frames_valid(frames):
    """Every recorded frame ([2,id,action,payload], [3,id,payload], [4,id,code,text,details])
    validates against its action's Request or Response schema; a response answers a call."""
    calls = {}
    checked = 0
    for direction, station, text in frames:
        msg = json.loads(text)
        kind = msg[0]
        if kind == 2:
            _, uid, action, payload = msg
            assert len(uid) <= 36
            calls[(station, uid)] = action
            assert schema_errors(action, "Request", payload) == [], (direction, msg)
        elif kind == 3:
            _, uid, payload = msg
            action = calls[(station, uid)]
            assert schema_errors(action, "Response", payload) == [], (direction, action, msg)
        else:
            assert kind == 4 and len(msg) == 5, msg
            assert (station, msg[1]) in calls and msg[2] in CALL_ERRORS, msg
        checked += 1
    return checked


# --- the CSMS --------------------------------------------------------------------------------------

class Tap:
    """The server's WebSocket, every frame recorded on its way."""

    def __init__(self, ws, frames, station):
        self.ws, self.frames, self.station = ws, frames, station

    async def recv(self):
        text = await self.ws.recv()
        self.frames.append(("in", self.station, text))
        return text

    async def send(self, text):
        self.frames.append(("out", self.station, text))
        await self.ws.send(text)


class Point(ChargePoint):
    @on("BootNotification")
    def on_boot(self, **kw):
        return call_result.BootNotification(current_time=ocpp_map.timestamp(), interval=60,
                                            status="Accepted")

    @on("StatusNotification")
    def on_status(self, **kw):
        return call_result.StatusNotification()

    @on("Heartbeat")
    def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=ocpp_map.timestamp())

    @on("MeterValues")
    def on_meter(self, **kw):
        return call_result.MeterValues()

    @on("BatterySwap")
    def on_swap(self, **kw):
        return call_result.BatterySwap()


class Csms:
    """A CSMS on its own thread and event loop: stations by id, every frame recorded."""

    def __init__(self, password=None, tls=None):
        from tukar_tools.broker import free_port

        self.port = free_port()
        self.password, self.tls = password, tls
        self.frames = []
        self.points = {}
        self.refused = 0
        self.users = []
        self.server = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "%s://127.0.0.1:%d/ocpp" % ("wss" if self.tls else "ws", self.port)

    def do(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _check(self, connection, request):
        if self.password is None:
            return None
        auth = request.headers.get("Authorization", "")
        try:
            user, _, pw = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
        except (IndexError, ValueError):
            user, pw = None, None
        if auth.startswith("Basic ") and pw == self.password:
            self.users.append(user)
            return None
        self.refused += 1
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    async def _handler(self, ws):
        station = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        point = Point(station, Tap(ws, self.frames, station), response_timeout=15)
        self.points[station] = point
        try:
            await point.start()
        except Exception:
            pass  # the connection closed

    async def _start(self):
        from websockets.asyncio.server import serve

        self.server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp2.1"],
                                  process_request=self._check, ssl=self.tls)

    async def _stop(self):
        self.server.close()
        await self.server.wait_closed()

    def start(self):
        self.do(self._start())
        return self

    def stop(self):
        self.do(self._stop())
        self.points.clear()

    def close(self):
        if self.server is not None:
            self.do(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def request(self, station, payload, timeout=20):
        """A call from the CSMS to a station, through the package (its snake_case dataclasses)."""
        wait_until(lambda: station in self.points, 20, "station %s connected" % station)
        return self.do(self.points[station].call(payload, suppress=False), timeout)

    def calls(self, action, station=None):
        """The payloads of the station's calls of one action, in order, each message id once."""
        seen, out = set(), []
        for direction, st, text in list(self.frames):
            msg = json.loads(text)
            if direction == "in" and msg[0] == 2 and msg[2] == action and (station in (None, st)):
                if msg[1] not in seen:
                    seen.add(msg[1])
                    out.append(msg[3])
        return out

    def statuses(self, station=None):
        """The last connector status per EVSE."""
        last = {}
        for p in self.calls("StatusNotification", station):
            last[p["evseId"]] = p["connectorStatus"]
        return last


def wait_until(check, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = check()
        if r:
            return r
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


@pytest.fixture
def csms_factory():
    made = []

    def make(**kw):
        c = Csms(**kw).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
    for c in made:  # every frame, both ways, of every test
        frames_valid(c.frames)


@pytest.fixture
def csms(csms_factory):
    return csms_factory()


# --- the bridge --------------------------------------------------------------------------------------

class BridgeProc:
    def __init__(self, tmp_path, csms_url, port, prefix, cabinets=("cab-1",), *extra,
                 queue=None, name="bridge"):
        self.log = tmp_path / (name + ".log")
        self.queue = queue or tmp_path / "queue.sqlite"
        args = [sys.executable, "-m", "tukar_tools.cli", "ocpp", "--csms", csms_url, "--broker",
                "127.0.0.1:%d" % port, "--prefix", prefix, "--queue", str(self.queue),
                "--heartbeat", "30", *extra]
        for c in cabinets:
            args += ["--cabinet", c]
        if "--key" not in extra and "--key-file" not in extra:
            args += ["--key", SIM_KEY_HEX]
        self.f = open(self.log, "a")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.f, stderr=self.f)

    def text(self):
        return self.log.read_text()

    def stop(self):
        """SIGTERM: the bridge stops by itself, promptly and with status 0."""
        hung = False
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.kill()
                self.proc.wait()
        self.f.close()
        out = self.text()
        assert "Traceback" not in out, out
        assert not hung and self.proc.returncode == 0, out
        return out


@pytest.fixture
def bridges():
    made = []

    def make(*a, **kw):
        b = BridgeProc(*a, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


class FakeCabinet:
    """A cabinet on MQTT as the contract describes it: retained info, status, state and slot
    states, events with stable ids, and an ack for every command whose signature is right (an
    anonymous bad_signature ack otherwise, as the gate does)."""

    def __init__(self, port, prefix, cid="cab-1", slots=3, key=KEY):
        self.base = "%s/%s/" % (prefix, cid)
        self.id, self.slots, self.key = cid, slots, key
        self.commands = []
        self.refuse = {}  # cmd -> error code
        self.noise = False  # an anonymous bad_signature ack (another sender's) before each ack
        self.n = 0
        self.client = mqttc.Client("127.0.0.1", port, name="fake-" + cid,
                                   subscriptions=[self.base + "cmd"])
        self.client.on_message = self._cmd
        self.birth()

    def pub(self, sub, payload, retain=False, wait=5.0):
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.client.publish(self.base + sub, text, qos=1, retain=retain, wait=wait)

    def birth(self, mode="in_service", states=None):
        self.pub("info", {"id": self.id, "fw": "1.2.3", "board": "fake", "slots": self.slots,
                          "profiles": ["ref48v"], "bdseq": 1, "boot": {"reason": "power_on",
                                                                      "count": 4},
                          "time_synced": True}, retain=True)
        for n in range(1, self.slots + 1):
            st = (states or {}).get(n, "empty" if n == 1 else "ready")
            self.pub("slot/%d/state" % n, {"slot": n, "state": st}, retain=True)
        self.pub("state", {"mode": mode, "session": None}, retain=True)
        self.pub("status", "online", retain=True)

    def _cmd(self, topic, payload, retained):
        env = json.loads(payload)
        good = hmac.compare_digest(env["sig"], hmac.new(self.key, env["body"].encode(),
                                                        "sha256").hexdigest())
        if not good:
            ack = {"req_id": None, "ok": False, "error": "bad_signature", "detail": ""}
        else:
            body = json.loads(env["body"])
            self.commands.append(body)
            err = self.refuse.get(body["cmd"])
            ack = {"req_id": body["req_id"], "ok": err is None, "error": err, "detail": ""}
        if self.noise:
            self.pub("ack", {"req_id": None, "ok": False, "error": "bad_signature", "detail": ""},
                     wait=0)
        self.pub("ack", ack, wait=0)  # on paho's thread: do not wait for ourselves

    def event(self, type, **fields):
        self.n += 1
        ev = {"id": "%s-4-%d" % (self.id, self.n), "type": type, "ts": int(time.time()),
              "up_ms": 1000 * self.n, "seq": self.n % 256}
        ev.update(fields)
        self.pub("event", ev)
        return ev

    def close(self):
        self.client.close()


def battery(serial, soc, soh=95):
    return {"serial": serial, "profile": "ref48v", "soc": soc, "soh": soh, "temp_c": 30,
            "voltage_v": 50.0, "current_a": 0.0, "cycles": 10, "faults": []}


@pytest.fixture
def fake(mqtt_broker, request):
    prefix = "ocpp%d" % (abs(hash(request.node.name)) % 100000)
    f = FakeCabinet(mqtt_broker.port, prefix)
    f.prefix = prefix
    yield f
    f.close()


def booted(csms, station="cab-1", evses=3, timeout=20):
    wait_until(lambda: csms.calls("BootNotification", station), timeout, "BootNotification")
    wait_until(lambda: len(csms.statuses(station)) == evses, timeout, "every EVSE's status")


# --- the schema bug --------------------------------------------------------------------------------

def test_a_battery_swap_built_with_the_packages_dataclasses_fails_the_schema_and_the_bridges_passes():
    naive = call.BatterySwap(
        battery_data=[datatypes.BatteryDataType(evse_id=3, serial_number="B-0042", soc=14,
                                                soh=90)],
        event_type="BatteryIn", id_token=datatypes.IdTokenType(id_token="rider-77", type="Central"),
        request_id=41)
    payload = remove_nones(snake_to_camel_case(serialize_as_dict(naive)))  # as ChargePoint.call does
    assert set(payload["batteryData"][0]) == {"evseId", "serialNumber", "SoC", "soh"}
    assert schema_errors("BatterySwap", "Request", payload) != []
    event = {"id": "c-4-9", "type": "BatteryIn", "session": "s-1", "request_id": "41",
             "id_token": "rider-77", "slot": 3, "battery": battery("B-0042", 14, 90)}
    ours = ocpp_map.battery_swap(event, 41, ocpp_map.id_token("rider-77", "Central"))
    assert schema_errors("BatterySwap", "Request", ours) == []
    assert ours["batteryData"] == [{"evseId": 3, "serialNumber": "B-0042", "soC": 14, "soH": 90}]


def test_the_bridges_validator_refuses_what_the_schema_refuses():
    good = ocpp_map.status_notification(2, "Occupied")
    ocpp_map.check("StatusNotification", good)
    for bad in ({**good, "connectorStatus": "Charging"}, {**good, "timestamp": "now"},
                {k: v for k, v in good.items() if k != "evseId"}):
        assert schema_errors("StatusNotification", "Request", bad) != []
        with pytest.raises(ocpp_map.SchemaError):
            ocpp_map.check("StatusNotification", bad)


def test_slot_states_map_onto_the_schemas_connector_statuses():
    enum = json.loads((SCHEMAS / "StatusNotificationRequest.json").read_text())[
        "definitions"]["ConnectorStatusEnumType"]["enum"]
    assert set(ocpp_map.SLOT_STATUS.values()) <= set(enum)
    assert ocpp_map.connector_status(True, "in_service", "empty") == "Available"
    assert ocpp_map.connector_status(True, "in_service", "ready") == "Occupied"
    assert ocpp_map.connector_status(True, "in_service", "fault") == "Faulted"
    assert ocpp_map.connector_status(True, "maintenance", "empty") == "Unavailable"
    assert ocpp_map.connector_status(False, "in_service", "empty") == "Unavailable"


# --- the cabinet's side, through a scripted cabinet ------------------------------------------------

def test_boot_status_and_meter_values_reach_the_csms(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    boot = csms.calls("BootNotification")[0]
    assert boot["chargingStation"] == {"model": "fake", "vendorName": "tukar",
                                       "serialNumber": "cab-1", "firmwareVersion": "1.2.3"}
    assert boot["reason"] == "PowerUp"
    wait_until(lambda: csms.statuses() == {1: "Available", 2: "Occupied", 3: "Occupied"}, 10,
               "the slots' statuses")
    assert all(p["connectorId"] == 1 for p in csms.calls("StatusNotification"))
    fake.pub("telemetry", {"seq": 3, "slots": [2, 3], "soc": [80, 90], "temp_c": [30, 30],
                           "voltage_v": [50, 51], "current_a": [1, 1], "heap_free": None,
                           "uptime_s": 60, "rssi": None, "ts": 1764300000,
                           "energy_wh": [10, 2000, 3000], "energy_wh_total": 5010})
    meters = wait_until(lambda: len(csms.calls("MeterValues")) == 4 and csms.calls("MeterValues"),
                        10, "MeterValues")
    by_evse = {m["evseId"]: m["meterValue"][0]["sampledValue"][0] for m in meters}
    assert {e: v["value"] for e, v in by_evse.items()} == {0: 5010, 1: 10, 2: 2000, 3: 3000}
    assert by_evse[0]["measurand"] == "Energy.Active.Import.Register"
    assert by_evse[0]["unitOfMeasure"] == {"unit": "Wh"}
    assert meters[0]["meterValue"][0]["timestamp"] == "2025-11-28T03:20:00Z"
    fake.pub("slot/1/state", {"slot": 1, "state": "fault"}, retain=True)
    wait_until(lambda: csms.statuses()[1] == "Faulted", 10, "slot 1 Faulted")
    fake.pub("state", {"mode": "maintenance", "session": None}, retain=True)
    wait_until(lambda: set(csms.statuses().values()) == {"Unavailable"}, 10, "all Unavailable")


def test_change_availability_becomes_set_mode_and_reset_becomes_reboot(fake, csms, bridges,
                                                                       tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    r = csms.request("cab-1", call.ChangeAvailability(operational_status="Inoperative"))
    assert r.status == "Accepted"
    assert fake.commands[-1]["cmd"] == "set_mode" and fake.commands[-1]["mode"] == "out_of_service"
    r = csms.request("cab-1", call.ChangeAvailability(operational_status="Operative"))
    assert r.status == "Accepted" and fake.commands[-1]["mode"] == "in_service"
    r = csms.request("cab-1", call.Reset(type="Immediate"))
    assert r.status == "Accepted" and fake.commands[-1]["cmd"] == "reboot"
    assert all(abs(c["ts"] - time.time()) < 30 and c["req_id"] for c in fake.commands)
    sent = len(fake.commands)
    fake.refuse["reboot"] = "busy"  # a session is open
    r = csms.request("cab-1", call.Reset(type="OnIdle"))
    assert r.status == "Rejected" and r.status_info["reason_code"] == "busy"
    r = csms.request("cab-1", call.Reset(type="Immediate", evse_id=2))  # one slot: not possible
    assert r.status == "Rejected"
    r = csms.request("cab-1", call.ChangeAvailability(operational_status="Inoperative",
                                                      evse={"id": 2}))
    assert r.status == "Rejected"
    assert len(fake.commands) == sent + 1  # neither per-EVSE request reached the cabinet


def test_what_the_cabinet_cannot_do_is_not_supported(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    for payload in (call.TriggerMessage(requested_message="StatusNotification"),
                    call.UnlockConnector(evse_id=1, connector_id=1),
                    call.RequestStartTransaction(id_token={"id_token": "x", "type": "Central"},
                                                 remote_start_id=1)):
        with pytest.raises(NotSupportedError):
            csms.request("cab-1", payload)
    assert fake.commands == []


def test_a_request_signed_with_the_wrong_key_is_rejected(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
            "--key", "00" * 32)
    booted(csms)
    r = csms.request("cab-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-1", "type": "Central"}, request_id=7))
    assert r.status == "Rejected" and r.status_info["reason_code"] == "bad_signature"


def test_another_senders_bad_signature_does_not_answer_our_request(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    fake.noise = True
    r = csms.request("cab-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-1", "type": "Central"}, request_id=9))
    assert r.status == "Accepted"


def test_a_swap_request_the_cabinet_refuses_is_rejected_with_its_error(fake, csms, bridges,
                                                                      tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    fake.refuse["start_swap"] = "no_battery_available"
    r = csms.request("cab-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-1", "type": "Central"}, request_id=8))
    assert r.status == "Rejected"
    assert r.status_info["reason_code"] == "no_battery_available"
    assert fake.commands[-1]["cmd"] == "start_swap"
    assert (fake.commands[-1]["id_token"], fake.commands[-1]["request_id"]) == ("rider-1", "8")


def swap_events(fake, request_id="55", token="rider-9", session="s-7"):
    """A swap's events as a cabinet publishes them, one at a time."""
    yield fake.event("SwapStarted", session=session, request_id=request_id, id_token=token, slot=1)
    yield fake.event("BatteryIn", session=session, request_id=request_id, id_token=token, slot=1,
                     battery=battery("IN-1", 12.5, 91))
    yield fake.event("BatteryOut", session=session, request_id=request_id, id_token=token, slot=3,
                     battery=battery("OUT-1", 97, 88))
    yield fake.event("SwapCompleted", session=session, request_id=request_id, id_token=token,
                     slot_in=1, slot_out=3, battery_in="IN-1", battery_out="OUT-1",
                     duration_ms=9000, energy_wh=1200)


def test_a_csms_outage_and_a_bridge_restart_lose_no_swap_message_and_send_none_twice(
        fake, csms, bridges, tmp_path):
    b = bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    events = swap_events(fake)
    next(events)
    csms.stop()  # the CSMS goes down mid-swap
    wait_until(lambda: "CSMS connection" in b.text(), 10, "the bridge noticing")
    ev_in = next(events)
    b.stop()  # ... and the bridge restarts while it is down
    ev_out = next(events)  # published while no bridge runs: the broker keeps it for the session
    fake.pub("event", ev_out)  # the cabinet's retry of the same event (same id)
    next(events, None)
    b2 = bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, queue=b.queue,
                 name="bridge2")
    wait_until(lambda: "CSMS connection" in b2.text(), 15, "the restarted bridge trying the CSMS")
    csms.start()
    swaps = wait_until(lambda: len(csms.calls("BatterySwap")) >= 2 and csms.calls("BatterySwap"),
                       30, "both BatterySwaps")
    fake.pub("event", ev_in)  # a late duplicate of an event already answered
    fake.pub("slot/2/state", {"slot": 2, "state": "fault"}, retain=True)  # queued after it
    wait_until(lambda: csms.statuses()[2] == "Faulted", 10, "the status queued after it")
    swaps = csms.calls("BatterySwap")
    assert [s["eventType"] for s in swaps] == ["BatteryIn", "BatteryOut"]
    assert [s["customData"]["eventId"] for s in swaps] == [ev_in["id"], ev_out["id"]]
    assert {s["requestId"] for s in swaps} == {55}
    assert swaps[0]["batteryData"] == [{"evseId": 1, "serialNumber": "IN-1", "soC": 12.5, "soH": 91}]
    assert swaps[1]["batteryData"] == [{"evseId": 3, "serialNumber": "OUT-1", "soC": 97, "soH": 88}]
    raw = [json.loads(t)[1] for d, _, t in csms.frames if d == "in" and '"BatterySwap"' in t]
    assert len(raw) == len(set(raw)) == 2  # not sent twice, not even with the same message id


def test_a_late_battery_out_timeout_carries_the_swaps_token_and_request_id(fake, csms, bridges,
                                                                          tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    fake.event("SwapStarted", session="s-9", request_id="r-abc", id_token="rider-5", slot=1)
    fake.event("BatteryIn", session="s-9", request_id="r-abc", id_token="rider-5", slot=1,
               battery=battery("IN-2", 20))
    fake.event("BatteryOutTimeout", session="s-9", request_id="r-abc", slot=2,
               battery=battery("OUT-2", 99))
    swaps = wait_until(lambda: len(csms.calls("BatterySwap")) == 2 and csms.calls("BatterySwap"),
                       10, "two BatterySwaps")
    assert [s["eventType"] for s in swaps] == ["BatteryIn", "BatteryOutTimeout"]
    # a request id that is not a number (a back end's own): one requestId of the bridge's, < 0
    assert swaps[0]["requestId"] == swaps[1]["requestId"] < 0
    assert swaps[1]["idToken"] == {"idToken": "rider-5", "type": "Central"}


def test_a_broker_outage_makes_every_evse_unavailable(tmp_path, csms, bridges):
    require("mosquitto")
    broker = Broker("mosquitto", tmp_path).start()
    try:
        f = FakeCabinet(broker.port, "bo")
        b = bridges(tmp_path, csms.url, broker.port, "bo")
        booted(csms)
        wait_until(lambda: csms.statuses() == {1: "Available", 2: "Occupied", 3: "Occupied"}, 10,
                   "the slots' statuses")
        broker.stop()
        wait_until(lambda: csms.statuses() == {1: "Unavailable", 2: "Unavailable",
                                               3: "Unavailable"}, 20, "every EVSE Unavailable")
        broker.start()
        f.client.connected.wait(10)
        wait_until(lambda: "connected to the broker" in b.text().split("lost the broker")[-1], 20,
                   "the bridge back on the broker")
        f.birth()
        wait_until(lambda: csms.statuses() == {1: "Available", 2: "Occupied", 3: "Occupied"}, 20,
                   "the EVSEs available again")
        f.close()
        t = time.monotonic()
        b.stop()
        print("bridge stop %.1f" % (time.monotonic() - t))
    finally:
        broker.stop()


def test_an_offline_cabinet_is_unavailable(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)
    booted(csms)
    fake.pub("status", "offline", retain=True)  # its Last Will
    wait_until(lambda: set(csms.statuses().values()) == {"Unavailable"}, 10, "all Unavailable")


def test_an_idle_station_sends_heartbeats(fake, csms, bridges, tmp_path):
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",), "--heartbeat", "1")
    booted(csms)
    wait_until(lambda: len(csms.calls("Heartbeat")) >= 2, 10, "two Heartbeats")


@pytest.mark.parametrize("argv", [["--csms", "http://127.0.0.1:1/ocpp"],
                                  ["--csms", "ws://127.0.0.1:1/ocpp", "--cert", "c.pem"],
                                  ["--csms", "ws://127.0.0.1:1/ocpp", "--key", "not-hex"]])
def test_bad_arguments_exit_2_before_connecting(argv, capsys):
    import argparse

    from tukar_tools import ocpp_bridge

    p = argparse.ArgumentParser()
    ocpp_bridge.add_arguments(p)
    assert ocpp_bridge.run(p.parse_args(argv + ["--cabinet", "cab-1"])) == 2
    assert "ocpp: " in capsys.readouterr().err


def test_one_bridge_serves_several_cabinets_each_as_its_own_station(fake, csms, bridges, tmp_path):
    other = FakeCabinet(fake.client.mqtt._port, fake.prefix, cid="cab-2", slots=2)
    try:
        bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1", "cab-2"))
        booted(csms, "cab-1", 3)
        booted(csms, "cab-2", 2)
        r = csms.request("cab-2", call.Reset(type="Immediate"))
        assert r.status == "Accepted"
        assert [c["cmd"] for c in other.commands] == ["reboot"] and fake.commands == []
    finally:
        other.close()


# --- security profiles -----------------------------------------------------------------------------

def test_basic_auth_is_accepted_with_the_right_password(fake, csms_factory, bridges, tmp_path):
    csms = csms_factory(password="s3cret-pw")
    (tmp_path / "pw").write_text("cab-1 s3cret-pw\n")
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
            "--basic-auth-password-file", str(tmp_path / "pw"))
    booted(csms)
    assert csms.users[0] == "cab-1" and csms.refused == 0


def test_basic_auth_with_a_wrong_password_is_refused(fake, csms_factory, bridges, tmp_path):
    csms = csms_factory(password="s3cret-pw")
    (tmp_path / "pw").write_text("wrong\n")
    b = bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
                "--basic-auth-password-file", str(tmp_path / "pw"))
    wait_until(lambda: csms.refused >= 1 and "401" in b.text(), 15, "a refused connection")
    assert csms.points == {} and csms.calls("BootNotification") == []


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, the CSMS's certificate for 127.0.0.1 and a client certificate for cab-1."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("openssl is missing on CI (.ci/run installs it)")
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key",
            "-out", "ca.pem", cwd=d)
    for name, ext in (("srv", "subjectAltName=IP:127.0.0.1\n"),
                      ("cab", "extendedKeyUsage=clientAuth\n")):
        openssl("req", *ec, "-subj", "/CN=%s" % ("127.0.0.1" if name == "srv" else "cab-1"),
                "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
        (d / (name + ".ext")).write_text(ext)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem",
                cwd=d)
    return d


def server_tls(pki, client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "srv.pem", pki / "srv.key")
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def test_profile_2_tls_with_the_test_ca_and_basic_auth(fake, csms_factory, bridges, tmp_path, pki):
    csms = csms_factory(password="pw-2", tls=server_tls(pki))
    (tmp_path / "pw").write_text("pw-2\n")
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
            "--basic-auth-password-file", str(tmp_path / "pw"), "--ca", str(pki / "ca.pem"))
    booted(csms)
    assert csms.users == ["cab-1"]


def test_profile_2_refuses_a_csms_the_ca_did_not_sign(fake, csms_factory, bridges, tmp_path, pki):
    csms = csms_factory(tls=server_tls(pki))
    b = bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix)  # the system's CAs only
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in b.text(), 15, "a refused certificate")
    assert csms.points == {}


def test_profile_3_client_certificate_required_by_the_csms(fake, csms_factory, bridges, tmp_path,
                                                           pki):
    csms = csms_factory(tls=server_tls(pki, client_cert=True))
    without = bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
                      "--ca", str(pki / "ca.pem"), name="without")
    wait_until(lambda: "CSMS connection" in without.text(), 15, "a refused handshake")
    assert csms.points == {}
    without.stop()
    bridges(tmp_path, csms.url, fake.client.mqtt._port, fake.prefix, ("cab-1",),
            "--ca", str(pki / "ca.pem"), "--cert", str(pki / "cab.pem"),
            "--key-pem", str(pki / "cab.key"), name="with")
    booted(csms)


# --- a whole swap in `tukar sim` -------------------------------------------------------------------

@pytest.fixture
def sim_bridge(mqtt_broker, csms, bridges, tmp_path, request):
    prefix = "ocs%d" % (abs(hash(request.node.name)) % 100000)
    proc = subprocess.Popen([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                             "127.0.0.1:%d" % mqtt_broker.port, "--no-monitor", "--state-dir",
                             str(tmp_path / "sim"), "--speed", str(SPEED), "--prefix", prefix,
                             "--fill", "6"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    runner = Runner("127.0.0.1", mqtt_broker.port, prefix, "sim-1", KEY, SPEED,
                    out=lambda line: None)
    try:
        runner.step({"do": "expect_status", "value": "online", "within_s": 30})
        runner.step({"do": "expect_state", "match": {"ready": {"$gte": 2}, "session": None},
                     "within_s": 30})
        bridges(tmp_path, csms.url, mqtt_broker.port, prefix, ("sim-1",))
        slots = json.loads(next(p for t, p, _ in list(runner.obs.records)
                                if t.endswith("/info")))["slots"]
        booted(csms, "sim-1", slots)
        yield runner
    finally:
        runner.obs.close()
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert "Traceback" not in err, err


def test_a_swap_requested_by_the_csms_runs_in_the_sim_and_reports_both_batteries(sim_bridge, csms):
    r = sim_bridge
    resp = csms.request("sim-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-77", "type": "ISO14443"}, request_id=4711))
    assert resp.status == "Accepted"
    started = r.step({"do": "expect_event", "type": "SwapStarted", "within_s": 5})
    assert (started["request_id"], started["id_token"]) == ("4711", "rider-77")
    slot_in = started["slot"]
    r.step({"do": "expect_slot", "slot": slot_in, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "insert", "slot": slot_in,
            "battery": {"serial": "OCPP-PACK", "soc": 14, "soh": 90, "temp_c": 28}})
    r.step({"do": "world", "action": "close_door", "slot": slot_in})
    ev_in = r.step({"do": "expect_event", "type": "BatteryIn", "within_s": 10})
    st = r.step({"do": "expect_state", "match": {"session": {"phase": "dispensing"}},
                 "within_s": 10})
    slot_out = st["session"]["slot_out"]
    r.step({"do": "expect_slot", "slot": slot_out, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "take", "slot": slot_out})
    r.step({"do": "world", "action": "close_door", "slot": slot_out})
    ev_out = r.step({"do": "expect_event", "type": "BatteryOut", "within_s": 10})
    r.step({"do": "expect_event", "type": "SwapCompleted", "within_s": 10})
    swaps = wait_until(lambda: len(csms.calls("BatterySwap")) == 2 and csms.calls("BatterySwap"),
                       15, "BatteryIn and BatteryOut at the CSMS")
    assert [s["eventType"] for s in swaps] == ["BatteryIn", "BatteryOut"]
    for s, ev, slot in ((swaps[0], ev_in, slot_in), (swaps[1], ev_out, slot_out)):
        assert s["requestId"] == 4711
        assert s["idToken"] == {"idToken": "rider-77", "type": "ISO14443"}
        assert s["batteryData"] == [{"evseId": slot, "serialNumber": ev["battery"]["serial"],
                                     "soC": ev["battery"]["soc"], "soH": ev["battery"]["soh"]}]
        assert s["customData"]["eventId"] == ev["id"]
    assert swaps[0]["batteryData"][0]["serialNumber"] == "OCPP-PACK"
    assert swaps[0]["batteryData"][0]["soC"] == 14
    # the slot that took the rider's pack is occupied, the one that gave one is free
    wait_until(lambda: csms.statuses("sim-1").get(slot_out) == "Available", 10, "slot_out free")
    assert csms.statuses("sim-1")[slot_in] == "Occupied"


def test_out_of_service_from_the_csms_refuses_a_swap_request(sim_bridge, csms):
    r = sim_bridge
    resp = csms.request("sim-1", call.ChangeAvailability(operational_status="Inoperative"))
    assert resp.status == "Accepted"
    r.step({"do": "expect_state", "match": {"mode": "out_of_service"}, "within_s": 5})
    wait_until(lambda: set(csms.statuses("sim-1").values()) == {"Unavailable"}, 10,
               "every EVSE Unavailable")
    resp = csms.request("sim-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-78", "type": "Central"}, request_id=4712))
    assert resp.status == "Rejected"
    assert resp.status_info["reason_code"] == "not_in_service"
    resp = csms.request("sim-1", call.ChangeAvailability(operational_status="Operative"))
    assert resp.status == "Accepted"
    r.step({"do": "expect_state", "match": {"mode": "in_service"}, "within_s": 5})
    wait_until(lambda: "Available" in csms.statuses("sim-1").values(), 10, "available again")


def test_a_csms_outage_during_a_sim_swap_delivers_every_battery_swap_once_in_order(
        sim_bridge, csms):
    r = sim_bridge
    resp = csms.request("sim-1", call.RequestBatterySwap(
        id_token={"id_token": "rider-79", "type": "Central"}, request_id=4713))
    assert resp.status == "Accepted"
    started = r.step({"do": "expect_event", "type": "SwapStarted", "within_s": 5})
    csms.stop()  # down from here to after the swap
    slot_in = started["slot"]
    r.step({"do": "expect_slot", "slot": slot_in, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "insert", "slot": slot_in,
            "battery": {"serial": "OUTAGE-PACK", "soc": 22, "soh": 93, "temp_c": 28}})
    r.step({"do": "world", "action": "close_door", "slot": slot_in})
    st = r.step({"do": "expect_state", "match": {"session": {"phase": "dispensing"}},
                 "within_s": 10})
    slot_out = st["session"]["slot_out"]
    r.step({"do": "expect_slot", "slot": slot_out, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "take", "slot": slot_out})
    r.step({"do": "world", "action": "close_door", "slot": slot_out})
    r.step({"do": "expect_event", "type": "SwapCompleted", "within_s": 10})
    assert csms.calls("BatterySwap") == []
    csms.start()
    swaps = wait_until(lambda: len(csms.calls("BatterySwap")) >= 2 and csms.calls("BatterySwap"),
                       30, "the queued BatterySwaps")
    assert [(s["eventType"], s["requestId"]) for s in swaps] == [("BatteryIn", 4713),
                                                                 ("BatteryOut", 4713)]
    assert swaps[0]["batteryData"][0]["serialNumber"] == "OUTAGE-PACK"
    ids = [e["id"] for e in r.obs.events if e["type"] in ("BatteryIn", "BatteryOut")]
    assert [s["customData"]["eventId"] for s in swaps] == ids
