"""A/B slots for the trust store, switched by one small atomic state file.

Files (through a storage adapter, see storage.py):
- slot-a.cose, slot-b.cose: a whole signed bundle document each, exactly
  the bytes that were verified;
- root.cose: the trusted root document;
- state.json: which slot is active, whether it is on trial, the slot to
  fall back to, the anti-rollback floor, versions refused as bad, the last
  trusted time. Replacing this one file is the switch.

Rules of this file:
- The store carries out persistence actions the agent decided (write a
  slot, write the root, switch, commit, revert, save); it decides nothing
  and knows nothing about crypto.
- The agent only asks to write the inactive slot, so the previous store
  survives until the new one is committed.
- Every change of state is one atomic write of state.json. A power cut at
  any point leaves the old state or the new one.
"""

import json

from trustfleet_device.errors import StorageError

SLOTS = ("a", "b")
STATE = "state.json"
ROOT = "root.cose"
FORMAT = 1

# Actions that change what is on flash. Everything else is for the caller.
WRITE_SLOT = "write_slot"    # (WRITE_SLOT, slot, raw)
WRITE_ROOT = "write_root"    # (WRITE_ROOT, raw)
SWITCH = "switch"            # (SWITCH, state): active slot changes, on trial
COMMIT = "commit"            # (COMMIT, state): trial confirmed
REVERT = "revert"            # (REVERT, state): back to the previous slot
SAVE = "save"                # (SAVE, state): time or bookkeeping only
PERSIST = (WRITE_SLOT, WRITE_ROOT, SWITCH, COMMIT, REVERT, SAVE)


def slot_file(slot):
    return "slot-" + slot + ".cose"


def fresh_state():
    """The state of a device that has a root but no bundle yet."""
    return {
        "format": FORMAT,
        "active": None,            # slot in use, or None before the first install
        "version": None,           # bundle version in the active slot
        "trial": False,            # True between switch and commit
        "previous": None,          # slot to fall back to while on trial
        "previous_version": None,  # its version
        "floor": 0,                # highest committed version: never accept <= this
        "bad": [],                 # versions reverted as bad: never retried
        "retried": [],             # versions reverted once by a reboot: one more try allowed
        "time": 0,                 # persisted clock reading (seconds), bounded (agent._note_clock)
        "vouched": 0,              # newest time the offline keys vouch for: a bundle's issued_at
        "last_timestamp": 0,       # time inside the last accepted timestamp
        "latest": None,            # [version, sha256 hex, since] the last timestamp named
        "reason": None,            # why the last revert happened
    }


def copy_state(state):
    new = {}
    for key in state:
        value = state[key]
        new[key] = list(value) if type(value) is list else value
    return new


class Store:
    """The device's persistent trust state over a storage adapter."""

    def __init__(self, storage):
        self.storage = storage

    def load_state(self):
        """Read state.json, or a fresh state when there is none. Raises: StorageError."""
        raw = self.storage.read(STATE)
        state = fresh_state()
        if raw is None:
            return state
        try:
            saved = json.loads(raw)
        except ValueError:
            raise StorageError("state.json is not valid JSON")
        if type(saved) is not dict or saved.get("format") != FORMAT:
            raise StorageError("state.json has an unknown format")
        for key in state:
            if key in saved:
                state[key] = saved[key]
        return state

    def read_root(self):
        return self.storage.read(ROOT)

    def slot_sources(self):
        """Map of slot name to a source reading it from storage (None when empty)."""
        return {"a": self.storage.source(slot_file("a")), "b": self.storage.source(slot_file("b"))}

    def apply(self, action):
        """Carry out one persistence action; return False for actions that are not ours."""
        kind = action[0]
        if kind == WRITE_SLOT:
            if action[1] not in SLOTS:
                raise ValueError("unknown slot %r" % (action[1],))
            self.storage.write(slot_file(action[1]), action[2])
        elif kind == WRITE_ROOT:
            self.storage.write(ROOT, action[1])
        elif kind in (SWITCH, COMMIT, REVERT, SAVE):
            self.storage.write(STATE, json.dumps(action[1]).encode())
        else:
            return False
        return True

    def apply_all(self, actions):
        """Carry out the persistence actions in order; return the others, in order."""
        rest = []
        for action in actions:
            if not self.apply(action):
                rest.append(action)
        return rest
