"""trustfleet boot.py: runs before main.py on every boot. Copy to the board as /boot.py.

Makes sure the state directory exists on the board's littlefs, and nothing
else: no network, no trust decisions (those are main.py's, after the
agent's boot-time revert).

The firmware's own _boot.py has already mounted the flash filesystem at /
(littlefs v2 on current ESP32 builds). When the partition table has a data
partition labelled "trustfleet", it is mounted at STATE_DIR instead, so that
wiping the user filesystem never loses the trust state. That partition is
formatted once at provisioning (see README.md), never here: formatting on a
failed mount would erase the root and the anti-rollback floor.
"""

import os

STATE_DIR = "/trustfleet"


def _partition():
    try:
        import esp32
    except ImportError:
        return None
    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="trustfleet")
    return found[0] if found else None


def _mount(part):
    try:
        import vfs  # MicroPython >= 1.23
    except ImportError:
        vfs = os
    try:
        vfs.mount(vfs.VfsLfs2(part), STATE_DIR)
    except OSError as e:
        # Already mounted (soft reset), or not formatted/corrupt: main.py
        # then fails loudly with "not initialised" rather than losing state.
        print("trustfleet: mount of the trustfleet partition:", e)
        return False
    return True


def ensure_state_dir():
    """Mount the dedicated partition if there is one, else create the directory."""
    part = _partition()
    if part is not None:
        return "partition" if _mount(part) else "partition (not mounted)"
    try:
        os.stat(STATE_DIR)
    except OSError:
        os.mkdir(STATE_DIR)
        return "created"
    return "directory"


print("trustfleet: state in", STATE_DIR, "-", ensure_state_dir())
