"""Rule 10 in the simulator: a hung control loop starves the hardware watchdog, the chip resets
with every charger off, and the firmware boots again reporting `watchdog`."""
import asyncio

import pytest

import hosttime
from tukar_tools import broker, sim


@pytest.fixture(scope="module")
def mqtt_broker():
    b = broker.start()
    yield b
    b.stop()


def test_a_hung_control_loop_ends_in_a_watchdog_reset_with_chargers_off(mqtt_broker, tmp_path):
    s = sim.Simulation("127.0.0.1", mqtt_broker.port, prefix="wdt", cabinets=1, slots=12,
                       state_dir=str(tmp_path), speed=10.0, fill=4)
    cab = s.cabinets[0]
    seen = {}

    async def main():
        until = asyncio.Event()
        run = asyncio.ensure_future(s.run(until))
        clock = hosttime.current()
        t0 = clock.now_ms()
        while clock.now_ms() - t0 < 4000:  # charging by now
            await asyncio.sleep(0.01)
        seen["charging_before"] = sum(1 for i in range(cab.n) if cab.phys.charger_ma(i) > 0)
        first = cab.app
        reset = cab.watchdog_reset

        def stamped():  # the moment the watchdog bites, not when the next boot has built its app
            seen.setdefault("reset_after_ms", clock.now_ms() - hung_at)
            reset()
        cab.watchdog_reset = stamped
        first.tasks["control"].cancel()  # the control loop hangs: it never ticks again
        hung_at = clock.now_ms()
        while cab.app is first and clock.now_ms() - hung_at < 15000:
            await asyncio.sleep(0.01)
        seen["chargers_at_reset"] = sum(1 for i in range(cab.n) if cab.phys.charger_ma(i) > 0)
        t1 = clock.now_ms()
        while clock.now_ms() - t1 < 1000:
            await asyncio.sleep(0.01)
        seen["info"] = cab.app.info()
        until.set()
        await run

    asyncio.run(main())
    assert seen["charging_before"] >= 1
    assert cab.boots == 2
    assert 5000 <= seen["reset_after_ms"] <= 8000  # the 5 s watchdog, checked every physics step
    assert seen["chargers_at_reset"] == 0  # the reset leaves every charger off
    assert seen["info"]["boot"] == {"reason": "watchdog", "count": 2}
