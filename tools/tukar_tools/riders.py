"""`tukar sim --riders RATE`: riders who come to the simulated cabinets and swap their packs, over
MQTT only, as a rider's app and hands would: a signed `start_swap`, then `insert` and `close_door`
on P/C/sim/cmd into the slot the ack names, the charged pack taken from the slot the cabinet opens.

Riders arrive at each cabinet as a Poisson process whose rate follows the hour of day on the
cabinets' own clock (PROFILE: a morning and an evening peak, few at night); RATE is the mean per
hour over a day. They queue for the cabinet, one session at a time, and leave when they have waited
longer than PATIENCE_S. Their packs come from the fleet (F-0001...): a pack handed out comes back
later, emptier and one cycle older; now and then one has a BMS fault or is too hot to take, and the
rider takes it back. A technician collects the packs the cabinet retires when no rider is waiting.

The ledger (what the simulator did: swaps, riders turned away, rejections, retirements, the energy
the chargers put into packs) is kept in <state-dir>/riders.json, the fleet in fleet.json; both
carry on when a run resumes a state directory, as the world does."""
import asyncio
import collections
import datetime
import json
import os
import random
import sys
import time
import uuid

from tukar_tools import hostenv  # noqa: F401  (the shim's hosttime on the path)
from tukar_tools import mqttc
from tukar_tools.sign import command, sign

import hosttime  # noqa: E402

# Riders per hour relative to the day's mean, hours 00..23 of the cabinets' clock.
_SHAPE = (0.15, 0.08, 0.05, 0.05, 0.08, 0.3, 0.9, 2.6, 2.8, 1.3, 0.9, 0.9,
          1.0, 0.9, 0.85, 0.9, 1.3, 2.6, 2.8, 1.5, 1.0, 0.7, 0.45, 0.25)
PROFILE = tuple(w * len(_SHAPE) / sum(_SHAPE) for w in _SHAPE)

PATIENCE_S = 600  # a rider waits this long in the queue, then rides on
HANDLE_S = (3.0, 10.0)  # a rider takes this long to pull a pack out or push one in
STEP_S = 20  # simulated seconds a rider waits for each reply, door or event ...
STEP_REAL_S = 3.0  # ... and at least this long in real time (a busy host at a high --speed)
COMMAND_TRIES = 3
FLEET_PER_CABINET = 400
FAULTY = 0.02  # a rider's pack shows a BMS fault flag
HOT = 0.02  # a rider's pack is above the handling window (50 degC), below quarantine (60)
BMS_FAULTS = ("cell_undervoltage", "overcurrent", "cell_overvoltage")  # ref48v's flags
SOH_WEAR = 0.01  # SoH points a pack loses per cycle
SAVE_EVERY_S = 10.0  # real seconds between writes of the ledger
CLOSE_REAL_S = 20.0  # at exit, the riders at a cabinet get this long to finish their swap
LEDGER_FILE = "riders.json"
FLEET_FILE = "fleet.json"
REQUEST_PREFIX = "ride-"  # request_id of every session a rider starts


# -- time ----------------------------------------------------------------------------------------
def parse_start(text):
    """--start (ISO 8601 date or date-time; no offset means UTC) -> (Unix seconds, the offset in
    seconds that the profile's hours are read in). None: now, in UTC."""
    if text is None:
        return time.time(), 0
    d = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp(), int(d.utcoffset().total_seconds())


def iso(ts, tz_s=0):
    tz = datetime.timezone(datetime.timedelta(seconds=tz_s))
    return datetime.datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def hour_of(ts, tz_s=0):
    return int((ts + tz_s) // 3600) % 24


def arrivals(rnd, rate_h, start_ts, tz_s=0, profile=PROFILE):
    """Arrival times (Unix seconds, ascending, endless) of riders at one cabinet: a Poisson process
    of rate rate_h x profile[hour], drawn by thinning one of the peak rate."""
    top = max(profile)
    per_s = rate_h * top / 3600
    t = start_ts
    while True:
        t += rnd.expovariate(per_s)
        if rnd.random() * top < profile[hour_of(t, tz_s)]:
            yield t


# -- packs ---------------------------------------------------------------------------------------
def new_pack(rnd, serial, fresh=False):
    """A fleet pack: SoH mostly 85..100 with a worn tail (below 70 the cabinet retires it), cycles
    50..2500 with few past 2000 (retired too); `fresh`: just bought."""
    if fresh:
        soh, cycles = 100.0, 0
    else:
        r = rnd.random()
        soh = rnd.uniform(60, 70) if r < 0.03 else rnd.uniform(70, 85) if r < 0.1 \
            else rnd.triangular(85, 100, 96)
        cycles = int(rnd.triangular(50, 2500, 300))
    return {"serial": serial, "profile": "ref48v", "soh": round(soh, 2), "cycles": cycles,
            "soc": round(rnd.uniform(90, 100), 1), "at": "rider", "since": None, "ridden": True}


def return_soc(rnd):
    """What a pack has left when its rider comes to swap: mostly 5..40 %, a few higher."""
    return rnd.uniform(5, 40) if rnd.random() < 0.9 else rnd.uniform(40, 85)


def visit(rnd, pack):
    """The `insert` battery a rider brings: `pack` after its ride (one cycle older and a little
    worn, emptier than when it was handed out), now and then faulted or hot."""
    if pack["ridden"]:
        pack["ridden"] = False
        pack["cycles"] += 1
        pack["soh"] = round(max(1.0, pack["soh"] - SOH_WEAR), 2)
    pack["soc"] = round(max(1.0, min(return_soc(rnd), pack["soc"] - 5)), 1)
    temp, faults = rnd.uniform(25, 38), []
    r = rnd.random()
    if r < FAULTY:
        faults = [rnd.choice(BMS_FAULTS)]
    elif r < FAULTY + HOT:
        temp = rnd.uniform(52, 58)
    return {"serial": pack["serial"], "profile": pack["profile"], "soc": pack["soc"],
            "soh": round(pack["soh"], 1), "temp_c": round(temp, 1), "cycles": pack["cycles"],
            "faults": faults}


class Fleet:
    """The operator's packs and where each is: with a rider ("rider"), in a cabinet (its id) or
    "retired". Packs first seen in a cabinet's stock join when a rider takes them."""

    def __init__(self, rnd, size=FLEET_PER_CABINET, now=None, saved=None):
        self.rnd = rnd
        self.busy = set()  # packs on their way to a cabinet now
        if saved is not None:
            self.packs = {p["serial"]: p for p in saved["packs"]}
            self.bought = saved["bought"]
            return
        now = time.time() if now is None else now
        self.packs = {}
        self.bought = 0
        for _ in range(size):
            self._buy()["since"] = now - rnd.uniform(0, 3 * 86400)  # handed out over the last days
        self.bought = 0  # packs bought since

    def _buy(self, fresh=False):
        serial = "F-%04d" % (len(self.packs) + 1)
        p = self.packs[serial] = new_pack(self.rnd, serial, fresh)
        self.bought += 1
        return p

    def count(self, at):
        return sum(1 for p in self.packs.values() if p["at"] == at)

    def pick(self, now):
        """A pack with riders for a rider to bring: the longer out, the likelier."""
        out = [p for p in self.packs.values() if p["at"] == "rider" and p["serial"] not in self.busy]
        if not out:
            p = self._buy(fresh=True)
            p["since"] = now
            out = [p]
        p = self.rnd.choices(out, [max(60.0, now - (p["since"] or now)) for p in out])[0]
        self.busy.add(p["serial"])
        return p

    def back(self, pack):
        """The rider rides on with it (refused, turned away, or left the queue)."""
        self.busy.discard(pack["serial"])

    def stored(self, serial, cabinet):
        self._at(serial, cabinet)

    def returned(self, serial):
        """The cabinet gave the rider their own pack back."""
        self._at(serial, "rider")

    def _at(self, serial, where):
        p = self.packs.get(serial)
        if p is not None:
            p["at"] = where
        self.busy.discard(serial)

    def taken(self, view, now):
        """A rider leaves a cabinet with the pack `view` (a battery object of an event)."""
        serial = view.get("serial") if isinstance(view, dict) else None
        if not serial:
            return
        p = self.packs.get(serial)
        if p is None:
            p = self.packs[serial] = {"serial": serial, "profile": view.get("profile") or "ref48v",
                                      "soh": float(view.get("soh") or 95),
                                      "cycles": int(view.get("cycles") or 0)}
        p.update(at="rider", since=now, ridden=True, soc=float(view.get("soc") or 90))

    def retired(self, serial, now):
        """The cabinet retired the pack: it leaves the fleet and a new one is bought."""
        p = self.packs.get(serial)
        if p is None or p["at"] == "retired":
            return
        p["at"] = "retired"
        self._buy(fresh=True)["since"] = now

    def to_dict(self):
        return {"bought": self.bought, "packs": sorted(self.packs.values(), key=lambda p: p["serial"])}


# -- the ledger ----------------------------------------------------------------------------------
COUNTS = ("turned_away", "left", "rejected", "aborted", "retired", "faults", "incomplete", "seen")


def _cabinet_ledger(slots):
    d = {"arrivals": 0, "swaps": 0, "collected": 0, "energy_wh": 0.0,
         "energy_wh_slots": [0.0] * slots}
    for k in COUNTS:
        d[k] = {}
    return d


class Ledger:
    """What the simulator did at each cabinet, and the totals (riders.json, below)."""

    def __init__(self, slots, saved=None):
        self.cabinets = {}
        self.runs = []
        self.riders = 0  # every rider ever, for unique id_tokens across resumed runs
        self.base_energy = {}  # per cabinet and slot, Wh, from the runs before this one
        self.slots = slots
        if saved:
            self.runs = list(saved.get("runs", []))
            self.riders = int(saved.get("riders", 0))
            for cid, d in saved.get("cabinets", {}).items():
                c = self.cabinet(cid)
                for k, v in d.items():
                    if k in c and k not in ("energy_wh", "energy_wh_slots"):
                        c[k] = v
                self.base_energy[cid] = list(d.get("energy_wh_slots", []))

    def cabinet(self, cid):
        c = self.cabinets.get(cid)
        if c is None:
            c = self.cabinets[cid] = _cabinet_ledger(self.slots)
        return c

    def bump(self, cid, what, key=None, n=1):
        c = self.cabinet(cid)
        if key is None:
            c[what] += n
        else:
            c[what][key] = c[what].get(key, 0) + n

    def energy(self, cid, per_slot):
        """This run's energy per slot (the world's physics), added to the earlier runs'."""
        c = self.cabinet(cid)
        base = self.base_energy.get(cid, [])
        slots = [(base[i] if i < len(base) else 0.0) + e for i, e in enumerate(per_slot)]
        c["energy_wh_slots"] = [round(e, 3) for e in slots]
        c["energy_wh"] = round(sum(slots), 3)

    def totals(self):
        t = {"arrivals": 0, "swaps": 0, "collected": 0, "energy_wh": 0.0}
        for k in COUNTS:
            t[k] = {}
        for c in self.cabinets.values():
            for k in ("arrivals", "swaps", "collected", "energy_wh"):
                t[k] += c[k]
            for k in COUNTS:
                for r, n in c[k].items():
                    t[k][r] = t[k].get(r, 0) + n
        t["energy_wh"] = round(t["energy_wh"], 3)
        return t

    def to_dict(self, fleet=None):
        d = {"version": 1, "riders": self.riders, "runs": self.runs, "totals": self.totals(),
             "cabinets": self.cabinets}
        if fleet is not None:
            d["fleet"] = {"packs": len(fleet.packs), "with_riders": fleet.count("rider"),
                          "retired": fleet.count("retired"), "bought": fleet.bought}
        return d

    def summary(self):
        t = self.totals()

        def by(d):
            return ", ".join("%s %d" % kv for kv in sorted(d.items())) or "none"
        return ("%d riders came, %d swaps; turned away: %s; left the queue: %s; rejected: %s; "
                "retired: %s (%d collected); chargers put %.1f Wh into packs"
                % (t["arrivals"], t["swaps"], by(t["turned_away"]), by(t["left"]),
                   by(t["rejected"]), by(t["retired"]), t["collected"], t["energy_wh"]))


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(path, data):
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(data, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError as e:
        print("tukar sim: riders: cannot write %s: %s" % (path, e), file=sys.stderr)


# -- what a cabinet publishes, as its riders see it ----------------------------------------------
class Desk:
    """One cabinet's retained states, events, acks and sim acks, and its queue of riders."""

    def __init__(self, cab):
        self.cab = cab
        self.id = cab.id
        self.state = None
        self.slots = {}
        self.events = collections.deque(maxlen=200)
        self.event_ids = set()
        self.acks = {}
        self.sim_acks = []
        self.sessions = set()  # sessions the riders started (their SwapStarted)
        self.queue = collections.deque()
        self.collect = set()  # slots holding a pack the cabinet retired
        self.collect_after = 0  # cabinet clock: no technician before (the last visit failed)
        self.wake = asyncio.Event()
        self._waiters = []

    def take(self, kind, data):
        if kind == "state":
            self.state = data
        elif kind.startswith("slot/") and isinstance(data, dict):
            self.slots[data.get("slot")] = data
        elif kind == "ack" and isinstance(data, dict):
            self.acks[data.get("req_id")] = data
        elif kind == "sim/ack":
            self.sim_acks.append(data)
        for check, fut in list(self._waiters):
            if not fut.done():
                r = check()
                if r is not None:
                    fut.set_result(r)

    async def wait(self, check, sim_s=STEP_S):
        """check()'s first non-None answer, or None after sim_s simulated seconds (and at least
        STEP_REAL_S real ones)."""
        r = check()
        if r is not None:
            return r
        fut = asyncio.get_running_loop().create_future()
        entry = (check, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, max(STEP_REAL_S, hosttime.seconds(sim_s * 1000)))
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiters.remove(entry)

    def event(self, session, types):
        """A check: this session's first event of one of `types`."""
        def check():
            for e in self.events:
                if e.get("session") == session and e.get("type") in types:
                    return e
            return None
        return check

    def door(self, n, state):
        """A check: slot n in `state` with its bolt in (the door can be opened)."""
        def check():
            s = self.slots.get(n)
            return s if s and s.get("state") == state and s.get("lock") == "unlocked" else None
        return check


class Rider:
    __slots__ = ("n", "token", "came", "pack")

    def __init__(self, n, came, pack):
        self.n = n
        self.token = "rider-%d" % n
        self.came = came
        self.pack = pack


# -- the generator -------------------------------------------------------------------------------
class Riders:
    """Riders at every cabinet of a Simulation (tukar_tools.sim), on its event loop."""

    def __init__(self, sim, rate_h, seed=1, tz_s=0, state_dir=".", patience_s=PATIENCE_S):
        if not rate_h > 0:
            raise ValueError("--riders must be a positive rate (riders per hour)")
        self.sim = sim
        self.rate = rate_h
        self.tz_s = tz_s
        self.patience_s = patience_s
        self.ledger_path = os.path.join(state_dir, LEDGER_FILE)
        self.fleet_path = os.path.join(state_dir, FLEET_FILE)
        root = random.Random(seed)
        self.streams = [random.Random(root.getrandbits(64)) for _ in sim.cabinets]
        self.rnd = random.Random(root.getrandbits(64))
        slots = max(c.n for c in sim.cabinets)
        self.ledger = Ledger(slots, _load(self.ledger_path))
        saved = _load(self.fleet_path)
        self.fleet = Fleet(self.rnd, FLEET_PER_CABINET * len(sim.cabinets), hosttime.wall_s(),
                           saved if isinstance(saved, dict) and "packs" in saved else None)
        self.run_id = uuid.uuid4().hex[:6]  # req_ids unique across runs (the gate remembers 64)
        self.sent = 0
        self.desks = {c.id: Desk(c) for c in sim.cabinets}
        self.client = None
        self.loop = None
        self.tasks = []
        self.workers = []
        self.closing_since = None
        self.run = None

    # -- life --------------------------------------------------------------------------------
    def start(self):
        """On the simulation's loop, once its cabinets are booting."""
        self.loop = asyncio.get_running_loop()
        now = hosttime.wall_s()
        for p in self.fleet.packs.values():
            if p["since"] is None:
                p["since"] = now
        self.run = {"start": iso(now, self.tz_s), "end": None, "speed": self.sim.speed,
                    "rate_per_h": self.rate, "sim_s": 0}
        self.ledger.runs.append(self.run)
        self.t0_ms = hosttime.current().now_ms()
        p = self.sim.prefix
        self.client = mqttc.Client(self.sim.host, self.sim.port, name="tukar-riders",
                                   subscriptions=["%s/+/%s" % (p, k) for k in (
                                       "event", "ack", "state", "slot/+/state", "sim/ack")])
        self.client.on_message = self._on_message
        for desk, rnd in zip(self.desks.values(), self.streams):
            self.tasks.append(asyncio.ensure_future(self._arrive(desk, arrivals(
                rnd, self.rate, now, self.tz_s))))
            self.workers.append(asyncio.ensure_future(self._serve(desk)))
        self.tasks.append(asyncio.ensure_future(self._keep()))

    def closing(self):
        """No more riders come; True once those at the cabinets have finished (or had their time)."""
        if self.closing_since is None:
            self.closing_since = time.monotonic()
            for t in self.tasks:
                t.cancel()
            for desk in self.desks.values():
                desk.wake.set()
        if all(w.done() for w in self.workers):
            return True
        if time.monotonic() - self.closing_since > CLOSE_REAL_S:
            for w in self.workers:
                w.cancel()
            return True
        return False

    def stop(self):
        """After the cabinets stopped: the ledger written for the last time."""
        for t in self.tasks + self.workers:
            t.cancel()
        if self.client is not None:
            self.client.close()
            self.client = None
        self.save()

    def save(self):
        if self.run is not None:
            now = hosttime.wall_s()
            self.run["end"] = iso(now, self.tz_s)
            self.run["sim_s"] = round((hosttime.current().now_ms() - self.t0_ms) / 1000)
        for desk in self.desks.values():
            self.ledger.energy(desk.id, desk.cab.phys.energy_wh)
        _save(self.ledger_path, self.ledger.to_dict(self.fleet))
        _save(self.fleet_path, self.fleet.to_dict())

    async def _keep(self):
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            self.save()

    # -- what the cabinets publish ------------------------------------------------------------
    def _on_message(self, topic, payload, retained):  # paho's thread
        try:
            self.loop.call_soon_threadsafe(self._dispatch, topic, payload)
        except RuntimeError:
            pass  # the loop has closed: the run is over

    def _dispatch(self, topic, payload):
        base = self.sim.prefix + "/"
        if not topic.startswith(base):
            return
        cid, _, kind = topic[len(base):].partition("/")
        desk = self.desks.get(cid)
        if desk is None:
            return
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if kind == "event":
            if not isinstance(data, dict) or data.get("id") in desk.event_ids:
                return  # every event is published at least once: counted once
            desk.event_ids.add(data.get("id"))
            desk.events.append(data)
            self._count(desk, data)
        desk.take(kind, data)

    def _count(self, desk, e):
        """The ledger's event side: the riders' swaps, rejections and aborts, every retirement."""
        led, cid, t = self.ledger, desk.id, e.get("type")
        led.bump(cid, "seen", t)
        ours = str(e.get("request_id") or "").startswith(REQUEST_PREFIX)
        if t == "SwapStarted" and ours:
            desk.sessions.add(e.get("session"))
        elif t == "SwapCompleted" and ours:
            led.bump(cid, "swaps")
        elif t == "SwapAborted" and ours:
            led.bump(cid, "aborted", str(e.get("reason")))
        elif t == "BatteryRejected" and e.get("session") in desk.sessions:
            led.bump(cid, "rejected", str(e.get("reason")))
        elif t == "BatteryRetired":
            led.bump(cid, "retired", str(e.get("reason")))
            self.fleet.retired(e.get("serial"), hosttime.wall_s())
            if e.get("slot"):
                desk.collect.add(e["slot"])
                desk.wake.set()
        elif t == "Fault":
            led.bump(cid, "faults", str(e.get("code")))

    # -- acting ------------------------------------------------------------------------------
    async def _command(self, desk, cmd, **args):
        """A signed command and its ack; sent again with the same req_id while no ack comes (a
        cabinet that reconnected lost it; one that had it answers again with `duplicate`), signed
        afresh each time so that its ts stays current at a high --speed."""
        self.sent += 1
        req = "rd-%s-%d" % (self.run_id, self.sent)
        for _ in range(COMMAND_TRIES):
            envelope = sign(command(cmd, req, int(hosttime.wall_s()), **args), self.sim.key)
            self.client.publish("%s/%s/cmd" % (self.sim.prefix, desk.id), envelope, qos=1, wait=0)
            ack = await desk.wait(lambda: desk.acks.get(req))
            if ack is not None:
                desk.acks.pop(req, None)
                return ack
        return None

    async def _world(self, desk, action, **fields):
        """A world action; retried while the bolt is still moving (the door does not open yet)."""
        for _ in range(5):
            desk.sim_acks.clear()
            msg = dict(fields, action=action)
            self.client.publish("%s/%s/sim/cmd" % (self.sim.prefix, desk.id), json.dumps(msg),
                                qos=1, wait=0)
            ack = await desk.wait(lambda: next((a for a in desk.sim_acks if isinstance(a, dict)
                                                and a.get("action") == action), None))
            if ack is None or ack.get("ok") or not str(ack.get("error")).startswith("door_locked"):
                return ack is not None and ack.get("ok")
            await self._pause(0.5)
        return False

    async def _pause(self, sim_s):
        await hosttime.asleep_ms(sim_s * 1000)

    def _handle(self):
        return self.rnd.uniform(*HANDLE_S)

    # -- riders ------------------------------------------------------------------------------
    async def _arrive(self, desk, times):
        for t in times:
            while t > hosttime.wall_s():  # (a host that stalls holds the clock back: look again)
                await self._pause(t - hosttime.wall_s())
            self.ledger.riders += 1
            self.ledger.bump(desk.id, "arrivals")
            desk.queue.append(Rider(self.ledger.riders, t, self.fleet.pick(t)))
            desk.wake.set()

    async def _serve(self, desk):
        """The cabinet's queue, one rider at a time; a technician between riders when needed."""
        cid = desk.id
        while True:
            if self.closing_since is not None:
                while desk.queue:
                    self.fleet.back(desk.queue.popleft().pack)
                    self.ledger.bump(cid, "left", "closing")
                return
            if not desk.queue:
                if desk.collect and hosttime.wall_s() >= desk.collect_after:
                    await self._collect(desk)
                    continue
                desk.wake.clear()
                try:  # with packs to collect, look again in a simulated minute
                    await asyncio.wait_for(desk.wake.wait(),
                                           hosttime.seconds(60000) if desk.collect else None)
                except asyncio.TimeoutError:
                    pass
                continue
            rider = desk.queue.popleft()
            if hosttime.wall_s() - rider.came > self.patience_s:
                self.fleet.back(rider.pack)
                self.ledger.bump(cid, "left", "patience")
                continue
            try:
                await self._swap(desk, rider)
            finally:
                self.fleet.back(rider.pack)

    async def _swap(self, desk, rider):
        cid, led = desk.id, self.ledger
        battery = visit(self.rnd, rider.pack)
        ack = await self._command(desk, "start_swap", id_token=rider.token,
                                  request_id="%s%s-%d" % (REQUEST_PREFIX, self.run_id, rider.n))
        if ack is None:
            led.bump(cid, "incomplete", "no_ack")
            return
        if not ack.get("ok"):
            led.bump(cid, "turned_away", str(ack.get("error")))
            return
        session, n_in = ack.get("session"), ack.get("slot")
        if await desk.wait(desk.door(n_in, "awaiting_battery")) is None:
            led.bump(cid, "incomplete", "door_in")
            return
        await self._pause(self._handle())
        if not await self._world(desk, "insert", slot=n_in, battery=battery):
            led.bump(cid, "incomplete", "insert")
            return
        self.fleet.stored(battery["serial"], cid)  # in the cabinet until the rider takes it back
        await self._pause(1.0)
        await self._world(desk, "close_door", slot=n_in)
        ev = await desk.wait(desk.event(session, ("BatteryIn", "BatteryRejected", "SwapAborted")))
        if ev is None:
            led.bump(cid, "incomplete", "identify")
        elif ev["type"] == "BatteryRejected":
            await self._take_back(desk, session, n_in, battery["serial"])
        elif ev["type"] == "BatteryIn":
            await self._take_charged(desk, session, n_in, battery["serial"])
        # SwapAborted: counted from the event; the pack stays where the cabinet has it

    async def _take_back(self, desk, session, n, serial):
        """The cabinet opens the rider's door again: they take their pack and shut it."""
        if await desk.wait(desk.door(n, "rejected")) is None:
            self.ledger.bump(desk.id, "incomplete", "give_back")
            return
        await self._pause(self._handle())
        if await self._world(desk, "take", slot=n):
            self.fleet.returned(serial)
            await self._pause(1.0)
            await self._world(desk, "close_door", slot=n)
        if await desk.wait(desk.event(session, ("SwapAborted", "SwapCompleted"))) is None:
            self.ledger.bump(desk.id, "incomplete", "give_back")

    async def _take_charged(self, desk, session, n_in, serial):
        """After BatteryIn: the door of the charged pack opens (or, when the cabinet has none to
        give after all, the rider's own door: their pack back)."""
        def next_door():
            for n, s in desk.slots.items():
                if s.get("state") == "dispensing" and s.get("lock") == "unlocked":
                    return ("out", n)
            if desk.door(n_in, "rejected")():
                return ("back", n_in)
            if desk.event(session, ("SwapAborted", "SwapCompleted"))():
                return ("over", None)
            return None
        what = await desk.wait(next_door)
        if what is None:
            self.ledger.bump(desk.id, "incomplete", "dispense")
            return
        if what[0] == "back":
            await self._take_back(desk, session, n_in, serial)
            return
        if what[0] == "over":
            return
        n_out = what[1]
        view = (desk.slots.get(n_out) or {}).get("battery")
        await self._pause(self._handle())
        if not await self._world(desk, "take", slot=n_out):
            self.ledger.bump(desk.id, "incomplete", "take")
            return
        await self._pause(1.0)
        await self._world(desk, "close_door", slot=n_out)
        out = await desk.wait(desk.event(session, ("BatteryOut",)))
        self.fleet.taken(out["battery"] if out and isinstance(out.get("battery"), dict) else view,
                         hosttime.wall_s())
        if await desk.wait(desk.event(session, ("SwapCompleted", "SwapAborted"))) is None:
            self.ledger.bump(desk.id, "incomplete", "completion")

    async def _collect(self, desk):
        """A technician takes the retired packs away: maintenance mode, open each slot, take the
        pack, shut the door, back in service."""
        slots = sorted(desk.collect)
        ack = await self._command(desk, "set_mode", mode="maintenance")
        if not ack or not ack.get("ok"):
            desk.collect_after = hosttime.wall_s() + 600  # cannot be serviced now: come back later
            return
        for n in slots:
            desk.collect.discard(n)
            ack = await self._command(desk, "open_slot", slot=n)
            if not ack or not ack.get("ok") or await desk.wait(desk.door(n, "maintenance_open")) is None:
                continue
            await self._pause(self._handle())
            if await self._world(desk, "take", slot=n):
                self.ledger.bump(desk.id, "collected")
            await self._world(desk, "close_door", slot=n)
        for _ in range(3):
            ack = await self._command(desk, "set_mode", mode="in_service")
            if ack and ack.get("ok"):
                return
