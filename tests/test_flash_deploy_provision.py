# `tukar flash`, `tukar deploy`, `tukar provision`: the exact esptool and mpremote argument lists
# (subprocess mocked: no test touches a serial port), the deploy bundle compiled for real, the
# provisioned files as the device reads them, and every refusal.
import argparse
import json
import sys

import pytest

from tukar import startup
from tukar_tools import deploy, devport, flash, provision

PORT = "/dev/ttyUSB0"
PY = sys.executable


def image(tmp_path, chip_id=0x0000, first=0xE9, app=False, name="fw.bin"):
    head = bytearray(64)
    head[0] = first
    head[1] = 3
    head[12] = chip_id & 0xFF
    head[13] = chip_id >> 8
    if app:
        head[32:36] = b"\x32\x54\xcd\xab"
    p = tmp_path / name
    p.write_bytes(bytes(head))
    return str(p)


@pytest.fixture
def sub(mocker):
    """subprocess as devport sees it; every command succeeds. The port exists."""
    s = mocker.patch.object(devport, "subprocess")
    s.run.return_value.returncode = 0
    mocker.patch.object(devport, "check_port")
    mocker.patch.object(devport.time, "sleep")
    return s


def cli(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args(argv))


def ran(sub):
    return [c.args[0] for c in sub.run.call_args_list]


# -- flash --------------------------------------------------------------------------------------
def test_flash_erases_then_writes_at_0x1000_on_esp32(sub, tmp_path):
    fw = image(tmp_path)
    assert cli(flash, ["--port", PORT, "--firmware", fw]) == 0
    base = [PY, "-m", "esptool", "--chip", "esp32", "--port", PORT, "--baud", "460800"]
    assert ran(sub) == [base + ["erase-flash"], base + ["write-flash", "0x1000", fw]]


def test_flash_writes_at_0x0_on_esp32s3_with_the_baud_asked(sub, tmp_path):
    fw = image(tmp_path, 0x0009)
    assert cli(flash, ["--port", PORT, "--firmware", fw, "--chip", "esp32s3", "--baud", "921600"]) == 0
    assert ran(sub)[1] == [PY, "-m", "esptool", "--chip", "esp32s3", "--port", PORT, "--baud", "921600",
                           "write-flash", "0x0", fw]


def test_flash_stops_when_the_erase_fails(sub, tmp_path):
    sub.run.return_value.returncode = 2
    assert cli(flash, ["--port", PORT, "--firmware", image(tmp_path)]) == 2
    assert len(ran(sub)) == 1


def test_flash_dry_run_prints_and_runs_nothing(sub, tmp_path, capsys):
    fw = image(tmp_path)
    assert cli(flash, ["--port", PORT, "--firmware", fw, "--dry-run"]) == 0
    sub.run.assert_not_called()
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("-m esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 erase-flash")
    assert out[1].endswith("write-flash 0x1000 " + fw)


def test_flash_refuses_a_file_that_is_not_an_esp32_image(sub, tmp_path, capsys):
    assert cli(flash, ["--port", PORT, "--firmware", image(tmp_path, first=0x7F)]) == 2
    assert "is not an ESP32 image (first byte 0x7F, an image starts with 0xE9)" in capsys.readouterr().err
    sub.run.assert_not_called()


def test_flash_refuses_an_empty_file(sub, tmp_path, capsys):
    (tmp_path / "empty.bin").write_bytes(b"")
    assert cli(flash, ["--port", PORT, "--firmware", str(tmp_path / "empty.bin")]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_flash_refuses_a_missing_file(sub, tmp_path, capsys):
    assert cli(flash, ["--port", PORT, "--firmware", str(tmp_path / "nope.bin")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_flash_refuses_an_image_for_another_chip(sub, tmp_path, capsys):
    assert cli(flash, ["--port", PORT, "--firmware", image(tmp_path, 0x0009), "--chip", "esp32"]) == 2
    assert "is built for esp32s3, not esp32" in capsys.readouterr().err
    sub.run.assert_not_called()


def test_flash_refuses_an_application_image_without_bootloader(sub, tmp_path, capsys):
    assert cli(flash, ["--port", PORT, "--firmware", image(tmp_path, app=True)]) == 2
    assert "application image without the bootloader" in capsys.readouterr().err


def test_flash_refuses_a_chip_tukar_does_not_support(sub, tmp_path, capsys):
    assert cli(flash, ["--port", PORT, "--firmware", image(tmp_path, 0x0002)]) == 2
    assert "built for esp32s2" in capsys.readouterr().err


def test_a_missing_port_is_refused_with_the_ports_there_are(mocker, tmp_path, capsys):
    run = mocker.patch.object(devport.subprocess, "run")
    mocker.patch.object(devport, "serial_ports", return_value=["/dev/ttyUSB1"])
    assert cli(flash, ["--port", str(tmp_path / "ttyUSB9"), "--firmware", image(tmp_path)]) == 2
    assert "ttyUSB9 does not exist (serial ports here: /dev/ttyUSB1)" in capsys.readouterr().err
    run.assert_not_called()


def test_no_serial_port_at_all_says_to_plug_the_board_in(mocker):
    mocker.patch.object(devport, "serial_ports", return_value=[])
    with pytest.raises(devport.DeviceError, match="none; is the board plugged in"):
        devport.check_port("/dev/ttyUSB9")


def test_a_network_serial_url_is_accepted_as_a_port():
    devport.check_port("rfc2217://bench-rig:4000")


# -- deploy -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "tukar-12-wroom"
    return out, deploy.build("tukar-12-wroom", out)


def test_deploy_compiles_every_firmware_module(bundle):
    out, sizes = bundle
    modules = sorted(p.stem for p in (deploy.ROOT / "firmware" / "tukar").glob("*.py"))
    assert sorted(p.stem for p in (out / "tukar").glob("*.mpy")) == modules
    assert list((out / "tukar").glob("*.py")) == []
    for m in modules:
        data = (out / "tukar" / (m + ".mpy")).read_bytes()
        assert data[:2] == b"M\x06"  # .mpy version 6 (MicroPython 1.23 and later)
        assert sizes["tukar/%s.mpy" % m] == len(data)


def test_deploy_keeps_main_and_boot_as_source_with_the_board_file_and_profiles(bundle):
    out, sizes = bundle
    assert (out / "main.py").read_text() == (deploy.ROOT / "firmware" / "main.py").read_text()
    assert (out / "boot.py").is_file()
    assert json.loads((out / "board.json").read_text())["board"] == "tukar-12-wroom"
    assert sorted(p.name for p in (out / "profiles").iterdir()) == ["pack72v.json", "ref48v.json", "sbs48v.json"]


def test_deploy_reports_the_bundle_size_and_every_file_when_verbose(bundle, capsys):
    _, sizes = bundle
    deploy.report(sizes, verbose=True)
    out = capsys.readouterr().out.splitlines()
    total = sum(v for k, v in sizes.items() if k.endswith(".mpy"))
    assert out[-1].startswith("bundle: %d modules, %d bytes of .mpy" % (len(list(
        (deploy.ROOT / "firmware" / "tukar").glob("*.py"))), total))
    assert "%7d  tukar/core.mpy" % sizes["tukar/core.mpy"] in out


def board_image(sub, frozen=False, heap=2_000_000):
    """What the board answers to the deploy's probe."""
    sub.run.return_value.stdout = "tukar-image " + json.dumps({"frozen": frozen, "heap": heap})
    sub.run.return_value.stderr = ""


def test_deploy_enters_maintenance_asks_the_image_then_copies_in_one_mpremote_call(sub, tmp_path):
    board_image(sub, heap=4_000_000)  # PSRAM: the .mpy firmware fits
    out = tmp_path / "b"
    assert cli(deploy, ["--port", PORT, "--board", "tukar-12-wroom", "--build-dir", str(out)]) == 0
    first, probe, second = ran(sub)
    assert first == [PY, "-m", "mpremote", "connect", PORT, "touch", ":maintenance", "+", "reset"]
    assert probe[:6] == [PY, "-m", "mpremote", "connect", PORT, "exec"]
    assert "'.frozen'" in probe[6] and "mem_free" in probe[6]
    assert second[:12] == [PY, "-m", "mpremote", "connect", PORT, "cp", "-r", str(out / "tukar"),
                           str(out / "profiles"), ":", "+", "cp"]
    assert second[12:24] == [str(out / "main.py"), ":main.py", "+", "cp", str(out / "boot.py"), ":boot.py",
                             "+", "cp", str(out / "board.json"), ":board.json", "+", "exec"]
    assert second[25:] == ["+", "rm", ":maintenance", "+", "reset"]
    devport.time.sleep.assert_called_once_with(3)


def test_deploy_refuses_the_mpy_route_on_an_image_without_frozen_tukar_and_psram(sub, tmp_path,
                                                                                capsys):
    board_image(sub, frozen=False, heap=111_000)  # a stock ESP32-WROOM-32: 56 KB growing to ~112
    out = tmp_path / "b"
    assert cli(deploy, ["--port", PORT, "--board", "tukar-12-wroom", "--build-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no frozen tukar and a 108 KB heap" in err
    assert "make image BOARD=tukar-12-wroom" in err
    calls = ran(sub)
    assert not any("cp" in c for c in calls)  # nothing copied
    assert calls[-1][5:] == ["rm", ":maintenance", "+", "reset"]  # the cabinet runs on as it was


def test_deploy_onto_a_frozen_image_copies_only_main_the_board_file_and_profiles(sub, tmp_path,
                                                                                capsys):
    board_image(sub, frozen=True, heap=111_000)
    out = tmp_path / "b"
    assert cli(deploy, ["--port", PORT, "--board", "tukar-12-wroom", "--build-dir", str(out)]) == 0
    copy = ran(sub)[-1]
    assert str(out / "tukar") not in copy
    assert copy[5:10] == ["cp", "-r", str(out / "profiles"), ":", "+"]
    prune = copy[copy.index("exec") + 1]
    assert '"tukar"' in prune and "tukar/" not in prune.split("keep=")[1].split("\n")[0]
    assert "frozen in" in capsys.readouterr().out


def test_deploy_removes_files_the_bundle_no_longer_has(tmp_path):
    script = deploy.prune_script({"tukar/core.mpy": 1, "profiles/ref48v.json": 2, "main.py": 3})
    fs = {"tukar": ["core.mpy", "core.py", "old.mpy"], "profiles": ["ref48v.json", "gone.json"]}
    removed = []
    os_fake = type("os", (), {"listdir": staticmethod(lambda d: list(fs[d])),
                              "remove": staticmethod(removed.append)})
    exec(script.replace("import os\n", ""), {"os": os_fake, "print": lambda *a: None})
    assert removed == ["tukar/core.py", "tukar/old.mpy", "profiles/gone.json"]


def test_deploy_dry_run_builds_prints_and_copies_nothing(sub, tmp_path, capsys):
    assert cli(deploy, ["--port", PORT, "--board", "tukar-12-wroom", "--build-dir", str(tmp_path / "b"),
                        "--dry-run"]) == 0
    sub.run.assert_not_called()
    out = capsys.readouterr().out
    assert "mpremote connect /dev/ttyUSB0 touch :maintenance + reset" in out
    assert "+ rm :maintenance + reset" in out


def test_deploy_refuses_an_unknown_board_listing_the_boards(sub, capsys):
    assert cli(deploy, ["--port", PORT, "--board", "tukar-99"]) == 2
    assert "unknown board 'tukar-99' (boards: tukar-12-wroom, tukar-24-s3)" in capsys.readouterr().err
    sub.run.assert_not_called()


def test_deploy_reports_a_module_mpy_cross_rejects(tmp_path):
    root = tmp_path / "repo"
    (root / "boards" / "b1").mkdir(parents=True)
    (root / "boards" / "b1" / "board.json").write_text("{}")
    (root / "firmware" / "tukar").mkdir(parents=True)
    (root / "firmware" / "tukar" / "bad.py").write_text("match x:\n    case 1: pass\n")
    with pytest.raises(deploy.DeployError, match="mpy-cross .*bad.py"):
        deploy.build("b1", tmp_path / "out", root)


# -- provision ----------------------------------------------------------------------------------
ARGS = ["--port", PORT, "--board", "tukar-12-wroom", "--id", "cab-0042", "--broker", "mqtt://10.0.0.5:1883",
        "--wifi", "SPBKLU-42", "--wifi-password", "wpw", "--user", "cab-0042", "--password", "bpw"]
KEY = "ab" * 32


def staged(sub, mocker):
    """Capture the staged files when the second mpremote call runs (the directory goes after)."""
    files = {}

    def run(cmd):
        for i, a in enumerate(cmd):
            if a.startswith(":") and i and cmd[i - 1] != "rm" and cmd[i - 2] == "cp":
                files[a[1:]] = open(cmd[i - 1], "rb").read()
        return mocker.Mock(returncode=0)
    sub.run.side_effect = run
    return files


def test_provision_writes_config_and_secrets_to_the_device(sub, mocker):
    files = staged(sub, mocker)
    assert cli(provision, ARGS + ["--key", KEY]) == 0
    assert json.loads(files["config.json"]) == {
        "id": "cab-0042", "board": "tukar-12-wroom", "slots": 12, "wifi": {"ssid": "SPBKLU-42"},
        "mqtt": {"host": "10.0.0.5", "port": 1883, "ssl": False, "prefix": "tukar", "keepalive_s": 30,
                 "io_timeout_s": 10, "user": "cab-0042"},
        "ntp": {"host": "pool.ntp.org", "resync_s": 21600}, "wdt_ms": 5000,
        "core": {"tick_ms": 50, "telemetry_period_s": 60}}
    assert json.loads(files["secrets.json"]) == {"wifi_password": "wpw", "mqtt_password": "bpw", "key": KEY}
    assert "ca.pem" not in files


def test_provision_mpremote_calls(sub):
    assert cli(provision, ARGS + ["--key", KEY]) == 0
    first, second = ran(sub)
    assert first == [PY, "-m", "mpremote", "connect", PORT, "touch", ":maintenance", "+", "reset"]
    d = second[6].rsplit("/", 1)[0]
    assert second == [PY, "-m", "mpremote", "connect", PORT, "cp", d + "/config.json", ":config.json",
                      "+", "cp", d + "/secrets.json", ":secrets.json", "+", "rm", ":maintenance", "+", "reset"]


def test_provisioned_files_are_what_the_device_boots_from(sub, mocker, tmp_path):
    files = staged(sub, mocker)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    argv = [a if a != "mqtt://10.0.0.5:1883" else "mqtts://mqtt.example.id" for a in ARGS]
    assert cli(provision, argv + ["--ca", str(ca), "--key", KEY]) == 0
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    s = startup.load_setup(str(tmp_path) + "/", 12)
    assert s.app_cfg["mqtt"]["port"] == 8883
    assert s.app_cfg["mqtt"]["ca"] == ca.read_bytes()
    assert s.app_cfg["mqtt"]["password"] == "bpw"
    assert s.key == bytes.fromhex(KEY)
    assert (s.wifi_ssid, s.wifi_password, s.wdt_ms) == ("SPBKLU-42", "wpw", 5000)


def test_provision_generates_a_32_byte_key_and_prints_it_once(sub, mocker, capsys):
    files = staged(sub, mocker)
    mocker.patch.object(provision.secrets, "token_bytes", return_value=bytes(range(32)))
    assert cli(provision, ARGS) == 0
    provision.secrets.token_bytes.assert_called_once_with(32)
    assert json.loads(files["secrets.json"])["key"] == bytes(range(32)).hex()
    out = capsys.readouterr().out
    assert out.count(bytes(range(32)).hex()) == 1
    assert "store it in the back end now" in out


def test_provision_does_not_print_a_key_that_was_not_installed(sub, mocker, capsys):
    sub.run.return_value.returncode = 1
    assert cli(provision, ARGS) == 1
    cap = capsys.readouterr()
    assert "HMAC key" not in cap.out
    assert "discarded" in cap.err


def test_provision_dry_run_writes_nothing_and_shows_no_secret(sub, capsys):
    assert cli(provision, ARGS + ["--dry-run"]) == 0
    sub.run.assert_not_called()
    out = capsys.readouterr().out
    assert "wpw" not in out and "bpw" not in out
    assert "a new 32-byte key would be generated" in out


@pytest.mark.parametrize("cid", ["", "Cab-1", "cab_1", "c" * 33, "cab 1"])
def test_provision_refuses_a_bad_cabinet_id(sub, capsys, cid):
    argv = list(ARGS)
    argv[argv.index("cab-0042")] = cid
    assert cli(provision, argv) == 2
    assert "1 to 32 of a-z, 0-9 and '-' required" in capsys.readouterr().err
    sub.run.assert_not_called()


@pytest.mark.parametrize("url", ["http://b:1883", "mqtt://", "b.example:1883", "mqtt://b:99999", "mqtt://b:x"])
def test_provision_refuses_a_bad_broker_url(sub, capsys, url):
    argv = [a if a != "mqtt://10.0.0.5:1883" else url for a in ARGS]
    assert cli(provision, argv) == 2
    assert "broker" in capsys.readouterr().err


@pytest.mark.parametrize("url,expected", [("mqtt://b.example", ("b.example", 1883, False)),
                                          ("mqtts://b.example", ("b.example", 8883, True)),
                                          ("mqtts://10.1.2.3:9883", ("10.1.2.3", 9883, True))])
def test_broker_url_forms(url, expected):
    assert provision.parse_broker(url) == expected


def test_provision_refuses_tls_without_a_ca(sub, capsys):
    argv = [a if a != "mqtt://10.0.0.5:1883" else "mqtts://b.example" for a in ARGS]
    assert cli(provision, argv) == 2
    assert "needs --ca FILE" in capsys.readouterr().err


def test_provision_refuses_a_ca_file_that_is_not_pem(sub, capsys, tmp_path):
    (tmp_path / "ca.der").write_bytes(b"\x30\x82")
    argv = [a if a != "mqtt://10.0.0.5:1883" else "mqtts://b.example" for a in ARGS]
    assert cli(provision, argv + ["--ca", str(tmp_path / "ca.der")]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err


@pytest.mark.parametrize("key,msg", [("xyz", "hex digits required"), ("ab" * 8 + "a", "hex digits required"),
                                     ("ab" * 15, "15 bytes; at least 16 required")])
def test_provision_refuses_a_bad_key(sub, capsys, key, msg):
    assert cli(provision, ARGS + ["--key", key]) == 2
    assert msg in capsys.readouterr().err


def test_provision_refuses_an_unknown_board(sub, capsys):
    argv = [a if a != "tukar-12-wroom" else "tukar-7" for a in ARGS]
    assert cli(provision, argv) == 2
    assert "unknown board 'tukar-7' (boards: tukar-12-wroom, tukar-24-s3)" in capsys.readouterr().err


def test_provision_refuses_a_tick_beyond_100_ms(sub, capsys):
    assert cli(provision, ARGS + ["--tick-ms", "200"]) == 2
    assert "--tick-ms 200: 10..100 required" in capsys.readouterr().err


def test_commands_are_listed_in_the_tukar_cli():
    from tukar_tools import cli as tcli
    names = [n for n, _, _ in tcli._available()]
    assert {"flash", "deploy", "provision"} <= set(names)


def test_deploy_onto_a_frozen_image_removes_a_tukar_package_left_on_the_file_system():
    script = deploy.prune_script({"profiles/ref48v.json": 2, "main.py": 3})
    fs = {"tukar": ["core.mpy", "app.mpy"], "profiles": ["ref48v.json"]}
    removed = []
    os_fake = type("os", (), {"listdir": staticmethod(lambda d: list(fs[d])),
                              "remove": staticmethod(removed.append),
                              "rmdir": staticmethod(removed.append)})
    exec(script.replace("import os\n", ""), {"os": os_fake, "print": lambda *a: None})
    assert removed == ["tukar/core.mpy", "tukar/app.mpy", "tukar"]


def test_the_prune_step_passes_over_a_directory_the_board_does_not_have():
    script = deploy.prune_script({"profiles/ref48v.json": 2})
    removed = []

    def listdir(d):
        if d == "tukar":
            raise OSError(2, "ENOENT")
        return ["ref48v.json"]
    os_fake = type("os", (), {"listdir": staticmethod(listdir), "remove": staticmethod(removed.append),
                              "rmdir": staticmethod(removed.append)})
    exec(script.replace("import os\n", ""), {"os": os_fake, "print": lambda *a: None})
    assert removed == []


def test_make_image_without_esp_idf_fails_saying_what_to_install(tmp_path):
    import subprocess
    r = subprocess.run(["bash", str(deploy.ROOT / "tools" / "build" / "image.sh"), "tukar-12-wroom"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert r.returncode == 2
    assert "ESP-IDF not found" in r.stderr and "export.sh" in r.stderr


def test_make_image_names_the_boards_there_are_for_an_unknown_one():
    import subprocess
    r = subprocess.run(["bash", str(deploy.ROOT / "tools" / "build" / "image.sh"), "tukar-99"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert r.returncode == 2
    assert "unknown board 'tukar-99'" in r.stderr and "tukar-12-wroom" in r.stderr
