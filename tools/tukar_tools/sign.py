"""Signed command envelopes for the cabinet (mqtt.md, "Commands"), the host's side of the gate."""
from __future__ import annotations

import binascii
import hmac
import json
import time

KEY_BYTES_MIN = 16


class KeyFormatError(ValueError):
    """A cabinet key that cannot be used."""


def parse_key(text: str) -> bytes:
    """A cabinet key from its hex form (spaces, a 0x prefix and either case tolerated)."""
    t = "".join(text.split()).lower()
    if t.startswith("0x"):
        t = t[2:]
    try:
        key = binascii.unhexlify(t)
    except ValueError as e:  # binascii.Error is a ValueError
        raise KeyFormatError("cabinet key must be hex: %s" % e) from None
    if len(key) < KEY_BYTES_MIN:
        raise KeyFormatError("cabinet key must be at least %d bytes, got %d" % (KEY_BYTES_MIN, len(key)))
    return key


def body_text(body: dict | str) -> str:
    """The exact body string that is signed: compact JSON for a dict, a str unchanged."""
    if isinstance(body, str):
        return body
    # non-ASCII kept literal: MicroPython's json decodes \\u surrogate pairs differently
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signature(body: str, key: bytes) -> str:
    return hmac.new(key, body.encode("utf-8"), "sha256").hexdigest()


def sign(body: dict | str, key: bytes) -> bytes:
    """The envelope {"body", "sig"} as UTF-8 bytes, ready to publish on P/C/cmd."""
    text = body_text(body)
    env = {"body": text, "sig": signature(text, key)}
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def command(cmd: str, req_id: str, ts: int | None = None, **args) -> dict:
    """A command body with the fields the gate requires; ts defaults to now."""
    body = {"req_id": req_id, "ts": int(time.time()) if ts is None else ts, "cmd": cmd}
    body.update(args)
    return body
