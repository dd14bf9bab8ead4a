"""The firmware's heap (docs/micropython.md, Memory): in the 32-bit MicroPython unix port with the
production freeze, a 12-slot cabinet boots, does a swap, and lives through a broker outage with its
outbox filled past its cap, then reconnects and drains it, all in the heap make test holds it to
(bench_mpy.HEAP_HELD_K): its expectations met, no MemoryError printed, no crash or reset. A change
that needs more heap fails here at once; make bench's gate is the budget, HEAP_BUDGET_K (64 K).
After them a firmware update, held to HEAP_OTA_HELD_K (its budget: HEAP_OTA_BUDGET_K, 68 K)."""
import pytest

from tukar_tools import bench_mpy, broker

HEAP = "%dK" % bench_mpy.HEAP_HELD_K


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    if broker.mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")  # CI installs it (.ci/run)
    b = broker.Mosquitto(workdir=tmp_path_factory.mktemp("mosq")).start()
    yield b
    b.stop()


# The phases run the cabinet in real time with windows of 20 to 30 s: under another job's load a
# window can pass (one clean-clone run beside another, on 2 cores: the swap's dispensing not seen
# in 20 s). Retried twice, as the other real-time end-to-end tests; a phase that needs more heap
# than HEAP_HELD_K fails every try.
@pytest.mark.flaky(reruns=2)
def test_boot_and_a_swap_complete_in_the_held_heap(mosquitto):
    ok, why, _, took = bench_mpy.attempt(mosquitto.port, HEAP, "swap", 0)
    assert ok, why
    assert took["boot"] > 0 and took["swap"] > 0


@pytest.mark.flaky(reruns=2)
def test_an_outage_with_the_outbox_past_its_cap_reconnection_and_drain_complete_in_it(mosquitto):
    ok, why, _, took = bench_mpy.attempt(mosquitto.port, HEAP, "outage", 0)  # no wait past the queueing
    assert ok, why
    assert took["outage_events"] >= bench_mpy.CAP  # the outbox saturates at 64 events


@pytest.mark.flaky(reruns=2)
def test_an_update_after_the_outage_downloads_resets_and_passes_its_self_test_in_its_held_heap(
        mosquitto):
    ok, why, _, took = bench_mpy.attempt(mosquitto.port, "%dK" % bench_mpy.HEAP_OTA_HELD_K, "ota", 0)
    assert ok, why
    assert took["ota"] > 0
