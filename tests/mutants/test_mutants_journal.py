"""Persistence and recovery (cabinet.md) where the mutation run of journal.py found the suite
blind: what the journal keeps across a power cut (counters, mode, latched causes, the session's
token, request and age), what the boot reports (mqtt.md's `Boot.recovered`), a damaged journal
skipped entry by entry, and a swap resumed at the boot wherever its slots are. One behaviour per
test (docs/safety.md, "Mutation testing")."""
import json

import pytest
from coreworld import Battery, Rig, insert_until_dispensing, rider_inserts, stocked_rig

from tukar.core import Core
from tukar.states import J_COUNTERS, J_SESSION
from tukar_tools import schemas


@pytest.fixture(autouse=True)
def every_event_and_state_fits_the_contract(monkeypatch):
    """After each test: every event its cabinets emitted, and their states, fit mqtt.md's schemas."""
    rigs = []
    real = Rig.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        rigs.append(self)
    monkeypatch.setattr(Rig, "__init__", init)
    yield
    for rig in rigs:
        for e in rig.events:
            schemas.validate("event", dict(e, seq=1))
        schemas.validate("state", dict(rig.core.cabinet_state(), seq=1))
        for n in range(1, rig.core.n_slots + 1):
            schemas.validate("slot/%d/state" % n, dict(rig.core.slot_state(n), seq=1))


def saved(rig):
    """The journal as LittleFS would hold it after the last write."""
    return json.loads(json.dumps(rig.core.journal()))


def reboot(rig, journal=None, reason="power_loss"):
    """A power cut: the core boots again from `journal` (by default what the cabinet last wrote);
    fail-secure locks have dropped into the locked position."""
    if journal is None:
        journal = saved(rig)
    for ws in rig.world.slots:
        ws.locked = True
        ws.lock_target = True
    core = Core(rig.core.id, rig.core.n_slots, journal=journal, boot_reason=reason)
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    return core


def rig_with(slots, packs):
    """A settled cabinet with the given {slot: Battery}."""
    rig = Rig(Core("cab-1", slots))
    for n in packs:
        rig.world.place(n, packs[n])
    rig.run(1000)
    return rig


def take(rig, n):
    rig.world.open_door(n)
    b = rig.world.take(n)
    rig.world.close_door(n)
    return b


def boot_report(rig):
    return rig.of("Boot")[-1]["recovered"]


# -- what the boot reports (mqtt.md: Boot.recovered) -------------------------------------------------
def test_the_boot_report_names_the_interrupted_session_and_its_phase():
    rig = stocked_rig(slots=6, full=2, half=1)
    sid = rig.cmd("start_swap", id_token="t", request_id="q-1")["session"]
    rig.run(300)
    reboot(rig)
    rig.run(200)
    rec = boot_report(rig)
    assert (rec["session"], rec["session_phase"]) == (sid, "awaiting_battery")


def test_a_held_battery_taken_while_unpowered_is_in_the_boot_report_as_missing():
    rig = stocked_rig(slots=6, full=2, half=0)
    rig.world.place(4, Battery("BAD-4", soc=50, faults=1))  # refused: held, quarantined
    rig.run(1000)
    assert rig.core.slot_state(4)["state"] == "quarantined"
    rig.world.slots[3].battery = None
    reboot(rig)
    rig.run(200)
    assert boot_report(rig)["missing"] == [4]


# -- what the journal keeps --------------------------------------------------------------------------
def test_the_event_counter_continues_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=1)
    last = int(rig.events[-1]["id"].rsplit("-", 1)[1])
    reboot(rig)
    rig.run(200)
    assert rig.of("Boot")[-1]["id"] == "cab-1-2-%d" % (last + 1)


def test_bdseq_is_kept_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.core.connected(7)
    reboot(rig)
    assert rig.core.counters.get("bdseq", 0) == 7  # what the link counts on from


@pytest.mark.parametrize("mode", ["maintenance", "out_of_service"])
def test_the_mode_set_by_a_command_survives_a_power_cut(mode):
    rig = stocked_rig(slots=4, full=1, half=0)
    assert rig.cmd("set_mode", mode=mode)["ok"]
    reboot(rig)
    rig.run(200)
    assert boot_report(rig)["mode"] == mode
    assert rig.core.cabinet_state()["mode"] == mode


def test_a_latched_emergency_keeps_its_cause_across_a_power_cut():
    rig = stocked_rig(slots=4, full=1, half=0)
    rig.world.smoke = True
    rig.run(200)
    rig.world.smoke = False  # gone, but latched until reset_emergency
    rig.run(200)
    reboot(rig)
    rig.run(200)
    st = rig.core.cabinet_state()
    assert st["mode"] == "emergency" and st["alarms"] == ["smoke"]
    assert rig.cmd("reset_emergency")["ok"]
    assert [e["cause"] for e in rig.of("EmergencyCleared")] == ["smoke"]
