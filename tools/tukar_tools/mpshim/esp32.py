# `esp32` for the firmware in the MicroPython unix port: the OTA partitions. On the ESP32 the module
# is C and takes no heap; here the module holds one function and `esp32.Partition` is looked up
# through it, so the partition model (esp32_partition.py, frozen) is imported only when an update
# runs or reports: a cabinet that is not updating keeps none of it in its heap.
#
# The simulator cannot swap frozen code: whatever the partition, the same firmware runs, as the
# version the booted image's header names. The host's bootloader model (tools/tukar_tools/shim/
# esp32.py, `boot`, run before every start of the process) reads that header and passes the version
# in TUKAR_FW_VERSION; it becomes tukar.FW_VERSION here, imported at boot before the application
# is built, as the CPython runtime sets it in its own process.


def __getattr__(name):
    if name != "Partition":
        raise AttributeError(name)
    from esp32_partition import Partition
    return Partition


def _image_version():
    import os

    import tukar
    v = os.getenv("TUKAR_FW_VERSION")
    if v:
        tukar.FW_VERSION = v


_image_version()
del _image_version
