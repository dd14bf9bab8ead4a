# What the control tick reads: one snapshot per slot and one for the cabinet, filled in place
# by the drivers (or a test's world model) so that a steady-state tick allocates nothing.
# Units are integers: temperatures in 0.1 degC, currents in mA, voltages in mV, SoC per mille.

# Slot temperature sensor status (rule 5).
SENSOR_OK = 0
SENSOR_OPEN = 1
SENSOR_SHORT = 2

# Battery fault bits, shared by the SBS and CAN decoders. A set bit refuses or stops charging.
BATTERY_FAULTS = (
    "cell_overvoltage",
    "cell_undervoltage",
    "overtemp_charge",
    "overtemp_discharge",
    "overcurrent",
    "short_circuit",
    "bms_comm",
    "overcharged",
    "overtemp",
)
F_CELL_OV = 1 << 0
F_CELL_UV = 1 << 1
F_OT_CHARGE = 1 << 2
F_OT_DISCHARGE = 1 << 3
F_OVERCURRENT = 1 << 4
F_SHORT = 1 << 5
F_BMS_COMM = 1 << 6
F_OVERCHARGED = 1 << 7
F_OVERTEMP = 1 << 8


def fault_names(bits):
    """Fault bitmask to the list of names published in `battery.faults`."""
    out = []
    for i in range(len(BATTERY_FAULTS)):
        if bits & (1 << i):
            out.append(BATTERY_FAULTS[i])
    return out


def fault_bits(names):
    """Inverse of fault_names; unknown names map to bms_comm so they still refuse charging."""
    bits = 0
    for n in names:
        try:
            bits |= 1 << BATTERY_FAULTS.index(n)
        except ValueError:
            bits |= F_BMS_COMM
    return bits


class BmsReading:
    """Latest decoded BMS data of the battery in one slot."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.valid = False  # a reading has arrived since the battery went in
        self.t_ms = 0  # ticks_ms when it arrived
        self.serial = None  # str
        self.profile = None  # profile name, str
        self.soc_pm = 0  # state of charge, per mille, clamped 0..1000
        self.soh_pct = 0
        self.temp_dc = 0  # battery temperature (the hottest sensor), 0.1 degC
        self.voltage_mv = 0
        self.current_ma = 0  # signed, positive while charging
        self.cycles = 0
        self.faults = 0  # BATTERY_FAULTS bitmask
        self.req_current_ma = -1  # charging current the battery asks for; -1 = it does not say
        self.full = False  # BMS says fully charged / terminate charge
        self.link_fault = False  # the driver declared the link broken (3 PEC failures, bus-off, NACK)


class SlotInputs:
    """Physical inputs of one slot."""

    def __init__(self):
        self.door_closed = True
        self.present = False
        self.locked = True  # lock feedback switch says the bolt is out
        self.temp_dc = 250  # slot sensor, 0.1 degC
        self.sensor = SENSOR_OK
        self.io_ok = True  # False: the expander carrying this slot's switches did not answer
        self.bms = BmsReading()


class CabinetInputs:
    """Cabinet-wide inputs."""

    def __init__(self):
        self.smoke = False
        self.estop = False
        self.temp_dc = 250
        self.sensor = SENSOR_OK  # the cabinet thermistor: SENSOR_OPEN or SENSOR_SHORT is a cabinet fault
