# The link over TLS to Mosquitto with the CA pinned in the cabinet's config (mqtt.md: port 8883,
# CA certificate pinned): it connects and births with the right CA, and never with another one.
import json
import shutil
import subprocess
import time

import pytest
from brokers import Broker, Watcher, free_port, require, wait_until
from umqtt.simple import MQTTClient

from tukar.link import Link
from tukar.outbox import Outbox

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")]


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", "/CN=%s" % name, "-keyout", name + ".key", "-out", name + ".pem",
            cwd=d)
    return (d / (name + ".pem")).read_bytes()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    require("mosquitto")
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "srv.pem", cwd=d)
    tls_port = free_port()  # the TLS listener; the plain one stays for the watcher
    b = Broker("mosquitto", d, extra="listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
               % (tls_port, d / "ca.pem", d / "srv.pem", d / "srv.key"))
    b.tls_port = tls_port
    b.start()
    b.ca = (d / "ca.pem").read_bytes()
    b.other_ca = make_ca(d, "other")
    yield b
    b.stop()


def still_cabinet(link):
    """The control loop of a cabinet with nothing going on: it grants every handshake."""
    import threading

    def grant():
        while not getattr(link, "_stop", False) or link.running:
            if link.handshake.wanted:
                link.handshake.granted = True
            time.sleep(0.01)
    threading.Thread(target=grant, daemon=True).start()
    return link


def tls_link(broker, ca, cab):
    return still_cabinet(Link({"id": cab, "host": "127.0.0.1", "port": broker.tls_port, "ssl": True, "ca": ca,
                 "keepalive_s": 5, "io_timeout_s": 2, "backoff_base_ms": 200},
                MQTTClient, Outbox(), lambda: {"id": cab, "fw": "0.1.0", "board": "test",
                                               "slots": 1, "profiles": [],
                                               "boot": {"reason": "power_on", "count": 1},
                                               "time_synced": False}))


def test_link_connects_over_tls_with_the_pinned_ca_and_births(tls_broker):
    w = Watcher(tls_broker.port, "tukar/tls-1/#")
    link = tls_link(tls_broker, tls_broker.ca, "tls-1")
    link.post_state("state", {"n": 1})
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "TLS connect")
        link.outbox.add_event({"id": "tls-1-1-1", "type": "Boot", "ts": None, "up_ms": 1,
                               "reason": "power_on", "recovered": {}})
        w.wait(lambda m: len(w.on("event")) == 1, what="event over TLS")
    finally:
        link.stop()
        wait_until(lambda: not link.running, 10, "stopped")
    assert [t.split("/")[-1] for t, _, _ in w.messages[:3]] == ["info", "status", "state"]
    assert json.loads(w.on("event")[0][0])["id"] == "tls-1-1-1"
    w.close()


def test_link_refuses_a_broker_whose_certificate_another_ca_signed(tls_broker):
    link = tls_link(tls_broker, tls_broker.other_ca, "tls-2")
    link.start()
    try:
        wait_until(lambda: link.last_error is not None, 10, "a failed handshake")
        time.sleep(0.5)
        assert not link.connected and link.stats["connects"] == 0
        assert "CERTIFICATE_VERIFY_FAILED" in link.last_error
    finally:
        link.stop()
        wait_until(lambda: not link.running, 10, "stopped")


def test_the_handshake_waits_for_the_control_loops_grant(tls_broker):
    link = Link({"id": "tls-3", "host": "127.0.0.1", "port": tls_broker.tls_port, "ssl": True,
                 "ca": tls_broker.ca, "keepalive_s": 5, "io_timeout_s": 2, "backoff_base_ms": 200,
                 "handshake_wait_ms": 30000},
                MQTTClient, Outbox(), lambda: {"id": "tls-3"})
    link.start()
    try:
        wait_until(lambda: link.handshake.wanted, 10, "the handshake asked for")
        time.sleep(0.5)
        assert not link.connected and link.stats["connects"] == 0  # not without the grant
        link.handshake.granted = True
        wait_until(lambda: link.connected, 10, "TLS connect once granted")
        assert (link.handshake.count, link.handshake.deferred) == (1, 1)
        assert not link.handshake.wanted and not link.handshake.granted
    finally:
        link.stop()
        wait_until(lambda: not link.running, 10, "stopped")
