# The cabinet's network: a Wi-Fi station that reconnects with exponential back-off, and the wall
# clock, set by NTP and resynced every 6 h. One asyncio task polls both once a second; the NTP
# exchange blocks (DNS lookup, then up to ntptime.timeout for the reply), so it runs on a short-lived
# thread and never stalls a control tick. A device entry-point module: it may import network and
# ntptime; tests pass fakes of both.
import time

from tukar.clock import asleep_ms, ticks_ms, wrap_add, wrap_diff
from tukar.link import Backoff

from micropython import const

POLL_MS = const(1000)
CONNECT_TIMEOUT_MS = const(20000)  # an association plus DHCP that takes longer is abandoned
WIFI_BACKOFF_BASE_MS = const(2000)
WIFI_BACKOFF_CAP_MS = const(300000)
RSSI_PERIOD_MS = const(10000)
NTP_RESYNC_S = const(21600)
NTP_RETRY_BASE_MS = const(10000)
NTP_RETRY_CAP_MS = const(600000)
UNIX_AT_2000 = const(946684800)  # 2000-01-01T00:00:00Z in Unix seconds


def epoch_offset(gmtime=None):
    """Seconds to add to time.time() for Unix time: some MicroPython ports count from 2000."""
    g = gmtime if gmtime is not None else time.gmtime
    return UNIX_AT_2000 if g(0)[0] == 2000 else 0


def _spawn(fn):
    from tukar.threads import NTP_STACK, spawn
    spawn(fn, NTP_STACK)


class Net:
    """Wi-Fi and time. `status` (connected, rssi, ip, attempts, ntp_syncs, ntp_error) is a dict the
    app may read at any time; `report` (the app's info_extra) gets "rssi" kept current."""

    def __init__(self, ssid, password, network=None, ntptime=None, report=None, ntp_host=None,
                 resync_s=NTP_RESYNC_S, connect_timeout_ms=CONNECT_TIMEOUT_MS, rand=None,
                 time_s=None, gmtime=None, spawn=None, hostname=None):
        if network is None:
            import network  # type: ignore[no-redef]
        if ntptime is None:
            import ntptime  # type: ignore[no-redef]
        self.ssid = ssid
        self.password = password
        self.network = network
        self.ntptime = ntptime
        self.report = report if report is not None else {}
        self.ntp_host = ntp_host
        self.resync_ms = int(resync_s) * 1000
        self.connect_timeout_ms = connect_timeout_ms
        self.backoff = Backoff(WIFI_BACKOFF_BASE_MS, WIFI_BACKOFF_CAP_MS, rand)
        self.ntp_backoff = Backoff(NTP_RETRY_BASE_MS, NTP_RETRY_CAP_MS, rand)
        self._time = time_s if time_s is not None else time.time
        self.offset = epoch_offset(gmtime)
        self._spawn = spawn if spawn is not None else _spawn
        self.hostname = hostname
        self.status = {"connected": False, "rssi": None, "ip": None, "attempts": 0,
                       "ntp_syncs": 0, "ntp_error": None, "error": None}
        self.synced = False
        self.wlan = None
        self._since = None  # ticks of the connect attempt in progress, None when none is
        self._retry_at = None  # ticks before which no new attempt starts; None: at once
        self._rssi_at = None
        self._ntp_at = None  # ticks of the next NTP sync; None: as soon as Wi-Fi is up
        self._ntp_busy = False
        self._ntp_result = None  # the thread's answer: True, or the error's text

    # -- time ------------------------------------------------------------------------------
    def wall(self):
        """Unix seconds once NTP has set the clock, else None."""
        if not self.synced:
            return None
        return int(self._time()) + self.offset

    def _ntp(self):
        try:
            if self.ntp_host:
                self.ntptime.host = self.ntp_host
            self.ntptime.settime()
            self._ntp_result = True
        except Exception as e:  # OSError (timeout, DNS) and whatever else the exchange raises
            self._ntp_result = repr(e)
        self._ntp_busy = False

    def _ntp_step(self, now):
        r = self._ntp_result
        if r is not None:
            self._ntp_result = None
            if r is True:
                self.synced = True
                self.status["ntp_syncs"] += 1
                self.status["ntp_error"] = None
                self.ntp_backoff.reset()
                self._ntp_at = wrap_add(now, self.resync_ms)
            else:
                self.status["ntp_error"] = r
                self._ntp_at = wrap_add(now, self.ntp_backoff.next_ms())
        if self._ntp_busy or not self.status["connected"]:
            return
        if self._ntp_at is None or wrap_diff(now, self._ntp_at) >= 0:
            self._ntp_busy = True
            self._ntp_at = wrap_add(now, self.resync_ms)  # no second thread while this one runs
            try:
                self._spawn(self._ntp)
            except Exception as e:  # no memory for its stack: try again after a back-off
                self._ntp_busy = False
                self.status["ntp_error"] = "thread: %r" % (e,)
                self._ntp_at = wrap_add(now, self.ntp_backoff.next_ms())

    # -- Wi-Fi -----------------------------------------------------------------------------
    def start(self):
        net = self.network
        if self.hostname:
            try:
                net.hostname(self.hostname)
            except (AttributeError, ValueError, OSError):
                pass  # older ports: the DHCP name stays the default
        w = self.wlan = net.WLAN(net.STA_IF)
        w.active(True)
        return w

    def step(self, now):
        """One poll: keep Wi-Fi up (back-off between failed attempts), refresh RSSI, sync time."""
        w = self.wlan if self.wlan is not None else self.start()
        st = self.status
        if w.isconnected():
            if not st["connected"] or self._since is not None:
                st["connected"] = True
                self._since = None
                self.backoff.reset()
                st["ip"] = w.ifconfig()[0]
                self._rssi_at = None
            if self._rssi_at is None or wrap_diff(now, self._rssi_at) >= RSSI_PERIOD_MS:
                self._rssi_at = now
                try:
                    st["rssi"] = w.status("rssi")
                except (OSError, ValueError, TypeError):
                    st["rssi"] = None
                self.report["rssi"] = st["rssi"]
        else:
            if st["connected"]:
                st["connected"] = False
                st["ip"] = None
                st["rssi"] = None
                self.report["rssi"] = None
                self._retry_at = None  # a lost link is retried at once, then backs off
            if self._since is not None:
                if wrap_diff(now, self._since) < self.connect_timeout_ms:
                    return
                self._since = None
                try:
                    w.disconnect()
                except OSError:
                    pass
                self._retry_at = wrap_add(now, self.backoff.next_ms())
            if self._retry_at is not None and wrap_diff(now, self._retry_at) < 0:
                return
            self._retry_at = None
            st["attempts"] += 1
            self._since = now
            try:
                w.connect(self.ssid, self.password)
            except OSError:
                pass  # counted as an attempt; the time-out above schedules the next one
            return
        self._ntp_step(now)

    async def run(self):
        while True:
            try:
                self.step(ticks_ms())
            except OSError as e:  # the radio driver's complaint: the next poll tries again
                self.status["error"] = repr(e)
            await asleep_ms(POLL_MS)
