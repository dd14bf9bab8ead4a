"""Rule 9 and the swap hold at the application's level, with the real board over the simulated
hardware (no mock of `safe_outputs`): outputs that were on (a charger charging, a door unlocked)
are off and locked after an orderly shutdown, after tasks crash, after an exception reaches
`device.finish`, and after a console interrupt; and a full event outbox holds new swaps through
the app until it has room again (docs/safety.md, "Mutation testing")."""
import asyncio
import json

import pytest

import hosttime
import machine
from test_app import KEY, SPEED, build, run_for
from tukar import device
from tukar.board import Board
from tukar.clock import asleep_ms
from tukar_tools.rig import Pack, Physical
from tukar_tools.shim import hw as shim_hw
from tukar_tools.sign import command, sign

NOW = 1764300000


@pytest.fixture
def clock():
    c = hosttime.install(hosttime.SimClock(speed=SPEED))
    yield c
    hosttime.install(hosttime.SimClock())


def _charging_and_open(phys, app, state):
    """During the run: charge slot 2, open slot 5 for maintenance; `armed` once both show at the
    outputs (the charger's enable pin on, the lock's solenoid powered)."""
    def during(now):
        core = app.core
        if "asked" not in state and app.ticks > 3:
            state["asked"] = True
            assert core.command({"cmd": "set_mode", "req_id": "m", "mode": "maintenance"})["ok"]
            assert core.command({"cmd": "open_slot", "req_id": "o", "slot": 5})["ok"]
        c2 = phys.slot_cfg(1)["charger"]["enable"]
        if (not state.get("armed") and phys.world.output(c2) == 1
                and phys.world.output(phys.slot_cfg(4)["lock"]) == 1):
            state["armed"] = True
            state["on"] = (phys.world.output(c2), phys.world.output(phys.slot_cfg(4)["lock"]))
    return during


def _outputs_safe(phys):
    for i in range(phys.n):
        c = phys.slot_cfg(i)
        assert phys.world.output(c["lock"]) == 0, "slot %d lock powered" % (i + 1)
        if "enable" in c["charger"]:
            assert phys.world.output(c["charger"]["enable"]) == 0, "slot %d charger on" % (i + 1)
    assert phys.world.output(phys.cfg["cabinet"]["fan"]) == 0
    assert phys.world.output(phys.cfg["cabinet"]["alarm"]) == 0


def _phys():
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    phys.add_pack(2, Pack("P-2", phys.profiles["ref48v"], soc=50))
    return phys


def test_tasks_that_crash_leave_the_chargers_off_and_the_doors_locked(tmp_path, clock):
    phys, app = build(tmp_path, _phys())
    state = {}

    async def crashes_once_armed():
        while not state.get("armed"):
            await asleep_ms(20)
        raise ValueError("driver bug")
    app.telemetry_task = crashes_once_armed
    why = asyncio.run(run_for(app, phys, 20_000, during=_charging_and_open(phys, app, state)))
    assert why == "crash"
    assert state["on"] == (1, 1)  # before: charging and unlocked, as the control loop left them
    _outputs_safe(phys)


def test_an_orderly_shutdown_leaves_the_chargers_off_and_the_doors_locked(tmp_path, clock):
    phys, app = build(tmp_path, _phys())
    state = {}
    during = _charging_and_open(phys, app, state)

    def reboot_once_armed(now):
        during(now)
        if state.get("armed"):
            app.core.reboot = True  # as the `reboot` command sets it
    why = asyncio.run(run_for(app, phys, 20_000, during=reboot_once_armed))
    assert why == "command"
    assert state["on"] == (1, 1)
    _outputs_safe(phys)


def _live_board():
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    shim_hw.install(phys.hw)
    board = Board(phys.cfg, machine)
    board.safe_outputs()
    lock = [True] * phys.n
    lock[4] = False
    ma = [0] * phys.n
    ma[1] = 5000
    board.apply(lock, [0] * phys.n, ma, True, True)
    assert phys.world.output(phys.slot_cfg(4)["lock"]) == 1
    assert phys.world.output(phys.slot_cfg(1)["charger"]["enable"]) == 1
    assert phys.world.output(phys.cfg["cabinet"]["fan"]) == 1
    return phys, board


class _Machine:
    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1


class _Setup:
    wdt_ms = 5000


@pytest.mark.parametrize("why, exc", [("crash", RuntimeError("bus gone")), ("command", None)])
def test_every_end_of_the_firmware_drives_the_real_outputs_safe_before_the_reset(tmp_path, why,
                                                                                 exc):
    phys, board = _live_board()
    m = _Machine()
    cab = device.Cabinet(board, _Setup(), None, None, None)
    assert device.finish(m, str(tmp_path) + "/", cab, why, exc) == why
    assert m.resets == 1
    _outputs_safe(phys)


def test_a_console_interrupt_drives_the_real_outputs_safe(tmp_path, capsys):
    phys, board = _live_board()
    cab = device.Cabinet(board, _Setup(), None, None, None)
    assert device._interrupted(cab) == "interrupted"
    _outputs_safe(phys)


def test_an_app_whose_outbox_is_full_refuses_new_swaps_until_it_has_room(tmp_path, clock):
    phys = Physical("tukar-12-wroom", lock_travel_ms=100)
    phys.add_pack(1, Pack("F-1", phys.profiles["ref48v"], soc=95))
    phys, app = build(tmp_path, phys)
    acks = []
    app.link.post_ack = acks.append
    state = {"n": 0}

    def send(name, **args):
        state["n"] += 1
        body = command(name, "r-%d" % state["n"], ts=NOW, **args)
        app.link._cmds.append((sign(body, KEY), False))  # as received on P/C/cmd

    def during(now):
        if state.get("phase") is None and app.core.cabinet_state()["ready"] == 1:
            state["phase"] = "fill"
            while not app.outbox.saturated:  # a long broker outage: events pile up
                app.outbox.add_event({"id": "x-%d" % len(app.outbox), "type": "Fault",
                                      "slot": None, "code": "filler", "severity": "warning"})
        elif state.get("phase") == "fill" and app.core.hold_swaps and not state.get("sent"):
            state["sent"] = True  # the app has told the core at the end of its tick
            send("start_swap", id_token="t")
        elif state.get("phase") == "fill" and acks:
            state["phase"] = "drain"
            state["held"] = dict(acks[-1])
            state["locks_while_held"] = list(app.core.lock_cmd)
            while app.outbox.saturated:  # the broker is back: the outbox empties
                app.outbox.done(app.outbox.peek())
        elif state.get("phase") == "drain" and not app.core.hold_swaps:
            state["phase"] = "retry"
            send("start_swap", id_token="t")
        elif state.get("phase") == "retry" and len(acks) == 2:
            state["phase"] = "done"
            app.stopping = "stop"

    app._wall = lambda: NOW
    asyncio.run(run_for(app, phys, 20_000, during=during))
    held = state["held"]
    assert (held["ok"], held["error"]) == (False, "busy")
    assert "outbox full" in held["detail"]
    assert all(state["locks_while_held"])
    assert acks[1]["ok"] is True and acks[1]["slot"] >= 1
