"""`tukar report`: what the fleet database says about a time range, as a page for the operator and
for the energy ministry's Permen ESDM 1/2023 art. 21 report: demand, queue-free availability, the
packs riders bring back, energy drawn and handed over, the packs' health, and the art. 21 table.

    tukar report --db fleet.sqlite --from 2026-11-01 --to 2026-11-30 \
        --operator operator.json --out nov

DIR gets index.html (inline CSS, the PNG plots beside it), and a CSV and a JSON file for every
table of the page, holding the very numbers that the page shows. The figures are defined in
docs/report.md; the database is read with plain SQL that SQLite and PostgreSQL both accept, and
every grouping by time is done here, in the report's timezone."""
import argparse
import bisect
import datetime
import json
import os
import re
import sqlite3
import statistics
import sys
import time
import zoneinfo

from tukar_tools import report_page
from tukar_tools.report_page import Table

# What the report reads of each table: a database lacking any of it is not a fleet database.
SCHEMA = {
    "events": ("cabinet", "id", "type", "ts", "received_at", "slot", "serial", "body"),
    "telemetry": ("cabinet", "received_at", "ts", "ready", "empty", "energy_wh_total"),
    "slot_states": ("cabinet", "slot", "received_at", "serial", "soh", "body"),
    "cabinet_states": ("cabinet", "received_at"),
    "cabinets": ("cabinet",),
}
# The events the report reads, and where their battery objects are.
EVENT_TYPES = ("SwapCompleted", "ChargeStopped", "Fault", "BatteryRejected", "BatteryRetired",
               "BatteryIn", "BatteryOut", "BatteryOutTimeout")
BATTERY_FIELDS = ("battery", "battery_in", "battery_out")

DEFAULT_PERIOD_S = 60  # the contract's default telemetry period, for a cabinet with one sample
DURATION_BIN_S = 30
DURATION_OPEN_S = 600  # longer swaps share one open-ended bin
NOT_GIVEN = "not given"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CABINET_ID = re.compile(r"^[a-z0-9-]{1,32}$")


class ReportError(Exception):
    """A problem the operator can fix, said in one line."""


def add_arguments(p):
    p.add_argument("--db", required=True,
                   help="the fleet database: a SQLite file, sqlite:///path or postgresql://...")
    p.add_argument("--from", dest="start", required=True, metavar="DATE",
                   help="start of the range, ISO date or date-time (UTC unless it has an offset)")
    p.add_argument("--to", dest="end", required=True, metavar="DATE",
                   help="end of the range, excluded; a date alone means the end of that day (UTC)")
    p.add_argument("--cabinet", action="extend", nargs="+", default=[], metavar="C",
                   help="only these cabinets (repeat or list several; default: every cabinet)")
    p.add_argument("--operator", metavar="operator.json",
                   help="what the cabinets cannot know: operator, tariff, energy source, "
                        "addresses, brands, timezone (docs/report.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the report into")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stdout is a terminal)")


def run(args):
    try:
        start = parse_time(args.start, "--from")
        end = parse_time(args.end, "--to", end=True)
        if start >= end:
            raise ReportError("--from %s is not before --to %s" % (iso_utc(start), iso_utc(end)))
        operator = load_operator(args.operator) if args.operator else None
        show = sys.stdout.isatty() if args.progress is None else args.progress
        written = build(args.db, start, end, args.cabinet, operator, args.out, progress=show)
    except ReportError as e:
        print("tukar report: %s" % e, file=sys.stderr)
        return 2
    print("tukar report: wrote %s (%d tables, %d plots)"
          % (written["index"], len(written["tables"]), len(written["plots"])))
    return 0


# == inputs ======================================================================================

def parse_time(text, option, end=False):
    """Unix seconds of an ISO date or date-time; UTC unless the text has an offset. A date alone
    as the range's end stands for the end of that day."""
    try:
        if _DATE.match(text):
            d = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc)
            return (d + datetime.timedelta(days=1 if end else 0)).timestamp()
        d = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReportError("%s %r: not an ISO date or date-time (e.g. 2026-11-01 or "
                          "2026-11-01T08:00+07:00)" % (option, text)) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def iso_utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The operator file: each key, what it must be. Everything is optional.
_OPERATOR_KEYS = ("operator", "timezone", "tariff", "energy_source", "brands", "cabinets")
_CABINET_KEYS = ("name", "address", "latitude", "longitude", "tariff", "energy_source")


def load_operator(path):
    """The operator file, checked: a dict with every key present (None where not given)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ReportError("operator file %s: cannot read it (%s)" % (path, e.strerror)) from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ReportError("operator file %s: not JSON (%s)" % (path, e)) from None

    def fail(key, what):
        raise ReportError("operator file %s: %s: %s" % (path, key, what))

    def text_at(obj, key, where):
        v = obj.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            fail(where, "a non-empty text, not %s" % json.dumps(v))
        return v

    def keys_of(obj, allowed, where):
        if not isinstance(obj, dict):
            fail(where, "an object {...}, not %s" % json.dumps(obj)[:40])
        for k in obj:
            if k not in allowed:
                fail("%s%s" % (where + "." if where != "top level" else "", k),
                     "unknown key (known: %s)" % ", ".join(allowed))

    keys_of(data, _OPERATOR_KEYS, "top level")
    op = data.get("operator") or {}
    keys_of(op, ("name", "id"), "operator")
    out = {"operator_name": text_at(op, "name", "operator.name"),
           "operator_id": text_at(op, "id", "operator.id"),
           "tariff": text_at(data, "tariff", "tariff"),
           "energy_source": text_at(data, "energy_source", "energy_source"),
           "timezone": text_at(data, "timezone", "timezone"), "brands": {}, "cabinets": {}}
    if out["timezone"] is not None:
        try:
            zoneinfo.ZoneInfo(out["timezone"])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            fail("timezone", "unknown timezone %r (an IANA name, e.g. Asia/Jakarta)"
                 % out["timezone"])
    brands = data.get("brands") or {}
    if not isinstance(brands, dict):
        fail("brands", "an object {profile: brand}, not %s" % json.dumps(brands)[:40])
    for profile in brands:
        out["brands"][profile] = text_at(brands, profile, "brands." + profile)
    cabinets = data.get("cabinets") or {}
    if not isinstance(cabinets, dict):
        fail("cabinets", "an object {cabinet id: {...}}, not %s" % json.dumps(cabinets)[:40])
    for cab, entry in cabinets.items():
        where = "cabinets." + cab
        if not _CABINET_ID.match(cab):
            fail(where, "not a cabinet id (a-z, 0-9 and -, at most 32)")
        keys_of(entry, _CABINET_KEYS, where)
        c = {k: text_at(entry, k, where + "." + k)
             for k in ("name", "address", "tariff", "energy_source")}
        for k, bound in (("latitude", 90), ("longitude", 180)):
            v = entry.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not -bound <= v <= bound):
                fail(where + "." + k, "a number from -%d to %d, not %s" % (bound, bound,
                                                                          json.dumps(v)))
            c[k] = v
        if (c["latitude"] is None) != (c["longitude"] is None):
            fail(where, "give latitude and longitude together")
        out["cabinets"][cab] = c
    return out


# == the database ================================================================================

def connect(url):
    """The fleet database: an object with query(sql, params) -> rows, SQL with `?` placeholders,
    and close(). fleetdb.connect (without migrating) offers the same and can take its place."""
    shown = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError:
            raise ReportError("a PostgreSQL database needs psycopg (pip install -r "
                              "requirements.txt)") from None
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except Exception as e:
            raise ReportError("cannot reach the database %s: %s" % (shown, _one_line(e))) from None
        return _Connection(conn, "%s", shown)
    path = url
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ReportError("database %r: write sqlite:///relative/path or "
                              "sqlite:////absolute/path" % url)
        path = url[len("sqlite:///"):]
    elif "://" in url:
        raise ReportError("database %r: give a file path, sqlite:///path or postgresql://..." % url)
    if not os.path.isfile(path):
        raise ReportError("database %s: no such file" % path)
    try:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA query_only = ON")  # a report never writes the fleet's record
        conn.execute("SELECT COUNT(*) FROM sqlite_master")
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise ReportError("database %s: not a SQLite database" % path) from None
        raise ReportError("cannot open the database %s: %s" % (path, _one_line(e))) from None
    return _Connection(conn, "?", shown)


class _Connection:
    def __init__(self, conn, placeholder, shown):
        self.conn = conn
        self.placeholder = placeholder
        self.shown = shown

    def query(self, sql, params=()):
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        try:
            cur = self.conn.cursor()
            try:
                cur.execute(sql, tuple(params))
                return cur.fetchall()
            finally:
                cur.close()
        except Exception as e:  # the server gone, a file that is not a database, a lock
            raise ReportError("database %s: %s" % (self.shown, _one_line(e))) from None

    def close(self):
        self.conn.close()


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def check_schema(db, shown):
    """ReportError unless every table and column the report reads is there."""
    missing = []
    for table, columns in SCHEMA.items():
        try:
            db.query("SELECT %s FROM %s WHERE 1 = 0" % (", ".join(columns), table))
        except Exception:
            missing.append(table)
    if missing:
        raise ReportError("database %s has no fleet schema (missing or incomplete: %s); "
                          "`tukar collect` creates it" % (shown, ", ".join(missing)))


# The time of a row: the cabinet's clock when it had one, else the collector's.
_T = "COALESCE(ts, received_at)"
_TIMES = (("events", _T), ("telemetry", _T), ("slot_states", "received_at"),
          ("cabinet_states", "received_at"))


def _where(time_sql, start, end, cabinets):
    sql = "%s >= ? AND %s < ?" % (time_sql, time_sql)
    params = [start, end]
    if cabinets:
        sql += " AND cabinet IN (%s)" % ", ".join("?" * len(cabinets))
        params += list(cabinets)
    return sql, params


def select_cabinets(db, start, end, wanted):
    """The cabinets of the report: those asked for (each must be known to the database), else
    every cabinet with a row in the range. ReportError when the range holds nothing."""
    if wanted:
        known = set()
        for table in ("cabinets", "events", "telemetry", "slot_states", "cabinet_states"):
            known.update(r[0] for r in db.query(
                "SELECT DISTINCT cabinet FROM %s WHERE cabinet IN (%s)"
                % (table, ", ".join("?" * len(wanted))), wanted))
        unknown = sorted(set(wanted) - known)
        if unknown:
            every = set()
            for table in ("cabinets", "events", "telemetry"):
                every.update(r[0] for r in db.query("SELECT DISTINCT cabinet FROM %s" % table))
            raise ReportError("cabinet %s is not in the database (it has: %s)"
                              % (", ".join(unknown), ", ".join(sorted(every)) or "none"))
    present = set()
    for table, t in _TIMES:
        where, params = _where(t, start, end, wanted)
        present.update(r[0] for r in db.query("SELECT DISTINCT cabinet FROM %s WHERE %s"
                                              % (table, where), params))
    if not present:
        lo = hi = None
        for table, t in _TIMES:
            where, params = ("cabinet IN (%s)" % ", ".join("?" * len(wanted)), list(wanted)) \
                if wanted else ("1 = 1", [])
            for a, b in db.query("SELECT MIN(%s), MAX(%s) FROM %s WHERE %s"
                                 % (t, t, table, where), params):
                if a is not None:
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
        whose = "cabinet %s" % ", ".join(sorted(wanted)) if wanted else "the database"
        has = "%s holds %s to %s" % (whose, iso_utc(lo), iso_utc(hi)) if lo is not None \
            else "%s holds no data at all" % whose
        raise ReportError("no data from %s to %s (%s)" % (iso_utc(start), iso_utc(end), has))
    return sorted(set(wanted) or present)


class Fleet:
    """What the sections need of the range, read a day at a time and kept as small records, so
    that a month of a large fleet never sits in memory as rows or parsed bodies.

    swaps: [(t, cabinet, returned SoC, duration s, energy Wh)] (None where the event lacks it);
    charges_wh: {cabinet: sum of ChargeStopped.energy_wh}; faults: [(t, cabinet, slot, code)];
    rejections: {(serial, reason): count}; retired: [(t, cabinet, slot, serial, reason, battery)];
    packs: {serial: {"t", "cabinet", and "soh", "profile", "cycles" once known}} (the latest of
    each pack's battery objects and slot states); seen_at: {cabinet: {serials}}.
    Telemetry is read one cabinet at a time, when asked (meter())."""

    CHUNK_S = 86400

    @classmethod
    def chunks(cls, start, end):
        """How many reads the range takes."""
        return max(1, int(-(-(end - start) // cls.CHUNK_S)))

    def __init__(self, db, start, end, cabinets, on_day=lambda what: None):
        self.start, self.end, self.cabinets, self._db = start, end, cabinets, db
        self.swaps, self.faults, self.retired = [], [], []
        self.charges_wh, self.rejections, self.packs, self.seen_at = {}, {}, {}, {}
        self._meters = {}
        self._brought = {}  # (cabinet, session): the SoC of the pack its BatteryIn took in
        latest_state = {}  # serial: (t, cabinet, body) of its latest slot state
        types = ", ".join("'%s'" % typ for typ in EVENT_TYPES)
        a = start
        while a < end:
            b = min(end, a + self.CHUNK_S)
            on_day("reading " + iso_utc(a)[:10])
            where, params = _where(_T, a, b, cabinets)
            for cab, typ, t, body in db.query(
                    "SELECT cabinet, type, %s AS t, body FROM events WHERE type IN (%s) AND %s"
                    " ORDER BY t" % (_T, types, where), params):
                try:
                    data = json.loads(body)
                except ValueError:
                    continue  # the collector stores only JSON objects; a stray row says nothing
                if isinstance(data, dict):
                    self._event(float(t), cab, typ, data)
            where, params = _where("received_at", a, b, cabinets)
            for cab, t, serial, soh, body in db.query(
                    "SELECT cabinet, received_at, serial, soh, body FROM slot_states"
                    " WHERE serial IS NOT NULL AND %s ORDER BY received_at" % where, params):
                t = float(t)
                self._seen(t, cab, serial, soh=None if soh is None else float(soh))
                latest_state[serial] = (t, cab, body)
            a = b
        for t, cab, body in latest_state.values():  # profile and cycles: the latest state's
            try:
                data = json.loads(body)
            except ValueError:
                continue
            if isinstance(data, dict):
                self._battery(t, cab, data.get("battery"))

    def _event(self, t, cab, typ, body):
        for field in BATTERY_FIELDS:
            self._battery(t, cab, body.get(field))
        if typ == "BatteryIn":
            b = body.get("battery")
            if isinstance(b, dict):
                self._brought[(cab, body.get("session"))] = _number(b.get("soc"))
        elif typ == "SwapCompleted":
            # The returned pack's SoC: from its BatteryIn (SwapCompleted names the packs by
            # serial), or from a battery object where SwapCompleted carries one.
            given = body.get("battery_in")
            soc = (_number(given.get("soc")) if isinstance(given, dict)
                   else self._brought.pop((cab, body.get("session")), None))
            ms = _number(body.get("duration_ms"))
            self.swaps.append((t, cab, soc, ms / 1000 if ms is not None and ms >= 0 else None,
                               _number(body.get("energy_wh"))))
        elif typ == "ChargeStopped":
            wh = _number(body.get("energy_wh"))
            if wh is not None:
                self.charges_wh[cab] = self.charges_wh.get(cab, 0.0) + wh
        elif typ == "Fault":
            slot = body.get("slot")
            slot = slot if isinstance(slot, int) and not isinstance(slot, bool) else None
            self.faults.append((t, cab, slot, str(body.get("code") or "")))
        elif typ == "BatteryRejected":
            b = body.get("battery") if isinstance(body.get("battery"), dict) else {}
            key = (b.get("serial") or "unknown", str(body.get("reason") or ""))
            self.rejections[key] = self.rejections.get(key, 0) + 1
        elif typ == "BatteryRetired":
            b = body.get("battery") if isinstance(body.get("battery"), dict) else {}
            self.retired.append((t, cab, body.get("slot"), body.get("serial") or b.get("serial"),
                                 body.get("reason"), b))

    def _battery(self, t, cab, b):
        if isinstance(b, dict):
            profile = b.get("profile")
            self._seen(t, cab, b.get("serial"), _number(b.get("soh")),
                       profile if isinstance(profile, str) and profile else None,
                       _number(b.get("cycles")))

    def _seen(self, t, cab, serial, soh=None, profile=None, cycles=None):
        if not isinstance(serial, str) or not serial:
            return
        p = self.packs.setdefault(serial, {"t": t, "cabinet": cab})
        self.seen_at.setdefault(cab, set()).add(serial)
        if t >= p["t"]:
            p["t"], p["cabinet"] = t, cab
        for key, value in (("soh", soh), ("profile", profile), ("cycles", cycles)):
            if value is not None and t >= p.get(key + "_t", t):
                p[key], p[key + "_t"] = value, t

    def meter(self, cab):
        """meter() of the cabinet's telemetry in the range, read once."""
        if cab not in self._meters:
            where, params = _where(_T, self.start, self.end, [cab])
            samples = [(float(t), ready, empty, None if wh is None else float(wh))
                       for t, ready, empty, wh in self._db.query(
                           "SELECT %s AS t, ready, empty, energy_wh_total FROM telemetry WHERE %s"
                           " ORDER BY t" % (_T, where), params)]
            self._meters[cab] = meter(samples, self.end)
        return self._meters[cab]

    def slot_serials(self, cabinet_slots):
        """{(cabinet, slot): ([times], [serials])}: the slot's states in the range, after its last
        one before the range (what was in the slot at the start)."""
        out = {k: ([], []) for k in cabinet_slots}
        if not out:
            return out
        cabs = sorted({c for c, _ in out})
        slots = sorted({s for _, s in out})
        inlist = "cabinet IN (%s) AND slot IN (%s)" % (", ".join("?" * len(cabs)),
                                                       ", ".join("?" * len(slots)))
        rows = self._db.query(
            "SELECT s.cabinet, s.slot, s.received_at, s.serial FROM slot_states s WHERE s.%s"
            " AND s.received_at = (SELECT MAX(p.received_at) FROM slot_states p WHERE"
            " p.cabinet = s.cabinet AND p.slot = s.slot AND p.received_at < ?)"
            % inlist.replace(" AND slot", " AND s.slot"), cabs + slots + [self.start])
        rows += self._db.query(
            "SELECT cabinet, slot, received_at, serial FROM slot_states WHERE %s AND"
            " received_at >= ? AND received_at < ?" % inlist, cabs + slots + [self.start, self.end])
        for cab, slot, t, serial in sorted(rows, key=lambda r: r[2]):
            if (cab, slot) in out:
                out[(cab, slot)][0].append(float(t))
                out[(cab, slot)][1].append(serial)
        return out


# == the figures ==================================================================================

class Clock:
    """Local calendar of the report's timezone."""

    def __init__(self, tz_name):
        self.name = tz_name or "UTC"
        self.tz = zoneinfo.ZoneInfo(self.name)

    def local(self, t):
        return datetime.datetime.fromtimestamp(t, self.tz)

    def iso(self, t):
        return self.local(t).isoformat(timespec="seconds")


def demand(fleet, clock):
    swaps = fleet.swaps
    grid = [[0] * 24 for _ in DAYS]
    per_day = {}
    per_cab = {c: [0] * 24 for c in fleet.cabinets}
    for t, cab, *_ in swaps:
        d = clock.local(t)
        grid[d.weekday()][d.hour] += 1
        per_day[d.date()] = per_day.get(d.date(), 0) + 1
        per_cab.setdefault(cab, [0] * 24)[d.hour] += 1
    hours = [("h%02d" % h, "%02d" % h, 0) for h in range(24)]
    heat = Table("demand_hour_day", "Completed swaps by hour of day and day of week",
                 [("day", "day", None)] + hours + [("total", "total", 0)],
                 [dict([("day", DAYS[i])] + [("h%02d" % h, grid[i][h]) for h in range(24)]
                       + [("total", sum(grid[i]))]) for i in range(7)],
                 wide=True)
    first = clock.local(fleet.start).date()
    last = clock.local(fleet.end - 1e-6).date()
    days = []
    d = first
    while d <= last:
        days.append({"date": d.isoformat(), "swaps": per_day.get(d, 0)})
        d += datetime.timedelta(days=1)
    daily = Table("swaps_per_day", "Completed swaps per day",
                  [("date", "date", None), ("swaps", "swaps", 0)], days)
    span_days = (fleet.end - fleet.start) / 86400
    total = len(swaps)
    rows = []
    for cab in sorted(per_cab):
        n = sum(per_cab[cab])
        busiest = max(range(24), key=lambda h: (per_cab[cab][h], -h)) if n else None
        rows.append({"cabinet": cab, "swaps": n, "swaps_per_day": n / span_days,
                     "busiest_hour": "%02d:00" % busiest if busiest is not None else "",
                     "share_pct": 100.0 * n / total if total else 0.0})
    by_cab = Table("demand_by_cabinet", "Completed swaps per cabinet",
                   [("cabinet", "cabinet", None), ("swaps", "swaps", 0),
                    ("swaps_per_day", "swaps per day", 2), ("busiest_hour", "busiest hour", None),
                    ("share_pct", "share of the fleet's swaps %", 1)], rows)
    return heat, daily, by_cab


def weights(times, end):
    """How long each sample stands for: the time to the next sample (to the range's end for the
    last), capped at twice the median sampling period; and that median."""
    gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
    period = statistics.median(gaps) if gaps else DEFAULT_PERIOD_S
    cap = 2 * period
    nexts = list(times[1:]) + [end]
    return [max(0.0, min(n - t, cap)) for t, n in zip(times, nexts)], period


def meter(samples, end):
    """One cabinet's telemetry [(t, ready, empty, energy_wh_total)] summed up: its availability
    (time-weighted, weights()) and the energy its meter counted (positive steps)."""
    w, period = weights([s[0] for s in samples], end)

    def share(i):
        known = [(wi, s[i]) for wi, s in zip(w, samples) if s[i] is not None]
        total = sum(wi for wi, _ in known)
        if not total:
            return None, None
        return (100.0 * sum(wi for wi, v in known if v > 0) / total,
                sum(wi * v for wi, v in known) / total)

    avail, mean_ready = share(1)
    empty, mean_empty = share(2)
    drawn, resets = 0.0, 0
    counter = [s[3] for s in samples if s[3] is not None]
    for a, b in zip(counter, counter[1:]):
        if b >= a:
            drawn += b - a
        else:
            resets += 1  # a factory reset: the counter starts again from zero
    return {"samples": len(samples), "median_period_s": period if samples else None,
            "covered_h": sum(w) / 3600, "available_pct": avail, "empty_slot_pct": empty,
            "mean_ready": mean_ready, "mean_empty": mean_empty, "kwh_drawn": drawn / 1000,
            "counter_resets": resets}


def availability(fleet):
    keys = ("samples", "median_period_s", "covered_h", "available_pct", "empty_slot_pct",
            "mean_ready", "mean_empty")
    rows = [dict([("cabinet", cab)] + [(k, fleet.meter(cab)[k]) for k in keys])
            for cab in fleet.cabinets]
    return Table("availability", "Queue-free availability, from telemetry",
                 [("cabinet", "cabinet", None), ("samples", "samples", 0),
                  ("median_period_s", "median period s", 1), ("covered_h", "hours covered", 2),
                  ("available_pct", "time with a pack ready %", 1),
                  ("empty_slot_pct", "time with an empty slot %", 1),
                  ("mean_ready", "mean packs ready", 2), ("mean_empty", "mean empty slots", 2)],
                 rows)


def _histogram(values, edges, last_closed=True, open_end=None):
    """[(lo, hi, count)]: [lo, hi) bins over edges, the last one closed on the right; with
    open_end, values from it on share one bin (hi None)."""
    counts = [0] * (len(edges) - 1)
    over = 0
    for v in values:
        if open_end is not None and v >= open_end:
            over += 1
            continue
        i = bisect.bisect_right(edges, v) - 1
        if i == len(counts) and last_closed and v == edges[-1]:
            i -= 1
        if 0 <= i < len(counts):
            counts[i] += 1
    bins = [(edges[i], edges[i + 1], counts[i]) for i in range(len(counts))]
    if open_end is not None and over:
        bins.append((open_end, None, over))
    return bins


def _stats(values):
    if not values:
        return {"count": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None}
    s = sorted(values)
    p90 = s[min(len(s) - 1, max(0, -(-9 * len(s) // 10) - 1))]  # nearest rank
    return {"count": len(s), "mean": sum(s) / len(s), "median": statistics.median(s),
            "p90": p90, "min": s[0], "max": s[-1]}


def returned_packs(fleet):
    socs = [s[2] for s in fleet.swaps if s[2] is not None]
    durations = [s[3] for s in fleet.swaps if s[3] is not None]
    soc_bins = _histogram(socs, list(range(0, 101, 10)))
    soc = Table("returned_soc", "State of charge of the packs riders bring back",
                [("soc_from", "SoC from %", 0), ("soc_to", "SoC to %", 0), ("packs", "packs", 0)],
                [{"soc_from": a, "soc_to": b, "packs": n} for a, b, n in soc_bins])
    top = min(DURATION_OPEN_S, DURATION_BIN_S * (int(max(durations, default=0)) // DURATION_BIN_S
                                                  + 1))
    dur_bins = _histogram(durations, list(range(0, top + 1, DURATION_BIN_S)), last_closed=False,
                          open_end=DURATION_OPEN_S) if durations else []
    dur = Table("swap_duration", "Swap durations",
                [("seconds_from", "from s", 0), ("seconds_to", "to s", 0), ("swaps", "swaps", 0)],
                [{"seconds_from": a, "seconds_to": b, "swaps": n} for a, b, n in dur_bins])
    stats = []
    for what, unit, values in (("returned SoC", "%", socs), ("swap duration", "s", durations)):
        stats.append(dict({"measure": what, "unit": unit}, **_stats(values)))
    summary = Table("returned_summary", "Returned SoC and swap duration, summary",
                    [("measure", "measure", None), ("unit", "unit", None), ("count", "count", 0),
                     ("mean", "mean", 1), ("median", "median", 1), ("p90", "90th percentile", 1),
                     ("min", "min", 1), ("max", "max", 1)], stats)
    return soc, dur, summary


def energy(fleet):
    swaps = {}
    for s in fleet.swaps:
        swaps.setdefault(s[1], []).append(s)
    rows = []
    for cab in fleet.cabinets:
        m = fleet.meter(cab)
        mine = swaps.get(cab, [])
        rows.append({"cabinet": cab, "kwh_drawn": m["kwh_drawn"],
                     "counter_resets": m["counter_resets"],
                     "kwh_charges": fleet.charges_wh.get(cab, 0.0) / 1000,
                     "kwh_handed_over": sum(s[4] or 0.0 for s in mine) / 1000,
                     "swaps": len(mine)})
    total = {"cabinet": "(all)"}
    for k in ("kwh_drawn", "counter_resets", "kwh_charges", "kwh_handed_over", "swaps"):
        total[k] = sum(r[k] for r in rows)
    return Table("energy", "Energy drawn and handed over",
                 [("cabinet", "cabinet", None), ("kwh_drawn", "kWh drawn (meter)", 3),
                  ("kwh_charges", "kWh of charges (events)", 3),
                  ("kwh_handed_over", "kWh handed over", 3), ("swaps", "swaps", 0),
                  ("counter_resets", "meter resets", 0)], rows + [total])


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def health(fleet, clock):
    packs = fleet.packs
    rows = sorted(({"serial": s, "profile": p.get("profile") or "", "soh": p.get("soh"),
                    "cycles": p.get("cycles"), "last_cabinet": p["cabinet"],
                    "last_seen": clock.iso(p["t"])} for s, p in packs.items()),
                  key=lambda r: r["serial"])
    cols = [("serial", "serial", None), ("profile", "profile", None), ("soh", "SoH %", 1),
            ("cycles", "cycles", 0), ("last_cabinet", "last cabinet", None),
            ("last_seen", "last seen", None)]
    all_packs = Table("packs", "Every pack seen, latest state of health", cols, rows, html_rows=0)
    with_soh = [r for r in rows if r["soh"] is not None]
    lowest = Table("packs_lowest_soh", "The 10 packs with the lowest state of health", cols,
                   sorted(with_soh, key=lambda r: (r["soh"], r["serial"]))[:10])
    sohs = [r["soh"] for r in with_soh]
    lo = min(50, 5 * int(min(sohs, default=100) // 5))
    soh_bins = _histogram(sohs, list(range(lo, 101, 5))) if sohs else []
    soh = Table("soh", "State of health of the packs seen (latest per pack)",
                [("soh_from", "SoH from %", 0), ("soh_to", "SoH to %", 0), ("packs", "packs", 0)],
                [{"soh_from": a, "soh_to": b, "packs": n} for a, b, n in soh_bins])
    retired = []
    for t, cab, slot, serial, reason, b in fleet.retired:
        retired.append({"time": clock.iso(t), "cabinet": cab,
                        # none: retired by command while not in this cabinet
                        "slot": "" if slot is None else str(slot), "serial": serial or "",
                        "reason": reason or "", "soh": _number(b.get("soh")),
                        "cycles": _number(b.get("cycles"))})
    retirements = Table("retirements", "Packs retired",
                        [("time", "time", None), ("cabinet", "cabinet", None),
                         ("slot", "slot", None), ("serial", "serial", None),
                         ("reason", "reason", None), ("soh", "SoH %", 1),
                         ("cycles", "cycles", 0)], retired)
    by_slot = {}
    for t, cab, slot, code in fleet.faults:
        key = (cab, _slot_text(slot), code)
        by_slot[key] = by_slot.get(key, 0) + 1
    slot_table = Table("faults_by_slot", "Faults by slot and code",
                       [("cabinet", "cabinet", None), ("slot", "slot", None),
                        ("code", "code", None), ("faults", "faults", 0)],
                       [{"cabinet": c, "slot": s, "code": k, "faults": n}
                        for (c, s, k), n in sorted(by_slot.items(),
                                                   key=lambda kv: (-kv[1], kv[0]))])
    slotted = [f for f in fleet.faults if f[2] is not None]
    history = fleet.slot_serials({(cab, slot) for _, cab, slot, _ in slotted})
    by_pack = {}
    for t, cab, slot, code in slotted:
        times, serials = history[(cab, slot)]
        i = bisect.bisect_right(times, t) - 1
        serial = serials[i] if i >= 0 else None
        if serial:
            by_pack[(serial, code)] = by_pack.get((serial, code), 0) + 1
    pack_table = Table("faults_by_pack", "Faults by pack (the pack in the slot at the time)",
                       [("serial", "serial", None), ("code", "code", None),
                        ("faults", "faults", 0)],
                       [{"serial": s, "code": k, "faults": n}
                        for (s, k), n in sorted(by_pack.items(), key=lambda kv: (-kv[1], kv[0]))])
    rejected = fleet.rejections
    rejections = Table("rejections_by_pack", "Packs refused by the cabinets, by serial and reason",
                       [("serial", "serial", None), ("reason", "reason", None),
                        ("rejections", "rejections", 0)],
                       [{"serial": s, "reason": r, "rejections": n}
                        for (s, r), n in sorted(rejected.items(),
                                                key=lambda kv: (-kv[1], kv[0]))])
    return soh, lowest, all_packs, retirements, slot_table, pack_table, rejections


def _slot_text(slot):
    return "cabinet" if slot is None else str(slot)


def permen(cabinets, operator, fleet, avail, energy_table):
    """The art. 21 table: one row per cabinet."""
    op = operator or {"operator_name": None, "operator_id": None, "tariff": None,
                      "energy_source": None, "brands": {}, "cabinets": {}}
    avail_by = {r["cabinet"]: r for r in avail.rows}
    energy_by = {r["cabinet"]: r for r in energy_table.rows}
    rows = []
    for cab in cabinets:
        c = op["cabinets"].get(cab, {})
        profiles = sorted({fleet.packs[s]["profile"] for s in fleet.seen_at.get(cab, ())
                           if fleet.packs[s].get("profile")})
        a, e = avail_by[cab], energy_by[cab]
        rows.append({
            "cabinet": cab, "station": c.get("name") or NOT_GIVEN,
            "operator": op["operator_name"] or NOT_GIVEN,
            "operator_id": op["operator_id"] or NOT_GIVEN,
            "address": c.get("address") or NOT_GIVEN,
            "latitude": c["latitude"] if c.get("latitude") is not None else NOT_GIVEN,
            "longitude": c["longitude"] if c.get("longitude") is not None else NOT_GIVEN,
            "battery_types": ", ".join(profiles) or "none seen",
            "battery_brands": "; ".join("%s: %s" % (p, op["brands"].get(p) or NOT_GIVEN)
                                        for p in profiles) or "none seen",
            "availability_pct": a["available_pct"] if a["available_pct"] is not None
            else "no telemetry",
            "mean_ready": a["mean_ready"] if a["mean_ready"] is not None else "no telemetry",
            "tariff": c.get("tariff") or op["tariff"] or NOT_GIVEN,
            "kwh_used": e["kwh_drawn"], "kwh_sold": e["kwh_handed_over"],
            "energy_source": c.get("energy_source") or op["energy_source"] or NOT_GIVEN,
            "mean_empty_slots": a["mean_empty"] if a["mean_empty"] is not None
            else "no telemetry",
        })
    return Table("permen_esdm_1_2023_art21", "Permen ESDM 1/2023, article 21: per cabinet",
                 [("cabinet", "cabinet", None), ("station", "station", None),
                  ("operator", "operator", None), ("operator_id", "operator id", None),
                  ("address", "address", None), ("latitude", "latitude", 6),
                  ("longitude", "longitude", 6),
                  ("battery_types", "battery types (profiles)", None),
                  ("battery_brands", "battery brands", None),
                  ("availability_pct", "availability: time with a pack ready %", 1),
                  ("mean_ready", "availability: mean packs ready", 2),
                  ("tariff", "swap tariff", None), ("kwh_used", "kWh used (drawn)", 3),
                  ("kwh_sold", "kWh sold (handed over)", 3),
                  ("energy_source", "energy source", None),
                  ("mean_empty_slots", "empty cabins (mean empty slots)", 2)],
                 rows, records=True)


# == the run ======================================================================================

def build(db_url, start, end, wanted, operator, out_dir, progress=False):
    """Reads the range and writes the report into out_dir; returns what it wrote."""
    with _Steps(progress) as step:
        step("opening the database")
        db = connect(db_url)
        try:
            check_schema(db, db.shown)
            cabinets = select_cabinets(db, start, end, sorted(set(wanted)))
            # a step per day read, per cabinet's telemetry, per section and per plot
            step.total(Fleet.chunks(start, end) + len(cabinets) + 5 + len(report_page.PLOTS) + 1)
            fleet = Fleet(db, start, end, cabinets, on_day=step)
            for cab in cabinets:
                step("telemetry of " + cab)
                fleet.meter(cab)
            clock = Clock(operator and operator["timezone"])
            step("demand")
            heat, daily, by_cab = demand(fleet, clock)
            avail = availability(fleet)
            step("returned packs")
            soc, dur, summary = returned_packs(fleet)
            step("energy")
            energy_table = energy(fleet)
            step("fleet health")
            soh, lowest, all_packs, retired, by_slot, by_pack, rejected = health(fleet, clock)
            step("Permen ESDM table")
            art21 = permen(cabinets, operator, fleet, avail, energy_table)
        finally:
            db.close()
        tables = {t.name: t for t in (art21, heat, daily, by_cab, avail, soc, dur, summary,
                                      energy_table, soh, lowest, all_packs, retired, by_slot,
                                      by_pack, rejected)}
        try:
            os.makedirs(out_dir, exist_ok=True)
            plots = report_page.plot_all(tables, out_dir,
                                         on_plot=lambda name: step("plot: " + name))
        except OSError as e:
            raise ReportError("cannot write into %s: %s" % (out_dir, e.strerror or e)) from None
        step("page and tables")
        meta = {"start": clock.iso(start), "end": clock.iso(end), "start_utc": iso_utc(start),
                "first_day": clock.local(start).date().isoformat(),
                "last_day": clock.local(end - 1e-6).date().isoformat(),
                "end_utc": iso_utc(end), "timezone": clock.name, "cabinets": cabinets,
                "database": db.shown, "operator": operator,
                "generated": iso_utc(time.time())}
        try:
            index = report_page.write(out_dir, meta, tables, plots)
        except OSError as e:
            raise ReportError("cannot write into %s: %s" % (out_dir, e.strerror or e)) from None
    return {"index": index, "tables": sorted(tables), "plots": plots}


class _Steps:
    """A rich progress bar over the report's steps, or nothing: step(what) says what runs now,
    the one before it done."""

    def __init__(self, show):
        self.show, self.done, self.bar, self.task = show, 0, None, None

    def __enter__(self):
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
                TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<30}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(file=sys.stdout, force_terminal=True),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=None)
        return self

    def __call__(self, what):
        if self.bar is not None:
            self.bar.update(self.task, description=what, completed=self.done)
            self.bar.refresh()  # each step on the screen, however quick
        self.done += 1

    def total(self, n):
        if self.bar is not None:
            self.bar.update(self.task, total=self.done + n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            self.bar.stop()
