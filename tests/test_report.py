"""`tukar report` on fleet databases built here with the schema's own SQL (docs: the fleet database,
schema version 1), filled with contract-shaped rows whose totals are known: every section's
figures, the CSV, JSON and page agreeing, the operator file, the time filter, --cabinet, the
errors an operator can meet, and the page as a real browser renders it."""
import csv
import datetime
import html.parser
import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from tukar_tools import cli, fleetdb, report


def utc(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


T0 = utc("2026-11-02T00:00:00")  # a Monday; 07:00 in Jakarta
T1 = utc("2026-11-04T00:00:00")  # the range's end, excluded
RANGE = ["--from", "2026-11-02", "--to", "2026-11-03"]  # --to a date: to the end of that day


class FleetDB:
    """A fleet database file written row by row, as the collector would store the messages."""

    def __init__(self, path):
        self.path = str(path)
        fleetdb.connect(self.path).close()  # the schema as tukar collect creates it
        self.db = sqlite3.connect(self.path)
        self.n = 0

    def cabinet(self, cab, slots=4, profiles=("ref48v",)):
        info = {"id": cab, "fw": "1.0", "board": "tukar-12-wroom", "slots": slots,
                "profiles": list(profiles), "bdseq": 1, "boot": {"reason": "power_on", "count": 1},
                "time_synced": True}
        self.db.execute("INSERT INTO cabinets VALUES (?, ?, 1, ?, ?)",
                        (cab, json.dumps(info), T0 - 86400, T1))

    def event(self, cab, typ, t, received=None, ts="same", **fields):
        """An event at cabinet time t (ts None: the cabinet's clock was not synced)."""
        self.n += 1
        ts = int(t) if ts == "same" else ts
        body = dict({"id": "%s-1-%d" % (cab, self.n), "type": typ, "ts": ts, "up_ms": self.n * 1000,
                     "seq": self.n % 256}, **fields)
        battery = fields.get("battery") if isinstance(fields.get("battery"), dict) else {}
        slot = fields.get("slot", fields.get("slot_out"))
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (cab, body["id"], typ, ts, body["up_ms"],
                         t + 0.3 if received is None else received, slot,
                         fields.get("serial") or battery.get("serial"), fields.get("session"),
                         json.dumps(body)))

    def telemetry(self, cab, t, ready, empty, energy_wh_total, ts="same"):
        ts = int(t) if ts == "same" else ts
        body = {"slots": [1, 2, 3, 4], "ts": ts, "ready": ready, "empty": empty,
                "energy_wh_total": energy_wh_total, "seq": 0}
        self.db.execute("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (cab, t + 0.4, ts, ready, empty, energy_wh_total, json.dumps(body)))

    def slot_state(self, cab, slot, t, battery=None, state=None):
        state = state or ("charging" if battery else "empty")
        body = {"slot": slot, "state": state, "door": "closed", "lock": "locked",
                "battery": battery, "charger": {"on": bool(battery), "current_a": 0},
                "dispensable": False, "faults": [], "seq": 0}
        b = battery or {}
        self.db.execute("INSERT INTO slot_states VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
                        (cab, slot, t, state, b.get("serial"), b.get("soc"), b.get("soh"),
                         json.dumps(body)))

    def cabinet_state(self, cab, t, ready, empty):
        body = {"mode": "in_service", "ready": ready, "empty": empty, "charging": 0, "faulted": 0,
                "session": None, "temp_c": 30, "alarms": [], "seq": 0}
        self.db.execute("INSERT INTO cabinet_states VALUES (?, ?, 'in_service', ?, ?, 0, 0, ?)",
                        (cab, t, ready, empty, json.dumps(body)))

    def close(self):
        self.db.commit()
        self.db.close()


def pack(serial, soc=50.0, soh=95.0, profile="ref48v", cycles=100):
    return {"serial": serial, "profile": profile, "soc": soc, "soh": soh, "temp_c": 30,
            "voltage_v": 51.0, "current_a": 0, "cycles": cycles, "faults": []}


# The swaps in the range: (UTC time, cabinet, returned SoC, duration ms, energy Wh handed over).
SWAPS = [
    ("2026-11-02T01:05:00", "cab-a", 12.0, 35000, 1200.0),  # Mon 08:05 in Jakarta
    ("2026-11-02T01:20:00", "cab-a", 25.0, 42000, 1000.0),  # Mon 08:20
    ("2026-11-02T01:50:00", "cab-a", 31.0, 61000, 900.5),  # Mon 08:50
    ("2026-11-03T12:10:00", "cab-a", 48.0, 95000, 500.0),  # Tue 19:10
    ("2026-11-03T12:40:00", "cab-a", 100.0, 700000, -150.0),  # Tue 19:40, a pack given back full
    ("2026-11-03T18:00:00", "cab-a", 5.0, 20000, 1400.0),  # Wed 01:00 in Jakarta, Tue in UTC
    ("2026-11-03T00:30:00", "cab-b", 20.0, 30000, 1100.0),  # Tue 07:30
    ("2026-11-03T00:45:00", "cab-b", 9.5, 88000, 1250.0),  # Tue 07:45
]
HANDED_OVER_WH = {"cab-a": 1200 + 1000 + 900.5 + 500 - 150 + 1400, "cab-b": 1100 + 1250}
CHARGES_WH = {"cab-a": 1000 + 2500.5, "cab-b": 700}


def a_month(path):
    """Two days of two cabinets (cab-a, cab-b) and a third one (cab-c) heard only before them."""
    f = FleetDB(path)
    for cab in ("cab-a", "cab-b", "cab-c"):
        f.cabinet(cab)
    for i, (when, cab, soc, ms, wh) in enumerate(SWAPS):
        t = utc(when)
        kw = {}
        if i == 2:
            kw = {"ts": None, "received": t}  # unsynced clock: the collector's time counts
        if i == 3:
            kw = {"received": T1 + 5000}  # the cabinet's clock counts, not the late arrival
        f.event(cab, "SwapCompleted", t, session="s-%d" % i, request_id="r-%d" % i,
                id_token="rider-%d" % i, slot_in=1, slot_out=2,
                battery_in=pack("R-%d" % i, soc=soc, soh=85.0, profile="ref60v" if i == 0
                                else "ref48v"),
                battery_out=pack("O-%d" % i, soc=98.0), duration_ms=ms, energy_wh=wh, **kw)
    # Outside the range: before, at its end (excluded), a late ts with an in-range arrival.
    f.event("cab-a", "SwapCompleted", T0 - 1, slot_in=1, slot_out=2, battery_in=pack("X-1"),
            battery_out=pack("X-2"), duration_ms=1, energy_wh=99999)
    f.event("cab-a", "SwapCompleted", T1, slot_in=1, slot_out=2, battery_in=pack("X-3"),
            battery_out=pack("X-4"), duration_ms=1, energy_wh=99999)
    f.event("cab-a", "SwapCompleted", T1 + 60, received=T0 + 60, slot_in=1, slot_out=2,
            battery_in=pack("X-5"), battery_out=pack("X-6"), duration_ms=1, energy_wh=99999)
    f.event("cab-c", "SwapCompleted", T0 - 86400, slot_in=1, slot_out=2, battery_in=pack("C-1"),
            battery_out=pack("C-2"), duration_ms=1, energy_wh=5)
    f.telemetry("cab-c", T0 - 86400, 3, 1, 100.0)
    # Charges.
    f.event("cab-a", "ChargeStopped", T0 + 3600, slot=1, serial="P-1", reason="full",
            energy_wh=1000)
    f.event("cab-a", "ChargeStopped", T0 + 7200, slot=2, serial="P-2", reason="full",
            energy_wh=2500.5)
    f.event("cab-b", "ChargeStopped", T0 + 7200, slot=1, serial="Q-1", reason="full",
            energy_wh=700)
    f.event("cab-a", "ChargeStopped", T0 - 7200, slot=1, serial="P-1", reason="full",
            energy_wh=123456)  # before the range
    # cab-a's telemetry: every 10 min, two hours missing (samples 100..111), no pack ready for
    # the first 12 h, an empty slot in every other sample, its meter reset at sample 200.
    for i in range(288):
        if 100 <= i < 112:
            continue
        f.telemetry("cab-a", T0 + 600 * i, 0 if i < 72 else 2, 1 if i % 2 == 0 else 0,
                    100000 + 50 * i if i < 200 else 50 * (i - 200))
    f.telemetry("cab-a", T0 - 600, 0, 0, 0.0)  # before the range: no step from it counts
    f.telemetry("cab-a", T1, 0, 0, 999999.0)  # at the end: excluded
    # cab-b's: one hour every minute, no clock (ts null), always a pack ready, never an empty slot.
    for i in range(61):
        f.telemetry("cab-b", T0 + 86400 + 60 * i, 1, 0, 5000.0, ts=None)
    # Slots: cab-a slot 2 holds P-2 from before the range, P-9 from the middle on; slot 3 empty.
    f.slot_state("cab-a", 2, T0 - 3600, pack("P-2", soh=88.0))
    f.slot_state("cab-a", 2, T0 + 86400, pack("P-9", soh=91.0, cycles=700))
    f.slot_state("cab-a", 3, T0 - 3600)
    f.slot_state("cab-a", 1, T0 + 100, pack("P-1", soh=97.0))
    f.slot_state("cab-a", 1, T0 + 200, pack("P-1", soh=96.5, cycles=321))
    f.slot_state("cab-b", 1, T0 + 100, pack("Q-1", soh=62.0, cycles=1900))
    f.slot_state("cab-b", 1, T0 - 100, pack("Q-0", soh=10.0))  # before the range: not seen
    f.cabinet_state("cab-a", T0 + 10, 2, 1)
    # Faults: two in slot 2 (one on P-2, one on P-9), one in the empty slot 3, one of cab-a.
    f.event("cab-a", "Fault", T0 + 1000, slot=2, code="lock_jam", severity="error")
    f.event("cab-a", "Fault", T0 + 90000, slot=2, code="lock_jam", severity="error")
    f.event("cab-a", "Fault", T0 + 90500, slot=2, code="bms_link", severity="error")
    f.event("cab-a", "Fault", T0 + 2000, slot=3, code="door_sensor", severity="warning")
    f.event("cab-a", "Fault", T0 + 3000, slot=None, code="cabinet_overtemp", severity="error")
    # Refusals and retirements.
    for reason in ("bms_fault", "bms_fault", "temperature"):
        f.event("cab-a", "BatteryRejected", T0 + 4000, slot=1, session="s-x", reason=reason,
                battery=pack("Z-1", soh=70.0))
    f.event("cab-b", "BatteryRejected", T0 + 4000, slot=1, session="s-y", reason="no_bms",
            battery={})
    f.event("cab-a", "BatteryRetired", utc("2026-11-02T03:00:00"), slot=4, serial="P-4",
            reason="soh", battery=pack("P-4", soh=68.0, cycles=1500))
    f.event("cab-a", "BatteryRetired", utc("2026-11-03T03:00:00"), slot=None, serial="P-77",
            reason="command", battery=None)
    f.event("cab-a", "BatteryIn", T0 + 300, slot=1, session="s-z", battery=pack("P-1", soh=95.0))
    f.close()
    return path


OPERATOR = {
    "operator": {"name": "PT Contoh Energi Nusantara", "id": "NIB 9120001234567"},
    "timezone": "Asia/Jakarta",
    "tariff": "Rp 25.000 per swap",
    "energy_source": "PLN grid",
    "brands": {"ref48v": "Contoh Power 48V 30Ah"},
    "cabinets": {
        "cab-a": {"name": "SPBKLU Kemang", "address": "Jl. Kemang Raya 1, Jakarta Selatan",
                  "latitude": -6.2615, "longitude": 106.8106,
                  "energy_source": "PLN grid + rooftop PV"},
    },
}


def tukar(*argv):
    return cli.main(["report"] + [str(a) for a in argv])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    return str(a_month(d / "fleet.sqlite"))


@pytest.fixture(scope="module")
def operator_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("op") / "operator.json"
    p.write_text(json.dumps(OPERATOR))
    return str(p)


@pytest.fixture(scope="module")
def out(fleet, operator_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    assert tukar("--db", fleet, *RANGE, "--operator", operator_file, "--out", d) == 0
    return d


def rows(out, name):
    with open(os.path.join(out, name + ".csv"), newline="") as f:
        return list(csv.DictReader(f))


def by(rows, key):
    return {r[key]: r for r in rows}


# == the sections ==================================================================================

def test_demand_counts_completed_swaps_by_hour_and_day_of_week_in_the_operators_timezone(out):
    heat = by(rows(out, "demand_hour_day"), "day")
    assert heat["Mon"]["h08"] == "3"
    assert heat["Tue"]["h19"] == "2"
    assert heat["Tue"]["h07"] == "2"
    assert heat["Wed"]["h01"] == "1"  # 18:00 UTC on Tuesday is 01:00 on Wednesday in Jakarta
    assert sum(int(r["total"]) for r in heat.values()) == len(SWAPS) == 8


def test_swaps_per_day_lists_every_local_day_of_the_range(out):
    days = [(r["date"], int(r["swaps"])) for r in rows(out, "swaps_per_day")]
    # 2026-11-02 00:00 UTC to 2026-11-04 00:00 UTC is 07:00 Monday to 07:00 Wednesday in Jakarta
    assert days == [("2026-11-02", 3), ("2026-11-03", 4), ("2026-11-04", 1)]


def test_demand_by_cabinet(out):
    cabs = by(rows(out, "demand_by_cabinet"), "cabinet")
    assert set(cabs) == {"cab-a", "cab-b"}  # cab-c has nothing in the range
    assert cabs["cab-a"]["swaps"] == "6" and cabs["cab-a"]["swaps_per_day"] == "3.00"
    assert cabs["cab-a"]["share_pct"] == "75.0" and cabs["cab-a"]["busiest_hour"] == "08:00"
    assert cabs["cab-b"]["busiest_hour"] == "07:00"


def test_availability_weighs_each_sample_to_the_next_capped_at_twice_the_median_period(out):
    a = by(rows(out, "availability"), "cabinet")["cab-a"]
    covered = 275 * 600 + 1200  # 276 samples of 10 min; the one before the gap stands for 20 min
    assert a["samples"] == "276" and a["median_period_s"] == "600.0"
    assert a["covered_h"] == "%.2f" % (covered / 3600)
    assert a["available_pct"] == "%.1f" % (100 * (covered - 72 * 600) / covered)
    evens = 144 - 6  # samples with an empty slot: the even ones, less the gap's 6
    assert a["empty_slot_pct"] == "%.1f" % (100 * evens * 600 / covered)
    assert a["mean_ready"] == "%.2f" % (2 * (covered - 72 * 600) / covered)
    b = by(rows(out, "availability"), "cabinet")["cab-b"]
    assert (b["samples"], b["available_pct"], b["empty_slot_pct"]) == ("61", "100.0", "0.0")
    assert b["covered_h"] == "%.2f" % ((60 * 60 + 120) / 3600)  # the last sample: 2 x 60 s


def test_returned_soc_and_swap_duration_histograms(out):
    soc = [(int(r["soc_from"]), int(r["packs"])) for r in rows(out, "returned_soc")]
    assert soc == [(0, 2), (10, 1), (20, 2), (30, 1), (40, 1), (50, 0), (60, 0), (70, 0),
                   (80, 0), (90, 1)]  # 100 % falls in the last bin
    dur = [(r["seconds_from"], r["seconds_to"], int(r["swaps"]))
           for r in rows(out, "swap_duration")]
    assert dur[:4] == [("0", "30", 1), ("30", "60", 3), ("60", "90", 2), ("90", "120", 1)]
    assert dur[-1] == ("600", "", 1)  # 700 s: the open-ended last bin
    assert sum(n for *_, n in dur) == 8
    summary = by(rows(out, "returned_summary"), "measure")
    assert summary["swap duration"]["median"] == "51.5"
    assert summary["returned SoC"]["count"] == "8" and summary["returned SoC"]["max"] == "100.0"


def test_energy_drawn_is_the_meters_positive_steps_and_handed_over_the_swaps_energy(out):
    e = by(rows(out, "energy"), "cabinet")
    assert e["cab-a"]["kwh_drawn"] == "14.300"  # 50 Wh x (199 + 87) steps; the reset counts nothing
    assert e["cab-a"]["counter_resets"] == "1"
    assert e["cab-b"]["kwh_drawn"] == "0.000"
    for cab in ("cab-a", "cab-b"):
        assert e[cab]["kwh_handed_over"] == "%.3f" % (HANDED_OVER_WH[cab] / 1000)
        assert e[cab]["kwh_charges"] == "%.3f" % (CHARGES_WH[cab] / 1000)
    assert e["(all)"]["kwh_handed_over"] == "%.3f" % (sum(HANDED_OVER_WH.values()) / 1000)
    assert e["(all)"]["swaps"] == "8"


def test_each_packs_latest_soh_is_counted_once(out):
    packs = by(rows(out, "packs"), "serial")
    assert packs["P-1"]["soh"] == "95.0"  # the BatteryIn event came after the slot states
    assert packs["P-1"]["cycles"] == "100"
    assert packs["P-9"]["soh"] == "91.0" and packs["Q-1"]["soh"] == "62.0"
    assert "Q-0" not in packs and "X-1" not in packs  # seen only outside the range
    assert "P-2" not in packs  # its only slot state is before the range
    lowest = [r["serial"] for r in rows(out, "packs_lowest_soh")]
    assert lowest[:3] == ["Q-1", "P-4", "Z-1"]
    soh = rows(out, "soh")
    assert sum(int(r["packs"]) for r in soh) == sum(1 for p in packs.values() if p["soh"])
    assert soh[0]["soh_from"] == "50" and soh[-1]["soh_to"] == "100"


def test_retirements_list_when_where_what_and_why(out):
    r = rows(out, "retirements")
    assert [(x["time"], x["cabinet"], x["slot"], x["serial"], x["reason"]) for x in r] == [
        ("2026-11-02T10:00:00+07:00", "cab-a", "4", "P-4", "soh"),
        ("2026-11-03T10:00:00+07:00", "cab-a", "", "P-77", "command")]  # not in a slot
    assert r[0]["soh"] == "68.0" and r[0]["cycles"] == "1500" and r[1]["soh"] == ""


def test_faults_by_slot_and_by_the_pack_in_the_slot_at_the_time(out):
    slots = {(r["cabinet"], r["slot"], r["code"]): int(r["faults"])
             for r in rows(out, "faults_by_slot")}
    assert slots == {("cab-a", "2", "lock_jam"): 2, ("cab-a", "2", "bms_link"): 1,
                     ("cab-a", "3", "door_sensor"): 1, ("cab-a", "cabinet", "cabinet_overtemp"): 1}
    packs = {(r["serial"], r["code"]): int(r["faults"]) for r in rows(out, "faults_by_pack")}
    # P-2 was in slot 2 since before the range; P-9 from the middle on; slot 3 was empty
    assert packs == {("P-2", "lock_jam"): 1, ("P-9", "lock_jam"): 1, ("P-9", "bms_link"): 1}
    rejected = {(r["serial"], r["reason"]): int(r["rejections"])
                for r in rows(out, "rejections_by_pack")}
    assert rejected == {("Z-1", "bms_fault"): 2, ("Z-1", "temperature"): 1,
                        ("unknown", "no_bms"): 1}


def test_the_permen_table_takes_what_the_cabinet_cannot_know_from_the_operator_file(out):
    p = by(rows(out, "permen_esdm_1_2023_art21"), "cabinet")
    a, b = p["cab-a"], p["cab-b"]
    assert (a["operator"], a["operator_id"]) == ("PT Contoh Energi Nusantara", "NIB 9120001234567")
    assert (a["station"], a["address"]) == ("SPBKLU Kemang", "Jl. Kemang Raya 1, Jakarta Selatan")
    assert (a["latitude"], a["longitude"]) == ("-6.261500", "106.810600")
    assert a["battery_types"] == "ref48v, ref60v"
    assert a["battery_brands"] == "ref48v: Contoh Power 48V 30Ah; ref60v: not given"
    assert a["tariff"] == b["tariff"] == "Rp 25.000 per swap"
    assert (a["energy_source"], b["energy_source"]) == ("PLN grid + rooftop PV", "PLN grid")
    assert (b["station"], b["address"], b["latitude"]) == ("not given",) * 3
    energy = by(rows(out, "energy"), "cabinet")
    avail = by(rows(out, "availability"), "cabinet")
    for cab in ("cab-a", "cab-b"):
        assert p[cab]["kwh_used"] == energy[cab]["kwh_drawn"]
        assert p[cab]["kwh_sold"] == energy[cab]["kwh_handed_over"]
        assert p[cab]["availability_pct"] == avail[cab]["available_pct"]
        assert p[cab]["mean_empty_slots"] == avail[cab]["mean_empty"]


# == files and page agree ========================================================================

class _Cells(html.parser.HTMLParser):
    """{table: [{column: text}]} from the page's data-table / data-col cells: a row is a <tr> of a
    table, or a whole table of the one-block-per-row layout (data-row)."""

    def __init__(self):
        super().__init__()
        self.tables, self.only_files, self.imgs = {}, set(), []
        self._table = self._row = self._col = None
        self._block = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._table = self.tables.setdefault(a["data-table"], [])
            self._block = "data-row" in a
            if self._block:
                self._row = {}
                self._table.append(self._row)
        elif tag == "tr" and self._table is not None and not self._block:
            self._row = {}
            self._table.append(self._row)
        elif tag == "td" and self._row is not None:
            self._col = a["data-col"]
            self._row[self._col] = ""
        elif tag == "p" and "data-table-files" in a:
            self.only_files.add(a["data-table-files"])
        elif tag == "img":
            self.imgs.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._col = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._col is not None:
            self._row[self._col] += data


def page(out):
    p = _Cells()
    p.feed(open(os.path.join(out, "index.html"), encoding="utf-8").read())
    p.tables = {k: [r for r in v if r] for k, v in p.tables.items()}
    return p


def test_every_table_has_a_csv_and_a_json_with_the_same_rows_as_the_page(out):
    p = page(out)
    names = [f[:-4] for f in os.listdir(out) if f.endswith(".csv")]
    assert len(names) == 16
    for name in names:
        csv_rows = rows(out, name)
        with open(os.path.join(out, name + ".csv"), newline="") as f:
            header = next(csv.reader(f))
        data = json.load(open(os.path.join(out, name + ".json")))
        assert [c["key"] for c in data["columns"]] == header
        assert len(data["rows"]) == len(csv_rows), name
        for j, c in zip(data["rows"], csv_rows):
            for key, value in j.items():
                if isinstance(value, (int, float)):
                    assert float(c[key]) == value, (name, key)
                else:
                    assert c[key] == ("" if value is None else value), (name, key)
        if name in p.only_files:
            continue
        shown = p.tables.get(name, [])
        assert shown == csv_rows[:report.report_page.HTML_ROWS], name


def test_the_pages_numbers_are_the_csvs_numbers(out):
    p = page(out)
    energy = by(p.tables["energy"], "cabinet")
    assert energy["cab-a"]["kwh_drawn"] == "14.300"
    permen = by(p.tables["permen_esdm_1_2023_art21"], "cabinet")
    assert permen["cab-b"]["tariff"] == "Rp 25.000 per swap"
    assert sorted(p.imgs) == sorted(f for f in os.listdir(out) if f.endswith(".png"))
    text = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "twice the cabinet's median sampling period" in text
    assert "Asia/Jakarta" in text


# == the operator file ============================================================================

def test_without_an_operator_file_what_the_cabinet_cannot_know_is_not_given(fleet, tmp_path):
    assert tukar("--db", fleet, *RANGE, "--out", tmp_path) == 0
    p = by(rows(tmp_path, "permen_esdm_1_2023_art21"), "cabinet")["cab-a"]
    for key in ("operator", "operator_id", "station", "address", "latitude", "longitude",
                "tariff", "energy_source"):
        assert p[key] == "not given", key
    assert p["battery_brands"] == "ref48v: not given; ref60v: not given"
    heat = by(rows(tmp_path, "demand_hour_day"), "day")  # hours in UTC now
    assert heat["Mon"]["h01"] == "3" and heat["Tue"]["h18"] == "1"


@pytest.mark.parametrize("change, message", [
    ({"tarif": "x"}, "tarif: unknown key (known: operator, timezone, tariff"),
    ({"timezone": "Asia/Jakarat"}, "timezone: unknown timezone 'Asia/Jakarat'"),
    ({"tariff": 25000}, "tariff: a non-empty text, not 25000"),
    ({"operator": {"name": "PT X", "npwp": "1"}}, "operator.npwp: unknown key (known: name, id)"),
    ({"brands": {"ref48v": ""}}, "brands.ref48v: a non-empty text"),
    ({"cabinets": {"cab-a": {"latitude": -96.2, "longitude": 106.8}}},
     "cabinets.cab-a.latitude: a number from -90 to 90, not -96.2"),
    ({"cabinets": {"cab-a": {"latitude": -6.2}}}, "cabinets.cab-a: give latitude and longitude"),
    ({"cabinets": {"cab-a": {"adress": "Jl. X"}}}, "cabinets.cab-a.adress: unknown key"),
    ({"cabinets": {"Cab A": {}}}, "cabinets.Cab A: not a cabinet id"),
    ({"cabinets": ["cab-a"]}, "cabinets: an object {cabinet id: {...}}"),
])
def test_a_wrong_operator_file_is_refused_naming_the_key(fleet, tmp_path, capsys, change, message):
    op = dict(OPERATOR, **change)
    (tmp_path / "op.json").write_text(json.dumps(op))
    assert tukar("--db", fleet, *RANGE, "--operator", tmp_path / "op.json", "--out",
                 tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_an_operator_file_that_is_not_json_or_missing_is_refused(fleet, tmp_path, capsys):
    (tmp_path / "op.json").write_text('{"tariff": "Rp 1",}')
    assert tukar("--db", fleet, *RANGE, "--operator", tmp_path / "op.json", "--out", tmp_path) == 2
    assert "op.json: not JSON (" in capsys.readouterr().err
    assert tukar("--db", fleet, *RANGE, "--operator", tmp_path / "none.json", "--out",
                 tmp_path) == 2
    assert "none.json: cannot read it (No such file or directory)" in capsys.readouterr().err


# == errors =======================================================================================

def error_of(capsys, *argv):
    code = tukar(*argv)
    cap = capsys.readouterr()
    assert code != 0 and cap.err.count("\n") == 1, cap
    return cap.err


def test_an_empty_range_says_what_range_the_database_has(fleet, tmp_path, capsys):
    err = error_of(capsys, "--db", fleet, "--from", "2025-01-01", "--to", "2025-02-01", "--out",
                   tmp_path)
    assert "no data from 2025-01-01T00:00:00Z to 2025-02-02T00:00:00Z" in err  # all of 1 Feb
    assert "the database holds 2026-11-01T00:00:00Z to 2026-11-04T00:01:00Z" in err
    err = error_of(capsys, "--db", fleet, *RANGE, "--cabinet", "cab-c", "--out", tmp_path)
    assert "cabinet cab-c holds 2026-11-01T00:00:00Z to 2026-11-01T00:00:00Z" in err


def test_from_after_to_is_refused(fleet, tmp_path, capsys):
    err = error_of(capsys, "--db", fleet, "--from", "2026-11-03", "--to", "2026-11-02T12:00",
                   "--out", tmp_path)
    assert "--from 2026-11-03T00:00:00Z is not before --to 2026-11-02T12:00:00Z" in err
    err = error_of(capsys, "--db", fleet, "--from", "yesterday", "--to", "2026-11-02",
                   "--out", tmp_path)
    assert "--from 'yesterday': not an ISO date or date-time" in err


def test_a_missing_or_unreachable_database_is_named(tmp_path, capsys):
    err = error_of(capsys, "--db", tmp_path / "nope.sqlite", *RANGE, "--out", tmp_path)
    assert "database %s: no such file" % (tmp_path / "nope.sqlite") in err
    err = error_of(capsys, "--db", "postgresql://fleet:secret@127.0.0.1:1/fleet", *RANGE,
                   "--out", tmp_path)
    assert "cannot reach the database postgresql://fleet:***@127.0.0.1:1/fleet" in err
    assert "secret" not in err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    err = error_of(capsys, "--db", tmp_path / "junk.sqlite", *RANGE, "--out", tmp_path)
    assert "junk.sqlite: not a SQLite database" in err


def test_a_database_without_the_schema_is_refused(tmp_path, capsys):
    db = sqlite3.connect(tmp_path / "other.sqlite")
    db.execute("CREATE TABLE events (id TEXT)")
    db.close()
    err = error_of(capsys, "--db", "sqlite:///%s" % (tmp_path / "other.sqlite"), *RANGE,
                   "--out", tmp_path)
    assert "has no fleet schema (missing or incomplete: events, telemetry, slot_states, " \
           "cabinet_states, cabinets)" in err


def test_an_unknown_cabinet_is_refused(fleet, tmp_path, capsys):
    err = error_of(capsys, "--db", fleet, *RANGE, "--cabinet", "cab-z", "--out", tmp_path)
    assert "cabinet cab-z is not in the database (it has: cab-a, cab-b, cab-c)" in err


# == the time filter and --cabinet =================================================================

def test_from_and_to_are_utc_unless_they_carry_an_offset(fleet, tmp_path):
    assert report.parse_time("2026-11-02", "--from") == T0
    assert report.parse_time("2026-11-03", "--to", end=True) == T1
    assert report.parse_time("2026-11-02T07:00+07:00", "--from") == T0
    assert report.parse_time("2026-11-02T00:00", "--to", end=True) == T0
    # The first Monday morning only, with offsets: the three 08:xx swaps of cab-a in Jakarta.
    assert tukar("--db", fleet, "--from", "2026-11-02T08:00+07:00", "--to",
                 "2026-11-02T09:00+07:00", "--out", tmp_path) == 0
    assert [r["swaps"] for r in rows(tmp_path, "demand_by_cabinet")] == ["3", "0"]


def test_cabinet_limits_every_section(fleet, tmp_path):
    assert tukar("--db", fleet, *RANGE, "--cabinet", "cab-b", "--out", tmp_path) == 0
    for name in ("demand_by_cabinet", "availability", "permen_esdm_1_2023_art21"):
        assert [r["cabinet"] for r in rows(tmp_path, name)] == ["cab-b"], name
    assert sum(int(r["swaps"]) for r in rows(tmp_path, "swaps_per_day")) == 2
    assert [r["cabinet"] for r in rows(tmp_path, "energy")] == ["cab-b", "(all)"]
    assert {r["serial"] for r in rows(tmp_path, "packs")} == {"R-6", "R-7", "O-6", "O-7", "Q-1"}
    assert rows(tmp_path, "faults_by_slot") == [] and rows(tmp_path, "retirements") == []


def test_a_cabinet_asked_for_without_data_in_the_range_reads_so(fleet, tmp_path):
    assert tukar("--db", fleet, *RANGE, "--cabinet", "cab-a", "--cabinet", "cab-c", "--out",
                 tmp_path) == 0
    c = by(rows(tmp_path, "permen_esdm_1_2023_art21"), "cabinet")["cab-c"]
    assert (c["availability_pct"], c["mean_empty_slots"]) == ("no telemetry", "no telemetry")
    assert (c["battery_types"], c["kwh_used"], c["kwh_sold"]) == ("none seen", "0.000", "0.000")
    assert by(rows(tmp_path, "demand_by_cabinet"), "cabinet")["cab-c"]["swaps"] == "0"


def test_an_output_directory_that_cannot_be_written_is_named(fleet, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a directory")
    err = error_of(capsys, "--db", fleet, *RANGE, "--out", tmp_path / "taken")
    assert "cannot write into %s: File exists" % (tmp_path / "taken") in err


def test_the_progress_bar_shows_only_when_asked_or_on_a_terminal(fleet, tmp_path, capsys):
    assert tukar("--db", fleet, *RANGE, "--out", tmp_path) == 0
    assert capsys.readouterr().out == "tukar report: wrote %s (16 tables, 7 plots)\n" % (
        tmp_path / "index.html")
    assert tukar("--db", fleet, *RANGE, "--out", tmp_path, "--progress") == 0
    shown = capsys.readouterr().out
    assert "plot: soh" in shown and "page and tables" in shown


# == the page in a browser ======================================================================

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def pixels(png):
    from matplotlib import image

    return image.imread(png)[..., :3]


def variance(png):
    return float(pixels(png).var())


def coloured(png):
    """The share of clearly coloured pixels: bars and heat map cells, not axes, text or paper."""
    px = pixels(png)
    return float(((px.max(axis=2) - px.min(axis=2)) > 0.25).mean())


def test_every_plot_draws_its_data(out):
    plots = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert len(plots) == 7
    for f in plots:
        # an empty set of axes has a variance near 0.009, but nothing coloured
        assert variance(os.path.join(out, f)) > 0.002, f
        assert coloured(os.path.join(out, f)) > 0.01, f


def test_a_plot_without_data_says_so(fleet, tmp_path):
    # the first hour: telemetry and slot states, no swap yet
    assert tukar("--db", fleet, "--from", "2026-11-02T00:00", "--to", "2026-11-02T00:59",
                 "--out", tmp_path) == 0
    for f in ("returned_soc.png", "swap_duration.png"):
        assert variance(tmp_path / f) > 0.0005, f  # the words, on a blank figure
        assert coloured(tmp_path / f) == 0, f
    assert "None in this range." in (tmp_path / "index.html").read_text()


def test_a_browser_renders_the_page(out, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: apt-get install chromium (make needs and .ci/run "
                    "install it)", pytrace=False)
    shot = tmp_path / "page.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--user-data-dir=%s" % (tmp_path / "u"),
                        "--screenshot=%s" % shot, "--window-size=1280,4000",
                        "file://%s" % os.path.join(out, "index.html")],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists(), r.stderr
    assert variance(shot) > 0.01 and coloured(shot) > 0.01  # text, tables and the plots
    if os.environ.get("TUKAR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["TUKAR_KEEP_SCREENSHOT"])
