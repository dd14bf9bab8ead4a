"""Signed commands (mqtt.md, "Commands"): a signature with any single byte changed, or any byte of
the body changed, is refused, through the signer and through the gate. Written against the
mutants that a hand-made round found surviving (docs/safety.md, "Mutation testing")."""
import json

import pytest

from tukar import errors
from tukar.gate import Gate
from tukar.sign import Signer, equal, hexlify
from tukar_tools.sign import command, signature

KEY = bytes(range(32))
NOW = 1764300000
BODY = json.dumps(command("rebirth", "r-1", ts=NOW))
GOOD = Signer(KEY).digest(BODY.encode())


@pytest.mark.parametrize("flip", [0x01, 0x80, 0xFF])
def test_a_signature_with_any_single_byte_changed_is_refused(flip):
    s = Signer(KEY)
    assert s.verify(BODY.encode(), hexlify(GOOD))
    for i in range(len(GOOD)):
        bad = bytearray(GOOD)
        bad[i] ^= flip
        assert not s.verify(BODY.encode(), hexlify(bytes(bad))), "byte %d ^ 0x%02x" % (i, flip)


def test_a_signature_with_any_single_byte_changed_is_bad_signature_at_the_gate():
    for i in range(len(GOOD)):
        bad = bytearray(GOOD)
        bad[i] ^= 0x01
        g = Gate(KEY)
        payload = json.dumps({"body": BODY, "sig": hexlify(bytes(bad))}).encode()
        body, ack = g.admit(payload, False, 0, NOW)
        assert body is None and ack["error"] == errors.BAD_SIGNATURE, i
    body, ack = Gate(KEY).admit(json.dumps({"body": BODY, "sig": hexlify(GOOD)}).encode(),
                                False, 0, NOW)
    assert ack is None and body["cmd"] == "rebirth"


def test_a_body_with_any_single_byte_changed_is_refused():
    s = Signer(KEY)
    raw = BODY.encode()
    sig = hexlify(GOOD)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        assert not s.verify(bytes(bad), sig), i


def test_a_signature_one_byte_short_or_long_is_refused():
    s = Signer(KEY)
    assert not s.verify(BODY.encode(), hexlify(GOOD[:-1]))
    assert not s.verify(BODY.encode(), hexlify(GOOD[1:]))
    assert not s.verify(BODY.encode(), hexlify(GOOD + GOOD[:1]))
    assert not s.verify(BODY.encode(), hexlify(GOOD + b"\x00"))
    assert not s.verify(BODY.encode(), "")


def test_equal_is_false_for_any_single_byte_difference_at_any_position():
    a = bytes(range(1, 33))
    assert equal(a, bytes(a))
    for i in range(len(a)):
        for flip in (0x01, 0x10, 0x80):
            b = bytearray(a)
            b[i] ^= flip
            assert not equal(a, bytes(b)), (i, flip)
            assert not equal(bytes(b), a), (i, flip)


def test_equal_is_false_for_different_lengths_even_with_a_common_prefix():
    a = bytes(32)
    assert not equal(a, a[:31])
    assert not equal(a[:31], a)
    assert not equal(a, a + b"\x00")
    assert not equal(a, b"")
    assert not equal(b"", a)
    assert equal(b"", b"")


def test_a_key_of_another_single_byte_signs_differently():
    for i in range(len(KEY)):
        other = bytearray(KEY)
        other[i] ^= 0x01
        assert Signer(bytes(other)).digest(BODY.encode()) != GOOD, i


def test_keys_differing_only_past_64_bytes_sign_differently():
    # A key longer than the block is hashed first (RFC 2104): its 65th byte counts too.
    long_a = bytes(range(65))
    long_b = bytes(range(64)) + b"\xff"
    assert Signer(long_a).digest(b"m") != Signer(long_b).digest(b"m")
    # And a key of exactly 64 bytes is used as it is, not hashed.
    import hashlib
    import hmac
    k64 = bytes(range(64))
    assert Signer(k64).digest(b"m") == hmac.new(k64, b"m", hashlib.sha256).digest()


def test_the_host_signature_is_the_one_the_firmware_accepts():
    assert Signer(KEY).verify(BODY.encode(), signature(BODY, KEY))
    assert Signer(KEY).verify(BODY.encode(), signature(BODY, KEY).upper())
