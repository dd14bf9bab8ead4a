# tukar: firmware for a battery-swap cabinet controller (ESP32, MicroPython).
FW_VERSION = "0.1.0"
