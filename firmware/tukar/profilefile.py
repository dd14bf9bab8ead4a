# The profile files (firmware/profiles/*.json): read and checked, an error naming the file and the
# field. On the device each profile is made compact as it is read: the links' part in the shape they
# use (a CAN profile's decoder tables, an SBS profile's device names), the source dict let go at
# once. Only the boot reads them: the device unloads this module after it (tukar.device.unload).
import json

from tukar.profile import Profile, ProfileError


def _num(d, key, lo, hi, scale):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProfileError("profile field %s: number required" % key)
    if v < lo or v > hi:
        raise ProfileError("profile field %s: %s outside %s..%s" % (key, v, lo, hi))
    return int(round(v * scale))


def from_dict(d):
    """A Profile from a profile file's dict; ProfileError names the field."""
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
    _link_section(d, link)
    return Profile(name, link, cmin, cmax, _num(lim, "max_charge_current_a", 0.1, 200, 1000),
                   vmin, vmax, _num(lim, "capacity_ah", 1, 500, 1000), d)


def _link_section(d, link):
    sec = d.get(link)
    if not isinstance(sec, dict):
        raise ProfileError("profile field %s: object required for link '%s'" % (link, link))
    if link == "sbs":
        names = sec.get("device_names")
        if not isinstance(names, list) or not names:
            raise ProfileError("profile field sbs.device_names: non-empty list required")
        for i, n in enumerate(names):
            # SBS DeviceName is a block read of at most 32 bytes; the driver maps it printable.
            if not isinstance(n, str) or not 0 < len(n) <= 32:
                raise ProfileError("profile field sbs.device_names[%d]: string of 1..32 characters required" % i)


def load(path, compact=False):
    """One profile file (made compact() with `compact`); ProfileError messages start with the
    path."""
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise ProfileError("%s: cannot read (%s)" % (path, e))
    except ValueError as e:
        raise ProfileError("%s: not JSON (%s)" % (path, e))
    try:
        p = from_dict(d)
    except ProfileError as e:
        raise ProfileError("%s: %s" % (path, e))
    base = path.rsplit("/", 1)[-1]
    if base[:-5] != p.name:
        raise ProfileError("%s: profile field name: '%s' differs from the file name" % (path, p.name))
    if compact:
        try:
            p.compact()
        except ValueError as e:
            raise ProfileError("%s: %s" % (path, e))
    return p


def load_dir(path, compact=False):
    """Every *.json profile in a directory: {name: Profile}, each made compact() as it is read
    with `compact` (the device: only one profile's source is ever in the heap)."""
    import os

    out = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".json"):
            p = load(path + "/" + fn, compact)
            out[p.name] = p
    if compact:
        _repack(out)
    return out


def _repack(profiles):
    """The compiled tables were allocated among the parsed JSON, which is gone now: copied once
    more, they fill the lowest free blocks together, and what they leave behind is one free run
    instead of a sieve of small holes (a fragmented heap fails a 300-byte allocation with 20 KB
    free). Equal tuples (a byte step, a 16-bit field's steps, across frames and profiles) are
    made one."""
    import gc
    gc.collect()
    same = {}
    for name in profiles:
        p = profiles[name]
        if p.link_data is not None:
            p.link_data = _copy(p.link_data, same)


def _copy(v, same):
    if isinstance(v, tuple):
        t = tuple([_copy(x, same) for x in v])
        try:
            return same.setdefault(t, t)
        except TypeError:  # holds a dict: not hashable, kept as it is
            return t
    if isinstance(v, dict):
        d = {}
        for k in v:
            d[k] = _copy(v[k], same)
        return d
    return v
