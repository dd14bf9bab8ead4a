# The persisted event outbox: order, stable ids, and its bound (mqtt.md: "when full, the oldest
# telemetry is dropped first, never a swap or safety event").
import json

import pytest

from tukar.outbox import EVENT, TELEMETRY, Outbox


def ev(n, etype="SwapStarted"):
    return {"id": "cab-1-1-%d" % n, "type": etype, "ts": None, "up_ms": n}


def drain(ob):
    out = []
    while True:
        item = ob.peek()
        if item is None:
            return out
        out.append((item[0], json.loads(item[2])))
        ob.done(item)


def test_items_come_out_oldest_first_events_and_telemetry_interleaved():
    ob = Outbox()
    ob.add_event(ev(1))
    ob.add_telemetry({"slots": [], "n": 1})
    ob.add_event(ev(2))
    assert [(k, d.get("id", d.get("n"))) for k, d in drain(ob)] == \
        [(EVENT, "cab-1-1-1"), (TELEMETRY, 1), (EVENT, "cab-1-1-2")]
    assert len(ob) == 0


def test_an_item_stays_until_done():
    ob = Outbox()
    ob.add_event(ev(1))
    assert ob.peek() is ob.peek()
    assert len(ob) == 1
    ob.done(ob.peek())
    assert ob.peek() is None


def test_telemetry_keeps_only_the_newest_capacity_telemetry():
    ob = Outbox(capacity_events=64, capacity_telemetry=4)
    for n in range(10):
        ob.add_telemetry({"n": n})
    assert [d["n"] for _, d in drain(ob)] == [6, 7, 8, 9]
    assert ob.dropped_telemetry == 6


def test_full_outbox_drops_the_oldest_telemetry_before_any_event():
    ob = Outbox(capacity_events=8, capacity_telemetry=4)
    for n in range(4):
        ob.add_telemetry({"n": n})
    for n in range(6):
        ob.add_event(ev(n))
    kinds = [(k, d.get("n") if k == TELEMETRY else d["id"]) for k, d in drain(ob)]
    assert [x for x in kinds if x[0] == EVENT] == [(EVENT, "cab-1-1-%d" % n) for n in range(6)]
    assert [x[1] for x in kinds if x[0] == TELEMETRY] == [2, 3]


def test_telemetry_added_to_an_outbox_full_of_events_is_dropped():
    ob = Outbox(capacity_events=4)
    for n in range(4):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": 1})
    assert all(k == EVENT for k, _ in drain(ob))


def test_swap_and_safety_events_are_never_dropped_even_past_the_hard_cap():
    ob = Outbox(capacity_events=4)
    types = ["SwapStarted", "BatteryIn", "Emergency", "Fault", "DoorForced", "SwapCompleted"]
    for n in range(20):
        ob.add_event(ev(n, types[n % len(types)]))
    assert [d["id"] for _, d in drain(ob)] == ["cab-1-1-%d" % n for n in range(20)]
    assert ob.over_cap == 20 - 8


def test_at_the_hard_cap_the_oldest_routine_event_makes_room():
    ob = Outbox(capacity_events=4)  # hard cap 8
    ob.add_event(ev(0, "ChargeStarted"))
    for n in range(1, 9):
        ob.add_event(ev(n, "BatteryIn"))
    ids = [d["id"] for _, d in drain(ob)]
    assert "cab-1-1-0" not in ids and len(ids) == 8
    assert ob.dropped_routine == 1


def test_saturated_at_the_soft_bound_of_events():
    ob = Outbox(capacity_events=3)
    for n in range(2):
        ob.add_event(ev(n))
    assert not ob.saturated
    ob.add_event(ev(2))
    assert ob.saturated


def test_events_mark_dirty_telemetry_does_not():
    ob = Outbox()
    ob.add_telemetry({"n": 1})
    assert not ob.dirty
    ob.add_event(ev(1))
    assert ob.dirty
    ob.dirty = False
    ob.done(ob.peek())  # the telemetry
    assert not ob.dirty
    ob.done(ob.peek())  # the event
    assert ob.dirty


def test_snapshot_and_restore_keep_ids_and_order_across_a_reboot():
    ob = Outbox()
    for n in range(3):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": 9})
    saved = json.loads(json.dumps(ob.snapshot()))  # as the app writes and reads it
    after = Outbox()
    after.add_event(ev(3, "Boot"))
    after.restore(saved)
    assert [d["id"] for _, d in drain(after)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-2", "cab-1-1-3"]


def test_restore_skips_damaged_entries():
    ob = Outbox()
    ob.restore([ev(1), "not json", {"type": "Boot"}, 7, json.dumps(ev(2))])
    assert [d["id"] for _, d in drain(ob)] == ["cab-1-1-1", "cab-1-1-2"]


def test_done_of_an_item_already_dropped_changes_nothing():
    ob = Outbox(capacity_telemetry=1)
    ob.add_telemetry({"n": 1})
    first = ob.peek()
    ob.add_telemetry({"n": 2})  # drops the first
    ob.done(first)
    assert json.loads(ob.peek()[2]) == {"n": 2}


_FAKE_THREAD = """
class _Lock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        pass


def allocate_lock():
    return _Lock()
"""


@pytest.mark.mpy
def test_outbox_runs_under_micropython_with_compact_json():
    from tukar_tools import mpvm
    code = "\n".join([
        "from tukar.outbox import Outbox, dumps",
        "ob = Outbox(capacity_events=2)",
        "ob.add_telemetry({'n': 1})",
        "for i in range(5):",
        "    ob.add_event({'id': 'c-1-%d' % i, 'type': 'BatteryIn'})",
        "print(len(ob), ob.over_cap, [e['id'] for e in ob.snapshot()], dumps({'a': [1, 2]}))",
    ])
    # the WASM build has no _thread; a lock that does nothing stands in for it
    out = mpvm.run(code, files={"_thread.py": _FAKE_THREAD}).stdout.strip()
    assert out == "5 1 ['c-1-0', 'c-1-1', 'c-1-2', 'c-1-3', 'c-1-4'] {\"a\":[1,2]}"
