# A slot's charger: an enable output (hardware default off) and, on CAN chargers, a current
# setpoint sent by the CAN charger driver. A setpoint of 0 mA means off (rule 3).
# The enable pin is (bank, bit) of tukar.pins, logical: 1 means the charger may run.


class Charger:
    def __init__(self, enable=None, link=None, limit_ma=0):
        self._ex, self._eb = enable if enable is not None else (None, 0)
        self._link = link  # object with set_current(ma): the CAN charger of this slot, or None
        self.limit_ma = limit_ma  # the slot's hardware limit; 0 = no limit known here
        self.ma = 0

    def set(self, ma):
        """Run at `ma` (clamped to the slot limit), or stop at 0. Off goes out before on."""
        if ma < 0:
            ma = 0
        if self.limit_ma and ma > self.limit_ma:
            ma = self.limit_ma
        self.ma = ma
        if ma == 0:
            # Cut the hardware enable first: it acts even when the CAN bus does not.
            if self._ex is not None:
                self._ex.put(self._eb, 0)
            if self._link is not None:
                self._link.set_current(0)
        else:
            if self._link is not None:
                self._link.set_current(ma)
            if self._ex is not None:
                self._ex.put(self._eb, 1)

    def off(self):
        self.set(0)

    def on(self):
        return self.ma > 0
