# Battery profiles: per battery type limits as data. Adding a battery make adds a file, not code.
# The link-specific part (CAN frame layout, SBS options) is read by the drivers; the core uses limits.
# Reading and checking the files (firmware/profiles/*.json) is tukar.profilefile's, which the device
# unloads after the boot; load(), load_dir() and Profile.from_dict() here hand over to it.

# Hard limits of cabinet.md: a profile or the config may narrow them, never widen them.
HARD_CHARGE_MIN_DC = 0
HARD_CHARGE_MAX_DC = 450
HANDLING_MIN_DC = -100
HANDLING_MAX_DC = 500


class ProfileError(ValueError):
    pass


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
        self.data = data  # the whole source dict, until compact()
        self.link_data = None  # compact(): the CAN decoder tables, or the SBS device names

    @staticmethod
    def from_dict(d):
        """A Profile from a profile file's dict (tukar.profilefile.from_dict)."""
        from tukar.profilefile import from_dict
        return from_dict(d)

    def device_names(self):
        """SBS DeviceName strings that identify this profile (empty for CAN profiles)."""
        if self.link != "sbs":
            return ()
        if self.link_data is not None:
            return self.link_data
        return self.data["sbs"]["device_names"] if self.data else ()

    def decoder(self):
        """What tukar.canbms.CanBms takes for a CAN profile: its compiled tables once compact,
        else the source dict."""
        return self.link_data if self.link_data is not None else self.data

    def compact(self):
        """Keep only what the links use, in their shape, and let the source dict go (a CAN
        profile's JSON is about 4.5 KB of heap, its decoder tables half that). Raises
        tukar.canbms.ProfileError (a ValueError) for a CAN layout the decoder refuses."""
        if self.data is None:
            return self
        if self.link == "can":
            from tukar.canbms import compile_profile
            self.link_data = compile_profile(self.data)
        elif self.link == "sbs":
            self.link_data = tuple(self.data["sbs"]["device_names"])
        self.data = None
        return self


def load(path, compact=False):
    """One profile file (tukar.profilefile.load)."""
    from tukar.profilefile import load
    return load(path, compact)


def load_dir(path, compact=False):
    """Every *.json profile in a directory (tukar.profilefile.load_dir)."""
    from tukar.profilefile import load_dir
    return load_dir(path, compact)


def sbs_names(profiles):
    """{SBS DeviceName: profile name} over the SBS profiles, for SmartBattery(profiles=...)."""
    out = {}
    for name in profiles:
        for dev in profiles[name].device_names():
            other = out.get(dev)
            if other is not None and other != name:
                raise ProfileError("profile %s: device name '%s' already identifies profile %s"
                                   % (name, dev, other))
            out[dev] = name
    return out


# Used when no profile file is installed: a 48 V CAN pack, 30 Ah, 0..45 degC charging at up to 10 A.
DEFAULT = Profile("ref48v", "can", 0, 450, 10000, 42000, 54600, 30000)
