"""Threads as the ESP32 port has them: `_thread.stack_size()` is global, so each start sets its
own size and puts the previous one back; a start that fails leaves no flag saying it runs."""
import pytest

from tukar import threads
from tukar.link import Link
from tukar.net import Net
from tukar_tools import hostenv
from tukar.outbox import Outbox


class FailingThread:
    """_thread whose start_new_thread fails the first `fails` times (no memory for a stack)."""

    def __init__(self, fails):
        self.fails = fails
        self.started = []
        self.size = 0
        self.sizes = []

    def stack_size(self, n=None):
        prev = self.size
        if n is not None:
            self.size = n
        return prev

    def start_new_thread(self, fn, args):
        self.sizes.append(self.size)
        if self.fails:
            self.fails -= 1
            raise MemoryError("no stack")
        self.started.append(fn)

    def allocate_lock(self):
        import _thread
        return _thread.allocate_lock()


def link(ssl=False):
    cfg = {"id": "cab-1", "host": "127.0.0.1", "port": 1}
    if ssl:
        cfg["ssl"] = True
    return Link(cfg, object, Outbox(), lambda: {}, 0)


@pytest.mark.parametrize("ssl,size", [(False, threads.LINK_STACK), (True, threads.LINK_STACK_TLS)])
def test_the_link_thread_gets_its_own_stack_and_the_global_size_is_put_back(monkeypatch, ssl, size):
    fake = FailingThread(0)
    fake.size = 1234
    monkeypatch.setattr(threads, "_thread", fake)
    lk = link(ssl)
    lk.start()
    assert fake.sizes == [size]
    assert fake.size == 1234  # the next thread does not inherit the link's size
    assert lk.running


def test_a_link_thread_that_cannot_start_is_not_marked_running_and_starts_later(monkeypatch):
    fake = FailingThread(1)
    monkeypatch.setattr(threads, "_thread", fake)
    lk = link()
    with pytest.raises(MemoryError):
        lk.start()
    assert lk.running is False  # the supervisor sees it down and tries again
    lk.start()
    assert lk.running and len(fake.started) == 1


class Wlan:
    def __init__(self):
        self.up = False

    def active(self, on=None):
        return True

    def connect(self, ssid, key):
        self.up = True

    def isconnected(self):
        return self.up

    def ifconfig(self):
        return ("10.0.0.2",)

    def status(self, what=None):
        return -60


class Network:
    STA_IF = 0

    def __init__(self):
        self.wlan = Wlan()

    def WLAN(self, i):
        return self.wlan


class Ntp:
    host = None

    def __init__(self):
        self.calls = 0

    def settime(self):
        self.calls += 1


def test_an_ntp_thread_that_cannot_start_is_retried_after_a_back_off(monkeypatch):
    fake = FailingThread(1)
    monkeypatch.setattr(threads, "_thread", fake)
    ntp = Ntp()
    net = Net("ssid", "pw", network=Network(), ntptime=ntp, rand=lambda: 0.5)
    net.step(0)  # connects
    net.step(1000)  # Wi-Fi up: the NTP thread fails to start
    assert net._ntp_busy is False
    assert "no stack" in net.status["ntp_error"]
    assert fake.sizes == [threads.NTP_STACK]
    net.step(2000)  # within the back-off: no new try
    assert len(fake.sizes) == 1
    net.step(2000 + 60_000)
    assert len(fake.started) == 1  # tried again after the back-off, and it started


def test_the_host_takes_the_sizes_micropython_takes():
    import _thread
    prev = _thread.stack_size(4096)
    assert _thread.stack_size(prev) == 4096
    assert hostenv.stacks_asked[-2:] == [4096, prev]
