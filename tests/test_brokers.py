# The loopback brokers the tests and the tools share (tools/tukar_tools/broker.py): a broker cut
# and brought back keeps its port, and CI never skips the Mosquitto tests.
import socket
import time

import brokers
import pytest
from brokers import Broker, require


@pytest.mark.parametrize("kind", brokers.BROKERS)
def test_a_broker_stopped_and_started_again_keeps_its_port(kind, tmp_path):
    require(kind)
    b = Broker(kind, tmp_path).start()
    port = b.port
    try:
        b.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        b.start()
        assert b.port == port
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        b.stop()
    assert (tmp_path / (kind + ".log")).exists()


def test_missing_mosquitto_fails_under_ci(monkeypatch):
    monkeypatch.setattr(brokers, "MOSQUITTO", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require("mosquitto")


def test_missing_mosquitto_skips_off_ci(monkeypatch):
    monkeypatch.setattr(brokers, "MOSQUITTO", None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require("mosquitto")


def _over_websockets(port, ws_port):
    """A message published over TCP arrives at a client subscribed over MQTT-over-WebSockets."""
    import paho.mqtt.client as paho

    got = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, transport="websockets")
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    sub.connect("127.0.0.1", ws_port)
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        sub.subscribe("ws-check/#", qos=1)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            pub.publish("ws-check/a", b"over tcp", qos=1).wait_for_publish(5)
            time.sleep(0.2)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()
    return got


@pytest.mark.parametrize("kind", brokers.BROKERS + ("amqtt-thread",))
def test_a_broker_asked_for_a_websocket_port_serves_mqtt_there_too(kind, tmp_path):
    """The web console's transport, from each broker `tukar sim` may start."""
    from tukar_tools import broker as loopback
    require(kind.split("-")[0])
    ws_port = loopback.free_port()
    if kind == "amqtt-thread":
        b = loopback.Amqtt(ws_port=ws_port).start()
    else:
        cls = loopback.Mosquitto if kind == "mosquitto" else loopback.AmqttProcess
        b = cls(workdir=tmp_path, ws_port=ws_port).start()
    try:
        assert ("ws-check/a", b"over tcp") in _over_websockets(b.port, ws_port)
    finally:
        b.stop()
