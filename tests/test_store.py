"""Persistence: write temp, close, rename; streamed text; rate-limited keys; faults."""
import json
import os

from tukar.store import Store


def test_save_then_load_round_trips(tmp_path):
    s = Store(str(tmp_path / "st"))
    assert s.save("journal", {"a": [1, 2]}, 0)
    assert Store(str(tmp_path / "st")).load("journal") == {"a": [1, 2]}


def test_a_writer_streams_its_text_piece_by_piece_and_the_store_keeps_no_copy(tmp_path):
    pieces = []

    def writer(f):
        for piece in ('{"journal":', '{"a":1}', ',"outbox":[', '{"id":"c-1-1"}', "]}"):
            pieces.append(piece)
            f.write(piece)
    s = Store(str(tmp_path))
    assert s.save("state", writer, 0)
    assert len(pieces) == 5
    assert Store(str(tmp_path)).load("state") == {"journal": {"a": 1}, "outbox": [{"id": "c-1-1"}]}
    assert not any(isinstance(v, str) and "journal" in v for v in vars(s).values())


def test_a_failed_writer_is_retried_with_what_is_current_then(tmp_path):
    value = ["old"]
    s = Store(str(tmp_path))
    real = s._open

    def broken(*a, **k):
        raise OSError(5, "EIO")
    s._open = broken
    assert s.save("k", lambda f: f.write('"%s"' % value[0]), 0) is False
    value[0] = "new"
    s._open = real
    s.flush(10)
    assert Store(str(tmp_path)).load("k") == "new"


def test_rate_limited_key_writes_its_latest_value_after_the_interval(tmp_path):
    s = Store(str(tmp_path))
    s.limit("soc", 60_000)
    assert s.save("soc", 1, 0)
    assert s.save("soc", 2, 1000) is False
    assert s.save("soc", 3, 2000) is False
    s.flush(30_000)
    assert Store(str(tmp_path)).load("soc") == 1
    s.flush(60_000)
    assert Store(str(tmp_path)).load("soc") == 3
    assert s.writes == 2


def test_write_goes_through_a_temporary_file_renamed_over_the_old(tmp_path, mocker):
    s = Store(str(tmp_path))
    s.save("k", {"v": 1}, 0)
    rename = mocker.spy(os, "rename")
    s.save("k", {"v": 2}, 1)
    src, dst = rename.call_args.args
    assert src == dst + ".tmp" and dst.endswith("/k.json")


def test_torn_temporary_file_leaves_the_last_good_value(tmp_path):
    s = Store(str(tmp_path))
    s.save("k", {"v": 1}, 0)
    (tmp_path / "k.json.tmp").write_text('{"v": 2')  # power cut before close/rename
    assert Store(str(tmp_path)).load("k") == {"v": 1}


def test_corrupt_file_loads_as_none_and_is_reported(tmp_path):
    (tmp_path / "k.json").write_text("{not json")
    s = Store(str(tmp_path))
    assert s.load("k") is None
    assert s.errors == 1 and "k" in s.last_error


def test_flash_fault_keeps_the_value_pending_and_retries(tmp_path):
    s = Store(str(tmp_path))

    def broken(*a, **k):
        raise OSError(5, "EIO")

    s._open = broken
    assert s.save("k", {"v": 1}, 0) is False
    assert s.errors == 1
    s._open = open
    s.flush(10)
    assert json.loads((tmp_path / "k.json").read_text()) == {"v": 1}


def test_a_root_whose_parents_do_not_exist_yet_is_created(tmp_path):
    s = Store(str(tmp_path / "sim" / "cab-1"))
    assert s.save("state", {"v": 1}, 0)
    assert Store(str(tmp_path / "sim" / "cab-1")).load("state") == {"v": 1}
