# The loopback brokers the tests and the tools share (tools/tukar_tools/broker.py): a broker cut
# and brought back keeps its port, and CI never skips the Mosquitto tests.
import socket

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
