"""Power cut at every flash write and every output change of a swap, with the firmware frozen in
the 32-bit MicroPython unix port (`tukar sim --runtime micropython`), on a real broker. The
counterpart of tests/test_crash_points.py, which does the same to the application under CPython.

The crash points are seen by the host, exactly at the point: the firmware's `machine` (the C
module tukarhw) tells the host of every file it opens to write, append or update before it opens
it, and every expander write and GPIO set goes to the host anyway. `HardwareServer.on_point` is
called before such a request is carried out: a flash write, an MCP23017 write that changes its
output word (the locks and the charger enables), a GPIO set that changes an output's level (the
fan, the alarm). Returning True cuts the power there: the process is killed (SIGKILL), the world
loses power (the expanders reset, the bolts spring out), the write never happens. Two seconds
later the power comes back and the cabinet boots from what its flash holds.

A rider swaps, through MQTT and the physical world as a rider and the back end would: start_swap
signed; their pack into the slot that opens; a pack taken from the slot that opens for them, or
their own given back; doors closed. First without a cut, counting the swap's crash points (from
the start_swap on); then once per point, with the power cut at it, the rider carrying on with what
the doors let them do. After each run, from the outside (the events the cabinet published, its
retained slot states, the simulator's physical world):
- every battery is in a slot whose retained state names it, or in the rider's hand;
- the rider leaves with exactly one battery: a charged one, or their own; nothing is dispensed twice;
- the session ends once, and as what happened (SwapCompleted when the rider got a battery,
  SwapAborted otherwise); no session event is published twice under different ids;
- every event on flash when the power went (read from the flash directory then) is published.

A point is named by what it does ("flash state/state.json.tmp", "slot 2 unlock", "slot 3 charger
off", "fan on"), and a cut run cuts at the same occurrence of the same name as the counting run's
point k: the firmware runs on real time, so other points (an acknowledged event's persist, a
charger's hysteresis) may come before it in one run and not in another.

    python -m tukar_tools.crashpoints [--only dispense] [--points 3,7] [--json]
    make crashpoints
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid

from tukar_tools import broker, hostenv, sim  # noqa: F401  (hostenv: the shim on the path)
from tukar_tools.bench_mpy import run_sim
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Observer
from tukar_tools.sign import command, parse_key, sign

KEY = parse_key(SIM_KEY_HEX)
SLOTS = 6  # the board's 12 would do as well: a boot posts every slot's state, 5 a second
STOCK = {1: 96, 2: 95, 3: 60, 4: 55}  # slot: SoC of the cabinet's own packs (as test_crash_points)
RIDER = "R-0001"
CHARGED = ("S-01", "S-02")  # the packs a swap may hand out
DARK_S = 2.0  # the power stays off this long after a cut
TIMEOUTS = {"insert_timeout_s": 10, "take_timeout_s": 10}  # the shortest the firmware allows
HAND_S = 0.1  # a rider's hand: a door is closed this long after a pack went in or out
RIDER_S = 45.0  # the rider gives up after this long
QUIET_S = 0.5  # the cabinet settled this long: the rider leaves (nothing opens for them)
SETTLE_S = 40.0  # after the rider left: the session ends, the outbox drains
SWAP_EVENTS = ("SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted", "SwapAborted")


class HarnessError(RuntimeError):
    """The harness could not run the case (no boot, no broker): not a verdict on the firmware."""


# -- naming the points ------------------------------------------------------------------------------
def _ref(v):
    """A board-file output reference: (kind, a, b, invert); kind "x" an expander pin, "gpio"."""
    inv = False
    if isinstance(v, dict):
        inv = bool(v.get("invert", False))
        v = v.get("pin")
    if isinstance(v, int) and not isinstance(v, bool):
        return ("gpio", v, 0, inv)
    if isinstance(v, str) and v[:1] == "x":
        a, b = v[1:].split(".")
        return ("x", int(a), int(b), inv)
    return None


class Names:
    """What each output of a board file is: a slot's lock or charger enable, the fan, the alarm."""

    def __init__(self, cfg):
        self.expander = {}  # (bus, addr) -> expander index
        for i, x in enumerate(cfg.get("expanders", [])):
            addr = x["addr"]
            self.expander[(x["bus"], int(addr, 16) if isinstance(addr, str) else addr)] = i
        self.outputs = {}  # ("x", expander, bit) or ("gpio", pin, 0) -> (name, invert)
        for n, slot in enumerate(cfg.get("slots", []), 1):
            for role, ref in (("lock", slot.get("lock")),
                              ("charger", (slot.get("charger") or {}).get("enable"))):
                r = _ref(ref)
                if r is not None:
                    self.outputs[r[:3]] = ("slot %d %s" % (n, role), r[3])
        for role in ("fan", "alarm"):
            r = _ref(cfg.get("cabinet", {}).get(role))
            if r is not None:
                self.outputs[r[:3]] = (role, r[3])

    @staticmethod
    def _change(name, on):
        if name.endswith(" lock"):
            return name[:-5] + (" unlock" if on else " lock")  # energised: the bolt pulled in
        return name + (" on" if on else " off")

    def name(self, kind, detail):
        if kind == "flash":  # the outbox's spill file, whatever its generation
            return "flash " + re.sub(r"outbox\.\d+$", "outbox.*", detail)
        if kind == "pin":
            pin, _old, new = detail
            name, inv = self.outputs.get(("gpio", pin, 0), ("gpio %d" % pin, False))
            return self._change(name, bool(new) ^ inv)
        bus, addr, old, new = detail
        x = self.expander.get((bus, addr))
        parts = []
        for bit in range(16):
            if (old ^ new) >> bit & 1:
                name, inv = self.outputs.get(("x", x, bit), ("x%s.%d" % (x, bit), False))
                parts.append(self._change(name, bool(new >> bit & 1) ^ inv))
        return " + ".join(parts)


# -- one cabinet, one swap --------------------------------------------------------------------------
def events_on_flash(flash):
    """The events a board booting now would find on `flash` (its state and outbox spill), read
    from a copy: reading the outbox back deletes spill files the state does not name."""
    from tukar.outbox import Outbox
    from tukar.store import Store
    src = os.path.join(flash, "state")
    if not os.path.isdir(src):
        return []
    with tempfile.TemporaryDirectory(prefix="tukar-cp-flash-") as d:
        copy = os.path.join(d, "state")
        shutil.copytree(src, copy)
        store = Store(copy)
        saved = store.load("state") or {}
        ob = Outbox(store=store)
        ob.restore(saved.get("outbox"), saved.get("spill"))
        return ob.snapshot()


class Run:
    """One fresh cabinet and one rider's swap; the power cut at crash point `cut` ((name,
    occurrence) of the counting run's point), or never."""

    def __init__(self, port, cut=None, micropython=None, heap=None, state_dir=None):
        self.port = port
        self.cut = cut
        self.micropython = micropython
        self.heap = heap
        self.state_dir = state_dir
        self.prefix = "cp" + uuid.uuid4().hex[:10]  # a topic tree of its own: no retained leftovers
        self.counting = False
        self.points = []  # (name, kind, detail, seconds since the start_swap)
        self._seen = {}  # name -> occurrences so far
        self.cut_at = None  # index into points where the power was cut
        self.cut_s = None  # time.monotonic() of the cut
        self.cut_rec = None  # how many MQTT records the observer had then
        self.persisted = None  # ids of the events on flash when the power went
        self.unlocked_ever = False  # a bolt was seen pulled in after the start_swap
        self.hand = []
        self.slot_in = None
        self.ack = None
        self.mark = 0
        self.t0 = None
        self.took = None
        self.problems = []  # the invariants this run broke
        self.report = {}

    # -- the host's hooks (server thread, under the cabinet's lock) -------------------------------
    def _on_point(self, kind, detail):
        if not self.counting:
            return False
        name = self.names.name(kind, detail)
        k = self._seen[name] = self._seen.get(name, 0) + 1
        self.points.append((name, kind, detail, round(time.monotonic() - self.t0, 3)))
        if self.cut is not None and self.cut_at is None and (name, k) == tuple(self.cut):
            self.cut_at = len(self.points) - 1
            return True
        return False

    def _on_cut(self):
        self.cab.power_cut()
        self.cut_s = time.monotonic()
        self.cut_rec = len(self.obs.records)
        self.persisted = {e["id"] for e in events_on_flash(self.cab.flash)}
        loop = self.s.loop
        loop.call_soon_threadsafe(loop.call_later, DARK_S, self._power_back)

    def _power_back(self):
        if not self.cab.stopped:
            self.cab.boot("power_on")

    # -- the world, as the rider acts on it (on the simulator's loop, under the lock) -----------------
    def _world(self, fn):
        box = {}
        done = threading.Event()

        def call():
            try:
                with self.cab.lock:
                    box["r"] = fn(self.cab.phys)
            except Exception as e:  # noqa: BLE001  (handed to the caller)
                box["e"] = e
            done.set()
        self.s.loop.call_soon_threadsafe(call)
        if not done.wait(10):
            raise HarnessError("the simulator's loop did not answer in 10 s")
        if "e" in box:
            raise box["e"]
        return box.get("r")

    def _look(self):
        """[(unlocked, serial or None)] per slot, as the rider sees them."""
        view = self._world(lambda p: [(not p.locks[i].locked, p.packs[i].serial if p.packs[i]
                                       else None) for i in range(p.n)])
        if self.counting and any(u for u, _ in view):
            self.unlocked_ever = True
        return view

    # -- MQTT ------------------------------------------------------------------------------------
    def _wait(self, check, within_s, what=None):
        end = time.monotonic() + within_s
        while time.monotonic() < end:
            r = check()
            if r:
                return r
            time.sleep(0.02)
        if what:
            raise HarnessError("%s not seen within %.0f s" % (what, within_s))
        return None

    def _epoch(self):
        """The index of the first MQTT record from the firmware running now: after a cut, past
        its birth's `online` (its states follow); None while it is not online yet."""
        if self.cut_rec is None:
            return 0
        recs = list(self.obs.records)
        for i in range(self.cut_rec, len(recs)):
            t, payload, _r = recs[i]
            if t.endswith("/status") and payload == b"online":
                return i + 1
        return None

    def _settled(self, after):
        """The last cabinet state the firmware running now published after record index `after`
        says there is no session, and no slot is unlocked."""
        epoch = self._epoch()
        if epoch is None:
            return False
        recs = list(self.obs.records)
        states = [p for t, p, _r in recs[max(after, epoch):]
                  if t == self.obs.base + "state"]
        if not states:
            return False
        try:
            st = json.loads(states[-1])
        except ValueError:
            return False
        return st.get("session") is None and not any(u for u, _ in self._look())

    def _start_swap(self):
        body = command("start_swap", "cp-1", id_token="tok-1", request_id="req-1")
        self.mark = len(self.obs.records)
        self.obs.client.publish(self.obs.base + "cmd", sign(body, KEY), qos=1)
        # The ack, unless the power went first (then the rider looks at the doors).
        self._wait(lambda: self.obs.acks.get("cp-1") or self.cut_s is not None, 8)
        self._acked()

    def _acked(self):
        ack = self.obs.acks.get("cp-1")
        if ack is not None and self.ack is None:
            self.ack = ack
            if not ack.get("ok"):
                raise HarnessError("start_swap refused: %s" % ack)
            self.slot_in = ack["slot"]

    def _rider(self):
        """Put their pack in the slot that opens, take one from the slot that opens for them (or
        their own back), close the doors; carry on across a cut; give up when nothing opens."""
        hand = self.hand
        hand.append(RIDER)
        given = False
        relocked = False  # the rider's slot locked on their pack: it opens again only to give back
        mark = self.mark
        quiet_since = None
        end = time.monotonic() + RIDER_S
        while time.monotonic() < end:
            self._acked()
            if self.slot_in is None:  # no ack (a cut): the back end's SwapStarted names the slot
                st = next((e for e in self.obs.events if e.get("type") == "SwapStarted"), None)
                self.slot_in = st["slot"] if st else None
            view = self._look()
            n_in = self.slot_in
            relocked = relocked or given and not view[n_in - 1][0]
            if hand == [RIDER] and not given and n_in and view[n_in - 1][0] \
                    and view[n_in - 1][1] is None:
                self._world(lambda p: p.insert(n_in, {"serial": RIDER, "soc": 12, "soh": 90,
                                                      "temp_c": 28}))
                hand.clear()
                given = True
                mark = len(self.obs.records)
                time.sleep(HAND_S)
                self._world(lambda p: p.close_door(n_in))
                continue
            if not hand:
                for n in range(1, len(view) + 1):
                    unlocked, serial = view[n - 1]
                    if unlocked and serial is not None and (n != n_in or relocked):
                        self._world(lambda p: p.open_door(n))
                        hand.append(self._world(lambda p: p.take(n)).serial)
                        time.sleep(HAND_S)
                        self._world(lambda p: p.close_door(n))
                        break
            elif given or hand[0] != RIDER:
                return  # a battery back in the hand: the rider leaves
            # Nothing to do: the rider waits while the cabinet may still open a door for them (a
            # cut's dark and boot; a battery being identified). Settled: they leave.
            if self._settled(mark):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > QUIET_S:
                    return
            else:
                quiet_since = None
            time.sleep(0.05)

    def _script(self, s):
        obs = self.obs
        self._wait(lambda: obs.status == "online", 30, "the cabinet online")
        self._wait(lambda: (obs.state or {}).get("ready", 0) >= 2
                   and (obs.state or {}).get("session", 1) is None, 30, "2 packs ready")
        time.sleep(QUIET_S)  # the boot's writes done
        self.t0 = time.monotonic()
        self.counting = True
        self._start_swap()
        self._rider()
        for n in range(1, SLOTS + 1):
            self._world(lambda p, n=n: p.close_door(n))
        # The cabinet settles: the session over (a time-out may end it), every event on flash when
        # the power went published, the retained slot states caught up with the world.
        persisted = self.persisted or set()
        self._wait(lambda: self._settled(0) and persisted <= obs.event_ids
                   and self._slots_agree(), SETTLE_S)
        time.sleep(QUIET_S)  # late events
        self.took = time.monotonic() - self.t0
        self.counting = False

    def _slots_agree(self):
        world = self._world(lambda p: [p.packs[i].serial if p.packs[i] else None
                                       for i in range(p.n)])
        for n, serial in enumerate(world, 1):
            st = self.obs.slots.get(n)
            if st is None or (st.get("battery") or {}).get("serial") != serial:
                return False
        return True

    def go(self):
        state = self.state_dir or tempfile.mkdtemp(prefix="tukar-cp-")
        try:
            stock = [{"slot": n, "battery": {"serial": "S-%02d" % n, "soc": soc, "soh": 95,
                                             "temp_c": 25}} for n, soc in STOCK.items()]
            s = self.s = sim.Simulation("127.0.0.1", self.port, prefix=self.prefix, cabinets=1,
                                        slots=SLOTS, state_dir=state, runtime="micropython",
                                        heap=self.heap, micropython=self.micropython, key=KEY,
                                        stock=stock)
            cab = self.cab = s.cabinets[0]
            self.names = Names(cab.phys.cfg)
            path = os.path.join(cab.flash, "config.json")
            with open(path) as f:
                cfg = json.load(f)
            cfg["core"] = dict(TIMEOUTS)
            with open(path, "w") as f:
                json.dump(cfg, f)
            server = cab.fw.server
            server.on_point = self._on_point
            server.on_cut = self._on_cut
            self.obs = Observer("127.0.0.1", self.port, self.prefix, cab.id)
            try:
                run_sim(s, self._script)
            except RuntimeError as e:  # the simulator did not start
                raise HarnessError(str(e)) from None
            finally:
                self.obs.close()
            self.check()
            return self
        finally:
            if self.state_dir is None:
                shutil.rmtree(state, ignore_errors=True)

    # -- the verdict ------------------------------------------------------------------------------
    def check(self):
        p = self.problems
        obs = self.obs
        world = [pk.serial if pk else None for pk in self.cab.phys.packs]
        hand = list(self.hand)
        everyone = sorted(["S-%02d" % n for n in STOCK] + [RIDER])
        if sorted([x for x in world if x] + hand) != everyone:
            p.append("batteries unaccounted for: slots %s, hand %s" % (world, hand))
        if len(hand) != 1:
            p.append("the rider left with %d batteries: %s" % (len(hand), hand))
        got = hand[0] if len(hand) == 1 else None
        if got is not None and got not in (RIDER,) + CHARGED:
            p.append("the rider left with %s, neither their own nor a charged one" % got)
        for n, serial in enumerate(world, 1):
            st = obs.slots.get(n) or {}
            named = (st.get("battery") or {}).get("serial")
            if named != serial:
                p.append("slot %d holds %s, its retained state names %s" % (n, serial, named))
        events = list(obs.events)
        mine = [e for e in events if e.get("type") in SWAP_EVENTS]
        for kind in SWAP_EVENTS:
            keys = [(e.get("session"), (e.get("battery") or {}).get("serial")) for e in mine
                    if e["type"] == kind]
            if len(keys) != len(set(keys)):
                p.append("%s published twice under different ids: %s" % (
                    kind, [e["id"] for e in mine if e["type"] == kind]))
        outs = [e for e in mine if e["type"] == "BatteryOut"]
        if len({e["battery"]["serial"] for e in outs}) != len(outs):
            p.append("a battery dispensed twice: %s" % [e["battery"]["serial"] for e in outs])
        started = [e["session"] for e in mine if e["type"] == "SwapStarted"]
        ends = [e for e in mine if e["type"] in ("SwapCompleted", "SwapAborted")]
        if self.ack is not None and self.ack.get("session") not in started:
            # The back end was told the session exists: it must begin (and end) for it too.
            p.append("start_swap acknowledged (session %s, slot %s), yet no SwapStarted for it" % (
                self.ack.get("session"), self.ack.get("slot")))
        if self.persisted is not None and not self.persisted <= obs.event_ids:
            lost = sorted(self.persisted - obs.event_ids)
            p.append("events on flash at the cut never published: %s" % lost)
        self.report = {"got": got, "sessions": started,
                       "ends": ["%s(%s)" % (e["type"], e.get("reason") or e.get("battery_out"))
                                for e in ends],
                       "events": [e["type"] for e in events]}
        for r in self.cab.reports:
            p.append("simulator: " + r.splitlines()[0])
        if not started:
            # No session reached the back end: the power went before SwapStarted was on flash and
            # before a door was told to open, let alone opened (the write-ahead); the rider still
            # holds their own.
            done = self.points if self.cut_at is None else self.points[:self.cut_at]
            unlocks = [n for n, *_r in done if "unlock" in n]
            if got != RIDER or ends or self.unlocked_ever or unlocks:
                p.append("no SwapStarted, yet the rider got %s, ends %s, a bolt pulled in: %s, "
                         "unlocks before the cut: %s" % (got, self.report["ends"],
                                                          self.unlocked_ever, unlocks))
            return
        if sorted(e["session"] for e in ends) != sorted(started) or len(started) != 1:
            p.append("sessions %s ended %s" % (started, self.report["ends"]))
            return
        end = ends[0]
        if got == RIDER:
            if end["type"] != "SwapAborted" or outs:
                p.append("the rider has their own back, yet %s and BatteryOut %s" % (
                    self.report["ends"], [e["battery"]["serial"] for e in outs]))
        elif got is not None:
            if end["type"] != "SwapCompleted" or len(outs) != 1 \
                    or outs[0]["battery"]["serial"] != got or end.get("battery_out") != got:
                p.append("the rider took %s, yet %s and BatteryOut %s" % (
                    got, self.report["ends"], [e["battery"]["serial"] for e in outs]))


# -- the enumeration --------------------------------------------------------------------------------
def label(points):
    """[(name, occurrence)] of a counting run's points, in order."""
    seen = {}
    out = []
    for name, *_ in points:
        seen[name] = seen.get(name, 0) + 1
        out.append((name, seen[name]))
    return out


def dispense_subset(count):
    """The indices of the counting run's points up to and including the unlock of the slot the
    swap dispensed from: where the write-ahead matters (a door commits the cabinet to the rider)."""
    outs = [e for e in count.obs.events if e.get("type") == "BatteryOut"]
    if not outs:
        return list(range(len(count.points)))
    want = "slot %d unlock" % outs[0]["slot"]
    for i, (name, *_rest) in enumerate(count.points):
        if want in name.split(" + "):
            return list(range(i + 1))
    return list(range(len(count.points)))


def attempt(port, cut=None, tries=2, **kw):
    """A Run, once more when the harness itself failed (a broker hiccup, a slow boot)."""
    for i in range(tries):
        try:
            return Run(port, cut, **kw).go()
        except HarnessError:
            if i == tries - 1:
                raise
    raise AssertionError("unreachable")


def enumerate_points(port, only=None, picks=None, out=print, **kw):
    """Count the points, then cut at each (or at `picks`, or the dispense subset). Returns a
    dict: the counting run's points, a row per cut, and the time each took."""
    t0 = time.monotonic()
    count = attempt(port, **kw)
    names = label(count.points)
    out("counting run: %d crash points (%d flash writes, %d output changes) in %.1f s%s" % (
        len(names), sum(1 for _, k, *_r in count.points if k == "flash"),
        sum(1 for _, k, *_r in count.points if k != "flash"), count.took,
        "" if not count.problems else "; PROBLEMS: %s" % count.problems))
    for i, (name, k) in enumerate(names, 1):
        out("  %3d  %-40s  #%d  at %.2f s" % (i, name, k, count.points[i - 1][3]))
    which = list(range(len(names)))
    if only == "dispense":
        which = dispense_subset(count)
    if picks:
        which = [i - 1 for i in picks if 1 <= i <= len(names)]
    rows = []
    for i in which:
        r0 = time.monotonic()
        try:
            run = attempt(port, names[i], **kw)
            row = {"point": i + 1, "name": names[i][0], "occurrence": names[i][1],
                   "cut": run.cut_at is not None, "at": None if run.cut_at is None
                   else run.cut_at + 1, "got": run.report.get("got"),
                   "ends": run.report.get("ends"), "problems": run.problems,
                   "seconds": round(time.monotonic() - r0, 1)}
        except HarnessError as e:
            row = {"point": i + 1, "name": names[i][0], "occurrence": names[i][1], "cut": False,
                   "problems": ["harness: %s" % e], "seconds": round(time.monotonic() - r0, 1)}
        rows.append(row)
        out("cut %3d  %-40s #%d  %s  rider: %-6s  %-28s %5.1f s%s" % (
            row["point"], row["name"], row["occurrence"],
            "cut" if row["cut"] else "NOT REACHED", row.get("got"),
            ", ".join(row.get("ends") or []) or "no session", row["seconds"],
            "" if not row["problems"] else "  FAIL: " + "; ".join(row["problems"])))
    return {"points": [{"name": n, "occurrence": k, "kind": count.points[i][1],
                        "at_s": count.points[i][3]} for i, (n, k) in enumerate(names)],
            "count_problems": count.problems, "count_got": count.report.get("got"),
            "cuts": rows, "seconds": round(time.monotonic() - t0, 1)}


def add_arguments(p):
    p.add_argument("--only", choices=("dispense",),
                   help="cut only at the points up to and including the dispense door's unlock")
    p.add_argument("--points", help="cut only at these points (1-based, comma-separated)")
    p.add_argument("--broker", help="HOST:PORT of a broker (default: Mosquitto here, else amqtt)")
    p.add_argument("--micropython", default=None, help="the binary (default build/micropython)")
    p.add_argument("--heap", default=None, help="-X heapsize= (default 192K)")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")


def run(args):
    from tukar_tools import mprt, mqttc
    try:
        mprt.binary(args.micropython)
    except FileNotFoundError as e:
        print("tukar crashpoints: %s" % e, file=sys.stderr)
        return 2
    own = None
    if args.broker:
        host, port = mqttc.parse_broker(args.broker)
        if host not in ("127.0.0.1", "localhost"):
            print("tukar crashpoints: the broker must be on this host", file=sys.stderr)
            return 2
    else:
        own = broker.start()
        port = own.port
    picks = [int(x) for x in args.points.split(",")] if args.points else None
    out = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        res = enumerate_points(port, args.only, picks, out=out, micropython=args.micropython,
                               heap=args.heap)
    finally:
        if own is not None:
            own.stop()
    bad = [r for r in res["cuts"] if r["problems"]]
    missed = [r for r in res["cuts"] if not r["problems"] and not r["cut"]]
    out("%d cuts: %d kept every invariant, %d broke one, %d not reached (the point did not come "
        "in that run); %.0f s in all" % (len(res["cuts"]), len(res["cuts"]) - len(bad) - len(missed),
                                         len(bad), len(missed), res["seconds"]))
    if args.json:
        print(json.dumps(res, indent=2))
    return 1 if bad or res["count_problems"] else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tukar_tools.crashpoints",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
