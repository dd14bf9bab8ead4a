"""The firmware application (tukar.app.App) on the simulated hardware: boot order (rule 9), the
watchdog fed only on evidence of progress (rule 10), tasks that crash, reboot, persistence."""
import asyncio
import json

import pytest

import hosttime
import machine
from tukar.app import App
from tukar.board import Board
from tukar.cycle import ControlCycle
from tukar_tools.rig import Pack, Physical
from tukar_tools.shim import hw as shim_hw

KEY = bytes(range(32))
SPEED = 20.0  # simulated ms run 20 times faster than real ones


class OfflineClient:
    """An MQTT client whose broker never answers: the link backs off, the cabinet runs on."""

    def __init__(self, *a, **k):
        self.sock = None

    def set_callback(self, f):
        pass

    def set_last_will(self, *a, **k):
        pass

    def connect(self, *a, **k):
        raise OSError(111, "ECONNREFUSED")


class FakeWDT:
    def __init__(self):
        self.feeds = []

    def feed(self):
        self.feeds.append(hosttime.ticks_ms())


@pytest.fixture
def clock():
    c = hosttime.install(hosttime.SimClock(speed=SPEED))
    yield c
    hosttime.install(hosttime.SimClock())


def build(tmp_path, phys=None, wdt=None, order=None, mqtt=None):
    phys = phys or Physical("tukar-12-wroom", lock_travel_ms=100)
    shim_hw.install(phys.hw)
    board = Board(phys.cfg, machine)
    if order is not None:
        real = board.safe_outputs

        def safe():
            order.append("safe_outputs")
            return real()
        board.safe_outputs = safe
    phys.serve_can(board)
    cfg = {"id": "app-1", "slots": phys.n, "mqtt": dict({"id": "app-1", "host": "127.0.0.1", "port": 9},
                                                       **(mqtt or {}))}
    app = App(cfg, board, ControlCycle, OfflineClient, str(tmp_path / "flash"), KEY, phys.profiles,
              wall=None, wdt=wdt, board_name="tukar-12-wroom")
    return phys, app


async def run_for(app, phys, sim_ms, during=None):
    """Run the app while the world moves, for sim_ms simulated milliseconds."""
    task = asyncio.ensure_future(app.run())
    clock = hosttime.current()
    end = clock.now_ms() + sim_ms
    while clock.now_ms() < end and not task.done():
        phys.physics(clock.now_ms())
        if during is not None:
            during(clock.now_ms())
        await asyncio.sleep(0.02 / SPEED)
    if not task.done():
        app.stopping = "stop"
    return await asyncio.wait_for(task, 10)


def test_outputs_are_made_safe_before_the_journal_is_read_and_before_the_network(tmp_path, clock,
                                                                                  mocker):
    order = []
    import tukar.store as store
    real_load = store.Store.load
    mocker.patch.object(store.Store, "load", lambda self, key: order.append("journal") or
                        real_load(self, key))
    import tukar.link as link
    real_start = link.Link.start
    mocker.patch.object(link.Link, "start", lambda self, *a: order.append("network") or
                        real_start(self, *a))
    phys, app = build(tmp_path, order=order)
    asyncio.run(run_for(app, phys, 300))
    assert order[:3] == ["safe_outputs", "journal", "network"]


@pytest.mark.flaky(reruns=2)  # counts ticks on a sped-up real clock: a loaded machine runs fewer
def test_the_cabinet_charges_with_the_broker_unreachable(tmp_path, clock):
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    phys.add_pack(2, Pack("P-2", phys.profiles["ref48v"], soc=50))
    phys, app = build(tmp_path, phys)
    seen = []
    asyncio.run(run_for(app, phys, 3000, during=lambda now: seen.append(
        (app.core.charge_ma[1], phys.charger_ma(1), app.link.connected))))
    assert seen[-1][0] == 10000 and seen[-1][1] > 0  # the slot's 10 A, flowing into the pack
    assert not any(connected for _, _, connected in seen)
    assert app.ticks >= 40  # about one tick per 50 ms of simulated time


def test_watchdog_is_fed_only_while_every_critical_task_makes_progress(tmp_path, clock):
    wdt = FakeWDT()
    phys, app = build(tmp_path, wdt=wdt)
    hung = {}

    def hang_control(now):
        if now > hung.setdefault("at", now + 3000) and "done" not in hung:
            hung["done"] = True
            app.tasks["control"].cancel()  # the control loop never ticks again
    asyncio.run(run_for(app, phys, 8000, during=hang_control))
    fed = wdt.feeds
    assert len(fed) >= 2
    # Fed about once a second before the hang, not in the last seconds after it.
    assert max(fed) < hung["at"] + 2500


def test_a_task_that_raises_is_reported_and_restarted(tmp_path, clock):
    phys, app = build(tmp_path)
    calls = {"n": 0}
    real = app.telemetry_task

    async def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("sensor driver bug")
        await real()
    app.telemetry_task = flaky
    asyncio.run(run_for(app, phys, 1500))
    assert calls["n"] == 2
    assert ("telemetry", "RuntimeError('sensor driver bug')") in app.faults
    faults = [e for e in app.outbox.snapshot() if e.get("type") == "Fault"]
    assert any(e["code"] == "task_telemetry" and e["slot"] is None for e in faults)


def test_three_crashes_within_a_minute_reset_the_device(tmp_path, clock):
    phys, app = build(tmp_path)

    async def broken():
        raise ValueError("always")
    app.telemetry_task = broken
    why = asyncio.run(run_for(app, phys, 5000))
    assert why == "crash"
    assert phys.world.output(phys.slot_cfg(0)["lock"]) == 0  # safe outputs: lock unpowered


def test_reboot_command_stops_in_order_and_persists(tmp_path, clock):
    phys, app = build(tmp_path)

    def reboot(now):
        if not app.core.reboot and app.ticks > 5:
            app.link._cmds.append((b"x", False))  # the gate refuses it: bad JSON, acked
            app.core.reboot = True
    why = asyncio.run(run_for(app, phys, 2000, during=reboot))
    assert why == "command"
    saved = json.loads((tmp_path / "flash" / "state.json").read_text())
    assert saved["journal"]["counters"]["boot"] == 1


def test_state_is_written_on_change_only(tmp_path, clock):
    phys, app = build(tmp_path)
    samples = {}

    def sample(now):
        samples.setdefault("t0", now)
        if now - samples["t0"] >= 1500:
            samples.setdefault("after_boot", app.store.writes)
        samples["last"] = app.store.writes
    asyncio.run(run_for(app, phys, 6000, during=sample))
    assert samples["after_boot"] >= 1  # the boot's journal and its Boot event
    assert samples["last"] == samples["after_boot"]  # a quiet cabinet: nothing changed, nothing written


def test_events_survive_a_restart_from_the_persisted_outbox(tmp_path, clock):
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    phys.add_pack(1, Pack("P-1", phys.profiles["ref48v"], soc=95))
    phys, app = build(tmp_path, phys)
    asyncio.run(run_for(app, phys, 2000))
    ids = [e["id"] for e in app.outbox.snapshot()]
    assert ids  # Boot, ChargeStarted: none acknowledged, the broker was never reached
    phys.power_loss()
    _, app2 = build(tmp_path, phys)
    assert [e["id"] for e in app2.outbox.snapshot()][:len(ids)] == ids
    assert app2.core.boot == 2


def test_a_flash_that_cannot_be_written_is_a_cabinet_fault_until_it_writes_again(tmp_path, clock):
    phys, app = build(tmp_path)

    def broken(*a, **k):
        raise OSError(5, "EIO")

    def flash(now):
        t0 = flash.__dict__.setdefault("t0", now)
        if now - t0 < 1000:
            app.store._open = broken
        else:
            app.store._open = open
        if now - t0 == 0:
            app.core.jdirty |= 1  # something to persist while the flash is broken
    asyncio.run(run_for(app, phys, 3000, during=flash))
    codes = [(e["type"], e["code"]) for e in app.outbox.snapshot()
             if e["type"] in ("Fault", "FaultCleared") and e["slot"] is None]
    assert codes == [("Fault", "flash_write"), ("FaultCleared", "flash_write")]
    saved = json.loads((tmp_path / "flash" / "state.json").read_text())
    assert saved["journal"]["counters"]["event"] == app.core.event_n


def test_a_ghost_edge_on_the_can_int_line_reads_nothing_from_the_mcp2515(tmp_path, clock):
    """ESP32 erratum 3.11: GPIO39 sees falling edges while ADC1 and Wi-Fi work. The receive task
    checks INT's level before it drains: a ghost starts no drain."""
    phys, app = build(tmp_path)
    phys.can.paced = True  # frames wait in the chip for the firmware, as from another process
    int_pin = phys.cfg["mcp2515"]["int"]
    seen = {}

    def during(now):
        if "drains" not in seen and now > 1500:
            phys.can.nodes.clear()  # the bus falls silent: INT stays high from here on
            seen["drains"] = app.progress.get("can", 0)
            seen["ghosts"] = app.can_ghosts
        elif "drains" in seen and now > 1700 and "after" not in seen:
            for _ in range(5):
                phys.hw.ghost_edge(int_pin)
            seen["after"] = True
    asyncio.run(run_for(app, phys, 2500, during))
    assert phys.hw.pin(int_pin).value == 1
    assert app.can_ghosts > seen["ghosts"]  # the ghost woke the task ...
    assert app.progress.get("can", 0) == seen["drains"]  # ... and it drained nothing


def test_a_real_can_interrupt_is_drained_by_the_receive_task(tmp_path, clock):
    phys, app = build(tmp_path)
    phys.can.paced = True
    phys.insert_can(1)
    asyncio.run(run_for(app, phys, 1500))
    assert app.progress.get("can", 0) > 0


def test_a_tls_handshake_waits_for_a_still_cabinet_and_runs_with_every_charger_off(tmp_path, clock):
    """A handshake holds the GIL for 1.2 to 2 s on an ESP32 and stops the control loop: it is
    granted only with no session open and no lock moving, and every charger stays off at the
    hardware until it ends; then the chargers follow the core again."""
    import threading
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    phys.add_pack(2, Pack("P-2", phys.profiles["ref48v"], soc=50))
    phys.add_pack(3, Pack("P-3", phys.profiles["ref48v"], soc=100))  # a battery to swap for
    phys, app = build(tmp_path, phys, mqtt={"ssl": True, "handshake_wait_ms": 60000})
    gate = app.link.handshake
    log = []
    steps = {}

    def link_thread():  # what TlsWrap.wrap_socket does around the handshake
        gate.begin()
        log.append(("granted", hosttime.ticks_ms(), app.core.session is None, phys.charger_ma(1)))
        hosttime.sleep_ms(1500)  # the handshake
        gate.end()

    def during(now):
        if "swap" not in steps and now > 1500 and app.core.charge_ma[1] > 0:
            steps["swap"] = now
            a = app.core.command({"cmd": "start_swap", "req_id": "r-1", "ts": 0, "id_token": "t"})
            assert a["ok"], a
            steps["thread"] = threading.Thread(target=link_thread)
            steps["thread"].start()
        if "swap" in steps and "cancel" not in steps and now > steps["swap"] + 2000:
            assert not gate.granted and gate.wanted  # the session holds the handshake back
            assert phys.charger_ma(1) > 0  # and the cabinet charges on meanwhile
            steps["cancel"] = now
            app.core.command({"cmd": "cancel_swap", "req_id": "r-2", "ts": 0})
        log.append(("tick", now, gate.granted, app.cycle.held, phys.charger_ma(1)))

    asyncio.run(run_for(app, phys, 9000, during=during))
    steps["thread"].join(5)
    granted = [x for x in log if x[0] == "granted"]
    assert len(granted) == 1 and granted[0][2]  # no session open when granted
    assert granted[0][1] > steps["cancel"]
    assert granted[0][3] == 0  # the charger already off at the hardware
    held = [x for x in log if x[0] == "tick" and x[2]]
    assert held and all(x[4] == 0 for x in held)  # off for as long as the handshake runs
    assert log[-1][3] is False and log[-1][4] > 0  # released: charging again
    assert (gate.count, gate.deferred, gate.put_off) == (1, 1, 0)
    assert 1400 <= gate.last_ms <= 2500
    assert app.telemetry()["tls"] == {"handshakes": 1, "last_ms": gate.last_ms,
                                      "max_ms": gate.max_ms, "deferred": 1, "put_off": 0}


def test_a_handshake_the_cabinet_keeps_waiting_fails_the_connection_attempt():
    from tukar.tls import HandshakeGate

    class Clock:
        t = 0

        def ticks_ms(self):
            return self.t

        def sleep_ms(self, ms):
            self.t += ms

    g = HandshakeGate(Clock(), wait_ms=1000)
    with pytest.raises(OSError, match="put off"):
        g.begin()
    assert (g.wanted, g.put_off, g.count) == (False, 1, 0)


def test_a_handshake_kept_waiting_across_the_ticks_wrap_still_fails_in_time():
    from tukar.clock import TICKS_MAX
    from tukar.tls import HandshakeGate

    class Clock:
        t = TICKS_MAX - 300  # the wait straddles the wrap of ticks_ms

        def ticks_ms(self):
            return self.t

        def sleep_ms(self, ms):
            self.t = (self.t + ms) & TICKS_MAX
            assert self.t < 5000 or self.t > TICKS_MAX - 1000, "waited far past wait_ms"

    g = HandshakeGate(Clock(), wait_ms=1000)
    with pytest.raises(OSError, match="put off"):
        g.begin()
    assert g.put_off == 1
