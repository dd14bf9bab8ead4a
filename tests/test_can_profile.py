"""CAN battery profiles: the device's decoder (canbms, from JSON) agrees with cantools (from the
DBC) on every signal; JSON and DBC agree; slots map from node ids; decoding allocates nothing."""
import json
import pathlib
import sys

import cantools
import pytest
from hypothesis import given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (ROOT / "firmware", ROOT / "tools" / "tukar_tools" / "shim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from tukar import canbms, mcp2515  # noqa: E402
from tukar.inputs import BmsReading, BATTERY_FAULTS  # noqa: E402
from tukar.profile import Profile  # noqa: E402
from tukar_tools import canprofile  # noqa: E402
from tukar_tools.shim.bms_node import BmsNode  # noqa: E402
from tukar_tools.shim.canbus import CanBus  # noqa: E402
from tukar_tools.shim.mcp2515_model import DirectCs, DirectSpi, MCP2515Model  # noqa: E402

PROFILES = ROOT / "firmware" / "profiles"
NAMES = ("ref48v", "pack72v")
FUEL = 10**10


def profile(name):
    return json.loads((PROFILES / (name + ".json")).read_text())


def dbc(name):
    return cantools.database.load_file(str(PROFILES / (name + ".dbc")))


# Physical unit -> core unit factor, per target field (inputs.py: mV, mA, per mille, %, 0.1 degC).
CORE = {"V": 1000, "mV": 1, "A": 1000, "degC": 10, "%": 1, "": 1}


def core(sig, phys):
    if sig.get("field") == "soc_pm":
        return max(0, min(1000, round(phys * 10)))
    if sig.get("field") == "full":
        return bool(phys)
    return round(phys * CORE[sig.get("unit", "")])


def decoded(bms, reading, slot, sig):
    f = sig["field"]
    return bms.value(slot, f) if f in canbms.EXTRA else getattr(reading, f)


def signal_frames():
    return [(n, f) for n in NAMES for f in profile(n)["can"]["frames"] if "signals" in f]


@pytest.mark.parametrize("name,frame", signal_frames(), ids=lambda x: x if isinstance(x, str) else x["name"])
@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=8, max_size=8), slot=st.integers(0, 11))
def test_device_decoder_matches_cantools_on_random_frames(name, frame, payload, slot):
    prof = profile(name)
    msg = dbc(name).get_message_by_name(frame["name"])
    phys = msg.decode(payload, decode_choices=False)
    readings = [BmsReading() for _ in range(12)]
    bms = canbms.CanBms([prof], readings)
    fid = canprofile.slot_id(prof, frame, slot) | (canbms.EXT if frame["extended"] else 0)
    assert bms.feed(fid, payload, 0, 8, 1234) == slot
    r = readings[slot]
    expect_faults = 0
    for sig in frame["signals"]:
        if "fault" in sig:
            if phys[sig["name"]]:
                expect_faults |= 1 << BATTERY_FAULTS.index(sig["fault"])
        else:
            assert decoded(bms, r, slot, sig) == core(sig, phys[sig["name"]]), sig["name"]
    assert r.faults == expect_faults
    assert (r.valid, r.t_ms, r.profile) == (True, 1234, name)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_serial_pages_assemble_the_serial_string_as_cantools_reads_them(name, data):
    prof = profile(name)
    frame = [f for f in prof["can"]["frames"] if "serial" in f][0]
    pages = frame["serial"]["pages"]
    serial = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=7 * pages))
    msg = dbc(name).get_message_by_name(frame["name"])
    readings = [BmsReading() for _ in range(4)]
    bms = canbms.CanBms([prof], readings)
    fid = canprofile.slot_id(prof, frame, 2) | (canbms.EXT if frame["extended"] else 0)
    via_cantools = b""
    for page in range(pages):
        payload = canprofile.encode(frame, {}, page=page, serial=serial)
        assert readings[2].serial is None
        bms.feed(fid, payload, 0, 8, 0)
        chars = msg.decode(payload)["SerialChars%d" % page]
        via_cantools += chars.to_bytes(7, "little")
    assert readings[2].serial == serial
    assert via_cantools.rstrip(b"\0").decode() == serial


@pytest.mark.parametrize("name", NAMES)
def test_json_and_dbc_agree_field_by_field(name):
    prof = profile(name)
    db = dbc(name)
    assert len(db.messages) == len(prof["can"]["frames"])
    for f in prof["can"]["frames"]:
        m = db.get_message_by_frame_id(canprofile.frame_id(f))
        assert (m.name, m.is_extended_frame, m.length, m.cycle_time) == (f["name"], f["extended"], f["dlc"], f["period_ms"])
        if "serial" in f:
            assert m.signals[0].is_multiplexer
            assert sorted(m.signal_tree[0]["SerialPage"]) == list(range(f["serial"]["pages"]))
            continue
        assert sorted(s.name for s in m.signals) == sorted(s["name"] for s in f["signals"])
        for s in f["signals"]:
            d = m.get_signal_by_name(s["name"])
            assert (d.start, d.length, d.byte_order, d.is_signed) == (s["start"], s["length"], s["byte_order"], s["signed"])
            assert (d.scale, d.offset, d.unit or "") == (s["scale"], s["offset"], s["unit"])


@pytest.mark.parametrize("name", NAMES)
def test_committed_dbc_is_the_one_generated_from_the_json(name):
    assert (PROFILES / (name + ".dbc")).read_text() == canprofile.to_dbc(profile(name))


@pytest.mark.parametrize("name", NAMES)
def test_profile_limits_load_into_the_core_profile(name):
    p = Profile.from_dict(profile(name))
    assert p.link == "can"
    assert p.charge_min_dc >= 0 and p.charge_max_dc <= 450


def test_ref48v_limits_are_the_default_profile():
    p = Profile.from_dict(profile("ref48v"))
    assert (p.charge_min_dc, p.charge_max_dc, p.max_charge_ma, p.voltage_min_mv, p.voltage_max_mv,
            p.capacity_mah) == (0, 450, 10000, 42000, 54600, 30000)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_host_encoder_matches_cantools_decoding(name, data):
    prof = profile(name)
    db = dbc(name)
    for f in prof["can"]["frames"]:
        if "signals" not in f:
            continue
        raws = {s["name"]: data.draw(st.integers(0, (1 << s["length"]) - 1)) for s in f["signals"]}
        payload = bytearray(f["dlc"])
        for s in f["signals"]:
            canprofile.put_raw(payload, s, raws[s["name"]])
        got = db.get_message_by_name(f["name"]).decode(bytes(payload), scaling=False, decode_choices=False)
        for s in f["signals"]:
            raw = raws[s["name"]]
            if s["signed"] and raw >> (s["length"] - 1):
                raw -= 1 << s["length"]
            assert got[s["name"]] == raw


def test_frame_from_node_first_plus_slot_lands_in_that_slot():
    prof = profile("ref48v")
    readings = [BmsReading() for _ in range(12)]
    bms = canbms.CanBms([prof], readings)
    payload = canprofile.encode(prof["can"]["frames"][0], {"PackVoltage": 50.0})
    assert bms.feed(0x300 | 1, payload, 0, 8, 0) == 0
    assert bms.feed(0x300 | 12, payload, 0, 8, 0) == 11
    assert readings[11].voltage_mv == 50000


def test_unknown_node_unknown_id_and_short_frame_are_ignored():
    prof = profile("ref48v")
    readings = [BmsReading() for _ in range(12)]
    bms = canbms.CanBms([prof], readings)
    assert bms.feed(0x300 | 13, bytes(8), 0, 8, 0) == -1  # node 13 = slot 12: no such slot
    assert bms.feed(0x300, bytes(8), 0, 8, 0) == -1  # node 0 is nobody
    assert bms.feed(0x123, bytes(8), 0, 8, 0) == -1
    assert bms.feed(0x301, bytes(8), 0, 6, 0) == -1  # BMS_Pack needs 8 bytes
    assert bms.ignored == 4
    assert not any(r.valid for r in readings)


def test_two_profiles_share_one_bus():
    p48, p72 = profile("ref48v"), profile("pack72v")
    readings = [BmsReading() for _ in range(4)]
    bms = canbms.CanBms([p48, p72], readings)
    f48, f72 = p48["can"]["frames"][0], p72["can"]["frames"][0]
    bms.feed(canprofile.slot_id(p48, f48, 0), canprofile.encode(f48, {"PackVoltage": 51.0}), 0, 8, 0)
    bms.feed(canprofile.slot_id(p72, f72, 3) | canbms.EXT, canprofile.encode(f72, {"Voltage": 79.5, "Current": 10.0}), 0, 8, 0)
    assert (readings[0].profile, readings[0].voltage_mv) == ("ref48v", 51000)
    assert (readings[3].profile, readings[3].voltage_mv, readings[3].current_ma) == ("pack72v", 79500, 10000)


def test_fault_bits_of_a_frame_replace_only_that_frames_faults():
    prof = profile("ref48v")
    readings = [BmsReading()]
    bms = canbms.CanBms([prof], readings)
    status = prof["can"]["frames"][2]
    readings[0].faults = 1 << 8  # overtemp: not carried by this frame
    bms.feed(0x341, canprofile.encode(status, {"ShortCircuit": 1}), 0, 8, 0)
    assert readings[0].faults == (1 << 8) | (1 << BATTERY_FAULTS.index("short_circuit"))
    bms.feed(0x341, canprofile.encode(status, {}), 0, 8, 0)
    assert readings[0].faults == 1 << 8


def test_soc_above_100_percent_is_clamped_to_1000_per_mille():
    prof = profile("ref48v")
    readings = [BmsReading()]
    bms = canbms.CanBms([prof], readings)
    bms.feed(0x301, canprofile.encode(prof["can"]["frames"][0], {"SoC": 104.0}), 0, 8, 0)
    assert readings[0].soc_pm == 1000


def test_bms_nodes_on_the_bus_fill_the_slots_through_the_mcp2515(manual_clock):
    bus = CanBus(500_000)
    model = bus.attach_controller(MCP2515Model())

    can = mcp2515.MCP2515(DirectSpi(model), DirectCs(model))
    can.init(mcp2515.MODE_LISTEN)
    nodes = [bus.attach(BmsNode("ref48v", s, serial="TK48-%06d" % s)) for s in range(3)]
    nodes[1].set(SoC=55.5, TempMax=41)
    readings = [BmsReading() for _ in range(3)]
    bms = canbms.CanBms([profile("ref48v")], readings)
    rx = bytearray(13)

    def drain():
        fid = can.recv_into(rx)
        while fid >= 0:
            bms.feed(fid, rx, 5, rx[4] & 0x0F, bus.now_ms)
            fid = can.recv_into(rx)

    bus.between_frames = drain
    for now in range(0, 1000, 10):
        bus.step(now)
    assert [r.serial for r in readings] == ["TK48-000000", "TK48-000001", "TK48-000002"]
    assert (readings[1].soc_pm, readings[1].temp_dc, readings[1].voltage_mv) == (555, 410, 51800)
    assert bms.value(1, "cell_min_mv") == 3970
    assert bms.frames == bus.frames  # 10 Hz x 3 + 5 Hz x 2 frames per pack: none lost
    assert bus.frames == 3 * (10 * 3 + 5)


def run_mpy(code):
    from tukar_tools import mpvm

    r = mpvm.run(code, fuel=FUEL, timeout=120)
    assert r.stderr == "", r.stderr
    return r


VM_DECODE = """
import gc, json
from tukar import canbms
from tukar.inputs import BmsReading
prof = json.load(open('/input/profiles/%s.json'))
readings = [BmsReading() for _ in range(12)]
bms = canbms.CanBms([prof], readings)
frames = %r
bufs = [bytearray(f[1]) for f in frames]
for k in range(len(frames)):
    bms.feed(frames[k][0], bufs[k], 0, 8, 0)
gc.collect()
gc.disable()
a = gc.mem_alloc()
for i in range(%d):
    pass
# a first loop after gc.disable() allocates 16 bytes once, whatever its body
a = gc.mem_alloc()
for i in range(%d):
    k = i %% len(frames)
    bms.feed(frames[k][0], bufs[k], 0, 8, i)
b = gc.mem_alloc()
print(b - a, readings[4].voltage_mv, readings[4].serial, readings[4].faults)
"""


def vm_frames(name):
    prof = profile(name)
    node = BmsNode(name, 4, serial="SER-0123456789")
    node.set(ShortCircuit=1, AlmShort=1)
    out = []
    for f in prof["can"]["frames"]:
        pages = f["serial"]["pages"] if "serial" in f else 1
        for page in range(pages):
            fr = node.frames_now(f, page)
            out.append((fr.id | (canbms.EXT if fr.extended else 0), fr.data))
    return out


@pytest.mark.mpy
@pytest.mark.parametrize("name", NAMES)
def test_decoding_allocates_nothing_under_micropython(name):
    r = run_mpy(VM_DECODE % (name, vm_frames(name), 200, 200))
    allocated, mv, serial, faults = r.stdout.split()
    assert int(allocated) == 0
    assert int(mv) in (51800, 78000)
    assert serial == "SER-0123456789"
    assert int(faults) == 1 << BATTERY_FAULTS.index("short_circuit")


def fuel_per_frame(name, n=200):
    frames = vm_frames(name)
    used = [run_mpy(VM_DECODE % (name, frames, k, k)).fuel_used for k in (0, n)]
    return (used[1] - used[0]) / n


@pytest.mark.mpy
def test_decoding_fuel_per_frame_is_bounded():
    per = fuel_per_frame("ref48v")
    print("fuel per decoded ref48v frame: %.0f" % per)
    assert per < 200_000
