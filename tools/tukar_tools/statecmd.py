"""`tukar state`: what a cabinet says now, from its retained state on the broker: the whole
cabinet state, a slot's (--slot N), or one field of it by path, for scripts.

    tukar state sim-1                          # the cabinet state, as JSON
    tukar state sim-1 session.slot_out --wait 10   # the dispense slot, once the session has one
    tukar state sim-1 --slot 3 battery.soc"""
import json
import sys
import time

from tukar_tools import mqttc
from tukar_tools.scenario import dig


def add_arguments(p):
    p.add_argument("cabinet", help="cabinet id, e.g. sim-1")
    p.add_argument("path", nargs="?", help="a field by dotted path, e.g. session.slot_out")
    p.add_argument("--slot", type=int, help="a slot's state instead of the cabinet's")
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--wait", type=float, default=3.0,
                   help="seconds to wait for the state (and for the field to be set; default 3)")


def run(args):
    try:
        host, port = mqttc.parse_broker(args.broker)
    except ValueError as e:
        print("tukar state: %s" % e, file=sys.stderr)
        return 2
    topic = "%s/%s/%s" % (args.prefix, args.cabinet,
                          "slot/%d/state" % args.slot if args.slot else "state")
    try:
        client = mqttc.Client(host, port, name="tukar-state", subscriptions=[topic])
    except ConnectionError as e:
        print("tukar state: %s" % e, file=sys.stderr)
        return 2
    state = value = None
    deadline = time.monotonic() + args.wait
    try:
        while True:
            left = deadline - time.monotonic()
            m = client.get(left) if left > 0 else None
            if m is None:
                break
            if m[0] != topic:
                continue
            try:
                state = json.loads(m[1])
            except ValueError:
                continue
            try:
                value = dig(state, args.path) if args.path else state
            except (ValueError, IndexError):
                value = None
            if value is not None:
                break
    finally:
        client.close()
    if state is None:
        print("tukar state: nothing retained on %s within %.0f s (is the cabinet online?)"
              % (topic, args.wait), file=sys.stderr)
        return 2
    if value is None:
        print("tukar state: %s is not set in %s" % (args.path, json.dumps(state)), file=sys.stderr)
        return 1
    print(value if isinstance(value, str) else json.dumps(value))
    return 0
