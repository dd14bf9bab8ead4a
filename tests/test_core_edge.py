"""The core's edge to the shell: the shell tells it things and takes what it decided through
methods, and never writes a core field itself."""
import pathlib
import re

from tukar.core import Core
from tukar.states import J_COUNTERS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_hold_refuses_new_swaps_with_the_reason_until_released():
    core = Core("c-1", 4)
    core.hold("event outbox full (broker unreachable)")
    ack = core.command({"cmd": "start_swap", "req_id": "r1", "id_token": "t"})
    assert ack["ok"] is False and ack["error"] == "busy"
    assert ack["detail"] == "event outbox full (broker unreachable)"
    core.hold(None)
    ack = core.command({"cmd": "start_swap", "req_id": "r2", "id_token": "t"})
    assert ack["error"] != "busy"


def test_a_new_connection_is_persisted_once_and_republishes_every_state():
    core = Core("c-1", 4)
    core.take_journal()
    core.take_dirty()
    assert core.connected(7) is True
    assert core.counters["bdseq"] == 7
    assert core.take_journal() & J_COUNTERS
    assert core.take_dirty() == 0b11111  # the cabinet and its 4 slots
    assert core.connected(7) is False  # the same connection: nothing to do
    assert core.take_dirty() == 0 and core.take_journal() == 0


def test_take_events_hands_over_in_order_and_empties():
    core = Core("c-1", 2)
    core.report_fault("task_control", "error")
    core.report_fault("flash_write", "error")
    got = []
    core.take_events(got.append)
    assert [e["code"] for e in got] == ["task_control", "flash_write"]
    assert core.events == []


def test_take_events_lets_each_event_go_as_it_is_handed_over():
    """The heap at a burst: the events already turned into the outbox's texts are no longer held
    by the core while the rest are handed over."""
    core = Core("c-1", 2)
    for code in ("task_control", "flash_write", "task_link"):
        core.report_fault(code, "error")
    held = []

    def sink(e):
        held.append(sum(1 for x in core.events if x is not None))
    core.take_events(sink)
    assert held == [2, 1, 0]
    assert core.events == []


def test_take_events_keeps_what_the_sink_could_not_take_for_the_next_call():
    core = Core("c-1", 2)
    for code in ("task_control", "flash_write", "task_link"):
        core.report_fault(code, "error")
    got = []

    def sink(e):
        if e["code"] == "flash_write" and not got[1:]:
            got.append(None)
            raise MemoryError("memory allocation failed, allocating 152 bytes")
        got.append(e["code"])
    try:
        core.take_events(sink)
    except MemoryError:
        pass
    assert [e["code"] for e in core.events] == ["flash_write", "task_link"]
    core.take_events(sink)
    assert got == ["task_control", None, "flash_write", "task_link"]  # none twice, none lost
    assert core.events == []


def test_take_rebirth_is_true_once_after_the_command():
    core = Core("c-1", 2)
    assert core.take_rebirth() is False
    assert core.command({"cmd": "rebirth", "req_id": "r"})["ok"]
    assert core.take_rebirth() is True
    assert core.take_rebirth() is False


def test_the_application_never_writes_a_core_field():
    text = (ROOT / "firmware" / "tukar" / "app.py").read_text()
    writes = re.findall(r"\bcore\.[a-z_]+(?:\[[^\]]*\])?\s*(?:[|&+-]?=)(?!=)", text)
    assert writes == []



def test_the_journal_streamed_into_the_state_file_is_the_journal():
    """App persists write_journal(): the same JSON as journal(), a part at a time."""
    import io
    import json

    from coreworld import Battery, rider_inserts, stocked_rig
    from tukar.outbox import dump
    rig = stocked_rig()
    rig.cmd("quarantine", slot=2, reason="inspection")
    rig.cmd("start_swap", id_token="t")
    rider_inserts(rig, Battery("R-1", soc=20))
    assert rig.core.session is not None
    for core in (rig.core, Core("c-1", 2)):
        f = io.StringIO()
        core.write_journal(f, dump)
        assert json.loads(f.getvalue()) == json.loads(json.dumps(core.journal()))
