"""MQTT brokers the host tools start on loopback: Mosquitto when it is installed (preferred: amqtt
mis-delivers retained messages to wildcard subscribers), else an embedded amqtt broker running on
its own thread. Both listen on 127.0.0.1 only."""
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


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


class Mosquitto:
    kind = "mosquitto"

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self.dir = None

    def start(self):
        path = mosquitto_path()
        if path is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.dir = tempfile.mkdtemp(prefix="tukar-mosq-")
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % self.port)
        self.proc = subprocess.Popen([path, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_port(self.port):
            self.stop()
            raise RuntimeError("mosquitto did not start on port %d" % self.port)
        return self

    def stop(self):
        if self.proc is not None:
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


class Amqtt:
    """amqtt's broker on a thread with its own event loop."""
    kind = "amqtt"

    def __init__(self, port=None):
        self.port = port or free_port()
        self.loop = None
        self.thread = None
        self.broker = None

    def start(self):
        import logging

        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # it logs every probe connection

        config = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:%d" % self.port}},
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
        if not wait_port(self.port):
            raise RuntimeError("amqtt broker did not listen on port %d" % self.port)
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


def start(prefer="mosquitto", port=None):
    """Start a loopback broker: Mosquitto if installed (unless prefer='amqtt'), else amqtt."""
    if prefer != "amqtt" and mosquitto_path():
        return Mosquitto(port).start()
    return Amqtt(port).start()
