# Over-the-air update (docs/ota.md): the `ota` command's checks, the download into the next OTA
# partition on a thread of its own and the switch of the boot partition; after the reset,
# tukar.otaboot runs the new image's self-test or the old image's report of a rollback. Imported
# only when an `ota` command comes, and let go when the update fails: a cabinet that is not
# updating keeps none of it in its heap.
#
# The record (store key "ota") carries what must outlive the reset: the version expected, the
# version it replaces, the partition written and the phase: "download" (a power cut then ends the
# update: the download is not resumed across a reboot) or "boot" (set_boot done: the partition
# the bootloader started says whether the new image runs or was rolled back).
import hashlib
from binascii import hexlify

from micropython import const

import tukar
from tukar import errors as E
from tukar.clock import sleep_ms, ticks_ms, wrap_diff
from tukar.device import unload
from tukar.otaboot import KEY, partitions
from tukar.states import MAINTENANCE, OUT_OF_SERVICE

CHUNK = const(512)  # bytes received and written at a time: the only buffer of the download
BLOCK = const(4096)  # the flash's erase block
ATTEMPTS = const(6)  # connections per download; each one resumes where the last stopped
RETRY_MS = const(2000)  # the first wait before a new connection, doubled after each failure
TIMEOUT_S = const(10)  # a socket operation longer than this ends the connection
PROGRESS_MS = const(2000)  # OtaProgress: at each 10 %, at most once in this time
ACK_WAIT_MS = const(3000)  # a verified image waits at most this for the ota ack to be published

ALLOWED_MODES = (MAINTENANCE, OUT_OF_SERVICE)


class Refused(Exception):
    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def version_tuple(v):
    """Dotted integers ("1.4.12") as a tuple; None for anything else."""
    if type(v) is not str or not 0 < len(v) <= 32:
        return None
    out = []
    for p in v.split("."):
        if not p or not p.isdigit() or len(p) > 6:
            return None
        out.append(int(p))
    return tuple(out)


def _hex64(s):
    if type(s) is not str or len(s) != 64:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def parse_url(url):
    """(host, port, path) of an http:// URL; None when it is not one."""
    if type(url) is not str or len(url) > 256 or url[:7] != "http://":
        return None
    rest = url[7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host, port = hostport, 80
    j = hostport.rfind(":")
    if j >= 0:
        host = hostport[:j]
        if not hostport[j + 1:].isdigit():
            return None
        port = int(hostport[j + 1:])
    if not host or not 0 < port < 65536:
        return None
    return host, port, path


def check(body, running, board, chip, capacity):
    """The manifest (the command's signed body) against this cabinet; raises Refused."""
    url = parse_url(body.get("url"))
    if url is None:
        raise Refused(E.BAD_ARGS, "url: an http:// URL is required")
    size = body.get("size")
    if type(size) is not int or size <= 0:
        raise Refused(E.BAD_ARGS, "size: a positive integer is required")
    if not _hex64(body.get("sha256")):
        raise Refused(E.BAD_ARGS, "sha256: 64 lowercase hex digits are required")
    new = version_tuple(body.get("version"))
    if new is None:
        raise Refused(E.BAD_ARGS, "version: dotted integers are required, e.g. 1.2.0")
    force = body.get("force", False)
    if type(force) is not bool:
        raise Refused(E.BAD_ARGS, "force: true or false")
    if body.get("board") != board or body.get("chip") != chip:
        raise Refused(E.WRONG_TARGET, "image for %r/%r, this cabinet is %s/%s" % (
            body.get("board"), body.get("chip"), board, chip))
    if size > capacity:
        raise Refused(E.IMAGE_TOO_LARGE, "%d bytes, the partition holds %d" % (size, capacity))
    old = version_tuple(running)
    if old is not None and new <= old and not force:
        raise Refused(E.NOT_NEWER, "version %s is not newer than %s (force: true installs it)" % (
            body["version"], running))
    return url


def shell_command(app, body):
    """A command App.control_step hands here instead of to the core: `ota` itself, and while an
    update runs the commands that would open a door or start swaps. Returns its ack."""
    from tukar.errors import make_ack
    req_id = body.get("req_id")
    try:
        if body.get("cmd") != "ota":
            raise Refused(E.BUSY, "a firmware update is running")
        return make_ack(req_id, None, "", command(app, body, tukar.FW_VERSION))
    except Refused as e:
        return make_ack(req_id, e.code, e.detail)
    except Exception as e:  # a bug must not take the cabinet down with it
        return make_ack(req_id, E.NOT_ALLOWED, "internal error: %r" % (e,))


def command(app, body, running):
    """The `ota` command: the result of its ack; raises Refused."""
    core = app.core
    P = partitions(app)
    if P is None:
        raise Refused(E.NOT_ALLOWED, "this build has no OTA partitions")
    if app.ota is not None:
        raise Refused(E.BUSY, "an update is already running")
    if core.mode not in ALLOWED_MODES:
        raise Refused(E.WRONG_MODE, "ota needs maintenance or out_of_service mode, not %s" % core.mode)
    if core.session is not None:
        raise Refused(E.BUSY, "session %s is open" % core.session.id)
    for s in core.slots:
        if not s.lock_cmd:
            raise Refused(E.BUSY, "slot %d is unlocked" % s.n)
    part = P(P.RUNNING).get_next_update()
    info = part.info()
    url = check(body, running, app.board.name, app.board.chip, info[3])
    u = Update(app, body, url, part, info[4], running)
    app.store.save(KEY, u.record("download"), ticks_ms())
    app.ota = u
    from tukar.threads import OTA_STACK, spawn
    try:
        spawn(u.run, OTA_STACK)
    except Exception as e:  # no memory for its stack: the update ends before it began
        app.ota = None
        app.store.remove(KEY)
        raise Refused(E.BUSY, "cannot start the download: %r" % (e,))
    core.report("OtaStarted", {"version": u.version, "from": running, "size": u.size,
                               "partition": u.label})
    return {"version": u.version, "partition": u.label}


class Update:
    """One download, written by its thread (done, result) and read by the control loop (tick)."""

    busy = True  # swaps, open_slot and in_service wait while an update runs
    starve = False  # the watchdog is fed

    def __init__(self, app, body, url, part, label, running):
        self.app = app
        self.host, self.port, self.path = url
        self.size = body["size"]
        self.sha = body["sha256"]
        self.version = body["version"]
        self.running = running
        self.part = part
        self.label = label
        self.done = 0
        self.result = None  # None while downloading; then True (verified) or the failure's reason
        self.connects = 0
        self._pct = 0
        self._t = ticks_ms()
        self._ack_wait = None  # when a verified image began to wait for the ack to leave

    def record(self, phase):
        return {"phase": phase, "version": self.version, "from": self.running,
                "target": self.label}

    # -- the control loop's side -------------------------------------------------------------
    def tick(self, app, now):
        core = app.core
        pct = self.done * 100 // self.size
        if pct >= self._pct + 10 and wrap_diff(now, self._t) >= PROGRESS_MS and pct < 100:
            self._pct = pct - pct % 10
            self._t = now
            core.report("OtaProgress", {"version": self.version, "bytes": self.done,
                                        "size": self.size, "percent": self._pct})
        r = self.result
        if r is None:
            return
        if r is True and app.link.connected and app.link._acks:
            # Acks are not kept across a reset: a download faster than the link (a small image on
            # a fast network) would reset with the ota command's ack unpublished, and the operator
            # would see no answer. Connected, the link publishes it within a tick or two.
            if self._ack_wait is None:
                self._ack_wait = now
            if wrap_diff(now, self._ack_wait) < ACK_WAIT_MS:
                return
        if r is True and (core.mode not in ALLOWED_MODES or core.session is not None):
            r = "mode changed to %s" % core.mode  # never reset into a swap or an emergency
        if r is True:
            # The record first: a power cut after set_boot finds it and judges the boot.
            if not app.store.save(KEY, self.record("boot"), now):
                r = "flash: the update's record did not write"
            else:
                try:
                    self.part.set_boot()
                except OSError as e:
                    r = "set_boot: %r" % (e,)
        if r is True:
            core.report("OtaProgress", {"version": self.version, "bytes": self.size,
                                        "size": self.size, "percent": 100})
            app.stopping = "ota"  # an orderly stop, then the reset that boots the new image
            self.busy = False
            return
        app.store.remove(KEY)
        app.ota = None
        core.report("OtaFailed", {"version": self.version, "reason": str(r)[:120]})
        unload(("ota", "otaboot"))  # their heap back to a cabinet that goes on as it was

    # -- the download thread -----------------------------------------------------------------
    def run(self):
        try:
            self.result = self._download()
        except Exception as e:  # whatever it was, the boot partition stays as it is
            self.result = "download: %r" % (e,)

    def _alive(self):
        return self.app.stopping is None

    def _download(self):
        buf = bytearray(CHUNK)
        h = None
        wait = RETRY_MS
        err = None
        for _ in range(ATTEMPTS):
            if not self._alive():
                return "stopped"
            self.connects += 1
            s = None
            try:
                s, f, start = self._get(self.done)
                if start == 0 or h is None:  # not resumed: hash and write from the first byte
                    h = hashlib.sha256()
                    self.done = 0
                self._receive(f, buf, h)
                err = None
            except OSError as e:
                err = e
            finally:
                if s is not None:
                    s.close()
            if err is None and self.done == self.size:
                break
            if err is None:
                err = "connection closed at %d of %d bytes" % (self.done, self.size)
            sleep_ms(wait)
            wait *= 2
        if self.done != self.size:
            return "download: %s" % (err,)
        if hexlify(h.digest()).decode() != self.sha:  # type: ignore[union-attr]
            return "sha256 mismatch"
        # Read back what the flash holds: what is booted is what was checked.
        h = hashlib.sha256()
        mv = memoryview(buf)
        off = 0
        while off < self.size:
            n = min(CHUNK, self.size - off)
            self.part.readblocks(off // BLOCK, mv[:n], off % BLOCK)
            h.update(mv[:n])
            off += n
        if hexlify(h.digest()).decode() != self.sha:
            return "sha256 mismatch in flash"
        return True

    def _get(self, start):
        """An HTTP/1.0 GET (no chunked encoding), from `start` with a Range header. Returns the
        socket, its stream and where the body begins: `start` when the server answers 206 for it,
        0 when it sends the whole image (200)."""
        import socket
        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        s = socket.socket()
        try:
            s.settimeout(TIMEOUT_S)
            s.connect(addr)
            req = "GET %s HTTP/1.0\r\nHost: %s\r\n" % (self.path, self.host)
            if start:
                req += "Range: bytes=%d-\r\n" % start
            data = (req + "\r\n").encode()
            while data:
                n = s.send(data)
                data = data[n:]
            # MicroPython's socket is itself a stream (readline, readinto). Its unix port's
            # makefile() wraps the same fd in a second object whose finaliser closes that fd again
            # when collected, long after s.close(): by then the number may be a file's (seen as
            # EBADF on the partition's header). CPython's socket needs makefile().
            f = s if hasattr(s, "readline") else s.makefile("rb")
            line = f.readline()
            parts = line.split()
            code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            at = 0
            while True:
                line = f.readline()
                if not line or line in (b"\r\n", b"\n"):
                    break
                if line[:14].lower() == b"content-range:" and start:
                    v = line[14:].strip()
                    if v[:6] == b"bytes " and v[6:].split(b"-")[0].strip() == str(start).encode():
                        at = start
            if code == 206 and at == start:
                return s, f, start
            if code == 200:
                return s, f, 0
            raise OSError("HTTP status %d" % code)
        except BaseException:
            s.close()
            raise

    def _receive(self, f, buf, h):
        """Into the partition until the image is whole or the connection ends: each block erased
        as its first byte arrives, each piece hashed and written at its offset."""
        mv = memoryview(buf)
        part = self.part
        size = self.size
        while self.done < size and self._alive():
            off = self.done
            n = min(CHUNK, BLOCK - off % BLOCK, size - off)
            got = f.readinto(mv[:n])
            if not got:
                return
            if off % BLOCK == 0:
                part.ioctl(6, off // BLOCK)
            part.writeblocks(off // BLOCK, mv[:got], off % BLOCK)
            h.update(mv[:got])
            self.done = off + got
