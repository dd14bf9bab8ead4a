"""The simulator end to end, through MQTT only, as an outside tool would use it: `tukar sim` in
its own process on a real broker, a swap driven with sim/cmd and signed commands, events,
retained states and sim/world checked against each other; power cuts at every phase of a swap;
every shipped scenario. Each runs against both runtimes: the firmware in CPython (sped up) and in
the 32-bit MicroPython unix port with the production freeze (real time)."""
import json
import pathlib
import subprocess
import sys
import threading
import time

import pytest
from brokers import mqtt_broker  # noqa: F401 (a fixture)

from tukar_tools import schemas
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Observer, Runner, ScenarioFailed
from tukar_tools.sign import parse_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.json"))
KEY = parse_key(SIM_KEY_HEX)
SPEED = 2.0  # the CPython runtime's; MicroPython runs on its own clock
RUNTIMES = ("cpython", "micropython")
HEAP = "192K"  # make bench prints the smallest heap each phase needs


def runtime_args(runtime):
    if runtime == "micropython":
        return ["--runtime", "micropython", "--heap", HEAP]
    return []


def speed_of(runtime):
    return 1.0 if runtime == "micropython" else SPEED


def start_sim(port, state_dir, *extra, runtime="cpython"):
    cmd = [sys.executable, "-m", "tukar_tools.cli", "sim", "--broker", "127.0.0.1:%d" % port,
           "--no-monitor", "--state-dir", str(state_dir), "--speed", str(speed_of(runtime)),
           *runtime_args(runtime), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop_sim(proc):
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return err


@pytest.fixture(params=RUNTIMES)
def sim(mqtt_broker, tmp_path, request):
    prefix = "e2e%d" % (abs(hash(request.node.name)) % 100000)
    proc = start_sim(mqtt_broker.port, tmp_path, "--prefix", prefix, "--fill", "6",
                     runtime=request.param)
    runner = Runner("127.0.0.1", mqtt_broker.port, prefix, "sim-1", KEY, speed_of(request.param),
                    out=lambda line: None)
    try:
        runner.step({"do": "expect_status", "value": "online", "within_s": 30})
        runner.step({"do": "expect_state", "match": {"ready": {"$gte": 2}, "session": None},
                     "within_s": 30})
        telemetry_every_10_s(runner)
        yield runner
    finally:
        runner.obs.close()
        err = stop_sim(proc)
        assert "Traceback" not in err, err
        assert "firmware process ended" not in err and "watchdog" not in err, err


def boot_count(event):
    return int(event["id"].rsplit("-", 2)[1])  # ids are C-<boot count>-<counter>


def telemetry_every_10_s(r):
    """set_config telemetry_period_s=10, so a test sees telemetry (and validates it) in seconds,
    not after the default 60. The running telemetry task is already asleep for the old period, so
    the new one applies from the next boot: a power cycle, once the config is persisted."""
    r.step({"do": "cmd", "cmd": "set_config", "args": {"telemetry_period_s": 10}})
    time.sleep(1 / r.speed)
    r.step({"do": "world", "action": "power_cycle"})
    r.wait_for(lambda: next((e for e in r.obs.events if e["type"] == "Boot"
                             and boot_count(e) >= 2), None), 30, "Boot after the power cycle")
    r.cursor = len(r.obs.events)  # the tests' expectations start after this boot
    r.step({"do": "expect_status", "value": "online", "within_s": 30})
    r.step({"do": "expect_state", "match": {"ready": {"$gte": 2}, "session": None},
            "within_s": 30})


NOT_RETAINED = ("event", "telemetry", "ack", "sim/ack")
SENT_BY_THE_TEST = ("cmd", "sim/cmd")
CABINET_TOPICS = {"status", "info", "state", "slot/N/state", "event", "ack", "sim/world",
                  "sim/ack"}


def every_payload_valid(obs, kinds=CABINET_TOPICS):
    """Every message the cabinet and the simulator published, as the observer saw it, validates
    against its topic's schema; the non-retained ones were not retained; every topic in `kinds`
    was seen. Returns the payloads by kind."""
    seen = {}
    for topic, payload, retained in list(obs.records):
        kind = topic[len(obs.base):]
        kind = "slot/N/state" if kind.startswith("slot/") else kind
        if kind in SENT_BY_THE_TEST:
            continue
        errors = schemas.errors(topic, payload)
        assert errors == [], (topic, payload, errors)
        if kind in NOT_RETAINED:
            assert not retained, (topic, payload)
        seen.setdefault(kind, []).append(json.loads(payload) if kind != "status" else payload)
    assert set(kinds) <= set(seen), (sorted(kinds), sorted(seen))
    return seen


def telemetry_valid(r):
    """Wait for telemetry (every 10 s after telemetry_every_10_s), then validate everything seen."""
    r.wait_for(lambda: any(t.endswith("/telemetry") for t, _, _ in list(r.obs.records)) or None,
               30, "telemetry")
    seen = every_payload_valid(r.obs, CABINET_TOPICS | {"telemetry"})
    for t in seen["telemetry"]:
        assert t["slots"] == sorted(t["slots"]) and len(t["slots"]) <= 12
        assert all(len(t[c]) == len(t["slots"]) for c in ("soc", "temp_c", "voltage_v",
                                                          "current_a"))
        assert 2 <= len(t["slots"])  # --fill 6: at least the dispensable batteries are in
    ups = [t["uptime_s"] for t in seen["telemetry"]]
    for a, b in zip(ups, ups[1:]):
        assert b < a or 9 <= b - a <= 11, ups  # every 10 s, or a new boot
    return seen


def swap_until(r, phase):
    """Drive a swap with world actions and a signed command up to `phase`."""
    ack = r.step({"do": "cmd", "cmd": "start_swap", "args": {"id_token": "rider-e2e"},
                  "save": {"slot_in": "slot", "session": "session"}})
    r.step({"do": "expect_slot", "slot": ack["slot"], "match": {"lock": "unlocked"}, "within_s": 5})
    if phase == "awaiting_battery":
        return
    r.step({"do": "world", "action": "insert", "slot": ack["slot"],
            "battery": {"serial": "E2E-PACK", "soc": 14, "soh": 90, "temp_c": 28}})
    r.step({"do": "world", "action": "close_door", "slot": ack["slot"]})
    if phase == "identifying":
        return
    st = r.step({"do": "expect_state", "match": {"session": {"phase": "dispensing"}}, "within_s": 5,
                 "save": {"slot_out": "session.slot_out"}})
    r.step({"do": "expect_slot", "slot": st["session"]["slot_out"], "match": {"lock": "unlocked"},
            "within_s": 5})
    if phase == "dispensing":
        return
    r.step({"do": "world", "action": "take", "slot": st["session"]["slot_out"]})


def consistent(r):
    """Events, retained states and the physical world tell the same story."""
    obs = r.obs
    world = obs.world
    assert world is not None
    for ws in world["slots"]:
        st = obs.slots.get(ws["slot"])
        assert st is not None
        if ws["battery"] is None:
            assert st["battery"] is None, (ws, st)
        else:
            assert st["battery"] is not None and st["battery"]["serial"] == ws["battery"]["serial"]
        assert st["door"] == ws["door"] and st["lock"] == ws["lock"]
        assert st["charger"]["on"] == ws["charger_on"] or not ws["charger_on"]
    # Every event at least once, de-duplicated by id, none lost: per boot the counter has no gap.
    ns = sorted(int(e["id"].rsplit("-", 1)[1]) for e in obs.events)
    assert ns == list(range(ns[0], ns[0] + len(ns))), ns
    # No battery handed out twice.
    out = [e["battery"]["serial"] for e in obs.events if e["type"] == "BatteryOut"]
    assert len(out) == len(set(out))
    started = {e["session"] for e in obs.events if e["type"] == "SwapStarted"}
    ended = [e["session"] for e in obs.events if e["type"] in ("SwapCompleted", "SwapAborted")]
    assert sorted(ended) == sorted(started)
    for e in obs.events:
        schemas.validate("event", e)


def doors_agree(obs):
    """True when every slot's retained state shows the door and bolt the world shows."""
    world = obs.world
    if world is None:
        return None
    for ws in world["slots"]:
        st = obs.slots.get(ws["slot"])
        if st is None or (st["door"], st["lock"]) != (ws["door"], ws["lock"]):
            return None
    return True


def settle(r, within_s=20):
    """No session, and the cabinet's retained states caught up with the world (both are
    published asynchronously; the world at once when a bolt moves)."""
    r.step({"do": "expect_state", "match": {"session": None}, "within_s": within_s})
    time.sleep(1.5 / r.speed)
    r.wait_for(lambda: doors_agree(r.obs), 5, "retained slot states matching sim/world")


def test_a_swap_through_mqtt_agrees_with_the_world(sim):
    swap_until(sim, "taken")
    slot_out = sim.env["slot_out"]
    sim.step({"do": "world", "action": "close_door", "slot": slot_out})
    done = sim.step({"do": "expect_event", "type": "SwapCompleted", "within_s": 5})
    settle(sim)
    world = sim.obs.world["slots"]
    assert world[done["slot_out"] - 1]["battery"] is None
    assert world[done["slot_in"] - 1]["battery"]["serial"] == "E2E-PACK"
    assert done["battery_in"] == "E2E-PACK"
    consistent(sim)
    for topic, payload in [("state", sim.obs.state)] + [
            ("slot/%d/state" % n, s) for n, s in sim.obs.slots.items()]:
        schemas.validate(topic, payload)
    telemetry_valid(sim)


@pytest.mark.flaky(reruns=2)  # real-time windows, as the shipped scenarios above
@pytest.mark.parametrize("phase", ["awaiting_battery", "identifying", "dispensing", "taken"])
def test_power_cut_at_every_phase_of_a_swap(sim, phase):
    swap_until(sim, phase)
    had_battery_in = phase in ("dispensing", "taken")
    sim.step({"do": "world", "action": "power_cycle"})
    sim.step({"do": "expect_event", "type": "Boot", "within_s": 15})
    sim.step({"do": "expect_status", "value": "online", "within_s": 15})
    # The rider finishes whatever the cabinet still lets them do (take a charged battery, or
    # their own given back: it went in before BatteryIn was written), then walks away.
    time.sleep(2 / sim.speed)
    state = sim.obs.state or {}
    given_back = False
    if state.get("session") and state["session"]["phase"] in ("dispensing", "rejected"):
        given_back = state["session"]["phase"] == "rejected"
        n = state["session"]["slot_out" if not given_back else "slot_in"]
        sim.step({"do": "expect_slot", "slot": n, "match": {"lock": "unlocked"}, "within_s": 5})
        sim.step({"do": "world", "action": "take", "slot": n})
        # The rider shuts the door they took the battery from (the world snapshot below may not
        # show it open yet: it is published after the action's ack).
        sim.step({"do": "world", "action": "close_door", "slot": n})
    for ws in sim.obs.world["slots"]:
        if ws["door"] == "open":
            sim.step({"do": "world", "action": "close_door", "slot": ws["slot"]})
    settle(sim, 30)
    ends = [e for e in sim.obs.events if e["type"] in ("SwapCompleted", "SwapAborted")]
    assert len(ends) == 1
    if had_battery_in:
        assert ends[0]["type"] == "SwapCompleted"
    else:
        assert ends[0]["type"] == "SwapAborted" and ends[0]["reason"] == "power_loss"
    if given_back:  # the rider has their own battery back: no slot holds it
        assert all((ws["battery"] or {}).get("serial") != "E2E-PACK" for ws in sim.obs.world["slots"])
    consistent(sim)
    telemetry_valid(sim)


# The scenarios run the whole cabinet on a sped-up real clock, with time windows of a few seconds:
# on a machine loaded by the other workers a stall can miss one (seen: a 2 s window for an event
# behind a burst, the 5 s watchdog at speed 5). A run is retried twice before it counts as failed.
@pytest.mark.flaky(reruns=2)
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenario_passes(path, runtime, mqtt_broker, tmp_path):
    sc = json.loads(path.read_text())
    prefix = "sc-%s-%s" % (runtime[0], path.stem.replace("_", "-"))
    obs = Observer("127.0.0.1", mqtt_broker.port, prefix, sc.get("cabinet") or "sim-1")
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                        "127.0.0.1:%d" % mqtt_broker.port, "--scenario", str(path),
                        "--prefix", prefix, "--state-dir", str(tmp_path), *runtime_args(runtime)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stderr
    assert "firmware process ended" not in r.stderr, r.stderr
    time.sleep(0.5)  # the last messages on their way to the observer
    obs.close()
    every_payload_valid(obs, {"status", "info", "state", "slot/N/state", "event"})


def test_a_scenario_s_windows_run_on_the_simulation_s_clock_when_it_has_one(mqtt_broker):
    """A host that cannot keep up slows a sped-up simulation down rather than skipping (the
    timeouts scenario failed so in a loaded CI run): the runner beside it measures its windows
    and waits in simulated time, bounded on the wall only against a simulation that stopped."""
    sim = {"ms": 0}
    r = Runner("127.0.0.1", mqtt_broker.port, "sc-clock", "sim-1", parse_key(SIM_KEY_HEX), 5.0,
               out=lambda line: None, sim_ms=lambda: sim["ms"])
    try:
        def check():  # the simulation crawls: 100 simulated ms per poll
            sim["ms"] += 100
            return True if sim["ms"] >= 3000 else None
        assert r.wait_for(check, 4, "the sim at 3 s") is True  # 0.8 s on the wall at speed 5
        sim["ms"] = 0
        with pytest.raises(ScenarioFailed):
            r.wait_for(lambda: sim.__setitem__("ms", sim["ms"] + 100), 2, "never")
        assert 2000 <= sim["ms"] <= 2200  # ended by the simulated window, not the wall's 0.4 s
        sim["ms"] = 0
        threading.Timer(0.6, lambda: sim.__setitem__("ms", 1000)).start()
        t0 = time.monotonic()
        r.step({"do": "wait", "s": 1})  # 0.2 s on the wall at speed 5; the simulation took 0.6
        assert time.monotonic() - t0 >= 0.55
    finally:
        r.obs.close()


def test_a_failing_scenario_exits_non_zero(mqtt_broker, tmp_path):
    obs = Observer("127.0.0.1", mqtt_broker.port, "sc-bad", "sim-1")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "impossible", "steps": [
        {"do": "expect_state", "match": {"mode": "maintenance"}, "within_s": 2}]}))
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                        "127.0.0.1:%d" % mqtt_broker.port, "--scenario", str(bad),
                        "--prefix", "sc-bad", "--state-dir", str(tmp_path / "st")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "FAIL step 1" in r.stderr
    assert 'last seen: {' in r.stderr and '"mode": "in_service"' in r.stderr  # what it saw
    time.sleep(0.5)
    obs.close()
    every_payload_valid(obs, {"status", "info", "state", "slot/N/state"})


def test_tukar_world_drives_the_world_and_reports_refusals(sim, capsys):
    import argparse

    from tukar_tools import worldcmd

    def world(*argv):
        p = argparse.ArgumentParser()
        worldcmd.add_arguments(p)
        port = sim.obs.client.mqtt._port
        return worldcmd.run(p.parse_args(["sim-1", *argv, "--broker", "127.0.0.1:%d" % port,
                                          "--prefix", sim.obs.base.split("/")[0]]))

    assert world("take", "slot=9") == 1  # an empty, locked slot
    assert "door_locked" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
    assert world("set_cabinet_temp", "temp_c=31.5") == 0
    sim.step({"do": "expect_world", "match": {"temp_c": 31.5}, "within_s": 5})
    assert world("open_door", "slot=99") == 1
    assert "slot_range" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
