"""`tukar provision`: a cabinet's identity, network and secrets onto its board. Writes config.json
(cabinet id, slots from the board file, broker, Wi-Fi network, time, watchdog, tick and telemetry)
and secrets.json (Wi-Fi and broker passwords, the cabinet's HMAC key) plus ca.pem for a TLS broker,
through mpremote. Without --key a new 32-byte key is generated and printed once: store it in the
back end, nothing here keeps it.

    tukar provision --port /dev/ttyUSB0 --board tukar-12-wroom --id cab-0042 \\
        --broker mqtts://mqtt.example.id:8883 --ca ca.pem --user cab-0042 --password ... \\
        --wifi SPBKLU-0042 --wifi-password ...
"""
import json
import os
import re
import secrets
import sys
import tempfile

from tukar_tools import devport
from tukar_tools.deploy import DeployError, board_file

ID_RE = re.compile(r"[a-z0-9-]{1,32}")
BROKER_RE = re.compile(r"(mqtts?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::([0-9]{1,5}))?/?")
KEY_BYTES = 32
MIN_KEY_BYTES = 16


class ProvisionError(Exception):
    pass


def parse_broker(url):
    """mqtt://host[:port] or mqtts://host[:port] -> (host, port, tls)."""
    m = BROKER_RE.fullmatch(url or "")
    if not m:
        raise ProvisionError("broker %r: mqtt://host:port or mqtts://host:port required" % url)
    tls = m.group(1) == "mqtts"
    port = int(m.group(3)) if m.group(3) else (8883 if tls else 1883)
    if not 1 <= port <= 65535:
        raise ProvisionError("broker %r: port %d outside 1..65535" % (url, port))
    return m.group(2), port, tls


def check_id(cid):
    if not ID_RE.fullmatch(cid or ""):
        raise ProvisionError("cabinet id %r: 1 to 32 of a-z, 0-9 and '-' required" % cid)
    return cid


def parse_key(text):
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ProvisionError("--key: hex digits required")
    if len(key) < MIN_KEY_BYTES:
        raise ProvisionError("--key: %d bytes; at least %d required (32 recommended)" % (len(key), MIN_KEY_BYTES))
    return key


def config(args, slots, host, port, tls):
    mqtt = {"host": host, "port": port, "ssl": tls, "prefix": args.prefix, "keepalive_s": 30,
            "io_timeout_s": 10}
    if args.user:
        mqtt["user"] = args.user
    return {"id": args.id, "board": args.board, "slots": slots, "wifi": {"ssid": args.wifi},
            "mqtt": mqtt, "ntp": {"host": args.ntp, "resync_s": 21600}, "wdt_ms": 5000,
            "core": {"tick_ms": args.tick_ms, "telemetry_period_s": args.telemetry_period_s}}


def secrets_doc(args, key):
    return {"wifi_password": args.wifi_password or "", "mqtt_password": args.password or "",
            "key": key.hex()}


def commands(port, staged, with_ca):
    chain = ["cp", os.path.join(staged, "config.json"), ":config.json",
             "+", "cp", os.path.join(staged, "secrets.json"), ":secrets.json"]
    if with_ca:
        chain += ["+", "cp", os.path.join(staged, "ca.pem"), ":ca.pem"]
    return [devport.enter_maintenance(port), devport.mpremote(port, *chain) + devport.leave_maintenance()]


def add_arguments(p):
    p.add_argument("--port", required=True, help="serial port of the board")
    p.add_argument("--board", required=True, help="board file name (gives the slot count)")
    p.add_argument("--id", required=True, help="cabinet id, [a-z0-9-]{1,32}")
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--wifi", required=True, metavar="SSID")
    p.add_argument("--wifi-password", default="")
    p.add_argument("--user", help="broker user name")
    p.add_argument("--password", help="broker password")
    p.add_argument("--ca", metavar="FILE", help="the broker's CA certificate (PEM); required for mqtts://")
    p.add_argument("--key", metavar="HEX", help="the cabinet's HMAC key; default: a new 32-byte key")
    p.add_argument("--prefix", default="tukar", help="topic prefix (default tukar)")
    p.add_argument("--ntp", default="pool.ntp.org", help="NTP server (default pool.ntp.org)")
    p.add_argument("--tick-ms", type=int, default=50)
    p.add_argument("--telemetry-period-s", type=int, default=60)
    p.add_argument("--dry-run", action="store_true", help="print the config and the commands, write nothing")


def run(args):
    try:
        check_id(args.id)
        host, port, tls = parse_broker(args.broker)
        if tls and not args.ca:
            raise ProvisionError("an mqtts:// broker needs --ca FILE: the cabinet pins the broker's CA")
        if args.ca and not tls:
            raise ProvisionError("--ca given for a plain mqtt:// broker; use mqtts://")
        ca = None
        if args.ca:
            try:
                with open(args.ca, "rb") as f:
                    ca = f.read()
            except OSError as e:
                raise ProvisionError("--ca %s: cannot read (%s)" % (args.ca, e.strerror))
            if b"-----BEGIN CERTIFICATE-----" not in ca:
                raise ProvisionError("--ca %s: not a PEM certificate" % args.ca)
        with open(board_file(args.board)) as f:
            slots = json.load(f)["slot_count"]
        key = parse_key(args.key) if args.key else None
        if not 10 <= args.tick_ms <= 100:
            raise ProvisionError("--tick-ms %d: 10..100 required (safety rule 2)" % args.tick_ms)
        if not 10 <= args.telemetry_period_s <= 3600:
            raise ProvisionError("--telemetry-period-s %d: 10..3600 required" % args.telemetry_period_s)
        if not args.dry_run:
            devport.check_port(args.port)
    except (ProvisionError, DeployError, devport.DeviceError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    cfg = config(args, slots, host, port, tls)
    if args.dry_run:
        print("config.json: " + json.dumps(cfg))
        print("secrets.json: wifi_password, mqtt_password, key (%s)"
              % ("given" if key else "a new 32-byte key would be generated"))
        return devport.run(commands(args.port, "STAGED", ca is not None), dry_run=True,
                           wait_s=devport.BOOT_WAIT_S)
    generated = key is None
    if generated:
        key = secrets.token_bytes(KEY_BYTES)
    with tempfile.TemporaryDirectory(prefix="tukar-provision-") as staged:
        files = {"config.json": json.dumps(cfg).encode(),
                 "secrets.json": json.dumps(secrets_doc(args, key)).encode()}
        if ca is not None:
            files["ca.pem"] = ca
        for name, data in files.items():
            fd = os.open(os.path.join(staged, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        rc = devport.run(commands(args.port, staged, ca is not None), wait_s=devport.BOOT_WAIT_S)
    if rc == 0 and generated:
        print("\nHMAC key of cabinet %s (shown once, kept nowhere here: store it in the back end now):\n%s"
              % (args.id, key.hex()))
    elif rc and generated:
        print("provisioning failed; the generated key was not installed and is discarded", file=sys.stderr)
    return rc
