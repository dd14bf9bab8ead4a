"""The core on MicroPython: every firmware file compiles with mpy-cross, and the scripted
scenarios produce the same event trace inside the 32-bit MicroPython VM as on CPython."""
import json
import pathlib
import subprocess
import sys

import pytest

import scenarios
from tukar_tools import mpvm

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIRMWARE_FILES = sorted((ROOT / "firmware").rglob("*.py"))


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_firmware_file_compiles_with_mpy_cross(path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "out.mpy"), str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


def _vm_traces():
    code = "import scenarios\nscenarios.main()\n"
    res = mpvm.run(code, extra=[ROOT / "tests" / "coreworld.py", ROOT / "tests" / "scenarios.py"])
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["name"]] = d["result"]
    return out


@pytest.fixture(scope="module")
def vm_traces():
    return _vm_traces()


@pytest.mark.mpy
@pytest.mark.parametrize("name", scenarios.ALL)
def test_scenario_gives_the_same_trace_in_micropython_as_in_cpython(name, vm_traces):
    cpython = json.loads(json.dumps(getattr(scenarios, name)()))
    assert name in vm_traces
    vm = vm_traces[name]
    assert [e["type"] for e in vm["events"]] == [e["type"] for e in cpython["events"]]
    assert vm == cpython


def test_scenarios_exercise_the_whole_session():
    seen = set()
    for name in scenarios.ALL:
        seen |= {e["type"] for e in getattr(scenarios, name)()["events"]}
    assert {"Boot", "SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted", "SwapAborted",
            "BatteryRejected", "BatteryOutTimeout", "Quarantined", "Emergency", "EmergencyCleared",
            "ModeChanged", "Fault", "ChargeStarted", "ChargeStopped",
            "QuarantineReleased"} <= seen


@pytest.mark.mpy
@pytest.mark.parametrize("case", ["idle", "swap", "identifying", "rejected", "dispensing"])
def test_control_tick_allocates_nothing_in_steady_state(case):
    from tukar_tools import bench
    assert case in bench.CASES
    _, info = bench._measure(case, 100, 2)
    assert info["events"] == []  # steady state: nothing happened during the measured ticks
    if case != "idle":
        phase = "awaiting_battery" if case == "swap" else case
        assert info["session"] == phase
    if case == "swap":
        assert info["charging"] == 11
    assert info["alloc"] == 0
