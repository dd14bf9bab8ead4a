"""`tukar web`: serve the operator's web console, a static page (tools/tukar_tools/console/) that
connects straight to the broker over MQTT-over-WebSockets and speaks only the MQTT contract. This
server keeps no state and sees no MQTT: it hands out the same files to everyone, and the page is
told where the broker is by its own address (`?ws=ws://HOST:PORT/&prefix=tukar`)."""
import functools
import http.server
import os
import sys
import threading
import urllib.parse

from tukar_tools import mqttc

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console")
DEFAULT_WS_PORT = 9001  # Mosquitto's customary WebSockets port
DEFAULT_PORT = 8080


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The console's files only, never cached stale, never framed by another site."""

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def list_directory(self, path):
        self.send_error(404)

    def log_message(self, *args):
        pass  # the operator's terminal shows the URL, not every request


def serve(host="127.0.0.1", port=0):
    """Start serving the console on a thread; returns the server (`server_port`, `shutdown()`)."""
    handler = functools.partial(_Handler, directory=ASSETS)
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tukar-web", daemon=True).start()
    return server


def console_url(web_host, web_port, ws_url, prefix=mqttc.DEFAULT_PREFIX):
    """The page's address, carrying the broker's WebSocket URL and the topic prefix."""
    q = urllib.parse.urlencode({"ws": ws_url, "prefix": prefix})
    return "http://%s:%d/?%s" % (web_host, web_port, q)


def ws_url(broker, ws_port=DEFAULT_WS_PORT):
    """The broker's WebSocket URL: `--broker` as ws:// or wss:// is used as it is; HOST[:PORT]
    names the host (its TCP port is not the WebSocket one) and `ws_port` the port."""
    if broker.startswith(("ws://", "wss://")):
        return broker
    host, _ = mqttc.parse_broker(broker)
    return "ws://%s:%d/" % ("[%s]" % host if ":" in host else host, ws_port)


def add_arguments(p):
    mqttc.add_broker_argument(p)
    p.add_argument("--ws-port", type=int, default=DEFAULT_WS_PORT,
                   help="the broker's MQTT-over-WebSockets port (default %d); or give --broker as "
                        "ws://HOST:PORT/PATH" % DEFAULT_WS_PORT)
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="HTTP port the console is served on (default %d, 0: any free port)"
                        % DEFAULT_PORT)
    p.add_argument("--listen", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1; the page's key signing needs "
                        "localhost or HTTPS in front)")
    p.add_argument("--prefix", default=mqttc.DEFAULT_PREFIX, help="topic prefix (default tukar)")


def run(args):
    try:
        ws = ws_url(args.broker, args.ws_port)
    except ValueError as e:
        print("tukar web: %s" % e, file=sys.stderr)
        return 2
    try:
        server = serve(args.listen, args.port)
    except OSError as e:
        print("tukar web: cannot serve on %s:%d: %s" % (args.listen, args.port, e), file=sys.stderr)
        return 2
    shown = "127.0.0.1" if args.listen in ("0.0.0.0", "") else args.listen
    print("tukar web: console on %s (broker %s); Ctrl-C stops"
          % (console_url(shown, server.server_port, ws, args.prefix), ws), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
