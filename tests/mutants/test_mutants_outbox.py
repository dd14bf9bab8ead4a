"""The event outbox's bounds and bookkeeping (mqtt.md: "when full, the oldest telemetry is dropped
first, never a swap or safety event"; cabinet.md: nothing in the outbox is lost), held where
mutation testing found them unchecked: every counter it reports, the `dirty` flag the app persists
on, compact JSON, long events through the spill file's copy, and a damaged spill reference."""
import json
import os

from tukar import outbox as ob_mod
from tukar.outbox import EVENT, TELEMETRY, Outbox
from tukar.store import Store


def ev(n, etype="SwapStarted", pad=0):
    d = {"id": "cab-1-1-%d" % n, "type": etype, "ts": None, "up_ms": n}
    if pad:
        d["pad"] = "x" * pad
    return d


def box(tmp_path, **kw):
    kw.setdefault("ram_events", 2)
    return Outbox(store=Store(str(tmp_path)), **kw)


def drain(ob):
    out = []
    while True:
        ob.refill()
        item = ob.peek()
        if item is None:
            return out
        d = json.loads(item[2])
        out.append((item[0], d.get("id", d.get("n"))))
        ob.done(item)


def test_the_defaults_are_64_events_4_telemetry_and_4_in_ram():
    ob = Outbox()
    assert (ob.capacity_events, ob.hard_cap, ob.capacity_telemetry, ob.ram_events) == (64, 128, 4, 4)
    assert ob.dirty is False and len(ob) == 0 and ob.spill_ref() is None
    for n in range(5):
        ob.add_telemetry({"n": n})
    assert len(ob) == 4 and ob.dropped_telemetry == 1
    for n in range(63):
        ob.add_event(ev(n))
    assert not ob.saturated
    ob.add_event(ev(63))
    assert ob.saturated


def test_items_are_published_as_compact_json():
    ob = Outbox()
    ob.add_event(ev(1))
    ob.add_telemetry({"n": "t", "v": [1, 2]})
    texts = [ob.peek()[2]]
    ob.done(ob.peek())
    texts.append(ob.peek()[2])
    assert texts[0] == b'{"id":"cab-1-1-1","type":"SwapStarted","ts":null,"up_ms":1}'
    assert texts[1] == b'{"n":"t","v":[1,2]}'
    assert ob_mod.dumps({"a": [1, 2]}) == '{"a":[1,2]}'


def test_dump_streams_the_same_compact_json(tmp_path):
    p = tmp_path / "x.json"
    with open(p, "w") as f:
        ob_mod.dump({"a": [1, 2], "b": None}, f)
    assert p.read_text() == '{"a":[1,2],"b":null}'


def test_every_dropped_telemetry_is_counted_once():
    ob = Outbox(capacity_events=3, capacity_telemetry=2)
    ob.add_telemetry({"n": 1})
    ob.add_telemetry({"n": 2})
    ob.add_telemetry({"n": 3})  # the oldest makes room
    assert ob.dropped_telemetry == 1 and len(ob) == 2
    ob.add_event(ev(1))  # 3 items: at the soft bound
    ob.add_event(ev(2))  # telemetry makes room for an event
    assert ob.dropped_telemetry == 2 and len(ob) == 3 and ob.events == 2
    ob.add_event(ev(3))
    assert ob.dropped_telemetry == 3 and len(ob) == 3
    ob.add_telemetry({"n": 4})  # full of events: this one is dropped, and counted
    assert ob.dropped_telemetry == 4 and len(ob) == 3 and ob.events == 3
    assert [k for k, _ in drain(ob)] == [EVENT, EVENT, EVENT]


def test_a_routine_event_dropped_at_the_hard_cap_is_counted_and_marks_the_outbox_dirty():
    ob = Outbox(capacity_events=2)  # hard cap 4
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "ChargeStarted"))
    ob.add_event(ev(2, "ModeChanged"))
    ob.add_event(ev(3, "BatteryIn"))
    ob.dirty = False
    ob.add_event(ev(4, "BatteryIn"))
    assert ob.dropped_routine == 1 and ob.events == 4 and len(ob) == 4 and ob.dirty is True
    ob.add_event(ev(5, "BatteryIn"))
    assert ob.dropped_routine == 2 and ob.events == 4
    ob.add_event(ev(6, "BatteryIn"))  # no routine event left: kept, over the cap
    assert ob.dropped_routine == 2 and ob.over_cap == 1 and ob.events == 5
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in (0, 3, 4, 5, 6)]


def test_only_routine_events_make_room_and_telemetry_is_never_taken_for_one():
    ob = Outbox(capacity_events=2)
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "BatteryIn"))
    ob.add_event(ev(2, "BatteryIn"))
    ob.add_event(ev(3, "BatteryIn"))
    ob.add_event(ev(4, "Emergency"))
    assert ob.over_cap == 1 and ob.dropped_routine == 0 and ob.events == 5


def test_telemetry_is_never_routine_nor_persisted():
    ob = Outbox()
    ob.add_telemetry({"n": 1})
    assert ob.peek()[:2] == [TELEMETRY, False]
    assert ob.dirty is False and ob.event_texts() == []


def test_restored_routine_events_are_still_the_ones_that_make_room(tmp_path):
    ob = Outbox(capacity_events=2)
    ob.restore([ev(0, "Boot"), ev(1, "BatteryIn"), ev(2, "BatteryIn"), ev(3, "BatteryIn")])
    assert ob.events == 4
    ob.add_event(ev(4, "BatteryIn"))
    assert ob.dropped_routine == 1
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in (1, 2, 3, 4)]


def test_restore_adds_to_events_already_queued_since_boot():
    ob = Outbox()
    ob.add_event(ev(9))
    ob.restore([ev(0), ev(1)])
    assert ob.events == 3 and len(ob) == 3
    assert [i for _, i in drain(ob)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-9"]
    assert ob.events == 0


def test_the_app_persists_on_every_change_of_the_events_and_never_on_telemetry(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    ob.dirty = False
    assert ob.spill() and ob.dirty is True  # the state must name the new range
    ob.dirty = False
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert ob.dirty is True
    ob.dirty = False
    assert ob.refill() and ob.dirty is True  # the state's read offset moved


def test_long_events_pass_through_a_new_spill_generation_intact(tmp_path):
    # Events longer than the 128-byte copy chunk, copied into a new file after a failed append.
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n, pad=300))
    assert ob.spill()
    real = ob._store._open
    calls = {"n": 0}

    def fails_once(name, mode="rb"):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "ENOSPC")
        return real(name, mode)
    ob._store._open = fails_once
    ob.add_event(ev(5, pad=300))
    assert ob.spill() is False and ob.spill_errors == 1
    ob._store._open = real
    ob.add_event(ev(6, pad=129))
    assert ob.spill()  # a new file: what is owed copied over, then the tail
    assert ob.spill_ref()[0] == 2
    got = ob.snapshot()
    assert [d["id"] for d in got] == ["cab-1-1-%d" % n for n in range(7)]
    assert all(len(d["pad"]) in (300, 129) for d in got)
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(7)]
    assert ob.lost == 0 and len(ob) == 0


def test_a_copy_after_part_of_the_file_was_read_copies_only_what_is_owed(tmp_path):
    ob = box(tmp_path)
    for n in range(8):
        ob.add_event(ev(n, pad=200))
    assert ob.spill()
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert ob.refill()  # two lines read: the range owed starts further on
    ob._rewrite = True  # as after a failed append
    ob.add_event(ev(8, pad=200))
    assert ob.spill()
    gen, read, end = ob.spill_ref()
    assert gen == 2 and read == 0
    assert end == os.path.getsize(os.path.join(str(tmp_path), "outbox.2"))
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(2, 9)]


def test_each_failed_read_of_the_spill_file_is_counted(tmp_path):
    ob = box(tmp_path)
    for n in range(6):
        ob.add_event(ev(n))
    assert ob.spill()
    ob.done(ob.peek())
    ob.done(ob.peek())
    real = ob._store._open

    def eio(name, mode="rb"):
        raise OSError(5, "EIO")
    ob._store._open = eio
    assert ob.refill() is False and ob.spill_errors == 1
    assert ob.refill() is False and ob.spill_errors == 2
    assert ob.lost == 0 and ob.events == 4  # EIO is not a missing file: nothing given up
    ob._store._open = real
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(2, 6)]


def test_a_refill_reads_up_to_ram_events_and_keeps_routine_flags(tmp_path):
    ob = box(tmp_path, ram_events=2, capacity_events=4)
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "BatteryIn"))
    ob.add_event(ev(2, "ChargeStarted"))
    ob.add_event(ev(3, "BatteryIn"))
    ob.add_event(ev(4, "BatteryIn"))
    assert ob.spill()
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert ob.refill()
    assert len(ob._items) == 2  # no more than ram_events come back
    assert [it[1] for it in ob._items] == [True, False]  # ChargeStarted is still routine
    for n in range(5, 10):
        ob.add_event(ev(n, "BatteryIn"))
    assert ob.dropped_routine == 0  # 8 events: at the hard cap, not over it
    ob.add_event(ev(10, "BatteryIn"))
    assert ob.dropped_routine == 1
    assert "cab-1-1-2" not in [i for _, i in drain(ob)]


def test_a_lost_spill_counts_its_events_and_keeps_the_telemetry_count_true(tmp_path):
    ob = box(tmp_path)
    for n in range(3):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "t"})
    ob.add_event(ev(3))
    assert ob.spill()  # 2 in the head; spilled: event 2, telemetry, event 3
    ob.add_event(ev(4))  # the tail
    os.remove(os.path.join(str(tmp_path), "outbox.1"))
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert ob.refill() is False and ob.spill_errors == 1
    assert ob.lost == 2 and ob.events == 1 and len(ob) == 1
    assert ob.spill_ref() is None
    assert [i for _, i in drain(ob)] == ["cab-1-1-4"]
    # Lost twice: the count adds up.
    for n in range(5, 10):
        ob.add_event(ev(n))
    assert ob.spill()
    os.remove(os.path.join(str(tmp_path), "outbox.%d" % ob.spill_ref()[0]))
    drain(ob)
    assert ob.lost == 5


def test_a_dropped_spilled_line_is_not_lost_again(tmp_path):
    ob = box(tmp_path, capacity_events=4)  # hard cap 8
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "BatteryIn"))
    ob.add_event(ev(2, "ChargeStarted"))
    for n in range(3, 8):
        ob.add_event(ev(n, "BatteryIn"))
    assert ob.spill()
    ob.add_event(ev(8, "BatteryIn"))  # the spilled ChargeStarted makes room
    os.remove(os.path.join(str(tmp_path), "outbox.1"))
    drain(ob)
    assert ob.dropped_routine == 1 and ob.lost == 5  # events 3..7; event 2 was dropped, not lost


def test_a_spill_reference_that_is_not_gen_read_end_restores_only_the_head(tmp_path):
    for bad in (None, [1, 0], ["1", 0, 10], [1, "0", 10], [1, 0, "10"], [1, 10, 10], [1, -1, 10],
                [1, 11, 10], 7):
        ob = box(tmp_path)
        ob.restore([ev(0)], bad)
        assert ob.events == 1 and ob.spill_ref() is None, bad
        assert ob.spill_errors == 0


def test_a_spill_reference_without_a_store_restores_only_the_head():
    ob = Outbox()
    ob.restore([ev(0)], [1, 0, 10])
    assert ob.events == 1 and ob.spill_ref() is None


def test_a_spill_reference_to_a_missing_file_is_counted_as_an_error(tmp_path):
    ob = box(tmp_path)
    ob.restore([ev(0)], [3, 0, 40])
    assert ob.events == 1 and ob.spill_errors == 1 and ob.spill_ref() is None


def test_restore_keeps_the_lines_before_a_foreign_one_and_marks_the_file_for_rewrite(tmp_path):
    lines = [b'E' + json.dumps(ev(n), separators=(",", ":")).encode() + b"\n" for n in range(3)]
    data = lines[0] + lines[1] + b'Xgarbage\n' + lines[2]
    (tmp_path / "outbox.4").write_bytes(data)
    ob = box(tmp_path)
    ob.restore([], [4, 0, len(data)])
    assert ob.events == 2
    assert ob.spill_ref() == [4, 0, len(lines[0] + lines[1])]
    assert [i for _, i in drain(ob)] == ["cab-1-1-0", "cab-1-1-1"]


def test_a_restored_range_the_file_extends_past_is_written_anew(tmp_path):
    lines = [b'E' + json.dumps(ev(n), separators=(",", ":")).encode() + b"\n" for n in range(3)]
    (tmp_path / "outbox.4").write_bytes(b"".join(lines))
    ob = box(tmp_path)
    ob.restore([], [4, 0, len(lines[0] + lines[1])])  # a line appended after the state
    assert ob.events == 2
    for n in range(3, 8):
        ob.add_event(ev(n))
    assert ob.spill()
    assert ob.spill_ref()[0] == 5  # not appended to a file that holds more than the state said
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in (0, 1, 3, 4, 5, 6, 7)]


def test_restore_of_exactly_the_range_appends_to_the_same_file(tmp_path):
    lines = [b'E' + json.dumps(ev(n), separators=(",", ":")).encode() + b"\n" for n in range(2)]
    (tmp_path / "outbox.4").write_bytes(b"".join(lines))
    ob = box(tmp_path)
    ob.restore([], [4, 0, len(b"".join(lines))])
    ob.add_event(ev(2))
    assert ob.spill()
    assert ob.spill_ref()[0] == 4


def test_a_spill_file_of_another_generation_is_swept_and_the_next_one_is_above_it(tmp_path):
    (tmp_path / "outbox.0").write_bytes(b'E{"id":"x"}\n')
    (tmp_path / "outbox.5").write_bytes(b'E{"id":"x"}\n')
    ob = box(tmp_path)
    ob.restore(None)
    assert sorted(n for n in os.listdir(str(tmp_path)) if n.startswith("outbox.")) == []
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill() and ob.spill_ref()[0] == 6


def test_the_snapshot_lists_tail_events_but_not_tail_telemetry(tmp_path):
    ob = box(tmp_path)
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill()
    ob.add_telemetry({"n": "t"})
    ob.add_event(ev(4))
    assert [d["id"] for d in ob.snapshot()] == ["cab-1-1-%d" % n for n in range(5)]


def test_refill_has_nothing_to_do_when_nothing_is_spilled(tmp_path):
    ob = box(tmp_path)
    ob.add_event(ev(0))
    assert ob.refill() is True and ob.events == 1


def test_write_events_is_a_json_array_of_the_head(tmp_path):
    import io
    ob = Outbox()
    ob.add_event(ev(0))
    ob.add_telemetry({"n": 1})
    ob.add_event(ev(1))
    f = io.StringIO()
    ob.write_events(f)
    assert json.loads(f.getvalue()) == [ev(0), ev(1)]


def test_a_range_of_any_length_is_copied_whole_into_a_new_generation(tmp_path):
    # Whatever the owed range's length modulo the copy's 128-byte chunk, every byte is copied.
    for pad in range(128):
        d = tmp_path / ("p%d" % pad)
        d.mkdir()
        ob = box(d, ram_events=1)
        ob.add_event(ev(0))
        ob.add_event(ev(1, pad=pad + 1))
        assert ob.spill()
        ob._rewrite = True  # as after a failed append: the next spill copies into a new file
        ob.add_event(ev(2))
        assert ob.spill() and ob.spill_ref()[0] == 2
        assert [i for _, i in drain(ob)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-2"], pad
        assert ob.lost == 0


def test_a_spilled_routine_event_is_still_routine_after_a_reboot(tmp_path):
    ob = box(tmp_path, ram_events=1, capacity_events=2)  # hard cap 4
    ob.add_event(ev(0, "BatteryIn"))
    ob.add_event(ev(1, "ChargeStarted"))
    ob.add_event(ev(2, "BatteryIn"))
    assert ob.spill()
    state = ([json.loads(t) for t in ob.event_texts()], ob.spill_ref())
    after = box(tmp_path, ram_events=1, capacity_events=2)
    after.restore(*state)
    assert after.events == 3
    after.add_event(ev(3, "BatteryIn"))
    after.add_event(ev(4, "BatteryIn"))  # at the hard cap: the spilled ChargeStarted makes room
    assert after.dropped_routine == 1 and after.over_cap == 0
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in (0, 2, 3, 4)]


def test_two_appends_to_the_spill_file_are_both_named_by_the_state(tmp_path):
    ob = box(tmp_path, ram_events=1)
    for n in range(3):
        ob.add_event(ev(n))
    assert ob.spill()
    for n in range(3, 6):
        ob.add_event(ev(n))
    assert ob.spill()  # appended to the same file
    gen, read, end = ob.spill_ref()
    assert gen == 1 and read == 0 and end == os.path.getsize(os.path.join(str(tmp_path), "outbox.1"))
    after = box(tmp_path, ram_events=1)
    after.restore([json.loads(t) for t in ob.event_texts()], ob.spill_ref())
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in range(6)]


def test_every_failed_spill_is_counted(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))

    def eio(*a, **k):
        raise OSError(5, "EIO")
    ob._store._open = eio
    assert ob.spill() is False and ob.spill() is False
    assert ob.spill_errors == 2


def test_the_head_is_refilled_once_it_is_below_half_of_ram_events(tmp_path):
    ob = box(tmp_path, ram_events=4)
    for n in range(10):
        ob.add_event(ev(n))
    assert ob.spill() and len(ob._items) == 4
    assert not ob.wants_refill()
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert not ob.wants_refill()  # 2 of 4 left: not yet
    ob.done(ob.peek())
    assert ob.wants_refill()  # 1 left
    assert ob.refill() and len(ob._items) == 4
    empty = box(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path)
    assert not empty.wants_refill()  # nothing spilled: nothing to read back


def test_spill_with_nothing_to_move_succeeds_so_the_app_persists(tmp_path):
    ob = box(tmp_path)
    assert ob.spill() is True
    ob.add_event(ev(0))
    assert ob.spill() is True and ob.spill_ref() is None


def test_lines_this_outbox_did_not_write_end_the_range_read_back(tmp_path):
    good = b'E' + json.dumps(ev(0), separators=(",", ":")).encode() + b"\n"
    for bad in (b'E{"id":"x"\n', b'E"id":"x"}\n', b'E{"id":"x"}'):  # no }, no {, no newline
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "outbox.3").write_bytes(good + bad)
        ob = box(d)
        ob.restore([], [3, 0, len(good + bad)])
        assert ob.events == 1, bad
        assert [i for _, i in drain(ob)] == ["cab-1-1-0"]


def test_after_everything_spilled_is_read_back_the_outbox_spills_again(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    assert ob.spill()
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(5)]
    for n in range(5, 10):
        ob.add_event(ev(n))
    assert ob.spill() and ob.spill_ref() is not None
    ob.add_event(ev(10))
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(5, 11)]


def test_the_snapshot_after_a_partial_refill_lists_each_event_once(tmp_path):
    ob = box(tmp_path)
    for n in range(8):
        ob.add_event(ev(n))
    assert ob.spill()
    ob.done(ob.peek())
    ob.done(ob.peek())
    assert ob.refill()
    assert [d["id"] for d in ob.snapshot()] == ["cab-1-1-%d" % n for n in range(2, 8)]


def test_a_routine_event_in_the_tail_makes_room_at_the_hard_cap_while_lines_are_spilled(tmp_path):
    ob = box(tmp_path, capacity_events=3)  # hard cap 6
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill()  # 0, 1 in the head; 2, 3 spilled, none routine
    ob.add_event(ev(4, "ChargeStarted"))  # the tail
    ob.add_event(ev(5))
    ob.add_event(ev(6))  # at the hard cap: the tail's ChargeStarted makes room
    assert ob.dropped_routine == 1 and ob.over_cap == 0 and ob.events == 6
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in (0, 1, 2, 3, 5, 6)]


def test_the_oldest_telemetry_in_the_tail_is_dropped_while_lines_are_spilled(tmp_path):
    ob = box(tmp_path, capacity_telemetry=2)
    for n in range(4):
        ob.add_event(ev(n))
    assert ob.spill()  # no telemetry in the head or the spilled lines
    for n in "abc":
        ob.add_telemetry({"n": n})  # the tail; c pushes a out
    assert ob.dropped_telemetry == 1
    assert [i for k, i in drain(ob) if k == TELEMETRY] == ["b", "c"]


def test_telemetry_read_back_and_sent_is_not_dropped_a_second_time(tmp_path):
    ob = box(tmp_path, capacity_telemetry=1)
    for n in range(3):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "a"})
    ob.add_event(ev(3))
    ob.add_event(ev(4))
    assert ob.spill()  # spilled: 2, a, 3, 4
    sent = []
    for _ in range(2):
        ob.done(ob.peek())
    assert ob.refill()  # 2 and a back in the head
    for _ in range(2):
        item = ob.peek()
        sent.append(json.loads(item[2]).get("n"))
        ob.done(item)
    assert sent == [None, "a"]
    ob.add_telemetry({"n": "b"})
    ob.add_telemetry({"n": "c"})  # b, queued, makes room; not a, already sent
    assert ob.dropped_telemetry == 1
    assert [i for k, i in drain(ob) if k == TELEMETRY] == ["c"]
    assert len(ob) == 0


def test_at_the_hard_cap_a_spilled_routine_event_makes_room_never_an_older_swap_event(tmp_path):
    ob = box(tmp_path, ram_events=1, capacity_events=3)  # hard cap 6
    ob.add_event(ev(0))
    ob.add_event(ev(1))
    ob.add_event(ev(2, "ChargeStarted"))
    ob.add_event(ev(3))
    assert ob.spill()  # spilled: 1 (a swap event), 2 (routine), 3
    ob.add_event(ev(4))
    ob.add_event(ev(5))
    ob.add_event(ev(6))  # at the hard cap
    assert ob.dropped_routine == 1 and ob.over_cap == 0
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in (0, 1, 3, 4, 5, 6)]


def test_after_a_reboot_a_spilled_swap_event_is_still_never_dropped(tmp_path):
    ob = box(tmp_path, ram_events=1, capacity_events=3)  # hard cap 6
    ob.add_event(ev(0))
    ob.add_event(ev(1))
    ob.add_event(ev(2, "ChargeStarted"))
    ob.add_event(ev(3))
    assert ob.spill()  # spilled: 1 (a swap event), 2 (routine), 3
    state = ([json.loads(t) for t in ob.event_texts()], ob.spill_ref())
    after = box(tmp_path, ram_events=1, capacity_events=3)
    after.restore(*state)
    after.add_event(ev(4))
    after.add_event(ev(5))
    after.add_event(ev(6))  # at the hard cap: the routine one makes room, not event 1
    assert after.dropped_routine == 1 and after.over_cap == 0
    assert [i for _, i in drain(after)] == ["cab-1-1-%d" % n for n in (0, 1, 3, 4, 5, 6)]


def test_spilled_telemetry_sent_leaves_the_event_count_true(tmp_path):
    # (`saturated`, which refuses new swaps, is that count at the soft bound)
    ob = box(tmp_path)
    for n in range(3):
        ob.add_event(ev(n))
    ob.add_telemetry({"n": "a"})
    ob.add_event(ev(3))
    assert ob.spill()  # spilled: 2, a, 3
    for _ in range(2):
        ob.done(ob.peek())
    assert ob.refill()
    ob.done(ob.peek())  # event 2
    ob.done(ob.peek())  # telemetry a, read back as telemetry
    assert ob.events == 1 and len(ob) == 1
    assert [i for _, i in drain(ob)] == ["cab-1-1-3"]
    assert ob.events == 0 and len(ob) == 0


def _torn_spill_file(tmp_path):
    """An outbox whose spill file lost its end (a torn write): the head refilled past the torn
    line gives the file up. Returns the outbox after that refill."""
    ob = box(tmp_path)
    for n in range(6):
        ob.add_event(ev(n))
    assert ob.spill()
    path = tmp_path / "outbox.1"
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"\n") + 1] + b'E{"id":')
    ob.done(ob.peek())
    ob.done(ob.peek())
    return ob


def test_a_spill_file_given_up_makes_the_state_be_written_again_at_once(tmp_path):
    ob = _torn_spill_file(tmp_path)
    ob.dirty = False
    assert ob.refill() is False and ob.lost == 3
    assert ob.dirty is True  # the state still names the range given up
    assert ob.spill_ref() is None


def test_a_spill_file_given_up_is_deleted_once_the_state_is_written(tmp_path):
    ob = _torn_spill_file(tmp_path)
    assert ob.refill() is False
    ob.persisted()
    assert [n for n in os.listdir(str(tmp_path)) if n.startswith("outbox.")] == []


def test_a_spill_file_that_ends_before_the_range_restores_its_whole_lines(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    assert ob.spill()
    state = ([json.loads(t) for t in ob.event_texts()], ob.spill_ref())
    path = tmp_path / "outbox.1"
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"\n") + 1])  # the power went: one line of three kept
    after = box(tmp_path)
    after.restore(*state)
    assert after.events == 3
    assert [i for _, i in drain(after)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-2"]


def test_the_shortest_line_the_outbox_writes_does_not_end_the_range_read_back(tmp_path):
    ob = box(tmp_path, ram_events=1)
    ob.add_event(ev(0))
    ob.add_event(ev(1))
    ob.add_telemetry({})  # "T{}\n": 4 bytes
    ob.add_event(ev(2))
    assert ob.spill()
    state = ([json.loads(t) for t in ob.event_texts()], ob.spill_ref())
    after = box(tmp_path, ram_events=1)
    after.restore(*state)
    assert after.events == 3
    assert [i for _, i in drain(after)] == ["cab-1-1-0", "cab-1-1-1", "cab-1-1-2"]


class _FullFlash:
    """A file that takes `writes` writes, then fails (ENOSPC) with part of a line written."""

    def __init__(self, f, writes):
        self.f = f
        self.left = writes

    def write(self, b):
        if not self.left:
            raise OSError(28, "ENOSPC")
        self.left -= 1
        return self.f.write(b)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


def test_a_new_spill_file_left_part_written_by_a_failed_spill_is_written_afresh(tmp_path):
    ob = box(tmp_path)
    for n in range(5):
        ob.add_event(ev(n))
    real = ob._store._open

    def torn(name, mode="rb"):
        ob._store._open = real
        return _FullFlash(real(name, mode), 4)  # event 2's line, and the tag of event 3's
    ob._store._open = torn
    assert ob.spill() is False and ob.spill_errors == 1
    assert ob.spill()  # the same generation, begun again
    assert ob.spill_ref() == [1, 0, os.path.getsize(os.path.join(str(tmp_path), "outbox.1"))]
    assert [i for _, i in drain(ob)] == ["cab-1-1-%d" % n for n in range(5)]


def _fail_next_append(ob):
    real = ob._store._open

    def once(name, mode="rb"):
        ob._store._open = real
        if mode == "ab":
            raise OSError(28, "ENOSPC")
        return real(name, mode)
    ob._store._open = once


def test_copying_the_range_owed_into_a_new_generation_takes_a_chunk_of_heap_not_the_range(
        tmp_path):
    import tracemalloc
    ob = box(tmp_path, ram_events=1)
    for n in range(40):
        ob.add_event(ev(n, pad=1500))
    assert ob.spill()  # about 60 KB owed on flash
    _fail_next_append(ob)
    ob.add_event(ev(40))
    assert ob.spill() is False  # the next spill starts a new file and copies the range over
    tracemalloc.start()
    try:
        assert ob.spill() and ob.spill_ref()[0] == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024, peak


def test_what_is_published_and_persisted_is_compact_json():
    import io
    assert ob_mod.dumps({"a": [1, 2]}) == '{"a":[1,2]}'
    f = io.StringIO()
    ob_mod.dump({"a": [1, 2]}, f)
    assert f.getvalue() == '{"a":[1,2]}'
