# The firmware as a running application: the boot order of cabinet.md rule 9, the asyncio tasks,
# the supervisor that feeds the hardware watchdog only on evidence of progress, and persistence.
# The same object runs on the ESP32 and in the simulator; only the board (machine or the host
# shim), the MQTT client class (umqtt.simple or the host shim) and the store's directory differ.
import asyncio
import gc
import sys

import tukar
from tukar.clock import asleep_ms, ticks_ms, wait_for_ms, wrap_add, wrap_diff
from tukar.core import Core
from tukar.gate import Gate
from tukar.link import Link
from tukar.outbox import Outbox, dump
from tukar.store import Store

# Tasks whose progress the supervisor needs before it feeds the watchdog.
CRITICAL = ("control", "persist")
SUPERVISE_MS = 1000
WDT_TIMEOUT_MS = 5000
CRASHES_BEFORE_RESET = 3
ACK_ONLY_PERSIST_MS = 5000
PERSIST_IDLE_MS = 500  # the persist task shows progress at least this often
LAG_BUCKETS_MS = (5, 20, 50, 100, 0)  # tick lateness histogram: < 5, < 20, < 50, < 100, more  # outbox removals after PUBACK are persisted at most this often



def print_trace(name, e):
    """A crashed task's traceback on the console, where a technician's serial log catches it."""
    print("tukar: task %s crashed:" % name)
    pe = getattr(sys, "print_exception", None)
    if pe is not None:
        pe(e)
    else:  # CPython: the simulator and the tests
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)


class App:
    def __init__(self, cfg, board, cycle_class, client_class, store_root, key, profiles,
                 boot_reason="power_on", wall=None, wdt=None, board_name="", info_extra=None,
                 esp32=None):
        # Rule 9: outputs safe before anything else, then the journal, then buses, then network.
        self.board = board
        board.safe_outputs()
        self.store = Store(store_root)
        saved = self.store.load("state") or {}
        journal = saved.get("journal") if isinstance(saved, dict) else None
        self.journal_ok = self.store.errors == 0  # a state file that did not parse: not ok
        self.core = Core(cfg["id"], cfg["slots"], profiles=profiles, config=cfg.get("core"),
                         journal=journal if isinstance(journal, dict) else None,
                         boot_reason=boot_reason)
        # Newer events wait in a spill file, not the heap: 2 in RAM (an event is some 200 bytes
        # there), read back from flash as the link publishes them.
        self.outbox = Outbox(store=self.store, ram_events=2, hold=True)
        if not isinstance(saved, dict):
            saved = {}
        events = saved.get("outbox")
        self.outbox.restore(events if isinstance(events, list) else None, saved.get("spill"))
        saved = events = journal = None  # the parsed state, let go before the links are built
        self.cycle = cycle_class(board, self.core)
        self.cycle.commit = self._commit
        self.gate = Gate(key)
        self.wall = wall  # callable: Unix seconds once the clock is synced, else None
        self.wdt = wdt
        extra = info_extra if info_extra is not None else {}
        extra["board"] = board_name  # info()'s, with the rest of what it adds (an attribute fewer)
        self.info_extra = extra
        self.link = Link(cfg.get("mqtt", {}), client_class, self.outbox, self.info,
                         self.core.counters.get("bdseq", 0),
                         time_known=lambda: self._wall() is not None)
        self.unposted = 0  # states changed but not yet handed to the link (bit 0 cabinet, n slot n)
        self.progress = {}
        self.tasks = {}
        self.crashes = []
        self.faults = []  # (task, repr(exception)) for telemetry and tests
        self.stopping = None
        self.persist_now = asyncio.Event()
        self.last_persist = 0
        self.flash_ok = True
        self.tick_lag_ms = 0  # worst lateness of a control tick, for the operator
        self.lag_hist = [0] * len(LAG_BUCKETS_MS)  # ticks late by less than each bound (the last: more)
        self.ticks = 0
        self.can_ghosts = 0  # CAN interrupts whose INT line was not low: ghost edges, ignored
        # Firmware updates (tukar.ota and tukar.otaboot, imported only while one runs or reports): the `esp32`
        # module if the caller gives one (None: tukar.ota imports it when it needs it), and the
        # update or self-test running.
        self.esp32 = esp32
        self.ota = None
        if "ota.json" in self.store.names():  # an update's record: it reports how it ended
            from tukar.otaboot import after_boot
            self.ota = after_boot(self, self.store.load("ota"))

    # -- what the link publishes at every connect ----------------------------------------
    def info(self):
        d = {"id": self.core.id, "fw": tukar.FW_VERSION, "board": "",
             "slots": self.core.n_slots, "profiles": sorted(self.core.profiles),
             "boot": {"reason": self.core.boot_reason, "count": self.core.boot},
             "time_synced": self._wall() is not None}
        for k in self.info_extra:
            d[k] = self.info_extra[k]
        return d

    def _wall(self):
        return self.wall() if self.wall else None

    # -- the control task -----------------------------------------------------------------
    def control_step(self, now):
        """One control tick: commands, then scan -> core -> outputs, then hand-offs."""
        core = self.core
        link = self.link
        acks = None
        for payload, retained in link.take_commands():
            body, ack = self.gate.admit(payload, retained, now, self._wall())
            if body is not None:
                ack = self._command(body)
                self.gate.remember(body.get("req_id"), ack)
            if ack is not None:
                if acks is None:
                    acks = []
                acks.append(ack)
        self.cycle.step(now, self._wall())
        self.ticks += 1
        if self.ota is not None:
            self.ota.tick(self, now)
        if acks is not None:
            # An ack tells the back end the command took effect (a session it names, a mode): what
            # the command changed goes to flash before the ack can be published, or a power cut in
            # between leaves the back end a session the cabinet forgot. A start_swap's is there
            # already (its door's write-ahead, in the step); anything else is written now.
            if core.jdirty:
                self._commit()
            for ack in acks:
                link.post_ack(ack)
        g = link.handshake
        if g is not None:  # a TLS handshake stops this loop for 1.2 to 2 s: only when it may
            if g.wanted and not g.granted and self.cycle.may_stand_still():
                self.cycle.hold_chargers(True)
                g.granted = True
            elif not g.wanted and self.cycle.held:
                self.cycle.hold_chargers(False)
        if core.events:
            core.take_events(self.outbox.add_event)
        # Swap events are never dropped; rather than let the outbox grow without end, no new
        # swap starts while it is full (a long broker outage).
        core.hold("event outbox full (broker unreachable)" if self.outbox.saturated else
                  "firmware update running" if self.ota is not None and self.ota.busy else None)
        if core.take_rebirth():
            link.request_rebirth()
        core.connected(link.bdseq)  # a new connection: bdseq persisted, every state published afresh
        dirty = core.take_dirty() | self.unposted
        if dirty:
            # As many as the link takes now (it publishes 5 a second): the others stay marked and
            # are worked out when there is room, fresh then, instead of 13 texts waiting in the
            # heap after a connect.
            room = link.state_room()
            if dirty & 1 and room > 0:
                link.post_state("state", core.cabinet_state())
                dirty &= ~1
                room -= 1
            n = 1
            while room > 0 and dirty >> n:
                if dirty & (1 << n):
                    link.post_state("slot/%d/state" % n, core.slot_state(n))
                    dirty &= ~(1 << n)
                    room -= 1
                n += 1
        self.unposted = dirty
        if core.jdirty or self.outbox.dirty or self.outbox.wants_refill():
            self.persist_now.set()
        if core.reboot and self.stopping is None:
            self.stopping = "command"

    def _command(self, body):
        """The core executes a command, except `ota` and, while an update runs, what would open a
        door or start swaps: tukar.ota answers those."""
        name = body.get("cmd")
        u = self.ota
        if name == "ota" or u is not None and u.busy and (
                name in ("start_swap", "open_slot") or name == "set_mode"
                and body.get("mode") == "in_service"):
            try:
                from tukar.ota import shell_command
            except MemoryError:  # the download's code does not fit now: refused, nothing moved
                from tukar.device import unload
                from tukar.errors import BUSY, make_ack
                unload(("ota", "otaboot"))
                gc.collect()
                return make_ack(body.get("req_id"), BUSY, "not enough free memory for a firmware "
                                "update now; reboot the cabinet and send it again")
            return shell_command(self, body)
        return self.core.command(body)

    async def control(self):
        period = self.core.cfg["tick_ms"]
        due = ticks_ms()
        while self.stopping is None:
            now = ticks_ms()
            late = wrap_diff(now, due)
            if late > self.tick_lag_ms:
                self.tick_lag_ms = late
            b = 0
            while b < len(LAG_BUCKETS_MS) - 1 and late >= LAG_BUCKETS_MS[b]:
                b += 1
            self.lag_hist[b] += 1
            self.control_step(now)
            self.progress["control"] = self.progress.get("control", 0) + 1
            due = wrap_add(due, period)
            wait = wrap_diff(due, ticks_ms())
            if wait < 0:  # fell behind: do not try to catch up with a burst of ticks
                due = ticks_ms()
                wait = 0
            await asleep_ms(wait)

    # -- persistence ----------------------------------------------------------------------
    def persist(self, now, force=False):
        core = self.core
        urgent = core.jdirty != 0  # every new event sets it too (the event counter moved)
        if not (urgent or force or self.outbox.dirty):
            return False
        if not urgent and not force and wrap_diff(now, self.last_persist) < ACK_ONLY_PERSIST_MS:
            return False
        # The events past the outbox's head go to its spill file first: the state names the
        # spill file's range, so a power cut between the two loses nothing the state had.
        spilled = self.outbox.spill()
        core.take_journal()  # the whole journal is written: every section at once
        self.outbox.dirty = not spilled  # a spill that failed is tried again
        self.last_persist = now
        errors = self.store.errors
        if self.store.save("state", self._write_state, now):
            self.outbox.persisted(spilled)
        else:  # a flash that does not write keeps nothing across a cut: holding the events back
            self.outbox.persisted(True, False)  # would only keep its own fault from the broker
        self._flash_health(self.store.errors == errors and spilled)
        return True

    def _commit(self):
        """Write-ahead, inside the control step: a door is about to open with the session or
        the inventory changed since the last write. The tick's events and the journal go to flash
        now (one write, tens of ms, at most a few times a swap), before the bolt moves."""
        core = self.core
        if core.events:
            core.take_events(self.outbox.add_event)
        self.persist(ticks_ms(), force=True)

    def _write_state(self, f):
        """{"journal": ..., "outbox": [...], "spill": [...]} streamed into the store's file: the
        journal by the JSON encoder, the outbox's head as the texts it already holds, and the
        range of its spill file still owed (absent when nothing is spilled)."""
        f.write('{"journal":')
        self.core.write_journal(f, dump)
        f.write(',"outbox":')
        self.outbox.write_events(f)
        ref = self.outbox.spill_ref()
        if ref is not None:
            f.write(',"spill":')
            dump(ref, f)
        f.write("}")

    def _flash_health(self, ok):
        """A failing flash is a cabinet fault (state may not survive a power cut) until it writes."""
        if ok == self.flash_ok:
            return
        self.flash_ok = ok
        self.core.report_fault("flash_write", "error", cleared=ok)

    async def persister(self):
        while self.stopping is None:
            try:
                await wait_for_ms(self.persist_now.wait(), PERSIST_IDLE_MS)
            except asyncio.TimeoutError:
                pass
            self.persist_now.clear()
            self.outbox.refill()  # spilled events back into the head as the link empties it
            self.persist(ticks_ms())
            if self.store.pending:
                errors = self.store.errors
                self.store.flush(ticks_ms())
                self._flash_health(self.store.errors == errors and not self.store.pending)
            self.progress["persist"] = self.progress.get("persist", 0) + 1

    # -- CAN reception ----------------------------------------------------------------------
    async def can_rx(self):
        """Drain the MCP2515 as soon as INT says a frame waits: it holds only two."""
        flag_class = getattr(asyncio, "ThreadSafeFlag", None)
        flag = flag_class() if flag_class is not None else asyncio.Event()
        if not self.board.on_can_frame(lambda pin: flag.set()):
            return  # no INT line: the control tick drains the chip
        while self.stopping is None:
            await flag.wait()
            if flag_class is None:
                flag.clear()
            if not self.board.can_pending():
                self.can_ghosts += 1  # an edge with INT high: nothing to read, no SPI traffic
                continue
            self.board.drain_can(ticks_ms())
            self.progress["can"] = self.progress.get("can", 0) + 1

    # -- telemetry --------------------------------------------------------------------------
    def telemetry(self):
        t = self.core.telemetry()
        t["heap_free"] = gc.mem_free() if hasattr(gc, "mem_free") else None
        t["uptime_s"] = self.core.up_s
        t["rssi"] = self.info_extra.get("rssi")
        t["tick_lag_ms"] = self.tick_lag_ms
        g = self.link.handshake
        if g is not None:
            t["tls"] = {"handshakes": g.count, "last_ms": g.last_ms, "max_ms": g.max_ms,
                        "deferred": g.deferred, "put_off": g.put_off}
        return t

    async def telemetry_task(self):
        while self.stopping is None:
            await asleep_ms(self.core.cfg["telemetry_period_s"] * 1000)
            self.link.post_telemetry(self.telemetry())
            self.progress["telemetry"] = self.progress.get("telemetry", 0) + 1

    # -- supervision ----------------------------------------------------------------------
    async def supervisor(self):
        seen = {}
        while self.stopping is None:
            await asleep_ms(SUPERVISE_MS)
            alive = True
            for name in CRITICAL:
                n = self.progress.get(name, 0)
                if n == seen.get(name, -1):
                    alive = False
                seen[name] = n
            if self.ota is not None and self.ota.starve:
                alive = False  # a new image that failed its self-test: the reset rolls it back
            if alive and self.wdt is not None:
                self.wdt.feed()  # only on evidence that every critical task moved
            if not self.link.running and self.stopping is None:
                self.faults.append(("link", self.link.last_error))
                self.start_link()  # its thread ended: start a new one

    def start_link(self):
        """Start the link's thread; a failed start is a fault the supervisor retries each second."""
        try:
            self.link.start()
        except Exception as e:  # MemoryError, OSError: no room for its stack now
            self.faults.append(("link_start", repr(e)))

    async def guard(self, name, factory):
        """Run a task; if it raises, report it and restart it; too many crashes reset the device."""
        while self.stopping is None:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                now = ticks_ms()
                print_trace(name, e)
                self.faults.append((name, repr(e)))
                self.core.report_fault("task_" + name, "error")
                self.crashes = [t for t in self.crashes if wrap_diff(now, t) < 60000] + [now]
                if len(self.crashes) >= CRASHES_BEFORE_RESET:
                    self.stopping = "crash"
                    return
                await asleep_ms(100)

    async def run(self):
        """Run until a reboot is needed; returns the reason ("command" or "crash")."""
        if self.wdt is not None:
            self.wdt.feed()
        self.start_link()
        for n, f in (("control", self.control), ("persist", self.persister),
                     ("telemetry", self.telemetry_task), ("supervisor", self.supervisor),
                     ("can", self.can_rx)):
            self.tasks[n] = asyncio.create_task(self.guard(n, f))
        tasks = list(self.tasks.values())
        try:
            while self.stopping is None:
                await asleep_ms(50)
        finally:
            for t in tasks:
                t.cancel()
            self.shutdown()
        return self.stopping

    def shutdown(self):
        """Orderly stop: safe outputs, state persisted, `offline` published."""
        try:
            self.board.safe_outputs()
        finally:
            self.persist(ticks_ms(), force=True)
            self.store.flush(ticks_ms(), force=True)
            self.link.stop()
