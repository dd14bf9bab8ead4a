"""A whole simulated cabinet on the host: the unmodified firmware (Board, Core, ControlCycle) over
the `machine` shim and chip models of one board file, with a physical side a test or the
simulator drives: batteries in slots (SBS packs on their mux channel, CAN packs on the CAN bus),
doors, fail-secure locks whose feedback follows the lock output after a travel time, slot and
cabinet temperatures, smoke and the emergency stop. Time is simulated (hosttime, stepped by hand).

Slots are numbered from 1, as the cabinet's events number them.

    cab = Cabinet("tukar-12-wroom")
    cab.insert_sbs(3)                  # an sbs48v pack, identified within a few ticks
    cab.run(2000)
    assert cab.core.charge_ma[2] == 10000
"""
import json
import pathlib

from tukar_tools import hostenv  # noqa: F401  (firmware/ on the path, MicroPython's names supplied)

ROOT = pathlib.Path(__file__).resolve().parents[2]

import hosttime  # noqa: E402
import machine  # noqa: E402  (the host shim)
from tukar.board import Board  # noqa: E402
from tukar.core import Core  # noqa: E402
from tukar.cycle import ControlCycle  # noqa: E402
from tukar.profile import load_dir  # noqa: E402
from tukar_tools.shim import hw as shim_hw  # noqa: E402
from tukar_tools.shim.board_hw import BoardHardware  # noqa: E402
from tukar_tools.shim.canbus import CanBus  # noqa: E402
from tukar_tools.shim.i2c_chips import BatteryState, SmartBattery  # noqa: E402

BOARDS = ROOT / "boards"
PROFILES = ROOT / "firmware" / "profiles"
TICK_MS = 50
SYNC_MS = 100  # the BMS models take the packs' values this often (the fastest BMS frame period)


def board_path(name):
    return BOARDS / name / "board.json"


class Lock:
    """A fail-secure lock's bolt: it follows the solenoid after `travel_ms`, unless jammed."""

    def __init__(self, travel_ms):
        self.travel_ms = travel_ms
        self.locked = True  # the bolt is out
        self.jammed = False
        self.moving_since = None

    def follow(self, energised, now):
        want = not energised  # energising pulls the bolt in
        if self.jammed or want == self.locked:
            self.moving_since = None
            return
        if self.moving_since is None:
            self.moving_since = now
        if now - self.moving_since >= self.travel_ms:
            self.locked = want
            self.moving_since = None


class Pack:
    """The physical battery in a slot, whatever its link: charge, heat, faults. Its BMS model
    (a CAN BmsNode or an SBS SmartBattery) is refreshed from it by `sync`."""

    # Heating: steady rise of HEAT * I^2 / COOL degC at current I (A); COOL: 10 min time constant.
    HEAT = 8.0 / (100 * 600)
    COOL = 1.0 / 600

    def __init__(self, serial, profile, soc=50.0, soh=95.0, temp_c=25.0, faults=(), cycles=50):
        self.serial = serial
        self.profile = profile  # Profile
        self.soc = float(soc)
        self.soh = float(soh)
        self.temp_c = float(temp_c)
        self.faults = list(faults)
        self.cycles = cycles
        self.current_ma = 0
        self.model = None
        self.synced = None  # when its BMS model last took the pack's values

    @property
    def capacity_mah(self):
        return self.profile.capacity_mah * self.soh / 100

    def request_ma(self):
        """What the BMS asks for: the profile's maximum, tapering above 90 %, nothing when full."""
        top = self.profile.max_charge_ma
        if self.soc >= 100:
            return 0
        if self.soc > 90:
            return max(1000, int(top * (100 - self.soc) / 10))
        return top

    def voltage_mv(self):
        p = self.profile
        return int(p.voltage_min_mv + (p.voltage_max_mv - p.voltage_min_mv) * self.soc / 100)

    def physics(self, current_ma, dt_ms, ambient_c):
        """Charge and heat for dt_ms at current_ma (into the pack)."""
        self.current_ma = current_ma
        dt = dt_ms / 1000
        if current_ma > 0:
            self.soc = min(100.0, self.soc + current_ma * dt / 3600 / self.capacity_mah * 100)
        amps = current_ma / 1000
        self.temp_c += (self.HEAT * amps * amps - self.COOL * (self.temp_c - ambient_c)) * dt

    def snapshot(self):
        return {"serial": self.serial, "soc": round(self.soc, 1), "soh": round(self.soh, 1),
                "temp_c": round(self.temp_c, 1), "profile": self.profile.name,
                "faults": list(self.faults)}


_NAMES = {}


def _can_names(profile_data):
    """field -> signal name and fault -> signal name of a CAN profile (worked out once)."""
    cached = _NAMES.get(profile_data["name"])
    if cached is not None:
        return cached
    fields, faults = {}, {}
    for f in profile_data["can"]["frames"]:
        for sig in f.get("signals", []):
            if "field" in sig:
                fields.setdefault(sig["field"], sig["name"])
            if "fault" in sig:
                faults[sig["fault"]] = sig["name"]
    _NAMES[profile_data["name"]] = (fields, faults)
    return fields, faults


# SBS BatteryStatus bits the world can raise, by battery fault name (cabinet.md).
_SBS_FAULT_BITS = {"overcharged": 1 << 15, "overtemp": 1 << 12}
_SBS_FULL = (1 << 5) | (1 << 14)  # FULLY_CHARGED, TERMINATE_CHARGE_ALARM


def sync(pack):
    """Push the pack's physical values into its BMS model."""
    m = pack.model
    if isinstance(m, SmartBattery):
        st = m.state
        st.soc_pct = int(pack.soc)
        st.temp_dk = int(round(pack.temp_c * 10)) + 2731
        st.voltage_mv = pack.voltage_mv()
        st.current_ma = pack.current_ma
        st.full_capacity = int(pack.profile.capacity_mah * pack.soh / 100)
        st.design_capacity = pack.profile.capacity_mah
        st.remaining = int(st.full_capacity * pack.soc / 100)
        st.charging_current_ma = pack.request_ma()
        st.cycles = pack.cycles
        status = 0x00C0
        for name in pack.faults:
            status |= _SBS_FAULT_BITS.get(name, 0)
        if pack.soc >= 100:
            status |= _SBS_FULL
        st.status = status
    elif m is not None:
        fields, faults = _can_names(m.profile)
        # Rounded to the signals' resolution, so a frame is encoded again only when it changes.
        values = {fields["voltage_mv"]: round(pack.voltage_mv() / 1000, 2),
                  fields["current_ma"]: round(pack.current_ma / 1000, 1),
                  fields["soc_pm"]: round(pack.soc, 1), fields["soh_pct"]: int(pack.soh),
                  fields["temp_dc"]: round(pack.temp_c), fields["cycles"]: pack.cycles,
                  fields["req_current_ma"]: round(pack.request_ma() / 1000, 1)}
        if "full" in fields:
            values[fields["full"]] = 1 if pack.soc >= 100 else 0
        if "temp_min_dc" in fields:
            values[fields["temp_min_dc"]] = round(pack.temp_c) - 2
        for name, sig in faults.items():
            values[sig] = 1 if name in pack.faults else 0
        m.set(**values)


class WorldError(Exception):
    """A physical action that cannot happen (the door is locked, the slot is empty, ...)."""


class Physical:
    """The cabinet's physical side over the chip models of one board file: doors, fail-secure
    locks, batteries on their links, chargers, temperatures, smoke and the emergency stop."""

    def __init__(self, board="tukar-12-wroom", lock_travel_ms=60, temp_c=25.0, slots=None):
        with open(board_path(board)) as f:
            cfg = json.load(f)
        if slots is not None and slots != cfg["slot_count"]:
            if not 1 <= slots <= cfg["slot_count"]:
                raise ValueError("board %s has %d slots; %d asked" % (board, cfg["slot_count"], slots))
            cfg["slots"] = cfg["slots"][:slots]
            cfg["slot_count"] = slots
        self.cfg = cfg
        input_only = range(34, 40) if cfg["chip"] == "esp32" else ()
        self.hw = shim_hw.install(shim_hw.Hardware(input_only=input_only))
        self.world = BoardHardware(self.hw, cfg)
        self.n = cfg["slot_count"]
        self.profiles = load_dir(str(PROFILES))
        self.locks = [Lock(lock_travel_ms) for _ in range(self.n)]
        self.doors = [True] * self.n  # closed
        self.batteries = [None] * self.n  # the BMS model in each slot: SmartBattery or BmsNode
        self.packs = [None] * self.n  # the physical pack in each slot
        self.ambient_c = temp_c
        self.cabinet_c = temp_c
        self.cabinet_sensor_broken = False
        self.smoke = False
        self.estop = False
        self.slot_c = [None] * self.n  # a forced slot sensor temperature (None: follows the pack)
        self._sensor_c = [None] * self.n  # what each slot's NTC model shows now
        self.last_physics = None
        self.moves = 0  # lock bolts and chargers switching: sim/world is published at once
        self.energy_wh = [0.0] * self.n  # what each slot's charger has put into packs (V x I dt)
        for i in range(self.n):
            self._set(i, "door", True)
            self._set(i, "presence", False)
            self._set(i, "lock_feedback", True)
            self.world.set_temp(self.slot_cfg(i)["temp"], temp_c)
        cab = cfg["cabinet"]
        self.world.set_input(cab["smoke"], False)
        self.world.set_input(cab["estop"], False)
        self.world.set_temp(cab["temp"], temp_c)
        self.can = None
        self.chargers = {}
        if self.world.mcp2515 is not None:
            self.can = CanBus(cfg["mcp2515"]["bitrate"])
            self.can.attach_controller(self.world.mcp2515)
            from tukar_tools.shim.cancharger_model import ChargerNode
            for i in range(self.n):
                c = self.slot_cfg(i)["charger"]
                if c.get("kind") == "can":
                    node = ChargerNode(c["node"])
                    self.chargers[i] = node
                    self.can.attach(node)

    def serve_can(self, board):
        """On the device, the INT-driven receive task empties the MCP2515 (two buffers) while the
        next frame is still on the wire. Here a physics step puts a burst of frames on the bus at
        once, so the firmware's drain runs between frames, synchronously."""
        if self.can is not None:
            self.can.between_frames = lambda: board.drain_can(hosttime.ticks_ms())

    # -- physics ---------------------------------------------------------------------------------
    def charger_ma(self, i):
        """Current flowing into slot i's battery now."""
        pack = self.packs[i]
        if pack is None:
            return 0
        c = self.slot_cfg(i)["charger"]
        enabled = self.world.output(c["enable"]) == 1 if "enable" in c else True
        if not enabled:
            return 0
        node = self.chargers.get(i)
        if node is not None:
            node.battery_mv = pack.voltage_mv()
            supply = node.output_ma
        else:
            supply = self.slot_cfg(i).get("current_limit_ma", 10000)
        return min(supply, pack.request_ma())

    def follow_locks(self, now):
        """Each bolt follows its solenoid; the feedback switches show where the bolts are."""
        for i in range(self.n):
            lock = self.locks[i]
            was = lock.locked
            lock.follow(self.world.output(self.slot_cfg(i)["lock"]) == 1, now)
            if lock.locked != was:
                self.moves += 1
            self._set(i, "lock_feedback", lock.locked)

    def time_locks(self, clock):
        """From now on a bolt starts to move when the firmware switches its solenoid, and the
        feedback the firmware reads is the bolt's at that read (clock(): ms, as physics' `now`), not
        at the last physics step: at a high --speed the steps are far apart in simulated time, and
        a lock's confirmation has only 500 ms."""
        def written():
            self.follow_locks(clock())

        def read():  # a bolt starts to move only on a write: between writes, only moving ones
            if any(lock.moving_since is not None for lock in self.locks):
                self.follow_locks(clock())
        for x in self.world.expanders:
            x.on_write = written
            x.on_read = read

    def physics(self, now):
        """Move the world to `now`: lock bolts, charging, heat, BMS values, CAN frames."""
        dt = 0 if self.last_physics is None else now - self.last_physics
        self.last_physics = now
        self.follow_locks(now)
        for i in range(self.n):
            pack = self.packs[i]
            if pack is not None:
                ma = self.charger_ma(i)
                if (ma > 0) != (pack.current_ma > 0):
                    self.moves += 1
                if dt > 0:
                    if ma > 0:  # at the voltage the step starts from: mV x mA x ms -> Wh
                        self.energy_wh[i] += pack.voltage_mv() * ma * dt / 3.6e12
                    pack.physics(ma, dt, self.cabinet_c)
                if pack.synced is None or now - pack.synced >= SYNC_MS or now < pack.synced:
                    pack.synced = now
                    sync(pack)
                if self.slot_c[i] is None:
                    self._sensor(i, pack.temp_c)
            elif self.slot_c[i] is None:
                self._sensor(i, self.cabinet_c)
        if self.can is not None:
            self.can.step(now)

    def _sensor(self, i, temp_c):
        """Slot i's NTC follows temp_c; the ADC model is touched only when a 0.1 degC step moves."""
        t = round(temp_c, 1)
        if self._sensor_c[i] != t:
            self._sensor_c[i] = t
            self.world.set_temp(self.slot_cfg(i)["temp"], t)

    # -- the world's actions (mqtt.md, the simulator's world) -------------------------------------
    def add_pack(self, n, pack):
        """Put `pack` into slot n and attach its BMS model to the pack's link."""
        i = n - 1
        if self.packs[i] is not None:
            raise WorldError("occupied: slot %d already holds a battery" % n)
        if pack.profile.link == "sbs":
            sbs = self.slot_cfg(i)["battery"]["sbs"]
            names = pack.profile.device_names() or [pack.profile.name]
            model = self.world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).attach(
                SmartBattery(BatteryState(device_name=names[0], serial=0x1000 + n)))
        else:
            if self.can is None:
                raise WorldError("bad_args: this board has no CAN bus for a %s pack" % pack.profile.name)
            from tukar_tools.shim.bms_node import BmsNode
            model = BmsNode(pack.profile.data, i, pack.serial, None)
            self.can.attach(model)
        pack.model = model
        self.packs[i] = pack
        sync(pack)
        self._placed(n, model)
        return pack

    def insert(self, n, spec):
        """A rider pushes a battery in: refused when the door is locked."""
        i = n - 1
        if self.doors[i] and self.locks[i].locked:
            raise WorldError("door_locked: slot %d is locked" % n)
        name = spec.get("profile") or "ref48v"
        profile = self.profiles.get(name)
        if profile is None:
            # A pack the cabinet has no profile for still talks on the CAN bus like the reference.
            profile = self.profiles["ref48v"]
        pack = Pack(spec["serial"], profile, spec.get("soc", 50), spec.get("soh", 95),
                    spec.get("temp_c", 25), spec.get("faults", ()), spec.get("cycles", 50))
        self.doors[i] = False
        self._set(i, "door", False)
        self.add_pack(n, pack)
        return pack

    def take(self, n):
        i = n - 1
        if self.doors[i] and self.locks[i].locked:
            raise WorldError("door_locked: slot %d is locked" % n)
        if self.packs[i] is None:
            raise WorldError("empty: slot %d holds no battery" % n)
        self.doors[i] = False
        self._set(i, "door", False)
        pack = self.packs[i]
        self.packs[i] = None
        self.remove(n)
        return pack

    def set_battery(self, n, soc=None, temp_c=None, faults=None):
        pack = self.packs[n - 1]
        if pack is None:
            raise WorldError("empty: slot %d holds no battery" % n)
        if soc is not None:
            pack.soc = float(soc)
        if temp_c is not None:
            pack.temp_c = float(temp_c)
        if faults is not None:
            pack.faults = list(faults)
        sync(pack)

    def set_input(self, name, value):
        if name == "smoke":
            self.smoke = value
            self.set_cabinet(smoke=value)
        else:
            self.estop = value
            self.set_cabinet(estop=value)

    def set_cabinet_temp(self, temp_c):
        self.cabinet_c = float(temp_c)
        if not self.cabinet_sensor_broken:
            self.set_cabinet(temp_c=temp_c)

    def break_cabinet_sensor(self, raw):
        """The cabinet thermistor's ADC reads `raw` (4095: open, 0: shorted); None mends it."""
        self.cabinet_sensor_broken = raw is not None
        cab = self.cfg["cabinet"]
        if raw is None:
            self.world.set_temp(cab["temp"], self.cabinet_c)
        else:
            self.world.set_temp(cab["temp"], None, raw)

    def fault(self, target, on):
        if target == "can":
            if self.can is None:
                raise WorldError("bad_args: this board has no CAN bus")
            self.can.fault = on  # a shorted bus: back to bus-off after every restart
            if on:
                self.world.mcp2515.inject_bus_off()
        elif target == "i2c":
            self.hw.fault(self.hw.i2c_bus(1), on)  # a device holds SDA low on the battery bus
        elif target.startswith("lock:"):
            self.jam_lock(int(target[5:]), on)
        elif target == "cabinet_sensor":
            self.break_cabinet_sensor(4095 if on else None)  # the thermistor's lead breaks
        else:
            raise WorldError("bad_args: %s faults belong to the firmware's host, not the cabinet" % target)

    def snapshot(self):
        slots = []
        for i in range(self.n):
            pack = self.packs[i]
            slots.append({"slot": i + 1, "door": "closed" if self.doors[i] else "open",
                          "lock": "locked" if self.locks[i].locked else "unlocked",
                          "battery": pack.snapshot() if pack else None,
                          "charger_on": self.charger_ma(i) > 0})
        return {"slots": slots, "smoke": self.smoke, "estop": self.estop,
                "temp_c": round(self.cabinet_c, 1)}

    def power_loss(self):
        """Power cut: expanders and the CAN controller reset (outputs off: locks fall locked,
        chargers off), CAN chargers stop. The packs, doors and bolts stay as they are."""
        for x in self.world.expanders:
            x.power_on_reset()
        if self.world.mcp2515 is not None:
            self.world.mcp2515.power_on_reset()
        for node in self.chargers.values():
            node.on = False

    # -- low level -------------------------------------------------------------------------------
    def slot_cfg(self, i):
        return self.cfg["slots"][i]

    def _set(self, i, role, asserted):
        self.world.set_input(self.slot_cfg(i)[role], asserted)

    def open_door(self, n, force=False):
        """Open slot n's door; only when the bolt is in, unless forced (a break-in)."""
        i = n - 1
        if self.locks[i].locked and not force:
            return False
        self.doors[i] = False
        self._set(i, "door", False)
        return True

    def close_door(self, n):
        self.doors[n - 1] = True
        self._set(n - 1, "door", True)

    def insert_sbs(self, n, **fields):
        """An SBS pack behind slot n's mux channel (BatteryState fields; DeviceName TK48S-30)."""
        fields.setdefault("device_name", "TK48S-30")
        fields.setdefault("serial", 0x1000 + n)
        sbs = self.slot_cfg(n - 1)["battery"]["sbs"]
        model = self.world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).attach(
            SmartBattery(BatteryState(**fields)))
        return self._placed(n, model)

    def insert_can(self, n, profile="ref48v", serial=None, **values):
        """A CAN pack of `profile` in slot n, broadcasting on the CAN bus (signal values by name)."""
        from tukar_tools.shim.bms_node import BmsNode

        node = BmsNode(self.profiles[profile].data, n - 1, serial or "TK%02d-%06d" % (n, n),
                       None)
        node.set(**values)
        self.can.attach(node)
        return self._placed(n, node)

    def _placed(self, n, model):
        if self.batteries[n - 1] is not None:
            raise ValueError("slot %d already holds a battery" % n)
        self.batteries[n - 1] = model
        self._set(n - 1, "presence", True)
        return model

    def remove(self, n):
        """Take slot n's battery model out (its door state is the caller's business)."""
        i = n - 1
        model = self.batteries[i]
        self.batteries[i] = None
        self.packs[i] = None
        self._set(i, "presence", False)
        if isinstance(model, SmartBattery):
            sbs = self.slot_cfg(i)["battery"]["sbs"]
            self.world.muxes[sbs["mux"]].channel_bus(sbs["channel"]).detach(model)
        elif model is not None:
            self.can.nodes.remove(model)
        return model

    def jam_lock(self, n, jammed=True):
        """The bolt of slot n stops moving where it is (feedback never follows the output)."""
        self.locks[n - 1].jammed = jammed

    def set_slot_temp(self, n, temp_c=None, raw=None):
        """Slot n's NTC at temp_c, or a raw ADC code (4095: open, 0: shorted); held until physics
        is told otherwise with temp_c=None and raw=None."""
        if temp_c is None and raw is None:
            self.slot_c[n - 1] = None
            self._sensor_c[n - 1] = None
            return
        self.slot_c[n - 1] = temp_c if temp_c is not None else raw
        self._sensor_c[n - 1] = None
        self.world.set_temp(self.slot_cfg(n - 1)["temp"], temp_c, raw)

    def set_cabinet(self, smoke=None, estop=None, temp_c=None):
        cab = self.cfg["cabinet"]
        if smoke is not None:
            self.world.set_input(cab["smoke"], smoke)
        if estop is not None:
            self.world.set_input(cab["estop"], estop)
        if temp_c is not None:
            self.world.set_temp(cab["temp"], temp_c)


class Cabinet(Physical):
    """Physical + the firmware (Board, Core, ControlCycle) on a manual clock, for tests."""

    def __init__(self, board="tukar-12-wroom", cabinet_id="rig-1", config=None, journal=None,
                 start_ms=0, lock_travel_ms=60, temp_c=25.0):
        self.clock = hosttime.install(hosttime.SimClock(manual=True, start_ms=start_ms))
        super().__init__(board, lock_travel_ms, temp_c)
        self.board = Board(self.cfg, machine)
        self.board.safe_outputs()
        self.core = Core(cabinet_id, self.n, profiles=self.profiles, config=config, journal=journal,
                         now=self.now)
        self.serve_can(self.board)
        self.cycle = ControlCycle(self.board, self.core)
        self.events = []  # every event the core emitted, in order

    # -- time ----------------------------------------------------------------------------------
    @property
    def now(self):
        return hosttime.ticks_ms()

    def step(self, ms=TICK_MS):
        """Advance time by ms, let the world move, then run one control tick."""
        self.clock.advance(ms)
        now = self.clock.now_ms()
        for i in range(self.n):
            self.locks[i].follow(self.world.output(self.slot_cfg(i)["lock"]) == 1, now)
            self._set(i, "lock_feedback", self.locks[i].locked)
        if self.can is not None:
            self.can.step(now)
        self.cycle.step(self.now)
        self.events.extend(self.core.events)
        self.core.events.clear()

    def run(self, ms, tick_ms=TICK_MS):
        for _ in range(max(1, ms // tick_ms)):
            self.step(tick_ms)

    def cmd(self, name, **args):
        body = {"cmd": name, "req_id": "rig-%d" % len(self.events)}
        body.update(args)
        return self.core.command(body)

    # -- what the outside sees -----------------------------------------------------------------
    def charger_on(self, n):
        """Slot n's charger enable output (1 = on)."""
        c = self.slot_cfg(n - 1)["charger"]
        return self.world.output(c["enable"]) == 1 if "enable" in c else self.core.charge_ma[n - 1] > 0

    def lock_energised(self, n):
        return self.world.output(self.slot_cfg(n - 1)["lock"]) == 1

    def state(self, n):
        return self.core.slot_state(n)["state"]

    def events_of(self, etype, **match):
        return [e for e in self.events
                if e["type"] == etype and all(e.get(k) == v for k, v in match.items())]
