"""`tukar ocpp`: bridges cabinets to a charging-station management system (CSMS) over OCPP 2.1.

Each cabinet is its own charging station: one WebSocket to `<csms url>/<cabinet id>` (subprotocol
ocpp2.1; basic auth, TLS, client certificate: security profiles 1 to 3), each slot one EVSE. What
the cabinet publishes on MQTT becomes BootNotification, StatusNotification, MeterValues and
BatterySwap (ocpp_map.py builds them); RequestBatterySwap, ChangeAvailability and Reset from the
CSMS become signed commands, answered from the cabinet's ack. Station-initiated messages wait in a
SQLite queue until the CSMS has answered them, so a CSMS outage or a restart of the bridge loses
none (docs/ocpp.md).

Threads: paho's network thread turns MQTT messages into queue rows (the PUBACK goes out once the
row is committed); one asyncio loop runs every station's WebSocket."""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import signal
import sqlite3
import ssl
import sys
import threading
import time
import uuid

from tukar_tools import mqttc, ocpp_map
from tukar_tools.sign import KeyFormatError, command, parse_key, sign

EXIT_OK, EXIT_USAGE, EXIT_QUEUE = 0, 2, 3
SUBPROTOCOL = "ocpp2.1"
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
ACK_TIMEOUT_S = 10.0  # well inside a CSMS's usual 30 s response timeout
ANONYMOUS_ACK_WAIT_S = 1.0
RESPONSE_TIMEOUT_S = 30
BROKER_GRACE_S = 5.0  # no broker this long after start: the stations are reported unavailable
DELIVERED_KEEP = 10000  # keys of answered messages kept per cabinet, for de-duplication
HEARTBEAT_DEFAULT_S = 300


def say(text, err=True):
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    print("%s ocpp: %s" % (stamp, text), file=sys.stderr if err else sys.stdout, flush=True)


# --- the queue -----------------------------------------------------------------------------------

class Queue:
    """The persistent queue of station-initiated messages and what the mapping must remember
    (swap sessions, last reported connector status, the cabinet's info). One SQLite file; paho's
    thread writes, the asyncio loop reads and removes: a lock serialises them."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY AUTOINCREMENT, cabinet TEXT NOT NULL,
        key TEXT NOT NULL, action TEXT NOT NULL, payload TEXT NOT NULL, msg_id TEXT NOT NULL,
        UNIQUE (cabinet, key));
    CREATE TABLE IF NOT EXISTS delivered (cabinet TEXT NOT NULL, key TEXT NOT NULL,
        n INTEGER NOT NULL, PRIMARY KEY (cabinet, key));
    CREATE TABLE IF NOT EXISTS connectors (cabinet TEXT NOT NULL, evse INTEGER NOT NULL,
        status TEXT NOT NULL, PRIMARY KEY (cabinet, evse));
    CREATE TABLE IF NOT EXISTS swaps (cabinet TEXT NOT NULL, session TEXT NOT NULL,
        request_id INTEGER NOT NULL, id_token TEXT, token_type TEXT, PRIMARY KEY (cabinet, session));
    CREATE TABLE IF NOT EXISTS requests (cabinet TEXT NOT NULL, request_id INTEGER NOT NULL,
        token_type TEXT NOT NULL, PRIMARY KEY (cabinet, request_id));
    CREATE TABLE IF NOT EXISTS info (cabinet TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """

    def __init__(self, path):
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(self.SCHEMA)
        self.lock = threading.RLock()

    def close(self):
        with self.lock:
            self.db.close()

    def _one(self, sql, args=()):
        return self.db.execute(sql, args).fetchone()

    def put(self, cabinet, key, action, payload, connector=None):
        """Queue a message once per key (the MQTT event id); False when it was queued or answered
        before. `connector` (evse, status) is remembered in the same transaction."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self._one("SELECT 1 FROM delivered WHERE cabinet=? AND key=?", (cabinet, key)):
                    self.db.execute("ROLLBACK")
                    return False
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO outbox (cabinet, key, action, payload, msg_id) "
                    "VALUES (?, ?, ?, ?, ?)", (cabinet, key, action, json.dumps(payload),
                                               str(uuid.uuid4())))
                if connector is not None:
                    self.db.execute("INSERT OR REPLACE INTO connectors VALUES (?, ?, ?)",
                                    (cabinet, connector[0], connector[1]))
                self.db.execute("COMMIT")
                return cur.rowcount == 1
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def head(self, cabinet):
        """The oldest queued message: (n, key, action, payload, msg_id), or None."""
        with self.lock:
            row = self._one("SELECT n, key, action, payload, msg_id FROM outbox WHERE cabinet=? "
                            "ORDER BY n LIMIT 1", (cabinet,))
        return None if row is None else (row[0], row[1], row[2], json.loads(row[3]), row[4])

    def seen(self, cabinet, key):
        """The key is queued, or was answered recently."""
        with self.lock:
            return bool(self._one("SELECT 1 FROM outbox WHERE cabinet=? AND key=? UNION ALL "
                                  "SELECT 1 FROM delivered WHERE cabinet=? AND key=?",
                                  (cabinet, key, cabinet, key)))

    def done(self, cabinet, n, key):
        """The CSMS answered: remove the message, remember its key."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM outbox WHERE n=?", (n,))
            self.db.execute("INSERT OR REPLACE INTO delivered VALUES (?, ?, ?)", (cabinet, key, n))
            self.db.execute("DELETE FROM delivered WHERE cabinet=? AND n < ?",
                            (cabinet, n - DELIVERED_KEEP))
            self.db.execute("COMMIT")

    def connectors(self, cabinet):
        with self.lock:
            return dict(self.db.execute("SELECT evse, status FROM connectors WHERE cabinet=?",
                                        (cabinet,)).fetchall())

    def remember_request(self, cabinet, request_id, token_type):
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?)",
                            (cabinet, request_id, token_type))

    def token_type(self, cabinet, request_id):
        with self.lock:
            row = self._one("SELECT token_type FROM requests WHERE cabinet=? AND request_id=?",
                            (cabinet, request_id))
        return row[0] if row else None

    def swap(self, cabinet, session):
        with self.lock:
            row = self._one("SELECT request_id, id_token, token_type FROM swaps WHERE cabinet=? "
                            "AND session=?", (cabinet, session))
        return row

    def remember_swap(self, cabinet, session, request_id, token, token_type):
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO swaps VALUES (?, ?, ?, ?, ?)",
                            (cabinet, session, request_id, token, token_type))

    def forget_swap(self, cabinet, session, request_id):
        with self.lock:
            self.db.execute("DELETE FROM swaps WHERE cabinet=? AND session=?", (cabinet, session))
            self.db.execute("DELETE FROM requests WHERE cabinet=? AND request_id=?",
                            (cabinet, request_id))

    def local_request_id(self):
        """A requestId for a swap the CSMS did not ask for: -1, -2, ... (a CSMS's are positive)."""
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO counters VALUES ('local_request', 0)")
            self.db.execute("UPDATE counters SET value = value + 1 WHERE name='local_request'")
            return -self._one("SELECT value FROM counters WHERE name='local_request'")[0]

    def info(self, cabinet):
        with self.lock:
            row = self._one("SELECT body FROM info WHERE cabinet=?", (cabinet,))
        return json.loads(row[0]) if row else None

    def set_info(self, cabinet, info):
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (cabinet, json.dumps(info)))


# --- one cabinet, MQTT side (paho's thread) ------------------------------------------------------

class Cabinet:
    """What the bridge knows of one cabinet, fed by MQTT, turned into queued OCPP messages."""

    def __init__(self, cabinet_id, queue, wake):
        self.id = cabinet_id
        self.queue = queue
        self.wake = wake  # called (from any thread) when a message was queued
        self.info = queue.info(cabinet_id)
        self.status = None  # "online" | "offline" | None: not heard yet
        self.broker_up = False
        self.mode = None
        self.slots = {}  # slot number -> slot state
        self.owed = set()  # EVSEs whose status is owed to the CSMS whatever it is (after a boot)
        self.lock = threading.RLock()

    def evses(self):
        n = (self.info or {}).get("slots") or 0
        return list(range(1, max([n] + list(self.slots)) + 1))

    def on_message(self, kind, slot, data):
        with self.lock:
            if kind == "status":
                self.status = data
                self.report_statuses()
            elif kind == "info" and isinstance(data, dict):
                self.info = data
                self.queue.set_info(self.id, data)
                self.report_statuses()
            elif kind == "state" and isinstance(data, dict):
                self.mode = data.get("mode")
                self.report_statuses()
            elif kind == "slot_state" and isinstance(data, dict):
                self.slots[slot] = data.get("state")
                self.report_statuses()
            elif kind == "event" and isinstance(data, dict):
                self.on_event(data)
            elif kind == "telemetry" and isinstance(data, dict):
                for payload in ocpp_map.meter_values(data):
                    self.put("meter-" + uuid.uuid4().hex, "MeterValues", payload)

    def broker(self, up):
        with self.lock:
            self.broker_up = up
            if not up:
                self.status = None  # heard again from the retained status after reconnecting
                self.report_statuses(force_unknown=True)

    def put(self, key, action, payload, connector=None):
        ocpp_map.check(action, payload)  # never queue what the CSMS would refuse
        if self.queue.put(self.id, key, action, payload, connector):
            self.wake()

    def report_statuses(self, force_unknown=False, again=False):
        """Queue a StatusNotification for every EVSE whose status changed, and for every EVSE once
        after `again` (the CSMS accepted a boot). Nothing before the cabinet's status is known and,
        while it is online, nothing for a slot not heard of yet, unless the broker is lost."""
        if again:
            self.owed = set(self.evses())
        if self.status is None and not force_unknown:
            return
        online = self.broker_up and self.status == "online"
        known = self.queue.connectors(self.id)
        for evse in self.evses():
            if online and evse not in self.slots:
                continue  # its retained state is on its way: no Unavailable in between
            st = ocpp_map.connector_status(online, self.mode, self.slots.get(evse))
            if evse in self.owed or known.get(evse) != st:
                self.put("status-" + uuid.uuid4().hex, "StatusNotification",
                         ocpp_map.status_notification(evse, st), connector=(evse, st))
                self.owed.discard(evse)

    def on_event(self, ev):
        kind, session = ev.get("type"), ev.get("session")
        if self.queue.seen(self.id, ev.get("id")):
            return  # a repeat of an event already queued or answered: no state changes either
        if kind == "Boot":
            self.put(ev["id"], "BootNotification",
                     ocpp_map.boot_notification(self.id, self.info, ev.get("reason")))
        elif kind in ("SwapStarted",) + ocpp_map.SWAP_EVENTS:
            known = self.queue.swap(self.id, session)
            if known is None:
                rid = ocpp_map.request_id_of(ev.get("request_id"))
                if rid is None:
                    rid = self.queue.local_request_id()
                ttype = self.queue.token_type(self.id, rid)
                known = (rid, ev.get("id_token"), ttype)
                if ev.get("id_token"):
                    self.queue.remember_swap(self.id, session, *known)
            rid, token, ttype = known
            if kind != "SwapStarted":
                self.put(ev["id"], "BatterySwap", ocpp_map.battery_swap(
                    ev, rid, ocpp_map.id_token(ev.get("id_token") or token, ttype)))
        elif kind in ("SwapCompleted", "SwapAborted"):
            known = self.queue.swap(self.id, session)
            if known is not None:
                self.queue.forget_swap(self.id, session, known[0])


class Mqtt:
    """One paho client for every cabinet: persistent session, QoS 1, the PUBACK of a message sent
    only after its handler returned (paho acknowledges QoS 1 once on_message is done)."""

    def __init__(self, host, port, prefix, cabinets, client_id, on_ack, tls_ca=None, user=None,
                 password=None):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.host, self.port, self.prefix = host, port, prefix
        self.cabinets = cabinets  # id -> Cabinet
        self.on_ack = on_ack
        self.stopping = False
        self.up = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv311, clean_session=False)
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.reconnect_delay_set(min_delay=1, max_delay=int(BACKOFF_MAX_S))
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message

    def start(self):
        self.client.connect_async(self.host, self.port, keepalive=15)
        self.client.loop_start()

    def stop(self):
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def topics(self):
        return [("%s/%s/%s" % (self.prefix, c, t), 1) for c in self.cabinets
                for t in ("status", "info", "state", "slot/+/state", "event", "telemetry", "ack")]

    def _connected(self, client, userdata, flags, reason, properties=None):
        if reason.is_failure:
            say("the broker %s:%d refused the connection: %s" % (self.host, self.port, reason))
            return
        say("connected to the broker %s:%d" % (self.host, self.port))
        client.subscribe(self.topics())
        self.up.set()
        for cab in self.cabinets.values():
            cab.broker(True)

    def _disconnected(self, client, userdata, flags, reason, properties=None):
        self.up.clear()
        if self.stopping:
            return
        say("lost the broker %s:%d (%s); the stations are unavailable until it is back"
            % (self.host, self.port, reason))
        for cab in self.cabinets.values():
            cab.broker(False)

    def _message(self, client, userdata, msg):
        if msg.retain and msg.topic.endswith(("/event", "/ack", "/telemetry")):
            return
        rest = msg.topic[len(self.prefix) + 1:].split("/")
        cab = self.cabinets.get(rest[0])
        if cab is None:
            return
        tail = rest[1:]
        try:
            if tail == ["status"]:
                kind, slot, data = "status", None, msg.payload.decode()
            elif len(tail) == 3 and tail[0] == "slot" and tail[2] == "state" and tail[1].isdigit():
                kind, slot, data = "slot_state", int(tail[1]), json.loads(msg.payload)
            elif len(tail) == 1:
                kind, slot, data = tail[0], None, json.loads(msg.payload)
            else:
                return
        except (ValueError, UnicodeDecodeError):
            say("%s: not JSON, ignored" % msg.topic)
            return
        if kind == "ack":
            if isinstance(data, dict):
                self.on_ack(cab.id, data)
            return
        try:
            cab.on_message(kind, slot, data)
        except (KeyError, TypeError, ValueError) as e:  # ocpp_map.SchemaError is a ValueError
            say("%s: cannot map %s: %s" % (msg.topic, msg.payload[:200], e))
        except sqlite3.Error as e:
            # The queue cannot take it: end now, before paho acknowledges the message, so the
            # broker delivers it again to the bridge that a supervisor restarts.
            say("%s: the queue %s failed: %s; stopping" % (msg.topic, cab.queue.path, e))
            os._exit(EXIT_QUEUE)
        except Exception as e:  # paho's thread must live on (a bug here is logged, not fatal)
            say("%s: %s: %s" % (msg.topic, type(e).__name__, e))

    def publish(self, topic, payload):
        return self.client.publish(topic, payload, qos=1)


# --- one cabinet, OCPP side (the asyncio loop) ---------------------------------------------------

def _link_class():
    """The package's v2.1 ChargePoint with raw calls (our payloads, our schema check), incoming
    calls each in their own task (a RequestBatterySwap waits for the cabinet while the station
    keeps answering), and NotSupported for every action without a handler (ocpp 2.1.0 sends no
    answer at all for those)."""
    from ocpp.exceptions import NotSupportedError
    from ocpp.messages import Call, MessageType, unpack
    from ocpp.routing import on
    from ocpp.v21 import ChargePoint, call_result

    class Link(ChargePoint):
        def __init__(self, station, connection):
            super().__init__(station.cabinet.id, connection, response_timeout=RESPONSE_TIMEOUT_S)
            self.station = station
            self.tasks = set()

        async def start(self):
            while True:
                raw = await self._connection.recv()
                try:
                    msg = unpack(raw)
                except Exception:  # the package logs and drops what is not OCPP
                    await self.route_message(raw)
                    continue
                if msg.message_type_id == MessageType.Call:
                    if msg.action not in self.route_map:
                        error = NotSupportedError(
                            details={"cause": "%s: the cabinet cannot do this" % msg.action})
                        await self._send(msg.create_call_error(error).to_json())
                        continue
                    t = asyncio.ensure_future(self.route_message(raw))
                    self.tasks.add(t)
                    t.add_done_callback(self.tasks.discard)
                else:
                    await self.route_message(raw)

        async def call_raw(self, action, payload, unique_id=None):
            """Send our own payload; return the CallResult payload, or raise the CallError."""
            ocpp_map.check(action, payload)
            message = Call(unique_id=unique_id or str(uuid.uuid4()), action=action,
                           payload=payload)
            async with self._call_lock:
                await self._send(message.to_json())
                response = await self._get_specific_response(message.unique_id,
                                                              self._response_timeout)
            if response.message_type_id == MessageType.CallError:
                raise response.to_exception()
            found = ocpp_map.errors(action, response.payload, "Response")
            if found:
                say("%s: the CSMS's %sResponse is not valid: %s" % (self.id, action, found))
            return response.payload

        @on("RequestBatterySwap")
        async def on_request_battery_swap(self, id_token, request_id, **kwargs):
            status, info = await self.station.request_swap(id_token, request_id)
            return call_result.RequestBatterySwap(status=status, status_info=info)

        @on("ChangeAvailability")
        async def on_change_availability(self, operational_status, evse=None, **kwargs):
            status, info = await self.station.change_availability(operational_status, evse)
            return call_result.ChangeAvailability(status=status, status_info=info)

        @on("Reset")
        async def on_reset(self, type, evse_id=None, **kwargs):
            status, info = await self.station.reset(type, evse_id)
            return call_result.Reset(status=status, status_info=info)

    return Link


class Station:
    """One cabinet as an OCPP 2.1 charging station: its WebSocket, reconnected with backoff, the
    queue sent in order, heartbeats, and the CSMS's requests turned into signed commands."""

    def __init__(self, bridge, cabinet, key, password):
        self.bridge = bridge
        self.cabinet = cabinet
        self.key = key
        self.password = password
        self.wake = asyncio.Event()
        self.pending = {}  # req_id -> future of the ack
        self.booted = False  # BootNotification accepted since this process started
        self.heartbeat = bridge.heartbeat

    # The CSMS's requests

    async def send_command(self, cmd, **args):
        """Sign and publish a command; the cabinet's ack, or a made-up one when there is none."""
        if not self.bridge.mqtt.up.is_set():
            return {"ok": False, "error": "Offline", "detail": "the broker is unreachable"}
        if self.cabinet.status != "online":
            return {"ok": False, "error": "Offline", "detail": "the cabinet is offline"}
        req_id = "ocpp-" + uuid.uuid4().hex[:16]
        fut = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        try:
            self.bridge.mqtt.publish("%s/%s/cmd" % (self.bridge.prefix, self.cabinet.id),
                                     sign(command(cmd, req_id, **args), self.key))
            return await asyncio.wait_for(fut, ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            return {"ok": False, "error": "Timeout", "detail": "no ack within %.0f s" % ACK_TIMEOUT_S}
        finally:
            self.pending.pop(req_id, None)

    def ack(self, ack):
        """An ack from the cabinet (on the loop): the one we wait for, or one the cabinet could not
        tie to a request (bad signature or JSON). That may answer another sender's command, so it
        answers ours only if ours gets no ack of its own within a second (as `tukar cmd` does)."""
        rid = ack.get("req_id")
        if rid is None:
            def fallback(futures=list(self.pending.values())):
                for fut in futures:
                    if not fut.done():
                        fut.set_result(ack)
            asyncio.get_running_loop().call_later(ANONYMOUS_ACK_WAIT_S, fallback)
        elif rid in self.pending and not self.pending[rid].done():
            self.pending[rid].set_result(ack)

    @staticmethod
    def answer(ack, accepted="Accepted"):
        if ack.get("ok"):
            return accepted, None
        return "Rejected", ocpp_map.status_info(ack.get("error"), ack.get("detail"))

    async def request_swap(self, token, request_id):
        ttype = token.get("type") or ocpp_map.TOKEN_TYPE_DEFAULT
        self.bridge.queue.remember_request(self.cabinet.id, request_id, ttype)
        ack = await self.send_command("start_swap", id_token=token.get("id_token") or "",
                                      request_id=str(request_id))
        say("%s: RequestBatterySwap %d -> start_swap: %s" % (self.cabinet.id, request_id,
                                                             "ok" if ack.get("ok") else ack.get("error")))
        return self.answer(ack)

    async def change_availability(self, operational_status, evse):
        if evse and evse.get("id"):
            return "Rejected", ocpp_map.status_info(
                "UnsupportedRequest", "only the whole cabinet changes availability")
        mode = "in_service" if operational_status == "Operative" else "out_of_service"
        return self.answer(await self.send_command("set_mode", mode=mode))

    async def reset(self, kind, evse_id):
        if evse_id:
            return "Rejected", ocpp_map.status_info("UnsupportedRequest",
                                                    "a slot cannot be reset on its own")
        return self.answer(await self.send_command("reboot"))

    # The WebSocket

    def connect_args(self):
        b = self.bridge
        headers = {}
        if self.password is not None:
            cred = base64.b64encode(("%s:%s" % (self.cabinet.id, self.password)).encode()).decode()
            headers["Authorization"] = "Basic " + cred
        kw = {"subprotocols": [SUBPROTOCOL], "additional_headers": headers, "open_timeout": 10,
              "ping_interval": 20, "ping_timeout": 20, "close_timeout": 2}
        if b.csms.startswith("wss://"):
            ctx = ssl.create_default_context(cafile=b.ca) if b.ca else ssl.create_default_context()
            if b.cert:
                ctx.load_cert_chain(b.cert, b.key_pem)
            kw["ssl"] = ctx
        return kw

    async def run(self):
        from websockets.asyncio.client import connect

        url = self.bridge.csms.rstrip("/") + "/" + self.cabinet.id
        delay = BACKOFF_MIN_S
        while True:
            try:
                async with connect(url, **self.connect_args()) as ws:
                    if ws.subprotocol != SUBPROTOCOL:
                        raise ConnectionError("the CSMS did not accept subprotocol %s" % SUBPROTOCOL)
                    say("%s: connected to %s" % (self.cabinet.id, url))
                    delay = BACKOFF_MIN_S
                    await self.session(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every way a connection ends: back off and try again
                say("%s: CSMS connection: %s: %s; trying again in %.0f s"
                    % (self.cabinet.id, type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                       delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def session(self, ws):
        link = _link_class()(self, ws)
        tasks = [asyncio.ensure_future(link.start()), asyncio.ensure_future(self.send_all(link))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises what ended the connection
        finally:
            for t in tasks + list(link.tasks):
                t.cancel()
            await asyncio.gather(*tasks, *link.tasks, return_exceptions=True)

    async def boot(self, link):
        """BootNotification once per process, until the CSMS accepts it; with the cabinet's info
        (model, firmware) once it came from the broker, unless that takes too long."""
        end = time.monotonic() + BROKER_GRACE_S
        while self.cabinet.info is None and time.monotonic() < end:
            await asyncio.sleep(0.1)
        while not self.booted:
            info = self.cabinet.info
            reason = ((info or {}).get("boot") or {}).get("reason")
            r = await link.call_raw("BootNotification",
                                    ocpp_map.boot_notification(self.cabinet.id, info, reason))
            interval = int(r.get("interval") or 0)
            if r.get("status") == "Accepted":
                self.booted = True
                if not self.bridge.heartbeat_fixed and interval > 0:
                    self.heartbeat = interval
                say("%s: BootNotification accepted, heartbeat every %d s"
                    % (self.cabinet.id, self.heartbeat))
                with self.cabinet.lock:  # every connector's status after a boot (OCPP B01)
                    self.cabinet.report_statuses(force_unknown=not self.cabinet.broker_up,
                                                 again=True)
            else:
                say("%s: BootNotification %s; again in %d s" % (self.cabinet.id, r.get("status"),
                                                                max(interval, 10)))
                await asyncio.sleep(max(interval, 10))

    async def send_all(self, link):
        """The queue in order, each message until the CSMS answers; a Heartbeat when idle."""
        from ocpp.exceptions import OCPPError

        await self.boot(link)
        last = time.monotonic()
        while True:
            head = self.bridge.queue.head(self.cabinet.id)
            if head is None:
                self.wake.clear()
                if self.bridge.queue.head(self.cabinet.id) is not None:
                    continue
                left = self.heartbeat - (time.monotonic() - last)
                if left <= 0:
                    await link.call_raw("Heartbeat", {})
                    last = time.monotonic()
                    continue
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except asyncio.TimeoutError:
                    pass
                continue
            n, key, action, payload, msg_id = head
            try:
                await link.call_raw(action, payload, unique_id=msg_id)
            except OCPPError as e:  # the CSMS refused it: it will refuse it again, so drop it
                say("%s: the CSMS answered %s %s with an error, dropped: %s"
                    % (self.cabinet.id, action, key, e))
            self.bridge.queue.done(self.cabinet.id, n, key)
            last = time.monotonic()


# --- the process ---------------------------------------------------------------------------------

class Bridge:
    def __init__(self, csms, host, port, prefix, cabinets, keys, passwords, queue_path,
                 heartbeat=None, ca=None, cert=None, key_pem=None, client_id=None,
                 broker_ca=None, broker_user=None, broker_password=None):
        self.csms, self.prefix = csms, prefix
        self.ca, self.cert, self.key_pem = ca, cert, key_pem
        self.heartbeat_fixed = heartbeat is not None
        self.heartbeat = heartbeat or HEARTBEAT_DEFAULT_S
        self.queue = Queue(queue_path)
        self.loop = None
        self.stations = {}
        self.cabinets = {}
        for c in cabinets:
            self.cabinets[c] = Cabinet(c, self.queue, self._waker(c))
        digest = hashlib.sha1(("%s|%s" % (prefix, ",".join(sorted(cabinets)))).encode()).hexdigest()
        self.mqtt = Mqtt(host, port, prefix, self.cabinets,
                         client_id or "tukar-ocpp-" + digest[:12], self._on_ack,
                         tls_ca=broker_ca, user=broker_user, password=broker_password)
        self._keys, self._passwords = keys, passwords

    def _waker(self, cabinet):
        def wake():
            st = self.stations.get(cabinet)
            if st is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(st.wake.set)
        return wake

    def _on_ack(self, cabinet, ack):
        st = self.stations.get(cabinet)
        if st is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(st.ack, ack)

    async def run(self, stop):
        self.loop = asyncio.get_running_loop()
        for c, cab in self.cabinets.items():
            self.stations[c] = Station(self, cab, self._keys[c], self._passwords.get(c))
        self.mqtt.start()
        tasks = [asyncio.ensure_future(st.run()) for st in self.stations.values()]
        tasks.append(asyncio.ensure_future(self._broker_grace()))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            # a stop is prompt: WebSockets get 2 s to close cleanly, the whole 5 s
            await asyncio.wait(tasks, timeout=5)
            await asyncio.get_running_loop().run_in_executor(None, self.mqtt.stop)
            self.queue.close()

    async def _broker_grace(self):
        """A broker that is down from the start: the stations are unavailable, not unknown."""
        await asyncio.sleep(BROKER_GRACE_S)
        if not self.mqtt.up.is_set():
            say("no broker at %s:%d yet; the stations are unavailable" % (self.mqtt.host,
                                                                         self.mqtt.port))
            for cab in self.cabinets.values():
                if not self.mqtt.up.is_set():
                    cab.broker(False)


def read_secrets(path, cabinets, what):
    """A file holding one secret for every cabinet, or `CABINET SECRET` lines (# comments)."""
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) == 1 and len(lines[0].split()) == 1:
        return {c: lines[0] for c in cabinets}
    out = {}
    for ln in lines:
        parts = ln.split(None, 1)
        if len(parts) == 2:
            out[parts[0]] = parts[1].strip()
    missing = [c for c in cabinets if c not in out]
    if missing:
        raise ValueError("%s %s: no line for cabinet %s" % (what, path, ", ".join(missing)))
    return out


def add_arguments(p):
    p.add_argument("--csms", required=True, metavar="URL",
                   help="the CSMS's OCPP endpoint, ws://host:port/path or wss://...; each cabinet "
                        "connects to URL/<cabinet id>")
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--cabinet", action="append", required=True, metavar="ID",
                   help="a cabinet to bridge (repeat for more); its id is the station's identity")
    p.add_argument("--key", default=os.environ.get("TUKAR_KEY"),
                   help="the cabinets' HMAC key in hex (default $TUKAR_KEY, else the simulator's)")
    p.add_argument("--key-file", help="file with one hex key, or `CABINET HEX` lines")
    p.add_argument("--basic-auth-password-file", metavar="FILE",
                   help="HTTP basic auth (security profiles 1 and 2): one password, or "
                        "`CABINET PASSWORD` lines; the user is the cabinet id")
    p.add_argument("--ca", help="CA certificate (PEM) that signed the CSMS's certificate (wss)")
    p.add_argument("--cert", help="client certificate (PEM), security profile 3")
    p.add_argument("--key-pem", help="the client certificate's private key (PEM)")
    p.add_argument("--queue", default="tukar-ocpp-queue.sqlite",
                   help="SQLite file of the messages waiting for the CSMS (default %(default)s)")
    p.add_argument("--heartbeat", type=float,
                   help="seconds between Heartbeats (default: the CSMS's BootNotification interval)")
    p.add_argument("--user", help="broker user name")
    p.add_argument("--password", default=os.environ.get("TUKAR_BROKER_PASSWORD"),
                   help="broker password (default $TUKAR_BROKER_PASSWORD)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate of the broker: MQTT over TLS")
    p.add_argument("--client-id", help="MQTT client id (default: derived from prefix and cabinets; "
                                       "keep it stable, the broker keeps its session)")


def run(args):
    from tukar_tools.cmdline import SIM_KEY_HEX

    cabinets = list(dict.fromkeys(args.cabinet))
    try:
        if not args.csms.startswith(("ws://", "wss://")):
            raise ValueError("--csms must be a ws:// or wss:// URL")
        if bool(args.cert) != bool(args.key_pem):
            raise ValueError("--cert and --key-pem go together")
        if args.cert and not args.csms.startswith("wss://"):
            raise ValueError("a client certificate needs a wss:// URL")
        host, port = mqttc.parse_broker(args.broker)
        if args.key_file:
            keys = {c: parse_key(k) for c, k in read_secrets(args.key_file, cabinets,
                                                              "key file").items()}
        else:
            if not args.key:
                say("no --key or --key-file given, using the simulator's key")
            k = parse_key(args.key or SIM_KEY_HEX)
            keys = {c: k for c in cabinets}
        passwords = {}
        if args.basic_auth_password_file:
            passwords = read_secrets(args.basic_auth_password_file, cabinets, "password file")
    except (ValueError, KeyFormatError, OSError) as e:
        say(str(e))
        return EXIT_USAGE
    if passwords and args.csms.startswith("ws://"):
        say("basic auth over plain ws:// (security profile 1): the password crosses the network "
            "in clear")
    bridge = Bridge(args.csms, host, port, args.prefix, cabinets, keys, passwords, args.queue,
                    heartbeat=args.heartbeat, ca=args.ca, cert=args.cert, key_pem=args.key_pem,
                    client_id=args.client_id, broker_ca=args.tls_ca, broker_user=args.user,
                    broker_password=args.password)
    say("bridging %s to %s (queue %s)" % (", ".join(cabinets), args.csms, args.queue))

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run(stop)

    asyncio.run(main())
    say("stopped")
    return EXIT_OK
