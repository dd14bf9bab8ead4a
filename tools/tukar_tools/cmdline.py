"""`tukar cmd C CMD key=value ...`: sign a command with the cabinet's key, send it, wait for the
ack and print it. Exit 0 when the cabinet says ok, 1 when it answers with an error, 2 when no ack
arrives in time or the broker cannot be reached.

`--cabinet-clock` is for simulated cabinets whose clock runs away from the host's (`tukar sim
--speed`, `--start`): a command refused `stale` is signed once more with the cabinet's clock, which
its `stale` ack gives. Never against a real cabinet: whoever can forge that ack could have a command
signed for a time of their choosing and replay it then."""
import json
import os
import re
import sys
import time
import uuid

from tukar_tools import mqttc
from tukar_tools.sign import KeyFormatError, command, parse_key, sign

# The simulator's key: fine for `tukar sim`, never for a real cabinet (`tukar provision` makes those).
SIM_KEY_HEX = "73696d2d6f6e6c792d6b65792d6e6f742d666f722d636162696e657473"


# Arguments that are always text, whatever they look like (a serial 0042 is not the number 42).
TEXT_KEYS = ("serial", "id_token", "request_id", "reason", "session")


def parse_value(text):
    """key=value values: integers, numbers, true/false/null and JSON stay typed; the rest is text."""
    low = text.lower()
    if low in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[low]
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text[:1] in "[{\"":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_args_list(pairs):
    args = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise ValueError("argument %r: use key=value" % p)
        if k in ("req_id", "ts", "cmd"):
            raise ValueError("argument %r: %s is set by tukar cmd" % (p, k))
        args[k] = v if k in TEXT_KEYS else parse_value(v)
    return args


def add_arguments(p):
    p.add_argument("cabinet", help="cabinet id, e.g. sim-1")
    p.add_argument("cmd", help="command name: start_swap, cancel_swap, set_mode, open_slot, quarantine, "
                               "release, reset_emergency, rebirth, set_config, reboot, retire")
    p.add_argument("args", nargs="*", metavar="key=value", help="command arguments, e.g. slot=3")
    p.add_argument("--key", default=os.environ.get("TUKAR_KEY"),
                   help="the cabinet's HMAC key in hex (default: $TUKAR_KEY, else the simulator's key)")
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ack")
    p.add_argument("--req-id", help="request id (default: a fresh one)")
    p.add_argument("--field", help="print only this field of the ack (e.g. slot), for scripts")
    p.add_argument("--cabinet-clock", action="store_true",
                   help="simulated cabinets only: when refused stale, sign again with the cabinet's "
                        "clock (a sped-up `tukar sim` runs away from the host's)")


# The gate's stale ack: "ts <skew> s from cabinet clock, limit <s>" (firmware/tukar/gate.py).
STALE_SKEW = re.compile(r"ts (-?\d+) s from cabinet clock")


def cabinet_skew(ack):
    """The seconds a command's ts was ahead of the cabinet's clock, from a `stale` ack, else None."""
    if not isinstance(ack, dict) or ack.get("error") != "stale":
        return None
    m = STALE_SKEW.match(str(ack.get("detail") or ""))
    return int(m.group(1)) if m else None


def send(client, prefix, cabinet, body, key, timeout):
    """Publish a signed command and wait for the ack with its req_id. On timeout, return an ack
    that carried no req_id (the cabinet could not read ours: bad signature, bad JSON) if one came."""
    ack_topic = "%s/%s/ack" % (prefix, cabinet)
    client.publish("%s/%s/cmd" % (prefix, cabinet), sign(body, key), qos=1)
    deadline = time.monotonic() + timeout
    anonymous = None
    while True:
        left = deadline - time.monotonic()
        m = client.get(left) if left > 0 else None
        if m is None:
            return anonymous
        topic, payload, _ = m
        if topic != ack_topic:
            continue
        try:
            ack = json.loads(payload)
        except ValueError:
            continue
        if isinstance(ack, dict) and ack.get("req_id") == body["req_id"]:
            return ack
        if isinstance(ack, dict) and ack.get("req_id") is None and anonymous is None:
            anonymous = ack
            deadline = min(deadline, time.monotonic() + 1.0)


def run(args):
    try:
        cmd_args = parse_args_list(args.args)
        if args.key:
            key = parse_key(args.key)
        else:
            print("tukar cmd: no --key given, using the simulator's key", file=sys.stderr)
            key = parse_key(SIM_KEY_HEX)
        host, port = mqttc.parse_broker(args.broker)
    except (ValueError, KeyFormatError) as e:
        print("tukar cmd: %s" % e, file=sys.stderr)
        return 2
    body = command(args.cmd, args.req_id or "cli-" + uuid.uuid4().hex[:12], **cmd_args)
    try:
        client = mqttc.Client(host, port, name="tukar-cmd",
                              subscriptions=["%s/%s/ack" % (args.prefix, args.cabinet)])
    except ConnectionError as e:
        print("tukar cmd: %s" % e, file=sys.stderr)
        return 2
    try:
        ack = send(client, args.prefix, args.cabinet, body, key, args.timeout)
        skew = cabinet_skew(ack) if args.cabinet_clock else None
        if skew is not None:
            # A stale command is refused before the gate remembers its req_id: the same id again.
            print("tukar cmd: the cabinet's clock is %d s from this host's; signing with it" % -skew,
                  file=sys.stderr)
            body = dict(body, ts=body["ts"] - skew)
            ack = send(client, args.prefix, args.cabinet, body, key, args.timeout)
    finally:
        client.close()
    if ack is None:
        print("tukar cmd: no ack from %s within %.0f s (is the cabinet online, is the key right?)"
              % (args.cabinet, args.timeout), file=sys.stderr)
        return 2
    if args.field and ack.get("ok"):
        value = ack.get(args.field)
        print(value if isinstance(value, str) else json.dumps(value))
    else:
        print(json.dumps(ack))
    return 0 if ack.get("ok") else 1
