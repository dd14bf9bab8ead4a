# The device's start-up (tukar.device, what main.py runs): rule 9 before the config is read, the
# maintenance escape before the watchdog, the provisioned files, the crash record, and the reset
# with outputs safe whenever the application ends. `machine`, the board and the App are fakes.
import json
import pathlib

import pytest

from tukar import device, startup

ROOT = pathlib.Path(__file__).resolve().parents[1]

KEY_HEX = "00112233445566778899aabbccddeeff" * 2


@pytest.fixture
def machine(mocker):
    m = mocker.Mock(name="machine", PWRON_RESET=1, HARD_RESET=2, WDT_RESET=3, DEEPSLEEP_RESET=4,
                    SOFT_RESET=5)
    del m.BROWNOUT_RESET  # the ESP32 port has none
    m.reset_cause.return_value = 3
    return m


@pytest.fixture
def board(mocker):
    b = mocker.Mock(name="board", slot_count=12)
    b.name = "tukar-12-wroom"
    mocker.patch.object(startup, "safe_board", return_value=b)
    return b


def provision(root, **over):
    cfg = {"id": "cab-1", "slots": 12, "wifi": {"ssid": "ap"},
           "mqtt": {"host": "broker.example", "port": 8883, "ssl": True, "prefix": "tukar", "user": "cab-1"},
           "ntp": {"host": "id.pool.ntp.org"}, "wdt_ms": 5000, "core": {"tick_ms": 50}}
    cfg.update(over)
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "secrets.json").write_text(json.dumps({"wifi_password": "wpw", "mqtt_password": "mpw",
                                                   "key": KEY_HEX}))
    (root / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")


class FakeApp:
    outcome = "command"
    raise_exc = None
    built = []

    def __init__(self, cfg, board, cycle_class, client_class, store_root, key, profiles, **kw):
        self.args = (cfg, board, store_root, key, profiles)
        self.kw = kw
        self.faults = [("control", "OSError(5)"), ("control", "OSError(5)"), ("control", "OSError(5)")]
        self.core = type("C", (), {"boot": 7})()
        FakeApp.built.append(self)


class FakeNet:
    def __init__(self, ssid, password, **kw):
        self.ssid, self.password, self.kw = ssid, password, kw

    def wall(self):
        return None


def start(machine, root, outcome="command", exc=None):
    FakeApp.built = []

    def run(app, net):
        app.net = net
        if exc is not None:
            raise exc
        return outcome
    return device.start(machine, root=str(root) + "/", app_class=FakeApp, cycle_class=object,
                        client_class=object, net_class=FakeNet, run=run)


@pytest.mark.parametrize("cause,reason", [(1, "power_on"), (2, "panic"), (3, "watchdog"),
                                          (4, "deep_sleep"), (5, "soft"), (99, "unknown")])
def test_reset_cause_maps_to_the_boot_reason(machine, cause, reason, tmp_path):
    machine.reset_cause.return_value = cause
    assert startup.boot_reason(machine, str(tmp_path) + "/") == reason


@pytest.mark.parametrize("outcome,exc,reason", [("command", None, "reboot"), ("crash", None, "crash"),
                                                (None, RuntimeError("bus gone"), "crash")])
def test_a_hard_reset_is_a_reboot_or_a_crash_by_the_note_written_before_it(
        machine, board, tmp_path, outcome, exc, reason):
    """The ESP32 reports machine.reset() and a panic alike (HARD_RESET): the firmware's note
    before its own reset tells them apart, and it is used by one boot only."""
    provision(tmp_path)
    start(machine, tmp_path, outcome, exc=exc)
    machine.reset.assert_called_once_with()
    machine.reset_cause.return_value = 2  # HARD_RESET
    root = str(tmp_path) + "/"
    assert startup.boot_reason(machine, root) == reason
    assert startup.boot_reason(machine, root) == "panic"  # the next one, without a note


def test_a_reset_note_does_not_outlive_a_power_cut(machine, tmp_path):
    root = str(tmp_path) + "/"
    device.note_reset(root, "command")
    machine.reset_cause.return_value = 1  # the power went before the reset happened
    assert startup.boot_reason(machine, root) == "power_on"
    machine.reset_cause.return_value = 2
    assert startup.boot_reason(machine, root) == "panic"


def test_brownout_maps_where_the_port_reports_it(machine):
    machine.BROWNOUT_RESET = 6
    machine.reset_cause.return_value = 6
    assert startup.boot_reason(machine) == "brownout"


def test_outputs_are_safe_before_the_config_is_read(machine, mocker, tmp_path):
    order = []
    mocker.patch.object(startup, "safe_board", side_effect=lambda m, r: order.append("safe") or
                        mocker.Mock(slot_count=12))
    mocker.patch.object(startup, "load_setup", side_effect=lambda r, n: order.append("config") or
                        (_ for _ in ()).throw(startup.SetupError("stop here")))
    device.start(machine, root=str(tmp_path) + "/")
    assert order == ["safe", "config"]


def test_a_bad_board_file_stays_in_the_repl_without_watchdog(machine, tmp_path, capsys):
    (tmp_path / "board.json").write_text("{")
    assert device.start(machine, root=str(tmp_path) + "/") == "no_board"
    machine.WDT.assert_not_called()
    machine.reset.assert_not_called()
    assert "not JSON" in capsys.readouterr().out


def test_maintenance_flag_file_stays_in_the_repl_before_the_watchdog(machine, board, tmp_path, capsys):
    provision(tmp_path)
    (tmp_path / "maintenance").write_text("")
    assert start(machine, tmp_path) == "escape"
    machine.WDT.assert_not_called()
    machine.reset.assert_not_called()
    assert FakeApp.built == []
    assert "maintenance escape" in capsys.readouterr().out


def test_missing_config_stays_in_the_repl_with_a_clear_message(machine, board, tmp_path, capsys):
    assert start(machine, tmp_path) == "no_setup"
    machine.WDT.assert_not_called()
    assert "config.json: missing (run `tukar provision`)" in capsys.readouterr().out


def test_watchdog_starts_with_the_configured_timeout(machine, board, tmp_path):
    provision(tmp_path, wdt_ms=8000)
    start(machine, tmp_path)
    machine.WDT.assert_called_once_with(timeout=8000)


def test_watchdog_timeout_defaults_to_5_s(machine, board, tmp_path):
    provision(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["wdt_ms"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    start(machine, tmp_path)
    machine.WDT.assert_called_once_with(timeout=5000)


def test_app_gets_config_secrets_and_boot_reason(machine, board, tmp_path):
    provision(tmp_path)
    start(machine, tmp_path)
    app = FakeApp.built[0]
    cfg, b, store_root, key, profiles = app.args
    assert cfg == {"id": "cab-1", "slots": 12, "core": {"tick_ms": 50},
                   "mqtt": {"id": "cab-1", "host": "broker.example", "port": 8883, "ssl": True,
                            "prefix": "tukar", "user": "cab-1", "password": "mpw",
                            "ca": b"-----BEGIN CERTIFICATE-----\n"}}
    assert b is board
    assert store_root == str(tmp_path) + "/state"
    assert key == bytes.fromhex(KEY_HEX)
    assert app.kw["boot_reason"] == "watchdog"
    assert app.wdt is machine.WDT.return_value
    assert app.kw["board_name"] == "tukar-12-wroom"
    assert app.kw["wall"] == app.net.wall
    assert app.kw["info_extra"] == {"rssi": None}
    assert (app.net.ssid, app.net.password, app.net.kw["ntp_host"]) == ("ap", "wpw", "id.pool.ntp.org")
    assert app.net.kw["report"] is app.kw["info_extra"]


def test_slot_count_must_match_the_board(machine, board, tmp_path, capsys):
    provision(tmp_path, slots=24)
    assert start(machine, tmp_path) == "no_setup"
    assert "config.json slots: 24, but the board file has 12" in capsys.readouterr().out


def test_reboot_command_resets_with_outputs_safe_and_no_crash_record(machine, board, tmp_path):
    provision(tmp_path)
    assert start(machine, tmp_path, "command") == "command"
    board.safe_outputs.assert_called_once_with()
    machine.reset.assert_called_once_with()
    assert not (tmp_path / "crash.json").exists()


def test_an_exception_is_recorded_then_the_board_resets(machine, board, tmp_path):
    provision(tmp_path)
    start(machine, tmp_path, exc=RuntimeError("bus gone"))
    rec = json.loads((tmp_path / "crash.json").read_text())
    assert rec == {"boot": 7, "trace": "RuntimeError: bus gone\n"}
    board.safe_outputs.assert_called_once_with()
    machine.reset.assert_called_once_with()


def test_crashing_tasks_are_recorded_with_their_errors(machine, board, tmp_path):
    provision(tmp_path)
    start(machine, tmp_path, "crash")
    rec = json.loads((tmp_path / "crash.json").read_text())
    assert rec["trace"] == "tasks: [('control', 'OSError(5)'), ('control', 'OSError(5)'), ('control', 'OSError(5)')]"
    machine.reset.assert_called_once_with()


def test_crash_record_keeps_the_last_1024_characters(tmp_path):
    device.record_crash(str(tmp_path) + "/", "x" * 5000 + "ValueError: end", boot=3)
    rec = json.loads((tmp_path / "crash.json").read_text())
    assert len(rec["trace"]) == 1024
    assert rec["trace"].endswith("ValueError: end")


def test_last_crash_is_reported_in_info_extra(machine, board, tmp_path):
    provision(tmp_path)
    device.record_crash(str(tmp_path) + "/", "OSError: 5\n", boot=41)
    start(machine, tmp_path)
    assert FakeApp.built[0].kw["info_extra"] == {"rssi": None,
                                                 "last_crash": {"boot": 41, "trace": "OSError: 5\n"}}


def test_console_interrupt_makes_outputs_safe_and_does_not_reset(machine, board, tmp_path, capsys):
    provision(tmp_path)
    assert start(machine, tmp_path, exc=KeyboardInterrupt()) == "interrupted"
    board.safe_outputs.assert_called_once_with()
    machine.reset.assert_not_called()
    assert "create :maintenance" in capsys.readouterr().out


def test_key_must_be_hex(machine, board, tmp_path, capsys):
    provision(tmp_path)
    (tmp_path / "secrets.json").write_text(json.dumps({"key": "zz" * 32}))
    assert start(machine, tmp_path) == "no_setup"
    assert "secrets.json key: hex string required" in capsys.readouterr().out


def test_device_info_with_rssi_and_crash_record_validates_against_the_schema():
    from tukar_tools import schemas
    info = {"id": "cab-1", "fw": "0.1.0", "board": "tukar-12-wroom", "slots": 12, "profiles": ["ref48v"],
            "bdseq": 3, "boot": {"reason": "watchdog", "count": 8}, "time_synced": True, "rssi": -61,
            "last_crash": {"boot": 7, "trace": "RuntimeError: bus gone\n"}}
    assert schemas.errors("info", info) == []


def test_the_watchdog_is_armed_only_once_the_application_is_built(machine, board, tmp_path,
                                                                   mocker):
    provision(tmp_path)
    order = []
    machine.WDT.side_effect = lambda **kw: order.append("wdt") or mocker.Mock(name="wdt")

    class App(FakeApp):
        def __init__(self, *a, **kw):
            order.append("app")
            super().__init__(*a, **kw)
    FakeApp.built = []
    device.start(machine, root=str(tmp_path) + "/", app_class=App, cycle_class=object,
                 client_class=object, net_class=FakeNet, run=lambda app, net: "command")
    assert order == ["app", "wdt"]
    assert FakeApp.built[0].kw["wdt"] is None and FakeApp.built[0].wdt is not None


def test_a_construction_that_fails_arms_no_watchdog_and_resets(machine, board, tmp_path):
    provision(tmp_path)

    class Broken(FakeApp):
        def __init__(self, *a, **kw):
            raise MemoryError("journal too big")
    assert device.start(machine, root=str(tmp_path) + "/", app_class=Broken, cycle_class=object,
                        client_class=object, net_class=FakeNet,
                        run=lambda app, net: "command") == "crash"
    machine.WDT.assert_not_called()
    machine.reset.assert_called_once_with()
    assert "MemoryError: journal too big" in (tmp_path / "crash.json").read_text()


def test_the_profiles_are_read_compact_their_source_data_let_go(machine, board, tmp_path):
    provision(tmp_path)
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    import shutil
    shutil.copy(ROOT / "firmware" / "profiles" / "ref48v.json", pdir / "ref48v.json")
    start(machine, tmp_path)
    profiles = FakeApp.built[0].args[4]
    assert list(profiles) == ["ref48v"]
    assert profiles["ref48v"].data is None and profiles["ref48v"].capacity_mah > 0
    assert isinstance(profiles["ref48v"].decoder(), tuple)  # the CAN decoder's tables
