# Test setup: firmware/ (the device's code), tests/ (world models) and the host shim (as `machine`,
# `hosttime`) on sys.path, and MicroPython's built-in names supplied, as the simulator runs the firmware.
import os
import pathlib
import sys

import pytest
from hypothesis import Phase, settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
# This checkout's own code first, here and in every subprocess a test starts (PYTHONPATH): an
# installed tukar_tools (another checkout's, through the venv's .pth) must not supply the tools,
# nor through their ROOT the firmware, of the checkout under test.
_OWN = [str(ROOT / "tests"), str(ROOT / "tools"), str(ROOT / "firmware")]
sys.path[:] = _OWN + [p for p in sys.path if p not in _OWN]
_rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in _OWN]
os.environ["PYTHONPATH"] = os.pathsep.join(_OWN[1:] + _rest)
for _name in [m for m in sys.modules if m == "tukar_tools" or m.startswith("tukar_tools.")
              or m == "tukar" or m.startswith("tukar.")]:
    if not str(getattr(sys.modules[_name], "__file__", "") or "").startswith(str(ROOT)):
        del sys.modules[_name]  # imported from elsewhere before this file ran
from tukar_tools import hostenv  # noqa: E402,F401  (MicroPython's built-in names, firmware/ on the path)

# CI runs more examples; a laptop run stays quick. Both are deterministic per test.
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None, derandomize=True)
# `make mutate` runs the tests once per mutant: fewer examples and no shrinking (a mutant is killed
# by the first failing example; its smallest form is of no interest).
settings.register_profile("mutate", max_examples=25, deadline=None, derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
MUTATE = bool(os.environ.get("TUKAR_MUTATE"))
settings.load_profile("mutate" if MUTATE else "ci" if os.environ.get("CI")
                      else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


REACH_TESTS = ("test_random_runs_reach_deep_into_the_swap_and_into_every_fault",
               "test_random_retirements_reach_every_kind_of_pack")


def pytest_collection_modifyitems(config, items):
    """Under `make mutate`, the example-based tests run before the property tests: a mutant stops
    at its first failing test (-x), and most are killed by a quick one."""
    if MUTATE:
        # The app's tests run on a sped-up real clock: on a loaded machine a slow run would fail
        # them and count as a kill. They hold the shell, which is not mutated.
        # The reach tests measure the random world (60 examples a strategy), not a rule: minutes
        # a mutant, and more than the 60 s limit below under mutmut's tracing.
        keep = [it for it in items if it.path.name != "test_mutants_shell.py"
                and it.name not in REACH_TESTS]
        if len(keep) != len(items):
            config.hook.pytest_deselected(items=[it for it in items if it not in keep])
            items[:] = keep
        items.sort(key=lambda it: bool(getattr(getattr(it, "obj", None), "is_hypothesis_test", False)))
        for it in items:  # a mutant that makes a test loop fails it after 60 s (wall clock: on a
            it.add_marker(pytest.mark.timeout(60))  # loaded machine a shorter limit kills falsely)
        for it in items:  # a test's own @settings too: at most 10 examples per mutant
            f = getattr(it, "obj", None)
            s = getattr(f, "_hypothesis_internal_use_settings", None)
            if s is not None and s.max_examples > 10:
                f._hypothesis_internal_use_settings = settings(s, max_examples=10)


@pytest.fixture
def manual_clock():
    """The host's ticks_ms on a clock that moves only when a model or a sleep moves it."""
    import hosttime

    old = hosttime.current()
    c = hosttime.install(hosttime.SimClock(manual=True))
    yield c
    hosttime.install(old)


@pytest.fixture(autouse=True)
def real_clock_between_tests():
    """Each test starts on the real clock (a rig or a simulation installs its own), since the
    firmware's time.ticks_ms follows whatever clock the host installed last."""
    import hosttime

    hosttime.install(hosttime.SimClock())
    yield
    hosttime.install(hosttime.SimClock())
