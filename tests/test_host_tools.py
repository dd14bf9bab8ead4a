"""`tukar cmd` and `tukar monitor` as an operator uses them, against a real broker."""
import json
import threading
import time

import pytest

from tukar_tools import broker, cmdline, monitor, mqttc
from tukar_tools.sign import parse_key


@pytest.fixture(scope="module")
def mqtt_broker():
    b = broker.start()
    yield b
    b.stop()


@pytest.mark.parametrize("text, value", [("3", 3), ("-2", -2), ("2.5", 2.5), ("true", True),
                                         ("null", None), ("[1,2]", [1, 2]), ("rider-77", "rider-77"),
                                         ('"42"', "42")])
def test_cmd_values_keep_their_json_type(text, value):
    assert cmdline.parse_value(text) == value


def test_text_arguments_stay_text_even_when_they_look_like_numbers():
    assert cmdline.parse_args_list(["serial=0042", "id_token=77", "slot=3", "reason=1e3"]) == \
        {"serial": "0042", "id_token": "77", "slot": 3, "reason": "1e3"}


@pytest.mark.parametrize("bad", ["slot", "=3", "req_id=x", "cmd=reboot"])
def test_cmd_refuses_malformed_or_reserved_arguments(bad):
    with pytest.raises(ValueError):
        cmdline.parse_args_list([bad])


def test_parse_broker_forms():
    assert mqttc.parse_broker("h") == ("h", 1883)
    assert mqttc.parse_broker("mqtt://h:8883") == ("h", 8883)
    with pytest.raises(ValueError):
        mqttc.parse_broker("h:x")


def fake_cabinet(port, key, answer):
    """A stand-in that verifies nothing but answers each command with `answer(body)`."""
    c = mqttc.Client("127.0.0.1", port, subscriptions=["tukar/cab-9/cmd"])

    def on(topic, payload, retained):
        env = json.loads(payload)
        body = json.loads(env["body"])
        c.mqtt.publish("tukar/cab-9/ack", json.dumps(answer(body)), qos=1)

    c.on_message = on
    assert c.subscribed.wait(5)  # a command published before the SUBACK would be lost
    return c


def run_cmd(port, *argv):
    p = __import__("argparse").ArgumentParser()
    cmdline.add_arguments(p)
    return cmdline.run(p.parse_args(["cab-9", *argv, "--broker", "127.0.0.1:%d" % port,
                                     "--timeout", "3"]))


def test_cmd_prints_the_ack_and_exits_0_on_ok(mqtt_broker, capsys):
    cab = fake_cabinet(mqtt_broker.port, None,
                       lambda b: {"req_id": b["req_id"], "ok": True, "error": None, "detail": "",
                                  "slot": b["slot"]})
    try:
        assert run_cmd(mqtt_broker.port, "open_slot", "slot=3") == 0
    finally:
        cab.close()
    ack = json.loads(capsys.readouterr().out)
    assert ack["ok"] is True and ack["slot"] == 3


def test_cmd_exits_1_on_an_error_ack(mqtt_broker, capsys):
    cab = fake_cabinet(mqtt_broker.port, None,
                       lambda b: {"req_id": b["req_id"], "ok": False, "error": "wrong_mode",
                                  "detail": "x"})
    try:
        assert run_cmd(mqtt_broker.port, "open_slot", "slot=3") == 1
    finally:
        cab.close()
    assert json.loads(capsys.readouterr().out)["error"] == "wrong_mode"


def test_cmd_exits_2_when_no_ack_comes(mqtt_broker, capsys):
    assert run_cmd(mqtt_broker.port, "rebirth") == 2
    assert "no ack" in capsys.readouterr().err


def test_cmd_exits_2_when_the_broker_is_unreachable(capsys):
    assert run_cmd(broker.free_port(), "rebirth") == 2
    assert "broker" in capsys.readouterr().err


def clocked_cabinet(port, clock_s):
    """A stand-in with the gate's clock check: it answers `stale` as the firmware does (gate.py)."""
    seen = []

    def answer(b):
        seen.append(b)
        skew = b["ts"] - clock_s
        if abs(skew) > 300:
            return {"req_id": b["req_id"], "ok": False, "error": "stale",
                    "detail": "ts %d s from cabinet clock, limit 300" % skew}
        return {"req_id": b["req_id"], "ok": True, "error": None, "detail": ""}
    return fake_cabinet(port, None, answer), seen


def test_cmd_signs_with_a_simulated_cabinets_clock_when_asked(mqtt_broker, capsys):
    """A sped-up simulation's clock is days ahead of the host's: refused stale, then signed with the
    cabinet's clock (from the stale ack) under --cabinet-clock, and only then."""
    ahead = int(time.time()) + 5 * 86400
    cab, seen = clocked_cabinet(mqtt_broker.port, ahead)
    try:
        assert run_cmd(mqtt_broker.port, "rebirth") == 1
        assert json.loads(capsys.readouterr().out)["error"] == "stale"
        assert len(seen) == 1
        assert run_cmd(mqtt_broker.port, "rebirth", "--cabinet-clock") == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["ok"] is True
        assert "clock is" in captured.err
    finally:
        cab.close()
    assert len(seen) == 3 and seen[1]["req_id"] == seen[2]["req_id"]
    assert abs(seen[2]["ts"] - ahead) <= 2  # the cabinet's clock, give or take the round trip


def test_cmd_with_cabinet_clock_does_not_retry_other_errors(mqtt_broker, capsys):
    seen = []

    def answer(b):
        seen.append(b)
        return {"req_id": b["req_id"], "ok": False, "error": "stale", "detail": "not the gate's words"}
    cab = fake_cabinet(mqtt_broker.port, None, answer)
    try:
        assert run_cmd(mqtt_broker.port, "rebirth", "--cabinet-clock") == 1
    finally:
        cab.close()
    assert len(seen) == 1


def test_the_stale_skew_is_read_from_the_gates_own_words():
    from tukar.gate import Gate
    from tukar_tools.sign import command, sign
    key = b"k" * 32
    now = 1_800_000_000
    for skew in (-412, 301, 86400 * 7):
        env = sign(command("rebirth", "r-1", ts=now + skew), key)
        body, ack = Gate(key).admit(env.encode() if isinstance(env, str) else env, False, 0, now)
        assert body is None and cmdline.cabinet_skew(ack) == skew, ack
    assert cmdline.cabinet_skew({"error": "stale", "detail": "ts -412 s from cabinet clock, limit 300"}) == -412
    assert cmdline.cabinet_skew({"error": "bad_args", "detail": "ts 5 s from cabinet clock"}) is None
    assert cmdline.cabinet_skew(None) is None


def test_cmd_signs_with_the_cabinet_key(mqtt_broker):
    import hmac
    key = parse_key("00112233445566778899aabbccddeeff")
    seen = []
    c = mqttc.Client("127.0.0.1", mqtt_broker.port, subscriptions=["tukar/cab-9/cmd"])
    c.on_message = lambda t, p, r: seen.append(json.loads(p))
    try:
        run_cmd(mqtt_broker.port, "rebirth", "--key", "00112233445566778899aabbccddeeff")
    finally:
        c.close()
    env = seen[0]
    assert env["sig"] == hmac.new(key, env["body"].encode(), "sha256").hexdigest()
    assert json.loads(env["body"])["cmd"] == "rebirth"


def test_monitor_builds_the_fleet_view_and_deduplicates_events():
    f = monitor.Fleet()
    f.ingest("tukar/c1/status", b"online", True)
    ev = {"id": "c1-1-1", "type": "Boot", "ts": None, "up_ms": 5, "seq": 0}
    f.ingest("tukar/c1/event", json.dumps(ev).encode())
    f.ingest("tukar/c1/event", json.dumps(ev).encode())
    f.ingest("tukar/c1/slot/4/state", json.dumps({"slot": 4, "state": "ready"}).encode())
    f.ingest("other/c1/state", b"{}")
    f.ingest("tukar/c1/state", b"not json")
    c = f.cabinets["c1"]
    assert c.status == "online" and len(c.events) == 1 and c.slots[4]["state"] == "ready"


def test_monitor_json_prints_every_message_as_one_line(mqtt_broker):
    import io
    pub = mqttc.Client("127.0.0.1", mqtt_broker.port)
    pub.publish("tukar/c2/status", b"online", retain=True)
    pub.publish("tukar/c2/state", json.dumps({"mode": "in_service"}), retain=True)
    out = io.StringIO()
    monitor.watch("127.0.0.1", mqtt_broker.port, "tukar", cabinet="c2", as_json=True,
                  duration=1.5, out=out)
    pub.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    topics = {x["topic"] for x in lines}
    assert {"tukar/c2/status", "tukar/c2/state"} <= topics
    assert all(x["retained"] for x in lines)


def test_monitor_takes_fresh_soc_and_temperature_from_telemetry_columns():
    f = monitor.Fleet()
    f.ingest("tukar/c1/slot/3/state", json.dumps({"slot": 3, "state": "charging", "battery": {
        "serial": "B", "soc": 50.0, "temp_c": 25.0, "faults": []}}).encode())
    f.ingest("tukar/c1/telemetry", json.dumps({"slots": [3, 4], "soc": [61.5, 90], "temp_c": [31, None],
                                              "voltage_v": [50.1, 53], "current_a": [9.9, 0]}).encode())
    c = f.cabinets["c1"]
    assert c.measured[3] == {"soc": 61.5, "temp_c": 31, "voltage_v": 50.1, "current_a": 9.9}
    from rich.console import Console
    out = Console(width=200, record=True)
    out.print(monitor.render(f, detail=True))
    text = out.export_text()
    assert "61.5" in text and "31.0" in text
