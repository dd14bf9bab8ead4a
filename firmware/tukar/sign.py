# HMAC-SHA256 for signed commands (mqtt.md, "Commands"). MicroPython has hashlib.sha256 but no
# hmac module, so the construction of RFC 2104 is written out here; it runs unchanged on CPython.
import hashlib
import binascii

from micropython import const

_BLOCK = const(64)
DIGEST_SIZE = 32


def _pad(key, byte):
    # key is already at most one block long; pad with zeros to 64 bytes, then XOR
    out = bytearray(_BLOCK)
    for i in range(len(key)):
        out[i] = key[i]
    for i in range(_BLOCK):
        out[i] ^= byte
    return bytes(out)


class Signer:
    """HMAC-SHA256 with one key; the padded keys are computed once, not per message."""

    def __init__(self, key):
        key = bytes(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        self._ipad = _pad(key, 0x36)
        self._opad = _pad(key, 0x5C)

    def digest(self, msg):
        inner = hashlib.sha256(self._ipad)
        inner.update(msg)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, msg):
        return hexlify(self.digest(msg))

    def verify(self, msg, sig_hex):
        """True when sig_hex (str or bytes, either case) is this key's HMAC of msg; constant time."""
        want = self.digest(msg)
        try:
            got = binascii.unhexlify(sig_hex)
        except Exception:  # not hex: compare anyway so a malformed signature costs the same
            got = b""
        return equal(want, got)


def hmac_sha256(key, msg):
    return Signer(key).digest(msg)


def hexlify(data):
    """Lower-case hex as str, the form used in the command envelope's `sig`."""
    return binascii.hexlify(data).decode()


def equal(a, b):
    """Constant-time comparison: time depends on len(a) only, never on where a and b differ."""
    la = len(a)
    lb = len(b)
    diff = la ^ lb
    for i in range(la):
        # a shorter b is read cyclically (or as zeros when empty) so the loop never exits early
        y = b[i % lb] if lb else 0
        diff |= a[i] ^ y
    return diff == 0
