"""Transports: the device code that does I/O (storage, the streaming runner, MQTT).

MicroPython-safe like the core, but these modules touch files and sockets;
the core beside them never does.
"""
