"""`tukar explore` on a 2-slot cabinet with small bounds: it reaches whole swaps, its counts do
not change from run to run, it finds a rule broken on purpose with the shortest path, and the
scenario it writes is one `tukar sim --scenario` loads and replays."""
import argparse
import inspect
import json
import pathlib
import subprocess
import sys

import pytest

from tukar_tools import explore as ex
from tukar_tools import explore_invariants as inv
from tukar_tools import explore_scenario as esc
from tukar_tools import scenario, simworld

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"faults": 0, "operator": 1}  # about 600 states, well under a second
STOCK = (("good", None),)


def small(**kw):
    return ex.explore(2, STOCK, SMALL, **kw)


def test_the_explorer_reaches_battery_in_and_completed_swaps():
    res = small()
    for etype in ("SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted", "BatteryRejected",
                  "Quarantined", "ModeChanged", "Boot"):
        assert etype in res.first, etype
    path = ex.path_to_event(res, "SwapCompleted")
    kinds = [ev[0] if ev[0] != "cmd" else ev[1] for ev in path]
    assert kinds[:2] == ["stock", "start_swap"] and "insert" in kinds and "take" in kinds
    assert res.states > 100 and res.transitions > res.states and res.depth > 5


def test_the_counts_are_the_same_on_every_run():
    a, b = small(), small()
    assert (a.states, a.nodes, a.transitions, a.depth) == (b.states, b.nodes, b.transitions, b.depth)
    assert a.path(a.deepest) == b.path(b.deepest)
    assert sorted(a.violations) == sorted(b.violations)


def test_every_invariant_is_a_named_function_citing_its_rule():
    names = [n for n, _ in inv.STATE + inv.STEP]
    assert len(names) == len(set(names)) >= 15
    for name, fn in inv.STATE + inv.STEP:
        doc = inspect.getdoc(fn) or ""
        assert fn.__name__ == name
        assert "Rule" in doc or "mqtt.md" in doc or "cabinet.md" in doc or "STYLE.md" in doc, name


@pytest.fixture
def charger_ignores_the_door(monkeypatch):
    """A core whose rule 1 forgets the door: an accepted pack keeps charging behind an open or
    unlocked door."""
    from tukar.slot import Slot
    real = Slot.charge_decision

    def leaky(self, now, lim, emergency, cabinet_dc):
        ma = real(self, now, lim, emergency, cabinet_dc)
        if not ma and self.reason == "door" and self.accepted:
            self.reason = None
            return lim.slot_limit_ma
        return ma
    monkeypatch.setattr(Slot, "charge_decision", leaky)


def test_a_charger_left_on_behind_an_open_door_is_found_with_the_shortest_path(
        charger_ignores_the_door, tmp_path):
    res = small()
    msg, path = res.violations["charger_only_behind_a_shut_locked_door"]
    # The swap's dispense door unlocks with its pack still charging: stock, start_swap, the
    # rider's pack in, the door shut.
    assert [ev[0] if ev[0] != "cmd" else ev[1] for ev in path] == [
        "stock", "start_swap", "insert", "close"]
    assert "slot 1 charges" in msg
    # The path, run again, ends in the same violation.
    last = esc.replay(2, path)[-1][3]
    assert inv.charger_only_behind_a_shut_locked_door(last)
    # Its scenario: what the simulator's scenario runner loads, with world actions it knows.
    f = esc.write(str(tmp_path / "v.json"), 2, path, "planted", "a charger behind an open door")
    sc = scenario.load(f)
    assert sc["slots"] == 2 and sc["stock"] == [{"slot": 1, "battery": {
        "serial": "G1", "soc": 95, "soh": 95, "temp_c": 25}}]
    dos = [st["do"] for st in sc["steps"]]
    assert set(dos) <= {"world", "cmd", "wait", "expect_event", "expect_slot", "expect_state",
                        "expect_world"}
    for st in sc["steps"]:
        if st["do"] == "world":
            assert st["action"] in simworld.ACTIONS
            if st["action"] == "insert":
                simworld.battery_spec(st["battery"])
    assert sc["steps"][-1]["do"] == "expect_world"
    assert sc["steps"][-1]["match"]["slots"][0]["charger_on"] is True


def test_the_command_line_prints_the_figures_and_writes_each_violation(tmp_path, capsys,
                                                                      charger_ignores_the_door):
    p = argparse.ArgumentParser()
    ex.add_arguments(p)
    code = ex.run(p.parse_args(["--slots", "2", "--faults", "0", "--operator", "1", "--out",
                                str(tmp_path), "--path-to", "SwapCompleted"]))
    out = capsys.readouterr().out
    assert code == 1
    assert "bounds per path: power cuts 1, swaps 2, operator commands 1, faults 0" in out
    assert "states " in out and "transitions " in out and "longest path " in out
    assert "VIOLATION charger_only_behind_a_shut_locked_door" in out
    written = json.loads((tmp_path / "charger_only_behind_a_shut_locked_door.json").read_text())
    assert written["name"] == "explore: charger_only_behind_a_shut_locked_door"
    assert (tmp_path / "path-to-SwapCompleted.json").exists()


def test_the_shortest_swap_replays_in_the_simulator(tmp_path):
    res = small(check=False)
    f = esc.write(str(tmp_path / "swap.json"), 2, ex.path_to_event(res, "SwapCompleted"),
                  "explore: shortest swap", "the shortest path to SwapCompleted")
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--no-monitor",
                        "--scenario", f, "--speed", "8", "--state-dir", str(tmp_path / "st")],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "PASS explore: shortest swap" in r.stderr
