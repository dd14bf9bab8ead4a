"""A whole over-the-air update through `tukar sim` and `tukar ota`, each in its own process on a
real broker: the image served over HTTP from the host, the signed command, the progress events,
the reset into the new image and its self-test; and an image whose self-test fails (it never
reaches the broker), rolled back by the bootloader and reported by the old image. Both in both
runtimes: the firmware in CPython (sped up), and frozen in the 32-bit MicroPython unix port (real
time), where `esp32.Partition` is the frozen stand-in over the same partition files."""
import json
import subprocess
import sys

import pytest
from brokers import mqtt_broker  # noqa: F401 (a fixture)
from test_sim_e2e import KEY, ROOT, RUNTIMES, speed_of, start_sim, stop_sim

from tukar_tools import schemas
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner
from tukar_tools.shim import esp32 as shim_esp32


def tukar_ota(port, prefix, image, version, timeout=120):
    cmd = [sys.executable, "-m", "tukar_tools.cli", "ota", "--cabinet", "sim-1", "--image",
           str(image), "--version", version, "--key", SIM_KEY_HEX, "--broker",
           "127.0.0.1:%d" % port, "--prefix", prefix, "--timeout", str(timeout), "--cabinet-clock"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)


def boot_sim(port, tmp_path, prefix, speed, runtime):
    if runtime != "cpython":
        speed = speed_of(runtime)  # MicroPython runs on its own clock
    proc = start_sim(port, tmp_path, "--prefix", prefix, "--fill", "6", "--speed", str(speed),
                     runtime=runtime)
    r = Runner("127.0.0.1", port, prefix, "sim-1", KEY, speed, out=lambda line: None)
    r.step({"do": "expect_status", "value": "online", "within_s": 30})
    r.step({"do": "cmd", "cmd": "set_mode", "args": {"mode": "maintenance"}})
    return proc, r


def info_fw(r):
    """The firmware version of the last `info` the cabinet published."""
    for topic, payload, _ in reversed(list(r.obs.records)):
        if topic == r.obs.base + "info":
            return json.loads(payload)["fw"]
    return None


def events(r, kind):
    return [e for e in r.obs.events if e["type"] == kind]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_whole_update_in_tukar_sim(mqtt_broker, tmp_path, runtime):
    image = tmp_path / "fw-0.2.0.bin"
    image.write_bytes(shim_esp32.make_image("0.2.0", size=200 * 1024))
    prefix = "ota1" + runtime[0]
    proc, r = boot_sim(mqtt_broker.port, tmp_path / "flash", prefix, 2.0, runtime)
    try:
        res = tukar_ota(mqtt_broker.port, prefix, image, "0.2.0")
        assert res.returncode == 0, res.stderr
        assert "runs 0.2.0" in res.stderr and "100%" in res.stderr
        r.wait_for(lambda: info_fw(r) == "0.2.0" or None, 30, "info with fw 0.2.0")
        assert events(r, "OtaStarted") and events(r, "OtaProgress") and events(r, "OtaApplied")
        assert any(e["reason"] == "update" for e in events(r, "Boot"))
        for topic, payload, _ in list(r.obs.records):
            if topic.endswith("/event") or topic.endswith("/ack"):
                assert schemas.errors(topic, payload) == [], payload
        # the same version again is refused, with the cabinet's reason, and a non-zero exit
        res = tukar_ota(mqtt_broker.port, prefix, image, "0.2.0", timeout=20)
        assert res.returncode == 1 and "not_newer" in res.stderr, res.stderr
    finally:
        r.obs.close()
        err = stop_sim(proc)
    assert "Traceback" not in err, err
    flash = str(tmp_path / "flash" / "sim-1") + "/"
    assert shim_esp32.state(flash) == {"boot": "ota_1", "running": "ota_1",
                                       "states": {"ota_0": "valid", "ota_1": "valid"}}
    assert shim_esp32.read(flash, "ota_1", 0, len(image.read_bytes())) == image.read_bytes()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_image_that_fails_its_self_test_is_rolled_back_and_reported(mqtt_broker, tmp_path,
                                                                        runtime):
    image = tmp_path / "fw-0.3.0.bin"
    image.write_bytes(shim_esp32.make_image("0.3.0", size=64 * 1024, fault="no_broker"))
    prefix = "ota2" + runtime[0]
    proc, r = boot_sim(mqtt_broker.port, tmp_path / "flash", prefix, 10.0, runtime)
    try:
        # In real time (MicroPython) the self-test's 120 s, the watchdog's 5 and two boots.
        res = tukar_ota(mqtt_broker.port, prefix, image, "0.3.0",
                        timeout=120 if runtime == "cpython" else 240)
        assert res.returncode == 1, res.stderr
        assert "rolled back" in res.stderr, res.stderr
        back = events(r, "OtaRolledBack")
        assert back and back[0]["version"] == "0.3.0" and back[0]["running"] == "0.1.0"
        assert any(e["reason"] == "watchdog" for e in events(r, "Boot"))
        r.wait_for(lambda: info_fw(r) == "0.1.0" or None, 30, "info with fw 0.1.0")
    finally:
        r.obs.close()
        stop_sim(proc)
    assert shim_esp32.state(str(tmp_path / "flash" / "sim-1") + "/")["states"]["ota_1"] == "aborted"
