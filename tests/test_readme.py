"""The README's walk-through, run as a new user runs it: `tukar sim` (as `make sim` starts it), then
the shell block line by line against it. It must work on every run: a second simulator on the same
state directory resumes the world the first one left (batteries stay in their slots), and the same
block swaps again."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tukar_tools import broker, mqttc, monitor, cmdline, statecmd, worldcmd, ha
from tukar_tools.scenario import Runner
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.sign import parse_key

ROOT = pathlib.Path(__file__).resolve().parents[1]


def walkthrough():
    """The shell block of the README that starts with `export TUKAR_BROKER`."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    block = next(b for b in blocks if b.startswith("export TUKAR_BROKER="))
    tukar = "%s -m tukar_tools.cli" % sys.executable  # the .venv's tukar, wherever the tests run
    return "set -e\n" + block.replace(".venv/bin/tukar", tukar)


@pytest.fixture(scope="module")
def mqtt_broker():
    b = broker.start()
    yield b
    b.stop()


def run_sim_and_walk(port, state_dir, prefix):
    sim = subprocess.Popen([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                            "127.0.0.1:%d" % port, "--no-monitor", "--state-dir", str(state_dir),
                            "--prefix", prefix], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    r = Runner("127.0.0.1", port, prefix, "sim-1", parse_key(SIM_KEY_HEX), 1.0, out=lambda l: None)
    try:
        r.step({"do": "expect_status", "value": "online", "within_s": 20})
        r.step({"do": "expect_state", "match": {"ready": {"$gte": 1}, "session": None},
                "within_s": 20})
        script = walkthrough().replace("export TUKAR_BROKER=127.0.0.1:PORT",
                                       "export TUKAR_BROKER=127.0.0.1:%d" % port)
        env = dict(os.environ)
        script = script.replace("tukar_tools.cli cmd", "tukar_tools.cli cmd --prefix %s" % prefix)
        script = script.replace("tukar_tools.cli world", "tukar_tools.cli world --prefix %s" % prefix)
        script = script.replace("tukar_tools.cli state", "tukar_tools.cli state --prefix %s" % prefix)
        out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        done = r.step({"do": "expect_event", "type": "SwapCompleted", "within_s": 10})
        boots = [e for e in r.obs.events if e["type"] == "Boot"]
        missing = [e for e in r.obs.events if e["type"] == "BatteryMissing"]
        return out, done, boots, missing
    finally:
        r.obs.close()
        sim.terminate()
        sim.communicate(timeout=30)


def test_the_readme_walkthrough_swaps_on_the_first_and_on_every_later_run(mqtt_broker, tmp_path):
    out, done, _, missing = run_sim_and_walk(mqtt_broker.port, tmp_path, "rm1")
    assert out.returncode == 0, out.stderr
    assert done["battery_in"].startswith("R-")
    assert missing == []
    world = json.loads((tmp_path / "sim-1" / "world.json").read_text())
    slots = {p["slot"]: p["serial"] for p in world["packs"]}
    assert slots[done["slot_in"]] == done["battery_in"]  # the rider's pack stays where it went
    assert done["slot_out"] not in slots  # and the one given out left the cabinet
    out, done2, boots, missing = run_sim_and_walk(mqtt_broker.port, tmp_path, "rm2")
    assert out.returncode == 0, out.stderr
    assert missing == []  # the world came back: no battery went missing over the restart
    assert boots and boots[-1]["reason"] == "power_on"
    assert done2["session"] != done["session"]


@pytest.mark.parametrize("tool", [monitor, cmdline, worldcmd, statecmd, ha])
def test_every_tool_takes_its_broker_from_tukar_broker(tool, monkeypatch):
    import argparse
    monkeypatch.setenv("TUKAR_BROKER", "192.0.2.7:1999")
    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    args = p.parse_args(["sim-1", "x"] if tool is cmdline else ["sim-1"] if tool is statecmd
                        else ["sim-1", "take"] if tool is worldcmd else [])
    assert mqttc.parse_broker(args.broker) == ("192.0.2.7", 1999)
