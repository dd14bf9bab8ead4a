# Host shim of MicroPython's umqtt package: `from umqtt.simple import MQTTClient` on CPython.
