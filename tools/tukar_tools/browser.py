"""Headless Chromium driven over the DevTools protocol (CDP) with the `websockets` package: the
web console's tests and its benchmark open the real page in a real browser with it. Debian's
`chromium` only; nothing is downloaded."""
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEYS = {"Tab": 9, "Enter": 13, "Escape": 27, "Space": 32, "ArrowDown": 40, "ArrowUp": 38}


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page. `events` keeps every CDP event the page sent (Network
    requests, console messages, exceptions) as (method, params)."""

    def __init__(self, width=1280, height=900, path=CHROMIUM, timeout=30.0):
        from websockets.sync.client import connect

        if not os.path.exists(path):
            raise BrowserError("Chromium is not installed at %s (Debian: apt-get install chromium)" % path)
        self.dir = tempfile.mkdtemp(prefix="tukar-chromium-")
        self.proc = subprocess.Popen(
            [path, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--user-data-dir=%s" % self.dir, "--no-first-run",
             "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-default-apps",
             "--disable-extensions", "--window-size=%d,%d" % (width, height), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        end = time.monotonic() + timeout
        while port is None and time.monotonic() < end:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        if port is None:
            self.close()
            raise BrowserError("Chromium did not open its DevTools port")
        threading.Thread(target=self._drain, daemon=True).start()
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=timeout) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        self.ids = itertools.count(1)
        self.replies = {}
        self.cond = threading.Condition()
        self.events = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        for domain in ("Page", "Runtime", "Network"):
            self.call(domain + ".enable")

    def _drain(self):
        for _ in self.proc.stderr:
            pass

    def _read(self):
        try:
            for text in self.ws:
                msg = json.loads(text)
                if "id" in msg:
                    with self.cond:
                        self.replies[msg["id"]] = msg
                        self.cond.notify_all()
                else:
                    self.events.append((msg.get("method"), msg.get("params", {})))
        except Exception:  # the browser went away; callers time out with a clear message
            pass

    def call(self, method, timeout=30.0, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        end = time.monotonic() + timeout
        with self.cond:
            while i not in self.replies:
                left = end - time.monotonic()
                if left <= 0:
                    raise BrowserError("no reply to %s in %.0f s" % (method, timeout))
                self.cond.wait(left)
            msg = self.replies.pop(i)
        if "error" in msg:
            raise BrowserError("%s: %s" % (method, msg["error"].get("message")))
        return msg.get("result", {})

    def evaluate(self, expression, timeout=30.0):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError("JavaScript: %s" % (d.get("exception", {}).get("description")
                                                   or d.get("text")))
        return r["result"].get("value")

    def wait(self, expression, timeout=15.0, what=None):
        """Poll a JavaScript expression until it is truthy; its value (true for an element)."""
        end = time.monotonic() + timeout
        value = None
        probe = "(() => { const v = (%s); return v instanceof Node ? true : v; })()" % expression
        while time.monotonic() < end:
            value = self.evaluate(probe)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError("timed out after %.0f s waiting for %s (last value %r)"
                             % (timeout, what or expression, value))

    def goto(self, url, timeout=30.0):
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'",
                  timeout, "the page to load")

    def viewport(self, width, height, scale=1.0, mobile=False):
        """The page's layout viewport in CSS pixels; scale 2 with half the width is 200 % zoom."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=scale, mobile=mobile)

    def reset_viewport(self):
        self.call("Emulation.clearDeviceMetricsOverride")

    def key(self, name, shift=False):
        """A real key press, as the keyboard sends it (focus moves, buttons and links fire)."""
        code = KEYS[name]
        key = " " if name == "Space" else name
        common = {"key": key, "code": name, "windowsVirtualKeyCode": code,
                  "nativeVirtualKeyCode": code, "modifiers": 8 if shift else 0}
        text = {"Enter": "\r", "Space": " "}.get(name)
        self.call("Input.dispatchKeyEvent", type="keyDown" if text else "rawKeyDown",
                  **dict(common, **({"text": text} if text else {})))
        self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    def type(self, text):
        self.call("Input.insertText", text=text)

    def screenshot(self, path, full_page=True):
        params = {"format": "png", "captureBeyondViewport": full_page}
        data = self.call("Page.captureScreenshot", **params)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def requested_urls(self):
        """Every URL the page asked for: documents, scripts, styles, images, WebSockets."""
        out = []
        for method, p in list(self.events):
            if method == "Network.requestWillBeSent":
                out.append(p["request"]["url"])
            elif method == "Network.webSocketCreated":
                out.append(p["url"])
        return out

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
