"""A simulated CAN bus for the host: joins MCP2515 models with simulated nodes (BMS, chargers).

Time-driven: `step(now_ms)` lets every node send what is due, delivers each frame to every other
participant, and lets controllers count idle bus time (bus-off recovery). Counts frames and bits
(with stuff bits) for bus-load figures.
"""

from typing import NamedTuple


class Frame(NamedTuple):
    id: int
    data: bytes
    extended: bool = False
    rtr: bool = False


_CRC15_POLY = 0x4599


def _crc15(bits):
    crc = 0
    for b in bits:
        nxt = b ^ ((crc >> 14) & 1)
        crc = (crc << 1) & 0x7FFF
        if nxt:
            crc ^= _CRC15_POLY
    return crc


def _bits(value, n):
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def frame_bits(frame):
    """Bits the frame occupies on the wire: SOF to EOF with stuff bits, plus 3 bits interframe space."""
    dlc = len(frame.data)
    if frame.extended:
        head = [0] + _bits(frame.id >> 18, 11) + [1, 1] + _bits(frame.id & 0x3FFFF, 18) + [int(frame.rtr), 0, 0]
    else:
        head = [0] + _bits(frame.id, 11) + [int(frame.rtr), 0, 0]
    stuffed = head + _bits(dlc, 4)
    if not frame.rtr:
        for byte in frame.data:
            stuffed += _bits(byte, 8)
    stuffed += _bits(_crc15(stuffed), 15)
    stuff = 0
    run, last = 0, None
    for b in stuffed:
        if b == last:
            run += 1
        else:
            run, last = 1, b
        if run == 5:
            stuff += 1
            last = 1 - b  # the stuff bit starts a new run
            run = 1
    return len(stuffed) + stuff + 1 + 1 + 1 + 7 + 3  # CRC delimiter, ACK slot, ACK delimiter, EOF, IFS


class CanBus:
    def __init__(self, bitrate=500_000):
        self.bitrate = bitrate
        self.fault = False  # shorted or broken bus: nothing gets through
        self.nodes = []
        self.controllers = []
        self.frames = 0
        self.bits = 0
        self.log = None  # a list to record (now_ms, frame) into, when set
        self.now_ms = 0
        self._bits_cache = {}
        # Called after each frame: the receiving MCU's chance to drain the chip's two RX buffers,
        # as its INT-driven task does while the next frame is still on the wire (~230 us at 500k).
        self.between_frames = None
        # A firmware in another process drains the chip at its own pace: frames then wait on the
        # wire until every controller has a free RX buffer (`pump`), up to WIRE_MAX of them.
        self.paced = False
        self.wire = []
        self.dropped = 0

    WIRE_MAX = 64

    def attach(self, node):
        """A simulated node: step(now_ms) -> frames to send; receive(frame) for frames it hears."""
        self.nodes.append(node)
        return node

    def attach_controller(self, model):
        """An MCP2515 model (or anything with deliver(frame) and tick(now_ms, bitrate))."""
        model.bus = self
        self.controllers.append(model)
        return model

    def transmit(self, frame, sender=None):
        if self.fault:
            return False
        self.frames += 1
        key = (frame.id, bytes(frame.data), frame.extended)
        bits = self._bits_cache.get(key)
        if bits is None:  # stuffing depends on the content only: count each distinct frame once
            if len(self._bits_cache) > 4096:
                self._bits_cache.clear()
            bits = self._bits_cache[key] = frame_bits(frame)
        self.bits += bits
        if self.log is not None:
            self.log.append((self.now_ms, frame))
        for node in self.nodes:
            if node is not sender and hasattr(node, "receive"):
                node.receive(frame)
        for c in self.controllers:
            if c is not sender:
                c.deliver(frame)
        return True

    def step(self, now_ms):
        self.now_ms = now_ms
        for node in self.nodes:
            for frame in node.step(now_ms):
                if self.paced:
                    self.wire.append((frame, node))
                    continue
                self.transmit(frame, node)
                if self.between_frames is not None:
                    self.between_frames()
        if self.paced:
            if len(self.wire) > self.WIRE_MAX:  # the firmware stopped draining: the oldest are lost
                self.dropped += len(self.wire) - self.WIRE_MAX
                del self.wire[:len(self.wire) - self.WIRE_MAX]
            self.pump()
        for c in self.controllers:
            c.tick(now_ms, self.bitrate)

    def pump(self):
        """Paced: put waiting frames on the bus while every controller can take one."""
        while self.wire and not any(c.rx_full() for c in self.controllers):
            frame, node = self.wire.pop(0)
            self.transmit(frame, node)

    def load(self, duration_ms):
        """Share of the bus used by the bits counted so far over duration_ms."""
        return self.bits / (self.bitrate * duration_ms / 1000)
