"""The host tools' MQTT client: paho-mqtt with a background network thread, a queue of received
messages and strict topic matching (amqtt can deliver retained messages that do not match)."""
import os
import queue
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.client import topic_matches_sub

DEFAULT_PREFIX = "tukar"


def add_broker_argument(p):
    """--broker for every tool that talks to a broker: $TUKAR_BROKER, else 127.0.0.1:1883."""
    p.add_argument("--broker", default=os.environ.get("TUKAR_BROKER", "127.0.0.1:1883"),
                   help="HOST:PORT of the MQTT broker (default $TUKAR_BROKER, else 127.0.0.1:1883)")


def parse_broker(text, default_port=1883):
    """'host', 'host:port' or 'mqtt://host:port' -> (host, port)."""
    t = text.split("://", 1)[-1].rstrip("/")
    if t.startswith("["):  # [::1]:1883
        host, _, rest = t[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = t.rpartition(":") if ":" in t else (t, "", "")
    if not host:
        raise ValueError("broker %r: a host is needed" % text)
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError("broker %r: the port must be a number" % text) from None


class Client:
    """Connects, keeps the subscriptions across reconnects, and queues (topic, payload, retained)."""

    def __init__(self, host, port, name="tukar-tool", subscriptions=(), timeout=10.0):
        self.subscriptions = list(subscriptions)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the first subscriptions
        self._pending_subs = 0
        self.on_message = None  # optional callback(topic, payload, retained), on paho's thread
        cid = "%s-%d-%d" % (name, os.getpid(), int(time.time() * 1000) % 100000)
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid,
                                protocol=paho.MQTTv311)
        self.mqtt.on_connect = self._connected
        self.mqtt.on_message = self._message
        self.mqtt.on_subscribe = self._suback
        self.mqtt.on_disconnect = lambda *a: self.connected.clear()
        self.mqtt.reconnect_delay_set(min_delay=0.1, max_delay=2)  # a tool should be back quickly
        try:
            self.mqtt.connect(host, port, keepalive=30)
        except OSError as e:
            raise ConnectionError("cannot reach the broker at %s:%d: %s" % (host, port, e)) from None
        self.mqtt.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise ConnectionError("the broker at %s:%d did not accept the connection" % (host, port))

    def _connected(self, client, userdata, flags, reason, properties=None):
        if reason == 0 or getattr(reason, "value", 1) == 0:
            self._pending_subs = len(self.subscriptions)
            if not self.subscriptions:
                self.subscribed.set()
            for sub in self.subscriptions:
                client.subscribe(sub, qos=1)
            self.connected.set()

    def _suback(self, client, userdata, mid, reasons, properties=None):
        self._pending_subs -= 1
        if self._pending_subs <= 0:
            self.subscribed.set()

    def _message(self, client, userdata, msg):
        if not any(topic_matches_sub(s, msg.topic) for s in self.subscriptions):
            return  # a broker delivered something we never asked for
        if self.on_message is not None:
            self.on_message(msg.topic, msg.payload, bool(msg.retain))
        else:
            self.messages.put((msg.topic, msg.payload, bool(msg.retain)))

    def subscribe(self, topic):
        self.subscriptions.append(topic)
        r = self.mqtt.subscribe(topic, qos=1)
        return r

    def publish(self, topic, payload, qos=1, retain=False, wait=5.0):
        info = self.mqtt.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(wait)
        return info

    def get(self, timeout):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self):
        try:
            self.mqtt.disconnect()
        finally:
            self.mqtt.loop_stop()


def wire(client, owner, user=None, password=None, tls_ca=None, backoff_max_s=30.0):
    """A long-running subscriber's paho client (collect, ha): its credentials, its TLS, its
    reconnect backoff, and owner's _on_connect, _on_disconnect, _on_subscribe and _on_message."""
    if user is not None:
        client.username_pw_set(user, password)
    if tls_ca:
        client.tls_set(ca_certs=tls_ca)
    client.reconnect_delay_set(min_delay=1, max_delay=int(backoff_max_s))
    client.on_connect = owner._on_connect
    client.on_disconnect = owner._on_disconnect
    client.on_subscribe = owner._on_subscribe
    client.on_message = owner._on_message
    return client
