"""Over-the-air updates (docs/ota.md) on the device side: the `ota` command's refusals, the
download into the next partition, the switch of the boot partition, the new image's self-test
and the rollback, with the application on the host shim, the esp32 partition model with its
bootloader, a local HTTP server and a real broker. Power cuts at every block write and between
set_boot and the self-test: the cabinet always boots a valid image and keeps its journal."""
import asyncio
import hashlib
import json
import threading

import pytest
from brokers import mqtt_broker  # noqa: F401 (a fixture)
from test_app import FakeWDT, OfflineClient  # an offline broker and a watchdog that keeps its feeds

import hosttime
import machine
import tukar
from tukar import ota as fw_ota
from tukar.app import App
from tukar.board import Board
from tukar.cycle import ControlCycle
from tukar_tools import schemas
from tukar_tools.ota import ImageServer
from tukar_tools.rig import Pack, Physical
from tukar_tools.shim import esp32 as shim_esp32
from tukar_tools.shim import hw as shim_hw
from tukar_tools.sign import command, sign
from umqtt.simple import MQTTClient

KEY = bytes(range(32))
SPEED = 20.0
FACTORY = tukar.FW_VERSION
SIZE = 16384  # 32 writes of CHUNK (512 B), in 4 blocks


class PowerCut(SystemExit):
    """Ends the download thread silently, where the power went."""


class Cabinet:
    """One cabinet across boots: its flash directory (state and partitions) and its world."""

    def __init__(self, tmp_path, broker, image, fault=None):
        self.root = str(tmp_path / "flash") + "/"
        self.phys = Physical("tukar-12-wroom", lock_travel_ms=100)
        for n in (1, 2, 3):
            self.phys.add_pack(n, Pack("B-%d" % n, self.phys.profiles["ref48v"], soc=95, soh=97,
                                       temp_c=26))
        self.esp32 = shim_esp32.Module(self.root)
        shim_esp32.install_factory(self.root, FACTORY)
        self.broker = broker
        self.image = tmp_path / "image.bin"
        self.image.write_bytes(image)
        self.server = ImageServer(str(self.image), host="127.0.0.1")
        self.events = []
        self.app = None
        self.task = None
        self.wdt = None
        self.client = MQTTClient
        self.header = None
        self.ack_log = []

    def close(self):
        self.server.close()
        self.esp32.Partition.on_write = None

    def boot(self, client=None):
        self.header = shim_esp32.boot(self.root)
        assert self.header is not None, "no bootable image"
        tukar.FW_VERSION = self.header["version"]
        self.phys.power_loss()
        shim_hw.install(self.phys.hw)
        board = Board(self.phys.cfg, machine)
        self.phys.serve_can(board)
        cfg = {"id": "ota-1", "slots": self.phys.n, "core": {"ota_selftest_s": 30},
               "mqtt": {"id": "ota-1", "host": "127.0.0.1", "port": self.broker.port,
                        "prefix": "ota%d" % id(self), "keepalive_s": 30, "io_timeout_s": 5}}
        self.wdt = FakeWDT()
        app = App(cfg, board, ControlCycle, client or self.client, self.root + "state", KEY,
                  self.phys.profiles, wall=None, wdt=self.wdt, board_name="tukar-12-wroom",
                  esp32=self.esp32)
        for ev in app.core.events:
            self.events.append(ev)
        real = app.outbox.add_event

        def add(ev):
            if ev not in self.events:
                self.events.append(ev)
            return real(ev)
        app.outbox.add_event = add
        post = app.link.post_ack

        def ack(a):
            self.ack_log.append(a)
            return post(a)
        app.link.post_ack = ack
        self.app = app
        self.task = None
        return app

    def send(self, body):
        self.app.link._cmds.append((sign(body, KEY), False))

    def manifest(self, version="0.2.0", **over):
        data = self.image.read_bytes()
        m = {"url": self.server.url("127.0.0.1"), "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "version": version,
             "board": "tukar-12-wroom", "chip": "esp32"}
        m.update(over)
        return m

    async def run(self, sim_ms, until=None):
        """Run the app; returns its end (\"ota\" after set_boot) or None when still running."""
        if self.task is None:
            self.task = asyncio.ensure_future(self.app.run())
        task = self.task
        clock = hosttime.current()
        end = clock.now_ms() + sim_ms
        while clock.now_ms() < end and not task.done():
            self.phys.physics(clock.now_ms())
            if until is not None and until():
                break
            await asyncio.sleep(0.02 / SPEED)
        if task.done():
            return task.result()
        return None

    async def cut(self):
        """The power goes: the app stops dead, its link without a goodbye."""
        app = self.app
        app.stopping = "power"
        app.link.abandon()
        for t in list(app.tasks.values()):
            t.cancel()
        if self.task is not None:
            self.task.cancel()
        await asyncio.sleep(0.05)
        for _ in range(100):
            if not app.link.running:
                break
            await asyncio.sleep(0.02)

    async def stop(self):
        app = self.app
        if app.stopping is None:
            app.stopping = "stop"
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except asyncio.CancelledError:
                pass
        else:
            app.shutdown()
        for _ in range(100):
            if not app.link.running:
                break
            await asyncio.sleep(0.02)

    def types(self):
        return [e["type"] for e in self.events]

    def acks(self):
        return list(self.ack_log)

    def inventory(self):
        return [(s.n, s.serial if hasattr(s, "serial") else None) for s in self.app.core.slots]


@pytest.fixture
def clock():
    c = hosttime.install(hosttime.SimClock(speed=SPEED))
    yield c
    hosttime.install(hosttime.SimClock())
    tukar.FW_VERSION = FACTORY


@pytest.fixture
def cabinet(tmp_path, mqtt_broker, clock):
    cab = Cabinet(tmp_path, mqtt_broker, shim_esp32.make_image("0.2.0", size=SIZE))
    yield cab
    cab.close()


def maintenance(cab):
    cab.send(command("set_mode", "m-1", ts=1, mode="maintenance"))


def valid_events(cab):
    for ev in cab.events:
        ev = dict(ev, seq=0)
        assert schemas.errors("event", ev) == [], ev


def serials(app):
    return [app.core.slot_state(n)["battery"] and app.core.slot_state(n)["battery"]["serial"]
            for n in range(1, app.core.n_slots + 1)]


# -- the manifest's checks ---------------------------------------------------------------------

BODY = {"url": "http://10.0.0.2:8080/fw.bin", "size": 1000, "sha256": "ab" * 32,
        "version": "0.2.0", "board": "tukar-12-wroom", "chip": "esp32"}


@pytest.mark.parametrize("over, code", [
    ({"board": "tukar-24-s3"}, "wrong_target"),
    ({"chip": "esp32s3"}, "wrong_target"),
    ({"size": 0x180001}, "image_too_large"),
    ({"version": "0.1.0"}, "not_newer"),
    ({"version": "0.0.9"}, "not_newer"),
    ({"version": "1.x"}, "bad_args"),
    ({"url": "ftp://h/x"}, "bad_args"),
    ({"sha256": "AB" * 32}, "bad_args"),
    ({"size": -1}, "bad_args"),
    ({"force": "yes"}, "bad_args"),
])
def test_the_manifest_is_refused_with_its_reason(over, code):
    with pytest.raises(fw_ota.Refused) as e:
        fw_ota.check(dict(BODY, **over), "0.1.0", "tukar-12-wroom", "esp32", 0x180000)
    assert e.value.code == code


def test_an_older_version_is_installed_when_forced():
    assert fw_ota.check(dict(BODY, version="0.0.9", force=True), "0.1.0", "tukar-12-wroom",
                        "esp32", 0x180000) == ("10.0.0.2", 8080, "/fw.bin")


def test_versions_compare_as_dotted_integers():
    assert fw_ota.version_tuple("0.10.0") > fw_ota.version_tuple("0.9.12")
    assert fw_ota.version_tuple("1.2") < fw_ota.version_tuple("1.2.0")


# -- the partition model and its bootloader -----------------------------------------------------

def test_the_bootloader_rolls_back_an_image_never_marked_valid(tmp_path):
    root = str(tmp_path) + "/"
    shim_esp32.install_factory(root, "0.1.0")
    P = shim_esp32.bind(root)
    part = P(P.RUNNING).get_next_update()
    image = shim_esp32.make_image("0.2.0", size=8192)
    part.writeblocks(0, image)
    part.set_boot()
    assert shim_esp32.state(root)["states"]["ota_1"] == "new"
    assert shim_esp32.boot(root)["version"] == "0.2.0"
    assert shim_esp32.state(root)["states"]["ota_1"] == "pending_verify"
    assert shim_esp32.boot(root)["version"] == "0.1.0"  # a reset before it was confirmed
    assert shim_esp32.state(root)["states"]["ota_1"] == "aborted"
    assert shim_esp32.boot(root)["version"] == "0.1.0"


def test_an_image_marked_valid_stays(tmp_path):
    root = str(tmp_path) + "/"
    shim_esp32.install_factory(root, "0.1.0")
    P = shim_esp32.bind(root)
    P(P.RUNNING).get_next_update().writeblocks(0, shim_esp32.make_image("0.2.0", size=4096))
    P(P.RUNNING).get_next_update().set_boot()
    shim_esp32.boot(root)
    P.mark_app_valid_cancel_rollback()
    assert shim_esp32.state(root)["states"]["ota_1"] == "valid"
    assert shim_esp32.boot(root)["version"] == "0.2.0"


def test_flash_is_nor_a_write_without_an_erase_only_clears_bits(tmp_path):
    root = str(tmp_path) + "/"
    shim_esp32.install_factory(root, "0.1.0")
    P = shim_esp32.bind(root)
    p = P("ota_1")
    p.ioctl(6, 0)
    p.writeblocks(0, b"\x0f", 0)
    p.writeblocks(0, b"\xf0", 0)
    buf = bytearray(2)
    p.readblocks(0, buf, 0)
    assert bytes(buf) == b"\x00\xff"


def test_set_boot_refuses_an_image_that_does_not_read(tmp_path):
    root = str(tmp_path) + "/"
    shim_esp32.install_factory(root, "0.1.0")
    P = shim_esp32.bind(root)
    with pytest.raises(OSError):
        P("ota_1").set_boot()


# -- a whole update, in process -------------------------------------------------------------------

async def send_update(cab, settle_ms=500, **over):
    """Boot, settle, maintenance mode, then the signed ota command; what the settling run returned
    (None: the application still running)."""
    cab.boot()
    settled = await cab.run(settle_ms)
    maintenance(cab)
    await cab.run(200)
    cab.send(command("ota", "u-1", ts=1, **cab.manifest(**over)))
    return settled


def test_an_update_downloads_switches_boots_self_tests_and_is_applied(cabinet):
    async def go():
        cab = cabinet
        assert await send_update(cab) is None
        why = await cab.run(30000, until=lambda: cab.app.stopping is not None)
        assert why == "ota" or cab.app.stopping == "ota", cab.types()
        await cab.stop()
        assert cab.acks()[-1]["ok"] if cab.acks() else True
        assert shim_esp32.state(cab.root)["boot"] == "ota_1"
        cab.boot()
        assert tukar.FW_VERSION == "0.2.0"
        await cab.run(20000, until=lambda: "OtaApplied" in cab.types())
        await cab.stop()
        assert "OtaApplied" in cab.types(), cab.types()
        assert shim_esp32.state(cab.root)["states"]["ota_1"] == "valid"
        t = cab.types()
        assert t.index("OtaStarted") < t.index("OtaProgress") < t.index("OtaApplied")
        applied = [e for e in cab.events if e["type"] == "OtaApplied"][0]
        assert applied["version"] == "0.2.0" and applied["from"] == FACTORY
        valid_events(cab)
        cab.boot()  # and it stays
        assert tukar.FW_VERSION == "0.2.0"
    asyncio.run(go())


def ack_of(cab, req_id):
    for a in cab.acks():
        if a["req_id"] == req_id:
            return a
    return None


async def refused(cab, body):
    cab.send(body)
    await cab.run(300)
    return ack_of(cab, body["req_id"])


def test_refusals_get_an_ack_error_and_move_nothing(cabinet):
    async def go():
        cab = cabinet
        cab.boot()
        await cab.run(500)
        a = await refused(cab, command("ota", "r-1", ts=1, **cab.manifest()))
        assert a["error"] == "wrong_mode"  # in_service
        maintenance(cab)
        await cab.run(200)
        for req, over, code in (("r-2", {"chip": "esp32s3"}, "wrong_target"),
                                ("r-3", {"board": "tukar-24-s3"}, "wrong_target"),
                                ("r-4", {"size": 0x200000}, "image_too_large"),
                                ("r-5", {"version": FACTORY}, "not_newer")):
            a = await refused(cab, command("ota", req, ts=1, **cab.manifest(**over)))
            assert a["error"] == code, a
        # a tampered manifest: the body changed after signing
        env = json.loads(sign(command("ota", "r-6", ts=1, **cab.manifest()), KEY))
        env["body"] = env["body"].replace("0.2.0", "9.9.9")
        cab.app.link._cmds.append((json.dumps(env).encode(), False))
        await cab.run(300)
        assert any(a["error"] == "bad_signature" for a in cab.acks())
        assert cab.app.ota is None
        assert shim_esp32.state(cab.root)["states"]["ota_1"] == "undefined"
        assert all(cab.app.core.lock_cmd)
        await cab.stop()
        for a in cab.acks():
            assert schemas.errors("ack", a) == [], a
    asyncio.run(go())


def test_an_update_is_refused_during_a_swap(cabinet):
    async def go():
        cab = cabinet
        cab.boot()
        await cab.run(1500)
        cab.send(command("start_swap", "s-1", ts=1, id_token="rider-1"))
        await cab.run(300)
        assert cab.app.core.session is not None
        a = await refused(cab, command("ota", "r-1", ts=1, **cab.manifest()))
        assert a["error"] == "wrong_mode"
        cab.app.core.mode = "maintenance"  # even were the mode right, the open session refuses it
        a = await refused(cab, command("ota", "r-2", ts=1, **cab.manifest()))
        assert a["error"] == "busy"
        assert cab.app.ota is None
        await cab.stop()
    asyncio.run(go())


def test_no_memory_for_the_update_code_is_refused_busy_and_the_cabinet_goes_on(cabinet, monkeypatch):
    """At 64 K after a long outage the download's code may not fit: the import's MemoryError is a
    refusal, not a crashed control task."""
    import builtins
    import sys
    real = builtins.__import__

    def no_room(name, *a, **k):
        if name == "tukar.ota":
            raise MemoryError("memory allocation failed, allocating 2160 bytes")
        return real(name, *a, **k)

    async def go():
        cab = cabinet
        cab.boot()
        await cab.run(1500)
        maintenance(cab)
        await cab.run(200)
        monkeypatch.setattr(builtins, "__import__", no_room)
        monkeypatch.delitem(sys.modules, "tukar.ota")
        a = await refused(cab, command("ota", "nm-1", ts=1, **cab.manifest()))
        monkeypatch.setattr(builtins, "__import__", real)
        assert a["error"] == "busy" and "memory" in a["detail"], a
        assert schemas.errors("ack", a) == [], a
        assert cab.app.ota is None and not cab.app.tasks["control"].done()
        assert "ota.json" not in cab.app.store.names()
        assert shim_esp32.state(cab.root)["states"]["ota_1"] == "undefined"
        assert all(cab.app.core.lock_cmd)
        cab.send(command("set_mode", "nm-2", ts=1, mode="in_service"))  # the cabinet still obeys
        await cab.run(300)
        assert ack_of(cab, "nm-2")["ok"] and cab.app.core.mode == "in_service"
        await cab.stop()
    asyncio.run(go())


def test_a_wrong_sha256_never_switches_the_boot_partition(cabinet):
    async def go():
        cab = cabinet
        await send_update(cab, sha256="00" * 32)
        await cab.run(20000, until=lambda: "OtaFailed" in cab.types())
        await cab.stop()
        failed = [e for e in cab.events if e["type"] == "OtaFailed"]
        assert failed and "sha256" in failed[0]["reason"]
        assert shim_esp32.state(cab.root)["boot"] == "ota_0"
        assert shim_esp32.boot(cab.root)["version"] == FACTORY
        valid_events(cab)
    asyncio.run(go())


def test_a_dropped_connection_resumes_with_a_range_request(cabinet):
    async def go():
        cab = cabinet
        cab.server.drop_after = 5000
        await send_update(cab)
        await cab.run(30000, until=lambda: cab.app.stopping is not None
                      or "OtaFailed" in cab.types())
        await cab.stop()
        assert cab.app.stopping == "ota", cab.types()
        assert [r for _, r in cab.server.requests] == [None, "bytes=5000-"]
    asyncio.run(go())


def test_a_server_that_ignores_range_makes_the_download_start_again(cabinet):
    async def go():
        cab = cabinet
        cab.server.drop_after = 5000
        cab.server.no_range = True
        await send_update(cab)
        await cab.run(30000, until=lambda: cab.app.stopping is not None
                      or "OtaFailed" in cab.types())
        await cab.stop()
        assert cab.app.stopping == "ota", cab.types()
        assert shim_esp32.boot(cab.root)["version"] == "0.2.0"
    asyncio.run(go())


def test_a_broker_outage_mid_download_does_not_stop_it(cabinet):
    async def go():
        cab = cabinet
        cab.boot()
        await cab.run(1000, until=lambda: cab.app.link.connected)
        maintenance(cab)
        await cab.run(200)
        slow = threading.Event()
        P = cab.esp32.Partition

        def on_write(n):
            if n == 4:  # a quarter in, the broker goes away
                cab.app.link.drop()
                slow.set()
        P.on_write = on_write
        cab.send(command("ota", "u-1", ts=1, **cab.manifest()))
        await cab.run(30000, until=lambda: cab.app.stopping is not None)
        P.on_write = None
        assert slow.is_set()
        assert cab.app.stopping == "ota", cab.types()
        await cab.stop()
    asyncio.run(go())


# -- power cuts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(1, SIZE // fw_ota.CHUNK + 1))
def test_a_power_cut_at_every_block_write_boots_the_old_image_and_keeps_the_journal(cabinet, k):
    async def go():
        cab = cabinet
        cab.boot()
        await cab.run(1500)
        maintenance(cab)
        await cab.run(200)
        before = serials(cab.app)
        hit = threading.Event()
        P = cab.esp32.Partition

        def on_write(n):
            if n == k:
                hit.set()
                raise PowerCut()
        P.writes = 0
        P.on_write = on_write
        cab.send(command("ota", "u-1", ts=1, **cab.manifest()))
        await cab.run(20000, until=hit.is_set)
        assert hit.is_set()
        await cab.cut()
        P.on_write = None
        cab.events.clear()
        app = cab.boot()
        assert tukar.FW_VERSION == FACTORY
        assert shim_esp32.state(cab.root)["running"] == "ota_0"
        await cab.run(1500)
        assert serials(app)[:3] == before[:3] == ["B-1", "B-2", "B-3"]
        assert app.core.mode == "maintenance"
        failed = [e for e in cab.events if e["type"] == "OtaFailed"]
        assert failed and "power_loss" in failed[0]["reason"]
        await cab.stop()
        valid_events(cab)
    asyncio.run(go())


async def update_until_set_boot(cab):
    await send_update(cab, 1500)
    await cab.run(30000, until=lambda: cab.app.stopping is not None)
    assert cab.app.stopping == "ota"
    await cab.stop()


def test_a_power_cut_between_set_boot_and_the_self_test_rolls_back(cabinet):
    async def go():
        cab = cabinet
        await update_until_set_boot(cab)
        cab.boot(client=OfflineClient)  # the new image, cut before its self-test could pass
        assert tukar.FW_VERSION == "0.2.0"
        await cab.run(300)
        await cab.cut()
        cab.events.clear()
        app = cab.boot()
        assert tukar.FW_VERSION == FACTORY
        await cab.run(1500)
        assert serials(app)[:3] == ["B-1", "B-2", "B-3"]
        back = [e for e in cab.events if e["type"] == "OtaRolledBack"]
        assert back and back[0]["version"] == "0.2.0" and back[0]["running"] == FACTORY
        assert shim_esp32.state(cab.root)["states"]["ota_1"] == "aborted"
        await cab.stop()
        valid_events(cab)
    asyncio.run(go())


def test_a_self_test_that_fails_starves_the_watchdog_and_the_old_image_reports_the_rollback(cabinet):
    async def go():
        cab = cabinet
        await update_until_set_boot(cab)
        cab.boot(client=OfflineClient)  # the new image never reaches the broker
        await cab.run(40000, until=lambda: cab.app.ota is not None and cab.app.ota.starve)
        assert cab.app.ota.starve
        fed = len(cab.wdt.feeds)
        await cab.run(3000)
        assert len(cab.wdt.feeds) == fed  # starved: the watchdog resets the chip (5 s)
        await cab.cut()
        cab.events.clear()
        cab.boot()
        assert tukar.FW_VERSION == FACTORY
        await cab.run(1000)
        assert "OtaRolledBack" in cab.types()
        await cab.stop()
    asyncio.run(go())
