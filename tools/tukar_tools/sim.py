"""`tukar sim`: whole cabinets on the host. Each cabinet's firmware boots through `tukar.device`
from a directory that is its flash (board.json, config.json, secrets.json, profiles/, state/), as
the device does, in one of two runtimes: CPython (the default, in this process, time sped up at
will) or real MicroPython (`--runtime micropython`: a 32-bit unix-port process per cabinet with the
firmware frozen, its `machine` forwarded to this process, real time). Either way the firmware talks
MQTT to a real broker (an embedded one by default) and this process moves the physical world,
exposed on P/C/sim/cmd, P/C/sim/ack and P/C/sim/world (mqtt.md). The world (which battery is in
which slot) is kept beside the flash, so a restarted simulator resumes it. Ctrl-C stops it all."""
import asyncio
import json
import os
import random
import shutil
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
import tukar  # noqa: E402
from tukar import device  # noqa: E402
from tukar.app import App  # noqa: E402
from tukar.net import Net  # noqa: E402
from tukar_tools.shim import esp32 as shim_esp32  # noqa: E402
from tukar_tools.shim import hw as shim_hw  # noqa: E402
from umqtt.simple import MQTTClient  # noqa: E402  (the shim's)

PHYSICS_MS = 50  # the world moves every 50 ms of simulated time (a lock travels in 300)
# Sped up, the clock runs at most this far past the world's last step (hosttime.SimClock.lead): a
# host that stalls (load, a slow boot) slows the simulation down instead of skipping over the
# firmware's deadlines (a lock's 500 ms confirmation, the 5 s watchdog).
MAX_STEP_MS = 60  # a little over PHYSICS_MS: a step that is a few ms late is not cut short
WORLD_PUBLISH_MS = 2000  # SoC and temperatures in sim/world; actions, bolts and chargers at once
DEFAULT_BOARDS = ((12, "tukar-12-wroom"), (24, "tukar-24-s3"))
DEFAULT_STATE_DIR = ".tukar-sim"
RUNTIMES = ("cpython", "micropython")
WORLD_FILE = "world.json"
BOOT_HANG_S = 30  # a MicroPython cabinet that has not armed its watchdog by then is reported hung
# The firmware in this process is the version the cabinet was flashed with (ota_0's image); after
# an update the simulator runs the same code as the version the booted image's header names.
FACTORY_VERSION = tukar.FW_VERSION


def board_for(slots):
    for n, name in DEFAULT_BOARDS:
        if slots <= n:
            return name
    raise ValueError("a cabinet has at most 24 slots, %d asked" % slots)


def _load_module(name):
    """The host's `network` and `ntptime` (tools/tukar_tools/mpshim), for the CPython runtime."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpshim", name + ".py")
    spec = importlib.util.spec_from_file_location("tukar_tools.mpshim." + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class NetworkFault:
    """The cabinet's network in the CPython runtime, which the `fault mqtt` action can cut."""

    def __init__(self):
        self.down = False
        self.image_fault = False  # the running image cannot reach the broker (a bad image's test)

    def client_class(self):
        net = self

        class Client(MQTTClient):
            def connect(self, *a, **k):
                if net.down or net.image_fault:
                    raise OSError(113, "EHOSTUNREACH (simulated network fault)")
                return super().connect(*a, **k)
        return Client


def write_flash(flash, cfg, cid, host, port, prefix, key):
    """Lay out what `tukar provision` and `tukar deploy` put on a device: main.py, board.json,
    config.json, secrets.json and the profiles. The firmware's own state/ is left as it is."""
    os.makedirs(os.path.join(flash, "profiles"), exist_ok=True)
    shutil.copyfile(os.path.join(rig.ROOT, "firmware", "main.py"), os.path.join(flash, "main.py"))
    for name in sorted(os.listdir(rig.PROFILES)):
        if name.endswith(".json"):
            shutil.copyfile(os.path.join(rig.PROFILES, name), os.path.join(flash, "profiles", name))
    files = {"board.json": cfg,
             "config.json": {"id": cid, "slots": cfg["slot_count"], "wifi": {"ssid": "sim"},
                             "mqtt": {"host": host, "port": port, "prefix": prefix,
                                      "keepalive_s": 30, "io_timeout_s": 5}},
             "secrets.json": {"key": key.hex()}}
    for name, value in files.items():
        with open(os.path.join(flash, name), "w") as f:
            json.dump(value, f)


def bootloader(cab):
    """The ESP32's bootloader at a reset of cabinet `cab` (tukar_tools.shim.esp32): a fresh cabinet
    is given its factory image in ota_0, a pending image is confirmed or rolled back, and the header
    of the image to run is returned; None (reported) when no image boots."""
    root = cab.flash + os.sep
    shim_esp32.install_factory(root, FACTORY_VERSION, cab.board_name, cab.phys.cfg["chip"])
    image = shim_esp32.boot(root)
    if image is None:
        cab.report("no bootable image in ota_0 or ota_1: the chip does not start")
    return image


class CPythonFirmware:
    """The firmware in this process: `tukar.device.main` as a task on the simulator's loop, over
    the `machine` shim. machine.reset() (ResetRequested) reboots it, as the chip would."""

    def __init__(self, cab):
        self.cab = cab
        self.app = None
        self.task = None
        self.boots = 0
        self.net = NetworkFault()
        self.network = _load_module("network")
        self.ntptime = _load_module("ntptime")
        self.esp32 = shim_esp32.Module(cab.flash + os.sep)
        self.image = None  # the header of the image the bootloader model booted last

    def _app(self, *a, **k):
        app = self.app = App(*a, **k)
        self.cab.phys.serve_can(app.board)
        if self.cab.flash_broken:
            self.flash_fault(True)
        return app

    def _net(self, *a, **k):
        # The cabinet's wall clock is the simulation's: --start plus the simulated time since.
        return Net(*a, time_s=hosttime.wall_s, **k)

    def boot(self, cause):
        self.cab.phys.hw.reset_cause = cause
        self.image = bootloader(self.cab)
        if self.image is None:
            return
        tukar.FW_VERSION = self.image["version"]
        self.net.image_fault = self.image.get("fault") == "no_broker"
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        cab = self.cab
        shim_hw.install(cab.phys.hw)
        self.boots += 1
        try:
            why = await device.main(machine, root=cab.flash + os.sep, network=self.network,
                                    ntptime=self.ntptime, client_class=self.net.client_class(),
                                    app_class=self._app, net_class=self._net, esp32=self.esp32)
        except machine.ResetRequested:
            if not cab.stopped:  # a reboot command or crashing tasks: the chip resets
                cab.phys.power_loss()
                cab.phys.hw.wdt.started = False
                self.boot(machine.HARD_RESET)
            return
        except asyncio.CancelledError:
            return
        if not cab.stopped:
            cab.report("firmware stopped in the REPL (%s)" % why)

    def power_cut(self):
        app = self.app
        if app is not None:
            app.stopping = "power"
            app.link.abandon()
        if self.task is not None:
            self.task.cancel()

    def net_fault(self, on):
        self.net.down = on
        if on and self.app is not None:
            self.app.link.drop()

    def flash_fault(self, on):
        if self.app is None:
            return

        def broken(*a, **k):
            raise OSError(5, "EIO (simulated flash fault)")
        self.app.store._open = broken if on else open

    def check(self, now):
        pass

    async def stop(self):
        if self.app is not None:
            self.app.stopping = "stop"
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        if self.app is not None:
            for _ in range(50):
                if not self.app.link.running:
                    break
                await asyncio.sleep(0.05)


class MicroPythonFirmware:
    """The firmware in its own MicroPython process (tukar_tools.mprt), on real time."""

    def __init__(self, cab, heap=None, binary=None):
        from tukar_tools import mprt
        self.cab = cab
        self.app = None  # in another process: nothing to reach into
        self.server = mprt.HardwareServer(cab.phys.hw, cab.lock, on_reset=self._reset_requested,
                                          can=cab.phys.can)
        self.server.on_connect = self._connected
        self.server.on_cut = cab.power_cut  # a crash point's cut (server.on_point, crashpoints.py)
        self.server.output_pins = mprt.output_pins(cab.phys.cfg)
        if cab.phys.can is not None:
            cab.phys.can.paced = True
        self.relay = mprt.Relay(cab.sim.host, cab.sim.port)
        self.proc = mprt.FirmwareProcess(cab.flash, self.server.port, heap or mprt.DEFAULT_HEAP,
                                         binary, name=cab.id, report=cab.report)
        self._reset_pending = False
        self.image = None  # the header of the image the bootloader model booted last
        self._started_at = None
        self._hang_reported = False

    @property
    def boots(self):
        return self.proc.starts

    @property
    def broker_port(self):
        return self.relay.port

    def _connected(self):
        if self.cab.flash_broken:
            self.server.notify("F", 1)

    def _reset_requested(self):  # machine.reset(), in the server's thread under the lock
        self._reset_pending = True

    def boot(self, cause):
        self.cab.phys.hw.reset_cause = cause
        self.image = bootloader(self.cab)
        if self.image is None:
            return
        # The same frozen firmware whatever the image: it runs as the version the image names
        # (mpshim/esp32.py), and an image made to fail its self-test cannot reach the broker.
        self.proc.env["TUKAR_FW_VERSION"] = self.image["version"]
        self.relay.refuse = self.image.get("fault") == "no_broker"
        self._started_at = time.monotonic()
        self._hang_reported = False
        self.proc.start()

    def power_cut(self):
        self.proc.kill()

    def net_fault(self, on):
        self.relay.cut(on)

    def flash_fault(self, on):
        with self.cab.lock:
            self.server.notify("F", 1 if on else 0)

    def check(self, now):
        """Called with every physics step: a reset the firmware asked for, a boot that hangs."""
        if self._reset_pending:
            self._reset_pending = False
            self.proc.kill()
            self.cab.phys.power_loss()
            self.cab.phys.hw.wdt.started = False
            self.boot(machine.HARD_RESET)
            return
        wdt = self.cab.phys.hw.wdt
        if (not wdt.started and not self._hang_reported and self._started_at is not None
                and self.proc.running and time.monotonic() - self._started_at > BOOT_HANG_S):
            self._hang_reported = True
            self.cab.report("the firmware has not armed its watchdog %d s after starting (hung at "
                            "boot?). Its last output:\n  %s" % (
                                BOOT_HANG_S, "\n  ".join(list(self.proc.tail)[-15:]) or "(none)"))

    async def stop(self):
        self.proc.kill()
        self.server.close()
        self.relay.close()


class SimCabinet:
    """One simulated cabinet: its physical world, its flash directory and its firmware."""

    def __init__(self, sim, cid, slots, state_dir, fill, rnd, runtime="cpython", heap=None,
                 micropython=None, stock=None):
        self.sim = sim
        self.id = cid
        self.board_name = board_for(slots)
        self.phys = Physical(self.board_name, lock_travel_ms=300, slots=slots)
        self.phys.time_locks(lambda: hosttime.current().now_ms())
        self.n = self.phys.n
        self.flash = os.path.join(state_dir, cid)
        os.makedirs(self.flash, exist_ok=True)
        self.lock = threading.RLock()  # the physics and a MicroPython process's machine calls
        self.flash_broken = False
        self.stopped = False
        self.world_due = 0
        self.world_moves = 0
        self.control = None
        self.reports = []  # what went wrong with the firmware, as told to the user
        if not self.load_world():
            self.stock(fill, rnd, stock)
        self.runtime = runtime
        if sim is None:
            self.fw = None
            return
        if runtime == "micropython":
            self.fw = MicroPythonFirmware(self, heap, micropython)
            host, port = "127.0.0.1", self.fw.broker_port
        else:
            self.fw = CPythonFirmware(self)
            host, port = sim.host, sim.port
        write_flash(self.flash, self.phys.cfg, cid, host, port, sim.prefix, sim.key)

    @property
    def app(self):
        return self.fw.app if self.fw is not None else None

    @property
    def boots(self):
        return self.fw.boots if self.fw is not None else 0

    def report(self, text):
        self.reports.append(text)
        print("tukar sim: %s: %s" % (self.id, text), file=sys.stderr, flush=True)

    # -- stock and the world across restarts -----------------------------------------------------
    def stock(self, fill, rnd, packs=None):
        """`fill` batteries in the first slots, SoC spread so some are ready and some charge; or
        exactly `packs` ([{"slot", "battery": an `insert` battery}], a scenario's `stock`)."""
        profile = self.phys.profiles["ref48v"]
        if packs is not None:
            for p in packs:
                spec = simworld.battery_spec(p["battery"])
                self.phys.add_pack(p["slot"], Pack(
                    spec["serial"], self.phys.profiles.get(spec.get("profile")) or profile,
                    spec["soc"], spec["soh"], spec["temp_c"], spec.get("faults", ()),
                    p["battery"].get("cycles", 50)))
            return
        for n in range(1, min(fill, self.n) + 1):
            soc = rnd.choice([95, 98, 100, 60, 75, 40, 92, 85])
            self.phys.add_pack(n, Pack("%s-B%02d" % (self.id.upper(), n), profile, soc=soc,
                                       soh=rnd.randint(88, 100), temp_c=26,
                                       cycles=rnd.randint(20, 400)))

    def save_world(self):
        """The batteries in their slots and the doors, beside the flash (a restart resumes them)."""
        packs = []
        for i, pack in enumerate(self.phys.packs):
            if pack is not None:
                d = pack.snapshot()
                d["slot"] = i + 1
                d["cycles"] = pack.cycles
                packs.append(d)
        world = {"packs": packs, "open_doors": [i + 1 for i in range(self.n) if not self.phys.doors[i]],
                 "temp_c": self.phys.cabinet_c}
        path = os.path.join(self.flash, WORLD_FILE)
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(world, f)
            os.replace(path + ".tmp", path)
        except OSError:
            pass

    def load_world(self):
        """The world the last run left; False when there is none (a fresh cabinet)."""
        try:
            with open(os.path.join(self.flash, WORLD_FILE)) as f:
                world = json.load(f)
            for d in world["packs"]:
                profile = self.phys.profiles.get(d.get("profile")) or self.phys.profiles["ref48v"]
                self.phys.add_pack(d["slot"], Pack(d["serial"], profile, d["soc"], d["soh"],
                                                   d["temp_c"], d.get("faults", ()),
                                                   d.get("cycles", 50)))
            for n in world.get("open_doors", []):
                self.phys.doors[n - 1] = False
                self.phys._set(n - 1, "door", False)
            if "temp_c" in world:
                self.phys.set_cabinet_temp(world["temp_c"])
        except (OSError, ValueError, KeyError, TypeError, WorldError):
            return False
        return True

    # -- the firmware -----------------------------------------------------------------------------
    def boot(self, reason="power_on"):
        causes = {"power_on": machine.PWRON_RESET, "watchdog": machine.WDT_RESET,
                  "hard": machine.HARD_RESET}
        self.fw.boot(causes[reason])

    def power_cycle(self, reason="power_on"):
        """Power cut: the firmware's memory is gone (no goodbye: the broker sends the will)."""
        self.power_cut()
        self.boot(reason)

    def power_cut(self):
        """The power goes, until boot(): the firmware stops dead, the expanders reset (the bolts
        spring out, the chargers stop); the world moves on."""
        with self.lock:
            self.fw.power_cut()
            self.phys.power_loss()
            self.phys.hw.wdt.started = False  # a reset stops the watchdog until main starts it again

    def watchdog_reset(self):
        """The hardware watchdog was not fed in time: the chip resets, as a power cut does."""
        if self.runtime == "micropython":
            self.report("watchdog: not fed for %d ms; the chip resets. The firmware's last output:\n  %s"
                        % (self.phys.hw.wdt.timeout_ms,
                           "\n  ".join(list(self.fw.proc.tail)[-10:]) or "(none)"))
        self.power_cycle(reason="watchdog")

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
            self.fw.net_fault(on)
        elif target == "flash":
            self.flash_broken = on
            self.fw.flash_fault(on)
        else:
            self.phys.fault(target, on)

    def snapshot(self):
        return self.phys.snapshot()

    # -- simulated time ---------------------------------------------------------------------
    def physics(self, now):
        with self.lock:
            self.phys.physics(now)
            starved = self.fw is not None and self.phys.hw.wdt.starved(now)
        if self.fw is not None:
            if starved:
                self.watchdog_reset()
            else:
                self.fw.check(now)
        if self.control is not None and (now - self.world_due >= 0
                                         or self.phys.moves != self.world_moves):
            self.world_due = now + WORLD_PUBLISH_MS
            self.world_moves = self.phys.moves
            self.control.publish_world()
            self.save_world()


class Simulation:
    def __init__(self, host, port, prefix="tukar", key=None, cabinets=1, slots=12,
                 id_prefix="sim", state_dir=DEFAULT_STATE_DIR, speed=1.0, seed=1, fill=None,
                 runtime="cpython", heap=None, micropython=None, stock=None, start=None):
        if runtime not in RUNTIMES:
            raise ValueError("runtime must be one of %s" % ", ".join(RUNTIMES))
        if runtime == "micropython" and speed != 1.0:
            raise ValueError("the micropython runtime runs on MicroPython's own clock: speed 1 only")
        self.host, self.port, self.prefix = host, port, prefix
        self.key = key or parse_key(SIM_KEY_HEX)
        self.speed = speed
        self.runtime = runtime
        # `start`: the cabinets' wall clock at the start, Unix seconds (None: now).
        hosttime.install(hosttime.SimClock(speed=speed, wall_start=start))
        rnd = random.Random(seed)
        fill = slots // 2 if fill is None else fill
        self.cabinets = [SimCabinet(self, "%s-%d" % (id_prefix, k + 1), slots, state_dir, fill, rnd,
                                    runtime, heap, micropython, stock)
                         for k in range(cabinets)]
        self.by_id = {c.id: c for c in self.cabinets}
        self.loop = None
        self.client = None
        self.lag_ms = 0  # worst lateness of the physics loop, for the scale figures
        self.held_ms = 0  # simulated time dropped while the host stalled (MAX_STEP_MS)
        self.riders = None  # tukar_tools.riders.Riders, with --riders

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
        if self.riders is not None:
            self.riders.start()
        clock = hosttime.current()
        due = clock.now_ms()
        try:
            # Once told to stop, the world still moves until the riders at the cabinets are done.
            while until is None or not until.is_set() or not (
                    self.riders is None or self.riders.closing()):
                if self.speed > 1:
                    self.held_ms += clock.lead(MAX_STEP_MS)
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
                "late_lt100": hist[3], "late_ge100": hist[4], "physics_worst_ms": self.lag_ms,
                "held_ms": self.held_ms}

    async def stop(self):
        for cab in self.cabinets:
            cab.stopped = True
        await asyncio.gather(*(cab.fw.stop() for cab in self.cabinets))
        for cab in self.cabinets:
            cab.save_world()
        if self.riders is not None:
            self.riders.stop()
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
    p.add_argument("--slots", type=int,
                   help="slots per cabinet, 1..24 (default 12, or the scenario's `slots`)")
    p.add_argument("--id-prefix", default="sim", help="cabinet ids are PREFIX-1, PREFIX-2, ...")
    p.add_argument("--prefix", default="tukar", help="MQTT topic prefix (default tukar)")
    p.add_argument("--state-dir",
                   help="where each cabinet's flash lives, reused by power_cycle and restarts "
                        "(default %s; a fresh one for --scenario)" % DEFAULT_STATE_DIR)
    p.add_argument("--key", help="HMAC key in hex (default: the documented simulator key)")
    p.add_argument("--ws-port", type=int,
                   help="MQTT-over-WebSockets port of the broker started here (default: a free "
                        "one); with --broker, the external broker's, to print the console's URL")
    p.add_argument("--web-port", type=int,
                   help="HTTP port of the web console (tukar web) served beside the simulation "
                        "(default: a free one)")
    p.add_argument("--speed", type=float,
                   help="simulated seconds per real second (default 1, or the scenario's)")
    p.add_argument("--seed", type=int, default=1, help="seed of the initial stock and the riders")
    p.add_argument("--riders", type=float, metavar="RATE",
                   help="riders arrive at each cabinet at random and swap over MQTT: RATE a simulated "
                        "hour on the day's average, peaks at 07-09 and 17-19 (ledger: "
                        "<state-dir>/riders.json)")
    p.add_argument("--start", metavar="ISO",
                   help="the cabinets' wall clock at the start, e.g. 2026-03-02T06:00 (UTC unless "
                        "an offset is given; default now); it runs at --speed (cpython runtime)")
    p.add_argument("--fill", type=int, help="batteries per new cabinet (default: half the slots)")
    p.add_argument("--no-monitor", action="store_true", help="no live view; just run")
    p.add_argument("--scenario", help="run a scenario file, exit non-zero if it fails")
    p.add_argument("--duration", type=float, help="stop after this many real seconds")
    p.add_argument("--runtime", choices=RUNTIMES, default="cpython",
                   help="where the firmware runs: in this process (cpython, the default) or one "
                        "32-bit MicroPython process per cabinet (micropython; `make micropython` "
                        "builds it; real time, so --speed 1)")
    p.add_argument("--heap", default=None,
                   help="micropython runtime: the firmware's GC heap, as -X heapsize= (default 192K)")
    p.add_argument("--micropython", default=None,
                   help="micropython runtime: the binary (default build/micropython)")


def run(args):
    scenario = None
    if args.scenario:
        from tukar_tools import scenario as sc
        try:
            scenario = sc.load(args.scenario)
        except (OSError, ValueError) as e:
            print("tukar sim: %s" % e, file=sys.stderr)
            return 2
    slots = args.slots or (scenario or {}).get("slots") or 12
    if not isinstance(slots, int) or not 1 <= slots <= 24:
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
    own = None
    if args.broker:
        host, port = mqttc.parse_broker(args.broker)
        ws_port = args.ws_port  # the external broker's, when the user names it
    else:
        ws_port = args.ws_port or brokers.free_port()
        own = brokers.start(ws_port=ws_port)
        host, port = "127.0.0.1", own.port
    console = start_console(host, ws_port, args.web_port, args.prefix) if ws_port else None
    if own is not None:
        print("tukar sim: %s broker on %s:%d, WebSocket %d; web console %s"
              % (own.kind, host, port, ws_port, console[1]), file=sys.stderr, flush=True)
    elif console is not None:
        print("tukar sim: web console %s" % console[1], file=sys.stderr, flush=True)
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
    if args.riders is not None and fill is None:
        fill = slots - 2  # a stocked cabinet: riders need batteries, and an empty slot to swap
    from tukar_tools import riders
    try:
        start, tz_s = riders.parse_start(args.start)
    except ValueError as e:
        print("tukar sim: --start: %s" % e, file=sys.stderr)
        return 2
    if args.riders is not None and (args.riders <= 0 or scenario is not None):
        print("tukar sim: --riders takes a positive rate, and no --scenario", file=sys.stderr)
        return 2
    if args.runtime == "micropython":
        from tukar_tools import mprt
        if speed != 1.0:
            print("tukar sim: the micropython runtime runs on MicroPython's own clock: speed 1 "
                  "(asked %g)" % speed, file=sys.stderr)
            speed = 1.0
        if args.start:
            print("tukar sim: the micropython runtime keeps the host's date (--start ignored)",
                  file=sys.stderr)
            start = None
        try:
            mprt.binary(args.micropython)
        except FileNotFoundError as e:
            if own is not None:
                own.stop()
            print("tukar sim: %s" % e, file=sys.stderr)
            return 2
    sim = Simulation(host, port, args.prefix, key, args.cabinets, slots, args.id_prefix,
                     state_dir or DEFAULT_STATE_DIR, speed, args.seed, fill, args.runtime,
                     args.heap, args.micropython, (scenario or {}).get("stock"), start)
    if args.riders is not None:
        sim.riders = riders.Riders(sim, args.riders, args.seed, tz_s, state_dir or DEFAULT_STATE_DIR)
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
    import signal
    signal.signal(signal.SIGTERM, lambda *a: stop.set())  # `kill` stops as cleanly as Ctrl-C
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if console is not None:
            console[0].shutdown()
        if own is not None:
            own.stop()
    if sim.riders is not None:
        print("tukar sim: riders: %s; ledger in %s" % (sim.riders.ledger.summary(),
                                                       sim.riders.ledger_path), file=sys.stderr)
    r = sim.lag_report()
    if args.runtime == "micropython":
        return result["code"]
    print("tukar sim: %d cabinet(s), %d control ticks; lateness < 5 ms: %d, < 20 ms: %d, "
          "< 50 ms: %d, < 100 ms: %d, more: %d; worst %d ms" % (
              r["cabinets"], r["ticks"], r["late_lt5"], r["late_lt20"], r["late_lt50"],
              r["late_lt100"], r["late_ge100"], r["worst_ms"]), file=sys.stderr)
    if r["held_ms"]:
        print("tukar sim: the host could not keep up with --speed %g: %.0f simulated s dropped"
              % (speed, r["held_ms"] / 1000), file=sys.stderr)
    return result["code"]


def start_console(host, ws_port, web_port, prefix):
    """The web console served beside the simulation: (server, its URL for this broker)."""
    from tukar_tools import web
    server = web.serve("127.0.0.1", web_port or 0)
    ws = web.ws_url("%s:1883" % host, ws_port)
    return server, web.console_url("127.0.0.1", server.server_port, ws, prefix)


def run_scenario(scenario, host, port, prefix, cabinet, key, speed):
    from tukar_tools import scenario as sc
    time.sleep(0.5)
    runner = sc.Runner(host, port, prefix, cabinet, key, speed,
                       out=lambda line: print(line, file=sys.stderr), wall=hosttime.wall_s,
                       sim_ms=lambda: hosttime.current().now_ms())
    try:
        runner.run(scenario)
        print("PASS %s" % scenario.get("name", "scenario"), file=sys.stderr)
        return 0
    except sc.ScenarioFailed:
        print("FAIL %s" % scenario.get("name", "scenario"), file=sys.stderr)
        return 1
    finally:
        runner.obs.close()
