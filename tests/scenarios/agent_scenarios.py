import binascii
import hashlib
import json
import os
import time

from trustfleet_device import agent as core
from trustfleet_device import trust
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage, MemStorage, PowerCut

try:
    from time import ticks_diff as _tdiff
    from time import ticks_ms as _ticks
except ImportError:  # CPython
    def _ticks():
        return time.perf_counter() * 1000.0

    def _tdiff(a, b):
        return round(a - b, 2)

SPEC = {}
DOCS = {}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _hex(b):
    return binascii.hexlify(b).decode()


def load_spec(path):
    """Read the spec (times, fleet, document paths) and the documents it names."""
    with open(path) as f:
        spec = json.loads(f.read())
    SPEC.clear()
    for k in spec:
        SPEC[k] = spec[k]
    DOCS.clear()
    for name in spec["docs"]:
        DOCS[name] = _read(spec["docs"][name])
    return sorted(DOCS)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class Health:
    """A scripted health check: answers from a list, records what it was asked."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.asked = []

    def __call__(self, bundle, trusted_time):
        self.asked.append(bundle.version)
        ok = self.answers.pop(0) if self.answers else True
        return ok, "endpoints reachable" if ok else "TLS to api.acme.example failed"


def config():
    return core.Config(fleet=SPEC["fleet"], firmware_time=SPEC["firmware_time"],
                       health_timeout=60, device_id="dev-1")


def fresh_dir(path):
    """An empty directory at path (its parent must exist)."""
    try:
        names = os.listdir(path)
    except OSError:
        os.mkdir(path)
        return
    for n in names:
        os.remove(path + "/" + n)


def new_storage(kind, name):
    if kind == "mem":
        return MemStorage()
    where = SPEC["state_dir"] + "/" + name
    fresh_dir(where)
    return DirStorage(where)


def reopen(kind, storage):
    """What the next boot finds: committed files only (MemStorage), or the same directory."""
    if kind == "mem":
        return storage.reboot()
    return DirStorage(storage.root)


def leftovers(kind, storage):
    if kind == "mem":
        return sorted(n for n in storage.files if n.endswith(".tmp"))
    return sorted(n for n in os.listdir(storage.root) if n.endswith(".tmp"))


def summary(r):
    return {"committed": r.committed, "reverted": r.reverted,
            "refused": [[k, why] for k, why in r.refused],
            "reports": [[x["event"], x["detail"]] for x in r.reports], "reason": r.reason()}


def digest(raw):
    return None if raw is None else _hex(hashlib.sha256(raw).digest())


def device(storage, answers=(), t=None):
    return runner.Device(storage, config(), Health(answers), Clock(SPEC["now"] if t is None else t))


def fresh_device(kind, name, answers=(), t=None):
    storage = new_storage(kind, name)
    runner.initialise(storage, DOCS["root"], config())
    return device(storage, answers, t), storage


def scenario_install(kind):
    d, storage = fresh_device(kind, "install", (True, True))
    out = {"boot": summary(d.boot_result)}
    out["v1"] = summary(d.offer("bundle", DOCS["b1"]))
    out["v2"] = summary(d.offer("bundle", DOCS["b2"]))
    out["same"] = summary(d.offer("bundle", DOCS["b2"]))
    out["status"] = d.status()
    out["asked"] = d.health_check.asked
    out["files"] = storage.names()
    out["slots"] = [digest(storage.read("slot-a.cose")), digest(storage.read("slot-b.cose"))]
    out["tmp"] = leftovers(kind, storage)
    again = device(reopen(kind, storage))
    out["reboot"] = summary(again.boot_result)
    out["reboot_status"] = again.status()
    out["older_after_reboot"] = summary(again.offer("bundle", DOCS["b1"]))
    return out


def scenario_revert(kind):
    d, storage = fresh_device(kind, "revert", (True, False))
    out = {"v1": summary(d.offer("bundle", DOCS["b1"]))}
    out["v2"] = summary(d.offer("bundle", DOCS["b2"]))
    out["status"] = d.status()
    out["asked"] = d.health_check.asked
    out["slots"] = [digest(storage.read("slot-a.cose")), digest(storage.read("slot-b.cose"))]
    again = device(reopen(kind, storage), (True,))
    out["reboot"] = summary(again.boot_result)
    out["retry"] = summary(again.offer("bundle", DOCS["b2"]))
    out["v3"] = summary(again.offer("bundle", DOCS["b3"]))
    out["asked_after_reboot"] = again.health_check.asked
    out["final"] = again.status()
    return out


def cut_points(answers):
    """Install v2 over committed v1, cutting power after k storage operations, for every k."""
    base, storage = fresh_device("mem", "base", (True,))
    base.offer("bundle", DOCS["b1"])
    snapshot = dict(storage.files)
    outcomes = []
    k = 0
    while True:
        storage = MemStorage(snapshot, cut_after=k)
        try:
            device(storage, answers).offer("bundle", DOCS["b2"])
            cut = False
        except PowerCut:
            cut = True
        after = device(storage.reboot(), (True,))
        s = after.status()
        b = after.agent.bundle
        outcomes.append({"k": k, "cut": cut, "state": s["state"], "version": s["version"],
                         "floor": s["floor"], "bad": s["bad"], "trial": after.agent.state["trial"],
                         "bundle": None if b is None else b.version,
                         "boot": [r["event"] for r in after.boot_result.reports]})
        if not cut:
            return outcomes
        k += 1


def _decision(d):
    return {"verdict": d.verdict, "result": d.result, "reason": d.reason, "pinset": d.pinset,
            "anchor": d.anchor, "path": len(d.path), "report": d.report}


def scenario_pins(cases):
    """Install the pinned bundle, then evaluate chains at the device's trusted time."""
    d, storage = fresh_device("mem", "pins")
    out = {"install": summary(d.offer("bundle", DOCS["pinned"]))}
    store = trust.TrustStore(d.agent.bundle)
    out["skipped"] = store.skipped
    for c in cases:
        d.clock.t = c["clock"]
        now = d.agent.trusted_time(d.clock())
        chain = [binascii.unhexlify(x) for x in c["chain"]]
        r = _decision(store.evaluate(c["host"], chain, now))
        r["now"] = now
        out[c["name"]] = r
    return out


def scenario_y2k(y2k):
    d, storage = fresh_device("mem", "y2k", (), y2k)
    out = {"trusted_before": d.agent.trusted_time(d.clock())}
    out["install"] = summary(d.offer("bundle", DOCS["b1"]))
    again = device(storage.reboot(), (), y2k)
    out["trusted_after"] = again.agent.trusted_time(again.clock())
    out["status"] = again.status()
    return out


def prepare_boot(name):
    """A directory store holding the committed bundle `name`; returns the storage."""
    d, storage = fresh_device("dir", "boot-" + name, (True,))
    r = d.offer("bundle", DOCS[name])
    if r.committed is None:
        raise RuntimeError("install of %s failed: %s" % (name, r.reason()))
    return storage


def prepare_install(name):
    """A freshly initialised directory store with a booted device, and the raw bundle in RAM."""
    d, storage = fresh_device("dir", "install-" + name, (True,))
    return d, DOCS[name]


def time_install(name, runs):
    times = []
    committed = []
    for _ in range(runs):
        d, raw = prepare_install(name)
        t0 = _ticks()
        r = d.offer("bundle", raw)
        times.append(_tdiff(_ticks(), t0))
        committed.append(r.committed)
    return {"ms": times, "committed": committed, "bytes": len(DOCS[name])}
