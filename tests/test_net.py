# Wi-Fi back-off, RSSI reporting, NTP sync and the wall clock's epoch, with pytest-mock fakes of
# MicroPython's `network` and `ntptime` modules and a fake millisecond clock: no radio, no threads.
import pytest

from tukar.net import (CONNECT_TIMEOUT_MS, NTP_RETRY_BASE_MS, RSSI_PERIOD_MS, UNIX_AT_2000,
                       WIFI_BACKOFF_BASE_MS, WIFI_BACKOFF_CAP_MS, Net, epoch_offset)


@pytest.fixture
def network(mocker):
    net = mocker.Mock(name="network", STA_IF=0)
    wlan = net.WLAN.return_value
    wlan.isconnected.return_value = False
    wlan.ifconfig.return_value = ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")
    wlan.status.return_value = -61
    return net


@pytest.fixture
def ntptime(mocker):
    return mocker.Mock(name="ntptime", host="pool.ntp.org")


def make(network, ntptime, **kw):
    # rand=1.0: each back-off delay is its full value (no jitter); spawn runs the NTP job inline.
    kw.setdefault("spawn", lambda fn: fn())
    kw.setdefault("time_s", lambda: 1000)
    kw.setdefault("gmtime", lambda t: (1970, 1, 1, 0, 0, 0, 3, 1))
    return Net("cabinet-ap", "pw", network=network, ntptime=ntptime, rand=lambda: 1.0, **kw)


def fail_attempt(n, now):
    """Let the attempt started at `now` time out; return the time of the poll that gives up."""
    n.step(now + CONNECT_TIMEOUT_MS)
    return now + CONNECT_TIMEOUT_MS


def test_station_is_activated_and_first_attempt_starts_at_once(network, ntptime):
    n = make(network, ntptime)
    n.step(0)
    network.WLAN.assert_called_once_with(0)
    network.WLAN.return_value.active.assert_called_once_with(True)
    network.WLAN.return_value.connect.assert_called_once_with("cabinet-ap", "pw")
    assert n.status["attempts"] == 1


def test_attempt_in_progress_is_not_restarted_before_its_time_limit(network, ntptime):
    n = make(network, ntptime)
    n.step(0)
    n.step(CONNECT_TIMEOUT_MS - 1)
    assert network.WLAN.return_value.connect.call_count == 1


def test_failed_attempts_back_off_exponentially_to_the_cap(network, ntptime):
    n = make(network, ntptime)
    wlan = network.WLAN.return_value
    starts = []
    now = 0
    n.step(now)
    starts.append(now)
    for _ in range(10):
        now = fail_attempt(n, now)  # disconnects and schedules the retry
        delay = n._retry_at - now
        n.step(now + delay - 1)
        assert wlan.connect.call_count == len(starts)  # not a millisecond early
        now += delay
        n.step(now)
        starts.append(now)
    gaps = [b - a - CONNECT_TIMEOUT_MS for a, b in zip(starts, starts[1:])]
    assert gaps[:4] == [2000, 4000, 8000, 16000]
    assert gaps[-1] == WIFI_BACKOFF_CAP_MS
    assert max(gaps) == 300000
    assert wlan.disconnect.call_count == 10
    assert n.status["attempts"] == 11


def test_back_off_jitter_stays_between_half_and_full_delay(network, ntptime):
    n = Net("ap", "pw", network=network, ntptime=ntptime, rand=lambda: 0.0, spawn=lambda f: f())
    n.step(0)
    fail_attempt(n, 0)
    assert n._retry_at - CONNECT_TIMEOUT_MS == WIFI_BACKOFF_BASE_MS // 2


def test_connection_resets_the_back_off_and_reports_ip_and_rssi(network, ntptime):
    report = {"rssi": None}
    n = make(network, ntptime, report=report)
    n.step(0)
    fail_attempt(n, 0)
    network.WLAN.return_value.isconnected.return_value = True
    n.step(CONNECT_TIMEOUT_MS + 1000)
    assert n.status["connected"] is True
    assert n.status["ip"] == "192.168.4.23"
    assert n.status["rssi"] == -61
    assert report["rssi"] == -61
    assert n.backoff.n == 0
    network.WLAN.return_value.status.assert_called_with("rssi")


def test_rssi_is_read_every_10_s_not_every_poll(network, ntptime):
    wlan = network.WLAN.return_value
    wlan.isconnected.return_value = True
    n = make(network, ntptime)
    n.step(0)
    n.step(RSSI_PERIOD_MS - 1)
    assert wlan.status.call_count == 1
    wlan.status.return_value = -70
    n.step(RSSI_PERIOD_MS)
    assert wlan.status.call_count == 2
    assert n.status["rssi"] == -70


def test_lost_link_clears_status_and_reconnects_at_once(network, ntptime):
    report = {}
    wlan = network.WLAN.return_value
    wlan.isconnected.return_value = True
    n = make(network, ntptime, report=report)
    n.step(0)
    wlan.isconnected.return_value = False
    n.step(1000)
    assert (n.status["connected"], n.status["ip"], n.status["rssi"], report["rssi"]) == (False, None, None, None)
    wlan.connect.assert_called_once_with("cabinet-ap", "pw")


def test_wall_is_none_until_ntp_has_set_the_clock(network, ntptime):
    n = make(network, ntptime)
    n.step(0)  # not connected: no NTP
    assert n.wall() is None
    ntptime.settime.assert_not_called()


def test_ntp_syncs_once_connected_with_the_configured_server(network, ntptime):
    network.WLAN.return_value.isconnected.return_value = True
    n = make(network, ntptime, ntp_host="id.pool.ntp.org", time_s=lambda: 1764300000)
    n.step(0)
    ntptime.settime.assert_called_once_with()
    assert ntptime.host == "id.pool.ntp.org"
    n.step(1000)  # the thread's answer is taken at the next poll
    assert n.wall() == 1764300000
    assert n.status["ntp_syncs"] == 1


def test_ntp_resyncs_every_6_h(network, ntptime):
    network.WLAN.return_value.isconnected.return_value = True
    n = make(network, ntptime)
    n.step(0)
    n.step(1000)
    n.step(1000 + 6 * 3600 * 1000 - 1)
    assert ntptime.settime.call_count == 1
    n.step(1000 + 6 * 3600 * 1000)
    assert ntptime.settime.call_count == 2


def test_failed_ntp_retries_after_10_s_then_longer(network, ntptime):
    network.WLAN.return_value.isconnected.return_value = True
    ntptime.settime.side_effect = OSError("timed out")
    n = make(network, ntptime)
    n.step(0)
    n.step(1000)
    assert n.wall() is None
    assert n.status["ntp_error"] == "OSError('timed out')"
    n.step(1000 + NTP_RETRY_BASE_MS - 1)
    assert ntptime.settime.call_count == 1
    n.step(1000 + NTP_RETRY_BASE_MS)
    assert ntptime.settime.call_count == 2
    n.step(2000 + NTP_RETRY_BASE_MS)
    assert n._ntp_at - (2000 + NTP_RETRY_BASE_MS) == 20000


def test_no_second_ntp_thread_while_one_runs(network, ntptime):
    network.WLAN.return_value.isconnected.return_value = True
    started = []
    n = make(network, ntptime, spawn=started.append)
    n.step(0)
    n.step(7 * 3600 * 1000)
    assert len(started) == 1


def test_epoch_offset_for_a_port_counting_from_2000():
    assert epoch_offset(lambda t: (2000, 1, 1, 0, 0, 0, 5, 1)) == 946684800
    assert UNIX_AT_2000 == 946684800


def test_epoch_offset_for_a_port_counting_from_1970():
    assert epoch_offset(lambda t: (1970, 1, 1, 0, 0, 0, 3, 1)) == 0


def test_wall_adds_the_2000_epoch_offset(network, ntptime):
    network.WLAN.return_value.isconnected.return_value = True
    # 2025-11-28T03:20:00Z is 817528800 s after 2000-01-01
    n = make(network, ntptime, time_s=lambda: 817528800, gmtime=lambda t: (2000, 1, 1, 0, 0, 0, 5, 1))
    n.step(0)
    n.step(1000)
    assert n.wall() == 1764213600


def test_hostname_is_the_cabinet_id(network, ntptime):
    n = make(network, ntptime, hostname="cab-7")
    n.step(0)
    network.hostname.assert_called_once_with("cab-7")
