"""The web console (`tukar web`, docs/web.md) in a real browser: headless Debian Chromium driven
over the DevTools protocol opens the page against `tukar sim` and the Mosquitto it starts, with its
WebSocket listener. The fleet and the cabinet views follow the simulated cabinets; a swap driven
through sim/cmd shows in the tiles, the timeline and the event log; commands signed in the page are
acked (or refused in words); the page's HMAC is the firmware's byte for byte; a killed simulator
reads offline. Keyboard use, a phone's screen and 200 % zoom are checked too, and that the page
asks nothing of any host but this one. Screenshots go to build/screenshots/."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from brokers import require
from test_sim_e2e import stop_sim, telemetry_every_10_s

from tukar import sign as firmware_sign
from tukar_tools import browser as cdp
from tukar_tools import web
from tukar_tools.cmdline import SIM_KEY_HEX
from tukar_tools.scenario import Runner
from tukar_tools.sign import parse_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
KEY = parse_key(SIM_KEY_HEX)
WRONG_KEY_HEX = "00" * 32
SLOTS = 8  # per simulated cabinet, 5 of them stocked
KEEPALIVE_S = 30  # the simulated cabinets' (tukar_tools.sim.write_flash)
SIM_LINE = re.compile(r"(\w+) broker on 127\.0\.0\.1:(\d+), WebSocket (\d+); web console (\S+)")


def need_chromium():
    if not os.path.exists(cdp.CHROMIUM):
        pytest.fail("Chromium is not installed: apt-get install chromium (make needs and .ci/run "
                    "install it)", pytrace=False)


def start_sim(*args):
    return subprocess.Popen([sys.executable, "-m", "tukar_tools.cli", "sim", "--no-monitor",
                             "--speed", "1", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """`tukar sim` as an operator starts it: its own broker (Mosquitto, with a WebSocket listener)
    and the console's URL printed beside the broker's port. sim-1 telemetry every 10 s."""
    require("mosquitto")
    proc = start_sim("--cabinets", "2", "--slots", str(SLOTS), "--fill", "5",
                     "--state-dir", str(tmp_path_factory.mktemp("web-sim")))
    line = proc.stderr.readline()
    m = SIM_LINE.search(line)
    if m is None:
        proc.kill()
        raise AssertionError("tukar sim did not print its broker and console: %r" % line)
    kind, port, ws_port, url = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    assert kind == "mosquitto"
    runners = {c: Runner("127.0.0.1", port, "tukar", c, KEY, out=lambda _: None)
               for c in ("sim-1", "sim-2")}
    try:
        for r in runners.values():
            r.step({"do": "expect_status", "value": "online", "within_s": 30})
            r.step({"do": "expect_state", "match": {"session": None}, "within_s": 30})
        telemetry_every_10_s(runners["sim-1"])
        yield {"proc": proc, "port": port, "ws_port": ws_port, "url": url, **runners}
    finally:
        for r in runners.values():
            r.obs.close()
        err = line + stop_sim(proc)
        assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def browser():
    need_chromium()
    b = cdp.Chromium(width=1280, height=900)
    yield b
    b.close()


_loads = iter(range(1, 10 ** 6))


def open_console(browser, url, view="#/"):
    """A fresh page (nothing kept from the last test: no key, no model), on `view`."""
    browser.reset_viewport()
    browser.goto("%s&load=%d%s" % (url, next(_loads), view))
    browser.wait("document.getElementById('conn-status').textContent.startsWith('connected')",
                 15, "the page to connect to the broker")


@pytest.fixture
def page(browser, sim):
    open_console(browser, sim["url"])
    return browser


def shot(browser, name):
    return browser.screenshot(str(SHOTS / name))


ROWS = "[...document.querySelectorAll('#fleet-rows tr')].map(tr => [...tr.cells].map(td => td.innerText.trim()))"


def tile(browser, n, what="dataset.state"):
    return browser.evaluate("(() => { const t = document.querySelector('#slots [data-slot=\"%d\"]');"
                            " return t ? t.%s : null; })()" % (n, what))


def wait_tile(browser, n, state, timeout=15):
    browser.wait("(() => { const t = document.querySelector('#slots [data-slot=\"%d\"]');"
                 " return t && t.dataset.state === %s; })()" % (n, json.dumps(state)), timeout,
                 "slot %d's tile to read %s" % (n, state))


def no_horizontal_overflow(browser):
    return browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# == the fleet view ==============================================================================

def test_the_fleet_view_shows_every_simulated_cabinet_with_its_retained_state(page, sim):
    page.wait("document.querySelectorAll('#fleet-rows tr').length === 2", 15, "two cabinets")

    def counts_agree():  # the page against the retained state (a charge may finish meanwhile)
        rows = {r[0]: r for r in page.evaluate(ROWS)}
        return all([int(x) for x in rows[c][4:8]] == [sim[c].obs.state[k] for k in (
            "ready", "charging", "empty", "faulted")] for c in rows)
    deadline = time.monotonic() + 10
    while not counts_agree() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts_agree()
    rows = {r[0]: r for r in page.evaluate(ROWS)}
    assert sorted(rows) == ["sim-1", "sim-2"]
    for cid in rows:
        cab, status, mode, alarms, ready, charging, empty, faulted, age = rows[cid]
        assert (status, mode, alarms) == ("online", "in service", "none")
        assert int(empty) + int(charging) <= SLOTS
        assert re.fullmatch(r"\d+ s", age), age
    assert page.evaluate("document.getElementById('fleet-count').textContent") == "(2 seen, 2 online)"
    shot(page, "fleet.png")


def test_the_fleet_view_sorts_and_filters(page):
    page.wait("document.querySelectorAll('#fleet-rows tr').length === 2", 15, "two cabinets")
    ids = "[...document.querySelectorAll('#fleet-rows tr')].map(tr => tr.cells[0].innerText)"
    assert page.evaluate(ids) == ["sim-1", "sim-2"]
    page.evaluate("document.querySelector('th[data-key=id] button').click()")
    assert page.evaluate(ids) == ["sim-2", "sim-1"]
    assert page.evaluate("document.querySelector('th[data-key=id]').getAttribute('aria-sort')") \
        == "descending"
    page.evaluate("const f = document.getElementById('fleet-filter'); f.value = 'SIM-2 online';"
                  "f.dispatchEvent(new Event('input'))")
    assert page.evaluate(ids) == ["sim-2"]
    page.evaluate("const g = document.getElementById('fleet-filter'); g.value = 'offline';"
                  "g.dispatchEvent(new Event('input'))")
    assert page.evaluate(ids) == []
    assert "2 seen, 2 online, 0 shown" in page.evaluate("document.getElementById('fleet-count').textContent")


# == the cabinet view ============================================================================

def test_a_swap_driven_through_sim_cmd_shows_in_the_tiles_timeline_and_event_log(browser, sim):
    open_console(browser, sim["url"], "#/cabinet/sim-1")
    r = sim["sim-1"]
    browser.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 15, "every slot's tile")
    ack = r.step({"do": "cmd", "cmd": "start_swap", "args": {"id_token": "rider-web"}})
    slot_in = ack["slot"]
    wait_tile(browser, slot_in, "awaiting_battery")
    assert "awaiting battery" in tile(browser, slot_in, "innerText").lower()
    r.step({"do": "expect_slot", "slot": slot_in, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "insert", "slot": slot_in,
            "battery": {"serial": "WEB-PACK", "soc": 14, "soh": 90, "temp_c": 28}})
    r.step({"do": "world", "action": "close_door", "slot": slot_in})
    st = r.step({"do": "expect_state", "match": {"session": {"phase": "dispensing"}}, "within_s": 10})
    slot_out = st["session"]["slot_out"]
    wait_tile(browser, slot_out, "dispensing")
    r.step({"do": "expect_slot", "slot": slot_out, "match": {"lock": "unlocked"}, "within_s": 5})
    assert "unlocked" in tile(browser, slot_out, "innerText")
    r.step({"do": "world", "action": "take", "slot": slot_out})
    r.step({"do": "world", "action": "close_door", "slot": slot_out})
    done = r.step({"do": "expect_event", "type": "SwapCompleted", "within_s": 10})
    browser.wait("document.querySelector('#events [data-type=SwapCompleted]')", 10, "SwapCompleted")
    wait_tile(browser, slot_out, "empty")
    text = tile(browser, slot_in, "innerText")
    assert "WEB-PACK" in text and "SoC 14.0 %" in text
    steps = browser.evaluate("[...document.querySelectorAll('#session li')].map(l => l.dataset.type)")
    assert steps == ["SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted"]
    assert "slot %d in, slot %d out" % (slot_in, slot_out) in browser.evaluate(
        "document.getElementById('session').innerText")
    # At least once: an event delivered again (same id) is listed once.
    started = next(e for e in r.obs.events if e["type"] == "SwapStarted" and e["session"] == done["session"])
    r.obs.client.publish(r.obs.base + "event", json.dumps(started), qos=1)
    marker = {"id": "web-test-marker", "type": "FaultCleared", "ts": None, "up_ms": 1, "seq": 0,
              "slot": None, "code": "test", "severity": "info"}
    r.obs.client.publish(r.obs.base + "event", json.dumps(marker), qos=1)
    browser.wait("document.querySelector('#events [data-id=\"web-test-marker\"]')", 10, "the marker")
    ids = browser.evaluate("[...document.querySelectorAll('#events li')].map(l => l.dataset.id)")
    assert ids.count(started["id"]) == 1 and len(ids) == len(set(ids))
    assert {"SwapStarted", "BatteryIn", "BatteryOut", "SwapCompleted"} <= set(
        browser.evaluate("[...document.querySelectorAll('#events li')].map(l => l.dataset.type)"))
    browser.evaluate("const f = document.getElementById('event-filter'); f.value = 'swapcompleted';"
                     "f.dispatchEvent(new Event('input'))")
    assert browser.evaluate("[...document.querySelectorAll('#events li')].map(l => l.dataset.id)") \
        == [done["id"]]
    shot(browser, "cabinet.png")


def test_each_occupied_slot_draws_soc_and_temperature_history_from_telemetry(browser, sim):
    open_console(browser, sim["url"], "#/cabinet/sim-1")
    # sim-1 publishes telemetry every 10 s: two samples within about 20 s of the page opening.
    browser.wait("[...document.querySelectorAll('#slots .spark svg')].some(s => / 2 samples/.test("
                 "s.getAttribute('aria-label')))", 35, "two telemetry samples in a sparkline")
    occupied = browser.evaluate("[...document.querySelectorAll('#slots li')].filter(t => "
                                "t.querySelector('.soc')).map(t => +t.dataset.slot)")
    with_history = browser.evaluate("[...document.querySelectorAll('#slots li')].filter(t => "
                                    "t.querySelectorAll('.spark polyline').length === 2)"
                                    ".map(t => +t.dataset.slot)")
    assert occupied and with_history == occupied
    labels = browser.evaluate("[...document.querySelectorAll('#slots .spark svg')].map(s => "
                              "s.getAttribute('aria-label'))")
    assert any(label.startswith("SoC since the page opened: ") for label in labels)
    assert any(label.startswith("Temp. since the page opened: ") for label in labels)
    points = browser.evaluate("document.querySelector('#slots .spark polyline').getAttribute('points')")
    assert len(points.split()) >= 2


# == operator actions ============================================================================

def hold_key(browser, hex_text):
    browser.evaluate("document.getElementById('key').focus()")
    browser.type(hex_text)
    browser.evaluate("document.getElementById('key-hold').click()")
    browser.wait("document.getElementById('key-state').textContent.startsWith('A key is held')", 5)


def act(browser, cmd, **fields):
    """Fill the action's fields and press its button; the text of its ack line once answered."""
    for name, value in fields.items():
        browser.evaluate("document.getElementById('act-%s').value = %s" % (name, json.dumps(str(value))))
    n = browser.evaluate("document.querySelectorAll('#acks li').length")
    browser.evaluate("document.querySelector('[data-cmd=%s]').click()" % cmd)
    browser.wait("document.querySelectorAll('#acks li').length === %d && "
                 "!document.querySelector('#acks li').classList.contains('pending') && "
                 "!document.querySelector('#acks li .result').textContent.startsWith('sent')" % (n + 1),
                 15, "the ack of %s" % cmd)
    return browser.evaluate("(() => { const l = document.querySelector('#acks li');"
                            " return {cls: l.className, text: l.innerText, error: l.dataset.error || null}; })()")


def test_a_quarantine_signed_in_the_page_is_acked_and_changes_the_slot(browser, sim):
    r = sim["sim-2"]
    open_console(browser, sim["url"], "#/cabinet/sim-2")
    wait_tile(browser, 2, r.obs.slots[2]["state"])
    assert r.obs.slots[2]["battery"] is not None
    sent_before = len(r.obs.records)
    hold_key(browser, SIM_KEY_HEX)
    assert browser.evaluate("document.getElementById('key').value") == ""
    a = act(browser, "quarantine", slot=2, reason="smells of smoke")
    assert a["cls"] == "ack ok" and "ok, acknowledged" in a["text"], a
    wait_tile(browser, 2, "quarantined")
    assert "QUARANTINED" in tile(browser, 2, "innerText").upper()
    # What the page published: the contract's envelope, signed over the exact body bytes.
    cmds = [p for t, p, _ in r.obs.records[sent_before:] if t == r.obs.base + "cmd"]
    assert len(cmds) == 1
    env = json.loads(cmds[0])
    assert sorted(env) == ["body", "sig"]
    assert firmware_sign.Signer(KEY).verify(env["body"].encode("utf-8"), env["sig"])
    body = json.loads(env["body"])
    assert {k: body[k] for k in ("cmd", "slot", "reason")} == {
        "cmd": "quarantine", "slot": 2, "reason": "smells of smoke"}
    assert abs(body["ts"] - time.time()) < 5 and isinstance(body["ts"], int)
    assert re.fullmatch(r"web-[0-9a-f]{8}-\d+", body["req_id"])
    # The rest of the operator's actions, each with its ack.
    open_slot = "document.querySelector('[data-cmd=open_slot]').disabled"
    assert browser.evaluate(open_slot) is True  # maintenance only
    assert act(browser, "set_mode", mode="maintenance")["cls"] == "ack ok"
    browser.wait("document.getElementById('cab-summary').innerText.includes('maintenance')", 10)
    assert browser.evaluate(open_slot) is False
    assert act(browser, "release", slot=2)["cls"] == "ack ok"
    browser.wait("(() => { const t = document.querySelector('#slots [data-slot=\"2\"]');"
                 " return t && t.dataset.state !== 'quarantined'; })()", 15, "slot 2 released")
    assert act(browser, "open_slot", slot=4)["cls"] == "ack ok"
    wait_tile(browser, 4, "maintenance_open")
    assert act(browser, "rebirth")["cls"] == "ack ok"
    a = act(browser, "reset_emergency")  # no emergency: the cabinet's refusal, in words
    assert a["error"] == "wrong_mode" and \
        "refused: wrong mode: not allowed in the cabinet's current mode" in a["text"], a
    # The technician shuts the door again: the slot locks, and the cabinet can go back in service.
    r.step({"do": "expect_slot", "slot": 4, "match": {"lock": "unlocked"}, "within_s": 5})
    r.step({"do": "world", "action": "open_door", "slot": 4})
    r.step({"do": "world", "action": "close_door", "slot": 4})
    browser.wait("(() => { const t = document.querySelector('#slots [data-slot=\"4\"]');"
                 " return t && t.dataset.state !== 'maintenance_open'; })()", 15, "slot 4 closed")
    a = act(browser, "set_mode", mode="in_service")
    assert a["cls"] == "ack ok", a
    # The key went nowhere: not in any message, not stored.
    key_hex = SIM_KEY_HEX.lower()
    assert not any(key_hex.encode() in p for _, p, _ in r.obs.records)
    assert browser.evaluate("localStorage.length + sessionStorage.length") == 0
    assert not any(key_hex in u for u in browser.requested_urls())
    shot(browser, "actions.png")


def test_a_wrong_key_shows_bad_signature_in_words(browser, sim):
    open_console(browser, sim["url"], "#/cabinet/sim-2")
    browser.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 15)
    hold_key(browser, WRONG_KEY_HEX)
    a = act(browser, "rebirth")
    assert a["error"] == "bad_signature", a
    assert "refused: bad signature: the key is not this cabinet's key" in a["text"]


def test_without_a_key_nothing_is_sent(browser, sim):
    r = sim["sim-2"]
    open_console(browser, sim["url"], "#/cabinet/sim-2")
    n = len(r.obs.records)
    browser.evaluate("document.querySelector('[data-cmd=rebirth]').click()")
    browser.wait("document.querySelector('#acks li.refused')", 5)
    assert "not sent: no key held for this cabinet" in browser.evaluate(
        "document.querySelector('#acks li').innerText")
    time.sleep(0.5)
    assert not [t for t, _, _ in r.obs.records[n:] if t.endswith("/cmd")]


def test_the_pages_signature_is_the_firmwares_byte_for_byte(browser, sim):
    open_console(browser, sim["url"])
    bodies = ['{"req_id":"r-1","ts":1764300000,"cmd":"rebirth"}',
              '{"req_id":"r-2","ts":1764300000,"cmd":"quarantine","slot":3,"reason":"Ünïcödé ☃ 🛵 \\"q\\" \\\\"}',
              ""]
    keys = [SIM_KEY_HEX, "ab" * 16, "0f" * 64, "c3" * 100]  # 100 bytes: longer than a block, hashed
    for key_hex in keys:
        signer = firmware_sign.Signer(bytes.fromhex(key_hex))
        for body in bodies:
            got = browser.evaluate("tukarConsole.signHex(%s, %s)" % (json.dumps(key_hex), json.dumps(body)))
            assert got == signer.hexdigest(body.encode("utf-8")), (key_hex[:8], body)


# == liveness ====================================================================================

def test_killing_the_simulator_turns_its_cabinet_offline_within_the_keepalive(browser, sim, tmp_path):
    # Its own topic prefix, so the other tests' fleet stays as it was.
    proc = start_sim("--broker", "127.0.0.1:%d" % sim["port"], "--cabinets", "1", "--slots", "2",
                     "--id-prefix", "gone", "--prefix", "gone", "--state-dir", str(tmp_path))
    try:
        open_console(browser, sim["url"].replace("prefix=tukar", "prefix=gone"))
        row = "(() => { const a = [...document.querySelectorAll('#fleet-rows tr')].find(tr => " \
              "tr.cells[0].innerText === 'gone-1'); return a ? a.cells[1].innerText : null; })()"
        browser.wait(row + " === 'online'", 30, "gone-1 online")
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        browser.wait(row + " === 'offline'", KEEPALIVE_S * 1.5 + 5, "gone-1 offline")
        took = time.monotonic() - killed
    finally:
        proc.kill()
        proc.wait(10)
    assert took <= KEEPALIVE_S, took
    assert browser.evaluate("[...document.querySelectorAll('#fleet-rows tr.is-offline')]"
                            ".map(tr => tr.cells[0].innerText)") == ["gone-1"]


# == keyboard, small screens, zoom ===============================================================

def tab_to(browser, predicate_js, limit=60):
    """Press Tab until the focused element satisfies `predicate_js` (on `e`); the focus path."""
    path = []
    for _ in range(limit):
        browser.key("Tab")
        here = browser.evaluate("(() => { const e = document.activeElement; return [e.tagName, "
                                "e.id || e.dataset.cmd || e.innerText.trim().slice(0, 20), %s]; })()"
                                % predicate_js.replace("e.", "document.activeElement."))
        path.append(here[:2])
        if here[2]:
            return path
    raise AssertionError("Tab never reached the element; the path: %r" % path)


def test_the_console_is_usable_by_keyboard_alone(page):
    page.wait("document.querySelectorAll('#fleet-rows tr').length === 2", 15)
    path = tab_to(page, "e.parentElement && e.parentElement.dataset.key === 'ready'")
    assert ["INPUT", "fleet-filter"] in path
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    ready = "[...document.querySelectorAll('#fleet-rows tr')].map(tr => +tr.cells[4].innerText)"
    page.key("Enter")
    assert page.evaluate("document.querySelector('th[data-key=ready]').getAttribute('aria-sort')") == "ascending"
    assert page.evaluate(ready) == sorted(page.evaluate(ready))
    page.key("Enter")
    assert page.evaluate("document.querySelector('th[data-key=ready]').getAttribute('aria-sort')") == "descending"
    assert page.evaluate(ready) == sorted(page.evaluate(ready), reverse=True)
    tab_to(page, "e.tagName === 'A' && e.textContent === 'sim-2'")
    page.key("Enter")
    page.wait("location.hash === '#/cabinet/sim-2' && !document.getElementById('cabinet').hidden", 5)
    page.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 10)
    tab_to(page, "e.dataset.cmd === 'rebirth'")
    page.key("Enter")
    page.wait("document.querySelector('#acks li.refused')", 5, "the action's answer")
    assert "no key held" in page.evaluate("document.querySelector('#acks li').innerText")


@pytest.mark.parametrize("name,width,height,scale,mobile", [
    ("phone", 360, 740, 3, True),  # a phone's screen in CSS pixels
    ("zoom200", 640, 450, 2, False),  # a 1280 x 900 window at 200 % zoom
])
def test_no_horizontal_overflow_on_a_phone_or_at_200_percent_zoom(page, name, width, height, scale, mobile):
    page.viewport(width, height, scale, mobile)
    page.wait("document.querySelectorAll('#fleet-rows tr').length === 2", 15)
    assert page.evaluate("window.innerWidth") == width
    assert no_horizontal_overflow(page), page.evaluate("document.documentElement.scrollWidth")
    # Each cabinet is a card of labelled values, every value inside the screen.
    assert page.evaluate("[...document.querySelectorAll('#fleet-rows td')].every(td => "
                         "td.getBoundingClientRect().right <= window.innerWidth + 0.5)")
    shot(page, "%s-fleet.png" % name)
    page.evaluate("location.hash = '#/cabinet/sim-1'")
    page.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 10)
    assert no_horizontal_overflow(page), page.evaluate("document.documentElement.scrollWidth")
    assert page.evaluate("[...document.querySelectorAll('#slots li, #cabinet button, #cabinet input')]"
                         ".every(e => e.getBoundingClientRect().right <= window.innerWidth + 0.5)")
    # Text stays at the reader's size (no shrinking to fit): 16 CSS px body text.
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    shot(page, "%s-cabinet.png" % name)


# == what the page loads =========================================================================

def test_the_page_requests_nothing_off_localhost(page, sim):
    page.wait("document.querySelectorAll('#fleet-rows tr').length === 2", 15)
    page.evaluate("location.hash = '#/cabinet/sim-1'")
    page.wait("document.querySelectorAll('#slots li').length === %d" % SLOTS, 10)
    urls = page.requested_urls()
    assert any(u.startswith("ws://127.0.0.1:%d" % sim["ws_port"]) for u in urls), urls
    assert any(u.endswith("/mqtt.min.js") for u in urls), urls
    hosts = {urllib.parse.urlsplit(u).hostname for u in urls if not u.startswith("data:")}
    assert hosts == {"127.0.0.1"}, urls
    # And nothing in the page's own files names another host: only the SVG namespace, and the
    # default broker URL built from the page's own host.
    for name in ("index.html", "console.js", "console.css"):
        text = (pathlib.Path(web.ASSETS) / name).read_text()
        assert set(re.findall(r"[a-z]+://[^\s\"')]*", text)) <= {"http://www.w3.org/2000/svg", "ws://"}, name


def test_the_bundle_is_the_pinned_mqtt_js():
    pkg = json.loads((ROOT / "tools" / "web" / "package.json").read_text())
    lock = json.loads((ROOT / "tools" / "web" / "package-lock.json").read_text())
    pinned = pkg["dependencies"]["mqtt"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)  # exact, no range
    entry = lock["packages"]["node_modules/mqtt"]
    assert entry["version"] == pinned and entry["integrity"].startswith("sha512-")
    bundle = (pathlib.Path(web.ASSETS) / "mqtt.min.js").read_text()
    assert 'version:"%s"' % pinned in bundle
    html = (pathlib.Path(web.ASSETS) / "index.html").read_text()
    assert re.findall(r'<script src="([^"]+)"', html) == ["mqtt.min.js", "console.js"]


# == tukar web ===================================================================================

def test_tukar_web_serves_the_page_and_prints_its_url():
    proc = subprocess.Popen([sys.executable, "-m", "tukar_tools.cli", "web", "--port", "0",
                             "--broker", "10.1.2.3:1883", "--ws-port", "9009", "--prefix", "fleet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"console on (http://127\.0\.0\.1:(\d+)/\?(\S+))", line)
        assert m, line
        assert urllib.parse.parse_qs(m.group(3)) == {"ws": ["ws://10.1.2.3:9009/"], "prefix": ["fleet"]}
        base = "http://127.0.0.1:%s/" % m.group(2)
        with urllib.request.urlopen(base + "?" + m.group(3), timeout=10) as r:
            assert "tukar console" in r.read().decode()
            assert r.headers["X-Frame-Options"] == "DENY"
        with urllib.request.urlopen(base + "console.js", timeout=10) as r:
            assert b"crypto.subtle" in r.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "../web.py", timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_broker_argument_names_the_websocket_url():
    assert web.ws_url("broker.example:1883", 9001) == "ws://broker.example:9001/"
    assert web.ws_url("wss://broker.example/mqtt", 9001) == "wss://broker.example/mqtt"
    assert web.ws_url("[::1]:1883", 8083) == "ws://[::1]:8083/"
    with pytest.raises(ValueError):
        web.ws_url(":1883")


def test_a_broker_that_wants_a_password_gets_the_one_typed_in_the_page(browser, tmp_path):
    require("mosquitto")
    from tukar_tools import broker as loopback
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "passwd"), "operator", "s3cret pw"],
                   check=True)
    b = loopback.Mosquitto(workdir=tmp_path, ws_port=loopback.free_port(), extra=(
        "allow_anonymous false\npassword_file %s\n" % (tmp_path / "passwd"))).start()
    server = web.serve()
    try:
        url = web.console_url("127.0.0.1", server.server_port, "ws://127.0.0.1:%d/" % b.ws_port)
        browser.reset_viewport()
        browser.goto(url + "&load=%d" % next(_loads))
        status = "document.getElementById('conn-status').textContent"
        assert "not authorised" in browser.wait("(s => s.startsWith('the broker refused') && s)(%s)"
                                               % status, 15, "the refusal")
        browser.evaluate("document.getElementById('conn-user').value = 'operator';"
                         "document.getElementById('conn-password').value = 's3cret pw';"
                         "document.querySelector('#conn button').click()")
        browser.wait("%s.startsWith('connected')" % status, 15, "the page to connect")
        assert not any("s3cret" in u for u in browser.requested_urls())
    finally:
        server.shutdown()
        b.stop()


def test_amqtt_serves_the_console_over_websockets_too(browser, tmp_path):
    """amqtt's ws listener (the broker tukar sim falls back to) carries the page's MQTT as well."""
    from tukar_tools import broker as loopback
    b = loopback.AmqttProcess(workdir=tmp_path, ws_port=loopback.free_port()).start()
    server = web.serve()
    try:
        url = web.console_url("127.0.0.1", server.server_port, "ws://127.0.0.1:%d/" % b.ws_port)
        open_console(browser, url)
        import paho.mqtt.client as paho
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        c.publish("tukar/amq-1/status", "online", qos=1, retain=True).wait_for_publish(5)
        c.publish("tukar/amq-1/state", json.dumps({"mode": "maintenance", "ready": 4, "empty": 1,
                  "charging": 2, "faulted": 1, "session": None, "temp_c": 30, "alarms": ["smoke"],
                  "seq": 1}), qos=1, retain=True).wait_for_publish(5)
        browser.wait("(%s)[0]?.[2] === 'maintenance'" % ROWS, 10, "amq-1's state")
        assert browser.evaluate(ROWS)[0][:8] == ["amq-1", "online", "maintenance", "smoke", "4", "2", "1", "1"]
        c.loop_stop()
        c.disconnect()
    finally:
        server.shutdown()
        b.stop()



def test_the_benchmark_measures_the_page_under_a_publishing_fleet():
    """A small run of bench_web (docs/web.md has the 500-cabinet figures): every cabinet shown,
    frames and messages counted in both views. A check that it measures, not a timing."""
    need_chromium()
    from tukar_tools import bench_web
    r = bench_web.measure(cabinets=20, rate=100, seconds=2)
    assert r["retained_at_start"] == 20 * 15 and r["all_shown_s"] > 0
    for view in ("fleet_view", "cabinet_view"):
        v = r[view]
        assert v["frames"] > 10 and v["messages_per_s"] > 20, (view, v)
        assert v["frame_ms_p50"] > 0 and v["render_ms_max"] >= v["render_ms_p50"] > 0, (view, v)
