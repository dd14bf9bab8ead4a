"""MQTT brokers the host tools and the tests start on loopback: Mosquitto when it is installed
(preferred: amqtt mis-delivers retained messages to wildcard subscribers), else amqtt, embedded on
a thread or as its own process. All listen on 127.0.0.1 only, on a free port that a stop and a
start again keep; given `ws_port`, also MQTT over WebSockets there (the web console's transport)."""
import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
CONSOLE_QUEUE = 50000  # messages a client may have queued: 1,000 cabinets of 24 slots, retained


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_path():
    for p in MOSQUITTO_PATHS:
        if os.path.exists(p):
            return p
    return shutil.which("mosquitto")


def amqtt_path():
    """The amqtt broker's script next to this Python, if installed."""
    p = os.path.join(os.path.dirname(sys.executable), "amqtt")
    return p if os.path.exists(p) else shutil.which("amqtt")


class _Process:
    """A broker in its own process on a fixed loopback port: stop() and start() again keep the
    port (a test can cut the broker and bring it back). `workdir` holds its config and log (a
    temporary directory, removed on stop, when none is given)."""
    kind = "broker"

    def __init__(self, port=None, workdir=None, extra="", ws_port=None):
        self.port = port or free_port()
        self.ws_port = ws_port  # MQTT over WebSockets on this port too (None: not served)
        self.workdir = str(workdir) if workdir is not None else None
        self.extra = extra  # more config lines (Mosquitto: a TLS listener)
        self.proc = None
        self.dir = None

    def _command(self, d):
        raise NotImplementedError

    def start(self, timeout=15.0):
        if self.proc is not None:
            return self
        d = self.workdir
        if d is None:
            d = self.dir = tempfile.mkdtemp(prefix="tukar-%s-" % self.kind)
        cmd = self._command(d)
        with open(os.path.join(d, self.kind + ".log"), "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError("%s exited with %s (log: %s)" % (self.kind, code, d))
            if wait_port(self.port, 0.05) and (self.ws_port is None or wait_port(self.ws_port, 0.05)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not open port %d" % (self.kind, self.port))

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Mosquitto(_Process):
    kind = "mosquitto"

    def _command(self, d):
        path = mosquitto_path()
        if path is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        conf = os.path.join(d, "mosquitto.conf")
        # Mosquitto 2.0.11 will not start with a WebSockets listener alone; the TCP one comes first.
        # A console subscribing to a fleet gets every retained state at once (500 cabinets of 12
        # slots: 7,500), and Mosquitto drops what is past max_queued_messages (1,000 by default).
        ws = "" if self.ws_port is None else (
            "listener %d 127.0.0.1\nprotocol websockets\nmax_queued_messages %d\n"
            % (self.ws_port, CONSOLE_QUEUE))
        with open(conf, "w") as f:
            # started as root, Mosquitto would switch to its own user and lose our files
            f.write("listener %d 127.0.0.1\n%sallow_anonymous true\npersistence false\nuser %s\n%s"
                    % (self.port, ws, getpass.getuser(), self.extra))
        return [path, "-c", conf]


class AmqttProcess(_Process):
    """amqtt's broker as its own process (Amqtt below runs it on a thread of this one)."""
    kind = "amqtt"

    def _command(self, d):
        path = amqtt_path()
        if path is None:
            raise RuntimeError("amqtt is not installed in this environment")
        if self.extra:
            raise ValueError("extra config lines are for Mosquitto")
        conf = os.path.join(d, "amqtt.yaml")
        ws = "" if self.ws_port is None else "  ws:\n    type: ws\n    bind: 127.0.0.1:%d\n" % self.ws_port
        with open(conf, "w") as f:
            f.write("listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n%s"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n" % (self.port, ws))
        return [path, "-c", conf]


class Amqtt:
    """amqtt's broker on a thread with its own event loop."""
    kind = "amqtt"

    def __init__(self, port=None, ws_port=None):
        self.port = port or free_port()
        self.ws_port = ws_port
        self.loop = None
        self.thread = None
        self.broker = None

    def start(self):
        import logging

        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # it logs every probe connection

        listeners = {"default": {"type": "tcp", "bind": "127.0.0.1:%d" % self.port}}
        if self.ws_port is not None:
            listeners["ws"] = {"type": "ws", "bind": "127.0.0.1:%d" % self.ws_port}
        config = {"listeners": listeners,
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                              {"allow_anonymous": True}}}
        started = threading.Event()
        errors = []

        def main():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.broker = Broker(config, loop=self.loop)
                self.loop.run_until_complete(self.broker.start())
            except Exception as e:  # reported to the starting thread
                errors.append(e)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name="amqtt-broker", daemon=True)
        self.thread.start()
        started.wait(15)
        if errors:
            raise RuntimeError("amqtt broker did not start: %r" % errors[0])
        for port in (self.port, self.ws_port):
            if port is not None and not wait_port(port):
                raise RuntimeError("amqtt broker did not listen on port %d" % port)
        return self

    def stop(self):
        if self.loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop)
        try:
            fut.result(10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop = None


def start(prefer="mosquitto", port=None, ws_port=None):
    """Start a loopback broker: Mosquitto if installed (unless prefer='amqtt'), else amqtt; with
    `ws_port`, MQTT over WebSockets on it as well."""
    if prefer != "amqtt" and mosquitto_path():
        return Mosquitto(port, ws_port=ws_port).start()
    return Amqtt(port, ws_port=ws_port).start()
