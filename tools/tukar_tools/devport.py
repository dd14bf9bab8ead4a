"""The serial port of a cabinet controller, and the mpremote steps `tukar deploy` and `tukar
provision` share.

The running firmware feeds a hardware watchdog that nothing stops, so a console session longer
than its few seconds would be cut by a reset. Every device command therefore starts with one short
mpremote call that creates the maintenance flag file and resets: the board boots with its outputs
safe, no watchdog, and waits in the REPL (tukar.device). A second call does the work, removes the
flag and resets into the cabinet firmware."""
import os
import shlex
import subprocess
import sys
import time

ESCAPE_FILE = "maintenance"  # tukar.device.ESCAPE_FILE
BOOT_WAIT_S = 3  # the board's reset and boot into the REPL, after the first call


class DeviceError(Exception):
    pass


def serial_ports():
    from serial.tools import list_ports
    return sorted(p.device for p in list_ports.comports())


def check_port(port):
    """Raise DeviceError unless `port` is a serial device here (or an rfc2217://, socket:// URL)."""
    if "://" in port or os.path.exists(port):
        return
    ports = serial_ports()
    if port in ports:  # Windows COM ports are not paths
        return
    raise DeviceError("port %s does not exist (serial ports here: %s)"
                      % (port, ", ".join(ports) if ports else "none; is the board plugged in?"))


def mpremote(port, *chain):
    return [sys.executable, "-m", "mpremote", "connect", port] + list(chain)


def enter_maintenance(port):
    """The first call: flag file, reset. The board comes back in the REPL without a watchdog."""
    return mpremote(port, "touch", ":" + ESCAPE_FILE, "+", "reset")


def leave_maintenance():
    """The end of the second call's chain: flag removed, reset into the cabinet firmware."""
    return ["+", "rm", ":" + ESCAPE_FILE, "+", "reset"]


def run(commands, dry_run=False, wait_s=0, out=None):
    """Print each command; run it unless dry_run, waiting `wait_s` between them (a reboot).
    Returns the first non-zero exit status, or 0."""
    out = out or sys.stdout
    for i, cmd in enumerate(commands):
        if i and wait_s:
            print("# wait %d s for the board to boot into maintenance" % wait_s, file=out)
        print(shlex.join(cmd), file=out)
        if dry_run:
            continue
        if i and wait_s:
            time.sleep(wait_s)
        out.flush()
        rc = subprocess.run(cmd).returncode  # output streams to the terminal as it comes
        if rc:
            print("error: %s exited with %d" % (cmd[2] if len(cmd) > 2 else cmd[0], rc), file=sys.stderr)
            return rc
    return 0


# Run on the board in maintenance: is `tukar` frozen into its image, and how big is its heap?
PROBE = ("import sys, gc, json\n"
         "p = sys.path[:]\nsys.path[:] = ['.frozen']\n"
         "try:\n import tukar\n f = True\nexcept ImportError:\n f = False\n"
         "sys.path[:] = p\ngc.collect()\n"
         "print('tukar-image ' + json.dumps({'frozen': f, 'heap': gc.mem_free() + gc.mem_alloc()}))\n")


def probe(port):
    """What the running image offers: {"frozen": bool, "heap": bytes}. Raises DeviceError."""
    import json
    r = subprocess.run(mpremote(port, "exec", PROBE), capture_output=True, text=True)
    for line in (r.stdout or "").splitlines():
        if line.startswith("tukar-image "):
            try:
                return json.loads(line[len("tukar-image "):])
            except ValueError:
                break
    raise DeviceError("could not read the board's image (mpremote exited %d: %s)"
                      % (r.returncode, (r.stderr or r.stdout or "").strip()[-200:]))
