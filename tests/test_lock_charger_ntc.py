# The small slot drivers: NTC table against the Beta equation, the lock and the charger outputs.
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "firmware") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "firmware"))

from tukar.charger import Charger  # noqa: E402
from tukar.inputs import SENSOR_OK, SENSOR_OPEN, SENSOR_SHORT  # noqa: E402
from tukar.lock import Lock  # noqa: E402
from tukar.ntc import T_MAX_DC, T_MIN_DC, NtcTable  # noqa: E402


def beta_code(t_c, r25=10000, beta=3950, r_fixed=10000):
    """Independent Beta equation: ideal 12-bit code of the divider, NTC to ground."""
    r = r25 * math.exp(beta * (1 / (t_c + 273.15) - 1 / 298.15))
    return 4095 * r / (r + r_fixed)


@pytest.fixture(scope="module")
def table():
    return NtcTable(10000, 3950, 10000)


def test_table_entries_match_the_beta_equation(table):
    for i in range(table.n):
        t_c = (T_MIN_DC + 50 * i) / 10
        assert abs(table.codes[i] - beta_code(t_c)) <= 0.5


def test_conversion_is_within_0_3_degc_from_minus_20_to_100_degc(table):
    worst = 0
    for t10 in range(-200, 1001, 7):
        t_c = t10 / 10
        got = table.temp_dc(int(round(beta_code(t_c))))
        worst = max(worst, abs(got - t10))
    assert worst <= 3  # 0.3 degC: interpolation plus one ADC code


def test_25_degc_reads_half_scale_on_a_10k_10k_divider(table):
    assert table.temp_dc(2048) == 250
    assert table.status(2048) == SENSOR_OK


def test_safety_thresholds_convert_exactly(table):
    for t_c in (0, 45, 55, 60, 70):  # charge window, cabinet limit, quarantine, emergency
        assert abs(table.temp_dc(int(round(beta_code(t_c)))) - t_c * 10) <= 2


def test_open_sensor_reads_cold_and_open(table):
    assert table.status(4095) == SENSOR_OPEN
    assert table.temp_dc(4095) == T_MIN_DC == -400


def test_shorted_sensor_reads_hot_and_short(table):
    assert table.status(0) == SENSOR_SHORT
    assert table.temp_dc(0) == T_MAX_DC == 1500


def test_temperature_falls_monotonically_with_the_code(table):
    prev = None
    for code in range(table.codes[table.n - 1], table.codes[0] + 1, 13):
        t = table.temp_dc(code)
        if prev is not None:
            assert t <= prev
        prev = t


def _bisect_temp(t, code):
    """The table's conversion by plain bisection: what the bucket index must agree with."""
    codes = t.codes
    if code >= codes[0]:
        return T_MIN_DC
    if code <= codes[t.n - 1]:
        return T_MAX_DC
    lo, hi = 0, t.n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if codes[mid] > code else (lo, mid)
    span = codes[lo] - codes[hi]
    return T_MIN_DC + lo * 50 + (50 * (codes[lo] - code) + span // 2) // span


@pytest.mark.parametrize("params", [{}, {"r25": 100000, "beta": 4250, "r_fixed": 100000},
                                    {"r_fixed": 4700, "supply_mv": 3300, "full_scale_mv": 2450},
                                    {"r25": 10000, "beta": 3435, "r_fixed": 22000}])
def test_every_code_converts_as_a_bisection_of_the_table_would(params):
    t = NtcTable(**params)
    assert [t.temp_dc(c) for c in range(4096)] == [_bisect_temp(t, c) for c in range(4096)]


def test_table_is_small(table):
    assert table.n == 39  # -40..150 degC in 5 degC steps
    assert table.codes.itemsize == 2


class FakePin:
    """One bit of a bank (tukar.pins.Gpio, Expander), as Lock and Charger take it: (bank, bit).
    `level` is the bit's level: what put() wrote, or what the bank latched."""

    def __init__(self, level=0):
        self.level = level
        self.writes = []

    @property
    def bit(self):
        return (self, 3)  # a bit other than 0: the drivers must use theirs

    @property
    def state(self):
        return self.level << 3

    def put(self, bit, v):
        assert bit == 3
        self.level = v
        self.writes.append(v)


def test_lock_energises_the_output_to_open(mocker):
    out, fb = FakePin(), FakePin()
    lk = Lock(out.bit, fb.bit)
    lk.command(False, 0)
    assert out.level == 1
    lk.command(True, 0)
    assert out.level == 0


def test_lock_reads_its_feedback_switch():
    fb = FakePin(1)
    lk = Lock(FakePin().bit, fb.bit)
    assert lk.locked() is True
    fb.level = 0
    assert lk.locked() is False


def test_lock_retry_of_an_unlock_releases_then_pulls_in_again():
    out = FakePin()
    lk = Lock(out.bit, FakePin().bit)
    lk.command(False, 3)
    lk.command(False, 4)  # the core's retry
    lk.command(False, 4)
    assert out.writes == [1, 0, 1]


def test_lock_retry_of_a_lock_never_energises():
    out = FakePin()
    lk = Lock(out.bit, FakePin().bit)
    lk.command(True, 0)
    lk.command(True, 1)
    assert out.writes == [0, 0]


def test_lock_releases_on_lock():
    out = FakePin(1)
    lk = Lock(out.bit, FakePin().bit)
    lk.lock()
    assert out.level == 0 and lk.cmd_locked


def test_charger_enable_follows_the_setpoint():
    en = FakePin()
    c = Charger(en.bit, None, 10000)
    c.set(5000)
    assert en.level == 1 and c.on()
    c.set(0)
    assert en.level == 0 and not c.on()


def test_charger_setpoint_is_clamped_to_the_slot_limit(mocker):
    link = mocker.Mock()
    c = Charger(FakePin().bit, link, 10000)
    c.set(25000)
    link.set_current.assert_called_with(10000)
    assert c.ma == 10000


def test_can_charger_cuts_the_enable_before_the_frame(mocker):
    calls = []
    en = mocker.Mock()
    en.put.side_effect = lambda bit, v: calls.append(("enable", v))
    link = mocker.Mock()
    link.set_current.side_effect = lambda ma: calls.append(("can", ma))
    c = Charger((en, 0), link, 10000)
    c.set(8000)
    c.set(0)
    assert calls == [("can", 8000), ("enable", 1), ("enable", 0), ("can", 0)]


def test_negative_setpoint_means_off():
    en = FakePin(1)
    c = Charger(en.bit)
    c.set(-100)
    assert en.level == 0 and c.ma == 0


@pytest.mark.mpy
def test_conversion_allocates_nothing_under_micropython():
    from tukar_tools import mpvm

    code = """
import sys, gc
sys.path.insert(0, '/input')
from tukar.ntc import NtcTable
t = NtcTable()
def sweep():
    s = 0
    for c in range(0, 4096, 4):
        s += t.temp_dc(c) + t.status(c)
    return s
sweep()
gc.collect()
a = gc.mem_alloc()
sweep()
print('alloc', gc.mem_alloc() - a, t.temp_dc(2048))
"""
    out = mpvm.run(code, fuel=10**10, timeout=60)
    assert "alloc 0 250" in out.stdout
