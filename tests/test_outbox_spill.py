# The outbox's spill file: past `ram_events` events the newer ones wait on flash, in order, and
# the bounds of mqtt.md hold across the head, the spill file and the tail; a reboot reads back the
# head and the range the state names, and a power cut between spilling and writing the state
# loses nothing the state had.
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tukar.outbox import EVENT, TELEMETRY, Outbox
from tukar.store import Store


def ev(n, etype="SwapStarted"):
    return {"id": "cab-1-1-%d" % n, "type": etype, "ts": None, "up_ms": n}


def box(tmp_path, **kw):
    kw.setdefault("ram_events", 2)
    return Outbox(store=Store(str(tmp_path)), **kw)


def drain(ob):
    """Publish everything, refilling the head from the spill file as the app's persist task does."""
    out = []
    while True:
        ob.refill()
        item = ob.peek()
        if item is None:
            return out
        d = json.loads(item[2])
        out.append((item[0], d.get("id", d.get("n"))))
        ob.done(item)


def persist(ob, path):
    """What App.persist does with the outbox: spill, then the state naming the spill's range."""
    assert ob.spill()
    state = {"outbox": [json.loads(t) for t in ob.event_texts()]}
    if ob.spill_ref() is not None:
        state["spill"] = ob.spill_ref()
    path.write_text(json.dumps(state))
    ob.persisted()
    return state


def spill_files(tmp_path):
    return sorted(n for n in os.listdir(tmp_path) if n.startswith("outbox."))


def test_past_ram_events_the_newer_events_wait_on_flash_and_come_back_in_order(tmp_path):
    ob = box(tmp_path)
    for n in range(10):
        ob.add_event(ev(n))
    assert ob.spill()
    assert len(ob._items) == 2 and len(ob) == 10 and ob.events == 10
    assert [d["id"] for d in ob.snapshot()] == ["cab-1-1-%d" % n for n in range(10)]
    ob.add_event(ev(10))  # after the spilled ones: the tail
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(11)]
    assert len(ob) == 0 and ob.spill_ref() is None


def test_telemetry_keeps_its_place_among_spilled_events(tmp_path):
    ob = box(tmp_path)
    for n in range(4):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "t1"})
    ob.add_event(ev(4))
    assert ob.spill()
    ob.add_telemetry({"n": "t2"})
    ob.add_event(ev(5))
    assert ob.spill()  # the tail, telemetry and all
    got = drain(ob)
    assert got == [(EVENT, "cab-1-1-0"), (EVENT, "cab-1-1-1"), (EVENT, "cab-1-1-2"),
                   (EVENT, "cab-1-1-3"), (TELEMETRY, "t1"), (EVENT, "cab-1-1-4"),
                   (TELEMETRY, "t2"), (EVENT, "cab-1-1-5")]


def test_the_oldest_routine_event_makes_room_at_the_hard_cap_even_when_spilled(tmp_path):
    ob = box(tmp_path, capacity_events=4)  # hard cap 8
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "BatteryIn"))
    ob.add_event(ev(2, "ChargeStarted"))  # spilled below
    for n in range(3, 8):
        ob.add_event(ev(n, "BatteryIn"))
    assert ob.spill()
    ob.add_event(ev(8, "BatteryIn"))
    ids = [i for _, i in drain(ob)]
    assert "cab-1-1-2" not in ids and len(ids) == 8
    assert ob.dropped_routine == 1 and ob.over_cap == 0


def test_the_oldest_telemetry_is_dropped_first_even_when_spilled(tmp_path):
    ob = box(tmp_path, capacity_telemetry=2)
    for n in range(3):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "t1"})
    ob.add_event(ev(3))
    assert ob.spill()
    ob.add_telemetry({"n": "t2"})
    ob.add_telemetry({"n": "t3"})  # t1, spilled, makes room
    assert [i for k, i in drain(ob) if k == TELEMETRY] == ["t2", "t3"]
    assert ob.dropped_telemetry == 1


def test_a_reboot_reads_back_the_head_and_the_spilled_range_without_telemetry(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "t"})
    ob.add_event(ev(5))
    state = persist(ob, tmp_path / "state.json")
    assert len(state["outbox"]) == 2 and state["spill"][0] == 1
    after = box(tmp_path)
    after.restore(state["outbox"], state["spill"])
    assert after.events == 6 and len(after) == 6
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in range(6)]


def test_a_power_cut_between_spilling_and_writing_the_state_loses_nothing_the_state_had(tmp_path):
    ob = box(tmp_path)
    for n in range(4):
        ob.add_event(ev(n))
    state = persist(ob, tmp_path / "state.json")  # 2 in the head, 2 spilled
    ob.add_event(ev(4))
    ob.add_event(ev(5))
    assert ob.spill()  # appended; the power goes before the state is written
    after = box(tmp_path)
    after.restore(state["outbox"], state["spill"])
    assert [d["id"] for d in after.snapshot()] == ["cab-1-1-%d" % n for n in range(4)]
    after.add_event(ev(6))
    for n in range(7, 10):
        after.add_event(ev(n))
    assert after.spill()  # the file had more than the state named: a new generation
    assert spill_files(tmp_path) == ["outbox.1", "outbox.2"]
    after.persisted()
    assert spill_files(tmp_path) == ["outbox.2"]
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in (0, 1, 2, 3, 6, 7, 8, 9)]


def test_a_state_before_the_spill_file_keeps_every_event_in_its_head(tmp_path):
    after = box(tmp_path)
    after.restore([ev(n) for n in range(6)])  # a state written before this firmware
    assert after.spill() and len(after._items) == 2
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in range(6)]


def test_a_spill_that_cannot_be_written_moves_nothing_and_is_tried_again(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    real = ob._store._open

    def broken(*a, **k):
        raise OSError(5, "EIO")
    ob._store._open = broken
    assert ob.spill() is False and len(ob._items) == 5 and ob.spill_errors == 1
    ob._store._open = real
    assert ob.spill() and len(ob._items) == 2
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(5)]


def test_spill_files_the_state_does_not_name_are_deleted_at_boot_and_once_drained(tmp_path):
    (tmp_path / "outbox.7").write_bytes(b'E{"id":"old"}\n')
    ob = box(tmp_path)
    ob.restore(None)
    assert spill_files(tmp_path) == []
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill() and spill_files(tmp_path) == ["outbox.8"]  # above every generation seen
    drain(ob)
    ob.persisted()
    assert spill_files(tmp_path) == []


def test_without_a_store_everything_stays_in_ram(tmp_path):
    ob = Outbox(ram_events=2)
    for n in range(5):
        ob.add_event(ev(n))
    assert ob.spill() and len(ob._items) == 5 and ob.spill_ref() is None


def test_a_spill_file_shorter_than_the_state_says_costs_only_what_it_lacks(tmp_path):
    ob = box(tmp_path)
    for n in range(6):
        ob.add_event(ev(n))
    assert ob.spill()  # 2 in the head, 4 spilled
    ob.add_event(ev(6))  # the tail
    path = tmp_path / "outbox.1"
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"\n") + 1] + b'E{"id":')  # one line whole, then torn
    got = [i for _, i in drain(ob)]
    assert got == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-2", "cab-1-1-6"]
    assert ob.lost == 3 and len(ob) == 0 and ob.events == 0


def test_a_missing_spill_file_is_given_up_and_the_tail_still_goes_out(tmp_path):
    ob = box(tmp_path)
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill()
    ob.add_event(ev(4))
    os.remove(tmp_path / "outbox.1")
    assert [i for _, i in drain(ob)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-4"]
    assert ob.lost == 2


def link_during_spill(ob, take):
    """The link's thread runs while spill() writes the file, outside the outbox's lock: it
    publishes and removes `take` items from the head. Returns what it published."""
    real = ob._store._open
    published = []

    def opening(*a, **k):
        for _ in range(take):
            item = ob.peek()
            if item is None:
                break
            d = json.loads(item[2])
            published.append((item[0], d.get("id", d.get("n"))))
            ob.done(item)
        ob._store._open = real
        return real(*a, **k)
    ob._store._open = opening
    return published


def test_an_item_the_link_takes_while_the_spill_is_written_is_neither_counted_nor_sent_twice(
        tmp_path):
    ob = box(tmp_path)
    for n in range(6):
        ob.add_event(ev(n))
    published = link_during_spill(ob, 4)  # the head's two, then two of the four being moved
    assert ob.spill()
    assert len(ob) == 2 and ob.events == 2
    published += drain(ob)
    assert [i for _, i in published] == ["cab-1-1-%d" % n for n in range(6)]
    assert len(ob) == 0 and ob.events == 0
    ob.add_event(ev(6))  # the count is still right: an event after the drain is not refused
    assert len(ob) == 1 and [i for _, i in drain(ob)] == ["cab-1-1-6"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["event", "routine", "telemetry", "spill", "refill",
                                           "send", "restart"]),
                          st.integers(0, 5)), max_size=60))
def test_the_counts_match_what_is_owed_whatever_the_link_takes_during_a_spill(tmp_path, ops):
    """Events go out once each, in order, and len() is what is owed, however the link's thread
    interleaves with spill() (including a reboot from the persisted state)."""
    import shutil
    d = tmp_path / "ob"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    ob = box(d, capacity_events=8, capacity_telemetry=2)
    n = 0
    sent = []
    state = None
    restarted = False
    wanted = []  # the swap events added: never dropped
    for op, k in ops:
        if op in ("event", "routine"):
            ob.add_event(ev(n, "ChargeStarted" if op == "routine" else "SwapStarted"))
            if op == "event":
                wanted.append("cab-1-1-%d" % n)
            n += 1
        elif op == "telemetry":
            ob.add_telemetry({"n": "t%d" % n})
            n += 1
        elif op == "spill":
            sent += link_during_spill(ob, k)
            if ob.spill():
                state = {"outbox": ob.event_texts(), "spill": ob.spill_ref()}
                ob.persisted()
            ob._store._open = open
        elif op == "refill":
            ob.refill()
        elif op == "send":
            for _ in range(k):
                item = ob.peek()
                if item is None:
                    break
                dd = json.loads(item[2])
                sent.append((item[0], dd.get("id", dd.get("n"))))
                ob.done(item)
        elif op == "restart" and state is not None:
            ob = box(d, capacity_events=8, capacity_telemetry=2)
            ob.restore(state["outbox"], state["spill"])
            state = None
            restarted = True
        assert ob.events >= 0 and len(ob) >= ob.events
        assert ob.events == len(ob.snapshot())
    sent += drain(ob)
    assert len(ob) == 0 and ob.events == 0
    ids = [i for kind, i in sent if kind == EVENT]
    firsts = sorted(set(ids), key=ids.index)
    assert firsts == sorted(firsts, key=lambda i: int(i.rsplit("-", 1)[1]))  # in order
    if not restarted:  # (a reboot loses what came after the last state, and may resend)
        assert len(ids) == len(set(ids)) and set(wanted) <= set(ids)


def test_a_held_event_is_offered_to_the_link_only_once_a_state_holding_it_is_written():
    """hold (the app's outbox): the broker never gets an event that a power cut could still take
    from the cabinet; telemetry, never persisted, is not held, but keeps its place in the order."""
    ob = Outbox(hold=True)
    ob.add_telemetry({"t": 1})
    ob.add_event({"type": "SwapStarted", "id": "e-1"})
    ob.add_telemetry({"t": 2})
    first = ob.peek()
    assert first[0] == TELEMETRY
    ob.done(first)
    assert ob.peek() is None  # SwapStarted is not on flash yet, and the telemetry behind it waits
    ob.persisted(False)  # a state written, but its spill failed: the event may not be in it
    assert ob.peek() is None
    ob.persisted()
    ev = ob.peek()
    assert ev[0] == EVENT and b'"e-1"' in ev[2]
    ob.done(ev)
    ob.add_event({"type": "SwapCompleted", "id": "e-2"})
    assert ob.peek()[0] == TELEMETRY  # older than the new event: it goes
    ob.done(ob.peek())
    assert ob.peek() is None
    ob.persisted()
    assert b'"e-2"' in ob.peek()[2]


def test_without_hold_an_event_is_offered_at_once():
    ob = Outbox()
    ob.add_event({"type": "SwapStarted", "id": "e-1"})
    assert ob.peek() is not None


def test_a_held_event_dropped_at_the_hard_cap_leaves_no_event_offered_unwritten():
    ob = Outbox(capacity_events=2, hold=True)
    for i in range(6):  # past the hard cap (4): routine events dropped
        ob.add_event({"type": "ChargeStarted", "id": "e-%d" % i})
    assert ob.events == 4 and ob.peek() is None
    ob.persisted()
    assert ob.peek() is not None


def test_held_events_go_out_unwritten_when_the_flash_does_not_write():
    """A state write that failed: holding the events would keep the cabinet's own flash_write
    fault from the broker, and nothing can keep them across a cut anyway."""
    ob = Outbox(hold=True)
    ob.add_event({"type": "Fault", "id": "e-1", "code": "flash_write"})
    assert ob.peek() is None
    ob.persisted(True, False)
    assert b"flash_write" in ob.peek()[2]
