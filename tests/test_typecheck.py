# pyright checks the firmware against the ESP32 MicroPython stubs (make typings installs them).
import glob
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYRIGHT = os.path.join(ROOT, ".venv", "bin", "pyright")
STUBS = os.path.join(ROOT, "typings", "machine.pyi")
FIRMWARE = sorted(glob.glob(os.path.join(ROOT, "firmware", "tukar", "*.py")))

pytestmark = pytest.mark.skipif(not os.path.exists(STUBS), reason="run `make typings` first")


def pyright(*args):
    r = subprocess.run([PYRIGHT, "--outputjson", "--project", os.path.join(ROOT, "pyrightconfig.json")]
                       + list(args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def report():
    return pyright()


def errors_in(report, path):
    return ["%d: %s" % (d["range"]["start"]["line"] + 1, d["message"].splitlines()[0])
            for d in report["generalDiagnostics"] if d["severity"] == "error" and d["file"] == path]


def test_pyright_checks_every_firmware_file(report):
    assert report["summary"]["filesAnalyzed"] >= len(FIRMWARE)


@pytest.mark.parametrize("path", FIRMWARE, ids=[os.path.basename(p) for p in FIRMWARE])
def test_firmware_file_has_no_type_errors(report, path):
    assert errors_in(report, path) == []


def test_firmware_has_no_type_errors(report):
    assert report["summary"]["errorCount"] == 0


def test_stubs_catch_a_wrong_argument_to_machine(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import machine\nmachine.I2C(0).writeto_mem(0x20, b'\\x14', b'\\x00')\n")
    r = pyright(str(probe))
    assert r["summary"]["errorCount"] == 1
    assert "memaddr" in r["generalDiagnostics"][0]["message"]
