# The cabinet's behaviour settings: defaults from cabinet.md and mqtt.md, the hard safety limits
# that a config (or `set_config`) may narrow but never widen, and their validation.

# key: (lowest, highest, default). `set_config` may change exactly these keys.
SETTABLE = {
    "telemetry_period_s": (10, 3600, 60),
    "dispense_min_soc": (50, 100, 90),
    "charge_temp_min_c": (0, 45, 0),
    "charge_temp_max_c": (0, 45, 45),
    "insert_timeout_s": (10, 600, 60),
    "take_timeout_s": (10, 600, 60),
    # Retirement (tukar.packs): a pack below this SoH, above this cycle count, or with this many
    # BMS faults or overheats while in the cabinet is held for collection, never dispensed.
    "retire_soh_min": (50, 90, 70),
    "retire_cycles_max": (300, 10000, 2000),
    "retire_bms_faults": (1, 20, 3),
    "retire_overheats": (1, 10, 2),
}

# Set at provisioning time only (config.json), never over MQTT.
FIXED = {
    "identify_timeout_s": (1, 10, 3),
    "tick_ms": (10, 100, 50),
    "slot_limit_a": (1, 60, 15),
    "bms_fresh_ms": (200, 2000, 2000),
    "bms_lost_ms": (1000, 30000, 5000),
    "cabinet_charge_max_c": (30, 55, 55),
    # A new firmware image must pass its self-test within this time, or it is rolled back.
    "ota_selftest_s": (30, 900, 120),
}

# Numbers fixed by the safety rules (cabinet.md), not configurable.
QUARANTINE_DC = 600  # rule 4: battery or slot sensor >= 60 degC
EMERGENCY_DC = 700  # rule 4: >= 70 degC anywhere
HYSTERESIS_DC = 30  # rule 2
SENSOR_MISMATCH_DC = 100  # rule 5
# Rule 5's mismatch must last this long: the slot sensor is read every tick but a BMS reading
# is up to a frame or poll period old, so one tick's disagreement during a change (or an ADC
# spike) is not a broken sensor. Open and shorted sensors are faults at once.
SENSOR_MISMATCH_MS = 1000
LOCK_TIMEOUT_MS = 500  # rule 8
CHARGE_MIN_DC = 0  # rule 1: the widest charge window
CHARGE_MAX_DC = 450
HANDLING_MIN_DC = -100  # rule 6 and identification
HANDLING_MAX_DC = 500
FULL_SOC_PM = 1000
RESUME_SOC_PM = 970  # a full battery tops up again below 97 %


class ConfigError(ValueError):
    pass


def _check(key, value, limits):
    lo, hi = limits[0], limits[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("%s: a number is required" % key)
    if value != value or value < lo or value > hi:
        raise ConfigError("%s: %s is outside the limits %s..%s" % (key, value, lo, hi))
    return value


def defaults():
    d = {}
    for table in (SETTABLE, FIXED):
        for k in table:
            d[k] = table[k][2]
    d["blocklist"] = []
    return d


def validate_update(current, changes, settable_only=True):
    """Check `changes` against the limits; return the merged config or raise ConfigError naming the key."""
    if not isinstance(changes, dict) or not changes:
        raise ConfigError("no settings given")
    merged = dict(current)
    for key in changes:
        value = changes[key]
        if key in SETTABLE:
            merged[key] = _check(key, value, SETTABLE[key])
        elif not settable_only and key in FIXED:
            merged[key] = _check(key, value, FIXED[key])
        elif not settable_only and key == "blocklist":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ConfigError("blocklist: a list of serial numbers is required")
            merged[key] = value
        else:
            raise ConfigError("%s: not a setting that can be changed here" % key)
    if merged["charge_temp_min_c"] + 2 * HYSTERESIS_DC / 10 >= merged["charge_temp_max_c"]:
        raise ConfigError("charge_temp_min_c must be at least 6 degC below charge_temp_max_c")
    return merged


class Limits:
    """The config in the control tick's integer units, rebuilt whenever the config changes."""

    def __init__(self, cfg):
        self.charge_lo_dc = max(int(cfg["charge_temp_min_c"] * 10), CHARGE_MIN_DC)
        self.charge_hi_dc = min(int(cfg["charge_temp_max_c"] * 10), CHARGE_MAX_DC)
        self.min_soc_pm = int(cfg["dispense_min_soc"] * 10)
        self.insert_ms = int(cfg["insert_timeout_s"] * 1000)
        self.take_ms = int(cfg["take_timeout_s"] * 1000)
        self.identify_ms = int(cfg["identify_timeout_s"] * 1000)
        self.fresh_ms = int(cfg["bms_fresh_ms"])
        self.lost_ms = int(cfg["bms_lost_ms"])
        self.cabinet_max_dc = int(cfg["cabinet_charge_max_c"] * 10)
        self.slot_limit_ma = int(cfg["slot_limit_a"] * 1000)
        self.blocklist = cfg["blocklist"]
        # (the retirement policy's keys are read from the config itself, seldom: tukar.packs)
