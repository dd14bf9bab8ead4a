# `esp32` for the firmware in the MicroPython unix port: the OTA partitions. On the ESP32 the module
# is C and takes no heap. The firmware imports it only when an update runs or reports (tukar.ota),
# and here the module holds one function through which `esp32.Partition` is looked up, so the
# partition model (esp32_partition.py, frozen) is imported only then too: a cabinet that is not
# updating keeps none of it in its heap. The version the booted image names is set by the stand-in
# for `machine` (machine.py), which every boot imports first.


def __getattr__(name):
    if name != "Partition":
        raise AttributeError(name)
    from esp32_partition import Partition
    return Partition

