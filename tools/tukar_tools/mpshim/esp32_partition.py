# `esp32.Partition` for the firmware in the MicroPython unix port (esp32.py imports it the first
# time the firmware asks for it): the partition table of tools/tukar_tools/shim/esp32.py, over the
# same files, so that the host's bootloader model reads what this process wrote. The process runs
# in the cabinet's flash directory: `partitions/ota_0.bin` and `partitions/ota_1.bin` (1.5 MB
# each, MicroPython's 4 MB OTA table; a file shorter than that reads 0xFF past its end), and
# `partitions/otadata.json` ({"boot", "running", "states": {label: ESP-IDF's image state}}).
# NOR flash as there: an erase (ioctl 6) sets a 4096-byte block to 0xFF, a write only clears bits.
#
# Lean where the host's model is plain: the firmware's own update has 2 to 3 KB of heap to spare
# in the frozen build, so a write ANDs the old contents in through one 128-byte buffer, never a
# copy of the caller's buffer.
import json
import os

from micropython import const

BLOCK = const(4096)
OTA_SIZE = const(0x180000)
LABELS = ("ota_0", "ota_1")
OTADATA = "partitions/otadata.json"
SIM_MAGIC = b"TUKARSIM"
PIECE = const(128)

_piece = bytearray(PIECE)


def _load():
    try:
        with open(OTADATA) as f:
            d = json.load(f)
        if isinstance(d, dict) and d.get("boot") in LABELS:
            return d
    except (OSError, ValueError):
        pass
    return {"boot": "ota_0", "running": "ota_0", "states": {"ota_0": "undefined",
                                                             "ota_1": "undefined"}}


def _save(d):
    _mkdir()
    with open(OTADATA + ".tmp", "w") as f:
        json.dump(d, f)
    try:
        os.remove(OTADATA)  # the unix port's rename replaces, the ESP32's littlefs does not
    except OSError:
        pass
    os.rename(OTADATA + ".tmp", OTADATA)


def _mkdir():
    try:
        os.mkdir("partitions")
    except OSError:
        pass  # exists


def _file(label):
    return "partitions/" + label + ".bin"


def _header_error(label):
    """Why the simulated image's header does not read (set_boot's check, the shim's `header`), or
    None when it does."""
    try:
        with open(_file(label), "rb") as f:
            head = f.read(10)
            if len(head) < 10 or head[:8] != SIM_MAGIC:
                return "no image header: %r" % (bytes(head),)
            h = json.loads(f.read(head[8] | head[9] << 8))
    except (OSError, ValueError, UnicodeError) as e:
        return repr(e)
    if isinstance(h, dict) and isinstance(h.get("version"), str):
        return None
    return "no version in the header"


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=BLOCK):
        if id == 1:
            id = _load()["running"]
        elif id == 0:
            id = _load()["boot"]
        if id not in LABELS:
            raise ValueError("no partition %r" % (id,))
        self.label = id
        self.block_size = block_size

    def info(self):
        i = LABELS.index(self.label)
        return (0, 0x10 + i, 0x10000 + i * OTA_SIZE, OTA_SIZE, self.label, False)

    def get_next_update(self):
        return Partition(LABELS[1] if self.label == LABELS[0] else LABELS[0])

    def readblocks(self, block_num, buf, offset=0):
        n = 0
        try:
            with open(_file(self.label), "rb") as f:
                f.seek(block_num * self.block_size + offset)
                n = f.readinto(buf) or 0
        except OSError:
            pass
        for i in range(n, len(buf)):  # never written: erased flash
            buf[i] = 0xFF

    def writeblocks(self, block_num, buf, offset=None):
        start = block_num * self.block_size + (offset or 0)
        if start < 0 or start + len(buf) > OTA_SIZE:
            raise OSError(22)  # EINVAL: outside the partition
        if offset is None:  # the simple protocol erases the blocks first
            for b in range(len(buf) // self.block_size):
                self.ioctl(6, block_num + b)
        f = _open(self.label, start)
        p = _piece
        try:
            done = 0
            while done < len(buf):
                k = min(PIECE, len(buf) - done)
                f.seek(start + done)
                got = f.readinto(p) or 0  # past the end of the file: erased (0xFF)
                for i in range(k):
                    p[i] = (p[i] if i < got else 0xFF) & buf[done + i]
                f.seek(start + done)
                f.write(memoryview(p)[:k])
                done += k
        finally:
            f.close()

    def ioctl(self, op, arg=None):
        if op == 4:  # block count
            return OTA_SIZE // self.block_size
        if op == 5:
            return self.block_size
        if op == 6:  # erase a block
            if not 0 <= arg < OTA_SIZE // self.block_size:
                raise OSError(22)
            at = arg * self.block_size
            f = _open(self.label, at)
            try:
                f.seek(at)
                for i in range(PIECE):
                    _piece[i] = 0xFF
                for _ in range(self.block_size // PIECE):
                    f.write(_piece)
            finally:
                f.close()
            return 0
        return None

    def set_boot(self):
        why = _header_error(self.label)
        if why is not None:  # esp_ota_set_boot_partition verifies the image
            print("esp32 (simulator): set_boot(%s): %s" % (self.label, why))  # in console.log
            raise OSError(-5379)  # ESP_ERR_OTA_VALIDATE_FAILED
        d = _load()
        d["boot"] = self.label
        d["states"][self.label] = "new"
        _save(d)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        d = _load()
        d["states"][d["running"]] = "valid"
        _save(d)


def _open(label, offset):
    """The partition's file to update, at least `offset` bytes long (0xFF up to there)."""
    _mkdir()
    p = _file(label)
    try:
        f = open(p, "r+b")
    except OSError:
        f = open(p, "w+b")
    f.seek(0, 2)
    end = f.tell()
    if end < offset:
        for i in range(PIECE):
            _piece[i] = 0xFF
        while end < offset:
            k = min(PIECE, offset - end)
            f.write(memoryview(_piece)[:k])
            end += k
    return f
