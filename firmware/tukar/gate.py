# The command gate: everything between a message received on P/C/cmd and the executor, in the
# order of mqtt.md. It decides, for one message, either "hand this body to the executor" or
# "reply with this ack"; it does no I/O and never raises, whatever the bytes.
#
# Order: retained -> rate limit -> size cap -> envelope -> signature -> body -> stale ->
# duplicate. Decisions the contract leaves open, fixed here:
# - A retained command is never acted on but is acked (`not_allowed`, req_id null), so that
#   every decodable command gets exactly one reply. It does not use up the rate.
# - Rate: a sliding window, at most `rate_per_s` messages admitted in any 1000 ms; messages
#   over it get `rate_limited` and do not count.
# - Payloads over MAX_PAYLOAD bytes, invalid UTF-8, or an envelope that is not an object
#   holding a string `body` and a string `sig` (other keys are ignored): `bad_json`.
#   A `sig` string that is not 64 hex digits simply fails: `bad_signature`.
# - A body that is not a JSON object: `bad_json`. An object whose `req_id` is not a non-empty
#   string of at most 64 characters, whose `ts` is not an integer, or whose `cmd` is not a
#   string: `bad_args` (req_id echoed when it is usable). Acks of rejections before the body
#   is verified carry req_id null.
# - A req_id admitted but not yet acked by the executor is answered `busy`, duplicate: true.
# - The memory of the last 64 req_ids holds no text per command in the usual case, so that its
#   heap stays flat as it fills (a day of swaps fills it): a req_id is remembered as two 22-bit
#   hashes (Gate._key: two ids of one length that differ in one character never agree; others
#   agree in both about once in 2^44, and then the newer is answered as a duplicate, not
#   executed), and its ack as 1 for a plain success or one int for start_swap's
#   {"session": "s-<n>", "slot": k}; any other ack is kept as its JSON text without the req_id,
#   which the replay puts back. 64 start_swap acks with 36-character ids took 13 KB as text.
import json

from tukar import errors
from tukar.errors import make_ack
from tukar.clock import wrap_diff
from tukar.sign import Signer

from micropython import const

MAX_PAYLOAD = const(2048)  # bytes of the whole envelope; a command body needs a few hundred
MAX_REQ_ID = const(64)  # characters
STALE_S = const(300)
WINDOW_MS = const(1000)


def _compact(req_id, ack):
    """An ack as the gate remembers it (Gate._replay makes it again)."""
    if ack == make_ack(req_id):
        return 1
    if len(ack) == 6 and ack["ok"] and not ack["detail"]:
        sid = ack.get("session")
        k = ack.get("slot")
        if (type(sid) is str and sid[:2] == "s-" and sid[2:].isdigit() and type(k) is int
                and 0 <= k < 32 and str(int(sid[2:])) == sid[2:] and int(sid[2:]) < 1 << 24):
            return 2 + (int(sid[2:]) << 5 | k)
    d = {}
    for k in ack:
        if k != "req_id":
            d[k] = ack[k]
    return json.dumps(d)


def utf8_ok(buf):
    """Strict UTF-8 check (as CPython's decoder): MicroPython's bytes.decode does not validate."""
    n = len(buf)
    if n == 0 or max(buf) < 0x80:  # all ASCII: max() runs in C, the loop below does not
        return True
    i = 0
    while i < n:
        b = buf[i]
        i += 1
        if b < 0x80:
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= b <= 0xDF:
            need = 1
        elif 0xE0 <= b <= 0xEF:
            need = 2
            if b == 0xE0:
                lo = 0xA0  # overlong
            elif b == 0xED:
                hi = 0x9F  # surrogates
        elif 0xF0 <= b <= 0xF4:
            need = 3
            if b == 0xF0:
                lo = 0x90  # overlong
            elif b == 0xF4:
                hi = 0x8F  # above U+10FFFF
        else:
            return False
        if i + need > n:
            return False
        c = buf[i]
        if c < lo or c > hi:
            return False
        for j in range(i + 1, i + need):
            c = buf[j]
            if c < 0x80 or c > 0xBF:
                return False
        i += need
    return True


class Gate:
    """Admission of commands for one cabinet key (see the module comment for the rules)."""

    def __init__(self, key, rate_per_s=10, memory=64):
        self._signer = Signer(key)
        self._rate = rate_per_s
        self._times = [0] * rate_per_s  # admission ticks, a ring: the oldest is next to go
        self._n_times = 0
        self._t_next = 0
        self._memory = memory
        # the ring of remembered req_ids (_key: two hashes each; -1 none), beside each its ack: 1 a
        # plain success, an int >= 2 a start_swap success (_SWAP), else its JSON text without the
        # req_id; None while the executor has not acked yet
        self._k1: list = [-1] * memory
        self._k2: list = [-1] * memory
        self._ka = -1  # the hashes of the req_id last looked for (_key)
        self._kb = -1
        self._acks: list = [None] * memory
        self._next = 0

    # --- rate limit -------------------------------------------------------------------

    def _admit_rate(self, now_ms):
        if self._n_times < self._rate:
            self._n_times += 1
        else:
            age = wrap_diff(now_ms, self._times[self._t_next])
            # a negative age can only come from an idle gap longer than half the tick period
            if 0 <= age < WINDOW_MS:
                return False
        self._times[self._t_next] = now_ms
        self._t_next = (self._t_next + 1) % self._rate
        return True

    # --- duplicates -------------------------------------------------------------------

    def _key(self, req_id):
        """req_id's two hashes into _ka and _kb: multiplicative, 22 bits each, so that every
        product stays a small int (no heap), each step a bijection of the state."""
        a = 0x2C9277
        b = 0x1F3D5B
        for c in req_id:
            x = ord(c)  # at most 0x10FFFF: the state stays 22 bits
            a = ((a ^ x) * 167) & 0x3FFFFF
            b = ((b ^ x) * 131) & 0x3FFFFF
        self._ka = a
        self._kb = b

    def _find(self, req_id):
        """The ring index of req_id, or -1; its hashes are left in _ka and _kb."""
        self._key(req_id)
        a = self._k1
        b = self._k2
        ka = self._ka
        kb = self._kb
        for i in range(self._memory):
            if a[i] == ka and b[i] == kb:
                return i
        return -1

    def _put(self, i):
        """The hashes _find() left, at ring index i."""
        self._k1[i] = self._ka
        self._k2[i] = self._kb

    def remember(self, req_id, ack):
        """Store the executor's ack for req_id; a later duplicate gets it again."""
        if req_id is None:
            return
        i = self._find(req_id)
        if i < 0:
            i = self._next
            self._put(i)
            self._next = (i + 1) % self._memory
        self._acks[i] = _compact(req_id, ack)

    def _reserve(self):
        """Admit the req_id _find() has just looked for (its hashes in _ka and _kb)."""
        i = self._next
        self._put(i)
        self._acks[i] = None  # admitted, not yet acked
        self._next = (i + 1) % self._memory

    def _replay(self, i, req_id):
        v = self._acks[i]
        if v is None:
            ack = make_ack(req_id, errors.BUSY, "command still executing")
        elif v == 1:
            ack = make_ack(req_id)
        elif type(v) is int:
            v -= 2
            ack = make_ack(req_id, None, "", {"session": "s-%d" % (v >> 5), "slot": v & 31})
        else:
            ack = json.loads(v)
            ack["req_id"] = req_id
        ack["duplicate"] = True
        return ack

    # --- the whole order --------------------------------------------------------------

    def admit(self, payload, retained, now_ms, wall_s):
        """(body, None) to execute, or (None, ack) to publish. Never raises."""
        try:
            return self._admit(payload, retained, now_ms, wall_s)
        except Exception as e:  # a bug here must cost one command, never the link
            return None, make_ack(None, errors.BAD_JSON, "rejected: %s" % type(e).__name__)

    def _admit(self, payload, retained, now_ms, wall_s):
        if retained:
            return None, make_ack(None, errors.NOT_ALLOWED, "retained command ignored")
        if not self._admit_rate(now_ms):
            return None, make_ack(None, errors.RATE_LIMITED,
                                  "more than %d commands per second" % self._rate)
        if len(payload) > MAX_PAYLOAD:
            return None, make_ack(None, errors.BAD_JSON, "payload over %d bytes" % MAX_PAYLOAD)
        if not utf8_ok(payload):
            return None, make_ack(None, errors.BAD_JSON, "payload is not UTF-8")
        try:
            env = json.loads(payload)
        except Exception:
            return None, make_ack(None, errors.BAD_JSON, "envelope is not JSON")
        if type(env) is not dict:
            return None, make_ack(None, errors.BAD_JSON, "envelope is not an object")
        text = env.get("body")
        sig = env.get("sig")
        if type(text) is not str or type(sig) is not str:
            return None, make_ack(None, errors.BAD_JSON, "envelope needs string body and sig")
        try:
            raw = text.encode()
        except Exception:  # CPython: lone surrogates
            return None, make_ack(None, errors.BAD_JSON, "body is not UTF-8")
        if not self._signer.verify(raw, sig):
            return None, make_ack(None, errors.BAD_SIGNATURE, "signature does not match body")
        try:
            body = json.loads(text)
        except Exception:
            return None, make_ack(None, errors.BAD_JSON, "body is not JSON")
        if type(body) is not dict:
            return None, make_ack(None, errors.BAD_JSON, "body is not an object")
        req_id = body.get("req_id")
        if type(req_id) is not str or not req_id or len(req_id) > MAX_REQ_ID:
            return None, make_ack(None, errors.BAD_ARGS,
                                  "req_id must be a string of 1 to %d characters" % MAX_REQ_ID)
        ts = body.get("ts")
        if type(ts) is not int:
            return None, make_ack(req_id, errors.BAD_ARGS, "ts must be an integer")
        if type(body.get("cmd")) is not str:
            return None, make_ack(req_id, errors.BAD_ARGS, "cmd must be a string")
        if wall_s is not None:
            skew = ts - int(wall_s)
            if skew > STALE_S or skew < -STALE_S:
                return None, make_ack(req_id, errors.STALE,
                                      "ts %d s from cabinet clock, limit %d" % (skew, STALE_S))
        i = self._find(req_id)
        if i >= 0:
            return None, self._replay(i, req_id)
        self._reserve()
        return body, None
