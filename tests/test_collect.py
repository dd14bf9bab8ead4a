# `tukar collect` and the fleet database, against a real Mosquitto (MQTT 5, $share) and a real
# PostgreSQL server the tests start (tests/databases.py), with fake cabinets publishing payloads
# shaped as docs/mqtt.md says. Each test has its own topic prefix, client ids and database.
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from brokers import Broker, MOSQUITTO, wait_until
from databases import Postgres, db_url, postgres_server, postgres_url  # noqa: F401 (fixtures)
from tukar_tools import collect, fleetdb

AGREED_COLUMNS = {  # the fleet database as agreed with `tukar report` (docs/collect.md)
    "schema_migrations": ["version", "applied_at"],
    "cabinets": ["cabinet", "info", "online", "first_seen", "last_seen"],
    "events": ["cabinet", "id", "type", "ts", "up_ms", "received_at", "slot", "serial", "session",
               "body"],
    "slot_states": ["cabinet", "slot", "received_at", "state", "dispensable", "serial", "soc", "soh",
                    "body"],
    "cabinet_states": ["cabinet", "received_at", "mode", "ready", "empty", "charging", "faulted",
                       "body"],
    "telemetry": ["cabinet", "received_at", "ts", "ready", "empty", "energy_wh_total", "body"],
    "acks": ["cabinet", "received_at", "req_id", "ok", "error", "body"],
}


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run installs it)",
                    pytrace=False)
    b = Broker("mosquitto", tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def prefix():
    return "t" + uuid.uuid4().hex[:10]


class Cabinet:
    """A fake cabinet: publishes what a real one does, at the contract's QoS and retain flags."""

    def __init__(self, port, prefix, cid, boot=1):
        import paho.mqtt.client as paho

        self.prefix, self.id, self.boot, self.n = prefix, cid, boot, 0
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fake-" + uuid.uuid4().hex)
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()

    def publish(self, suffix, payload, qos=1, retain=False):
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.mqtt.publish("%s/%s/%s" % (self.prefix, self.id, suffix), payload, qos=qos,
                                 retain=retain)
        info.wait_for_publish(5)
        return payload

    def event(self, etype, **fields):
        """A new event with the next id; returns its payload (publish it again to retry it)."""
        self.n += 1
        body = {"id": "%s-%d-%d" % (self.id, self.boot, self.n), "type": etype, "ts": 1764300000 + self.n,
                "up_ms": 1000 * self.n, "seq": self.n % 256}
        body.update(fields)
        return self.publish("event", body)

    def close(self):
        self.mqtt.loop_stop()
        self.mqtt.disconnect()


BATTERY = {"serial": "B-0042", "profile": "ref48v", "soc": 63.5, "soh": 96, "temp_c": 29.5,
           "voltage_v": 51.2, "current_a": 8.1, "cycles": 211, "faults": []}


def slot_state(n, state="charging", battery=BATTERY, dispensable=False, seq=1):
    return {"slot": n, "state": state, "door": "closed", "lock": "locked", "battery": battery,
            "charger": {"on": state == "charging", "current_a": 8.0}, "dispensable": dispensable,
            "faults": [], "reason": None, "seq": seq}


CABINET_STATE = {"mode": "in_service", "ready": 5, "empty": 6, "charging": 3, "faulted": 0,
                 "session": None, "temp_c": 31.2, "alarms": [], "seq": 17}


@contextlib.contextmanager
def collecting(db, port, prefix, client_id=None, **kw):
    """A collector on a thread for the block; its exit status must be 0 (a clean stop)."""
    out, err = io.StringIO(), io.StringIO()
    c = collect.Collector(db, "127.0.0.1", port, prefix=prefix,
                          client_id=client_id or "collect-" + uuid.uuid4().hex[:8], out=out,
                          err=err, **kw)
    status = []
    t = threading.Thread(target=lambda: status.append(c.run()), daemon=True)
    t.start()
    try:
        assert c.ready.wait(15), "collector not subscribed: " + out.getvalue() + err.getvalue()
        yield c
    finally:
        c.stop()
        t.join(20)
    c.log = out.getvalue() + err.getvalue()
    assert status == [0], c.log


def rows(url, sql, params=()):
    with fleetdb.Database(url) as db:
        return db.query(sql, params)


def count(url, table):
    return rows(url, "SELECT COUNT(*) FROM " + table)[0][0]


def wait_count(url, table, n, timeout=15):
    wait_until(lambda: count(url, table) >= n, timeout, "%d rows in %s (have %d)"
               % (n, table, count(url, table)))
    time.sleep(0.2)  # anything more would be a duplicate: give it the time to show
    assert count(url, table) == n


# --- every kind, both backends -----------------------------------------------------------------

def test_every_kind_is_stored_with_the_columns_of_the_schema(mosquitto, prefix, db_url):
    cab = Cabinet(mosquitto.port, prefix, "cab-1")
    info = cab.publish("info", {"id": "cab-1", "fw": "1.2.0", "board": "tukar-12-wroom", "slots": 12,
                                "profiles": ["ref48v"], "bdseq": 3, "boot": {"reason": "power_on",
                                "count": 7}, "time_synced": True}, retain=True)
    cab.publish("status", "online", retain=True)
    cab.publish("state", CABINET_STATE, retain=True)
    cab.publish("slot/3/state", slot_state(3), retain=True)  # retained before the collector came
    with collecting(db_url, mosquitto.port, prefix) as c:
        cab.publish("slot/4/state", slot_state(4, "ready", dispensable=True), retain=True)
        done = cab.event("SwapCompleted", session="s-41", request_id="r-9", id_token="rider-77",
                         slot_in=7, slot_out=3, battery_in="B-0007", battery_out="B-0042",
                         duration_ms=41000, energy_wh=812.5)
        cab.event("BatteryIn", session="s-41", slot=7, battery=dict(BATTERY, serial="B-0007"))
        cab.event("ChargeStopped", slot=4, serial="B-0099", reason="full", energy_wh=95.0)
        cab.event("Fault", slot=None, code="smoke", severity="critical", ts=None)
        cab.publish("telemetry", {"slots": [3, 4], "soc": [63.5, 100], "temp_c": [29.5, 25],
                                  "voltage_v": [51.2, 54.6], "current_a": [8.1, 0],
                                  "cabinet_temp_c": 31.2, "heap_free": 51234, "uptime_s": 3600,
                                  "rssi": -61, "tick_lag_ms": 2, "seq": 9, "ts": 1764300100,
                                  "ready": 5, "empty": 6, "energy_wh": [120.5, 98.0],
                                  "energy_wh_total": 218.5}, qos=0)
        cab.publish("ack", {"req_id": "r-9", "ok": True, "error": None, "detail": "",
                            "session": "s-41", "slot": 7})
        cab.publish("ack", {"req_id": "r-10", "ok": False, "error": "busy", "detail": "session open"})
        wait_count(db_url, "acks", 2)
        wait_count(db_url, "events", 4)
        wait_until(lambda: count(db_url, "telemetry") == 1, 10, "telemetry row")
    assert c.stored == {"event": 4, "slot_state": 2, "state": 1, "telemetry": 1, "ack": 2,
                        "info": 1, "status": 1}
    ev = {r[0]: r[1:] for r in rows(db_url, "SELECT type, id, ts, up_ms, slot, serial, session, body"
                                            " FROM events WHERE cabinet = 'cab-1'")}
    assert ev["SwapCompleted"][:6] == ("cab-1-1-1", 1764300001, 1000, 3, None, "s-41")  # slot_out
    assert json.loads(ev["SwapCompleted"][6]) == json.loads(done)  # the body as received
    assert ev["BatteryIn"][3:5] == (7, "B-0007")  # serial from battery.serial
    assert ev["ChargeStopped"][3:5] == (4, "B-0099")
    assert ev["Fault"][1] is None and ev["Fault"][3] is None  # clock not synced; the cabinet's fault
    slots = rows(db_url, "SELECT slot, state, dispensable, serial, soc, soh FROM slot_states"
                         " ORDER BY slot")
    assert slots == [(3, "charging", 0, "B-0042", 63.5, 96.0), (4, "ready", 1, "B-0042", 63.5, 96.0)]
    assert rows(db_url, "SELECT mode, ready, empty, charging, faulted FROM cabinet_states") == [
        ("in_service", 5, 6, 3, 0)]
    assert rows(db_url, "SELECT ts, ready, empty, energy_wh_total FROM telemetry") == [
        (1764300100, 5, 6, 218.5)]
    assert sorted(rows(db_url, "SELECT req_id, ok, error FROM acks")) == [
        ("r-10", 0, "busy"), ("r-9", 1, None)]
    (cabinet, info_text, online, first, last), = rows(db_url, "SELECT * FROM cabinets")
    assert (cabinet, info_text, online) == ("cab-1", info, 1) and first <= last
    got = rows(db_url, "SELECT received_at FROM events")
    assert all(abs(t - time.time()) < 60 for (t,) in got)  # the collector's clock, in seconds
    cab.close()


def test_the_tables_and_columns_are_exactly_the_agreed_schema(db_url):
    with fleetdb.connect(db_url) as db:
        for table, columns in AGREED_COLUMNS.items():
            cur = db.execute("SELECT * FROM %s WHERE 1 = 0" % table)
            assert [d[0] for d in cur.description] == columns, table
        assert db.version() == fleetdb.SCHEMA_VERSION == 1


# --- exactly once --------------------------------------------------------------------------------

def test_a_duplicate_delivery_and_a_collector_restart_store_each_event_once(mosquitto, prefix,
                                                                           db_url):
    cab = Cabinet(mosquitto.port, prefix, "cab-2")
    cab.publish("slot/1/state", slot_state(1), retain=True)
    cid = "collect-" + uuid.uuid4().hex[:8]
    with collecting(db_url, mosquitto.port, prefix, client_id=cid) as c:
        sent = [cab.event("BatteryOut", slot=1, battery=BATTERY) for _ in range(5)]
        cab.publish("event", sent[2])  # the cabinet's retry after a lost PUBACK: same id
        wait_count(db_url, "events", 5)
        wait_until(lambda: c.counts["duplicate"] == 1, 5, "the duplicate counted")
    # A new session (another client id) gets the retained slot state again: not a new row.
    with collecting(db_url, mosquitto.port, prefix) as c2:
        for body in sent:  # a cabinet replaying its outbox after a restart of its own
            cab.publish("event", body)
        cab.publish("slot/1/state", slot_state(1, seq=2), retain=True)  # a rebirth: only seq moved
        wait_until(lambda: c2.counts["duplicate"] == 5, 10, "five duplicates")
        wait_until(lambda: c2.counts["unchanged"] == 2, 10, "the retained and the rebirth state")
    assert count(db_url, "events") == 5
    assert rows(db_url, "SELECT COUNT(DISTINCT id) FROM events")[0][0] == 5
    assert count(db_url, "slot_states") == 1
    cab.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_published_while_the_collector_is_down_are_stored_when_it_returns(
        mosquitto, prefix, tmp_path, protocol):
    url = str(tmp_path / "fleet.sqlite")
    cab = Cabinet(mosquitto.port, prefix, "cab-3")
    cid = "collect-" + uuid.uuid4().hex[:8]
    with collecting(url, mosquitto.port, prefix, client_id=cid, protocol=protocol):
        cab.event("Boot", reason="power_on", recovered=None)
        wait_count(url, "events", 1)
    for _ in range(30):  # the collector is away: its persistent session keeps these
        cab.event("ChargeStarted", slot=2, serial="B-0100")
    assert count(url, "events") == 1
    with collecting(url, mosquitto.port, prefix, client_id=cid, protocol=protocol) as c:
        wait_count(url, "events", 31)
    assert "session resumed" in c.log
    assert c.counts["duplicate"] == 0  # the first one acknowledged all it stored before leaving
    cab.close()


def test_two_collectors_on_one_shared_subscription_store_every_event_once(mosquitto, prefix,
                                                                          postgres_url):
    cabs = [Cabinet(mosquitto.port, prefix, "cab-%d" % i) for i in range(4)]
    with collecting(postgres_url, mosquitto.port, prefix, share="fleet", batch=20) as a, \
            collecting(postgres_url, mosquitto.port, prefix, share="fleet", batch=20) as b:
        for i in range(200):
            cabs[i % 4].event("ChargeStopped", slot=1 + i % 12, serial="B-%04d" % i,
                              reason="full", energy_wh=10.0)
        wait_count(postgres_url, "events", 200, timeout=30)
    assert a.stored["event"] > 0 and b.stored["event"] > 0, (a.stored, b.stored)
    assert a.stored["event"] + b.stored["event"] == 200
    assert rows(postgres_url, "SELECT COUNT(DISTINCT cabinet || '/' || id) FROM events")[0][0] == 200
    assert "shared group fleet" in a.log
    for c in cabs:
        c.close()


def test_a_collector_killed_mid_stream_loses_no_event_and_stores_none_twice(mosquitto, prefix,
                                                                           tmp_path):
    url = "sqlite:///" + str(tmp_path / "fleet.sqlite")
    args = [sys.executable, "-m", "tukar_tools.cli", "collect", "--broker",
            "127.0.0.1:%d" % mosquitto.port, "--prefix", prefix, "--db", url,
            "--client-id", "collect-" + uuid.uuid4().hex[:8], "--batch", "5"]

    def start():
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:  # ready once subscribed
            if "subscribed to" in line:
                return p
        raise AssertionError("collector did not subscribe: " + p.communicate()[0])

    cab = Cabinet(mosquitto.port, prefix, "cab-4")
    first = start()
    feeder = threading.Thread(target=lambda: [cab.event("ChargeStarted", slot=1, serial="B-1")
                                              for _ in range(150)])
    feeder.start()
    wait_until(lambda: os.path.exists(tmp_path / "fleet.sqlite") and count(url, "events") >= 20, 15,
               "the first rows")
    first.send_signal(signal.SIGKILL)  # mid-stream: some batches stored, some not acknowledged
    first.communicate()
    feeder.join(30)
    second = start()
    try:
        wait_count(url, "events", 150, timeout=20)
        assert rows(url, "SELECT COUNT(DISTINCT id) FROM events")[0][0] == 150
    finally:
        second.send_signal(signal.SIGTERM)  # a clean stop: status 0, the counts said
        out = second.communicate(timeout=20)[0]
    assert second.returncode == 0, out
    assert "stopped; stored event" in out
    cab.close()


# --- contract checks ----------------------------------------------------------------------------

def test_malformed_payloads_are_counted_and_the_collector_goes_on(mosquitto, prefix, tmp_path):
    url = str(tmp_path / "fleet.sqlite")
    cab = Cabinet(mosquitto.port, prefix, "cab-5")
    with collecting(url, mosquitto.port, prefix) as c:
        cab.publish("event", b"not json")
        cab.publish("event", b"\xff\xfe\x00")  # not UTF-8
        cab.publish("event", "[1, 2]")  # JSON, not an object
        cab.publish("event", {"type": "Boot", "ts": None, "up_ms": 1})  # no id: cannot de-duplicate
        cab.publish("event", {"id": "x\u0000y", "type": "Boot"})  # NUL: PostgreSQL refuses it
        cab.publish("slot/2/state", {"slot": 2, "dispensable": False})  # no state
        cab.publish("slot/2/state", dict(slot_state(3)))  # slot 3's state on slot 2's topic
        cab.publish("state", dict(CABINET_STATE, ready="five"))
        cab.publish("ack", {"req_id": "r-1"})  # no ok
        cab.publish("status", "maybe")
        cab.publish("slot/0/state", slot_state(1))  # off the contract: ignored, not malformed
        cab.event("Boot", reason="power_on", recovered=None)
        wait_count(url, "events", 1)
        wait_until(lambda: c.counts["malformed"] == 10 and c.counts["ignored"] == 1, 10,
                   "10 malformed, 1 ignored")
    assert "malformed message on %s/cab-5/event: not JSON" % prefix in c.log
    assert count(url, "slot_states") == count(url, "cabinet_states") == count(url, "acks") == 0
    cab.close()


def test_topics_outside_the_contract_are_not_stored():
    assert collect.classify("tukar/cab-1/slot/12/state", "tukar") == ("cab-1", "slot_state", 12)
    assert collect.classify("tukar/cab-1/event", "tukar") == ("cab-1", "event", None)
    for topic in ("tukar/cab-1/slot/0/state", "tukar/cab-1/slot/03/state", "tukar/Cab-1/event",
                  "tukar/cab-1/cmd", "tukar/cab-1/sim/world", "other/cab-1/event",
                  "tukar/cab-1/event/x", "tukar/" + "c" * 33 + "/event"):
        assert collect.classify(topic, "tukar") is None, topic
    assert collect.classify("tukar/cab-2/event", "tukar", ("cab-1",)) is None  # --cabinet cab-1
    assert collect.filters("tukar", ["cab-1"])[1] == "tukar/cab-1/slot/+/state"


def test_the_columns_are_copied_from_the_payload_as_the_schema_says():
    def ev(**body):
        return fleetdb.parse("c", "event", json.dumps(dict({"id": "c-1-1", "up_ms": 5}, **body)),
                             1.5).values

    # slot, else slot_out of a SwapCompleted, else null; serial, else battery.serial
    assert ev(type="SwapCompleted", slot_in=2, slot_out=5)[6] == 5
    assert ev(type="SwapAborted", slot_out=5)[6] is None
    assert ev(type="BatteryRetired", slot=None, serial="B-9", battery=None, reason="soh")[6:8] == (
        None, "B-9")
    assert ev(type="BatteryIn", slot=3, battery={"serial": "B-3"})[6:8] == (3, "B-3")
    assert ev(type="Boot", ts="yesterday")[3] is None  # a wrongly typed field: null, body kept
    assert ev(type="Boot", ts=2 ** 70)[3] is None  # too large for BIGINT
    st = fleetdb.parse("c", "slot_state", json.dumps(slot_state(2, "empty", battery=None)), 1.0, 2)
    assert st.values[1:8] == (2, 1.0, "empty", 0, None, None, None)
    assert fleetdb.parse("c", "status", b"offline\n", 1.0).online == 0
    with pytest.raises(fleetdb.Malformed):
        fleetdb.parse("c", "state", json.dumps(dict(CABINET_STATE, ready=True)), 1.0)


# --- migrations ---------------------------------------------------------------------------------

def test_a_fresh_database_is_migrated_and_opening_it_again_changes_nothing(db_url):
    with fleetdb.connect(db_url) as db:
        (version, applied_at), = db.query("SELECT version, applied_at FROM schema_migrations")
        assert version == 1 and abs(applied_at - time.time()) < 60
        db.ingest("cab-1", "event", b'{"id": "e1", "type": "Boot", "up_ms": 1}', 1.0)
    with fleetdb.connect(db_url) as db:
        assert fleetdb.apply_migrations(db, fleetdb.MIGRATIONS) == []
        assert db.query("SELECT version, applied_at FROM schema_migrations") == [(1, applied_at)]
        assert db.query("SELECT id FROM events") == [("e1",)]


def test_a_later_migration_is_applied_in_one_transaction_or_not_at_all(db_url):
    fleetdb.connect(db_url).close()
    broken = fleetdb.MIGRATIONS + [(2, ("CREATE TABLE packs (serial TEXT PRIMARY KEY)",
                                        "CREATE INDEX nowhere ON no_such_table (x)"))]
    with pytest.raises(fleetdb.FleetDBError, match="none of it was applied"):
        fleetdb.connect(db_url, migrations=broken)
    with fleetdb.Database(db_url) as db:
        assert db.version() == 1
        with pytest.raises(Exception):
            db.query("SELECT * FROM packs")
    good = fleetdb.MIGRATIONS + [(2, ("CREATE TABLE packs (serial TEXT PRIMARY KEY)",))]
    with fleetdb.connect(db_url, migrations=good) as db:
        assert db.version() == 2 and db.query("SELECT * FROM packs") == []


def test_a_database_newer_than_the_code_is_refused(db_url, capsys):
    with fleetdb.connect(db_url) as db:
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (2, 0)")
    with pytest.raises(fleetdb.SchemaTooNew, match="schema version 2; this tukar knows versions up"
                                                    " to 1: upgrade tukar"):
        fleetdb.connect(db_url)
    c = collect.Collector(db_url, "127.0.0.1", 1, out=sys.stdout, err=sys.stderr)
    assert c.run() == collect.EXIT_FAILED
    assert "upgrade tukar" in capsys.readouterr().err


def test_a_reader_that_does_not_migrate_is_told_to_run_the_collector(tmp_path):
    with pytest.raises(fleetdb.SchemaTooOld, match="run `tukar collect`"):
        fleetdb.connect(str(tmp_path / "empty.sqlite"), migrate=False)


# --- failures said plainly ---------------------------------------------------------------------

def test_an_unreachable_database_is_a_clear_error_and_a_failed_exit(mosquitto, free_tcp_port):
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "collect", "--broker",
                          "127.0.0.1:%d" % mosquitto.port, "--db",
                          "postgresql://tukar:secret@127.0.0.1:%d/fleet" % free_tcp_port],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot open the database postgresql://tukar:***@127.0.0.1:%d/fleet" % free_tcp_port \
        in out.stderr
    assert "secret" not in out.stderr + out.stdout


def test_an_unreachable_broker_is_retried_with_backoff_then_given_up(tmp_path, free_tcp_port):
    out = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "collect", "--broker",
                          "127.0.0.1:%d" % free_tcp_port, "--db", str(tmp_path / "f.sqlite"),
                          "--give-up", "2.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cannot reach the broker 127.0.0.1:%d" % free_tcp_port in out.stderr
    assert "trying again in 1 s" in out.stderr and "gave up after" in out.stderr


def test_a_database_outage_holds_the_messages_until_it_is_back(mosquitto, prefix):
    pg = Postgres().start()
    try:
        url = pg.create_database("fleet")
        cab = Cabinet(mosquitto.port, prefix, "cab-6")
        with collecting(url, mosquitto.port, prefix) as c:
            cab.event("Boot", reason="power_on", recovered=None)
            wait_count(url, "events", 1)
            pg.stop(keep=True)
            for _ in range(10):
                cab.event("DoorForced", slot=4)
            wait_until(lambda: "database error" in c.err.getvalue(), 10, "the outage reported")
            pg.start()
            wait_count(url, "events", 11, timeout=30)
        assert "the messages wait unacknowledged" in c.log
        cab.close()
    finally:
        pg.stop()


@pytest.fixture
def free_tcp_port():
    from brokers import free_port
    return free_port()


def test_a_broker_that_refuses_the_credentials_is_a_clear_error(tmp_path, prefix):
    pw = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "collector", "s3cret"], check=True)
    secured = Broker("mosquitto", tmp_path, extra="allow_anonymous false\npassword_file %s\n" % pw)
    secured.start()
    try:
        url = str(tmp_path / "fleet.sqlite")
        out = io.StringIO()
        c = collect.Collector(url, "127.0.0.1", secured.port, prefix=prefix, user="collector",
                              password="wrong", out=out, err=out)
        assert c.run() == collect.EXIT_FAILED
        assert "the broker 127.0.0.1:%d refused the connection" % secured.port in out.getvalue()
        with collecting(url, secured.port, prefix, user="collector", password="s3cret"):
            pass  # the right password: connected and subscribed
    finally:
        secured.stop()
