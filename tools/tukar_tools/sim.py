"""`tukar sim`: whole cabinets on the host. Each runs the unmodified firmware application
(`tukar.app.App`) over the `machine` shim and register-level chip models, talks MQTT through the
umqtt shim to a real broker (an embedded one by default), and exposes its physical world on
P/C/sim/cmd, P/C/sim/ack and P/C/sim/world (mqtt.md). Ctrl-C stops everything cleanly."""
import asyncio
import json
import os
import random
import sys
import threading
import time

from tukar_tools import broker as brokers
from tukar_tools import mqttc, rig, simworld
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.rig import Pack, Physical, WorldError
from tukar_tools.sign import parse_key

import hosttime  # noqa: E402  (the shim's clock; rig put the shim on sys.path)
import machine  # noqa: E402
from tukar.app import App  # noqa: E402
from tukar.board import Board  # noqa: E402
from tukar.cycle import ControlCycle  # noqa: E402
from tukar_tools.shim import hw as shim_hw  # noqa: E402
from umqtt.simple import MQTTClient  # noqa: E402  (the shim's)

PHYSICS_MS = 50  # the world moves every 50 ms of simulated time (a lock travels in 300)
WORLD_PUBLISH_MS = 2000  # SoC and temperatures in sim/world; actions, bolts and chargers at once
DEFAULT_BOARDS = ((12, "tukar-12-wroom"), (24, "tukar-24-s3"))
DEFAULT_STATE_DIR = ".tukar-sim"


def board_for(slots):
    for n, name in DEFAULT_BOARDS:
        if slots <= n:
            return name
    raise ValueError("a cabinet has at most 24 slots, %d asked" % slots)


class NetworkFault:
    """The cabinet's network, which the `fault mqtt` action can cut."""

    def __init__(self):
        self.down = False

    def client_class(self):
        net = self

        class Client(MQTTClient):
            def connect(self, *a, **k):
                if net.down:
                    raise OSError(113, "EHOSTUNREACH (simulated network fault)")
                return super().connect(*a, **k)
        return Client


class SimCabinet:
    """One simulated cabinet: its physical world and the firmware application running on it."""

    def __init__(self, sim, cid, slots, state_dir, fill, rnd):
        self.sim = sim
        self.id = cid
        self.board_name = board_for(slots)
        self.phys = Physical(self.board_name, lock_travel_ms=300, slots=slots)
        self.n = self.phys.n
        self.state_dir = os.path.join(state_dir, cid)
        os.makedirs(self.state_dir, exist_ok=True)
        self.net = NetworkFault()
        self.app = None
        self.app_task = None
        self.boots = 0
        self.flash_broken = False
        self.stopped = False
        self.world_due = 0
        self.world_moves = 0
        self.control = None
        fresh = not os.path.exists(os.path.join(self.state_dir, "state.json"))
        if fresh:
            self.stock(fill, rnd)

    # -- stock and firmware ---------------------------------------------------------------------
    def stock(self, fill, rnd):
        """`fill` batteries in the first slots, SoC spread so some are ready and some charge."""
        profile = self.phys.profiles["ref48v"]
        for n in range(1, min(fill, self.n) + 1):
            soc = rnd.choice([95, 98, 100, 60, 75, 40, 92, 85])
            self.phys.add_pack(n, Pack("%s-B%02d" % (self.id.upper(), n), profile, soc=soc,
                                       soh=rnd.randint(88, 100), temp_c=26,
                                       cycles=rnd.randint(20, 400)))

    def boot(self, reason):
        """Build the firmware application on this cabinet's hardware, as the device's main does."""
        shim_hw.install(self.phys.hw)
        board = Board(self.phys.cfg, machine)
        cfg = {"id": self.id, "slots": self.n,
               "mqtt": {"id": self.id, "host": self.sim.host, "port": self.sim.port,
                        "prefix": self.sim.prefix, "keepalive_s": 30, "io_timeout_s": 5}}
        self.app = App(cfg, board, ControlCycle, self.net.client_class(), self.state_dir,
                       self.sim.key, self.phys.profiles, boot_reason=reason, wall=hosttime.wall_s,
                       wdt=machine.WDT(timeout=5000), board_name=self.board_name)
        if self.flash_broken:
            self._break_flash(True)
        self.phys.serve_can(board)
        self.boots += 1
        self.app_task = asyncio.ensure_future(self._run_app(self.app))

    async def _run_app(self, app):
        try:
            why = await app.run()
        except asyncio.CancelledError:
            return
        if why and not self.stopped:  # a reboot command or crashing tasks: the device resets
            self.phys.power_loss()
            self.boot("soft" if why == "command" else "watchdog")

    def power_cycle(self, reason="power_on"):
        """Power cut: the firmware's memory is gone (no goodbye: the broker sends the will)."""
        app = self.app
        if app is not None:
            app.stopping = "power"
            app.link.abandon()
            if self.app_task is not None:
                self.app_task.cancel()
        self.phys.power_loss()
        self.phys.hw.wdt.started = False  # a reset stops the watchdog until main starts it again
        if reason == "power_on":
            self.phys.hw.reset_cause = machine.PWRON_RESET
        self.boot(reason)

    def watchdog_reset(self):
        """The hardware watchdog was not fed in time: the chip resets, as a power cut does."""
        self.phys.hw.reset_cause = machine.WDT_RESET
        self.power_cycle(reason="watchdog")

    def _break_flash(self, on):
        store = self.app.store

        def broken(*a, **k):
            raise OSError(5, "EIO (simulated flash fault)")
        store._open = broken if on else open

    # -- the world's actions, as mqtt.md names them ------------------------------------------
    @property
    def n_slots(self):
        return self.n

    def insert(self, n, spec):
        self.phys.insert(n, spec)

    def take(self, n):
        self.phys.take(n)

    def close_door(self, n):
        self.phys.close_door(n)

    def open_door(self, n, force):
        if not self.phys.open_door(n, force):
            raise WorldError("door_locked: slot %d is locked (force: true breaks in)" % n)

    def set_battery(self, n, **changes):
        self.phys.set_battery(n, **changes)

    def set_input(self, name, value):
        self.phys.set_input(name, value)

    def set_cabinet_temp(self, t):
        self.phys.set_cabinet_temp(t)

    def fault(self, target, on):
        if target == "mqtt":
            self.net.down = on
            if on and self.app is not None:
                self.app.link.drop()
        elif target == "flash":
            self.flash_broken = on
            self._break_flash(on)
        else:
            self.phys.fault(target, on)

    def snapshot(self):
        return self.phys.snapshot()

    # -- simulated time ---------------------------------------------------------------------
    def physics(self, now):
        self.phys.physics(now)
        if self.app is not None and self.phys.hw.wdt.starved(now):
            self.watchdog_reset()
        if self.control is not None and (now - self.world_due >= 0
                                         or self.phys.moves != self.world_moves):
            self.world_due = now + WORLD_PUBLISH_MS
            self.world_moves = self.phys.moves
            self.control.publish_world()


class Simulation:
    def __init__(self, host, port, prefix="tukar", key=None, cabinets=1, slots=12,
                 id_prefix="sim", state_dir=DEFAULT_STATE_DIR, speed=1.0, seed=1, fill=None):
        self.host, self.port, self.prefix = host, port, prefix
        self.key = key or parse_key(SIM_KEY_HEX)
        self.speed = speed
        hosttime.install(hosttime.SimClock(speed=speed))
        rnd = random.Random(seed)
        fill = slots // 2 if fill is None else fill
        self.cabinets = [SimCabinet(self, "%s-%d" % (id_prefix, k + 1), slots, state_dir, fill, rnd)
                         for k in range(cabinets)]
        self.by_id = {c.id: c for c in self.cabinets}
        self.loop = None
        self.client = None
        self.lag_ms = 0  # worst lateness of the physics loop, for the scale figures

    def _on_sim_cmd(self, topic, payload, retained):
        parts = topic.split("/")
        cab = self.by_id.get(parts[1]) if len(parts) == 4 else None
        if cab is None or cab.control is None:
            return
        self.loop.call_soon_threadsafe(self._handle, cab, payload, retained)

    def _handle(self, cab, payload, retained):
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = None
        if isinstance(msg, dict) and msg.get("action") == "power_cycle" and not retained:
            cab.power_cycle()
        cab.control.handle(payload, retained)

    async def run(self, until=None):
        """Boot every cabinet and move the world until `until` (an asyncio.Event) is set."""
        self.loop = asyncio.get_running_loop()
        self.client = mqttc.Client(self.host, self.port, name="tukar-sim",
                                   subscriptions=["%s/+/sim/cmd" % self.prefix])
        self.client.on_message = self._on_sim_cmd
        for cab in self.cabinets:
            cab.control = simworld.WorldControl(_Actions(cab), self.client, self.prefix, cab.id)
            cab.physics(hosttime.ticks_ms())
            cab.boot("power_on")
            cab.control.publish_world(force=True)
        clock = hosttime.current()
        due = clock.now_ms()
        try:
            while until is None or not until.is_set():
                now = clock.now_ms()
                late = now - due
                if late > self.lag_ms:
                    self.lag_ms = late
                for cab in self.cabinets:
                    cab.physics(now)
                due = max(due + PHYSICS_MS, now)
                await asyncio.sleep(max(0.0, (due - clock.now_ms()) / 1000 / self.speed))
        finally:
            await self.stop()

    def lag_report(self):
        """Control-tick lateness over every cabinet: the histogram and the worst tick."""
        from tukar.app import LAG_BUCKETS_MS
        hist = [0] * len(LAG_BUCKETS_MS)
        worst = 0
        ticks = 0
        for cab in self.cabinets:
            if cab.app is None:
                continue
            for i, n in enumerate(cab.app.lag_hist):
                hist[i] += n
            worst = max(worst, cab.app.tick_lag_ms)
            ticks += cab.app.ticks
        return {"cabinets": len(self.cabinets), "ticks": ticks, "worst_ms": worst,
                "late_lt5": hist[0], "late_lt20": hist[1], "late_lt50": hist[2],
                "late_lt100": hist[3], "late_ge100": hist[4], "physics_worst_ms": self.lag_ms}

    async def stop(self):
        for cab in self.cabinets:
            cab.stopped = True
            if cab.app is not None:
                cab.app.stopping = "stop"
        tasks = [c.app_task for c in self.cabinets if c.app_task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for cab in self.cabinets:
            if cab.app is not None:
                for _ in range(50):
                    if not cab.app.link.running:
                        break
                    await asyncio.sleep(0.05)
        if self.client is not None:
            self.client.close()


class _Actions:
    """simworld's view of a SimCabinet, turning physical refusals into world errors."""

    def __init__(self, cab):
        self.cab = cab
        self.n_slots = cab.n

    def __getattr__(self, name):
        fn = getattr(self.cab, name)

        def call(*a, **k):
            try:
                return fn(*a, **k)
            except WorldError as e:
                raise simworld.WorldError(str(e)) from None
        return call

    def power_cycle(self):
        pass  # done by the simulation before the ack, on the event loop

    def snapshot(self):
        return self.cab.snapshot()


def add_arguments(p):
    p.add_argument("--broker", help="HOST:PORT of an external broker (default: start one here)")
    p.add_argument("--cabinets", type=int, default=1, help="number of cabinets (default 1)")
    p.add_argument("--slots", type=int, default=12, help="slots per cabinet, 1..24 (default 12)")
    p.add_argument("--id-prefix", default="sim", help="cabinet ids are PREFIX-1, PREFIX-2, ...")
    p.add_argument("--prefix", default="tukar", help="MQTT topic prefix (default tukar)")
    p.add_argument("--state-dir",
                   help="where each cabinet's flash lives, reused by power_cycle and restarts "
                        "(default %s; a fresh one for --scenario)" % DEFAULT_STATE_DIR)
    p.add_argument("--key", help="HMAC key in hex (default: the documented simulator key)")
    p.add_argument("--speed", type=float,
                   help="simulated seconds per real second (default 1, or the scenario's)")
    p.add_argument("--seed", type=int, default=1, help="seed of the initial stock")
    p.add_argument("--fill", type=int, help="batteries per new cabinet (default: half the slots)")
    p.add_argument("--no-monitor", action="store_true", help="no live view; just run")
    p.add_argument("--scenario", help="run a scenario file, exit non-zero if it fails")
    p.add_argument("--duration", type=float, help="stop after this many real seconds")


def run(args):
    if not 1 <= args.slots <= 24:
        print("tukar sim: --slots must be 1..24", file=sys.stderr)
        return 2
    if args.cabinets < 1:
        print("tukar sim: --cabinets must be at least 1", file=sys.stderr)
        return 2
    try:
        key = parse_key(args.key or SIM_KEY_HEX)
    except ValueError as e:
        print("tukar sim: %s" % e, file=sys.stderr)
        return 2
    scenario = None
    if args.scenario:
        from tukar_tools import scenario as sc
        try:
            scenario = sc.load(args.scenario)
        except (OSError, ValueError) as e:
            print("tukar sim: %s" % e, file=sys.stderr)
            return 2
    own = None
    if args.broker:
        host, port = mqttc.parse_broker(args.broker)
    else:
        own = brokers.start()
        host, port = "127.0.0.1", own.port
        print("tukar sim: %s broker on %s:%d" % (own.kind, host, port), file=sys.stderr)
    state_dir = args.state_dir
    fill = args.fill
    speed = args.speed
    if scenario is not None:
        if speed is None:
            speed = scenario.get("speed")
        # A scenario starts from a known world: fresh flash unless a state dir was named.
        if state_dir is None:
            import tempfile
            state_dir = tempfile.mkdtemp(prefix="tukar-scenario-")
        if fill is None:
            fill = scenario.get("fill")
    speed = speed or 1.0
    sim = Simulation(host, port, args.prefix, key, args.cabinets, args.slots, args.id_prefix,
                     state_dir or DEFAULT_STATE_DIR, speed, args.seed, fill)
    stop = threading.Event()
    result = {"code": 0}

    def side():
        if scenario is not None:
            result["code"] = run_scenario(scenario, host, port, args.prefix,
                                          scenario.get("cabinet") or sim.cabinets[0].id, key,
                                          speed)
            stop.set()
        elif not args.no_monitor:
            from tukar_tools import monitor
            try:
                monitor.watch(host, port, args.prefix, stop=stop)
            finally:
                stop.set()

    async def main():
        until = asyncio.Event()

        async def watch_stop():
            end = time.monotonic() + args.duration if args.duration else None
            while not stop.is_set() and (end is None or time.monotonic() < end):
                await asyncio.sleep(0.1)
            until.set()
        asyncio.ensure_future(watch_stop())
        await sim.run(until)

    t = threading.Thread(target=side, daemon=True)
    t.start()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if own is not None:
            own.stop()
    r = sim.lag_report()
    print("tukar sim: %d cabinet(s), %d control ticks; lateness < 5 ms: %d, < 20 ms: %d, "
          "< 50 ms: %d, < 100 ms: %d, more: %d; worst %d ms" % (
              r["cabinets"], r["ticks"], r["late_lt5"], r["late_lt20"], r["late_lt50"],
              r["late_lt100"], r["late_ge100"], r["worst_ms"]), file=sys.stderr)
    return result["code"]


def run_scenario(scenario, host, port, prefix, cabinet, key, speed):
    from tukar_tools import scenario as sc
    time.sleep(0.5)
    runner = sc.Runner(host, port, prefix, cabinet, key, speed,
                       out=lambda line: print(line, file=sys.stderr))
    try:
        runner.run(scenario)
        print("PASS %s" % scenario.get("name", "scenario"), file=sys.stderr)
        return 0
    except sc.ScenarioFailed:
        print("FAIL %s" % scenario.get("name", "scenario"), file=sys.stderr)
        return 1
    finally:
        runner.obs.close()
