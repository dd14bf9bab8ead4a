"""A simulated CAN BMS: the pack in one slot broadcasting its profile's frames at their rates.

A simulator changes the battery by setting physical values by signal name (`node.set(SoC=80.5)`)
or by faulting it (`node.set(ShortCircuit=1)`); `silent` models a pack that stopped talking.
"""

from tukar_tools import canprofile
from tukar_tools.shim.canbus import Frame

REF48V_VALUES = {
    "PackVoltage": 51.8, "PackCurrent": 0.0, "SoC": 80.0, "SoH": 97, "ChargeComplete": 0,
    "CellVoltMax": 3990, "CellVoltMin": 3970, "TempMax": 28, "TempMin": 26, "CycleCount": 120,
    "ChargeCurrentReq": 8.0, "ChargeVoltageReq": 54.6,
}
PACK72V_VALUES = {
    "Voltage": 78.0, "Current": 0.0, "SoC": 80.0, "SoH": 95, "Full": 0,
    "CellMax": 3910, "CellMin": 3890, "TempMax": 30, "TempMin": 27, "Cycles": 300,
    "ReqCurrent": 12.0, "ReqVoltage": 84.0,
}


class BmsNode:
    def __init__(self, profile, slot, serial="TK48-000001", values=None):
        if isinstance(profile, str):
            profile = canprofile.load(profile)
        self.profile = profile
        self.slot = slot
        self.serial = serial
        default = REF48V_VALUES if profile["name"] == "ref48v" else PACK72V_VALUES
        self.values = dict(default if values is None else values)
        self.silent = False
        self._due = {}
        self._page = {}
        self.sent = 0
        self._frames = {}  # (frame name, page) -> Frame, until a value changes

    def set(self, **values):
        for k, v in values.items():
            if self.values.get(k) != v:
                self.values[k] = v
                self._frames.clear()

    def frames_now(self, frame, page=0):
        key = (frame["name"], page)
        f = self._frames.get(key)
        if f is None:
            can_id = canprofile.slot_id(self.profile, frame, self.slot)
            data = canprofile.encode(frame, self.values, page=page, serial=self.serial)
            f = self._frames[key] = Frame(can_id, data, bool(frame.get("extended")))
        return f

    def step(self, now_ms):
        out = []
        if self.silent:
            return out
        for f in self.profile["can"]["frames"]:
            due = self._due.get(f["name"], now_ms)
            if now_ms < due:
                continue
            self._due[f["name"]] = due + f["period_ms"] if now_ms - due < f["period_ms"] else now_ms + f["period_ms"]
            page = 0
            if "serial" in f:
                page = self._page.get(f["name"], 0)
                self._page[f["name"]] = (page + 1) % f["serial"]["pages"]
            out.append(self.frames_now(f, page))
        self.sent += len(out)
        return out
