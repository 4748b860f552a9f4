"""trustfleet on a MicroPython board (ESP32): copy to the board as /main.py.

The agent is trustfleet_device.transports.board, frozen into the firmware with the
rest of the package (or copied to /lib): frozen, its code costs no GC heap.
"""

from trustfleet_device.transports.board import main

# UTC build time of this board's image, written here by `trustfleet device provision`.
# Trusted time never goes below it, whatever the RTC says.
FIRMWARE_TIME = 1767225600

if __name__ == "__main__":
    main(FIRMWARE_TIME)
