"""Power cuts on littlefs, on the MicroPython unix port: every block write of a phase is a cut point.

Runs as a script: argv[-1] is a JSON spec (documents, fleet, clock, flash
geometry, phases); prints one marked JSON line with what each cut left.

The flash is a RAM block device (Flash) under os.VfsLfs2: the board's
"trustfleet" data partition, which device/board/boot.py finds through a
stand-in `esp32` module and mounts at /trustfleet. device/board/main.py
then runs unchanged: build_device over DirStorage, process_inbox, tick. Provisioning
follows the board README: mkfs, factory-root.cose and config.json, first
boot, then bundle v1 from the inbox.

A phase (install, revert, root, trial) starts from an image with a
document in the inbox (for trial: a bundle left on trial by a power loss
during its health check) and runs one boot and one pass of the loop, logging every block
write (each prog and each erase is one write). A power cut at write k
leaves the image before the phase plus writes 0..k-1: write k and every
later one never reach the blocks. Each such image is mounted and booted as
the board boots, what the boot found is recorded, then the loop runs again
(the inbox document may still be there) and the board reboots once more.
For a few k the phase is also run live with the flash refusing write k
(the exception stops the CPU, as a cut does); its writes must go where the
replayed ones went and booting it must give what booting the replayed
image gave: the replay is only trusted because they match.

Checks are made on CPython (tests/test_board_littlefs.py); this script
records facts only.
"""

import binascii
import gc
import hashlib
import json
import os
import sys

import esp32
import vfs

from trustfleet_device import slots
from trustfleet_device.transports import board

with open(sys.argv[-1]) as _f:
    SPEC = json.loads(_f.read())

STATE = board.STATE_DIR
with open(SPEC["boot_py"]) as _f:
    BOOT_PY = _f.read()
BLOCK = SPEC["block_size"]
COUNT = SPEC["blocks"]
NOW = SPEC["now"]
_IOCTL_COUNT = 4
_IOCTL_SIZE = 5
_IOCTL_ERASE = 6


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _sha(raw):
    return binascii.hexlify(hashlib.sha256(raw).digest()).decode()


DOCS = {}
NAME_OF = {}  # sha256 hex of a document -> its name in SPEC["docs"]
for _name in SPEC["docs"]:
    DOCS[_name] = _read(SPEC["docs"][_name])
    NAME_OF[_sha(DOCS[_name])] = _name


class PowerCut(Exception):
    """Write `cut_at` was refused: the power is gone."""


class Flash:
    """NOR-like flash in RAM for VfsLfs2 (the extended block protocol, with erase).

    `log`, when a list, receives (address, bytes) for every write that
    reaches the blocks; `cut_at` refuses that write and all later ones.
    """

    def __init__(self, image, log=None, cut_at=None):
        self.data = image
        self.log = log
        self.cut_at = cut_at
        self.writes = 0
        self.cut = False

    def _store(self, addr, buf):
        if self.cut or (self.cut_at is not None and self.writes >= self.cut_at):
            self.cut = True
            raise PowerCut("write %d refused" % self.writes)
        self.writes += 1
        self.data[addr:addr + len(buf)] = buf
        if self.log is not None:
            self.log.append((addr, bytes(buf)))

    def readblocks(self, block, buf, offset=0):
        addr = block * BLOCK + offset
        buf[:] = self.data[addr:addr + len(buf)]

    def writeblocks(self, block, buf, offset=0):
        self._store(block * BLOCK + offset, buf)

    def ioctl(self, op, arg):
        if op == _IOCTL_COUNT:
            return COUNT
        if op == _IOCTL_SIZE:
            return BLOCK
        if op == _IOCTL_ERASE:
            self._store(arg * BLOCK, b"\xff" * BLOCK)
        return 0


def mount(flash):
    """Power on: boot.py mounts the "trustfleet" partition (this flash) at STATE_DIR. Raises: OSError."""
    esp32.Partition.flash = flash
    exec(BOOT_PY, {"__name__": "boot"})
    # Unmounted, STATE_DIR does not exist on this host: boot.py could not mount it.
    os.statvfs(STATE)


def unmount():
    vfs.umount(STATE)


def put(name, raw):
    with open(STATE + "/" + name, "wb") as f:
        f.write(raw)


def boot():
    """The board's boot: config, then the Device over the state directory (main.build_device)."""
    del board.LOG[:]
    return board.build_device(board.load_config(), lambda: NOW)


def loop_once(device):
    """One pass of main.step without the network hooks: the inbox, then the tick."""
    board.process_inbox(device, True)
    device.tick()


def provision():
    """A formatted flash holding the factory root and the config, booted once, v1 installed."""
    flash = Flash(bytearray(b"\xff" * (BLOCK * COUNT)))
    vfs.VfsLfs2.mkfs(flash)
    mount(flash)
    os.mkdir(STATE + "/inbox")
    put("factory-root.cose", DOCS["root1"])
    put("config.json", json.dumps(SPEC["config"]).encode())
    put("inbox/bundle-1.cose", DOCS["b1"])
    loop_once(boot())
    unmount()
    return flash.data


def stage(base, phase):
    """The image a phase starts from: `base` with the phase's config and inbox document."""
    flash = Flash(bytearray(base))
    mount(flash)
    cfg = dict(SPEC["config"])
    for key in phase["config"]:
        cfg[key] = phase["config"][key]
    put("config.json", json.dumps(cfg).encode())
    for name in phase["inbox"]:
        put("inbox/" + name, DOCS[phase["inbox"][name]])
    if phase.get("lost_in_health_check"):
        lose_power_in_health_check()
    unmount()
    return flash.data


def lose_power_in_health_check():
    """Boot and take the inbox bundle until its health check, where the power goes.

    What is left: the new bundle switched in and on trial, its inbox file
    still there (it is removed only after the offer returns).
    """
    device = boot()

    def dies(bundle, trusted_time):
        raise PowerCut("power lost during the health check of v%d" % bundle.version)

    device.health_check = dies
    try:
        board.process_inbox(device, True)
    except PowerCut:
        return
    raise RuntimeError("the inbox held no bundle to take to its health check")


def run_phase(flash):
    """Boot and one loop pass on `flash`; True when it ran to the end, False when power was cut."""
    mount(flash)
    try:
        loop_once(boot())
    except Exception:  # a refused write surfaces as PowerCut or as the OSError littlefs made of it
        if not flash.cut:
            raise
        return False
    finally:
        try:
            unmount()
        except OSError:
            pass
    return True


def _file_doc(storage, name):
    raw = storage.read(name)
    return None if raw is None else NAME_OF.get(_sha(raw), "unknown")


def facts(device):
    """What a booted device reports and what its flash holds."""
    storage = device.store.storage
    state = device.store.load_state()
    bundle = device.active_bundle()
    status = device.status()
    active = state["active"]
    return {
        "status": [status["state"], status["version"], status["floor"]],
        "bundle": None if bundle is None else bundle.version,
        "root": device.root_version(),
        "state": [active, state["version"], state["trial"], state["floor"],
                  list(state["bad"]), list(state["retried"])],
        "slot_doc": None if active is None else _file_doc(storage, slots.slot_file(active)),
        "root_doc": _file_doc(storage, slots.ROOT),
        "files": sorted(os.listdir(STATE)),
        "inbox": sorted(os.listdir(STATE + "/inbox")),
    }


def check_cut(image):
    """Mount what a cut left, boot, loop once, reboot; every stage's facts or its error."""
    gc.collect()  # each image is one large block: keep the heap from fragmenting
    out = {"stage": "mount"}
    flash = Flash(image)
    try:
        mount(flash)
    except OSError as e:
        out["error"] = "mount: %r" % (e,)
        return out
    try:
        out["stage"] = "boot"
        device = boot()
        out["boot_events"] = [r["event"] for r in device.boot_result.reports]
        out["boot"] = facts(device)
        out["stage"] = "loop"
        loop_once(device)
        out["loop"] = facts(device)
        unmount()
        out["stage"] = "reboot"
        mount(flash)
        again = boot()
        out["reboot_events"] = [r["event"] for r in again.boot_result.reports]
        out["reboot"] = facts(again)
        out["stage"] = "done"
    except Exception as e:
        out["error"] = "%s: %s %r" % (out["stage"], type(e).__name__, e)
    finally:
        try:
            unmount()
        except OSError:
            pass
    return out


def apply(image, write):
    addr, raw = write
    image[addr:addr + len(raw)] = raw


def cut_points(base, phase):
    log = []
    whole = Flash(bytearray(base), log)
    if not run_phase(whole):
        raise RuntimeError("phase %s did not run to the end uncut" % phase["name"])
    n = len(log)
    outcomes = []
    image = bytearray(base)
    for k in range(n + 1):
        if k > 0:
            apply(image, log[k - 1])
        o = check_cut(bytearray(image))
        o["k"] = k
        outcomes.append(o)
    live = []
    for k in phase["live"]:
        if k < n:
            live.append(live_cut(base, k, log))
    return {"writes": n, "outcomes": outcomes, "live": live}


def live_cut(base, k, log):
    """Run the phase with write k refused; what it wrote and what a boot then finds.

    The images themselves differ from the replayed ones in the mtime
    attributes littlefs stamps with the real clock, so the comparison is by
    where each write went and by what booting the image gives.
    """
    gc.collect()
    mine = []
    flash = Flash(bytearray(base), mine, k)
    finished = run_phase(flash)
    places = [[a, len(raw)] for a, raw in mine]
    out = check_cut(flash.data)
    out["k"] = k
    return {"k": k, "finished": finished,
            "same_places": places == [[a, len(raw)] for a, raw in log[:k]],
            "outcome": out}


def main():
    base = provision()
    result = {}
    for phase in SPEC["phases"]:
        result[phase["name"]] = cut_points(stage(base, phase), phase)
    print(SPEC["mark"] + json.dumps(result))


main()
