"""`tukar world C ACTION key=value ...`: act as the physical world of a simulated cabinet (the
simulator's P/C/sim/cmd), wait for its sim/ack and print it. Exit 0 when done, 1 when refused
(a locked door, an empty slot, ...), 2 when no reply comes.

    tukar world sim-1 insert slot=7 battery='{"serial":"R-1","soc":12,"soh":95,"temp_c":30}'
    tukar world sim-1 close_door slot=7
    tukar world sim-1 set_input name=smoke value=true
"""
import json
import sys
import time

from tukar_tools import mqttc
from tukar_tools.cmdline import parse_value
from tukar_tools.simworld import ACTIONS


def add_arguments(p):
    p.add_argument("cabinet", help="simulated cabinet id, e.g. sim-1")
    p.add_argument("action", choices=ACTIONS, help="world action (mqtt.md, the simulator's world)")
    p.add_argument("args", nargs="*", metavar="key=value",
                   help="fields, e.g. slot=3 force=true battery='{...}'")
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for sim/ack")
    p.add_argument("--wait", type=float, default=0.0,
                   help="while the slot's door is still locked, try again for up to this many "
                        "seconds (a rider waiting for the door to open)")


def _act(client, base, msg, timeout):
    """Publish one action; its sim/ack, or None when none came within `timeout` seconds."""
    client.publish(base + "cmd", json.dumps(msg), qos=1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = client.get(end - time.monotonic())
        if m is None:
            return None
        try:
            reply = json.loads(m[1])
        except ValueError:
            continue
        if isinstance(reply, dict) and reply.get("action") == msg["action"]:
            return reply
    return None


def run(args):
    msg = {"action": args.action}
    try:
        for pair in args.args:
            k, sep, v = pair.partition("=")
            if not sep or not k or k == "action":
                raise ValueError("argument %r: use key=value" % pair)
            msg[k] = parse_value(v)
        host, port = mqttc.parse_broker(args.broker)
        base = "%s/%s/sim/" % (args.prefix, args.cabinet)
        client = mqttc.Client(host, port, name="tukar-world", subscriptions=[base + "ack"])
    except (ValueError, ConnectionError) as e:
        print("tukar world: %s" % e, file=sys.stderr)
        return 2
    try:
        patience = time.monotonic() + args.wait
        while True:
            reply = _act(client, base, msg, args.timeout)
            if reply is None:
                break
            locked = not reply.get("ok") and str(reply.get("error", "")).startswith("door_locked")
            if locked and time.monotonic() < patience:
                time.sleep(0.2)
                continue
            print(json.dumps(reply))
            return 0 if reply.get("ok") else 1
    finally:
        client.close()
    print("tukar world: no sim/ack from %s within %.0f s (is `tukar sim` running on this broker?)"
          % (args.cabinet, args.timeout), file=sys.stderr)
    return 2
