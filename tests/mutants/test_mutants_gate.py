"""The command gate where mutation testing found it unchecked: strict UTF-8 (as CPython decodes it)
at every boundary of the encoding, every ack a valid ack of the contract (mqtt.md: one reply to
every command, `detail` a string), and the memory of the last 64 req_ids."""
import itertools
import json

import pytest

from tukar import errors
from tukar.gate import Gate, utf8_ok
from tukar_tools import schemas
from tukar_tools.sign import command, sign

KEY = bytes(range(32))
NOW = 1764300000

# Lead bytes at and around every boundary of UTF-8, and continuation bytes around 0x80..0xBF and
# the narrowed ranges after E0, ED, F0 and F4.
LEADS = [0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF,
         0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
CONTS = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]


def cpython_ok(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_utf8_ok_agrees_with_cpython_on_every_boundary_sequence():
    seqs = [b""]
    for lead in LEADS:
        seqs.append(bytes([lead]))
        for n in (1, 2, 3):
            for cont in itertools.product(CONTS, repeat=n):
                seqs.append(bytes([lead]) + bytes(cont))
    for s in seqs:
        for wrapped in (s, b"a" + s, s + b"a", b"\xc3\xa9" + s):  # after ASCII or a valid character
            assert utf8_ok(wrapped) == cpython_ok(wrapped), wrapped.hex()


@pytest.mark.parametrize("text", ["é", "€", "𝄞", "a€b𝄞c", "\U0010ffff", "\ud7ff", "\ue000"])
def test_valid_characters_of_every_length_pass(text):
    assert utf8_ok(text.encode())
    assert utf8_ok(("x" * 5 + text) .encode())


def test_a_sequence_cut_short_at_the_end_fails():
    for full in ("é", "€", "𝄞"):
        b = full.encode()
        for cut in range(1, len(b)):
            assert not utf8_ok(b[:cut])
            assert not utf8_ok(b"ok" + b[:cut])


def ack_of(gate, payload, retained=False, now=0, wall=NOW):
    body, ack = gate.admit(payload, retained, now, wall)
    assert body is None
    schemas.validate("ack", ack)
    assert isinstance(ack["detail"], str) and ack["detail"]
    return ack


def test_every_refusal_is_a_valid_ack_with_a_detail():
    g = Gate(KEY, rate_per_s=3)
    good = sign(command("rebirth", "r-1", ts=NOW), KEY)
    cases = [
        (b"\xff\xfe", errors.BAD_JSON),
        (b"{not json", errors.BAD_JSON),
        (b"[1]", errors.BAD_JSON),
        (b"x" * 3000, errors.BAD_JSON),
    ]
    for payload, code in cases:
        assert ack_of(Gate(KEY), payload)["error"] == code
    assert ack_of(g, good, retained=True)["error"] == errors.NOT_ALLOWED
    assert ack_of(Gate(KEY), json.dumps({"body": "{}", "sig": "00" * 32}).encode())["error"] == \
        errors.BAD_SIGNATURE
    for i in range(3):
        g.admit(sign(command("rebirth", "r-%d" % (i + 10), ts=NOW), KEY), False, i, NOW)
    a = ack_of(g, good, now=5)
    assert a["error"] == errors.RATE_LIMITED and "3" in a["detail"]


def test_a_gate_that_fails_inside_still_answers_with_a_valid_ack():
    g = Gate(KEY)
    g._signer = None  # a bug: verify() raises
    payload = sign(command("rebirth", "r-1", ts=NOW), KEY)
    a = ack_of(g, payload)
    assert a["error"] == errors.BAD_JSON and a["req_id"] is None
    assert "AttributeError" in a["detail"]


def test_a_duplicate_while_executing_is_busy_with_a_detail():
    g = Gate(KEY)
    payload = sign(command("rebirth", "r-1", ts=NOW), KEY)
    body, ack = g.admit(payload, False, 0, NOW)
    assert body is not None
    a = ack_of(g, payload, now=200)
    assert (a["error"], a["duplicate"], a["req_id"]) == (errors.BUSY, True, "r-1")


def test_acks_the_executor_remembers_are_replayed_for_the_last_64_req_ids():
    g = Gate(KEY, rate_per_s=1000)
    for i in range(70):
        payload = sign(command("rebirth", "r-%d" % i, ts=NOW), KEY)
        body, _ = g.admit(payload, False, i, NOW)
        assert body is not None
        ack = {"req_id": "r-%d" % i, "ok": i % 2 == 0, "error": None if i % 2 == 0 else "busy",
               "detail": "" if i % 2 == 0 else "no %d" % i}
        g.remember("r-%d" % i, ack)
    for i in range(6, 70):
        a = g.admit(sign(command("rebirth", "r-%d" % i, ts=NOW), KEY), False, 1000 + i, NOW)[1]
        assert a["duplicate"] is True and a["ok"] == (i % 2 == 0), i
        if i % 2:
            assert a["detail"] == "no %d" % i
    body, ack = g.admit(sign(command("rebirth", "r-0", ts=NOW), KEY), False, 2000, NOW)
    assert body is not None  # forgotten: the 65th newer req_id pushed it out


def test_an_ack_remembered_for_a_req_id_the_gate_never_admitted_is_kept_too():
    # The app remembers what the executor answered; a req_id not reserved (a restart between)
    # still gets a place of its own, and does not take the place of one just admitted.
    g = Gate(KEY, rate_per_s=1000)
    p1 = sign(command("rebirth", "r-1", ts=NOW), KEY)
    assert g.admit(p1, False, 0, NOW)[0] is not None
    g.remember("r-x", {"req_id": "r-x", "ok": False, "error": "busy", "detail": "d"})
    p2 = sign(command("rebirth", "r-2", ts=NOW), KEY)
    assert g.admit(p2, False, 1, NOW)[0] is not None
    g.remember("r-1", {"req_id": "r-1", "ok": True, "error": None, "detail": ""})
    assert g.admit(sign(command("rebirth", "r-x", ts=NOW), KEY), False, 2, NOW)[1]["error"] == "busy"
    a1 = g.admit(p1, False, 3, NOW)[1]
    assert a1["ok"] is True and a1["duplicate"] is True
    a2 = g.admit(p2, False, 4, NOW)[1]
    assert a2["error"] == errors.BUSY and a2["detail"] == "command still executing"
    for i in range(63):  # 63 more: r-1 and r-x, the oldest, are forgotten; r-2 is not
        g.remember("q-%d" % i, {"req_id": "q-%d" % i, "ok": True, "error": None, "detail": ""})
    assert g.admit(p2, False, 5, NOW)[1]["duplicate"] is True
    assert g.admit(p1, False, 6, NOW)[0] is not None


def test_a_remembered_plain_success_comes_back_as_the_same_plain_success():
    g = Gate(KEY)
    p = sign(command("rebirth", "r-1", ts=NOW), KEY)
    g.admit(p, False, 0, NOW)
    g.remember("r-1", {"req_id": "r-1", "ok": True, "error": None, "detail": ""})
    a = g.admit(p, False, 1, NOW)[1]
    assert a == {"req_id": "r-1", "ok": True, "error": None, "detail": "", "duplicate": True}
    p2 = sign(command("start_swap", "r-2", ts=NOW, id_token="t"), KEY)
    g.admit(p2, False, 2, NOW)
    g.remember("r-2", {"req_id": "r-2", "ok": True, "error": None, "detail": "", "slot": 4,
                       "session": "s-1"})
    a2 = g.admit(p2, False, 3, NOW)[1]
    assert (a2["slot"], a2["session"]) == (4, "s-1")


def test_a_non_hex_signature_is_bad_signature():
    g = Gate(KEY)
    body = json.dumps(command("rebirth", "r-1", ts=NOW))
    for sig in ("zz" * 32, "", "XXXX", "0"):
        p = json.dumps({"body": body, "sig": sig}).encode()
        assert ack_of(g if sig else Gate(KEY), p)["error"] == errors.BAD_SIGNATURE


def _signed(body_text):
    from tukar_tools.sign import signature
    return json.dumps({"body": body_text, "sig": signature(body_text, KEY)}).encode()


@pytest.mark.parametrize("payload, code, req_id", [
    (b"\xff", errors.BAD_JSON, None),  # not UTF-8
    (b"x" * 2049, errors.BAD_JSON, None),
    (b"{", errors.BAD_JSON, None),  # envelope not JSON
    (b"[]", errors.BAD_JSON, None),  # envelope not an object
    (b'{"body": 1, "sig": "00"}', errors.BAD_JSON, None),
    (b'{"body": "\\ud800", "sig": "00"}', errors.BAD_JSON, None),  # a lone surrogate: not UTF-8
    (_signed("{"), errors.BAD_JSON, None),  # body not JSON
    (_signed("[1]"), errors.BAD_JSON, None),  # body not an object
    (_signed('{"req_id": "", "ts": 1, "cmd": "x"}'), errors.BAD_ARGS, None),
    (_signed('{"req_id": "r-1", "ts": "1", "cmd": "x"}'), errors.BAD_ARGS, "r-1"),
    (_signed('{"req_id": "r-1", "ts": %d, "cmd": 5}' % NOW), errors.BAD_ARGS, "r-1"),
    (_signed('{"req_id": "r-1", "ts": %d, "cmd": "x"}' % (NOW - 301)), errors.STALE, "r-1"),
    (b'{"body": "{}", "sig": "' + b"00" * 32 + b'"}', errors.BAD_SIGNATURE, None),
])
def test_every_refusal_of_the_gate_is_a_valid_ack_that_says_why(payload, code, req_id):
    a = ack_of(Gate(KEY), payload)
    assert (a["error"], a["req_id"], a["ok"]) == (code, req_id, False)


def test_a_stale_ack_names_the_skew_and_the_limit():
    a = ack_of(Gate(KEY), _signed('{"req_id": "r-1", "ts": %d, "cmd": "x"}' % (NOW + 400)))
    assert "400" in a["detail"] and "300" in a["detail"]


def test_each_of_the_last_64_acks_remembered_is_replayed_whether_or_not_the_gate_reserved_it():
    g = Gate(KEY, rate_per_s=1000)
    for i in range(64):
        g.remember("q-%d" % i, {"req_id": "q-%d" % i, "ok": False, "error": "busy",
                                "detail": "no %d" % i})
    for i in range(64):
        body, a = g.admit(sign(command("rebirth", "q-%d" % i, ts=NOW), KEY), False, i, NOW)
        assert body is None and a["duplicate"] is True and a["detail"] == "no %d" % i, i


def test_remembering_the_last_64_plain_successes_costs_the_gate_no_heap():
    # (the gate's comment: a plain success, most commands' ack, is kept as 1, not as its text)
    import tracemalloc
    from tukar.errors import make_ack
    g = Gate(KEY, rate_per_s=1000)
    acks = []
    for i in range(64):
        r = "r-%d" % i
        assert g.admit(sign(command("rebirth", r, ts=NOW), KEY), False, i, NOW)[0] is not None
        acks.append((r, make_ack(r)))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r, ack in acks:
            g.remember(r, ack)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024, grown
    a = g.admit(sign(command("rebirth", "r-5", ts=NOW), KEY), False, 100, NOW)[1]
    assert a == {"req_id": "r-5", "ok": True, "error": None, "detail": "", "duplicate": True}


# -- every refusal's detail -----------------------------------------------------------------------
# mqtt.md fixes the code; the detail is what an integrator debugging a client reads beside it.
def _env(text, sig=None):
    from tukar_tools.sign import signature
    return json.dumps({"body": text, "sig": signature(text, KEY) if sig is None else sig}).encode()


def _body(**fields):
    return _env(json.dumps(fields))


def cmd(req_id="r-9"):
    return sign(command("rebirth", req_id, ts=NOW), KEY)


class _Broken(Gate):
    def _admit(self, *a):
        raise KeyError("x")


REFUSALS = [
    ("rate", None, "rate_limited", "more than 10 commands per second"),
    ("size", b"x" * 2049, "bad_json", "payload over 2048 bytes"),
    ("utf8", b'{"body":"\xff"}', "bad_json", "payload is not UTF-8"),
    ("json", b"{not json", "bad_json", "envelope is not JSON"),
    ("object", b"[1]", "bad_json", "envelope is not an object"),
    ("fields", b'{"body":1,"sig":"00"}', "bad_json", "envelope needs string body and sig"),
    ("surrogate", b'{"body":"\\ud800","sig":"00"}', "bad_json", "body is not UTF-8"),
    ("sig", _env('{"req_id":"r-1"}', sig="00" * 32), "bad_signature",
     "signature does not match body"),
    ("body_json", _env("{not json"), "bad_json", "body is not JSON"),
    ("body_object", _env("[1]"), "bad_json", "body is not an object"),
    ("req_id", _body(req_id="", ts=NOW, cmd="rebirth"), "bad_args",
     "req_id must be a string of 1 to 64 characters"),
    ("ts", _body(req_id="r-1", ts="now", cmd="rebirth"), "bad_args", "ts must be an integer"),
    ("cmd", _body(req_id="r-1", ts=NOW, cmd=5), "bad_args", "cmd must be a string"),
    ("stale", _body(req_id="r-1", ts=NOW - 301, cmd="rebirth"), "stale",
     "ts -301 s from cabinet clock, limit 300"),
]


@pytest.mark.parametrize("name, payload, code, detail", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_gate_refusal_gives_its_code_and_a_detail_naming_its_cause(name, payload, code,
                                                                          detail):
    g = Gate(KEY)
    if name == "rate":
        for i in range(10):
            assert g.admit(cmd(req_id="r-%d" % i), False, 0, NOW)[0] is not None
        payload = cmd(req_id="r-10")
    body, ack = g.admit(payload, False, 0, NOW)
    assert body is None and (ack["ok"], ack["error"], ack["detail"]) == (False, code, detail)
    schemas.validate("ack", ack)


def test_a_bug_in_the_gate_costs_one_command_and_names_the_exception():
    body, ack = _Broken(KEY).admit(cmd(), False, 0, NOW)
    assert body is None and (ack["error"], ack["detail"]) == ("bad_json", "rejected: KeyError")


# -- the req_id memory's hashes and its compact acks ------------------------------------------------
# The gate keeps a req_id as two 22-bit hashes (`_key`) and a start_swap success as one int: what
# a duplicate is judged by, and what the memory costs. Survivors of mutation testing showed that
# weaker hashes, and acks kept as text when an int would do, passed every test.

def _ids():
    """20,000 distinct req_ids of the shapes back ends send: random hex (UUID-like), counters, and
    ids that differ only in their first characters or only in their last (long shared parts)."""
    import random
    rnd = random.Random(20261130)
    ids = ["%032x" % rnd.getrandbits(128) for _ in range(8000)]
    ids += ["r-%d" % i for i in range(4000)]
    ids += ["%04d-order-for-rider-station-42-south" % i for i in range(4000)]
    ids += ["station-42-south-order-for-rider-%04d" % i for i in range(4000)]
    assert len(set(ids)) == len(ids)
    return ids


def _keys(g, ids):
    out = []
    for r in ids:
        g._key(r)
        out.append((g._ka, g._kb))
    return out


def test_twenty_thousand_req_ids_get_twenty_thousand_different_keys():
    """44 bits of hash: 20,000 ids collide with probability about 1e-5. A hash that forgets early
    characters (an even multiplier), or one that shrinks its state (`&` for `^`), collides at once."""
    ids = _ids()
    keys = _keys(Gate(KEY), ids)
    assert len(set(keys)) == len(ids)
    assert len({a for a, _ in keys}) > len(ids) * 0.99  # each hash alone nearly collision-free too
    assert len({b for _, b in keys}) > len(ids) * 0.99


def test_a_req_id_whose_one_hash_matches_a_remembered_one_is_not_a_duplicate():
    """Among 20,000 ids some pairs share one 22-bit hash; the gate must need both to call a
    command a duplicate, or it would answer a new command with another's ack and not run it."""
    ids = _ids()
    g = Gate(KEY, rate_per_s=1000)
    keys = _keys(g, ids)
    pairs = []
    for half in (0, 1):
        seen = {}
        for r, k in zip(ids, keys):
            other = seen.setdefault(k[half], r)
            if other != r:
                pairs.append((other, r))
                break
    assert len(pairs) == 2  # an `a` match and a `b` match (the birthday bound makes both certain)
    t = 0
    for first, second in pairs:
        g.remember(first, {"req_id": first, "ok": True, "error": None, "detail": ""})
        t += 1
        body, ack = g.admit(sign(command("rebirth", second, ts=NOW), KEY), False, t, NOW)
        assert body is not None and ack is None, (first, second, ack)


def _stored(g, req_id):
    i = g._find(req_id)
    assert i >= 0
    return g._acks[i]


SWAP_OK = {"req_id": "r", "ok": True, "error": None, "detail": ""}


@pytest.mark.parametrize("session,slot", [("s-0", 0), ("s-1", 0), ("s-7", 31), ("s-16777215", 12)])
def test_a_start_swap_success_is_kept_as_one_int_and_replayed_exactly(session, slot):
    g = Gate(KEY)
    ack = dict(SWAP_OK, session=session, slot=slot)
    g.remember("r", ack)
    assert type(_stored(g, "r")) is int
    assert g._replay(g._find("r"), "r") == dict(ack, duplicate=True)


@pytest.mark.parametrize("session,slot", [
    ("s-16777216", 1), ("s-33554431", 1),  # 1 << 24 and beyond: the int has 24 bits for it
    ("s-1", 32), ("s-1", 33), ("s-1", -1),  # 5 bits of slot
    ("s-007", 3), ("s-", 3), ("s-x5", 3), ("s-5x", 3), ("t-5", 3), (5, 3), ("s-5", "3"),
])
def test_an_ack_the_int_cannot_hold_is_kept_as_text_and_replayed_exactly(session, slot):
    g = Gate(KEY)
    ack = dict(SWAP_OK, session=session, slot=slot)
    g.remember("r", ack)
    kept = _stored(g, "r")
    assert type(kept) is str and "req_id" not in json.loads(kept)
    assert g._replay(g._find("r"), "r") == dict(ack, duplicate=True)


@pytest.mark.parametrize("ack", [
    {"req_id": "r", "ok": False, "error": "busy", "detail": "", "session": "s-1", "slot": 2},
    {"req_id": "r", "ok": True, "error": None, "detail": "x", "session": "s-1", "slot": 2},
    {"req_id": "r", "ok": False, "error": "busy", "detail": ""},
    {"req_id": "r", "ok": True, "error": None, "detail": "", "session": "s-1"},
    {"req_id": "r", "ok": True, "error": None, "detail": "", "session": "s-1", "slot": 2, "x": 1},
])
def test_an_ack_unlike_a_start_swap_success_is_never_replayed_as_one(ack):
    g = Gate(KEY)
    g.remember("r", ack)
    assert type(_stored(g, "r")) is not int
    assert g._replay(g._find("r"), "r") == dict(ack, duplicate=True)


def test_the_text_kept_for_an_ack_leaves_out_its_req_id():
    # (the req_id is the key; a copy of it in the text would only cost memory: up to 64 characters
    # times 64 acks)
    g = Gate(KEY)
    long_id = "q" * 64
    g.remember(long_id, {"req_id": long_id, "ok": False, "error": "busy", "detail": "d"})
    assert long_id not in _stored(g, long_id)
