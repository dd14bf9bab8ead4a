# NTC thermistors read through the ESP32 ADC: a table of ADC codes per 5 degC step, built once
# from the Beta equation, turns a 12-bit code into 0.1 degC with integer math and no allocation.
# Wiring: the NTC from the ADC pin to ground, a fixed resistor from the pin to the divider supply.
from array import array
from math import exp

from tukar.inputs import SENSOR_OK, SENSOR_OPEN, SENSOR_SHORT

T_MIN_DC = -400  # colder than this reads as an open sensor (or a broken wire)
T_MAX_DC = 1500  # hotter than this reads as a shorted sensor
STEP_DC = 50
CODE_MAX = 4095  # 12-bit ADC
_KELVIN_DC = 2731.5


def beta_ohms(t_dc, r25, beta):
    """Resistance of the NTC at t_dc (0.1 degC) from the Beta equation (float, init time only)."""
    return r25 * exp(beta * (10.0 / (t_dc + _KELVIN_DC) - 10.0 / (250 + _KELVIN_DC)))


def beta_code(t_dc, r25, beta, r_fixed, supply_mv=3300, full_scale_mv=3300):
    """Ideal ADC code (float) of the divider at t_dc."""
    r = beta_ohms(t_dc, r25, beta)
    return CODE_MAX * supply_mv * r / ((r + r_fixed) * full_scale_mv)


class NtcTable:
    """ADC code -> 0.1 degC for one NTC type and divider; shared by every sensor of that type."""

    def __init__(self, r25=10000, beta=3950, r_fixed=10000, supply_mv=3300, full_scale_mv=3300):
        n = (T_MAX_DC - T_MIN_DC) // STEP_DC + 1
        # Codes fall as the temperature rises: codes[0] is T_MIN_DC, codes[n - 1] is T_MAX_DC.
        self.codes = array("H", [0] * n)
        for i in range(n):
            c = int(beta_code(T_MIN_DC + i * STEP_DC, r25, beta, r_fixed, supply_mv, full_scale_mv) + 0.5)
            self.codes[i] = min(c, CODE_MAX)
        self.n = n
        # Where to start looking: per 16 codes, the table entry just above the bucket's top code
        # (so a lookup is one or two steps, not a binary search).
        self.seg = bytearray(CODE_MAX // 16 + 1)
        lo = n - 1
        for b in range(len(self.seg)):
            top = b * 16 + 15
            while lo > 0 and self.codes[lo] <= top:
                lo -= 1
            self.seg[b] = lo

    def status(self, code):
        """SENSOR_OPEN above the coldest entry, SENSOR_SHORT below the hottest, else SENSOR_OK."""
        if code > self.codes[0]:
            return SENSOR_OPEN
        if code < self.codes[self.n - 1]:
            return SENSOR_SHORT
        return SENSOR_OK

    def temp_dc(self, code):
        """Temperature in 0.1 degC, clamped to the table: an open sensor reads cold, a short hot."""
        codes = self.codes
        if code >= codes[0]:
            return T_MIN_DC
        last = self.n - 1
        if code <= codes[last]:
            return T_MAX_DC
        lo = self.seg[code >> 4]  # codes[lo] > code; then the last entry that is
        while codes[lo + 1] > code:
            lo += 1
        hi = lo + 1
        span = codes[lo] - codes[hi]
        return T_MIN_DC + lo * STEP_DC + (STEP_DC * (codes[lo] - code) + (span >> 1)) // span
