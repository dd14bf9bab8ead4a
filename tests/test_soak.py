"""`make soak` with a tiny budget, so that its machinery cannot rot between the long runs."""
import subprocess
import sys

from tukar_tools import soak
from tukar.clock import TICKS_PERIOD


def test_soak_properties_runs_random_examples_until_its_tick_budget():
    lines = []
    r = soak.properties(ticks=3000, seed=7, chunk=2, out=lines.append)
    assert r["failure"] is None and r["seed"] == 7
    assert r["ticks"] >= 3000 and r["examples"] >= 1
    assert "seed 7" in lines[0]


def test_soak_properties_reports_a_failing_example(monkeypatch):
    import invariants

    def broken(rig):  # an invariant that the first swap breaks
        assert not [e for e in rig.events if e["type"] == "SwapStarted"], "a swap started"

    monkeypatch.setattr(invariants, "check_tick", broken)
    lines = []
    r = soak.properties(ticks=10**9, seed=3, chunk=5, out=lines.append, shrink=False)
    assert r["failure"] is not None and "a swap started" in r["failure"]
    assert "acts=[" in r["failure"] and "start=" in r["failure"]  # the example, to replay
    assert "FAILED" in "\n".join(lines)


def test_a_simulated_cabinet_across_the_wrap_of_ticks_ms_keeps_every_invariant():
    lines = []
    s = soak.month(days=0.1, seed=5, out=lines.append, start=TICKS_PERIOD - 5_000,
                   mean_gap_s=300)
    assert s["violations"] == 0, s["first_violations"]
    assert s["wraps"] == 1
    assert s["swaps_completed"] >= 1
    assert s["core_bytes_end"] > 0 and s["journal_bytes_end"] > 0
    assert any("invariant violations: 0" in x for x in lines)


def test_tukar_soak_exits_nonzero_on_a_violation_and_zero_without():
    code = ("import sys; from tukar_tools import soak, cli; invariants = soak._world()\n"
            "if sys.argv[1] == 'bad':\n"
            "    def bad(rig): raise AssertionError('injected')\n"
            "    invariants.check_tick = bad\n"
            "sys.exit(cli.main(['soak', 'month', '--days', '0.01', '--seed', '1']))\n")
    ok = subprocess.run([sys.executable, "-c", code, "good"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "invariant violations: 0" in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "bad"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
