"""`tukar flash`: erase an ESP32 and write a MicroPython image with esptool 5, after checking that
the file is an ESP32 image for the chip named (or, without --chip, for the chip the image names).

    tukar flash --port /dev/ttyUSB0 --firmware ESP32_GENERIC-20250415-v1.29.0.bin
"""
import sys

from tukar_tools import devport

# chip -> (chip id in the image's extended header, where the image goes in flash)
CHIPS = {"esp32": (0x0000, 0x1000), "esp32s3": (0x0009, 0x0), "esp32c3": (0x0005, 0x0)}
CHIP_IDS = {0x0000: "esp32", 0x0002: "esp32s2", 0x0005: "esp32c3", 0x0009: "esp32s3",
            0x000C: "esp32c2", 0x000D: "esp32c6", 0x0010: "esp32h2"}
IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = b"\x32\x54\xcd\xab"  # esp_app_desc_t at offset 32 of an application image
DEFAULT_BAUD = 460800


class FlashError(Exception):
    pass


def image_chip(path):
    """The chip an ESP image is built for ("esp32", "esp32s3", ...). Raises FlashError."""
    try:
        with open(path, "rb") as f:
            head = f.read(36)
    except OSError as e:
        raise FlashError("firmware %s: cannot read (%s)" % (path, e.strerror or e))
    if len(head) < 24 or head[0] != IMAGE_MAGIC:
        raise FlashError("firmware %s is not an ESP32 image (first byte %s, an image starts with 0xE9)"
                         % (path, "0x%02X" % head[0] if head else "missing: the file is empty"))
    if head[32:36] == APP_DESC_MAGIC:
        raise FlashError("firmware %s is an application image without the bootloader; flash the "
                         "combined image (firmware.bin from the build, or the .bin from micropython.org)" % path)
    cid = head[12] | head[13] << 8
    name = CHIP_IDS.get(cid)
    if name is None:
        raise FlashError("firmware %s: unknown chip id 0x%04X in the image header" % (path, cid))
    return name


def commands(port, firmware, chip, baud=DEFAULT_BAUD):
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud)]
    return [base + ["erase-flash"],
            base + ["write-flash", "0x%x" % CHIPS[chip][1], firmware]]


def add_arguments(p):
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--firmware", required=True, metavar="BIN", help="MicroPython image (.bin)")
    p.add_argument("--chip", choices=sorted(CHIPS), help="default: the chip the image is built for")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD)
    p.add_argument("--dry-run", action="store_true", help="print the esptool commands, run nothing")


def run(args):
    try:
        found = image_chip(args.firmware)
        chip = args.chip or found
        if found != chip:
            raise FlashError("firmware %s is built for %s, not %s" % (args.firmware, found, chip))
        if chip not in CHIPS:
            raise FlashError("firmware %s is built for %s; tukar supports %s"
                             % (args.firmware, chip, ", ".join(sorted(CHIPS))))
        if not args.dry_run:
            devport.check_port(args.port)
    except (FlashError, devport.DeviceError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    return devport.run(commands(args.port, args.firmware, chip, args.baud), args.dry_run)
