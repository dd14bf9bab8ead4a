# Brokers for the link tests: a real Mosquitto and an amqtt broker, each a subprocess on a free
# loopback port that a test may stop and start again (same port), started by the tools' own
# tools/tukar_tools/broker.py; a silent server that accepts TCP and never answers; and a watcher
# (paho) that records what a back end would see.
import os
import socket
import threading
import time

import pytest

from tukar_tools import broker as loopback

MOSQUITTO = loopback.mosquitto_path()
AMQTT = loopback.amqtt_path()
BROKERS = ("mosquitto", "amqtt")
free_port = loopback.free_port


def Broker(kind, workdir, extra=""):
    """One broker process (tools/tukar_tools/broker.py), not started yet: start() returns once its
    port accepts connections; stop() and start() again keep the port; config and log in workdir."""
    cls = loopback.Mosquitto if kind == "mosquitto" else loopback.AmqttProcess
    return cls(workdir=workdir, extra=extra)


def on_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(kind):
    if kind == "mosquitto" and MOSQUITTO is None:
        if on_ci():
            pytest.fail("mosquitto is missing on CI (.ci/run installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    if kind == "amqtt" and AMQTT is None:
        pytest.skip("amqtt not installed in this environment")


@pytest.fixture(scope="module", params=BROKERS)
def broker(request, tmp_path_factory):
    """A broker shared by a module's tests (each test uses its own cabinet id)."""
    require(request.param)
    b = Broker(request.param, tmp_path_factory.mktemp(request.param)).start()
    yield b
    b.stop()


@pytest.fixture(params=BROKERS)
def own_broker(request, tmp_path):
    """A broker for one test alone, which it may stop and start."""
    require(request.param)
    b = Broker(request.param, tmp_path).start()
    yield b
    b.stop()


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []  # monotonic time of each connection
        self.conns = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(time.monotonic())
            self.conns.append(c)

    def close(self):
        self._stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    s = SilentServer()
    yield s
    s.close()


class Watcher:
    """A back end's view: every message under a topic filter, with its retain flag. It checks
    each message's topic itself: amqtt delivers retained messages that do not match a wildcard."""

    def __init__(self, port, topic):
        import paho.mqtt.client as mqtt
        self.topic = topic
        self.messages = []  # (topic, payload bytes, retain)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("watcher could not subscribe")

    def _on_message(self, client, userdata, msg):
        import paho.mqtt.client as mqtt
        if not mqtt.topic_matches_sub(self.topic, msg.topic):
            return
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix):
        with self.lock:
            return [(p, r) for t, p, r in self.messages if t.endswith("/" + suffix)]

    def wait(self, predicate, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %s; got %r" % (what, self.messages[-10:]))

    def publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


@pytest.fixture(scope="module")
def mqtt_broker():
    """The end-to-end tests' broker: Mosquitto where installed (required on CI), else amqtt."""
    from tukar_tools import broker
    if on_ci():
        require("mosquitto")  # CI runs the end-to-end tests on Mosquitto or fails
    b = broker.Mosquitto().start() if broker.mosquitto_path() else broker.Amqtt().start()
    yield b
    b.stop()
