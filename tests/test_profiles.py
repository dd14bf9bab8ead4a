"""Battery profile files: every shipped profile loads, SBS device names map to their profile, and
a broken file is refused with a message naming the file and the field."""
import copy
import json
import pathlib

import pytest

from tukar import profile as P
from tukar_tools import mpvm

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROFILES = ROOT / "firmware" / "profiles"
SHIPPED = sorted(PROFILES.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_loads_inside_the_hard_limits(path):
    p = P.load(str(path))
    assert p.name == path.stem
    assert P.HARD_CHARGE_MIN_DC <= p.charge_min_dc < p.charge_max_dc <= P.HARD_CHARGE_MAX_DC  # 0..45 degC
    assert p.voltage_min_mv < p.voltage_max_mv
    assert p.max_charge_ma > 0 and p.capacity_mah > 0


def test_load_dir_returns_every_profile_by_name():
    profiles = P.load_dir(str(PROFILES))
    assert sorted(profiles) == sorted(p.stem for p in SHIPPED)
    assert {profiles[n].link for n in profiles} == {"can", "sbs"}


def test_sbs48v_is_a_48v_smbus_pack_charging_at_up_to_10a_from_0_to_45c():
    p = P.load(str(PROFILES / "sbs48v.json"))
    assert (p.link, p.charge_min_dc, p.charge_max_dc) == ("sbs", 0, 450)
    assert (p.max_charge_ma, p.voltage_min_mv, p.voltage_max_mv, p.capacity_mah) == (10000, 42000, 54600, 30000)


def test_sbs_names_map_each_device_name_to_its_profile():
    names = P.sbs_names(P.load_dir(str(PROFILES)))
    assert names == {"TK48S-30": "sbs48v", "TK48S-30A": "sbs48v"}  # CAN profiles add none


def test_a_device_name_claimed_by_two_profiles_is_refused():
    a = P.load(str(PROFILES / "sbs48v.json"))
    d = copy.deepcopy(a.data)
    d["name"] = "other"
    b = P.Profile.from_dict(d)
    with pytest.raises(P.ProfileError, match="device name 'TK48S-30' already identifies profile"):
        P.sbs_names({"sbs48v": a, "other": b})


def _sbs():
    return json.loads((PROFILES / "sbs48v.json").read_text())


def _drop(d, *keys):
    node = d
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return d


def _put(d, value, *keys):
    node = d
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return d


# (broken profile, message after "<path>: ")
BROKEN = [
    (_put(_sbs(), "smbus", "link"), "profile field link: 'can' or 'sbs' required"),
    (_drop(_sbs(), "limits"), "profile field limits: object required"),
    (_put(_sbs(), 60, "limits", "charge_temp_max_c"), "profile field charge_temp_max_c: 60 outside 0..45"),
    (_put(_sbs(), -5, "limits", "charge_temp_min_c"), "profile field charge_temp_min_c: -5 outside 0..45"),
    (_put(_sbs(), "10", "limits", "max_charge_current_a"), "profile field max_charge_current_a: number required"),
    (_put(_sbs(), 45, "limits", "charge_temp_min_c"), "profile limits: charge_temp_min_c must be below"),
    (_put(_sbs(), 60.0, "limits", "voltage_min_v"), "profile limits: voltage_min_v must be below voltage_max_v"),
    (_drop(_sbs(), "sbs"), "profile field sbs: object required for link 'sbs'"),
    (_put(_sbs(), [], "sbs", "device_names"), "profile field sbs.device_names: non-empty list required"),
    (_put(_sbs(), ["ok", "x" * 33], "sbs", "device_names"), "profile field sbs.device_names[1]: string of 1..32"),
    (_put(_sbs(), "", "name"), "profile field name: non-empty string required"),
]


@pytest.mark.parametrize("data,message", BROKEN, ids=[b[1][14:50] for b in BROKEN])
def test_broken_profile_names_the_file_and_the_field(tmp_path, data, message):
    path = tmp_path / "sbs48v.json"
    path.write_text(json.dumps(data))
    with pytest.raises(P.ProfileError) as e:
        P.load(str(path))
    assert str(e.value).startswith("%s: %s" % (path, message))


def test_profile_that_is_not_json_is_refused_with_its_path(tmp_path):
    path = tmp_path / "sbs48v.json"
    path.write_text('{"name": "sbs48v",')
    with pytest.raises(P.ProfileError, match="^%s: not JSON" % path):
        P.load(str(path))


def test_profile_named_unlike_its_file_is_refused(tmp_path):
    path = tmp_path / "sbs72v.json"
    path.write_text(json.dumps(_sbs()))
    with pytest.raises(P.ProfileError, match="profile field name: 'sbs48v' differs from the file name"):
        P.load(str(path))


def test_a_broken_file_in_the_directory_stops_load_dir_naming_it(tmp_path):
    (tmp_path / "sbs48v.json").write_text(json.dumps(_sbs()))
    (tmp_path / "bad.json").write_text(json.dumps(_drop(_put(_sbs(), "bad", "name"), "limits")))
    with pytest.raises(P.ProfileError, match="bad.json: profile field limits"):
        P.load_dir(str(tmp_path))


def test_read_compact_a_profile_keeps_what_its_link_uses_and_lets_its_source_go():
    from tukar import canbms
    ps = P.load_dir(str(PROFILES), compact=True)
    full = P.load_dir(str(PROFILES))
    assert all(p.data is None for p in ps.values())
    assert P.sbs_names(ps) == P.sbs_names(full) == {"TK48S-30": "sbs48v", "TK48S-30A": "sbs48v"}
    for name in ("ref48v", "pack72v"):  # the decoder gets the same tables either way
        assert canbms.compile_profile(ps[name].decoder()) == canbms.compile_profile(full[name].decoder())
        assert ps[name].decoder() == canbms.compile_profile(full[name].data)


def test_a_can_layout_the_decoder_refuses_is_refused_at_load_naming_the_file(tmp_path):
    d = json.loads((PROFILES / "ref48v.json").read_text())
    d["can"]["frames"][0]["signals"][0]["field"] = "warp_factor"
    path = tmp_path / "ref48v.json"
    path.write_text(json.dumps(d))
    P.load(str(path))  # the source alone is not checked signal by signal
    with pytest.raises(P.ProfileError, match="^%s: signal PackVoltage: unknown field warp_factor" % path):
        P.load(str(path), compact=True)


@pytest.mark.mpy
def test_profiles_load_under_micropython():
    code = ("from tukar import profile as P\n"
            "ps = P.load_dir('/input/profiles')\n"
            "print(sorted(ps), ps['sbs48v'].max_charge_ma, P.sbs_names(ps)['TK48S-30'])\n"
            "try:\n    P.load('/input/profiles/none.json')\nexcept P.ProfileError as e:\n    print(e)\n")
    out = mpvm.run(code).stdout.splitlines()
    assert out[0] == "['pack72v', 'ref48v', 'sbs48v'] 10000 sbs48v"
    assert out[1].startswith("/input/profiles/none.json: cannot read")
