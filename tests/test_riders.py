"""`tukar sim --riders`: the arrival profile (peaks at 07-09 and 17-19, few riders at night), the packs
riders bring (SoC, SoH, cycles, the faulty and hot few), the fleet they come from, the ledger, the
cabinets' wall clock on simulated time, and riders swapping end to end over a real broker with the
ledger agreeing with what the broker carried."""
import collections
import json
import os
import pathlib
import random
import subprocess
import sys
import time
import types

import pytest
from brokers import mqtt_broker  # noqa: F401 (a fixture)

from tukar_tools import riders, simworld
from tukar_tools.riders import (PROFILE, Fleet, Ledger, arrivals, hour_of, new_pack, parse_start,
                                visit)
from tukar_tools.scenario import Observer

ROOT = pathlib.Path(__file__).resolve().parents[1]
MONDAY = parse_start("2026-03-02T00:00:00Z")[0]
DAY = 86400


def arrivals_until(seed, rate_h, days, start=MONDAY, tz_s=0):
    out = []
    for t in arrivals(random.Random(seed), rate_h, start, tz_s):
        if t >= start + days * DAY:
            return out
        out.append(t)


# == the arrival profile =====================================================================
def test_the_profile_is_relative_to_the_days_mean_rate():
    assert len(PROFILE) == 24
    assert sum(PROFILE) / 24 == pytest.approx(1.0)


def test_rate_is_the_mean_riders_per_hour_over_a_day():
    ts = arrivals_until(1, 10, 60)
    assert len(ts) == pytest.approx(10 * 24 * 60, rel=0.03)  # Poisson: 1 sd is 0.8 %


def test_peak_hours_get_several_times_the_riders_of_the_night():
    per_hour = collections.Counter(hour_of(t) for t in arrivals_until(1, 10, 60))
    for peak in (7, 8, 17, 18):
        for night in (1, 2, 3, 4):
            assert per_hour[peak] > 10 * per_hour[night], (peak, night, per_hour)
    for peak in (7, 8, 17, 18):
        assert per_hour[peak] > 2 * per_hour[13]  # midday is ordinary


def test_the_same_seed_gives_the_same_riders():
    assert arrivals_until(7, 6, 2) == arrivals_until(7, 6, 2)
    assert arrivals_until(7, 6, 2) != arrivals_until(8, 6, 2)


def test_an_offset_in_start_puts_the_peaks_in_that_local_time():
    start, tz_s = parse_start("2026-03-02T00:00:00+07:00")
    assert tz_s == 7 * 3600 and start == MONDAY - 7 * 3600
    per_hour = collections.Counter(hour_of(t, tz_s) for t in arrivals_until(2, 10, 20, start, tz_s))
    assert per_hour[8] > 10 * per_hour[3]
    utc = collections.Counter(hour_of(t) for t in arrivals_until(2, 10, 20, start, tz_s))
    assert utc[1] > 10 * utc[20]  # 08:00+07 is 01:00 UTC; 03:00+07 is 20:00 UTC


def test_start_without_an_offset_is_utc_and_a_bad_one_is_refused():
    assert parse_start("2026-03-02T07:30") == (MONDAY + 7.5 * 3600, 0)
    assert parse_start("2026-03-02") == (MONDAY, 0)
    with pytest.raises(ValueError):
        parse_start("monday")


# == the packs riders bring ==================================================================
def test_returned_packs_are_mostly_at_5_to_40_percent_and_a_few_faulty_or_hot():
    rnd = random.Random(3)
    seen = [visit(rnd, new_pack(rnd, "F-%04d" % i)) for i in range(20000)]
    low = sum(1 for b in seen if 5 <= b["soc"] <= 40)
    assert low / len(seen) > 0.85
    assert any(b["soc"] > 40 for b in seen)
    assert all(1 <= b["soc"] <= 100 for b in seen)
    faulty = [b for b in seen if b["faults"]]
    hot = [b for b in seen if b["temp_c"] > 50]
    assert 0.01 < len(faulty) / len(seen) < 0.035
    assert 0.01 < len(hot) / len(seen) < 0.035
    assert all(52 <= b["temp_c"] <= 58 for b in hot)  # above handling (50), below quarantine (60)
    assert all(25 <= b["temp_c"] <= 38 for b in seen if b not in hot)
    for b in seen:  # every one is an `insert` battery the world accepts
        simworld.battery_spec(b)


def test_fleet_packs_are_mostly_healthy_with_a_worn_tail():
    rnd = random.Random(4)
    packs = [new_pack(rnd, "F-%04d" % i) for i in range(20000)]
    soh = [p["soh"] for p in packs]
    assert sum(1 for s in soh if 85 <= s <= 100) / len(soh) > 0.85
    assert 0.01 < sum(1 for s in soh if s < 70) / len(soh) < 0.06  # retired by the cabinet
    cycles = [p["cycles"] for p in packs]
    assert min(cycles) >= 50 and max(cycles) <= 2500
    assert 0.01 < sum(1 for c in cycles if c > 2000) / len(cycles) < 0.08


def test_a_pack_handed_out_comes_back_emptier_and_one_cycle_older():
    rnd = random.Random(5)
    fleet = Fleet(rnd, size=10, now=MONDAY)
    fleet.taken({"serial": "F-0003", "soc": 97.0, "soh": 93, "cycles": 400, "profile": "ref48v"},
                MONDAY)
    p = fleet.packs["F-0003"]
    before = (p["cycles"], p["soh"])
    b = visit(rnd, p)
    assert b["serial"] == "F-0003" and b["soc"] < 92
    assert b["cycles"] == before[0] + 1 and p["soh"] < before[1]
    again = visit(rnd, p)  # refused and brought again: no new cycle, not fuller
    assert again["cycles"] == b["cycles"] and again["soc"] < b["soc"]


def test_riders_bring_packs_out_for_long_not_one_just_handed_out():
    fleet = Fleet(random.Random(6), size=400, now=MONDAY)
    fleet.taken({"serial": "F-0001", "soc": 99, "soh": 99, "cycles": 60}, MONDAY + 3 * DAY)
    picks = []
    for _ in range(2000):
        p = fleet.pick(MONDAY + 3 * DAY + 600)
        picks.append(p["serial"])
        fleet.back(p)
    assert picks.count("F-0001") < 5
    assert len(set(picks)) > 300


def test_a_pack_on_its_way_to_a_cabinet_is_not_brought_by_another_rider():
    fleet = Fleet(random.Random(7), size=3, now=MONDAY)
    got = {fleet.pick(MONDAY)["serial"] for _ in range(3)}
    assert got == {"F-0001", "F-0002", "F-0003"}
    assert fleet.pick(MONDAY)["serial"] == "F-0004"  # every pack busy: the operator buys one


def test_a_retired_pack_leaves_the_fleet_and_a_new_one_is_bought():
    fleet = Fleet(random.Random(8), size=5, now=MONDAY)
    fleet.stored("F-0002", "sim-1")
    fleet.retired("F-0002", MONDAY)
    assert fleet.packs["F-0002"]["at"] == "retired"
    assert fleet.packs["F-0006"]["soh"] == 100 and fleet.bought == 1
    assert all(fleet.pick(MONDAY)["serial"] != "F-0002" for _ in range(5))


def test_the_world_takes_a_packs_cycle_count():
    assert simworld.battery_spec({"serial": "F-1", "cycles": 2100})["cycles"] == 2100
    with pytest.raises(simworld.WorldError):
        simworld.battery_spec({"serial": "F-1", "cycles": -1})


# == the ledger ==============================================================================
def fake_sim(slots=12):
    phys = types.SimpleNamespace(energy_wh=[0.0] * slots)
    cab = types.SimpleNamespace(id="sim-1", n=slots, phys=phys)
    return types.SimpleNamespace(cabinets=[cab], prefix="t", speed=1.0, host="127.0.0.1", port=1,
                                 key=b"k" * 16)


def event(n, etype, **fields):
    return json.dumps(dict(fields, id="sim-1-1-%d" % n, type=etype, ts=None, up_ms=0, seq=n))


def test_the_ledger_counts_each_event_once_and_only_the_riders_sessions(tmp_path):
    r = riders.Riders(fake_sim(), 6, state_dir=str(tmp_path))
    feed = [
        event(1, "SwapStarted", session="s-1", request_id="ride-x-1", id_token="rider-1", slot=3),
        event(2, "SwapCompleted", session="s-1", request_id="ride-x-1"),
        event(2, "SwapCompleted", session="s-1", request_id="ride-x-1"),  # delivered twice
        event(3, "SwapStarted", session="s-2", request_id="ops-7", id_token="ops", slot=4),
        event(4, "SwapCompleted", session="s-2", request_id="ops-7"),  # not a rider's
        event(5, "SwapStarted", session="s-3", request_id="ride-x-2", id_token="rider-2", slot=5),
        event(6, "BatteryRejected", session="s-3", slot=5, reason="temperature", battery=None),
        event(7, "SwapAborted", session="s-3", request_id="ride-x-2", reason="rejected"),
        event(8, "BatteryRetired", slot=9, serial="F-0004", reason="cycles", battery=None),
        event(9, "Fault", slot=2, code="lock_jam", severity="error"),
    ]
    for payload in feed:
        r._dispatch("t/sim-1/event", payload)
    c = r.ledger.cabinets["sim-1"]
    assert c["swaps"] == 1
    assert c["rejected"] == {"temperature": 1} and c["aborted"] == {"rejected": 1}
    assert c["retired"] == {"cycles": 1} and c["faults"] == {"lock_jam": 1}
    assert c["seen"]["SwapCompleted"] == 2
    assert r.desks["sim-1"].collect == {9}  # a technician will take it away
    assert r.fleet.packs["F-0004"]["at"] == "retired"


def test_the_ledger_file_has_totals_per_cabinet_and_the_energy_and_carries_on(tmp_path):
    sim = fake_sim()
    r = riders.Riders(sim, 6, state_dir=str(tmp_path))
    r.ledger.bump("sim-1", "arrivals", n=5)
    r.ledger.bump("sim-1", "swaps", n=3)
    r.ledger.bump("sim-1", "turned_away", "no_battery_available", n=2)
    sim.cabinets[0].phys.energy_wh[0] = 120.5
    sim.cabinets[0].phys.energy_wh[11] = 0.25
    r.save()
    d = json.loads((tmp_path / "riders.json").read_text())
    assert d["version"] == 1
    assert d["totals"]["swaps"] == 3 and d["totals"]["turned_away"] == {"no_battery_available": 2}
    assert d["totals"]["energy_wh"] == 120.75
    assert d["cabinets"]["sim-1"]["energy_wh_slots"][0] == 120.5
    assert d["fleet"]["packs"] == 400
    assert json.loads((tmp_path / "fleet.json").read_text())["packs"][0]["serial"] == "F-0001"
    # A later run on the same state directory: counts and energy go on from there.
    sim2 = fake_sim()
    r2 = riders.Riders(sim2, 6, state_dir=str(tmp_path))
    r2.ledger.bump("sim-1", "swaps")
    sim2.cabinets[0].phys.energy_wh[0] = 10.0
    r2.save()
    d = json.loads((tmp_path / "riders.json").read_text())
    assert d["totals"]["swaps"] == 4 and d["totals"]["arrivals"] == 5
    assert d["totals"]["energy_wh"] == 130.75


def test_the_physics_integrates_voltage_times_current_into_each_slots_energy():
    from tukar_tools.rig import Pack, Physical
    phys = Physical("tukar-12-wroom")
    phys.add_pack(4, Pack("E-1", phys.profiles["ref48v"], soc=30, soh=100))
    phys.charger_ma = lambda i: 10000 if i == 3 else 0  # the charger on, whatever the firmware says
    pack = phys.packs[3]
    v0 = pack.voltage_mv()
    for now in range(0, 600001, 50):  # ten minutes at 10 A
        phys.physics(now)
    v1 = pack.voltage_mv()
    want = (v0 + v1) / 2 / 1000 * 10 * (600 / 3600)
    assert phys.energy_wh[3] == pytest.approx(want, rel=0.002)
    assert sum(phys.energy_wh) == phys.energy_wh[3]


# == the cabinets' wall clock ================================================================
def test_the_wall_clock_is_the_start_plus_the_simulated_time():
    import hosttime
    old = hosttime.current()
    clock = hosttime.install(hosttime.SimClock(manual=True, wall_start=MONDAY))
    try:
        clock.advance(3 * 3600 * 1000)
        assert hosttime.wall_s() == MONDAY + 3 * 3600
    finally:
        hosttime.install(old)


# == end to end ==============================================================================
SPEED = 10
START = "2026-03-02T08:00:00Z"


@pytest.mark.flaky(reruns=2)  # a real-time run of the whole cabinet on a shared machine
def test_riders_swap_over_mqtt_and_the_ledger_agrees_with_the_broker(mqtt_broker, tmp_path):
    prefix = "riders%d" % (os.getpid() % 100000)
    obs = Observer("127.0.0.1", mqtt_broker.port, prefix, "sim-1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                        "127.0.0.1:%d" % mqtt_broker.port, "--no-monitor", "--prefix", prefix,
                        "--state-dir", str(tmp_path), "--fill", "10", "--seed", "2",
                        "--riders", "90", "--speed", str(SPEED), "--start", START,
                        "--duration", "22"], cwd=ROOT, capture_output=True, text=True, timeout=90)
    real_s = time.monotonic() - t0
    time.sleep(0.5)  # the last messages on their way to the observer
    obs.close()
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    ledger = json.loads((tmp_path / "riders.json").read_text())
    t = ledger["totals"]
    done = [e for e in obs.events if e["type"] == "SwapCompleted"]
    assert len(done) >= 3, (t, r.stderr)
    assert t["swaps"] == len(done)
    assert t["rejected"] == dict(collections.Counter(
        e["reason"] for e in obs.events if e["type"] == "BatteryRejected"))
    assert t["arrivals"] >= t["swaps"] + sum(t["turned_away"].values())
    assert all(e["id_token"].startswith("rider-") for e in done)
    assert len({e["request_id"] for e in done}) == len(done)
    assert "riders: %d riders came, %d swaps" % (t["arrivals"], t["swaps"]) in r.stderr
    # The events carry the simulated date: 08:00 on the start day, minutes later at most.
    start = parse_start(START)[0]
    stamped = [e["ts"] for e in obs.events if e["ts"] is not None]
    assert all(start <= ts <= start + real_s * SPEED for ts in stamped)
    assert all(e["ts"] is not None and hour_of(e["ts"]) == 8 for e in done)
    # The chargers' energy: at least what the firmware measured in the charges that ended.
    measured = sum(e["energy_wh"] for e in obs.events if e["type"] == "ChargeStopped")
    assert 0 < t["energy_wh"]
    assert measured <= t["energy_wh"] * 1.02


def test_a_stalled_host_holds_the_sped_up_clock_instead_of_jumping(monkeypatch):
    import hosttime
    real = [100.0]
    monkeypatch.setattr(hosttime, "_time", types.SimpleNamespace(
        monotonic=lambda: real[0], time=lambda: MONDAY, sleep=lambda s: None))
    clock = hosttime.SimClock(speed=100, wall_start=MONDAY)
    assert clock.lead(60) == 0
    real[0] += 0.0005
    assert clock.now_ms() == 50
    real[0] += 2.0  # the host stalls for two seconds: 200 simulated seconds at speed 100
    assert clock.now_ms() == 60  # the clock stands at the limit, past no deadline
    assert clock.lead(60) == 200_050 - 60  # dropped, not taken back: never earlier than 60
    assert clock.now_ms() == 60
    real[0] += 0.0003
    assert clock.now_ms() == 90
    hosttime.install(clock)  # (the real clock is back after each test: conftest)
    assert hosttime.wall_s() == pytest.approx(MONDAY + 0.09)
