"""The test harness itself: the checkout under test supplies the firmware and the tools (not an
installed checkout), and the MicroPython VM's allocation probes collect only where it is safe."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_firmware_and_tools_in_use_are_this_checkouts():
    import tukar
    import tukar_tools
    from tukar_tools import hostenv, mpvm

    assert pathlib.Path(tukar_tools.__file__).resolve().parent == ROOT / "tools" / "tukar_tools"
    assert pathlib.Path(tukar.__file__).resolve().parent == ROOT / "firmware" / "tukar"
    assert mpvm.FIRMWARE.resolve() == ROOT / "firmware"
    assert hostenv.FIRMWARE.resolve() == ROOT / "firmware"


def test_a_subprocess_runs_this_checkouts_firmware_too():
    code = ("import tukar_tools.hostenv, tukar, tukar_tools.mpvm as m; "
            "print(tukar.__file__); print(m.FIRMWARE)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    tukar_file, firmware = r.stdout.split()
    assert pathlib.Path(tukar_file).resolve().parent == ROOT / "firmware" / "tukar"
    assert pathlib.Path(firmware).resolve() == ROOT / "firmware"


def test_vm_code_that_collects_inside_a_function_is_refused():
    from tukar_tools import mpvm

    bad = "import gc\ndef f():\n    x = 1\n    gc.collect()\n    return x\nf()\n"
    assert mpvm.nested_collects(bad) == [4]
    assert mpvm.nested_collects("import gc\ngc.collect()\ndef f():\n    return 1\n") == []
    with pytest.raises(mpvm.VMError, match="inside a function"):
        mpvm.run(bad)


def test_alloc_probe_collects_at_the_top_level_only():
    from tukar_tools import mpvm

    code = mpvm.alloc_probe("x = [i, i]", setup="y = 0")
    assert mpvm.nested_collects(code) == []
    assert "\ngc.collect()\n" in code  # a statement of its own, at the top level


@pytest.mark.mpy
def test_alloc_probe_figures_in_the_vm():
    from tukar_tools import mpvm

    def alloc(body, n):
        out = mpvm.run(mpvm.alloc_probe(body, n=n)).stdout.split()
        return int(out[out.index("alloc") + 1])

    assert alloc("x = i + 1", 50) == 0
    a50, a100 = alloc("x = [i, i]", 50), alloc("x = [i, i]", 100)
    assert a50 > 0 and a100 == 2 * a50  # a fixed size per list, the same in every run
