"""`tukar ota --cabinet C --image firmware.bin --version V`: update a cabinet's firmware over the
air (docs/ota.md). Serves the image over HTTP from this host (or names --url where it already is),
sends the signed `ota` command (url, size, sha256, version, board, chip), draws a progress bar
from the cabinet's OtaProgress events and waits for the new image to prove itself (OtaApplied).
Exit 0 when applied; 1 with the cabinet's reason when it refuses, fails or rolls back; 2 when the
broker, the image or the cabinet cannot be reached in time."""
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import uuid

from tukar_tools import mqttc
from tukar_tools.cmdline import SIM_KEY_HEX, cabinet_skew, send
from tukar_tools.sign import KeyFormatError, command, parse_key

CHIPS = {"tukar-12-wroom": "esp32", "tukar-24-s3": "esp32s3"}  # the boards' files say the same
ENDS = ("OtaApplied", "OtaFailed", "OtaRolledBack")


class ImageServer:
    """One file over HTTP/1.0, with Range requests (a cabinet resumes a download where it broke).
    `drop_after`: the first response is cut after that many bytes (tests: a dropped connection);
    `no_range`: Range is ignored, every response is the whole file (tests: a restart)."""

    def __init__(self, path, host="0.0.0.0", port=0, drop_after=None, no_range=False):
        with open(path, "rb") as f:
            self.data = f.read()
        self.name = "/" + os.path.basename(path)
        self.requests = []  # (path, range header) as received
        self.drop_after = drop_after
        self.no_range = no_range
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path != server.name:
                    self.send_error(404)
                    return
                start = 0
                if rng and rng.startswith("bytes=") and not server.no_range:
                    try:
                        start = int(rng[6:].split("-")[0])
                    except ValueError:
                        start = 0
                body = server.data[start:]
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (
                        start, len(server.data) - 1, len(server.data)))
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after
                if cut is not None:
                    server.drop_after = None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host):
        return "http://%s:%d%s" % (host, self.port, self.name)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def local_address(broker_host):
    """This host's address as the cabinet sees it: the one its route to the broker leaves from."""
    if broker_host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((broker_host, 1883))
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def manifest(image, version, board, chip, url, force=False):
    """The `ota` command's arguments for an image file."""
    with open(image, "rb") as f:
        data = f.read()
    m = {"url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
         "version": version, "board": board, "chip": chip}
    if force:
        m["force"] = True
    return m


def bar(done, size, width=40):
    n = width * done // size if size else 0
    return "[%s%s] %3d%% %d/%d bytes" % ("#" * n, "." * (width - n), 100 * done // max(size, 1),
                                          done, size)


def follow(client, prefix, cabinet, version, timeout, out=sys.stderr):
    """Events until the update ends: (exit code, the ending event or None)."""
    topic = "%s/%s/event" % (prefix, cabinet)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        m = client.get(left) if left > 0 else None
        if m is None:
            print("\ntukar ota: no end of the update within %.0f s" % timeout, file=out)
            return 2, None
        t, payload, _ = m
        if t != topic:
            continue
        try:
            ev = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(ev, dict) or ev.get("version") != version:
            continue
        kind = ev.get("type")
        if kind == "OtaProgress":
            print("\r" + bar(ev.get("bytes", 0), ev.get("size", 0)), end="", file=out, flush=True)
        elif kind == "OtaStarted":
            print("tukar ota: %s: downloading %s into %s" % (cabinet, version, ev.get("partition")),
                  file=out)
        elif kind == "OtaApplied":
            print("\ntukar ota: %s runs %s (was %s)" % (cabinet, version, ev.get("from")), file=out)
            return 0, ev
        elif kind == "OtaFailed":
            print("\ntukar ota: %s: update failed: %s" % (cabinet, ev.get("reason")), file=out)
            return 1, ev
        elif kind == "OtaRolledBack":
            print("\ntukar ota: %s: %s failed its self-test and was rolled back; it runs %s" % (
                cabinet, version, ev.get("running")), file=out)
            return 1, ev


def add_arguments(p):
    p.add_argument("--cabinet", required=True, help="cabinet id, e.g. sim-1")
    p.add_argument("--image", required=True, help="the firmware image (the whole application image)")
    p.add_argument("--version", required=True, help="the image's version, dotted integers: 0.2.0")
    p.add_argument("--key", default=os.environ.get("TUKAR_KEY"),
                   help="the cabinet's HMAC key in hex (default: $TUKAR_KEY, else the simulator's key)")
    p.add_argument("--board", default="tukar-12-wroom",
                   help="the board the image is built for (default tukar-12-wroom)")
    p.add_argument("--chip", help="the chip the image is built for (default: the board's)")
    p.add_argument("--url", help="where the cabinet downloads the image (default: served from here)")
    p.add_argument("--http-host", help="the address the cabinet reaches this host on (default: "
                                       "the one the route to the broker leaves from)")
    p.add_argument("--http-port", type=int, default=0, help="port to serve the image on (default: any)")
    p.add_argument("--force", action="store_true", help="install even when the version is not newer")
    mqttc.add_broker_argument(p)
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds the whole update may take, the new image's self-test included")
    p.add_argument("--cabinet-clock", action="store_true",
                   help="simulated cabinets only: when refused stale, sign again with the cabinet's clock")


def run(args):
    try:
        key = parse_key(args.key or SIM_KEY_HEX)
        host, port = mqttc.parse_broker(args.broker)
    except (ValueError, KeyFormatError) as e:
        print("tukar ota: %s" % e, file=sys.stderr)
        return 2
    if not args.key:
        print("tukar ota: no --key given, using the simulator's key", file=sys.stderr)
    if not os.path.isfile(args.image):
        print("tukar ota: %s: no such file" % args.image, file=sys.stderr)
        return 2
    chip = args.chip or CHIPS.get(args.board)
    if chip is None:
        print("tukar ota: --chip is required for board %s" % args.board, file=sys.stderr)
        return 2
    server = None
    url = args.url
    if url is None:
        server = ImageServer(args.image, port=args.http_port)
        url = server.url(args.http_host or local_address(host))
        print("tukar ota: serving %s at %s" % (args.image, url), file=sys.stderr)
    body = command("ota", "ota-" + uuid.uuid4().hex[:12],
                   **manifest(args.image, args.version, args.board, chip, url, args.force))
    try:
        client = mqttc.Client(host, port, name="tukar-ota", subscriptions=[
            "%s/%s/ack" % (args.prefix, args.cabinet), "%s/%s/event" % (args.prefix, args.cabinet)])
    except ConnectionError as e:
        print("tukar ota: %s" % e, file=sys.stderr)
        if server is not None:
            server.close()
        return 2
    try:
        ack = send(client, args.prefix, args.cabinet, body, key, 15.0)
        skew = cabinet_skew(ack) if args.cabinet_clock else None
        if skew is not None:
            body = dict(body, ts=body["ts"] - skew)
            ack = send(client, args.prefix, args.cabinet, body, key, 15.0)
        if ack is None:
            print("tukar ota: no ack from %s (is it online, is the key right?)" % args.cabinet,
                  file=sys.stderr)
            return 2
        if not ack.get("ok"):
            print("tukar ota: %s refused: %s: %s" % (args.cabinet, ack.get("error"),
                                                      ack.get("detail")), file=sys.stderr)
            return 1
        code, _ = follow(client, args.prefix, args.cabinet, args.version, args.timeout)
        return code
    finally:
        client.close()
        if server is not None:
            server.close()
