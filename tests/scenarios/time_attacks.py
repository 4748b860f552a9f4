# Attacks on time, freshness and trials, run unchanged on CPython and MicroPython
# (tests/test_time_attacks.py builds the documents and compares both runtimes).
import binascii
import json

from trustfleet_device import agent as core
from trustfleet_device import trust
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage

SPEC = {}
DOCS = {}
CHAIN = []


def load_spec(path):
    with open(path) as f:
        spec = json.loads(f.read())
    SPEC.clear()
    for k in spec:
        SPEC[k] = spec[k]
    DOCS.clear()
    for name in spec["docs"]:
        with open(spec["docs"][name], "rb") as f:
            DOCS[name] = f.read()
    del CHAIN[:]
    for x in spec["chain"]:
        CHAIN.append(binascii.unhexlify(x))
    return sorted(DOCS)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class Health:
    """Scripted answers: True (reachable, accepted), False (TLS refused), None (unreachable)."""

    def __init__(self, answers, seen=None):
        self.answers = list(answers)
        self.asked = []
        self.device = None
        self.states = []

    def __call__(self, bundle, trusted_time):
        self.asked.append(bundle.version)
        if self.device is not None:
            self.states.append(self.device.status()["state"])
        ok = self.answers.pop(0) if self.answers else True
        if ok is None:
            return None, "api.acme.example:443 unreachable: connection refused"
        return ok, "reachable" if ok else "api.acme.example:443 reject: pin-mismatch"


def config(on_unreachable="revert"):
    return core.Config(fleet=SPEC["fleet"], firmware_time=SPEC["firmware_time"], health_timeout=60,
                       device_id="dev-1", on_unreachable=on_unreachable)


def device(storage, answers=(), t=None, on_unreachable="revert", root=None):
    h = Health(answers)
    d = runner.Device(storage, config(on_unreachable), h, Clock(SPEC["now"] if t is None else t))
    h.device = d
    return d


def fresh(answers=(), t=None, on_unreachable="revert"):
    storage = MemStorage()
    runner.initialise(storage, DOCS["root"], config())
    return device(storage, answers, t, on_unreachable), storage


def summary(r):
    return {"committed": r.committed, "reverted": r.reverted,
            "refused": [[k, why] for k, why in r.refused], "reason": r.reason()}


def decide(d):
    """The trust decision for the pinned host's normal chain (anchored CA, key not pinned)."""
    dec = trust.TrustStore(d.active_bundle()).evaluate(SPEC["host"], CHAIN, d.trusted_time())
    return [dec.verdict, dec.result]


def scenario_timestamp_thief(ts):
    d, storage = fresh()
    out = {"install": summary(d.offer("bundle", DOCS["pinned"]))}
    out["before"] = decide(d)
    out["offer"] = summary(d.offer("timestamp", DOCS[ts]))
    out["after"] = decide(d)
    out["trusted"] = d.trusted_time()
    again = device(storage.reboot())
    out["after_reboot"] = decide(again)
    out["trusted_after_reboot"] = again.trusted_time()
    out["next_bundle"] = summary(again.offer("bundle", DOCS["b2"]))
    return out


def scenario_rotation_forgets_taught_time():
    d, storage = fresh()
    d.offer("bundle", DOCS["pinned"])
    out = {"near": summary(d.offer("timestamp", DOCS["ts_near"])), "taught": d.trusted_time()}
    out["root"] = summary(d.offer("root", DOCS["root2"]))
    out["after_rotation"] = d.trusted_time()
    again = device(storage.reboot())
    out["after_reboot"] = again.trusted_time()
    out["status"] = again.status()
    out["new_key"] = summary(again.offer("timestamp", DOCS["ts_new_key"]))
    return out


def scenario_future_dated_bundle():
    d, storage = fresh()
    out = {"future": summary(d.offer("bundle", DOCS["future"])), "trusted": d.trusted_time()}
    again = device(storage.reboot())
    out["trusted_after_reboot"] = again.trusted_time()
    out["next"] = summary(again.offer("bundle", DOCS["after_future"]))
    return out


def scenario_mix_and_match_after_restart():
    d, storage = fresh()
    d.offer("bundle", DOCS["pinned"])
    out = {"ts": summary(d.offer("timestamp", DOCS["ts_v2"]))}
    again = device(storage.reboot())
    out["other"] = summary(again.offer("bundle", DOCS["b2_other"]))
    out["named"] = summary(again.offer("bundle", DOCS["b2"]))
    return out


def scenario_behind():
    d, storage = fresh()
    d.offer("bundle", DOCS["pinned"])
    out = {"before": d.status()["state"]}
    d.offer("timestamp", DOCS["ts_v2"])
    s = d.status()
    out["behind"] = [s["state"], s["reasons"]]
    again = device(storage.reboot())
    out["after_reboot"] = again.status()["state"]
    again.clock.t = SPEC["ts_v2_time"] + SPEC["max_age"] + 1
    s = again.status()
    out["later"] = [s["state"], s["reasons"]]
    return out


def scenario_unreachable(on_unreachable):
    d, storage = fresh((True, None), on_unreachable=on_unreachable)
    d.offer("bundle", DOCS["pinned"])
    out = {"v2": summary(d.offer("bundle", DOCS["b2"])), "busy": d.busy(),
           "retry_in": d.next_health_retry()}
    steps = []
    for _ in range(12):
        d.clock.t += 20
        d.health_check.answers.append(None)
        r = d.tick()
        steps.append([d.busy(), r.reverted])
    out["steps"] = steps
    out["asked"] = d.health_check.asked
    out["bad"] = d.bad_versions()
    s = d.status()
    out["status"] = [s["state"], s["version"], s["last_revert"]]
    d.health_check.answers = [True]
    out["again"] = summary(d.offer("bundle", DOCS["b2"])) if not d.busy() else None
    return out


def scenario_refused_by_trust_store():
    d, storage = fresh((True, False))
    d.offer("bundle", DOCS["pinned"])
    out = {"v2": summary(d.offer("bundle", DOCS["b2"])), "bad": d.bad_versions()}
    out["again"] = summary(d.offer("bundle", DOCS["b2"]))
    r = d.clear_bad(2)
    out["cleared"] = [x["event"] for x in r.reports]
    out["bad_after_clear"] = d.bad_versions()
    again = device(storage.reboot())
    out["bad_after_reboot"] = again.bad_versions()
    out["after_clear"] = summary(again.offer("bundle", DOCS["b2"]))
    try:
        again.clear_bad(9)
        out["clear_unknown"] = None
    except ValueError as exc:
        out["clear_unknown"] = str(exc)
    return out


def scenario_versions():
    d, storage = fresh()
    out = {}
    for name in ("v_max", "v_max_plus_1", "v_2_63", "v_2_64"):
        out[name] = summary(d.offer("bundle", DOCS[name]))
    return out


def scenario_first_install_is_trial():
    d, storage = fresh()
    out = {"before": d.status()["state"]}
    out["install"] = summary(d.offer("bundle", DOCS["pinned"]))
    out["during"] = d.health_check.states
    out["after"] = d.status()["state"]
    return out


def scenario_fallback_is_a_trial():
    d, storage = fresh((True,))
    d.offer("bundle", DOCS["pinned"])
    # v2 goes on trial, then the power goes before its health check answers.
    d.store.apply_all(d.agent.offer_bundle(DOCS["b2"], d.now())[:2])
    d = device(storage.reboot())
    out = {"reboot": summary(d.boot_result), "retried": d.agent.state["retried"]}
    # The active slot rots: the other slot (v2, never committed) may only come back on trial.
    storage = d.store.storage.reboot()
    raw = bytearray(storage.files["slot-a.cose"])
    raw[-40] ^= 1
    storage.files["slot-a.cose"] = bytes(raw)
    d = device(storage, (False,))
    out["fallback"] = summary(d.boot_result)
    out["asked"] = d.health_check.asked
    out["bad"] = d.bad_versions()
    out["state"] = d.status()["state"]
    return out
