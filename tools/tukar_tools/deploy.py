"""`tukar deploy`: the firmware onto a board running stock MicroPython. Every firmware/tukar/*.py
is compiled to .mpy with mpy-cross into a build directory laid out like the device's file system
(main.py and boot.py stay source), with the board's board.json and the battery profiles; then one
mpremote call copies what changed (mpremote skips a file whose SHA-256 matches), removes modules
and profiles the bundle no longer has, and resets.

    tukar deploy --port /dev/ttyUSB0 --board tukar-12-wroom

Before copying, the board is asked what its image offers. The .mpy firmware is loaded into the heap
(about 169 KB measured in the 32-bit unix port), which a stock ESP32 without PSRAM does not have
(56 KB, growing to about 112 KB): there deploy refuses and names the frozen build (`make image`).
Onto an image with `tukar` frozen in, deploy copies only main.py, boot.py, board.json and the
profiles, and removes any tukar/ package left on the file system (it would shadow the frozen one)."""
import json
import pathlib
import shutil
import subprocess
import sys

from tukar_tools import devport

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BUILD = ROOT / "build" / "deploy"
MPY_HEAP_NEEDED = 200 * 1024  # the .mpy firmware's heap with room to run (make bench: 169 KB to import)


class DeployError(Exception):
    pass


def boards(root=ROOT):
    return sorted(p.parent.name for p in (root / "boards").glob("*/board.json"))


def board_file(name, root=ROOT):
    """boards/<name>/board.json, or DeployError listing the boards there are."""
    path = root / "boards" / name / "board.json"
    if not path.is_file():
        raise DeployError("unknown board %r (boards: %s)" % (name, ", ".join(boards(root)) or "none"))
    return path


def compile_module(src, dst):
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(dst), str(src)],
                       capture_output=True, text=True)
    if r.returncode:
        raise DeployError("mpy-cross %s: %s" % (src, (r.stderr or r.stdout).strip()))


def build(board, out, root=ROOT):
    """Lay out the device's files under `out`; returns {device path: bytes} of what was built."""
    bf = board_file(board, root)
    fw = root / "firmware"
    if out.exists():
        shutil.rmtree(out)
    (out / "tukar").mkdir(parents=True)
    (out / "profiles").mkdir()
    sizes = {}
    for src in sorted((fw / "tukar").glob("*.py")):
        dst = out / "tukar" / (src.stem + ".mpy")
        compile_module(src, dst)
        sizes["tukar/" + dst.name] = dst.stat().st_size
    for name in ("main.py", "boot.py"):
        shutil.copyfile(fw / name, out / name)
        sizes[name] = (out / name).stat().st_size
    shutil.copyfile(bf, out / "board.json")
    sizes["board.json"] = (out / "board.json").stat().st_size
    for src in sorted((fw / "profiles").glob("*.json")):  # the .dbc files stay on the host
        shutil.copyfile(src, out / "profiles" / src.name)
        sizes["profiles/" + src.name] = src.stat().st_size
    return sizes


def prune_script(sizes):
    """Device-side code that deletes files in tukar/ and profiles/ the bundle does not have
    (a stale core.py would even shadow the new core.mpy), and a tukar/ left with nothing to keep
    (onto a frozen image, any file-system copy would shadow the frozen package)."""
    keep = json.dumps(sorted(p for p in sizes if "/" in p))
    return ('import os\nkeep=%s\nfor d in ("tukar","profiles"):\n'
            ' try:\n  names=os.listdir(d)\n except OSError:\n  continue\n'
            ' for f in names:\n'
            '  if d+"/"+f not in keep:\n   os.remove(d+"/"+f); print("removed",d+"/"+f)\n'
            ' if not [k for k in keep if k.startswith(d+"/")]:\n'
            '  os.rmdir(d); print("removed",d)\n' % keep)


def commands(port, out, sizes, frozen=False):
    """The copy (the second mpremote call). Onto a frozen image: no tukar/ package, and any left
    on the file system removed, so the frozen one is what runs."""
    chain = ["cp", "-r"] + ([] if frozen else [str(out / "tukar")]) + [str(out / "profiles"), ":"]
    for name in ("main.py", "boot.py", "board.json"):
        chain += ["+", "cp", str(out / name), ":" + name]
    if frozen:
        sizes = {k: v for k, v in sizes.items() if not k.startswith("tukar/")}
    chain += ["+", "exec", prune_script(sizes)]
    return devport.mpremote(port, *chain) + devport.leave_maintenance()


def refusal(image, board):
    """Why the .mpy route cannot run on this image, or None."""
    if image.get("frozen") or image.get("heap", 0) >= MPY_HEAP_NEEDED:
        return None
    return ("this board's MicroPython image has no frozen tukar and a %d KB heap: the .mpy firmware "
            "needs about 169 KB of heap to import, which an ESP32 without PSRAM does not have. Build "
            "the frozen image with `make image BOARD=%s` (ESP-IDF), flash it with `make flash`, then "
            "deploy again: it copies only main.py, board.json and the profiles."
            % (image.get("heap", 0) // 1024, board))


def source_bytes(root=ROOT):
    return sum(p.stat().st_size for p in (root / "firmware" / "tukar").glob("*.py"))


def add_arguments(p):
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--board", required=True, help="board name: " + ", ".join(boards()))
    p.add_argument("--build-dir", type=pathlib.Path, default=None,
                   help="where the bundle is laid out (default build/deploy/<board>)")
    p.add_argument("--dry-run", action="store_true", help="build and print the mpremote commands, copy nothing")
    p.add_argument("--verbose", "-v", action="store_true", help="the size of every file")


def report(sizes, verbose, out=None):
    out = out or sys.stdout
    mpy = {k: v for k, v in sizes.items() if k.endswith(".mpy")}
    if verbose:
        for k in sorted(sizes):
            print("%7d  %s" % (sizes[k], k), file=out)
    print("bundle: %d modules, %d bytes of .mpy (from %d bytes of source); %d bytes in all"
          % (len(mpy), sum(mpy.values()), source_bytes(), sum(sizes.values())), file=out)


def run(args):
    out = args.build_dir or DEFAULT_BUILD / args.board
    try:
        board_file(args.board)
        if not args.dry_run:
            devport.check_port(args.port)
        sizes = build(args.board, out)
    except (DeployError, devport.DeviceError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    report(sizes, args.verbose)
    enter = devport.enter_maintenance(args.port)
    if args.dry_run:
        return devport.run([enter, devport.mpremote(args.port, "exec", "<probe: frozen tukar? heap?>"),
                            commands(args.port, out, sizes)], True, devport.BOOT_WAIT_S)
    rc = devport.run([enter])
    if rc:
        return rc
    devport.time.sleep(devport.BOOT_WAIT_S)  # the board resets into maintenance
    try:
        image = devport.probe(args.port)
    except devport.DeviceError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    why = refusal(image, args.board)
    if why is not None:
        print("error: %s" % why, file=sys.stderr)
        devport.run([devport.mpremote(args.port, *devport.leave_maintenance()[1:])])
        return 2
    if image.get("frozen"):
        print("the image has tukar frozen in: copying the board file, profiles and main.py only")
    return devport.run([commands(args.port, out, sizes, frozen=bool(image.get("frozen")))])
