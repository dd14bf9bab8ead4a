"""World control over MQTT, exactly as the simulator section of mqtt.md: actions on P/C/sim/cmd
(unsigned), one reply each on P/C/sim/ack {"action","ok","error"}, and the physical truth, retained,
on P/C/sim/world. The physics behind it is the cabinet's `World` (tools/tukar_tools/sim.py)."""
import json

ACTIONS = ("insert", "take", "close_door", "open_door", "set_battery", "set_input",
           "set_cabinet_temp", "fault", "power_cycle")
FAULT_TARGETS = ("can", "i2c", "mqtt", "flash", "cabinet_sensor")  # and lock:N


class WorldError(Exception):
    """A refused world action; the message is the ack's `error`."""


def _num(v, name, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise WorldError("bad_args: %s must be a number in %s..%s" % (name, lo, hi))
    return v


def _slot(world, msg):
    n = msg.get("slot")
    if isinstance(n, bool) or not isinstance(n, int):
        raise WorldError("bad_args: slot must be an integer")
    if not 1 <= n <= world.n_slots:
        raise WorldError("slot_range: slot %d is outside 1..%d" % (n, world.n_slots))
    return n


def battery_spec(b):
    """Check an `insert` battery object: serial, soc, soh, temp_c, profile?, faults?, cycles?"""
    if not isinstance(b, dict):
        raise WorldError("bad_args: battery must be an object")
    serial = b.get("serial")
    if not isinstance(serial, str) or not 0 < len(serial) <= 32:
        raise WorldError("bad_args: battery.serial must be a string of 1..32 characters")
    out = {"serial": serial,
           "soc": _num(b.get("soc", 50), "battery.soc", 0, 100),
           "soh": _num(b.get("soh", 95), "battery.soh", 1, 100),
           "temp_c": _num(b.get("temp_c", 25), "battery.temp_c", -40, 120)}
    if "profile" in b:
        if not isinstance(b["profile"], str):
            raise WorldError("bad_args: battery.profile must be a string")
        out["profile"] = b["profile"]
    if "faults" in b:
        f = b["faults"]
        if not isinstance(f, list) or not all(isinstance(x, str) for x in f):
            raise WorldError("bad_args: battery.faults must be a list of fault names")
        out["faults"] = f
    if "cycles" in b:  # the pack's age as its BMS counts it (default 50)
        c = b["cycles"]
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 65535:
            raise WorldError("bad_args: battery.cycles must be an integer in 0..65535")
        out["cycles"] = c
    return out


def apply(world, msg):
    """Perform one world action on `world`; raises WorldError with the ack's error text."""
    if not isinstance(msg, dict):
        raise WorldError("bad_json: the action must be a JSON object")
    action = msg.get("action")
    if action not in ACTIONS:
        raise WorldError("unknown_action: %r" % (action,))
    if action == "insert":
        world.insert(_slot(world, msg), battery_spec(msg.get("battery")))
    elif action == "take":
        world.take(_slot(world, msg))
    elif action == "close_door":
        world.close_door(_slot(world, msg))
    elif action == "open_door":
        force = msg.get("force", False)
        if not isinstance(force, bool):
            raise WorldError("bad_args: force must be true or false")
        world.open_door(_slot(world, msg), force)
    elif action == "set_battery":
        n = _slot(world, msg)
        changes = {}
        if "soc" in msg:
            changes["soc"] = _num(msg["soc"], "soc", 0, 100)
        if "temp_c" in msg:
            changes["temp_c"] = _num(msg["temp_c"], "temp_c", -40, 120)
        if "faults" in msg:
            f = msg["faults"]
            if not isinstance(f, list) or not all(isinstance(x, str) for x in f):
                raise WorldError("bad_args: faults must be a list of fault names")
            changes["faults"] = f
        if not changes:
            raise WorldError("bad_args: give soc, temp_c or faults")
        world.set_battery(n, **changes)
    elif action == "set_input":
        name = msg.get("name")
        if name not in ("smoke", "estop"):
            raise WorldError("bad_args: name must be smoke or estop")
        value = msg.get("value")
        if not isinstance(value, bool):
            raise WorldError("bad_args: value must be true or false")
        world.set_input(name, value)
    elif action == "set_cabinet_temp":
        world.set_cabinet_temp(_num(msg.get("temp_c"), "temp_c", -40, 120))
    elif action == "fault":
        target = msg.get("target")
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise WorldError("bad_args: on must be true or false")
        lock = None
        if isinstance(target, str) and target.startswith("lock:"):
            try:
                lock = int(target[5:])
            except ValueError:
                raise WorldError("bad_args: target lock:N needs a slot number") from None
            if not 1 <= lock <= world.n_slots:
                raise WorldError("slot_range: slot %d is outside 1..%d" % (lock, world.n_slots))
        elif target not in FAULT_TARGETS:
            raise WorldError("bad_args: target must be can, i2c, lock:N, mqtt, flash or cabinet_sensor")
        world.fault(target, on)
    elif action == "power_cycle":
        world.power_cycle()


class WorldControl:
    """Serves one cabinet's sim topics through a host MQTT client (tukar_tools.mqttc.Client)."""

    def __init__(self, world, client, prefix, cabinet_id):
        self.world = world
        self.client = client
        self.base = "%s/%s/sim/" % (prefix, cabinet_id)
        self.last_world = None
        self.actions = 0

    @property
    def cmd_topic(self):
        return self.base + "cmd"

    def handle(self, payload, retained=False):
        """One message from P/C/sim/cmd -> one reply on P/C/sim/ack; returns the reply."""
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = None
            reply = {"action": None, "ok": False, "error": "bad_json: not JSON"}
        else:
            action = msg.get("action") if isinstance(msg, dict) else None
            try:
                if retained:
                    raise WorldError("not_allowed: retained world actions are ignored")
                apply(self.world, msg)
                reply = {"action": action, "ok": True, "error": None}
            except WorldError as e:
                reply = {"action": action, "ok": False, "error": str(e)}
        self.actions += 1
        self.client.publish(self.base + "ack", json.dumps(reply), qos=1, wait=0)
        self.publish_world()
        return reply

    def publish_world(self, force=False):
        """Publish the retained world when it changed (or when forced)."""
        snap = json.dumps(self.world.snapshot(), sort_keys=True)
        if force or snap != self.last_world:
            self.last_world = snap
            self.client.publish(self.base + "world", snap, qos=1, retain=True, wait=0)
