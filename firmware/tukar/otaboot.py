# The first boot after an update (docs/ota.md): the new image's self-test, or the old image's
# report of how the update ended. Imported only when an update's record (store key "ota") is found
# at boot, apart from tukar.ota so that a new image's first boot, with the whole cabinet to bring
# up, does not carry the download's code too; let go once the update's end is reported.
import sys

from micropython import const

import tukar
from tukar.clock import ticks_ms, wrap_diff
from tukar.device import unload

SELFTEST_TICKS = const(20)  # the new image's control loop has run a second
SELFTEST_MS = 120000  # default time the new image has to prove itself (config ota_selftest_s)
KEY = "ota"


def partitions(app):
    """esp32.Partition, or None on a build without OTA partitions (off the ESP32, or a port
    without them). Imported here, not at boot: only an update or its record needs it."""
    m = app.esp32
    if m is None:
        if sys.implementation.name != "micropython":
            return None
        try:
            import esp32 as m  # type: ignore[no-redef]
        except ImportError:
            return None
        app.esp32 = m
    return getattr(m, "Partition", None)


class SelfTest:
    """The first boot of a new image: it keeps its rollback pending until the control loop has
    ticked, the buses scanned, the journal loaded and the broker connected; then it marks itself
    valid. Past its time it stops feeding the watchdog: the reset that follows rolls it back."""

    busy = True
    starve = False

    def __init__(self, rec, now, limit_ms):
        self.rec = rec
        self.t0 = now
        self.limit_ms = limit_ms
        self.why = None

    def tick(self, app, now):
        ok = (app.ticks >= SELFTEST_TICKS and app.cycle.escaped[0] == 0 and app.journal_ok
              and app.link.connected)
        if ok:
            app.esp32.Partition.mark_app_valid_cancel_rollback()
            app.store.remove(KEY)
            app.ota = None
            rec = self.rec
            app.core.report("OtaApplied", {"version": rec.get("version"), "from": rec.get("from"),
                                           "partition": rec.get("target")})
            unload(("otaboot",))
            return
        if not self.starve and wrap_diff(now, self.t0) > self.limit_ms:
            self.starve = True
            self.why = "ticks %d, scan errors %d, journal %s, broker %s" % (
                app.ticks, app.cycle.escaped[0], app.journal_ok, app.link.connected)
            print("tukar: self-test of %s failed (%s): the watchdog resets, the bootloader rolls "
                  "back" % (self.rec.get("version"), self.why))


def after_boot(app, rec):
    """The record an update left, read at boot: the new image's SelfTest, or None once the old
    image has reported how the update ended."""
    rec = rec if isinstance(rec, dict) else {}
    core = app.core
    label = None
    P = partitions(app)
    if P is not None:
        label = P(P.RUNNING).info()[4]
    if rec.get("phase") == "boot" and label is not None and label == rec.get("target"):
        limit = core.cfg.get("ota_selftest_s")
        return SelfTest(rec, ticks_ms(), limit * 1000 if limit else SELFTEST_MS)
    app.store.remove(KEY)
    if rec.get("phase") == "boot":
        core.report("OtaRolledBack", {"version": rec.get("version"), "running": tukar.FW_VERSION,
                                      "partition": label})
    else:
        core.report("OtaFailed", {"version": rec.get("version"),
                                  "reason": "power_loss during the download"})
    unload(("otaboot",))
    return None
