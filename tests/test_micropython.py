"""The firmware process of the MicroPython runtime: it really is the 32-bit MicroPython unix port
with a GIL and the firmware frozen; its `machine` reaches the host's chip models; a heap too small
ends in a clear MemoryError report with the process's last output; a reset the firmware asks for,
a power cut and a starved watchdog each start it again with the ESP32's reset cause; a hang at
boot is reported, never a silent stall."""
import subprocess
import sys
import threading
import time

import pytest

import machine as host_machine
from tukar_tools import broker, mprt, sim
from tukar_tools.bench_mpy import run_sim

ROOT = mprt.ROOT


@pytest.fixture(scope="module")
def mqtt_broker():
    b = broker.start()
    yield b
    b.stop()


def wait(pred, timeout_s, what):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("%s not within %s s" % (what, timeout_s))


def mp_sim(mqtt_broker, tmp_path, heap="192K", fill=4):
    return sim.Simulation("127.0.0.1", mqtt_broker.port, prefix="mp", cabinets=1, slots=12,
                          state_dir=str(tmp_path), fill=fill, runtime="micropython", heap=heap)


def test_the_binary_is_32_bit_micropython_with_a_gil_and_the_firmware_frozen():
    code = ("import sys, tukar, umqtt.simple, asyncio\n"
            "print(sys.implementation.name, sys.implementation._thread, sys.maxsize, "
            "sys.implementation.version[:2])")
    out = subprocess.run([str(mprt.binary()), "-c", code], capture_output=True, text=True,
                         cwd="/", timeout=30, env={"MICROPYPATH": ".frozen"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["micropython", "GIL", str(2**31 - 1), "(1,", "28)"]


def test_a_cabinet_runs_in_that_process_and_its_machine_reaches_the_host_models(mqtt_broker,
                                                                                 tmp_path):
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]

    def script(s):
        fw = cab.fw
        wait(lambda: fw.server.hello, 20, "the firmware process's hello")
        # The firmware armed the watchdog and feeds it through the host's model.
        feeds = wait(lambda: cab.phys.hw.wdt.feeds >= 3, 20, "watchdog feeds")
        assert cab.phys.hw.wdt.timeout_ms == 5000 and feeds
        # Chargers of the stocked slots were switched on by the firmware over the expanders.
        wait(lambda: any(cab.phys.charger_ma(i) > 0 for i in range(cab.n)), 20, "a charger on")
        return fw.server.hello, fw.server.calls, fw.proc.proc.pid
    hello, calls, pid = run_sim(s, script)
    assert hello == "micropython GIL %d frozen" % (2**31 - 1)
    assert calls > 100
    assert pid > 0


def test_a_heap_too_small_ends_in_a_clear_memory_error_report(tmp_path, mqtt_broker):
    # Small enough that the boot fails before the application's crash handler exists (from about
    # 40K the boot gets that far: the firmware then records the crash and resets, again and again).
    r = subprocess.run([sys.executable, "-m", "tukar_tools.cli", "sim", "--broker",
                        "127.0.0.1:%d" % mqtt_broker.port, "--no-monitor", "--runtime",
                        "micropython", "--heap", "32K", "--state-dir", str(tmp_path),
                        "--prefix", "mp-small", "--duration", "6"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    err = r.stderr
    assert "firmware process ended (MemoryError: the heap (-X heapsize=32K) is too small" in err, err
    assert "Its last output:" in err and "MemoryError: memory allocation failed" in err, err


def test_a_reset_the_firmware_asks_for_starts_it_again_with_the_hard_reset_cause(mqtt_broker,
                                                                                  tmp_path):
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]

    def script(s):
        fw = cab.fw
        wait(lambda: cab.phys.hw.wdt.feeds >= 2, 20, "a running firmware")
        first = fw.proc.proc
        with cab.lock:
            fw._reset_requested()  # what machine.reset() does over the wire
        wait(lambda: fw.proc.proc is not first and fw.server.hello, 20, "a new process")
        return first.poll(), cab.phys.hw.reset_cause, fw.boots, list(cab.reports)
    old_status, cause, boots, reports = run_sim(s, script)
    assert old_status == -9  # SIGKILL: nothing of the old process ran on
    assert cause == host_machine.HARD_RESET
    assert boots == 2
    assert reports == []  # a reset asked for is no failure


def test_a_starved_watchdog_kills_the_process_and_boots_it_with_the_watchdog_cause(mqtt_broker,
                                                                                   tmp_path):
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]

    def script(s):
        fw = cab.fw
        wait(lambda: cab.phys.hw.wdt.feeds >= 2, 20, "a running firmware")
        first = fw.proc.proc
        first.send_signal(19)  # SIGSTOP: the firmware hangs, holding its last outputs
        wait(lambda: fw.proc.proc is not first, 15, "the watchdog's reset")
        chargers = [cab.phys.charger_ma(i) for i in range(cab.n)]
        return cab.phys.hw.reset_cause, chargers, list(cab.reports), fw.boots
    cause, chargers, reports, boots = run_sim(s, script)
    assert cause == host_machine.WDT_RESET
    assert boots == 2
    assert chargers == [0] * 12  # the reset leaves every charger off until the firmware decides
    assert any(r.startswith("watchdog: not fed for 5000 ms") for r in reports), reports


def test_a_firmware_that_never_arms_its_watchdog_is_reported_hung(mqtt_broker, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(sim, "BOOT_HANG_S", 2)
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]
    (tmp_path / "sim-1" / "main.py").write_text("import machine\nwhile True:\n    pass\n")

    def script(s):
        return wait(lambda: [r for r in cab.reports if "has not armed its watchdog" in r], 15,
                    "the hang report")
    assert run_sim(s, script)


def test_a_firmware_that_crashes_is_reported_with_its_last_output(mqtt_broker, tmp_path):
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]
    (tmp_path / "sim-1" / "main.py").write_text(
        "import machine\nprint('booting')\nraise RuntimeError('bus gone')\n")

    def script(s):
        return wait(lambda: [r for r in cab.reports if "firmware process ended" in r], 15,
                    "the crash report")
    report = run_sim(s, script)[0]
    assert "crash: an uncaught exception" in report
    assert "booting" in report and "RuntimeError: bus gone" in report


def test_the_flash_fault_reaches_the_firmware_process(mqtt_broker, tmp_path):
    """`fault flash` makes the process's flash writes fail: the firmware reports flash_write as a
    cabinet fault, and clears it once the flash writes again."""
    from tukar_tools.scenario import Runner
    from tukar_tools.sign import parse_key
    from tukar_tools.cmdline import SIM_KEY_HEX
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]

    def script(s):
        r = Runner("127.0.0.1", mqtt_broker.port, "mp", "sim-1", parse_key(SIM_KEY_HEX), 1.0,
                   out=lambda line: None)
        try:
            r.step({"do": "expect_state", "match": {"session": None}, "within_s": 20})
            s.loop.call_soon_threadsafe(cab.fault, "flash", True)
            for temp in (52, 30, 52):  # charger stops and starts: events the journal must keep
                s.loop.call_soon_threadsafe(lambda t=temp: cab.set_battery(1, temp_c=t))
                try:
                    return_ = r.step({"do": "expect_event", "type": "Fault",
                                      "match": {"code": "flash_write"}, "within_s": 3})
                    break
                except Exception:
                    return_ = None
            assert return_ is not None, "no flash_write fault"
            s.loop.call_soon_threadsafe(cab.fault, "flash", False)
            s.loop.call_soon_threadsafe(lambda: cab.set_battery(1, temp_c=30))
            return r.step({"do": "expect_event", "type": "FaultCleared",
                           "match": {"code": "flash_write"}, "within_s": 10})
        finally:
            r.obs.close()
    cleared = run_sim(s, script)
    assert cleared["severity"] == "error"


def test_broker_outage_during_a_swap_in_micropython_loses_no_event_and_retained_state_is_current(
        tmp_path):
    """The broker process stops in the middle of a swap; the rider swaps anyway; it comes back on
    the same port. Every event id the cabinet used arrives (ids count up by one per event), in
    order, and what a newcomer gets retained is what the cabinet last published."""
    import json as _json

    from tukar_tools import mqttc
    from tukar_tools.scenario import Runner
    from tukar_tools.sign import parse_key
    from tukar_tools.cmdline import SIM_KEY_HEX

    if broker.mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")  # CI installs it (.ci/run)
    (tmp_path / "mosq").mkdir()
    mosq = broker.Mosquitto(workdir=tmp_path / "mosq").start()
    s = sim.Simulation("127.0.0.1", mosq.port, prefix="mpout", cabinets=1, slots=12,
                       state_dir=str(tmp_path / "state"), fill=6, runtime="micropython",
                       heap="192K")
    cab = s.cabinets[0]

    def on_loop(fn):
        done = threading.Event()
        s.loop.call_soon_threadsafe(lambda: (fn(), done.set()))
        assert done.wait(5)

    def script(s):
        r = Runner("127.0.0.1", mosq.port, "mpout", "sim-1", parse_key(SIM_KEY_HEX), 1.0,
                   out=lambda line: None)
        try:
            r.step({"do": "expect_state", "match": {"ready": {"$gte": 1}, "session": None},
                    "within_s": 20})
            ack = r.step({"do": "cmd", "cmd": "start_swap", "args": {"id_token": "rider-out"}})
            n_in = ack["slot"]
            r.step({"do": "expect_slot", "slot": n_in,
                    "match": {"state": "awaiting_battery", "lock": "unlocked"}, "within_s": 5})
            mosq.stop()
            on_loop(lambda: cab.insert(n_in, {"serial": "OUT-PACK", "soc": 9, "soh": 90,
                                              "temp_c": 30}))
            on_loop(lambda: cab.close_door(n_in))
            n_out = wait(lambda: next((i + 1 for i in range(cab.n) if i + 1 != n_in
                                       and not cab.phys.locks[i].locked), None), 10,
                         "the dispense door unlocked")
            on_loop(lambda: cab.take(n_out))
            on_loop(lambda: cab.close_door(n_out))
            time.sleep(15)  # the outage goes on: charging, events piling up in the outbox
            mosq.start()
            wait(lambda: r.obs.client.connected.is_set(), 30, "the back end reconnected")
            r.step({"do": "expect_status", "value": "online", "within_s": 90})
            r.step({"do": "expect_event", "type": "SwapCompleted",
                    "match": {"battery_in": "OUT-PACK"}, "within_s": 30})
            world = cab.snapshot()

            def settled():  # the retained states caught up with the world: doors, locks, packs
                for ws in world["slots"]:
                    st = r.obs.slots.get(ws["slot"])
                    if st is None or (st["door"], st["lock"]) != (ws["door"], ws["lock"]) or \
                            (st["battery"] or {}).get("serial") != (ws["battery"] or {}).get("serial"):
                        return None
                return True
            wait(settled, 15, "slot states matching the world")
            seen = list(r.obs.events)
            latest = {n: dict(st) for n, st in r.obs.slots.items()}
            fresh = mqttc.Client("127.0.0.1", mosq.port, subscriptions=["mpout/sim-1/#"])
            retained = {}

            def newcomer_has_all():
                while True:
                    m = fresh.get(0.05)
                    if m is None:
                        break
                    if m[2]:
                        retained[m[0]] = m[1]
                return all("mpout/sim-1/slot/%d/state" % n in retained for n in range(1, 13)) \
                    and "mpout/sim-1/status" in retained
            wait(newcomer_has_all, 10, "every retained state for a newcomer")
            fresh.close()
            return seen, latest, retained, world
        finally:
            r.obs.close()
    try:
        seen, latest, retained, world = run_sim(s, script, timeout=90)
    finally:
        mosq.stop()
    from tukar_tools import schemas
    for e in seen:
        assert schemas.errors("mpout/sim-1/event", _json.dumps(e).encode()) == [], e
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids))
    boot = [i for i in ids if i.startswith("sim-1-1-")]
    counters = [int(i.rsplit("-", 1)[1]) for i in boot]
    assert counters == list(range(1, len(counters) + 1))  # none missing, in order
    types = [e["type"] for e in seen]
    assert types.index("BatteryIn") < types.index("BatteryOut") < types.index("SwapCompleted")
    assert retained["mpout/sim-1/status"] == b"online"
    for n in range(1, 13):
        got = _json.loads(retained["mpout/sim-1/slot/%d/state" % n])
        assert got == latest[n]  # a newcomer gets what the cabinet last published
        ws = world["slots"][n - 1]
        assert (got["door"], got["lock"]) == (ws["door"], ws["lock"])
        assert (got["battery"] or {}).get("serial") == (ws["battery"] or {}).get("serial")


def test_the_firmware_imports_nothing_from_the_host_tools():
    """With only firmware/ on the path and MicroPython's built-in names given by this test (not by
    tools/), every firmware module imports, and no host module came in with them."""
    import glob
    import os
    names = sorted("tukar." + os.path.basename(p)[:-3]
                   for p in glob.glob(str(ROOT / "firmware" / "tukar" / "*.py"))
                   if not p.endswith("__init__.py"))
    code = (
        "import sys, time, types\n"
        "sys.path[:0] = [%r]\n"
        "time.ticks_ms = lambda: 0\ntime.ticks_diff = lambda a, b: a - b\n"
        "time.ticks_add = lambda a, b: a + b\ntime.sleep_ms = lambda ms: None\n"
        "m = types.ModuleType('micropython'); m.const = lambda x: x\n"
        "sys.modules['micropython'] = m\n"
        "for n in %r:\n    __import__(n)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('tukar_tools', 'hosttime', 'machine', 'hw')))\n") % (str(ROOT / "firmware"), names)
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert len(names) > 20


def test_no_firmware_module_names_a_host_module():
    import re
    bad = []
    for p in sorted((ROOT / "firmware").rglob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import)\s+(hosttime|tukar_tools|shim)\b", line):
                bad.append("%s:%d: %s" % (p.name, i, line.strip()))
    assert bad == []


def test_make_test_stops_at_once_with_the_one_command_that_installs_what_is_missing():
    r = subprocess.run(["bash", str(ROOT / "tools" / "build" / "needs.sh")], capture_output=True,
                       text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "CC": "false", "TUKAR_NO_INSTALL": "1"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("install with: sudo apt-get install -y gcc-multilib"), lines


def test_make_test_passes_the_check_when_everything_is_there():
    r = subprocess.run(["bash", str(ROOT / "tools" / "build" / "needs.sh")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == ""


def test_a_firmware_that_resets_in_a_loop_leaks_no_descriptor_in_the_simulator(mqtt_broker,
                                                                                tmp_path):
    """A config the core refuses (a control tick of 5 ms): the app cannot be built, the firmware
    records the crash and resets, again and again (as a device would). Hundreds of processes come
    and go; the simulator must not run out of file descriptors (it did, and then could not even
    reach its broker)."""
    import json
    import os
    s = mp_sim(mqtt_broker, tmp_path)
    cab = s.cabinets[0]
    config = os.path.join(cab.flash, "config.json")
    with open(config) as f:
        cfg = json.load(f)
    cfg["core"] = {"tick_ms": 5}  # outside 10..100: Core raises ConfigError
    with open(config, "w") as f:
        json.dump(cfg, f)

    def script(s):
        wait(lambda: cab.fw.boots >= 30, 30, "thirty boots")
        first = len(os.listdir("/proc/self/fd"))
        n = cab.fw.boots
        wait(lambda: cab.fw.boots >= n + 60, 30, "sixty more boots")
        return first, len(os.listdir("/proc/self/fd"))
    first, later = run_sim(s, script)
    assert later <= first + 10
