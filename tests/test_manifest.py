# The frozen-build manifests: valid manifest syntax, the port's manifest first, then the one list of
# what every image freezes (firmware/manifest.py), which the unix build of `make test` uses too.
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "boards", "*", "manifest.py")))
FIRMWARE_MANIFEST = os.path.join(ROOT, "firmware", "manifest.py")
HOST_MANIFEST = os.path.join(ROOT, "tools", "tukar_tools", "mpshim", "manifest.py")
IDS = [p.split(os.sep)[-2] for p in MANIFESTS]


def run_manifest(path, follow=False):
    """Execute a manifest the way MicroPython's manifestfile does, with recording stubs; with
    `follow`, includes of the project's own manifests are executed too (relative to the includer)."""
    calls = []

    def include(manifest, **kw):
        calls.append(("include", manifest, kw))
        target = os.path.normpath(os.path.join(os.path.dirname(path), manifest))
        if follow and "$(" not in manifest and os.path.isfile(target):
            calls.extend(run_manifest(target, follow))

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
def test_every_board_freezes_the_firmware_manifest(path):
    calls = run_manifest(path)
    includes = [os.path.normpath(os.path.join(os.path.dirname(path), c[1]))
                for c in calls if c[0] == "include"]
    assert FIRMWARE_MANIFEST in includes
    assert [c for c in calls if c[0] in ("package", "module", "freeze")] == []  # one list only


def test_the_firmware_manifest_freezes_asyncio_umqtt_and_tukar():
    calls = run_manifest(FIRMWARE_MANIFEST)
    assert ("include", "$(MPY_DIR)/extmod/asyncio", {}) in calls
    assert ("require", "umqtt.simple", {}) in calls


def test_the_unix_build_freezes_the_firmware_manifest_and_only_the_host_stand_ins_beside_it():
    calls = run_manifest(HOST_MANIFEST)
    includes = [os.path.normpath(os.path.join(os.path.dirname(HOST_MANIFEST), c[1]))
                for c in calls if c[0] == "include"]
    assert includes == [FIRMWARE_MANIFEST]
    assert sorted(c[1] for c in calls if c[0] == "module") == [
        "esp32.py", "esp32_partition.py", "machine.py", "network.py", "ntptime.py"]
    assert [c for c in calls if c[0] in ("package", "freeze", "require")] == []
    for path in MANIFESTS:  # the production images never freeze the stand-ins
        followed = run_manifest(path, follow=True)
        assert [c for c in followed if c[0] == "module"] == []


@pytest.mark.parametrize("path", MANIFESTS + [FIRMWARE_MANIFEST, HOST_MANIFEST],
                         ids=IDS + ["firmware", "unix"])
def test_manifest_freezes_the_tukar_package_from_firmware(path):
    pkgs = [c for c in run_manifest(path, follow=True) if c[0] == "package"]
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
