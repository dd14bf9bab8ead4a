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
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SHIM = ROOT / "tools" / "tukar_tools" / "shim"
for _p in (ROOT / "firmware", _SHIM):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import hosttime  # noqa: E402
import machine  # noqa: E402  (the host shim)
from tukar.board import Board  # noqa: E402
from tukar.core import Core  # noqa: E402
from tukar.cycle import ControlCycle  # noqa: E402
from tukar.profile import load_dir, sbs_names  # noqa: E402
from tukar_tools.shim import hw as shim_hw  # noqa: E402
from tukar_tools.shim.board_hw import BoardHardware  # noqa: E402
from tukar_tools.shim.canbus import CanBus  # noqa: E402
from tukar_tools.shim.i2c_chips import BatteryState, SmartBattery  # noqa: E402

BOARDS = ROOT / "boards"
PROFILES = ROOT / "firmware" / "profiles"
TICK_MS = 50


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


class Cabinet:
    def __init__(self, board="tukar-12-wroom", cabinet_id="rig-1", config=None, journal=None,
                 start_ms=0, lock_travel_ms=60, temp_c=25.0):
        with open(board_path(board)) as f:
            self.cfg = json.load(f)
        self.clock = hosttime.install(hosttime.SimClock(manual=True, start_ms=start_ms))
        input_only = range(34, 40) if self.cfg["chip"] == "esp32" else ()
        self.hw = shim_hw.install(shim_hw.Hardware(input_only=input_only))
        self.world = BoardHardware(self.hw, self.cfg)
        self.n = self.cfg["slot_count"]
        self.locks = [Lock(lock_travel_ms) for _ in range(self.n)]
        self.doors = [True] * self.n  # closed
        self.batteries = [None] * self.n  # the model in each slot: SmartBattery or BmsNode
        for i in range(self.n):
            self._set(i, "door", True)
            self._set(i, "presence", False)
            self._set(i, "lock_feedback", True)
            self.world.set_temp(self.slot_cfg(i)["temp"], temp_c)
        cab = self.cfg["cabinet"]
        self.world.set_input(cab["smoke"], False)
        self.world.set_input(cab["estop"], False)
        self.world.set_temp(cab["temp"], temp_c)

        self.can = None
        if self.world.mcp2515 is not None:
            self.can = CanBus(self.cfg["mcp2515"]["bitrate"])
            self.can.attach_controller(self.world.mcp2515)
        self.board = Board(self.cfg, machine)
        self.board.safe_outputs()
        self.profiles = load_dir(str(PROFILES))
        self.core = Core(cabinet_id, self.n, profiles=self.profiles, config=config, journal=journal,
                         now=self.now)
        self.board.set_sbs_names(sbs_names(self.profiles))
        can_profiles = [p.data for p in self.profiles.values() if p.link == "can"]
        self.board.attach_can_bms(can_profiles, self.core.slot_inputs)
        if self.can is not None:
            # The MCP2515 holds two frames: the firmware's INT task drains it as frames arrive.
            self.can.between_frames = lambda: self.board.drain_can(self.now)
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

    # -- the physical side ---------------------------------------------------------------------
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
        """Take slot n's battery out (its door state is the caller's business)."""
        i = n - 1
        model = self.batteries[i]
        self.batteries[i] = None
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
        """Slot n's NTC at temp_c, or a raw ADC code (4095: open, 0: shorted)."""
        self.world.set_temp(self.slot_cfg(n - 1)["temp"], temp_c, raw)

    def set_cabinet(self, smoke=None, estop=None, temp_c=None):
        cab = self.cfg["cabinet"]
        if smoke is not None:
            self.world.set_input(cab["smoke"], smoke)
        if estop is not None:
            self.world.set_input(cab["estop"], estop)
        if temp_c is not None:
            self.world.set_temp(cab["temp"], temp_c)

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
