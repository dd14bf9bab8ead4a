# The frozen-build manifests: valid manifest syntax, the port's manifest first, the tukar package.
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "boards", "*", "manifest.py")))
IDS = [p.split(os.sep)[-2] for p in MANIFESTS]


def run_manifest(path):
    """Execute a manifest the way MicroPython's manifestfile does, with recording stubs."""
    calls = []

    def include(manifest, **kw):
        calls.append(("include", manifest, kw))

    def package(name, files=None, base_path=".", opt=None):
        calls.append(("package", name, os.path.normpath(os.path.join(os.path.dirname(path), base_path)), opt))

    def freeze(path_, script=None, opt=None):
        calls.append(("freeze", path_, script, opt))

    def module(name, base_path=".", opt=None):
        calls.append(("module", name, base_path, opt))

    def require(name, **kw):
        calls.append(("require", name, kw))

    def metadata(**kw):
        calls.append(("metadata", kw))

    env = {"include": include, "package": package, "freeze": freeze, "module": module,
           "require": require, "metadata": metadata, "options": None}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), env)
    return calls


def test_a_manifest_exists_for_every_board():
    boards = sorted(os.path.basename(os.path.dirname(p))
                    for p in glob.glob(os.path.join(ROOT, "boards", "*", "board.json")))
    assert IDS == boards


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_manifest_includes_the_port_manifest_first(path):
    calls = run_manifest(path)
    assert calls[0][:2] == ("include", "$(PORT_DIR)/boards/manifest.py")


@pytest.mark.parametrize("path", MANIFESTS, ids=IDS)
def test_manifest_freezes_the_tukar_package_from_firmware(path):
    pkgs = [c for c in run_manifest(path) if c[0] == "package"]
    assert len(pkgs) == 1
    _, name, base, opt = pkgs[0]
    assert name == "tukar"
    assert base == os.path.join(ROOT, "firmware")
    assert os.path.isfile(os.path.join(base, "tukar", "__init__.py"))
    assert opt == 3


def test_every_frozen_module_compiles_with_mpy_cross():
    files = sorted(glob.glob(os.path.join(ROOT, "firmware", "tukar", "*.py")))
    assert len(files) > 5
    failed = []
    for f in files:
        r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", os.devnull, f],
                           capture_output=True, text=True)
        if r.returncode:
            failed.append(r.stderr.strip())
    assert failed == []
