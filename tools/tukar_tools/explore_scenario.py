"""A path found by `tukar explore`, replayed and written as a scenario for `tukar sim --scenario`
(tukar_tools/scenario.py): the stock as the scenario's `stock`, each world event as a `sim/cmd`
action, each command signed with the ack the explorer got, each wait as a wait; after each step
the slot and cabinet states that changed and the events the core emitted are expected, so the
replay follows the path and stops where the simulator parts from it. The simulator's world is
richer (locks take 300 ms, packs charge and cool, BMS frames arrive at their rate), so a path that
turns on a lock window's exact timing may part from it; the expectations say where."""
import json

from tukar_tools.explore_world import PACKS, Seen, apply, boot, pack_spec

# Events worth expecting in the replay: the ones a step causes, not the charge bookkeeping.
_EXPECTED = ("SwapStarted", "BatteryIn", "BatteryRejected", "BatteryOut", "BatteryOutTimeout",
             "SwapCompleted", "SwapAborted", "Fault", "FaultCleared", "Quarantined",
             "QuarantineReleased", "DoorForced", "BatteryMissing", "Emergency",
             "EmergencyCleared", "ModeChanged")
_FIELDS = ("slot", "slot_in", "slot_out", "reason", "cause", "code", "serial", "mode",
           "battery_in", "battery_out")


def replay(n, path):
    """Run a path again from its stock: [(event, info, events, Seen after)], one per event."""
    core, w, events, ok = boot(n, path[0][1])
    steps: list = [(path[0], {"settled": ok}, events, Seen(core, w))]
    for ev in path[1:]:
        events = []
        info = {}
        core = apply(core, w, ev, events, info)
        steps.append((ev, info, events, Seen(core, w)))
    return steps


def describe(ev):
    kind = ev[0]
    if kind == "stock":
        return "stock " + ",".join(k or "empty" for k in ev[1])
    if kind == "cmd":
        return " ".join(["cmd", ev[1]] + ["%s=%s" % kv for kv in ev[2]])
    if kind == "jam":
        return "%s lock %d" % ("jam" if ev[2] else "free", ev[1])
    if kind in ("smoke", "estop"):
        return "%s %s" % (kind, "on" if ev[1] else "off")
    return " ".join(str(x) for x in ev)


def _world(ev, info):
    kind = ev[0]
    if kind == "insert":
        return {"action": "insert", "slot": ev[1], "battery": pack_spec(info["serial"], ev[2])}
    if kind in ("take", "close"):
        return {"action": "take" if kind == "take" else "close_door", "slot": ev[1]}
    if kind in ("open", "force"):
        st = {"action": "open_door", "slot": ev[1]}
        if kind == "force":
            st["force"] = True
        return st
    if kind == "jam":
        return {"action": "fault", "target": "lock:%d" % ev[1], "on": ev[2]}
    if kind == "set":
        t, faults = PACKS[ev[2]]
        return {"action": "set_battery", "slot": ev[1], "temp_c": t, "faults": list(faults)}
    if kind in ("smoke", "estop"):
        return {"action": "set_input", "name": kind, "value": ev[1]}
    return {"action": "power_cycle"}


def _event_match(e):
    m = {}
    for k in _FIELDS:
        if k in e:
            m[k] = e[k]
    b = e.get("battery")
    if isinstance(b, dict) and e["type"] in ("BatteryIn", "BatteryOut"):
        m["battery"] = {"serial": b.get("serial")}
    return m


def _expectations(prev, seen, events):
    out = []
    for e in events:
        if e["type"] in _EXPECTED:
            out.append({"do": "expect_event", "type": e["type"], "match": _event_match(e),
                        "within_s": 5})
    for i, s in enumerate(seen.slots):
        p = prev.slots[i] if prev is not None else None
        now = {"state": s["state"], "door": s["door"], "lock": s["lock"]}
        if p is None or now != {"state": p["state"], "door": p["door"], "lock": p["lock"]}:
            out.append({"do": "expect_slot", "slot": i + 1, "match": now, "within_s": 5})
    ss = seen.cab["session"]
    now = {"mode": seen.cab["mode"], "session": ss and {"phase": ss["phase"]}}
    ps = prev.cab["session"] if prev is not None else None
    if prev is None or now != {"mode": prev.cab["mode"], "session": ps and {"phase": ps["phase"]}}:
        out.append({"do": "expect_state", "match": now, "within_s": 5})
    return out


def scenario(n, path, name, description):
    """The scenario for a path (its first event is the stock)."""
    steps = replay(n, path)
    stock = path[0][1]
    w0 = steps[0][3].world
    sc: dict = {"name": name, "description": description, "slots": n, "fill": 0,
          "stock": [{"slot": i + 1, "battery": pack_spec(w0.serial[i], kind)}
                    for i, kind in enumerate(stock) if kind is not None],
          "speed": 4 if ("wait", "timeout") in path else 2, "steps": []}
    out = sc["steps"]
    prev = steps[0][3]
    first = True
    for ev, info, events, seen in steps:
        kind = ev[0]
        label = describe(ev)
        if kind == "wait":
            out.append({"do": "wait", "s": 0.5 if ev[1] == "lock" else 61, "note": label})
        elif kind == "cmd":
            ack = info["ack"]
            expect = {"ok": ack["ok"]}
            if not ack["ok"]:
                expect["error"] = ack["error"]
            out.append({"do": "cmd", "cmd": ev[1], "args": dict(ev[2]), "expect": expect,
                        "note": label})
        elif kind != "stock":
            st = {"do": "world"}
            st.update(_world(ev, info))
            st["note"] = label
            out.append(st)
        out += _expectations(None if first else prev, seen, events)
        prev = seen
        first = False
    w = prev.world  # the physical truth at the end: which pack is where, which charger is on
    out.append({"do": "expect_world", "within_s": 5, "match": {"slots": [
        {"door": "closed" if w.door[i] else "open", "lock": "locked" if w.bolt[i] else "unlocked",
         "battery": {"serial": w.serial[i]} if w.serial[i] else None,
         "charger_on": prev.charge_ma[i] > 0} for i in range(w.n)]}})
    return sc


def write(path_name, n, path, name, description):
    """The scenario of a path into a file, one step a line as the shipped scenarios are."""
    sc = scenario(n, path, name, description)
    head = ",\n".join("  %s: %s" % (json.dumps(k), json.dumps(v)) for k, v in sc.items()
                      if k != "steps")
    steps = ",\n".join("    " + json.dumps(st) for st in sc["steps"])
    with open(path_name, "w") as f:
        f.write("{\n%s,\n  \"steps\": [\n%s\n  ]\n}\n" % (head, steps))
    return path_name
