"""A simulated CAN charger: obeys 0x1806<addr>F4 setpoint frames, broadcasts 0x18FF50<addr> status
every second, and switches itself off (status bit 4) when commands stop for 5 s."""

from tukar_tools.shim.canbus import Frame

STATUS_PERIOD_MS = 1000
TIMEOUT_MS = 5000


class ChargerNode:
    def __init__(self, address=0xE5, max_voltage_mv=100_000, max_current_ma=20_000):
        self.address = address
        self.max_voltage_mv = max_voltage_mv
        self.max_current_ma = max_current_ma
        self.battery_mv = None  # None: no battery on the output
        self.hw_flags = 0  # injected: 0x01 hardware failure, 0x02 over-temperature, 0x04 input fault
        self.on = False
        self.set_mv = 0
        self.set_ma = 0
        self.commands = 0
        self._last_cmd = None
        self._fresh = False
        self._due = 0
        self.timed_out = False

    @property
    def command_id(self):
        return 0x18060000 | (self.address << 8) | 0xF4

    @property
    def status_id(self):
        return 0x18FF5000 | self.address

    def receive(self, frame):
        if not frame.extended or frame.id != self.command_id or len(frame.data) < 5:
            return
        d = frame.data
        self.set_mv = ((d[0] << 8) | d[1]) * 100
        self.set_ma = ((d[2] << 8) | d[3]) * 100
        self.on = d[4] == 0
        self.commands += 1
        self._last_cmd = None  # stamped at the next step: frames carry no time
        self._fresh = True
        self.timed_out = False

    @property
    def output_ma(self):
        if not self.on or self.battery_mv is None or self.hw_flags:
            return 0
        return min(self.set_ma, self.max_current_ma)

    @property
    def output_mv(self):
        if self.battery_mv is None:
            return 0
        return min(self.battery_mv, self.set_mv) if self.on and not self.hw_flags else self.battery_mv

    def status(self):
        flags = self.hw_flags
        if self.battery_mv is None:
            flags |= 0x08
        if self.timed_out:
            flags |= 0x10
        mv, ma = self.output_mv // 100, self.output_ma // 100
        return Frame(self.status_id, bytes((mv >> 8, mv & 0xFF, ma >> 8, ma & 0xFF, flags, 0, 0, 0)), True)

    def step(self, now_ms):
        if self._fresh:
            self._last_cmd = now_ms
            self._fresh = False
        if self._last_cmd is not None and now_ms - self._last_cmd >= TIMEOUT_MS and not self.timed_out:
            self.on = False
            self.timed_out = True
        if now_ms >= self._due:
            self._due = now_ms + STATUS_PERIOD_MS
            return [self.status()]
        return []
