"""The invariants `tukar explore` checks: each a function named after what must hold, citing the
rule of cabinet.md or mqtt.md it comes from. A state invariant reads one settled state (a Seen:
the world, the core's outputs, published states and journal) and returns None or what is wrong.
A step invariant also reads the state before, the event, the events the core emitted and what the
explorer noted while performing it (the ack, the serial, the outputs at boot)."""
from tukar_tools.explore_world import SETTLE_TICKS


def _session(seen):
    return seen.cab["session"]


def _quarantined(seen, i):
    return seen.journal["inventory"][i][3] is not None


# == state invariants ==========================================================================
def charger_only_behind_a_shut_locked_door(seen):
    """Rule 1: a charger is on only with a battery present and the door closed and locked."""
    w = seen.world
    for i, ma in enumerate(seen.charge_ma):
        if ma and not (w.serial[i] is not None and w.door[i] and w.bolt[i] and seen.lock_cmd[i]):
            return "slot %d charges with battery=%s door=%s bolt=%s lock_cmd=%s" % (
                i + 1, w.serial[i], "shut" if w.door[i] else "open",
                "locked" if w.bolt[i] else "unlocked", "locked" if seen.lock_cmd[i] else "unlocked")
    return None


def charger_only_for_an_accepted_good_pack(seen):
    """Rule 1: identified and accepted, inside the charge window, no battery fault, no slot
    fault, not quarantined, no emergency. A hot, cold or faulted pack never charges."""
    w = seen.world
    for i, ma in enumerate(seen.charge_ma):
        if not ma:
            continue
        serial, _, accepted, quarantine = seen.journal["inventory"][i][:4]
        if w.kind[i] != "good":
            return "slot %d charges a %s pack" % (i + 1, w.kind[i])
        if not accepted or serial != w.serial[i]:
            return "slot %d charges %s, which the journal has as %s (accepted %s)" % (
                i + 1, w.serial[i], serial, accepted)
        if quarantine is not None or seen.slots[i]["faults"] or seen.cab["mode"] == "emergency":
            return "slot %d charges while quarantined, faulted or in emergency" % (i + 1)
    return None


def emergency_makes_everything_safe(seen):
    """Rule 4: in an emergency every charger is off, every door locked, alarm and fan on."""
    if seen.cab["mode"] != "emergency":
        return None
    if any(seen.charge_ma) or not all(seen.lock_cmd) or not seen.alarm or not seen.fan:
        return "emergency with chargers %s, locks %s, alarm %s, fan %s" % (
            seen.charge_ma, seen.lock_cmd, seen.alarm, seen.fan)
    return None


def smoke_or_estop_means_emergency(seen):
    """Rule 4: smoke or the emergency stop is an emergency, latched while its cause is
    recorded (journal `causes`) until `reset_emergency`."""
    w = seen.world
    if (w.smoke or w.estop or seen.journal["causes"]) and seen.cab["mode"] != "emergency":
        return "smoke=%s estop=%s causes=%s but mode %s" % (
            w.smoke, w.estop, seen.journal["causes"], seen.cab["mode"])
    return None


def doors_unlock_only_for_a_reason(seen):
    """Rule 7: a door unlocks only inside a swap session (the rider's slot while awaiting or
    giving a refused battery back, the dispense slot while dispensing) or in maintenance mode
    (a slot opened with open_slot)."""
    ss = _session(seen)
    for i, locked in enumerate(seen.lock_cmd):
        if locked:
            continue
        n = i + 1
        ok = ss is not None and (
            (n == ss["slot_in"] and ss["phase"] in ("awaiting_battery", "rejected"))
            or (n == ss["slot_out"] and ss["phase"] == "dispensing"))
        ok = ok or (seen.cab["mode"] == "maintenance" and seen.slots[i]["state"] == "maintenance_open")
        if not ok:
            return "slot %d unlocked in mode %s, slot state %s, session %s" % (
                n, seen.cab["mode"], seen.slots[i]["state"], ss)
    return None


def one_door_at_a_time_in_service(seen):
    """mqtt.md, the swap session: in `in_service` at most one door is unlocked at any moment."""
    if seen.cab["mode"] == "in_service" and seen.lock_cmd.count(False) > 1:
        return "%d doors unlocked in service" % seen.lock_cmd.count(False)
    return None


def bad_pack_never_offered(seen):
    """Rules 6 and 7: only an accepted pack without faults, inside -10..50 degC and not
    quarantined is dispensable; a dispense door the rider has not opened yet holds such a pack
    (the core has had its tick to see a pack that turned bad)."""
    w = seen.world
    ss = _session(seen)
    for i, s in enumerate(seen.slots):
        n = i + 1
        offered = ss is not None and ss["phase"] == "dispensing" and ss["slot_out"] == n and w.door[i]
        if (s["dispensable"] or offered) and (w.kind[i] not in (None, "good") or _quarantined(seen, i)):
            return "slot %d %s a %s pack (quarantine %s)" % (
                n, "offers" if offered else "calls dispensable", w.kind[i],
                seen.journal["inventory"][i][3])
    return None


def quarantine_keeps_the_slot_shut(seen):
    """mqtt.md slot states: quarantined is locked, charger off, never dispensed (rule 7); only a
    technician opens it, in maintenance."""
    ss = _session(seen)
    for i in range(len(seen.slots)):
        if not _quarantined(seen, i):
            continue
        n = i + 1
        if seen.charge_ma[i]:
            return "quarantined slot %d charges" % n
        if ss is not None and ss["slot_out"] == n and ss["phase"] == "dispensing":
            return "quarantined slot %d is the dispense slot" % n
        if not seen.lock_cmd[i] and seen.slots[i]["state"] != "maintenance_open":
            return "quarantined slot %d unlocked (%s)" % (n, seen.slots[i]["state"])
    return None


def no_battery_in_two_places(seen):
    """cabinet.md persistence: the inventory names each battery in one slot at most."""
    serials = [e[0] for e in seen.journal["inventory"] if e[0] is not None]
    if len(serials) != len(set(serials)):
        return "the journal lists %s" % serials
    return None


def every_battery_accounted_for(seen):
    """cabinet.md persistence and recovery: behind a shut, locked door the journal's battery is
    the one physically there, and a battery physically there is not published as an empty slot."""
    w = seen.world
    for i in range(w.n):
        if not (w.door[i] and w.bolt[i] and seen.lock_cmd[i]):
            continue
        serial, _, accepted, _ = seen.journal["inventory"][i][:4]
        if accepted and serial != w.serial[i]:
            return "slot %d: journal has %s accepted, the slot holds %s" % (i + 1, serial, w.serial[i])
        if w.serial[i] is not None and seen.slots[i]["state"] == "empty":
            return "slot %d holds %s but is published empty" % (i + 1, w.serial[i])
    return None


def lock_jam_after_one_retry(seen):
    """Rule 8: lock feedback follows the command within 500 ms; one retry, then `lock_jam`.
    Two lock windows with the bolt away from its command must show the fault."""
    for i, k in enumerate(seen.world.windows):
        if k >= 2 and "lock_jam" not in seen.slots[i]["faults"]:
            return "slot %d: bolt away from its command for two lock windows, faults %s" % (
                i + 1, seen.slots[i]["faults"])
    return None


# == step invariants ===========================================================================
def core_settles(before, ev, events, info, after):
    """Run to completion (STYLE.md, QP): an event's consequences end within a few ticks, and the
    cabinet does not keep changing on its own."""
    if not info.get("settled", True):
        return "the core was still changing %d ticks after the event" % SETTLE_TICKS
    return None


def safe_outputs_at_boot(before, ev, events, info, after):
    """Rule 9: at power-on every charger off and every lock locked before anything else."""
    outs = info.get("boot_outputs")
    if outs is not None and (not all(outs[0]) or any(outs[1])):
        return "at boot locks %s, chargers %s" % outs
    return None


def battery_missing_names_a_missing_battery(before, ev, events, info, after):
    """cabinet.md recovery, mqtt.md `BatteryMissing`: the journal said a battery was there (its
    serial) and the sensors say no."""
    w = after.world
    for e in events:
        if e["type"] != "BatteryMissing":
            continue
        n = e.get("slot")
        if e.get("serial") is None:
            return "BatteryMissing for slot %s with serial null" % n
        if isinstance(n, int) and 1 <= n <= w.n and w.serial[n - 1] == e["serial"]:
            return "BatteryMissing for %s, which is in slot %d" % (e["serial"], n)
    return None


def rider_gets_a_battery_or_their_own_back(before, ev, events, info, after):
    """mqtt.md session steps 4 and 5, cabinet.md recovery: once BatteryIn is recorded the swap
    completes or ends `not_taken` (power cut included), or the rider's battery is given back
    (which clears `in_recorded`: no battery left to hand out); only an emergency, a slot fault or a
    quarantine of the rider's slot, where the safety rules keep the doors shut, may end it
    otherwise."""
    ss = before.journal["session"] if before is not None else None
    recorded = set()
    if ss is not None and ss["in_recorded"]:
        recorded.add(ss["id"])
    for e in events:
        if e["type"] == "BatteryIn":
            recorded.add(e["session"])
        elif e["type"] == "SwapAborted" and e["session"] in recorded and \
                e["reason"] not in ("not_taken", "emergency", "fault"):
            n = ss.get("slot_in") if ss is not None else None
            if e["reason"] == "no_battery_available" and isinstance(n, int) and \
                    after.journal["inventory"][n - 1][3] is not None:
                continue  # the rider's battery is quarantined (rule 7 keeps it shut)
            b = ss.get("battery_in") if ss is not None else None
            if e["reason"] == "no_battery_available" and isinstance(b, dict) and \
                    b.get("serial") not in after.world.serial:
                continue  # nothing to hand out, and the rider has their own back
            return "session %s: BatteryIn recorded, then SwapAborted(%s)" % (e["session"], e["reason"])
    return None


def battery_out_has_left(before, ev, events, info, after):
    """mqtt.md `BatteryOut` / `SwapCompleted`: the battery handed out is no longer in the
    cabinet."""
    w = after.world
    for e in events:
        if e["type"] == "BatteryOut":
            b = e.get("battery")
            serial = b.get("serial") if isinstance(b, dict) else None
            if serial is None or serial in w.serial:
                return "BatteryOut of %s, which is %s" % (
                    serial, "unnamed" if serial is None else "still in slot %d" % (
                        w.serial.index(serial) + 1))
    return None


def forced_door_is_an_alarm(before, ev, events, info, after):
    """Rule 8: a door that opens while its lock says locked is a break-in: DoorForced, alarm."""
    if ev[0] != "force":
        return None
    i = ev[1] - 1
    if not before.lock_cmd[i]:
        return None
    if not any(e["type"] == "DoorForced" and e["slot"] == ev[1] for e in events) or not after.alarm:
        return "slot %d forced: events %s, alarm %s" % (ev[1], [e["type"] for e in events], after.alarm)
    return None


def emergency_latched_until_reset(before, ev, events, info, after):
    """Rule 4: an emergency is latched until `reset_emergency` with the causes cleared."""
    if before.cab["mode"] == "emergency" and after.cab["mode"] != "emergency":
        ack = info.get("ack")
        if not (ev[0] == "cmd" and ev[1] == "reset_emergency" and ack and ack["ok"]):
            return "emergency left to %s by %s" % (after.cab["mode"], ev)
    return None


def quarantine_survives_a_power_cut(before, ev, events, info, after):
    """cabinet.md persistence: quarantine flags are persisted; a power cut clears none."""
    if ev[0] != "power_cycle":
        return None
    for i in range(len(before.slots)):
        if _quarantined(before, i) and not _quarantined(after, i):
            return "slot %d's quarantine lost over a power cut" % (i + 1)
    return None


def refused_command_changes_nothing(before, ev, events, info, after):
    """mqtt.md commands: check mode and arguments, then execute; a refused command (an ack with
    an error) is not executed."""
    ack = info.get("ack")
    if ack is not None and not ack["ok"] and (events or before.key() != after.key()):
        return "%s refused (%s) yet %s" % (ev[1], ack["error"], [e["type"] for e in events] or "the state changed")
    return None


STATE = [(f.__name__, f) for f in (
    charger_only_behind_a_shut_locked_door, charger_only_for_an_accepted_good_pack,
    emergency_makes_everything_safe, smoke_or_estop_means_emergency,
    doors_unlock_only_for_a_reason, one_door_at_a_time_in_service, bad_pack_never_offered,
    quarantine_keeps_the_slot_shut, no_battery_in_two_places, every_battery_accounted_for,
    lock_jam_after_one_retry)]
STEP = [(f.__name__, f) for f in (
    core_settles, safe_outputs_at_boot, battery_missing_names_a_missing_battery,
    rider_gets_a_battery_or_their_own_back, battery_out_has_left, forced_door_is_an_alarm,
    emergency_latched_until_reset, quarantine_survives_a_power_cut,
    refused_command_changes_nothing)]
