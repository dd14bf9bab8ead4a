# `network` for the firmware in the MicroPython unix port: a Wi-Fi station that associates at once
# (the host's own network carries the MQTT traffic), with the ESP32 port's names and an RSSI.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010

_hostname = ["tukar"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._active = False
        self._connected = False

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError(5)  # "Wifi Internal Error" on the ESP32 port when not active
        self._connected = True

    def disconnect(self):
        self._connected = False

    def isconnected(self):
        return self._connected

    def status(self, param=None):
        if param == "rssi":
            return -58
        if param is not None:
            raise ValueError("unknown status param")
        return STAT_GOT_IP if self._connected else STAT_IDLE

    def ifconfig(self, *a):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *a, **k):
        return None
