"""From the cabinet to a report a person reads: a simulated swap station with riders arriving in
its morning peak (`tukar sim --riders`), the fleet's messages stored by two collectors, one into
SQLite and one into a real PostgreSQL (`tukar collect`), and `tukar report` on each database. The
report's totals must equal what the simulator did (its ledger): swaps, retirements and the energy
the chargers put into packs, and both databases must give the same report."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from brokers import mqtt_broker  # noqa: F401  (a fixture)
from databases import postgres_server, postgres_url  # noqa: F401  (fixtures)

from tukar_tools import fleetdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `make test` runs the morning peak's first half hour (one 12-slot cabinet runs at about 60 times
# real time at best: docs/sim.md). A whole simulated day, the same checks:
#   TUKAR_FLEET_START=2026-03-02T00:00:00+07:00 TUKAR_FLEET_SPEED=60 TUKAR_FLEET_REAL_S=1440 \
#       .venv/bin/python -m pytest tests/test_fleet_e2e.py
START = os.environ.get("TUKAR_FLEET_START", "2026-03-02T07:00:00+07:00")
SPEED = float(os.environ.get("TUKAR_FLEET_SPEED", "30"))
REAL_S = float(os.environ.get("TUKAR_FLEET_REAL_S", "60"))
DAY = ("2026-03-02T00:00:00+07:00", "2026-03-03T00:00:00+07:00")


def _collector(port, prefix, db, name, log):
    return subprocess.Popen(
        [sys.executable, "-m", "tukar_tools.cli", "collect", "--broker", "127.0.0.1:%d" % port,
         "--prefix", prefix, "--db", db, "--client-id", name, "--stats-every", "5"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def _count(db, sql):
    with fleetdb.connect(db, migrate=False) as d:
        return d.query(sql, ())[0][0]


def energy_swaps(rep):
    return {row["cabinet"]: row for row in rep["energy"]}["sim-1"]["swaps"]


def _report(db, out):
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "report", "--db", db,
                        "--from", DAY[0], "--to", DAY[1], "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return {p.stem: list(csv.DictReader(open(p))) for p in out.glob("*.csv")}


@pytest.mark.flaky(reruns=1)  # real time: a sped-up simulation on a loaded machine
@pytest.mark.timeout(REAL_S + 600)  # the run, the collectors' drain and the two reports
def test_a_sped_up_morning_peak_is_collected_into_both_databases_and_reported_as_simulated(
        mqtt_broker, postgres_url, tmp_path):  # noqa: F811
    prefix = "fleet%d" % (os.getpid() % 100000)
    lite = str(tmp_path / "fleet.sqlite")
    logs = [open(tmp_path / ("collect-%s.log" % k), "w") for k in ("lite", "pg")]
    collectors = [_collector(mqtt_broker.port, prefix, lite, prefix + "-lite", logs[0]),
                  _collector(mqtt_broker.port, prefix, postgres_url, prefix + "-pg", logs[1])]
    try:
        time.sleep(2)  # subscribed before the cabinet's first message
        r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                            "127.0.0.1:%d" % mqtt_broker.port, "--no-monitor", "--prefix", prefix,
                            "--state-dir", str(tmp_path / "sim"), "--fill", "10", "--seed", "5",
                            "--riders", "40", "--speed", "%g" % SPEED, "--start", START,
                            "--duration", str(REAL_S)],
                           cwd=ROOT, capture_output=True, text=True, timeout=REAL_S + 180)
        assert r.returncode == 0, r.stderr[-3000:]
        run = json.loads((tmp_path / "sim" / "riders.json").read_text())
        ledger = run["totals"]
        # (shown with -s: how much was simulated; a loaded host slows the sim rather than skip)
        print("\nfleet e2e: runs %s, totals %s" % (json.dumps(run["runs"]), json.dumps(ledger)))
        assert ledger["swaps"] >= 3, ledger
        # Both collectors have stored every swap before they are stopped.
        deadline = time.monotonic() + 30
        want = ledger["swaps"]
        while time.monotonic() < deadline:
            got = [_count(db, "SELECT COUNT(*) FROM events WHERE type = 'SwapCompleted'")
                   for db in (lite, postgres_url)]
            if got == [want, want]:
                break
            time.sleep(0.5)
        assert got == [want, want], (got, ledger)
    finally:
        for c in collectors:
            c.send_signal(signal.SIGINT)
        for c in collectors:
            c.wait(timeout=30)
        for f in logs:
            f.close()
    reports = [_report(db, tmp_path / name) for db, name in ((lite, "rep-lite"),
                                                             (postgres_url, "rep-pg"))]
    assert reports[0] == reports[1]  # SQLite and PostgreSQL: the same report, to the digit
    rep = reports[0]
    by_cab = {row["cabinet"]: row for row in rep["demand_by_cabinet"]}
    assert int(by_cab["sim-1"]["swaps"]) == int(energy_swaps(rep)) == ledger["swaps"]
    # every returned pack's SoC (from its BatteryIn), and the energy handed over to the riders
    assert sum(int(row["packs"]) for row in rep["returned_soc"]) == ledger["swaps"]
    assert float({row["cabinet"]: row for row in rep["energy"]}["sim-1"]["kwh_handed_over"]) > 0
    retired = sum(ledger["retired"].values())
    assert len(rep["retirements"]) == retired
    energy = {row["cabinet"]: row for row in rep["energy"]}["sim-1"]
    # The cabinet's meter (telemetry, every 10th message) against the simulated chargers'
    # energy: the meter misses what was drawn before its first and after its last sample.
    drawn_kwh = float(energy["kwh_drawn"])
    assert 0 < drawn_kwh <= ledger["energy_wh"] / 1000 * 1.02, (energy, ledger["energy_wh"])
    charged_kwh = float(energy["kwh_charges"])
    assert 0 < charged_kwh <= ledger["energy_wh"] / 1000 * 1.02
