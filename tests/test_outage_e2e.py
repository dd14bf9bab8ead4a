"""A real broker outage of minutes (simulated time) in the middle of a swap: the broker process is
stopped, the rider swaps anyway, time passes, the broker comes back on the same port. Every event
the cabinet emitted arrives, in order, nothing missing once de-duplicated by id, and the retained
states a newcomer receives are the cabinet's current ones."""
import asyncio
import json
import threading
import time

import pytest

import hosttime
from tukar_tools import broker, mqttc, sim
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner
from tukar_tools.sign import parse_key

SPEED = 20.0
OUTAGE_MS = 180_000  # three minutes of simulated time without a broker


@pytest.fixture
def mosquitto(tmp_path):
    if broker.mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")  # CI installs it (.ci/run)
    b = broker.Mosquitto(workdir=tmp_path).start()
    yield b
    b.stop()


def test_broker_outage_during_a_swap_loses_no_event_and_leaves_retained_state_current(
        mosquitto, tmp_path):
    s = sim.Simulation("127.0.0.1", mosquitto.port, prefix="out", cabinets=1, slots=12,
                       state_dir=str(tmp_path / "state"), speed=SPEED, fill=6)
    cab = s.cabinets[0]
    emitted = []
    done = threading.Event()
    result = {}

    def on_loop(fn):
        """World actions run on the simulator's loop, like its own sim/cmd handler."""
        ev = threading.Event()

        def call():
            fn()
            ev.set()
        s.loop.call_soon_threadsafe(call)
        assert ev.wait(5)

    def wait_sim(pred, sim_ms):
        """Until pred() holds or sim_ms of the simulator's own time have passed: a loaded host
        slows the simulation down (hosttime.SimClock.lead), so wall time would cut it short."""
        clock = hosttime.current()
        end = clock.now_ms() + sim_ms
        wall_end = time.monotonic() + max(60.0, 10 * sim_ms / 1000 / SPEED)
        while clock.now_ms() < end and time.monotonic() < wall_end:
            if pred():
                return True
            time.sleep(0.01)
        return pred()

    def script():
        try:
            r = Runner("127.0.0.1", mosquitto.port, "out", "sim-1", parse_key(SIM_KEY_HEX), SPEED,
                       out=lambda line: None)
            r.step({"do": "expect_state", "match": {"ready": {"$gte": 1}, "session": None},
                    "within_s": 20})
            # Record every event the firmware hands to its outbox, from here on.
            outbox = cab.app.outbox
            real_add = outbox.add_event
            emitted.extend(e for e in outbox.snapshot())
            outbox.add_event = lambda ev: (emitted.append(ev), real_add(ev))[1]
            ack = r.step({"do": "cmd", "cmd": "start_swap", "args": {"id_token": "rider-out"}})
            n_in = ack["slot"]
            r.step({"do": "expect_slot", "slot": n_in, "match": {"lock": "unlocked"}, "within_s": 5})
            mosquitto.stop()
            cab.fw.net.down = True  # the cabinet stays away until the back end listens again (below)
            app = cab.app
            on_loop(lambda: cab.insert(n_in, {"serial": "OUT-PACK", "soc": 9, "soh": 90,
                                              "temp_c": 30}))
            on_loop(lambda: cab.close_door(n_in))
            assert wait_sim(lambda: app.core.session is not None
                            and app.core.session.phase == "dispensing", 5000)
            n_out = app.core.session.slot_out
            assert wait_sim(lambda: cab.phys.locks[n_out - 1].locked is False, 3000)
            on_loop(lambda: cab.take(n_out))
            on_loop(lambda: cab.close_door(n_out))
            assert wait_sim(lambda: app.core.session is None, 5000)
            wait_sim(lambda: False, OUTAGE_MS)  # minutes pass: charging goes on, events pile up
            result["offline_events"] = len(app.outbox)
            mosquitto.start()
            assert wait_sim(lambda: r.obs.client.connected.is_set(), 100_000)  # back end first
            time.sleep(0.5)
            cab.fw.net.down = False
            r.step({"do": "expect_status", "value": "online", "within_s": 120})
            result["soc_online"] = {n: (app.core.slot_state(n)["battery"] or {}).get("soc")
                                    for n in range(1, 13)}
            r.step({"do": "expect_event", "type": "SwapCompleted",
                    "match": {"battery_in": "OUT-PACK"}, "within_s": 30})
            wait_sim(lambda: len(app.outbox) == 0, 30_000)
            time.sleep(1.0)
            result["seen"] = list(r.obs.events)
            result["records"] = list(r.obs.records)
            r.obs.close()
            # A newcomer subscribing now gets the retained states: they must be the current ones.
            fresh = mqttc.Client("127.0.0.1", mosquitto.port, subscriptions=["out/sim-1/#"])
            time.sleep(1.5)
            retained = {}
            while True:
                m = fresh.get(0.1)
                if m is None:
                    break
                if m[2]:
                    retained[m[0]] = m[1]
            fresh.close()
            result["retained"] = retained
            result["current"] = {n: app.core.slot_state(n) for n in range(1, 13)}
            result["cabinet"] = app.core.cabinet_state()
        except BaseException as e:  # reported to the test thread
            result["error"] = e
        finally:
            done.set()

    async def main():
        until = asyncio.Event()
        runner = asyncio.ensure_future(s.run(until))
        while s.loop is None:
            await asyncio.sleep(0.01)
        t = threading.Thread(target=script, daemon=True)
        t.start()
        while not done.is_set():
            await asyncio.sleep(0.05)
        until.set()
        await runner

    hosttime.install(hosttime.SimClock(speed=SPEED))
    asyncio.run(main())
    hosttime.install(hosttime.SimClock())
    if "error" in result:
        raise result["error"]
    assert result["offline_events"] >= 4  # BatteryIn, ChargeStarted, BatteryOut, SwapCompleted...
    seen = result["seen"]
    seen_ids = [e["id"] for e in seen]
    want_ids = [e["id"] for e in emitted]
    assert len(seen_ids) == len(set(seen_ids))  # the observer de-duplicates by id
    missing = [i for i in want_ids if i not in set(seen_ids)]
    assert missing == []
    # In order: the cabinet's counter only goes up along the arrivals.
    ns = [int(i.rsplit("-", 1)[1]) for i in seen_ids]
    assert ns == sorted(ns)
    types = [e["type"] for e in seen]
    assert types.index("BatteryIn") < types.index("BatteryOut") < types.index("SwapCompleted")
    retained = result["retained"]
    assert retained["out/sim-1/status"] == b"online"
    for n, cur in result["current"].items():
        got = json.loads(retained["out/sim-1/slot/%d/state" % n])
        got.pop("seq")
        gb, cb = got.pop("battery"), cur.pop("battery")
        gc, cc = got.pop("charger"), cur.pop("charger")
        assert got == cur  # state, door, lock, dispensable, faults: exactly
        assert gc["on"] == cc["on"] and abs(gc["current_a"] - cc["current_a"]) <= 1.0  # tapering
        if cb is None:
            assert gb is None
        else:  # measurements republished after the reconnect: within what charging moves meanwhile
            assert {k: gb[k] for k in ("serial", "profile", "soh", "cycles", "faults")} == \
                {k: cb[k] for k in ("serial", "profile", "soh", "cycles", "faults")}
            # Republished after the reconnect: between what it was when the cabinet came back
            # online (less a little: a state may go out just before the test reads it) and now,
            # however long a loaded machine took to drain.
            low = result["soc_online"][n]
            assert low is not None and low - 0.5 <= gb["soc"] <= cb["soc"] + 0.1
    cabinet = json.loads(retained["out/sim-1/state"])
    cabinet.pop("seq")
    assert cabinet == result["cabinet"]
