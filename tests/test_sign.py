"""HMAC-SHA256 of the firmware (no hmac module on the device) against CPython's hmac."""
import hashlib
import hmac
import json
import pathlib
import sys

import pytest
from hypothesis import given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "firmware", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tukar import sign as fw  # noqa: E402
from tukar_tools import sign as host  # noqa: E402

FUEL = 10**10


def ref(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def run_mpy(code):
    from tukar_tools import mpvm

    r = mpvm.run(code, fuel=FUEL, timeout=60)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


@given(st.binary(max_size=200), st.binary(max_size=600))
def test_hmac_matches_cpython_hmac_for_any_key_and_message(key, msg):
    assert fw.hmac_sha256(key, msg) == ref(key, msg)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 128, 200])
def test_keys_around_the_64_byte_block_match_cpython(n):
    key = bytes(range(n % 256))[:n] if n < 256 else bytes(n)
    assert fw.hmac_sha256(key, b"body") == ref(key, b"body")


def test_key_longer_than_64_bytes_is_hashed_first():
    key = b"x" * 65
    assert fw.hmac_sha256(key, b"m") == fw.hmac_sha256(hashlib.sha256(key).digest(), b"m")


def test_rfc4231_case_2():
    d = fw.Signer(b"Jefe").hexdigest(b"what do ya want for nothing?")
    assert d == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_hexdigest_is_64_lowercase_hex_digits():
    d = fw.Signer(b"k").hexdigest(b"m")
    assert len(d) == 64 and d == d.lower() and int(d, 16) >= 0


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_equal_agrees_with_bytes_equality(a, b):
    assert fw.equal(a, b) == (a == b)


def test_equal_rejects_prefix_and_extension():
    d = bytes(32)
    assert not fw.equal(d, d[:31])
    assert not fw.equal(d, d + b"\0")
    assert not fw.equal(d, b"")
    assert fw.equal(b"", b"")


class CountingBytes(bytes):
    """Counts indexing, to show the comparison reads every byte whatever the difference."""

    reads = 0

    def __getitem__(self, i):
        CountingBytes.reads += 1
        return bytes.__getitem__(self, i)


def test_equal_reads_every_byte_even_when_the_first_differs():
    a = CountingBytes(b"\x00" * 32)
    for other in (b"\x01" + bytes(31), bytes(31) + b"\x01", bytes(32), b"\x01"):
        CountingBytes.reads = 0
        fw.equal(a, other)
        assert CountingBytes.reads == 32


def test_verify_accepts_upper_case_and_rejects_non_hex():
    s = fw.Signer(b"key")
    sig = s.hexdigest(b"body")
    assert s.verify(b"body", sig)
    assert s.verify(b"body", sig.upper())
    assert not s.verify(b"body", "zz" * 32)
    assert not s.verify(b"body", sig[:-2])
    assert not s.verify(b"bodx", sig)


def test_host_envelope_verifies_with_firmware_signer():
    key = bytes(range(32))
    env = json.loads(host.sign({"req_id": "r-9", "ts": 1764300000, "cmd": "rebirth"}, key))
    assert set(env) == {"body", "sig"}
    assert fw.Signer(key).verify(env["body"].encode(), env["sig"])


def test_host_sign_keeps_a_string_body_byte_for_byte():
    body = '{"req_id":"r-9", "ts":1764300000,"cmd":"start_swap","id_token":"rider-77"}'
    env = json.loads(host.sign(body, b"k" * 16))
    assert env["body"] == body
    assert env["sig"] == hmac.new(b"k" * 16, body.encode(), hashlib.sha256).hexdigest()


def test_parse_key_accepts_hex_with_prefix_spaces_and_case():
    assert host.parse_key("0x00112233 44556677 8899AABB CCDDEEFF") == bytes.fromhex(
        "00112233445566778899aabbccddeeff")


@pytest.mark.parametrize("text", ["not hex", "abc", "00" * 15, ""])
def test_parse_key_refuses_non_hex_odd_or_short_keys(text):
    with pytest.raises(host.KeyFormatError):
        host.parse_key(text)


@pytest.mark.mpy
def test_micropython_hmac_matches_cpython():
    import random

    rnd = random.Random(4)
    cases = []
    for n in (0, 1, 32, 63, 64, 65, 100, 300):
        key = bytes(rnd.randrange(256) for _ in range(n))
        msg = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300)))
        cases.append((key.hex(), msg.hex()))
    code = (
        "import binascii\nfrom tukar.sign import Signer, equal\n"
        "for k, m in %r:\n"
        "    print(Signer(binascii.unhexlify(k)).hexdigest(binascii.unhexlify(m)))\n"
        "print(equal(b'ab', b'ab'), equal(b'ab', b'a'), equal(b'ab', b'ac'))\n"
        "s = Signer(b'key')\n"
        "print(s.verify(b'm', s.hexdigest(b'm')), s.verify(b'm', 'zz'), s.verify(b'm', 'abc'))\n"
    ) % (cases,)
    lines = run_mpy(code).stdout.split()
    want = [ref(bytes.fromhex(k), bytes.fromhex(m)).hex() for k, m in cases]
    assert lines[: len(cases)] == want
    assert lines[len(cases):] == ["True", "False", "False", "True", "False", "False"]
