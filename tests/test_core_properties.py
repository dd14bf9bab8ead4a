"""Safety invariants as properties over random event sequences (hypothesis), including runs
whose clock starts 10 s before the ticks wrap, and power cuts at random points."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invariants import STARTS, act, action, check_history, check_tick, new_rig, power_cut, settle

HEAVY = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HEAVY
@given(st.lists(action, max_size=80), STARTS)
def test_invariants_hold_after_every_tick(actions, start):
    rig = new_rig(start)
    rig.run(1000)
    for a in actions:
        act(rig, a, check_tick)
    settle(rig, check_tick)
    check_history(rig)


@HEAVY
@given(st.lists(st.one_of(action, st.just(("power_cut",))), max_size=60), STARTS)
def test_power_cuts_at_random_points_keep_the_invariants_and_lose_no_event(actions, start):
    rig = new_rig(start)
    rig.run(1000)
    for a in actions:
        if a[0] == "power_cut":
            power_cut(rig)
            rig.tick()
            check_tick(rig)
        else:
            act(rig, a, check_tick)
    settle(rig, check_tick)
    check_history(rig)
