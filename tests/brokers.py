# Brokers for the link tests: a real Mosquitto and an amqtt broker, each a subprocess on a free
# loopback port that a test may stop and start again (same port); a silent server that accepts TCP
# and never answers; and a watcher (paho) that records what a back end would see.
import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if os.path.exists("/usr/sbin/mosquitto") else None)
AMQTT = os.path.join(os.path.dirname(sys.executable), "amqtt")
BROKERS = ("mosquitto", "amqtt")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Broker:
    """One broker process; start() returns once its port accepts connections."""

    def __init__(self, kind, workdir, extra=""):
        self.kind = kind
        self.extra = extra  # more Mosquitto config lines (TLS)
        self.workdir = str(workdir)
        self.port = free_port()
        self.proc = None

    def _command(self):
        if self.kind == "mosquitto":
            conf = os.path.join(self.workdir, "mosquitto.conf")
            with open(conf, "w") as f:
                # run as root, Mosquitto would switch to its own user and lose the test's files
                f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "user %s\n%s" % (self.port, getpass.getuser(), self.extra))
            return [MOSQUITTO, "-c", conf]
        conf = os.path.join(self.workdir, "amqtt.yaml")
        with open(conf, "w") as f:
            f.write("listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n" % self.port)
        return [AMQTT, "-c", conf]

    def start(self, timeout=15):
        log = open(os.path.join(self.workdir, self.kind + ".log"), "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s" % (self.kind, self.proc.returncode))
            if _port_open(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("%s did not open port %d" % (self.kind, self.port))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def require(kind):
    if kind == "mosquitto" and MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is missing on CI (.ci/run installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    if kind == "amqtt" and not os.path.exists(AMQTT):
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
