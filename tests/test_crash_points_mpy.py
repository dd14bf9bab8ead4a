"""Power cut at the crash points of a swap in the MicroPython runtime (tools/tukar_tools/crashpoints.py):
the firmware frozen in the 32-bit unix port, one cabinet in the simulator, a real broker, a rider
driving the swap through MQTT and the physical world. tests/test_crash_points.py does the same to
the application under CPython.

First the host's side of the crash points, on HardwareServer alone: which requests are points,
and a cut that leaves the request unanswered and undone. Then a swap without a cut, whose points
are counted; then a cut at each point from the start_swap up to and including the dispense door's
unlock (DISPENSE_POINTS below), where the write-ahead matters: a door that opens commits the
cabinet to the rider. The points after it (the dispense door locking again, the last write) are
cut by `make crashpoints`, which cuts at every point and prints each outcome (docs/safety.md)."""
import socket
import struct
import threading

import pytest
from brokers import mqtt_broker  # noqa: F401 (a fixture)

from tukar_tools import crashpoints, mprt
from tukar_tools.rig import Physical

# The points of a swap on the 6-slot cabinet crashpoints.py stocks (S-01..S-04 in slots 1 to 4;
# slot 5 opens for the rider's pack; S-01, the fullest, is handed out from slot 1), up to the
# dispense door's unlock: (name, occurrence), in order. The outbox's spill file is written before
# the fourth state only when the link has not yet published the events the swap made (its timing
# is the link's): not cut here, but counted and cut by `make crashpoints` when it comes.
DISPENSE_POINTS = [
    ("flash state/state.json.tmp", 1),  # the write-ahead: SwapStarted, before the rider's door opens
    ("slot 5 unlock", 1),
    ("slot 5 lock", 1),  # the rider's pack in, the door shut
    ("flash state/state.json.tmp", 2),
    ("slot 5 charger on", 1),  # the rider's pack identified: it charges
    ("flash state/state.json.tmp", 3),  # BatteryIn
    ("flash state/state.json.tmp", 4),  # the write-ahead before the dispense door opens
    ("slot 1 charger off", 1),  # a charger is off before its door opens
    ("slot 1 unlock", 1),
]
SPILL = "flash state/outbox.*"


# -- the host's side ----------------------------------------------------------------------------------
class Wire:
    """A firmware process's two sockets to a HardwareServer, speaking its wire protocol."""

    def __init__(self, port):
        self.rpc = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.note = socket.create_connection(("127.0.0.1", port), timeout=5)

    def call(self, op, args=b""):
        """The reply's (status, data), or None when the host closed the socket unanswered."""
        self.rpc.sendall(struct.pack("<HB", len(args) + 1, op) + args)
        head = b""
        while len(head) < 3:
            chunk = self.rpc.recv(3 - len(head))
            if not chunk:
                return None
            head += chunk
        n, status = struct.unpack("<HB", head)
        data = b""
        while len(data) < n - 1:
            data += self.rpc.recv(n - 1 - len(data))
        return status, data

    def close(self):
        self.rpc.close()
        self.note.close()


def wmem(bus, addr, reg, data):
    return 12, struct.pack("<BBIB", bus, addr, reg, 8) + bytes(data)


def test_the_host_sees_flash_writes_and_output_changes_before_it_carries_them_out():
    phys = Physical("tukar-12-wroom")
    x0 = phys.world.expanders[0]
    server = mprt.HardwareServer(phys.hw, threading.RLock())
    server.output_pins = mprt.output_pins(phys.cfg)
    assert server.output_pins == {32, 33}  # the fan and the alarm; locks and chargers on expanders
    seen = []
    cut = []
    server.on_point = lambda kind, detail: seen.append((kind, detail)) or detail == "cut.tmp"
    server.on_cut = lambda: cut.append(True)
    w = Wire(server.port)
    try:
        assert w.call(10, struct.pack("<BbbII", 0, 22, 21, 400000, 50000)) == (0, b"")
        w.call(*wmem(0, 0x20, 0x14, (0, 0)))  # the latches (all off), then the directions:
        w.call(*wmem(0, 0x20, 0x00, (0xE7, 0x9C)))  # outputs now, all off: no change
        assert seen == []
        w.call(*wmem(0, 0x20, 0x14, (0x08, 0x00)))  # slot 1's lock energised
        w.call(*wmem(0, 0x20, 0x14, (0x08, 0x00)))  # again: no change
        w.call(14, bytes((0, 0x20, 1, 0x12, 0x18)))  # GPIOA written is OLATA: slot 1's charger on
        w.call(*wmem(0, 0x20, 0x0C, (0xFF, 0xFF)))  # pull-ups: not an output
        assert seen == [("expander", (0, 0x20, 0x0000, 0x0008)),
                        ("expander", (0, 0x20, 0x0008, 0x0018))]
        names = crashpoints.Names(phys.cfg)
        assert [names.name(*p) for p in seen] == ["slot 1 unlock", "slot 1 charger on"]
        del seen[:]
        w.call(1, struct.pack("<BbbB", 32, 3, -1, 0))  # Pin(32, OUT, value=0): low already
        w.call(3, bytes((32, 1)))  # the fan on
        w.call(3, bytes((32, 1)))
        w.call(3, bytes((4, 1)))  # the analog mux's select line: not an output of the cabinet
        w.call(60, b"state/state.json.tmp")
        assert seen == [("pin", (32, 0, 1)), ("flash", "state/state.json.tmp")]
        assert [names.name(*p) for p in seen] == ["fan on", "flash state/state.json.tmp"]
        assert server.flash_writes == 1 and not cut
        # The cut: on_cut, the request neither carried out nor answered.
        server.on_point = lambda kind, detail: True
        assert w.call(*wmem(0, 0x20, 0x14, (0x00, 0x00))) is None
        assert cut == [True] and x0.outputs() == 0x0018
    finally:
        w.close()
        server.close()


def test_no_hook_no_points():
    phys = Physical("tukar-12-wroom")
    server = mprt.HardwareServer(phys.hw, threading.RLock())
    server._point = None  # would raise, were it looked at
    w = Wire(server.port)
    try:
        w.call(10, struct.pack("<BbbII", 0, 22, 21, 400000, 50000))
        assert w.call(*wmem(0, 0x20, 0x00, (0x00, 0x00))) == (0, b"")
        assert w.call(60, b"x") == (0, b"")
        assert server.flash_writes == 1
    finally:
        w.close()
        server.close()


# -- a swap in MicroPython ----------------------------------------------------------------------------
def dispense_points(run):
    names = crashpoints.label(run.points)
    return [names[i] for i in crashpoints.dispense_subset(run) if names[i][0] != SPILL]


@pytest.mark.mpy
@pytest.mark.flaky(reruns=2)  # real time, as the other MicroPython end-to-end tests
def test_a_swap_in_micropython_has_crash_points_at_its_flash_writes_and_output_changes(
        mqtt_broker):
    run = crashpoints.attempt(mqtt_broker.port)
    assert run.problems == [], run.problems
    assert run.report["got"] == "S-01" and run.report["ends"] == ["SwapCompleted(S-01)"]
    kinds = [kind for _, kind, *_ in run.points]
    assert kinds.count("flash") >= 5, run.points
    assert len(kinds) - kinds.count("flash") >= 6, run.points
    assert dispense_points(run) == DISPENSE_POINTS, crashpoints.label(run.points)


@pytest.mark.mpy
@pytest.mark.flaky(reruns=2)
@pytest.mark.parametrize("name, k", DISPENSE_POINTS, ids=["%d-%s#%d" % (i, n.replace(" ", "_"), k)
                                                         for i, (n, k) in enumerate(DISPENSE_POINTS, 1)])
def test_power_cut_at_each_crash_point_up_to_the_dispense_door(mqtt_broker, name, k):
    run = crashpoints.attempt(mqtt_broker.port, (name, k))
    assert run.cut_at is not None, "the point was never reached: %s" % crashpoints.label(run.points)
    assert run.problems == [], (run.problems, run.report)
    # What the rider leaves with follows from what was on flash: before BatteryIn (the third
    # state), their own pack back, or no swap at all; after it, the charged one.
    i = DISPENSE_POINTS.index((name, k))
    assert run.report["got"] == ("S-01" if i >= 6 else crashpoints.RIDER), run.report
