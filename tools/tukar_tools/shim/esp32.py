# The ESP32's app partitions and its bootloader, for the host: `esp32.Partition` as MicroPython's
# ESP32 port has it (RUNNING/BOOT, get_next_update, the block protocol, set_boot,
# mark_app_valid_cancel_rollback) over a partition table of two OTA slots, ota_0 and ota_1, kept as
# files in the cabinet's flash directory so that they outlive a power cut; and the image states of
# ESP-IDF's bootloader with rollback enabled:
#   set_boot()          the partition's image becomes "new" and is booted at the next reset;
#   a boot of "new"     makes it "pending_verify" and runs it;
#   a boot of "pending_verify" (the last boot never confirmed it) marks it "aborted" and boots the
#                       other partition, whose image is valid (a rollback);
#   mark_app_valid_cancel_rollback()   makes the running image "valid";
#   "invalid"/"aborted" and an image whose header does not read are never booted.
# The flash itself is NOR: an erase (ioctl 6) sets a 4096-byte block to 0xFF and a write only
# clears bits, so a write to a block that was not erased is caught.
#
# A simulated image cannot carry code (the simulator runs the same firmware whatever the image):
# it is a header (SIM_MAGIC, a length, JSON: version, board, chip, and `fault` for the tests) then
# filler. boot() returns the header of the image it boots; the simulator runs the firmware as
# that version. Written in the subset MicroPython and CPython share: the unix MicroPython runtime
# can freeze it as its `esp32`.
import json
import os

BLOCK = 4096
OTA_SIZE = 0x180000  # each OTA slot of MicroPython's 4 MB OTA partition table
LABELS = ("ota_0", "ota_1")
DIR = "partitions"
OTADATA = "otadata.json"
SIM_MAGIC = b"TUKARSIM"
NEW = "new"
PENDING = "pending_verify"
VALID = "valid"
INVALID = "invalid"
ABORTED = "aborted"
UNDEFINED = "undefined"


def _path(root, name):
    return root + DIR + "/" + name


def _mkdir(root):
    for d in (root.rstrip("/"), root + DIR):
        if d:
            try:
                os.mkdir(d)
            except OSError:
                pass  # exists


def _load(root):
    try:
        with open(_path(root, OTADATA)) as f:
            d = json.load(f)
        if isinstance(d, dict) and d.get("boot") in LABELS:
            return d
    except (OSError, ValueError):
        pass
    return {"boot": LABELS[0], "running": LABELS[0], "states": {LABELS[0]: UNDEFINED,
                                                                 LABELS[1]: UNDEFINED}}


def _save(root, d):
    _mkdir(root)
    p = _path(root, OTADATA)
    with open(p + ".tmp", "w") as f:
        json.dump(d, f)
    try:
        os.remove(p)  # MicroPython's rename does not replace on every port
    except OSError:
        pass
    os.rename(p + ".tmp", p)


def read(root, label, offset, n):
    """n bytes of partition `label` from `offset` (0xFF where nothing was ever written)."""
    try:
        with open(_path(root, label + ".bin"), "rb") as f:
            f.seek(offset)
            data = f.read(n)
    except OSError:
        data = b""
    if len(data) < n:
        data = data + b"\xff" * (n - len(data))
    return data


def _write(root, label, offset, data):
    _mkdir(root)
    p = _path(root, label + ".bin")
    try:
        f = open(p, "r+b")
    except OSError:
        f = open(p, "w+b")
    try:
        f.seek(0, 2)
        end = f.tell()
        if end < offset:
            f.write(b"\xff" * (offset - end))
        f.seek(offset)
        f.write(data)
    finally:
        f.close()


def header(root, label):
    """The simulated image's header in partition `label` (a dict), or None when it does not read."""
    head = read(root, label, 0, 12)
    if head[:8] != SIM_MAGIC:
        return None
    n = head[8] | head[9] << 8
    try:
        h = json.loads(read(root, label, 10, n))
    except (ValueError, UnicodeError):
        return None
    return h if isinstance(h, dict) and isinstance(h.get("version"), str) else None


def make_image(version, board="tukar-12-wroom", chip="esp32", size=65536, fault=None, seed=1):
    """A simulated image of `size` bytes: the header, then filler that differs with the seed."""
    h = {"version": version, "board": board, "chip": chip}
    if fault:
        h["fault"] = fault
    text = json.dumps(h).encode()
    out = bytearray(SIM_MAGIC + bytes((len(text) & 0xFF, len(text) >> 8)) + text)
    x = seed & 0xFFFF or 1
    while len(out) < size:
        x = (x * 75 + 74) % 65537
        out.append(x & 0xFF)
    return bytes(out[:size]) if len(out) >= size else bytes(out)


def install_factory(root, version, board="tukar-12-wroom", chip="esp32"):
    """A fresh cabinet: ota_0 holds the image it was flashed with, nothing else. Idempotent."""
    if header(root, LABELS[0]) is not None:
        return
    _write(root, LABELS[0], 0, make_image(version, board, chip, size=BLOCK))
    _save(root, {"boot": LABELS[0], "running": LABELS[0],
                 "states": {LABELS[0]: VALID, LABELS[1]: UNDEFINED}})


def boot(root):
    """The bootloader at a reset: chooses the image to run (rolling back a pending one), records it
    as running, and returns its header (None: no bootable image, the chip would not start)."""
    d = _load(root)
    st = d["states"]
    chosen = d["boot"]
    other = LABELS[1] if chosen == LABELS[0] else LABELS[0]
    s = st.get(chosen, UNDEFINED)
    if s == PENDING:  # never confirmed by the boot it was given: roll back
        st[chosen] = ABORTED
        s = ABORTED
    elif s == NEW:
        st[chosen] = PENDING
        s = PENDING
    if s in (INVALID, ABORTED) or header(root, chosen) is None:
        if st.get(other, UNDEFINED) in (VALID, UNDEFINED) and header(root, other) is not None:
            chosen = other
            d["boot"] = other
        else:
            _save(root, d)
            return None
    d["running"] = chosen
    _save(root, d)
    return header(root, chosen)


def state(root):
    """The otadata as the bootloader keeps it: {"boot", "running", "states": {label: state}}."""
    return _load(root)


def bind(root=""):
    """A `Partition` class over the partition files under `root` (the cabinet's flash directory,
    with its trailing separator). The simulator gives each cabinet its own."""

    class Partition:
        BOOT = 0
        RUNNING = 1
        TYPE_APP = 0
        TYPE_DATA = 1
        writes = 0  # writeblocks calls, all partitions (the tests cut the power at each)
        on_write = None  # called before each write with the count: a test's power cut

        def __init__(self, id, block_size=BLOCK):
            if id == Partition.RUNNING:
                id = _load(root)["running"]
            elif id == Partition.BOOT:
                id = _load(root)["boot"]
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
            data = read(root, self.label, block_num * self.block_size + offset, len(buf))
            buf[:] = data

        def writeblocks(self, block_num, buf, offset=None):
            start = block_num * self.block_size + (offset or 0)
            if start < 0 or start + len(buf) > OTA_SIZE:
                raise OSError(22)  # EINVAL: outside the partition
            Partition.writes += 1
            if Partition.on_write is not None:
                Partition.on_write(Partition.writes)
            if offset is None:  # the simple protocol erases the blocks first
                for b in range(len(buf) // self.block_size):
                    self.ioctl(6, block_num + b)
            old = read(root, self.label, start, len(buf))
            _write(root, self.label, start, bytes(a & b for a, b in zip(old, bytes(buf))))

        def ioctl(self, op, arg=None):
            if op == 4:  # block count
                return OTA_SIZE // self.block_size
            if op == 5:
                return self.block_size
            if op == 6:  # erase a block
                if not 0 <= arg < OTA_SIZE // self.block_size:
                    raise OSError(22)
                _write(root, self.label, arg * self.block_size, b"\xff" * self.block_size)
                return 0
            return None

        def set_boot(self):
            if header(root, self.label) is None:  # esp_ota_set_boot_partition verifies the image
                raise OSError(-5379)  # ESP_ERR_OTA_VALIDATE_FAILED
            d = _load(root)
            d["boot"] = self.label
            d["states"][self.label] = NEW
            _save(root, d)

        @classmethod
        def mark_app_valid_cancel_rollback(cls):
            d = _load(root)
            d["states"][d["running"]] = VALID
            _save(root, d)

    return Partition


class Module:
    """A stand-in for the `esp32` module with the partitions of one cabinet's flash directory."""

    def __init__(self, root):
        self.root = root
        self.Partition = bind(root)
