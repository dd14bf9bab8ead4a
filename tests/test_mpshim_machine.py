"""The unix build's `machine` (the C module _tukarhw, tools/tukar_tools/mpshim/c/tukarhw) against a
scripted host: the exact requests of mprt.HardwareServer's wire protocol, the host's errors as the
ESP32 port's exceptions, the 128-byte transfer limit, the notes (a pin edge to its handler, the
flash fault, the heap probe), two threads at once, and what it costs the heap: as on the device,
next to nothing."""
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from tukar_tools import mprt

EIO, ENODEV, EOPNOTSUPP = 5, 19, 95


class ScriptedHost:
    """Accepts one firmware process's two sockets, records every request as (op, args) and answers
    as `answer(op, args)` says: (status, data), None for success with no data, or "close" to close
    the socket. `notes` is the second socket once the process has connected."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda op, a: None)
        self.requests = []
        self.notes = None
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(2)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            rpc, _ = self.listener.accept()
            self.notes, _ = self.listener.accept()
        except OSError:
            return
        f = rpc.makefile("rb", buffering=0)
        while True:
            head = f.read(2)
            if len(head) < 2:
                return
            body = f.read(struct.unpack("<H", head)[0])
            op, a = body[0], bytes(body[1:])
            self.requests.append((op, a))
            reply = self.answer(op, a)
            if reply == "close":
                rpc.shutdown(socket.SHUT_RDWR)
                rpc.close()
                return
            status, data = reply or (0, b"")
            try:
                rpc.sendall(struct.pack("<HB", len(data) + 1, status) + data)
            except OSError:
                return

    def note(self, kind, arg):
        self.notes.sendall(bytes((ord(kind), arg)))

    def start(self, script, heap="256K"):
        env = {"MICROPYPATH": ".frozen", "TUKAR_HW": "127.0.0.1:%d" % self.port}
        return subprocess.Popen([str(mprt.binary()), "-X", "heapsize=" + heap, "-c", script],
                                env=env, cwd="/", stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, script, heap="256K"):
        p = self.start(script, heap)
        out = p.communicate(timeout=60)[0]
        self.listener.close()
        return p.returncode, out


# What each call sends, in order: (op, args) as mprt.HardwareServer._dispatch unpacks them. A Pin
# made as an argument sends its own init first.
def _init(pin, mode=-1, pull=-1, value=255):
    return (1, struct.pack("<BbbB", pin, mode, pull, value))


WIRE = [
    ("Pin(5, Pin.OUT, value=1)", [_init(5, 3, -1, 1)]),
    ("Pin(6)", [_init(6)]),
    ("Pin(6, Pin.IN, None)", [_init(6, 1, -2)]),
    ("Pin(6, None, Pin.PULL_UP, 0)", [_init(6, -1, 2, 0)]),
    ("Pin(6).init(mode=Pin.IN, pull=Pin.PULL_DOWN, value=[], drive=1)", [_init(6), _init(6, 1, 1, 0)]),
    ("p5.value()", [(2, b"\x05")]),
    ("p5.value(7)", [(3, b"\x05\x01")]),
    ("p5(0)", [(3, b"\x05\x00")]),
    ("p5()", [(2, b"\x05")]),
    ("p5.on()", [(3, b"\x05\x01")]),
    ("p5.off()", [(3, b"\x05\x00")]),
    ("p5.irq(lambda p: None, Pin.IRQ_FALLING)", [(4, b"\x05\x02")]),
    ("p5.irq(lambda p: None)", [(4, b"\x05\x03")]),
    ("p5.irq(handler=None, trigger=Pin.IRQ_RISING)", [(4, b"\x05\x00")]),
    ("I2C(1, scl=Pin(22), sda=21, freq=100000, timeout=1000)",
     [_init(22), (10, struct.pack("<BbbII", 1, 22, 21, 100000, 1000))]),
    ("I2C()", [(10, struct.pack("<BbbII", 0, -1, -1, 400000, 50000))]),
    ("i2c.init(18, sda=19)", [(16, struct.pack("<BbbII", 0, 18, 19, 400000, 50000))]),
    ("i2c.readfrom_mem(0x50, 0x10, 4)", [(11, struct.pack("<BBIBH", 0, 0x50, 0x10, 8, 4))]),
    ("i2c.readfrom_mem_into(0x50, 0x1234, bytearray(3), addrsize=16)",
     [(11, struct.pack("<BBIBH", 0, 0x50, 0x1234, 16, 3))]),
    ("i2c.writeto_mem(0x50, 0x20, b'ab')", [(12, struct.pack("<BBIB", 0, 0x50, 0x20, 8) + b"ab")]),
    ("i2c.readfrom(0x40, 2, False)", [(13, struct.pack("<BBBH", 0, 0x40, 0, 2))]),
    ("i2c.readfrom_into(0x40, bytearray(3))", [(13, struct.pack("<BBBH", 0, 0x40, 1, 3))]),
    ("i2c.writeto(0x40, b'\\x10\\x20')", [(14, b"\x00\x40\x01\x10\x20")]),
    ("i2c.writevto(0x40, (b'\\x01', bytearray(b'\\x02\\x03')), False)", [(14, b"\x00\x40\x00\x01\x02\x03")]),
    ("i2c.scan()", [(15, b"\x00")]),
    ("SoftI2C(Pin(4), 15, freq=50000)", [_init(4), (10, struct.pack("<BbbII", 255, 4, 15, 50000, 50000))]),
    ("SPI(1, baudrate=1000000, polarity=0, phase=0, bits=8, sck=Pin(14), mosi=13, miso=12)",
     [_init(14), (20, struct.pack("<BI", 1, 1000000))]),
    ("SPI()", [(20, struct.pack("<BI", 1, 500000))]),
    ("spi.init(2000000)", [(20, struct.pack("<BI", 1, 2000000))]),
    ("spi.write(b'\\x01\\x02')", [(21, b"\x01\x01\x02")]),
    ("spi.read(2, 0xf0)", [(21, b"\x01\xf0\xf0")]),
    ("spi.readinto(bytearray(2))", [(21, b"\x01\x00\x00")]),
    ("spi.write_readinto(b'\\x0f\\xf0', bytearray(2))", [(21, b"\x01\x0f\xf0")]),
    ("ADC(Pin(34), atten=ADC.ATTN_11DB)", [_init(34), (30, b"\x22\x03")]),
    ("ADC(35)", [(30, b"\x23\x00")]),
    ("adc.atten(ADC.ATTN_6DB)", [(30, b"\x22\x02")]),
    ("adc.read()", [(31, b"\x22\x00")]),
    ("adc.read_u16()", [(31, b"\x22\x01")]),
    ("adc.read_uv()", [(31, b"\x22\x02")]),
    ("WDT(timeout=8000)", [(40, struct.pack("<I", 8000))]),
    ("WDT(0).feed()", [(40, struct.pack("<I", 5000)), (41, b"")]),
    ("reset_cause()", [(50, b"")]),
    ("unique_id()", [(51, b"")]),
]

_SETUP = [("from machine import *\np5 = Pin(5)\ni2c = I2C(0)\nspi = SPI(1)\nadc = ADC(34)",
           [(53, b"micropython GIL %d frozen" % (2**31 - 1)),  # HELLO, at the import
            _init(5), (10, struct.pack("<BbbII", 0, -1, -1, 400000, 50000)),
            (20, struct.pack("<BI", 1, 500000)), (30, b"\x22\x00")])]


def test_every_call_sends_what_the_host_unpacks():
    host = ScriptedHost()
    code, out = host.run("\n".join(c for c, _ in _SETUP + WIRE) + "\nprint('end')\n")
    assert code == 0 and out.strip() == "end", out
    assert host.requests == [r for _, rs in _SETUP + WIRE for r in rs]


def answers(op, a):
    if op == 1 and a[0] == 40 and a[1] == 3:
        return 2, b"pin can only be input"
    if op == 2:
        return 0, bytes((a[0] & 1,))
    if op == 16:
        return 1, struct.pack("<H", EOPNOTSUPP)
    if op == 11:
        if a[1] == 0x77:
            return 1, struct.pack("<H", ENODEV)
        return 0, bytes(range(1, struct.unpack_from("<H", a, 7)[0] + 1))
    if op == 13:
        return 0, bytes(i * 3 for i in range(struct.unpack_from("<H", a, 3)[0]))
    if op == 14:
        return 0, bytes((len(a) - 3,))
    if op == 15:
        return 0, b"\x20\x21\x70"
    if op == 21:
        return 0, bytes(b ^ 0xFF for b in a[1:])
    if op == 31:
        return 0, struct.pack("<I", (4095, 65535, 3100000)[a[1]])
    if op == 50:
        return 0, b"\x03"
    if op == 51:
        return 0, b"\xde\xad\xbe\xef\x00\x01"
    return None


RESULTS = """
from machine import *
def t(f):
    try:
        print(repr(f()))
    except Exception as e:
        print(type(e).__name__, e.args)
i2c = I2C(0)
spi = SPI(1)
adc = ADC(34)
t(lambda: Pin(40, Pin.OUT))
t(lambda: Pin(256))
t(lambda: Pin(5, foo=1))
t(lambda: (Pin(5) is Pin(5), repr(Pin(5)), Pin(7).value(), Pin(7)()))
t(lambda: i2c.init())
t(lambda: I2C(0, scl=1, sda=2, baud=5))
t(lambda: I2C(0, scl="x", sda=2))
t(lambda: i2c.readfrom_mem(0x50, 0, 4))
t(lambda: i2c.readfrom_mem(0x77, 0, 2))
t(lambda: i2c.readfrom_mem(0x50, 0, 2, size=3))
t(lambda: i2c.readfrom(0x40, 4))
t(lambda: i2c.writeto(0x40, bytes(122)))
t(lambda: i2c.writeto(0x40, bytes(123)))
t(lambda: i2c.writeto_mem(0x50, 0, bytes(119)))
t(lambda: i2c.writevto(0x40, [bytes(100), bytes(30)]))
t(lambda: i2c.scan())
t(lambda: (isinstance(SoftI2C(1, 2), I2C), isinstance(i2c, SoftI2C)))
t(lambda: SPI(2, bits=16))
t(lambda: spi.read(2))
t(lambda: spi.write(bytes(125)))
t(lambda: spi.read(125))
t(lambda: spi.write_readinto(b"1", bytearray(2)))
t(lambda: (adc.read(), adc.read_u16(), adc.read_uv()))
t(lambda: (adc.width(ADC.WIDTH_10BIT), adc.read()))
t(lambda: ADC(35, width=3))
t(lambda: WDT(1))
t(lambda: (reset_cause(), unique_id(), HARD_RESET, WDT_RESET))
t(lambda: (freq(), freq(240000000)))
t(lambda: freq(1))
t(lambda: (idle(), disable_irq(), enable_irq(0), time_pulse_us(Pin(3), 1), time_pulse_us(Pin(4), 1)))
"""

EXPECTED = [
    "ValueError ('pin can only be input',)",
    "ValueError ('invalid pin',)",
    "TypeError (\"unexpected keyword argument 'foo'\",)",
    "(True, 'Pin(5)', 1, 1)",
    "OSError (%d,)" % EOPNOTSUPP,
    "TypeError (\"unexpected keyword argument 'baud'\",)",
    "TypeError ('pin must be a Pin or an int',)",
    "b'\\x01\\x02\\x03\\x04'",
    "OSError (%d,)" % ENODEV,
    "TypeError (\"unexpected keyword argument 'size'\",)",
    "b'\\x00\\x03\\x06\\t'",
    "122",
    "ValueError ('a transfer of 123 bytes (this machine takes at most 122)',)",
    "ValueError ('a transfer of 119 bytes (this machine takes at most 118)',)",
    "ValueError ('a transfer of 130 bytes (this machine takes at most 122)',)",
    "[32, 33, 112]",
    "(True, False)",
    "ValueError ('only 8-bit transfers are modelled',)",
    "b'\\xff\\xff'",
    "ValueError ('a transfer of 125 bytes (this machine takes at most 124)',)",
    "ValueError ('a transfer of 125 bytes (this machine takes at most 124)',)",
    "ValueError ('buffers must be the same length',)",
    "(4095, 65535, 3100000)",
    "(None, 1023)",
    "TypeError (\"unexpected keyword argument 'width'\",)",
    "ValueError (\"WDT(1) doesn't exist\",)",
    "(3, b'\\xde\\xad\\xbe\\xef\\x00\\x01', 2, 3)",
    "(160000000, None)",
    "ValueError ('frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz',)",
    "(None, 0, None, -2, -1)",
]


def test_results_and_errors_are_the_esp32_ports_with_the_hosts_errno_and_text():
    host = ScriptedHost(answers)
    code, out = host.run(RESULTS)
    assert code == 0, out
    assert out.splitlines() == EXPECTED


def test_a_pin_edge_runs_its_handler_with_the_pin_though_nothing_else_holds_it():
    host = ScriptedHost(lambda op, a: (0, b"\x01") if op == 2 else None)
    p = host.start(
        "import gc, time, machine\n"
        "hits = []\n"
        "machine.Pin(7).irq(lambda p: hits.append(p), machine.Pin.IRQ_FALLING)\n"
        "gc.collect()\n"
        "junk = [bytearray(64) for i in range(200)]\n"  # the handler's memory, were it freed
        "print('ready')\n"
        "while not hits:\n"
        "    time.sleep_ms(5)\n"
        "print(hits, hits[0] is machine.Pin(7))\n")
    assert p.stdout.readline().strip() == "ready"
    host.note("I", 7)
    assert p.communicate(timeout=20)[0].strip() == "[Pin(7)] True"


def test_the_flash_fault_fails_writes_and_the_heap_probe_prints_what_mprt_reads(tmp_path):
    host = ScriptedHost()
    p = host.start(
        "import machine, time\n"
        "def t(*a, **k):\n"
        "    try:\n"
        "        open(*a, **k).close()\n"
        "        return 'ok'\n"
        "    except OSError as e:\n"
        "        return e.args[0]\n"
        "f = %r\n"
        "open(f, 'a').close()\n"  # there before the fault: one noted at once found no file to read
        "print('ready')\n"
        "while t(f, 'a') == 'ok':\n"
        "    time.sleep_ms(5)\n"
        "print([t(f, m) for m in ('w', 'r+', 'r', 'rb')], t(f, mode='ab'))\n"
        "while t(f, 'w') != 'ok':\n"
        "    time.sleep_ms(5)\n"
        "print('works again')\n"
        "time.sleep_ms(300)\n" % str(tmp_path / "f.txt"))
    assert p.stdout.readline().strip() == "ready"
    host.note("F", 1)
    assert p.stdout.readline().strip() == "[%d, %d, 'ok', 'ok'] %d" % (EIO, EIO, EIO)
    host.note("F", 0)
    assert p.stdout.readline().strip() == "works again"
    host.note("M", 0)
    out = p.communicate(timeout=20)[0]
    used, free = (int(x) for x in mprt._HEAP_LINE.search(out).groups())  # as mprt reads them
    assert 0 < used < 16384 and used + free > 200000, out
    assert mprt._MAX_FREE.search(out), out


def test_a_file_opened_to_write_is_told_to_the_host_first_with_its_path(tmp_path):
    """FLASH_WRITE (op 60), the crash-point harness's flash writes: for every mode that writes,
    appends or updates, before the file is opened; never for a read."""
    host = ScriptedHost()
    code, out = host.run(
        "import machine\n"
        "d = %r\n"
        "open(d + '/a', 'w').close()\n"
        "open(d + '/a', 'r').close()\n"
        "open(d + '/a').close()\n"
        "open(d + '/a', mode='ab').close()\n"
        "open(d + '/a', 'r+b').close()\n"
        "try:\n"
        "    open(d + '/none/' + 'x' * 150, 'w')\n"
        "except OSError as e:\n"
        "    print(e.args[0])\n"
        "print('end')\n" % str(tmp_path))
    assert code == 0 and out.split() == ["2", "end"], out  # ENOENT, after telling the host
    path = (str(tmp_path) + "/a").encode()
    long = (str(tmp_path) + "/none/" + "x" * 150).encode()[:125]  # what a request holds of it
    assert [r for r in host.requests if r[0] == 60] == [(60, path)] * 3 + [(60, long)]


def test_the_host_not_answering_a_flash_write_means_the_file_is_never_opened(tmp_path):
    """A power cut at a flash write: the host closes the socket instead of answering (the
    harness kills the process), and nothing reaches the file."""
    f = tmp_path / "state.json"
    f.write_text("old")
    host = ScriptedHost(lambda op, a: "close" if op == 60 else None)
    code, out = host.run("import machine\ntry:\n    open(%r, 'w').write('new')\n"
                         "except SystemExit as e:\n    print(e.args[0])\n" % str(f))
    assert code == 0 and out.strip() == "tukar: the host's hardware socket closed", out
    assert f.read_text() == "old"


def test_two_threads_call_at_once_and_a_blocked_call_lets_the_other_run():
    def slow(op, a):
        if op == 2:
            if a[0] == 98:
                time.sleep(0.5)
            return 0, bytes((a[0] & 1,))
        return None
    host = ScriptedHost(slow)
    code, out = host.run(
        "import _thread, time, machine\n"
        "P = machine.Pin\n"
        "done = []\n"
        "def worker(n):\n"
        "    for i in range(200):\n"
        "        assert P(n).value() == n & 1, 'a reply read by the wrong thread'\n"
        "    done.append(n)\n"
        "for n in (10, 11, 12):\n"
        "    _thread.start_new_thread(worker, (n,))\n"
        "for i in range(200):\n"
        "    assert P(13).value() == 1\n"
        "while len(done) < 3:\n"
        "    time.sleep_ms(10)\n"
        "spins = [0, True]\n"
        "def spin():\n"
        "    while spins[1]:\n"
        "        spins[0] += 1\n"
        "_thread.start_new_thread(spin, ())\n"
        "time.sleep_ms(20)\n"
        "before = spins[0]\n"
        "P(98).value()\n"
        "print(sorted(done), spins[0] - before > 1000)\n"
        "spins[1] = False\n")
    assert code == 0 and out.strip() == "[10, 11, 12] True", out


def test_machine_takes_next_to_no_heap_and_its_objects_none():
    host = ScriptedHost()
    code, out = host.run(
        "import gc\n"
        "pins = [None] * 13\n"
        "adc = i2c = spi = wdt = a = b = None\n"
        "gc.collect()\n"
        "a = gc.mem_alloc()\n"
        "import machine\n"
        "gc.collect()\n"
        "b = gc.mem_alloc()\n"
        "for i in range(13):\n"
        "    pins[i] = machine.Pin(i, machine.Pin.OUT, value=0)\n"
        "adc = machine.ADC(pins[0], atten=machine.ADC.ATTN_11DB)\n"
        "i2c = machine.I2C(0, scl=pins[1], sda=pins[2])\n"
        "spi = machine.SPI(1, baudrate=1000000)\n"
        "wdt = machine.WDT(timeout=5000)\n"
        "gc.collect()\n"
        "print(b - a, gc.mem_alloc() - b)\n")
    assert code == 0, out
    module, objects = (int(x) for x in out.split())
    # the module object machine.py is imported as (16 bytes) and builtins.open's override (48);
    # the Python stand-in took 3 KB at import and 32 bytes or more an object
    assert (module, objects) == (64, 0), out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process's CPU time in /proc")
def test_a_reset_tells_the_host_then_blocks_without_using_the_cpu():
    host = ScriptedHost()
    p = host.start("import machine\nmachine.reset()\nprint('after')\n")
    end = time.monotonic() + 10
    while (52, b"") not in host.requests and time.monotonic() < end:
        time.sleep(0.01)
    assert (52, b"") in host.requests
    time.sleep(0.5)
    assert p.poll() is None

    def cpu():
        with open("/proc/%d/stat" % p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    c0 = cpu()
    time.sleep(0.5)
    assert cpu() - c0 <= 2
    p.kill()
    assert p.communicate(timeout=10)[0] == ""


def test_without_a_host_the_import_fails_with_the_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    r = subprocess.run([str(mprt.binary()), "-c", "import machine"], capture_output=True, text=True,
                       cwd="/", timeout=30,
                       env={"MICROPYPATH": ".frozen", "TUKAR_HW": "127.0.0.1:%d" % port})
    assert r.returncode == 1 and "OSError: [Errno 111] ECONNREFUSED" in r.stdout + r.stderr


def test_the_host_closing_the_socket_ends_the_call_in_system_exit():
    host = ScriptedHost(lambda op, a: "close" if op == 2 else None)
    code, out = host.run("import machine\ntry:\n    machine.Pin(3).value()\n"
                         "except SystemExit as e:\n    print(e.args[0])\n")
    assert code == 0 and out.strip() == "tukar: the host's hardware socket closed", out
