# CAN-commanded slot chargers, in the widely used layout of CAN chargers with J1939-style 29-bit
# ids: the controller (source 0xF4) sends 0x1806<charger>F4 with the voltage and current ceilings
# and an on/off byte; the charger broadcasts 0x18FF50<charger> with its output and status bits.
# Values are 0.1 V and 0.1 A per bit, high byte first. The charger stops by itself when commands
# stop for 5 s, so the controller repeats the command every second (and at once on a change).
# Each slot's charger is configured to its own address: address = first + slot (0xE5 by default).
from micropython import const

from tukar.clock import ticks_diff

EXT = const(0x20000000)  # as tukar.mcp2515.recv_into flags 29-bit ids
_CMD_BASE = const(0x18060000)
_STATUS_BASE = const(0x18FF5000)
_CONTROLLER = const(0xF4)
COMMAND_PERIOD_MS = const(1000)
CHARGER_TIMEOUT_MS = const(5000)  # the charger's own command time-out

# Status byte of the charger's frame
CH_HW_FAIL = const(0x01)
CH_OVERTEMP = const(0x02)
CH_INPUT_FAULT = const(0x04)
CH_NO_BATTERY = const(0x08)  # starting state: battery not detected or reversed, output off
CH_COMM_TIMEOUT = const(0x10)


class CanChargers:
    """Command frames and decoded status of the CAN chargers of n slots; nothing allocated per frame."""

    def __init__(self, n, first=0xE5, controller=_CONTROLLER):
        self.n = n
        self.first = first
        self._cmd_ids = tuple(_CMD_BASE | ((first + s) << 8) | controller for s in range(n))
        self.buf = bytearray(8)  # the last command's payload, for the caller to send
        self.out_mv = [0] * n
        self.out_ma = [0] * n
        self.flags = [0] * n
        self.t_ms = [0] * n
        self.seen = [False] * n

    def command(self, slot, voltage_mv, current_ma):
        """Fill self.buf for slot's charger; returns the 29-bit id. A current setpoint <= 0 (or a
        voltage <= 0) is off. Setpoints round down: never above what was asked."""
        b = self.buf
        if current_ma <= 0 or voltage_mv <= 0:
            dv = da = 0
            b[4] = 1
        else:
            dv = min(voltage_mv // 100, 0xFFFF)
            da = min(current_ma // 100, 0xFFFF)
            b[4] = 0
        b[0] = dv >> 8
        b[1] = dv & 0xFF
        b[2] = da >> 8
        b[3] = da & 0xFF
        b[5] = b[6] = b[7] = 0
        return self._cmd_ids[slot]

    def send(self, can, slot, voltage_mv, current_ma):
        """Command slot's charger through an MCP2515; False when no TX buffer was free."""
        return can.send(self.command(slot, voltage_mv, current_ma), self.buf, True)

    def feed(self, fid, data, off, dlc, now_ms):
        """A received frame; returns the slot whose charger status it was, or -1."""
        if fid & ~0xFF != EXT | _STATUS_BASE or dlc < 5:
            return -1
        slot = (fid & 0xFF) - self.first
        if slot < 0 or slot >= self.n:
            return -1
        self.out_mv[slot] = ((data[off] << 8) | data[off + 1]) * 100
        self.out_ma[slot] = ((data[off + 2] << 8) | data[off + 3]) * 100
        self.flags[slot] = data[off + 4]
        self.t_ms[slot] = now_ms
        self.seen[slot] = True
        return slot

    def fresh(self, slot, now_ms, max_age_ms=3000):
        """A status frame arrived within max_age_ms (the charger reports every second)."""
        return self.seen[slot] and ticks_diff(now_ms, self.t_ms[slot]) < max_age_ms

    def fault(self, slot):
        """The charger reports a fault that must keep the slot from charging."""
        return self.flags[slot] & (CH_HW_FAIL | CH_OVERTEMP | CH_INPUT_FAULT) != 0
