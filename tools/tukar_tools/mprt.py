"""The firmware in real MicroPython: one 32-bit unix-port process per cabinet, started the way the
device starts (`main.py` in a directory that is its flash, `-X heapsize=` as its heap), whose
`machine` (the C module tools/tukar_tools/mpshim/c/tukarhw, built into the binary) forwards every
call over a local socket to `HardwareServer` here, where the cabinet's chip models answer. MQTT goes through the frozen
`umqtt.simple` over real sockets, via `Relay` (which the simulator's `fault mqtt` cuts).

`FirmwareProcess` owns the process: start, SIGKILL (a power cut), the reset the firmware asks for,
and a clear report (exit status, MemoryError, the last lines it printed) whenever it ends."""
import collections
import os
import pathlib
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

from tukar_tools import hostenv

ROOT = hostenv.ROOT
MPSHIM = pathlib.Path(__file__).resolve().parent / "mpshim"
DEFAULT_BINARY = ROOT / "build" / "micropython"
DEFAULT_HEAP = "192K"  # above what boot and a swap need today (make bench); a stock ESP32 has about 112K


def binary(path=None):
    """The MicroPython binary: `path`, $TUKAR_MICROPYTHON, or build/micropython (`make micropython`)."""
    p = pathlib.Path(path or os.environ.get("TUKAR_MICROPYTHON") or DEFAULT_BINARY)
    if not p.is_file():
        raise FileNotFoundError("no MicroPython binary at %s: build it with `make micropython`" % p)
    return p


class _Reply(Exception):
    def __init__(self, status, data):
        self.status, self.data = status, data


class HardwareServer:
    """`machine` calls from one firmware process, served against one cabinet's hardware models.
    Every request runs under `lock`, which the simulator's physics takes too."""

    def __init__(self, hw, lock, on_reset=None, can=None):
        from tukar_tools.shim import hw as shim_hw
        self._shim_hw = shim_hw
        self.hw = hw
        self.lock = lock
        self.on_reset = on_reset  # called (under the lock) when the firmware calls machine.reset()
        self.on_connect = None  # called (under the lock) when a new firmware process connects
        self.can = can  # the CanBus, paced: frames wait for a free RX buffer
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.calls = 0
        self.hello = None  # what the firmware process says it is: "micropython GIL 2147483647 frozen"
        self.wdt_armed_at = None  # time.monotonic() when the firmware armed its watchdog
        self.note = None
        self.closed = False
        self._objs = {}
        self.flash_writes = 0  # files opened to write, append or update (FLASH_WRITE)
        # Crash points (tukar_tools/crashpoints.py): on_point(kind, detail) is called under the
        # lock before a flash write ("flash", its path) or an output change ("expander", (bus,
        # addr, old, new): an MCP23017's output word; "pin", (pin, old, new): a GPIO of
        # `output_pins`) is carried out. True cuts the power there: on_cut() (which kills the
        # process), and the request is neither carried out nor answered. None: no cost at all.
        self.on_point = None
        self.on_cut = None
        self.output_pins = frozenset()  # the GPIOs that are the cabinet's outputs (output_pins())
        threading.Thread(target=self._serve, daemon=True, name="hw-%d" % self.port).start()

    def close(self):
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass

    # -- connections -----------------------------------------------------------------------------
    def _serve(self):
        while not self.closed:
            try:
                rpc, _ = self.listener.accept()
                note, _ = self.listener.accept()
            except OSError:
                return
            for s in (rpc, note):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.note = note
                self._objs = {}  # a new process: machine objects are built afresh
                if self.on_connect is not None:
                    self.on_connect()
            try:
                self._loop(rpc)
            except OSError:
                pass
            finally:
                with self.lock:
                    self.note = None
                for s in (rpc, note):
                    s.close()

    def _loop(self, sock):
        f = sock.makefile("rb", buffering=0)
        while True:
            head = _read(f, 2)
            if head is None:
                return
            (n,) = struct.unpack("<H", head)
            body = _read(f, n)
            if body is None:
                return
            with self.lock:
                self.calls += 1
                self._shim_hw.install(self.hw)
                if self.on_point is not None and self._cut_here(body[0], body[1:]):
                    return  # the process is gone: no reply, and the write never happened
                try:
                    data = self._dispatch(body[0], body[1:]) or b""
                    status = 0
                except _Reply as r:
                    status, data = r.status, r.data
                except OSError as e:
                    status, data = 1, struct.pack("<H", (e.errno or 5) & 0xFFFF)
                except (ValueError, TypeError) as e:
                    status, data = 2, str(e).encode()[:400]
            sock.sendall(struct.pack("<HB", len(data) + 1, status) + data)

    def notify(self, kind, arg):
        """A note to the firmware process (caller holds the lock)."""
        if self.note is not None:
            try:
                self.note.sendall(bytes((ord(kind), arg)))
            except OSError:
                pass

    # -- crash points ----------------------------------------------------------------------------
    def _cut_here(self, op, a):
        point = self._point(op, a)
        if point is None or not self.on_point(*point):
            return False
        if self.on_cut is not None:
            self.on_cut()
        return True

    def _point(self, op, a):
        """(kind, detail) when request `op` is a flash write or changes an output, else None."""
        if op == 60:
            return "flash", bytes(a).decode("utf-8", "replace")
        if op == 12:  # writeto_mem: the register address, then the data
            bid, addr, mem, size = struct.unpack_from("<BBIB", a)
            return self._expander_point(bid, addr, bytes((mem & 0xFF,)) + bytes(a[7:])) \
                if size == 8 else None
        if op == 14:  # writeto: the register address is the first byte written
            return self._expander_point(a[0], a[1], bytes(a[3:]))
        if op == 3:
            return self._pin_point(a[0], 1 if a[1] else 0)
        if op == 1:  # Pin(id, OUT, value=v) or pin.init(...): drives v from now on
            pid, mode, _pull, value = struct.unpack_from("<Bbb B", a)
            pm = self.hw.pins.get(pid)
            out = mode in (3, 7) or mode == -1 and pm is not None and pm.mode == "out"
            return self._pin_point(pid, value) if out and value != 255 else None
        return None

    def _pin_point(self, pid, level):
        if pid not in self.output_pins:
            return None
        pm = self.hw.pins.get(pid)
        old = pm.value if pm is not None else 0
        return ("pin", (pid, old, level)) if old != level else None

    def _expander_point(self, bid, addr, data):
        """An I2C write of `data` (register address first) to `addr`: its effect on the output
        word of the MCP23017 there, worked out on a copy of its registers."""
        import copy
        from tukar_tools.shim.i2c_chips import MCP23017
        bus = self._objs.get(("i2c", bid))
        if bus is None or not data:
            return None
        for d in bus.bus.reachable():
            if d.address != addr or not isinstance(d, MCP23017):
                continue
            c = copy.copy(d)
            c.regs = bytearray(d.regs)
            c.i2c_start(False)
            for byte in data:
                c.i2c_write(byte)
            old, new = d.outputs(), c.outputs()
            if old != new:
                return "expander", (bid, addr, old, new)
        return None

    # -- machine, call by call -------------------------------------------------------------------
    def _machine(self):
        import machine  # the host shim, acting on self.hw (installed by the caller)
        return machine

    def _dispatch(self, op, a):
        m = self._machine()
        objs = self._objs
        if op == 1:  # Pin(id, mode, pull, value) or pin.init(...)
            pid, mode, pull, value = struct.unpack_from("<Bbb B", a)
            pull_arg = None if pull == -2 else pull
            v = None if value == 255 else value
            p = objs.get(("pin", pid))
            if p is None:
                objs[("pin", pid)] = m.Pin(pid, mode, pull_arg, value=v)
            else:
                p.init(mode, pull_arg, value=v)
            return None
        if op == 2:
            return bytes((self._pin(a[0]).value(),))
        if op == 3:
            self._pin(a[0]).value(a[1])
            return None
        if op == 4:
            pid, trigger = a[0], a[1]
            if trigger:
                self._pin(pid).irq(handler=lambda _p, pid=pid: self.notify("I", pid), trigger=trigger)
            else:
                self._pin(pid).irq(handler=None)
            return None
        if op in (10, 16):  # I2C(id, scl, sda, freq, timeout), or i2c.init(...)
            bid, scl, sda, freq, timeout = struct.unpack_from("<BbbII", a)
            scl_a = None if scl < 0 else scl
            sda_a = None if sda < 0 else sda
            if op == 16:
                self._i2c(bid).init(scl=scl_a, sda=sda_a, freq=freq, timeout=timeout)
            elif bid == 255:
                objs[("i2c", bid)] = m.SoftI2C(scl_a, sda_a, freq=freq, timeout=timeout)
            else:  # the port's one object per bus, configured afresh
                objs[("i2c", bid)] = m.I2C(bid, scl=scl_a, sda=sda_a, freq=freq, timeout=timeout)
            return None
        if op == 11:
            bid, addr, mem, size, n = struct.unpack_from("<BBIBH", a)
            return bytes(self._i2c(bid).readfrom_mem(addr, mem, n, addrsize=size))
        if op == 12:
            bid, addr, mem, size = struct.unpack_from("<BBIB", a)
            self._i2c(bid).writeto_mem(addr, mem, a[7:], addrsize=size)
            return None
        if op == 13:
            bid, addr, stop, n = struct.unpack_from("<BBBH", a)
            return bytes(self._i2c(bid).readfrom(addr, n, bool(stop)))
        if op == 14:
            bid, addr, stop = struct.unpack_from("<BBB", a)
            return bytes((self._i2c(bid).writeto(addr, a[3:], bool(stop)),))
        if op == 15:
            return bytes(self._i2c(a[0]).scan())
        if op == 20:
            sid, baud = struct.unpack_from("<BI", a)
            if ("spi", sid) not in objs:
                objs[("spi", sid)] = m.SPI(sid, baudrate=baud)
            else:
                objs[("spi", sid)].init(baudrate=baud)
            return None
        if op == 21:
            spi = objs.get(("spi", a[0]))
            if spi is None:
                raise OSError(5, "SPI not initialised")
            out = bytearray(len(a) - 1)
            spi.write_readinto(a[1:], out)
            if self.can is not None:
                self.can.pump()  # an RX buffer may be free now: the next waiting frame arrives
            return bytes(out)
        if op == 30:
            objs[("adc", a[0])] = m.ADC(m.Pin(a[0]), atten=a[1])
            return None
        if op == 31:
            adc = objs.get(("adc", a[0]))
            if adc is None:
                raise OSError(5, "ADC not initialised")
            v = (adc.read, adc.read_u16, adc.read_uv)[a[1]]()
            return struct.pack("<I", v)
        if op == 40:
            (timeout,) = struct.unpack_from("<I", a)
            objs["wdt"] = m.WDT(timeout=timeout)
            self.wdt_armed_at = time.monotonic()
            return None
        if op == 41:
            wdt = objs.get("wdt")
            if wdt is not None:
                wdt.feed()
            return None
        if op == 50:
            return bytes((self.hw.reset_cause,))
        if op == 51:
            return bytes(self.hw.unique_id)
        if op == 52:
            if self.on_reset is not None:
                self.on_reset()
            return None
        if op == 53:
            self.hello = bytes(a).decode()
            return None
        if op == 60:  # a file is about to be opened to write (crash points: _point)
            self.flash_writes += 1
            return None
        raise _Reply(2, b"unknown machine call %d" % op)

    def _pin(self, pid):
        p = self._objs.get(("pin", pid))
        if p is None:
            p = self._objs[("pin", pid)] = self._machine().Pin(pid)
        return p

    def _i2c(self, bid):
        bus = self._objs.get(("i2c", bid))
        if bus is None:
            raise OSError(5, "I2C(%d) not initialised" % bid)
        return bus


def output_pins(cfg):
    """The GPIOs of board file `cfg` that are cabinet outputs: the fan, the alarm, and any lock
    or charger enable wired to a GPIO rather than an expander."""
    refs = [cfg.get("cabinet", {}).get(k) for k in ("fan", "alarm")]
    for slot in cfg.get("slots", []):
        refs.append(slot.get("lock"))
        refs.append((slot.get("charger") or {}).get("enable"))
    pins = set()
    for r in refs:
        r = r.get("pin") if isinstance(r, dict) else r
        if isinstance(r, int) and not isinstance(r, bool):
            pins.add(r)
    return frozenset(pins)


def _read(f, n):
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class Relay:
    """A TCP relay from the cabinet to the broker: the cabinet's network, which can be cut."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.down = False
        self.refuse = False  # new connections are closed at once, open ones kept (a bad image's)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._conns = []
        self._lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="relay-%d" % self.port).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            if self.down or self.refuse:
                c.close()  # the network is cut: the connection goes nowhere
                continue
            try:
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            b.settimeout(None)
            with self._lock:
                self._conns.append((c, b))
            threading.Thread(target=self._pump, args=(c, b), daemon=True).start()

    def _pump(self, c, b):
        try:
            while True:
                r, _, _ = select.select([c, b], [], [], 1.0)
                if self.down or self.closed:
                    break
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if s is c else c).sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                if (c, b) in self._conns:
                    self._conns.remove((c, b))
            for s in (c, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self, on):
        """Cut the network (every open connection dies, new ones go nowhere), or restore it."""
        self.down = on
        if on:
            with self._lock:
                conns = list(self._conns)
            for c, b in conns:
                for s in (c, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self):
        self.closed = True
        self.cut(True)
        try:
            self.listener.close()
        except OSError:
            pass


_HEAP_LINE = re.compile(r"tukar-heap: used=(\d+) free=(\d+)")
_MAX_FREE = re.compile(r"max free sz: (\d+)")


class FirmwareProcess:
    """One MicroPython process running the firmware from `flash` with `heap` bytes of GC heap."""

    def __init__(self, flash, hw_port, heap=DEFAULT_HEAP, micropython=None, name="cabinet",
                 report=None):
        self.flash = pathlib.Path(flash)
        self.hw_port = hw_port
        self.heap = heap
        self.binary = binary(micropython)
        self.name = name
        self.report = report or (lambda text: None)
        self.proc = None
        self.tail = collections.deque(maxlen=40)
        self._killed = set()  # processes whose end we caused (a power cut, a reset): no report
        self.ended = None  # the last abnormal end: {"code", "why", "output"}
        self.probes = []  # (used, free, max_free_bytes) for each heap probe answered
        self.memory_errors = 0  # MemoryError lines printed, over every start
        self.first_memory_error = None  # the output up to the first of them
        self._probe = None
        self._log = None
        self.starts = 0
        self.started_at = None  # time.monotonic() of the last start
        self.env = {}  # more environment for the process (the simulator's TUKAR_FW_VERSION)

    def start(self):
        env = dict(os.environ)
        env.update(self.env)
        env["TUKAR_HW"] = "127.0.0.1:%d" % self.hw_port
        # The frozen stand-ins first (make micropython freezes them, and builds `machine` in C);
        # their source stays on the path for a binary built without them (`machine` needs the C
        # module all the same).
        env["MICROPYPATH"] = ".frozen:%s" % MPSHIM
        self._log = open(self.flash / "console.log", "a")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([str(self.binary), "-X", "heapsize=%s" % self.heap, "main.py"],
                                     cwd=self.flash, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.starts += 1
        threading.Thread(target=self._read_output, args=(self.proc, self._log), daemon=True).start()
        return self.proc

    def _read_output(self, proc, log):
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            try:
                log.write(line + "\n")
                log.flush()
            except (OSError, ValueError):
                pass
            if "MemoryError" in line:
                self.memory_errors += 1
                if self.first_memory_error is None:
                    self.first_memory_error = list(self.tail)[-8:]
            m = _HEAP_LINE.search(line)
            if m:
                self._probe = [int(m.group(1)), int(m.group(2)), None]
                continue
            m = _MAX_FREE.search(line)
            if m and self._probe is not None:
                self._probe[2] = int(m.group(1)) * 16
                self.probes.append(tuple(self._probe))
                self._probe = None
        code = proc.wait()
        for f in (log, proc.stdout):  # a boot loop starts hundreds: no descriptor may stay open
            try:
                f.close()
            except (OSError, AttributeError):
                pass
        if proc in self._killed:
            self._killed.discard(proc)
        else:
            self.ended = {"code": code, "why": self.why(code), "output": list(self.tail)}
            self.report("firmware process ended (%s, exit status %s). Its last output:\n  %s" % (
                self.ended["why"], code, "\n  ".join(self.ended["output"][-15:]) or "(none)"))

    def why(self, code):
        text = "\n".join(self.tail)
        if "MemoryError" in text:
            return "MemoryError: the heap (-X heapsize=%s) is too small" % self.heap
        if "Traceback" in text:
            return "crash: an uncaught exception"
        if code is not None and code < 0:
            return "killed by signal %d" % -code
        return "exited"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a power cut or a reset: nothing in the process runs after it."""
        p = self.proc
        if p is not None:
            self._killed.add(p)
        if p is not None and p.poll() is None:
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def probe(self, server, timeout=5.0):
        """Ask the firmware process for a heap probe (gc.collect, then used, free and the largest
        free block); returns (used, free, max_free) or None when it did not answer in time."""
        n = len(self.probes)
        with server.lock:
            server.notify("M", 0)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.probes) > n:
                return self.probes[-1]
            time.sleep(0.01)
        return None
