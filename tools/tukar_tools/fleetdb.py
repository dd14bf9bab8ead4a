"""The fleet database: what `tukar collect` stores of the fleet's MQTT messages and `tukar report`
reads with plain SQL. The schema (docs/collect.md) is a list of versioned migrations; one small API
covers both backends, SQLite (a file, the default) and PostgreSQL (`postgresql://...`).

    db = fleetdb.connect("fleet.sqlite")        # or "postgresql://user@host/fleet"
    db.ingest("cab-1", "event", payload, time.time())
    rows = db.query("SELECT type, COUNT(*) FROM events GROUP BY type")

Events are keyed by (cabinet, id): a duplicate delivery is ignored, so at-least-once delivery is
stored exactly once."""
import contextlib
import json
import math
import re
import sqlite3
import time

# The schema agreed with `tukar report` (docs/collect.md), kept to SQL that SQLite and PostgreSQL
# both accept.
SCHEMA_MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                           " applied_at DOUBLE PRECISION NOT NULL)")

MIGRATIONS = [
    (1, (
        "CREATE TABLE cabinets (cabinet TEXT PRIMARY KEY, info TEXT, online INTEGER,"
        " first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE events (cabinet TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, ts BIGINT,"
        " up_ms BIGINT, received_at DOUBLE PRECISION NOT NULL, slot INTEGER, serial TEXT,"
        " session TEXT, body TEXT NOT NULL, PRIMARY KEY (cabinet, id))",
        "CREATE INDEX events_type_ts ON events (type, ts)",
        "CREATE TABLE slot_states (cabinet TEXT NOT NULL, slot INTEGER NOT NULL,"
        " received_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, dispensable INTEGER NOT NULL,"
        " serial TEXT, soc DOUBLE PRECISION, soh DOUBLE PRECISION, body TEXT NOT NULL)",
        "CREATE TABLE cabinet_states (cabinet TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,"
        " mode TEXT NOT NULL, ready INTEGER NOT NULL, empty INTEGER NOT NULL,"
        " charging INTEGER NOT NULL, faulted INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE TABLE telemetry (cabinet TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,"
        " ts BIGINT, ready INTEGER, empty INTEGER, energy_wh_total DOUBLE PRECISION,"
        " body TEXT NOT NULL)",
        "CREATE TABLE acks (cabinet TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,"
        " req_id TEXT, ok INTEGER NOT NULL, error TEXT, body TEXT NOT NULL)",
        # Indexes beyond the agreed one: the collector's look-ups of a slot's or a cabinet's latest
        # state and of an ack already stored; the reports' per-cabinet and per-pack time ranges.
        "CREATE INDEX slot_states_cabinet_slot ON slot_states (cabinet, slot, received_at)",
        "CREATE INDEX slot_states_serial ON slot_states (serial, received_at)",
        "CREATE INDEX cabinet_states_cabinet ON cabinet_states (cabinet, received_at)",
        "CREATE INDEX telemetry_cabinet ON telemetry (cabinet, received_at)",
        "CREATE INDEX acks_cabinet_req ON acks (cabinet, req_id)",
    )),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

KINDS = ("event", "slot_state", "state", "telemetry", "ack", "info", "status")
MAX_BODY = 1 << 20  # bytes: the largest contract payload is a few KB
_PG_LOCK = 0x74756B6172  # "tukar": serialises migrations of collectors started together
_INT32 = 1 << 31
_INT64 = 1 << 63


class FleetDBError(Exception):
    """A database that cannot be used, said so that an operator knows what to do."""


class Unavailable(FleetDBError):
    """The database cannot be opened or reached."""


class SchemaTooNew(FleetDBError):
    """The database was migrated by a newer tukar than this one."""


class SchemaTooOld(FleetDBError):
    """The database lacks migrations and the caller asked not to apply them."""


class Malformed(ValueError):
    """A payload that breaks the MQTT contract: counted and logged by the collector, never stored."""


# --- where the database is ---------------------------------------------------------------------

def parse_url(url):
    """('sqlite', path) or ('postgresql', url). A bare path is a SQLite file; `sqlite:///rel.db`
    and `sqlite:////abs/path.db` follow the usual SQLAlchemy spelling."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if not rest.startswith("///") or len(rest) == 3:
            raise ValueError("database %r: write sqlite:///relative/path or sqlite:////absolute/path"
                             % url)
        return "sqlite", rest[3:]
    if "://" in url:
        raise ValueError("database %r: give a file path, sqlite:///path or postgresql://..." % url)
    if not url:
        raise ValueError("database: an empty path")
    return "sqlite", url


def display_url(url):
    """The URL with any password hidden, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


# --- the database --------------------------------------------------------------------------------

class Database:
    """One connection to the fleet database. SQL uses `?` placeholders on both backends.
    Not shared between threads: each thread (each collector) opens its own."""

    def __init__(self, url):
        self.url = url
        self.kind, self._target = parse_url(url)
        self.conn = None
        self._depth = 0
        self._open()

    def _open(self):
        try:
            if self.kind == "sqlite":
                # Autocommit mode: transactions are opened explicitly (transaction() below), so a
                # migration's DDL and a batch of rows commit or roll back as one.
                conn = sqlite3.connect(self._target, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")  # a report reading never blocks the writer
                conn.execute("PRAGMA synchronous=FULL")  # an acknowledged row survives a power cut
            else:
                import psycopg

                conn = psycopg.connect(self._target, autocommit=True, connect_timeout=10)
        except Exception as e:
            raise Unavailable("cannot open the database %s: %s"
                              % (display_url(self.url), _one_line(e))) from None
        self.conn = conn

    def reopen(self):
        """A fresh connection after the server went away (PostgreSQL restarted, network cut)."""
        self.close()
        self._depth = 0
        self._open()

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def execute(self, sql, params=()):
        if self.kind == "postgresql":
            sql = sql.replace("?", "%s")
        return self.conn.execute(sql, params)

    def query(self, sql, params=()):
        """Every row of a SELECT, as tuples."""
        return self.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self):
        """Everything inside commits together or not at all; a nested block joins the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            if self.kind == "sqlite":
                self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not mid-batch
                try:
                    yield self
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:  # a failed COMMIT (busy, I/O) leaves it open
                        try:
                            self.conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
            else:
                with self.conn.transaction():
                    yield self
        finally:
            self._depth = 0

    def transient(self, exc):
        """True when `exc` may pass by itself (server down or restarting, a lock, a deadlock): the
        batch is tried again later. False for an error that retrying cannot mend."""
        if self.kind == "sqlite":
            return isinstance(exc, sqlite3.OperationalError)
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def version(self):
        """The highest migration applied (0 for an empty database)."""
        if not self._has_table("schema_migrations"):
            return 0
        (v,), = self.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(v)

    def _has_table(self, name):
        if self.kind == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?"
        return bool(self.query(sql, (name,)))

    # --- the collector's writes ---

    def ingest(self, cabinet, kind, payload, received_at, slot=None):
        """Parse one message and store it in its own transaction (or the caller's, when inside
        transaction()). Returns 'stored', 'duplicate' (an event or ack already there) or 'unchanged'
        (a state equal to the last one stored); raises Malformed for a payload off the contract."""
        return self.store([parse(cabinet, kind, payload, received_at, slot)])[0]

    def store(self, records):
        """Store parsed records (parse() below) in one transaction; one outcome per record."""
        if not records:
            return []
        outcomes = []
        seen = {}
        with self.transaction():
            for r in records:
                outcomes.append(self._store_one(r))
                c = seen.get(r.cabinet)
                if c is None:
                    c = seen[r.cabinet] = [r.received_at, r.received_at, None, None]
                c[0] = min(c[0], r.received_at)
                c[1] = max(c[1], r.received_at)
                if r.info is not None:
                    c[2] = r.info
                if r.online is not None:
                    c[3] = r.online
            # Sorted: two collectors updating the same cabinets lock their rows in the same order.
            for cab in sorted(seen):
                first, last, info, online = seen[cab]
                self.execute(_UPSERT_CABINET, (cab, info, online, first, last))
        return outcomes

    def _store_one(self, r):
        if r.table == "events":
            cur = self.execute(_INSERT["events"] + " ON CONFLICT (cabinet, id) DO NOTHING", r.values)
            return "stored" if cur.rowcount == 1 else "duplicate"
        if r.table == "slot_states":
            last = self.query("SELECT body FROM slot_states WHERE cabinet = ? AND slot = ?"
                              " ORDER BY received_at DESC LIMIT 1", (r.cabinet, r.values[1]))
            if last and same_state(last[0][0], r.data):
                return "unchanged"
        elif r.table == "cabinet_states":
            last = self.query("SELECT body FROM cabinet_states WHERE cabinet = ?"
                              " ORDER BY received_at DESC LIMIT 1", (r.cabinet,))
            if last and same_state(last[0][0], r.data):
                return "unchanged"
        elif r.table == "acks" and r.values[2] is not None:
            # the same ack twice is one publication delivered twice (a repeated command's ack is
            # marked "duplicate": true by the cabinet, so it differs)
            if self.query("SELECT 1 FROM acks WHERE cabinet = ? AND req_id = ? AND body = ?",
                          (r.cabinet, r.values[2], r.values[-1])):
                return "duplicate"
        if r.table is not None:
            self.execute(_INSERT[r.table], r.values)
        return "stored"


_COLUMNS = {
    "events": ("cabinet", "id", "type", "ts", "up_ms", "received_at", "slot", "serial", "session",
               "body"),
    "slot_states": ("cabinet", "slot", "received_at", "state", "dispensable", "serial", "soc", "soh",
                    "body"),
    "cabinet_states": ("cabinet", "received_at", "mode", "ready", "empty", "charging", "faulted",
                       "body"),
    "telemetry": ("cabinet", "received_at", "ts", "ready", "empty", "energy_wh_total", "body"),
    "acks": ("cabinet", "received_at", "req_id", "ok", "error", "body"),
}
_INSERT = {t: "INSERT INTO %s (%s) VALUES (%s)" % (t, ", ".join(c), ", ".join("?" * len(c)))
           for t, c in _COLUMNS.items()}
# first_seen only goes back, last_seen only forward; info and online keep their value when a
# message does not carry them.
_UPSERT_CABINET = (
    "INSERT INTO cabinets (cabinet, info, online, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (cabinet) DO UPDATE SET"
    " info = COALESCE(excluded.info, cabinets.info),"
    " online = COALESCE(excluded.online, cabinets.online),"
    " first_seen = CASE WHEN excluded.first_seen < cabinets.first_seen"
    " THEN excluded.first_seen ELSE cabinets.first_seen END,"
    " last_seen = CASE WHEN excluded.last_seen > cabinets.last_seen"
    " THEN excluded.last_seen ELSE cabinets.last_seen END")


def same_state(stored_body, data):
    """A state equal to the one stored but for its `seq` (a reconnect's or a rebirth's repeat, or
    the same retained message delivered again) adds nothing to the history."""
    try:
        old = json.loads(stored_body)
    except ValueError:
        return False
    if not isinstance(old, dict):
        return False
    old.pop("seq", None)
    new = dict(data)
    new.pop("seq", None)
    return old == new


# --- opening and migrating ----------------------------------------------------------------------

def connect(url, migrate=True, migrations=None):
    """Open the fleet database at `url` and bring its schema up to date, all missing migrations in
    one transaction. migrate=False (a reader) applies nothing and raises SchemaTooOld instead.
    Raises Unavailable, SchemaTooNew (a newer tukar migrated it) or SchemaTooOld."""
    db = Database(url)
    try:
        apply_migrations(db, MIGRATIONS if migrations is None else migrations, migrate)
    except FleetDBError:
        db.close()
        raise
    except Exception as e:
        db.close()
        raise FleetDBError("migrating the database %s failed, none of it was applied: %s"
                           % (display_url(url), _one_line(e))) from None
    return db


def apply_migrations(db, migrations, migrate=True):
    """Apply the migrations the database lacks; returns the versions applied (empty: a no-op)."""
    migrations = sorted(migrations)
    known = {v for v, _ in migrations}
    latest = migrations[-1][0] if migrations else 0
    if not migrate:
        applied = _applied(db) if db._has_table("schema_migrations") else set()
        _refuse_newer(db, applied - known, latest)
        missing = [v for v in sorted(known - applied)]
        if missing:
            raise SchemaTooOld("the database %s lacks schema version(s) %s: run `tukar collect` on"
                               " it once to migrate it" % (display_url(db.url),
                                                          ", ".join(map(str, missing))))
        return []
    done = []
    with db.transaction():
        if db.kind == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(%d)" % _PG_LOCK)
        db.execute(SCHEMA_MIGRATIONS_TABLE)
        applied = _applied(db)
        _refuse_newer(db, applied - known, latest)
        for version, statements in migrations:
            if version in applied:
                continue
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                       (version, time.time()))
            done.append(version)
    return done


def _applied(db):
    return {int(v) for (v,) in db.query("SELECT version FROM schema_migrations")}


def _refuse_newer(db, unknown, latest):
    if unknown:
        raise SchemaTooNew("the database %s is at schema version %d; this tukar knows versions up to"
                           " %d: upgrade tukar (the database is left as it is)"
                           % (display_url(db.url), max(unknown), latest))


# --- parsing one message into its row -----------------------------------------------------------

class Record:
    """One message as it will be stored: the table and its column values (None: no row, only the
    cabinet's own line), the parsed body, and what it says of the cabinet (info, online)."""
    __slots__ = ("kind", "cabinet", "received_at", "table", "values", "data", "info", "online")

    def __init__(self, kind, cabinet, received_at, table=None, values=None, data=None, info=None,
                 online=None):
        self.kind = kind
        self.cabinet = cabinet
        self.received_at = received_at
        self.table = table
        self.values = values
        self.data = data
        self.info = info
        self.online = online


def parse(cabinet, kind, payload, received_at, slot=None):
    """The Record of one message, or Malformed. `slot` is the N of a `slot/N/state` topic (else the
    body's own `slot` is used). Columns follow docs/collect.md; `body` is the payload's text."""
    if kind not in KINDS:
        raise ValueError("unknown kind %r (one of %s)" % (kind, ", ".join(KINDS)))
    if not isinstance(cabinet, str) or not cabinet or not _clean(cabinet):
        raise Malformed("cabinet id %r" % (cabinet,))
    received_at = float(received_at)
    text = _text(payload)
    if kind == "status":
        word = text.strip()
        if word not in ("online", "offline"):
            raise Malformed("status %r is neither online nor offline" % text[:40])
        return Record(kind, cabinet, received_at, online=1 if word == "online" else 0)
    data = _object(text)
    if kind == "info":
        return Record(kind, cabinet, received_at, data=data, info=text)
    if kind == "event":
        etype = _required_text(data, "type")
        n = _int_or_none(data.get("slot"), _INT32)
        if n is None and etype == "SwapCompleted":
            n = _int_or_none(data.get("slot_out"), _INT32)
        serial = _text_or_none(data.get("serial"))
        if serial is None and isinstance(data.get("battery"), dict):
            serial = _text_or_none(data["battery"].get("serial"))
        values = (cabinet, _required_text(data, "id"), etype,
                  _int_or_none(data.get("ts"), _INT64), _int_or_none(data.get("up_ms"), _INT64),
                  received_at, n, serial, _text_or_none(data.get("session")), text)
        return Record(kind, cabinet, received_at, "events", values, data)
    if kind == "slot_state":
        body_slot = data.get("slot")
        if slot is None:
            slot = body_slot
        if _int_or_none(slot, _INT32) is None or slot < 1:
            raise Malformed("slot state without a slot number")
        if body_slot is not None and body_slot != slot:
            raise Malformed("slot %r in the state of slot %d" % (body_slot, slot))
        battery = data.get("battery") if isinstance(data.get("battery"), dict) else {}
        values = (cabinet, slot, received_at, _required_text(data, "state"),
                  _required_bool(data, "dispensable"), _text_or_none(battery.get("serial")),
                  _number_or_none(battery.get("soc")), _number_or_none(battery.get("soh")), text)
        return Record(kind, cabinet, received_at, "slot_states", values, data)
    if kind == "state":
        values = (cabinet, received_at, _required_text(data, "mode"),
                  *(_required_int(data, k) for k in ("ready", "empty", "charging", "faulted")), text)
        return Record(kind, cabinet, received_at, "cabinet_states", values, data)
    if kind == "telemetry":
        values = (cabinet, received_at, _int_or_none(data.get("ts"), _INT64),
                  _int_or_none(data.get("ready"), _INT32), _int_or_none(data.get("empty"), _INT32),
                  _number_or_none(data.get("energy_wh_total")), text)
        return Record(kind, cabinet, received_at, "telemetry", values, data)
    # ack
    values = (cabinet, received_at, _text_or_none(data.get("req_id")), _required_bool(data, "ok"),
              _text_or_none(data.get("error")), text)
    return Record(kind, cabinet, received_at, "acks", values, data)


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def _clean(s):
    """Text a database column takes: no NUL (PostgreSQL refuses it), no lone surrogate."""
    if "\x00" in s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(payload):
    if isinstance(payload, str):
        text = payload
    else:
        payload = bytes(payload)
        if len(payload) > MAX_BODY:
            raise Malformed("payload of %d bytes (at most %d)" % (len(payload), MAX_BODY))
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("payload is not UTF-8") from None
    if not _clean(text):
        raise Malformed("payload holds a NUL character")
    return text


def _object(text):
    try:
        data = json.loads(text)
    except ValueError as e:
        raise Malformed("not JSON (%s)" % e) from None
    if not isinstance(data, dict):
        raise Malformed("a JSON %s, not an object" % type(data).__name__)
    return data


def _required_text(data, key):
    v = data.get(key)
    if not isinstance(v, str) or not v or not _clean(v):
        raise Malformed("%r must be a non-empty string, got %r" % (key, v))
    return v


def _text_or_none(v):
    return v if isinstance(v, str) and _clean(v) else None


def _required_bool(data, key):
    v = data.get(key)
    if not isinstance(v, bool):
        raise Malformed("%r must be true or false, got %r" % (key, v))
    return int(v)


def _required_int(data, key):
    v = _int_or_none(data.get(key), _INT32)
    if v is None:
        raise Malformed("%r must be a whole number, got %r" % (key, data.get(key)))
    return v


def _int_or_none(v, bound):
    """A whole number that fits the column; anything else is null (the body keeps what came)."""
    if isinstance(v, int) and not isinstance(v, bool) and -bound <= v < bound:
        return v
    return None


def _number_or_none(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None
