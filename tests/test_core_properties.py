"""Safety invariants as properties over random riders' swaps with faults, operator commands and
power cuts slipped in between their steps (hypothesis), including runs whose clock starts 10 s
before the ticks wrap; and a measure of how deep those random runs reach, so that a world that
stops reaching the session's later phases fails here rather than passing quietly."""
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings

from invariants import (SLOTS, STARTS, actions, actions_retiring, actions_with_cuts, reached,
                        run_example)

HEAVY = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HEAVY
@given(actions, STARTS)
def test_invariants_hold_after_every_tick(acts, start):
    run_example(acts, start)


@HEAVY
@given(actions_with_cuts, STARTS)
def test_power_cuts_at_random_points_keep_the_invariants_and_lose_no_event(acts, start):
    run_example(acts, start)


@HEAVY
@given(actions_retiring, STARTS)
def test_packs_retired_at_random_amid_faults_and_power_cuts_keep_the_invariants(acts, start):
    run_example(acts, start)


def test_random_retirements_reach_every_kind_of_pack():
    """The retiring world retires riders' packs (worn, or by command), stock behind shut doors and
    the pack being handed out, and power cuts fall among them."""
    seen = _reach(actions_retiring)
    n = seen["examples"]
    assert seen["BatteryRetired"] >= n // 5 and seen["cmd_ok:retire"] >= n // 5, seen
    assert seen["retired"] >= 1, seen  # the checker saw a retired pack held
    assert seen["power_cut"] >= n // 6 and seen["SwapCompleted"] >= n // 3, seen
    assert len({k for k in seen if k.startswith("cmd:retire:")}) >= 3, seen


REACH_EXAMPLES = 60  # per strategy: the dev profile's count, what a laptop run explores


def _reach(strategy):
    """Runs the strategy's examples (without the quiet end) and counts what each reached."""
    seen = Counter()

    @settings(max_examples=REACH_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy, STARTS)
    def explore(acts, start):
        rig = run_example(acts, start, quiet_end=False)
        seen["examples"] += 1
        seen.update(reached(rig))
        if rig.types().count("SwapCompleted") >= 2:
            seen["two_swaps"] += 1

    explore()
    return seen


def test_random_runs_reach_deep_into_the_swap_and_into_every_fault():
    for strategy in (actions, actions_with_cuts):
        seen = _reach(strategy)
        n = seen["examples"]
        assert n == REACH_EXAMPLES
        # The session's later phases in at least half the examples; whole swaps, several a run.
        assert seen["BatteryIn"] >= n // 2, seen
        assert seen["SwapCompleted"] >= n // 3, seen
        assert seen["two_swaps"] >= n // 20, seen
        total = seen if strategy is actions else total + seen
    # The ways a swap ends badly, and the faults and hazards the world causes, across both.
    for what in ("BatteryRejected", "aborted:timeout", "aborted:fault", "aborted:emergency",
                 "aborted:power_loss", "fault:lock_jam", "fault:bms_link", "fault:temp_mismatch",
                 "fault:slot_io", "mismatch_hot", "mismatch_cold", "io_fault", "bms_silent",
                 "cabinet_sensor", "emergency:overtemp", "Quarantined", "DoorForced", "power_cut"):
        assert total[what] >= 1, (what, total)
    assert total["fault:temp_sensor_open"] + total["fault:temp_sensor_short"] >= 1, total
    assert total["emergency:estop"] + total["emergency:smoke"] >= 1, total
    # Operator commands on slots (the strategy names the rider's slot often, so that commands meet
    # the swap): each kind given, on several slots, and a quarantine carried out.
    named = {k for k in range(SLOTS + 2) for c in ("quarantine", "release", "open_slot")
             if total["cmd:%s:%d" % (c, k)]}
    for c in ("quarantine", "release", "open_slot"):
        assert any(total["cmd:%s:%d" % (c, k)] for k in range(SLOTS + 2)), (c, total)
    assert len(named) >= 4, named
    assert total["cmd_ok:quarantine"], total
