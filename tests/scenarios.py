# Scripted cabinet scenarios for the core that run unchanged on CPython and in the MicroPython VM,
# so the two event traces can be compared. Each returns the events, acks and final slot states.
import json

from coreworld import Battery, Rig
from tukar.clock import TICKS_PERIOD
from tukar.core import Core


def _rig(slots=12, full=3, half=3, start=0, journal=None):
    rig = Rig(Core("sim-1", slots, journal=journal), start)
    n = 1
    for i in range(full):
        rig.world.place(n, Battery("F-" + str(n), soc=95, cycles=100 + n))
        n += 1
    for i in range(half):
        rig.world.place(n, Battery("H-" + str(n), soc=60, cycles=n))
        n += 1
    rig.run(1000)
    return rig


def _insert(rig, battery):
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.insert(n, battery)
    rig.world.close_door(n)
    rig.run(600)


def _take(rig):
    n = rig.core.session.slot_out
    rig.run(300)
    rig.world.open_door(n)
    rig.world.take(n)
    rig.world.close_door(n)
    rig.run(300)


def _result(rig):
    return {"events": rig.events, "acks": rig.acks,
            "slots": [rig.core.slot_state(n) for n in range(1, rig.core.n_slots + 1)],
            "cabinet": rig.core.cabinet_state()}


def normal_swap():
    rig = _rig()
    rig.cmd("start_swap", id_token="rider-77", request_id="r-9")
    _insert(rig, Battery("R-1", soc=12))
    _take(rig)
    rig.run(5000)
    return _result(rig)


def refused_battery():
    rig = _rig()
    rig.cmd("start_swap", id_token="rider-1")
    _insert(rig, Battery("R-2", soc=12, faults=4))
    n = rig.core.session.slot_in
    rig.run(300)
    rig.world.open_door(n)
    rig.world.take(n)
    rig.world.close_door(n)
    rig.run(500)
    return _result(rig)


def timeouts():
    rig = _rig(start=TICKS_PERIOD - 10000)  # across the ticks wrap
    rig.cmd("start_swap", id_token="rider-2")
    rig.run(61000)
    rig.cmd("start_swap", id_token="rider-3")
    _insert(rig, Battery("R-3", soc=12))
    rig.run(61000)
    return _result(rig)


def overheating_and_smoke():
    rig = _rig()
    rig.world.slots[3].battery.temp_dc = 610
    rig.run(500)
    rig.world.smoke = True
    rig.run(500)
    rig.cmd("reset_emergency")
    rig.world.smoke = False
    rig.run(500)
    rig.cmd("reset_emergency")
    rig.cmd("set_mode", mode="in_service")
    rig.run(500)
    return _result(rig)


def maintenance_and_faults():
    rig = _rig()
    rig.cmd("set_mode", mode="maintenance")
    rig.cmd("open_slot", slot=2)
    rig.run(300)
    rig.world.open_door(2)
    rig.run(200)
    rig.world.close_door(2)
    rig.world.slots[4].sensor = 1
    rig.world.slots[8].jammed = True
    rig.cmd("open_slot", slot=9)
    rig.run(2000)
    rig.cmd("quarantine", slot=1, reason="swollen")
    rig.cmd("release", slot=1)
    rig.cmd("set_config", dispense_min_soc=95, bogus=1)
    rig.cmd("set_config", dispense_min_soc=95)
    rig.run(1000)
    return _result(rig)


def power_cut_mid_swap():
    rig = _rig()
    rig.cmd("start_swap", id_token="rider-4")
    _insert(rig, Battery("R-4", soc=12))
    journal = json.loads(json.dumps(rig.core.journal()))
    for ws in rig.world.slots:
        ws.locked = True
        ws.lock_target = True
    core = Core("sim-1", 12, journal=journal, boot_reason="power_loss")
    core.now = rig.now
    rig.core = core
    rig.world.core = core
    rig.run(500)
    _take(rig)
    return _result(rig)


ALL = ("normal_swap", "refused_battery", "timeouts", "overheating_and_smoke",
       "maintenance_and_faults", "power_cut_mid_swap")


def main(names=ALL):
    for name in names:
        print(json.dumps({"name": name, "result": globals()[name]()}))
