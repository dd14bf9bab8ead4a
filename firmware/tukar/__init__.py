# tukar: firmware for a battery-swap cabinet controller (ESP32, MicroPython).
FW_VERSION = "0.1.0"


def absorb(cls, mod, name):
    """Make the part class `name` of module `mod` (a concern of cls in a module of its own) part
    of cls itself, and let the part go: its methods go into cls's dictionary (cls's own and the
    parts absorbed before win, as the bases' order did), and the name leaves the module. A class
    is 112 bytes of heap on MicroPython, and a method found in cls's own dictionary costs no walk
    through the bases on every call."""
    own = cls.__dict__
    for k, v in getattr(mod, name).__dict__.items():
        if k[:2] != "__" and k not in own:
            setattr(cls, k, v)
    delattr(mod, name)
