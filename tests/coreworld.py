# A small physical world for the core's tests: doors, locks with travel time, batteries whose BMS
# reports into the core's input snapshots, chargers that fill them. It runs unchanged on CPython
# and inside the MicroPython VM (no random, no dataclasses), so both can replay one scenario.
from tukar.clock import wrap_add, wrap_diff


class Battery:
    def __init__(self, serial, soc=50, temp=25, profile="ref48v", cycles=10, soh=95,
                 faults=0, capacity_mah=30000, req_ma=-1):
        self.serial = serial
        self.soc_pm = soc * 10
        self.temp_dc = temp * 10
        self.profile = profile
        self.cycles = cycles
        self.soh = soh
        self.faults = faults
        self.capacity_mah = capacity_mah
        self.req_ma = req_ma
        self.acc = 0  # mA x ms not yet counted as SoC
        self.says_full = None  # the BMS's "fully charged" flag: None, as its SoC reaches 100 %

    def voltage_mv(self):
        return 42000 + (54600 - 42000) * self.soc_pm // 1000


class WorldSlot:
    def __init__(self):
        self.door_closed = True
        self.battery = None
        self.locked = True  # the bolt's real position (the feedback switch follows it)
        self.lock_target = True
        self.lock_t = 0
        self.jammed = False
        self.bms_dead = False
        self.bms_link_fault = False
        self.sensor = 0
        self.slot_temp_dc = None  # None: the sensor sees the battery's temperature (ambient when empty)
        self.last_bms = None
        self.charger_ma = 0
        self.io_fault = False  # the expander with this slot's switches stops answering


class World:
    """Physical truth for one core. Call step(now) once per control tick, before core.tick(now)."""

    def __init__(self, core, now=0, lock_travel_ms=150, bms_period_ms=100):
        self.core = core
        self.now = now
        self.lock_travel_ms = lock_travel_ms
        self.bms_period_ms = bms_period_ms
        self.slots = [WorldSlot() for _ in range(core.n_slots)]
        self.smoke = False
        self.estop = False
        self.cab_temp_dc = 250
        self.cab_sensor = 0  # the cabinet thermistor's status (tukar.inputs.SENSOR_*)

    # -- the rider, the technician and the environment ----------------------------------
    def open_door(self, n, force=False):
        ws = self.slots[n - 1]
        if ws.locked and not force:
            return False
        ws.door_closed = False
        return True

    def close_door(self, n):
        self.slots[n - 1].door_closed = True
        return True

    def insert(self, n, battery):
        ws = self.slots[n - 1]
        if ws.door_closed or ws.battery is not None:
            return False
        ws.battery = battery
        return True

    def take(self, n):
        ws = self.slots[n - 1]
        if ws.door_closed or ws.battery is None:
            return None
        b = ws.battery
        ws.battery = None
        return b

    def place(self, n, battery):
        """Set a battery in a slot before boot (initial stock)."""
        self.slots[n - 1].battery = battery

    # -- physics ----------------------------------------------------------------------------
    def step(self, now):
        dt = wrap_diff(now, self.now)
        self.now = now
        core = self.core
        for i in range(len(self.slots)):
            ws = self.slots[i]
            target = core.lock_cmd[i]
            if target != ws.lock_target:
                ws.lock_target = target
                ws.lock_t = now
            if not ws.jammed and ws.locked != ws.lock_target and \
                    wrap_diff(now, ws.lock_t) >= self.lock_travel_ms:
                ws.locked = ws.lock_target
            ma = core.charge_ma[i]
            ws.charger_ma = ma
            b = ws.battery
            if b is not None and ma > 0 and dt > 0:
                b.acc += ma * dt
                step = b.capacity_mah * 3600  # mA x ms per 0.1 % of SoC
                while b.acc >= step:
                    b.acc -= step
                    if b.soc_pm < 1000:
                        b.soc_pm += 1
            self._fill(i, ws, now)
        cab = core.cabinet
        cab.smoke = self.smoke
        cab.estop = self.estop
        # A broken thermistor reads as the NTC table's ends (tukar.ntc: T_MIN_DC open, T_MAX_DC
        # shorted), as the board reports it.
        cs = self.cab_sensor
        cab.temp_dc = -400 if cs == 1 else 1500 if cs == 2 else self.cab_temp_dc
        cab.sensor = cs

    def _fill(self, i, ws, now):
        inp = self.core.slot_inputs[i]
        inp.io_ok = not ws.io_fault
        if ws.io_fault:  # the board's fail levels: door open, battery present, lock open
            inp.door_closed, inp.present, inp.locked = False, True, False
        else:
            inp.door_closed = ws.door_closed
            inp.present = ws.battery is not None
            inp.locked = bool(ws.locked)  # a feedback switch reads a bit, as Lock.locked() does
        if ws.slot_temp_dc is not None:
            inp.temp_dc = ws.slot_temp_dc
        else:
            inp.temp_dc = ws.battery.temp_dc if ws.battery is not None else self.cab_temp_dc
        inp.sensor = ws.sensor
        bms = inp.bms
        b = ws.battery
        if b is None:
            if bms.valid:
                bms.clear()
            ws.last_bms = None
            return
        bms.link_fault = ws.bms_link_fault
        if ws.bms_dead or ws.bms_link_fault:
            return
        if ws.last_bms is not None and wrap_diff(now, ws.last_bms) < self.bms_period_ms:
            return
        ws.last_bms = now
        bms.valid = True
        bms.t_ms = now
        bms.serial = b.serial
        bms.profile = b.profile
        bms.soc_pm = b.soc_pm
        bms.soh_pct = b.soh
        bms.temp_dc = b.temp_dc
        bms.voltage_mv = b.voltage_mv()
        bms.current_ma = ws.charger_ma
        bms.cycles = b.cycles
        bms.faults = b.faults
        bms.req_current_ma = b.req_ma
        bms.full = b.soc_pm >= 1000 if b.says_full is None else b.says_full


class Rig:
    """A core, its world and a clock that can start anywhere, including just before the wrap."""

    def __init__(self, core, start_ms=0, tick_ms=50):
        self.core = core
        self.tick_ms = tick_ms
        self.now = start_ms
        core.now = start_ms
        self.world = World(core, start_ms)
        self.events = []
        self.acks = []

    def tick(self):
        self.now = wrap_add(self.now, self.tick_ms)
        self.world.step(self.now)
        self.core.tick(self.now)
        if self.core.events:
            self.events.extend(self.core.events)
            self.core.events.clear()

    def run(self, ms):
        for _ in range(ms // self.tick_ms):
            self.tick()

    def cmd(self, cmd, **args):
        body = {"req_id": "r-%d" % (len(self.acks) + 1), "ts": 0, "cmd": cmd}
        for k in args:
            body[k] = args[k]
        a = self.core.command(body)
        self.acks.append(a)
        if self.core.events:
            self.events.extend(self.core.events)
            self.core.events.clear()
        return a

    def types(self):
        return [e["type"] for e in self.events]

    def of(self, etype):
        return [e for e in self.events if e["type"] == etype]


def stocked_rig(slots=12, full=3, half=3, start_ms=0, config=None, journal=None, profiles=None):
    """A cabinet with `full` batteries at 95 % in slots 1.. and `half` at 60 % after them,
    booted and settled (identified, charging)."""
    from tukar.core import Core
    core = Core("cab-1", slots, profiles=profiles, config=config, journal=journal)
    rig = Rig(core, start_ms)
    n = 1
    for i in range(full):
        rig.world.place(n, Battery("F-%02d" % n, soc=95, cycles=100 + n))
        n += 1
    for i in range(half):
        rig.world.place(n, Battery("H-%02d" % n, soc=60, cycles=n))
        n += 1
    rig.run(1000)
    return rig


def rider_inserts(rig, battery, wait_ms=500):
    """The rider opens the door the cabinet unlocked, pushes the battery in and shuts it."""
    n = rig.core.session.slot_in
    rig.run(300)  # lock travel
    assert rig.world.open_door(n)
    assert rig.world.insert(n, battery)
    rig.world.close_door(n)
    rig.run(wait_ms)
    return n


def insert_until_dispensing(rig, battery):
    """The rider's battery goes in; tick until the cabinet opens the dispense door. Returns slot_out."""
    rider_inserts(rig, battery, wait_ms=0)
    while rig.core.session.phase != "dispensing":
        rig.tick()
    return rig.core.session.slot_out


def rider_takes(rig, wait_ms=300):
    n = rig.core.session.slot_out
    rig.run(300)
    assert rig.world.open_door(n)
    b = rig.world.take(n)
    rig.world.close_door(n)
    rig.run(wait_ms)
    return n, b
