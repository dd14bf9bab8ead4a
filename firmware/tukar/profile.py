# Battery profiles: per battery type limits as data. Adding a battery make adds a file, not code.
# The link-specific part (CAN frame layout, SBS options) is read by the drivers; the core uses limits.

# Hard limits of cabinet.md: a profile or the config may narrow them, never widen them.
HARD_CHARGE_MIN_DC = 0
HARD_CHARGE_MAX_DC = 450
HANDLING_MIN_DC = -100
HANDLING_MAX_DC = 500


class ProfileError(ValueError):
    pass


def _num(d, key, lo, hi, scale):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProfileError("profile field %s: number required" % key)
    if v < lo or v > hi:
        raise ProfileError("profile field %s: %s outside %s..%s" % (key, v, lo, hi))
    return int(round(v * scale))


class Profile:
    """Limits of one battery type, in the core's integer units."""

    def __init__(self, name, link, charge_min_dc, charge_max_dc, max_charge_ma,
                 voltage_min_mv, voltage_max_mv, capacity_mah, data=None):
        self.name = name
        self.link = link
        self.charge_min_dc = charge_min_dc
        self.charge_max_dc = charge_max_dc
        self.max_charge_ma = max_charge_ma
        self.voltage_min_mv = voltage_min_mv
        self.voltage_max_mv = voltage_max_mv
        self.capacity_mah = capacity_mah
        self.data = data  # the whole source dict, for the link drivers

    @staticmethod
    def from_dict(d):
        if not isinstance(d, dict):
            raise ProfileError("profile: object required")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ProfileError("profile field name: non-empty string required")
        link = d.get("link")
        if link not in ("can", "sbs"):
            raise ProfileError("profile field link: 'can' or 'sbs' required")
        lim = d.get("limits")
        if not isinstance(lim, dict):
            raise ProfileError("profile field limits: object required")
        cmin = _num(lim, "charge_temp_min_c", 0, 45, 10)
        cmax = _num(lim, "charge_temp_max_c", 0, 45, 10)
        if cmin >= cmax:
            raise ProfileError("profile limits: charge_temp_min_c must be below charge_temp_max_c")
        vmin = _num(lim, "voltage_min_v", 10, 120, 1000)
        vmax = _num(lim, "voltage_max_v", 10, 120, 1000)
        if vmin >= vmax:
            raise ProfileError("profile limits: voltage_min_v must be below voltage_max_v")
        return Profile(name, link, cmin, cmax, _num(lim, "max_charge_current_a", 0.1, 200, 1000),
                       vmin, vmax, _num(lim, "capacity_ah", 1, 500, 1000), d)


# Used when no profile file is installed: a 48 V CAN pack, 30 Ah, 0..45 degC charging at up to 10 A.
DEFAULT = Profile("ref48v", "can", 0, 450, 10000, 42000, 54600, 30000)
