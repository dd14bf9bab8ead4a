# Telemetry (mqtt.md: "every telemetry_period_s (default 60): measurements of all occupied slots
# plus cabinet health (heap_free, uptime_s, rssi)") in the project's column layout, and the
# cabinet's data budget (cabinet.md: "a 12-slot cabinet in steady state publishes well under 1 MB
# a day").
import json

import pytest

from coreworld import stocked_rig

from tukar.outbox import dumps
from tukar_tools import bench_mqtt, schemas

DAY_S = 86400
PERIOD_S = 60  # telemetry_period_s default
BUDGET = 1000000  # bytes a day, at the MQTT level
COLUMNS = ("soc", "temp_c", "voltage_v", "current_a")


def health(t):
    t.update({"seq": 0, "heap_free": 61234, "uptime_s": 86399, "rssi": -67, "tick_lag_ms": 1234})
    return t


def test_telemetry_has_one_column_entry_per_occupied_slot_in_slot_order():
    rig = stocked_rig(full=3, half=3)  # slots 1..6 occupied
    t = rig.core.telemetry()
    assert t["slots"] == [1, 2, 3, 4, 5, 6]
    for c in COLUMNS:
        assert len(t[c]) == 6
    assert t["soc"][:3] == [95, 95, 95] and t["soc"][3:] == [60, 60, 60]
    schemas.validate("telemetry", health(t))


def test_telemetry_leaves_out_what_is_not_needed_every_minute():
    t = stocked_rig().core.telemetry()
    # energy per charge is in ChargeStopped, charger current in the slot state
    assert set(t) == {"slots", "soc", "temp_c", "voltage_v", "current_a", "cabinet_temp_c", "ts",
                      "ready", "empty", "energy_wh", "energy_wh_total"}


def test_the_energy_counters_come_in_the_first_telemetry_after_a_boot_and_every_tenth():
    core = stocked_rig().core
    has = ["energy_wh" in core.telemetry() for _ in range(25)]
    assert [i for i in range(25) if has[i]] == [0, 10, 20]


def test_telemetry_values_are_rounded_to_a_tenth_and_whole_ones_sent_as_integers():
    rig = stocked_rig(full=1, half=0)
    b = rig.core.slots[0].inp.bms
    b.soc_pm, b.temp_dc, b.voltage_mv, b.current_ma = 635, 295, 51234, -8149
    t = rig.core.telemetry()
    assert (t["soc"], t["temp_c"], t["voltage_v"], t["current_a"]) == ([63.5], [29.5], [51.2],
                                                                        [-8.1])
    b.voltage_mv, b.current_ma, b.soc_pm = 54000, 0, 1000
    t = rig.core.telemetry()
    assert dumps({"v": t["voltage_v"], "a": t["current_a"], "s": t["soc"]}) == \
        '{"v":[54],"a":[0],"s":[100]}'


def test_telemetry_of_a_battery_whose_bms_cannot_be_read_is_null_in_every_column():
    rig = stocked_rig(full=2, half=0)
    rig.core.slots[1].inp.bms.valid = False
    t = rig.core.telemetry()
    assert t["slots"] == [1, 2]
    for c in COLUMNS:
        assert t[c][1] is None and t[c][0] is not None
    schemas.validate("telemetry", health(t))


def test_telemetry_of_an_empty_cabinet_has_empty_columns_and_validates():
    rig = stocked_rig(full=0, half=0)
    t = rig.core.telemetry()
    assert t["slots"] == [] and all(t[c] == [] for c in COLUMNS)
    schemas.validate("telemetry", health(t))


def widest_telemetry_packet():
    """Bytes of one telemetry packet with every slot occupied and every value at its widest
    (99.9 %, -10.5 degC, 78.4 V, -12.3 A), on a long topic."""
    rig = stocked_rig(full=12, half=0)
    for s in rig.core.slots:
        b = s.inp.bms
        b.soc_pm, b.temp_dc, b.voltage_mv, b.current_ma = 999, -105, 78449, -12349
    rig.core.cabinet.temp_dc = -105
    t = health(rig.core.telemetry())
    t["seq"] = 255
    schemas.validate("telemetry", t)
    topic = "tukar/cabinet-with-a-long-id/telemetry"
    return 2 + 2 + len(topic) + len(dumps(t))  # fixed header (2-byte length), topic, QoS 0


def test_even_the_widest_telemetry_of_12_occupied_slots_keeps_a_day_under_1_mb():
    packet = widest_telemetry_packet()  # one with the energy counters, at 7 digits a slot
    assert packet < 600
    rest = bench_mqtt.measure(0.5)["by_category_per_day"]
    rest.pop("telemetry")
    per_day = packet * DAY_S // PERIOD_S + sum(rest.values())
    assert per_day < BUDGET, (packet, per_day)


def test_bench_12_slot_cabinet_steady_state_publishes_well_under_1_mb_a_day():
    r = bench_mqtt.measure(0.5)
    assert r["slots"] == 12 and r["occupied"] == 11
    # 75 %: the clock, the ready count and the energy counters (the regulator's report) cost
    # about 4 % of the budget; a quarter is left for the unforeseen
    assert r["per_day"] < BUDGET * 3 // 4, r["by_category_per_day"]
    assert r["telemetry_bytes"] < 500, r["telemetry_bytes"]
    # keepalive 60 s: a ping every 30 s and its reply, 2 x 2 x 1440 packets a day
    assert r["keepalive_s"] == 60
    assert r["ping_packets_per_day"] == 4 * 1440
    assert r["by_category_per_day"]["ping"] == 2 * 2 * 2 * 1440  # PINGREQ and PINGRESP: 2 bytes
    assert r["framing_per_day"] == r["packets_per_day"] * (40 + 29)


def test_bench_telemetry_is_the_payload_the_app_publishes():
    rig = stocked_rig()
    t = bench_mqtt.app_telemetry(rig.core)
    t["seq"] = 0
    schemas.validate("telemetry", json.loads(dumps(t)))


VM_CODE = """
import json
from coreworld import stocked_rig
rig = stocked_rig(full=2, half=2)
b = rig.core.slots[0].inp.bms
b.soc_pm, b.temp_dc, b.voltage_mv, b.current_ma = 635, 295, 51234, -8149
rig.core.slots[3].inp.bms.valid = False
print("T" + json.dumps(rig.core.telemetry(), separators=(",", ":")))
"""


@pytest.mark.mpy
def test_telemetry_text_is_the_same_on_micropython_as_on_cpython():
    import pathlib

    from tukar_tools import mpvm
    root = pathlib.Path(__file__).resolve().parents[1]
    res = mpvm.run(VM_CODE, extra=[root / "tests" / "coreworld.py"])
    vm = [ln[1:] for ln in res.stdout.splitlines() if ln.startswith("T")]
    ns = {}
    exec(VM_CODE.replace("print(", "out = ("), ns)
    cpython = ns["out"][1:]
    assert len(vm) == 1
    # the same values written the same way (MicroPython orders the keys its own way)
    assert json.loads(vm[0]) == json.loads(cpython) and len(vm[0]) == len(cpython)
    assert json.loads(vm[0])["voltage_v"] == [51.2, 54, 49.6, None]
