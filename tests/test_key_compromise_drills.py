"""Key-compromise drills (docs/operations.md, "Key-compromise drills"), one test per scenario.

The operator and the thief both use the real `trustfleet` CLI (one subprocess per
command, in folders of their own); the devices are the real agent core with its store
(transports.runner.Device over in-memory flash, the code path `trustfleet-agent` and the
board run), on a clock that reads the test's start. In the stolen bundle key drill one more
device follows the fleet over a private Mosquitto (support.livedevice: the core behind its own
MQTT session) while the operator uses `trustfleet publish` and the thief, who can write to the
broker, publishes what he likes. Every assertion is on what the device decided and what it
stored (its root, its state, its active bundle, after a reboot too), never on what the
operator's tools printed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import brokers
from support import fleetkit as fk
from support.clirun import run_trustfleet
from support.devices import Clock
from support.livedevice import LiveDevice
from support.waiting import wait_for
from trustfleet_device import agent as core
from trustfleet_device import topics
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage

DAY = fk.DAY
FLEET = "acme"


def tf(cwd: Path, *args: object, code: int = 0) -> str:
    """`trustfleet ARGS` in cwd; its stdout (the exit code must be `code`, no traceback)."""
    return run_trustfleet(cwd, *args, code=code, timeout=60).stdout


def keygen(d: Path, *names: str) -> dict[str, str]:
    """Generate key files NAME.pem and NAME.pub.pem; {name: kid hex}."""
    return {n: tf(d, "key", "generate", "--out", f"{n}.pem").strip() for n in names}


def build_bundle(d: Path, version: int, out: str, *signers: str, anchor: str = "acme") -> bytes:
    """Build bundle `version` anchoring fk.chain(anchor) and sign it once per key, each signature a
    separate `bundle sign` run (as on separate machines). Returns the signed bytes."""
    chain = fk.chain(anchor)
    fk.write_pem(d / f"{anchor}-ca.pem", chain.ca, chain.intermediate)
    spec = d / f"{out}.toml"
    spec.write_text(f'fleet = "{FLEET}"\nversion = {version}\nexpires = "90d"\n'
                    f'[policy]\nmax_timestamp_age = "48h"\n'
                    f'[[anchors]]\nfiles = ["{anchor}-ca.pem"]\n')
    tf(d, "bundle", "build", spec.name, "-o", out)
    for key in signers:
        tf(d, "bundle", "sign", "--key", key, out)
    return (d / out).read_bytes()


def sign_root(d: Path, path: str, *signers: str) -> bytes:
    for key in signers:
        tf(d, "root", "sign", "--key", key, path)
    return (d / path).read_bytes()


def copy_in(src: Path, dst: Path, *names: str) -> None:
    """Hand files over (published documents, public keys, a stolen key) to another folder."""
    for n in names:
        (dst / n).write_bytes((src / n).read_bytes())


class Fleet:
    """Devices on one factory root, each with its own flash, on a clock fixed at `start`."""

    def __init__(self, root_raw: bytes, start: int) -> None:
        self.root_raw = root_raw
        self.clock = Clock(start)
        self.config = core.Config(fleet=FLEET, firmware_time=start - 60 * DAY, health_timeout=60)

    def device(self) -> runner.Device:
        storage = MemStorage()
        runner.initialise(storage, self.root_raw, self.config)
        return runner.Device(storage, self.config, runner.no_endpoints, self.clock)

    def reboot(self, device: runner.Device) -> runner.Device:
        return runner.Device(device.store.storage.reboot(), self.config, runner.no_endpoints,
                             self.clock)


def installs(device: runner.Device, raw: bytes, version: int) -> None:
    result = device.offer("bundle", raw)
    assert result.refused == [] and result.committed == version, result.reason()
    assert device.active_bundle().version == version


def refuses(device: runner.Device, kind: str, raw: bytes, why: str) -> None:
    """The device refuses the document, says `why`, and its root, state and slots stay as they were."""
    files = dict(device.store.storage.files)
    state, root_version = device.agent.state, device.root_version()
    result = device.offer(kind, raw)
    assert result.committed is None and result.refused, f"{kind} was accepted"
    assert result.refused[0][0] == kind and why in result.reason(), result.reason()
    assert [r["event"] for r in result.reports] == ["refused"]
    assert device.store.storage.files == files, "a refused document changed the flash"
    assert device.agent.state == state and device.root_version() == root_version


@pytest.fixture
def start() -> int:
    return int(time.time())


def last_event(live: LiveDevice, event: str, fragment: str) -> tuple[str, str]:
    """Wait until the live device's last event is `event` with `fragment` in its detail."""
    def seen():
        with live.lock:
            last = live.session.last
        return last if last and last[0] == event and fragment in last[1] else None
    return wait_for(seen, f"{live.id}: {event} ({fragment})")


def test_stolen_bundle_key_is_rotated_out_and_its_bundles_are_refused(tmp_path, start,
                                                                     private_mosquitto):
    op, thief = tmp_path / "operator", tmp_path / "thief"
    op.mkdir()
    thief.mkdir()
    kids = keygen(op, "r1", "r2", "b1", "b2", "b3", "b4", "t1")
    tf(op, "root", "create", "--fleet", FLEET, "--key", "root=r1.pub.pem", "--key", "root=r2.pub.pem",
       "--threshold", "root=2", "--key", "bundle=b1.pub.pem", "--key", "bundle=b2.pub.pem",
       "--threshold", "bundle=2", "--key", "timestamp=t1.pub.pem", "-o", "root.cbor")
    fleet = Fleet(sign_root(op, "root.cbor", "r1.pem", "r2.pem"), start)
    v1 = build_bundle(op, 1, "v1.cbor", "b1.pem", "b2.pem")
    early, late = fleet.device(), fleet.device()
    installs(early, v1, 1)
    installs(late, v1, 1)

    # b1 is stolen. With a 2-of-2 bundle threshold, one stolen key alone signs nothing devices take.
    copy_in(op, thief, "root.cbor", "b1.pem")
    half = build_bundle(thief, 2, "evil2.cbor", "b1.pem", anchor="evil")
    refuses(early, "bundle", half, "has 1 valid bundle signature(s), needs 2")

    # The worst case: the thief holds b2 as well. A device that meets the thief's bundle first
    # installs it: it is validly signed by the fleet's own bundle keys.
    copy_in(op, thief, "b2.pem")
    evil3 = build_bundle(thief, 3, "evil3.cbor", "b1.pem", "b2.pem", anchor="evil")
    installs(early, evil3, 3)

    # The operator rotates both bundle keys out in root v2, signed by the old root threshold and
    # the new one (here the same two root keys), and signs a new bundle with the new keys, at a
    # version above any the thief published.
    tf(op, "root", "rotate", "--from", "root.cbor", "--remove-key", f"bundle={kids['b1'][:16]}",
       "--remove-key", f"bundle={kids['b2'][:16]}", "--key", "bundle=b3.pub.pem",
       "--key", "bundle=b4.pub.pem", "--threshold", "bundle=2", "--threshold", "root=2",
       "-o", "root2.cbor")
    root2 = sign_root(op, "root2.cbor", "r1.pem", "r2.pem")
    v4 = build_bundle(op, 4, "v4.cbor", "b3.pem", "b4.pem")

    for device in (early, late):
        result = device.offer("root", root2)
        assert result.refused == [] and [r["event"] for r in result.reports] == ["root-updated"]
        assert device.root_version() == 2 and device.store.read_root() == root2
        assert set(device.agent.root.roles["bundle"].kids) == {bytes.fromhex(kids["b3"]),
                                                               bytes.fromhex(kids["b4"])}
    # Until the operator's bundle arrives, a running device keeps the thief's v3 in use; one that
    # restarts checks its store against root v2 and drops it (and v1, signed by the same keys).
    assert early.active_bundle().version == 3
    early = fleet.reboot(early)
    assert [r["event"] for r in early.boot_result.reports] == ["store-invalid"]
    assert "0 valid bundle signature(s)" in early.boot_result.reports[0]["detail"]
    status = early.status()
    assert (status["state"], status["version"], status["floor"]) == ("no-store", None, 3)
    copy_in(op, thief, "root2.cbor")
    evil5 = build_bundle(thief, 5, "evil5.cbor", "b1.pem", "b2.pem", anchor="evil")
    for device in (early, late):
        refuses(device, "bundle", evil5, "has 0 valid bundle signature(s), needs 2")
    refuses(late, "bundle", evil3, "has 0 valid bundle signature(s), needs 2")
    for device in (early, late):
        installs(device, v4, 4)

    # After a restart: the new root and the operator's bundle from flash; the thief still refused.
    for device in (early, late):
        again = fleet.reboot(device)
        assert again.boot_result.reports == [] and again.root_version() == 2
        assert again.status()["version"] == 4 and again.status()["state"] == "ok"
        assert again.store.read_root() == root2
        refuses(again, "bundle", evil5, "needs 2")

    # The same story, from the factory root on, for a device that follows the fleet's broker.
    broker = private_mosquitto()
    url = f"mqtt://{broker.host}:{broker.port}"
    field = LiveDevice(broker, SimpleNamespace(fleet=FLEET, root_raw=fleet.root_raw), "field-1")
    thief_link = brokers.connect(broker)
    try:
        tf(op, "publish", "--broker", url, "--root", "root.cbor", "v1.cbor")
        wait_for(lambda: field.version == 1, "the field device on v1")
        _over_the_broker(op, thief, kids, url, field, thief_link)
    finally:
        thief_link.close()
        field.close()


def test_stolen_timestamp_key_moves_time_only_within_the_bound_and_rotation_resets_it(tmp_path, start):
    op, thief = tmp_path / "operator", tmp_path / "thief"
    op.mkdir()
    thief.mkdir()
    kids = keygen(op, "r1", "b1", "t1", "t2")
    tf(op, "root", "create", "--fleet", FLEET, "--key", "root=r1.pub.pem", "--key", "bundle=b1.pub.pem",
       "--key", "timestamp=t1.pub.pem", "--max-time-lead", "10d", "-o", "root.cbor")
    fleet = Fleet(sign_root(op, "root.cbor", "r1.pem"), start)
    v1 = build_bundle(op, 1, "v1.cbor", "b1.pem")
    device = fleet.device()
    installs(device, v1, 1)
    lead = device.agent.root.time_lead
    assert lead == 10 * DAY
    vouched = device.active_bundle().issued_at
    assert device.agent.state["vouched"] == vouched and device.trusted_time() == vouched

    # The online timestamp key t1 is stolen.
    copy_in(op, thief, "root.cbor", "v1.cbor", "t1.pem")

    def stamp(folder: Path, key: str, at: int, out: str) -> bytes:
        tf(folder, "timestamp", "create", "--bundle", "v1.cbor", "--key", key, "--time", at,
           "--allow-future", "-o", out)
        return (folder / out).read_bytes()

    # A year ahead (every bundle would look expired) and just past the bound: both refused.
    refuses(device, "timestamp", stamp(thief, "t1.pem", vouched + 365 * DAY, "year.cbor"),
            f"more than {lead} s past {vouched}")
    refuses(device, "timestamp", stamp(thief, "t1.pem", vouched + lead + 60, "over.cbor"),
            f"more than {lead} s past {vouched}")
    # Just inside the bound: the device's time moves there, and stays there after a restart.
    inside = vouched + lead - 60
    result = device.offer("timestamp", stamp(thief, "t1.pem", inside, "inside.cbor"))
    assert result.refused == []
    assert device.trusted_time() == inside and device.agent.state["last_timestamp"] == inside
    device = fleet.reboot(device)
    assert device.trusted_time() == inside
    # An honest timestamp at the real time is now "older than the last accepted": held back.
    refuses(device, "timestamp", stamp(op, "t1.pem", start + 60, "honest.cbor"),
            f"older than the last accepted {inside}")

    # The operator rotates t1 out (t2 in), signed by the root key, old and new threshold alike.
    tf(op, "root", "rotate", "--from", "root.cbor", "--remove-key", f"timestamp={kids['t1'][:16]}",
       "--key", "timestamp=t2.pub.pem", "-o", "root2.cbor")
    root2 = sign_root(op, "root2.cbor", "r1.pem")
    result = device.offer("root", root2)
    assert result.refused == [] and device.root_version() == 2
    # What t1 taught is forgotten: time is back to what the offline keys vouch for, for good.
    assert device.agent.state["last_timestamp"] == 0 and device.agent.state["latest"] is None
    assert device.trusted_time() == vouched
    device = fleet.reboot(device)
    assert device.root_version() == 2 and device.trusted_time() == vouched
    assert device.store.load_state()["last_timestamp"] == 0

    # The stolen key teaches nothing more, even inside the bound; the new key's honest time works.
    refuses(device, "timestamp", stamp(thief, "t1.pem", inside, "again.cbor"),
            "has 0 valid timestamp signature(s)")
    now = start + 120
    result = device.offer("timestamp", stamp(op, "t2.pem", now, "t2.cbor"))
    assert result.refused == []
    assert device.agent.state["last_timestamp"] == now
    assert device.trusted_time() == max(now, vouched)
    assert device.status()["state"] == "ok"


def test_one_stolen_root_key_is_not_enough_with_a_threshold(tmp_path, start):
    op, thief = tmp_path / "operator", tmp_path / "thief"
    op.mkdir()
    thief.mkdir()
    kids = keygen(op, "r1", "r2", "r3", "r4", "b1", "t1")
    keygen(thief, "x", "xb")
    tf(op, "root", "create", "--fleet", FLEET, "--key", "root=r1.pub.pem", "--key", "root=r2.pub.pem",
       "--key", "root=r3.pub.pem", "--threshold", "root=2", "--key", "bundle=b1.pub.pem",
       "--key", "timestamp=t1.pub.pem", "-o", "root.cbor")
    fleet = Fleet(sign_root(op, "root.cbor", "r1.pem", "r2.pem"), start)
    device = fleet.device()
    installs(device, build_bundle(op, 1, "v1.cbor", "b1.pem"), 1)

    # r1 is stolen. The thief's root v2 makes its own key the only root and bundle key.
    copy_in(op, thief, "root.cbor", "r1.pem")

    def takeover(folder: Path, base: str, removed: dict[str, list[str]], out: str) -> bytes:
        args = [f"--remove-key=root={k[:16]}" for k in removed["root"]]
        args += [f"--remove-key=bundle={k[:16]}" for k in removed["bundle"]]
        tf(folder, "root", "rotate", "--from", base, *args, "--key", "root=x.pub.pem",
           "--threshold", "root=1", "--key", "bundle=xb.pub.pem", "-o", out)
        return sign_root(folder, out, "r1.pem", "x.pem")

    evil2 = takeover(thief, "root.cbor", {"root": [kids["r2"], kids["r3"]], "bundle": [kids["b1"]]},
                     "evil2.cbor")
    refuses(device, "root", evil2, "has 1 valid root signature(s), needs 2")
    evil_bundle = build_bundle(thief, 2, "evil-b2.cbor", "xb.pem", anchor="evil")
    refuses(device, "bundle", evil_bundle, "has 0 valid bundle signature(s), needs 1")

    # The operator rotates r1 out with the two keys left (r4 in): 2 of the old three, 2 of the new.
    tf(op, "root", "rotate", "--from", "root.cbor", "--remove-key", f"root={kids['r1'][:16]}",
       "--key", "root=r4.pub.pem", "--threshold", "root=2", "-o", "root2.cbor")
    root2 = sign_root(op, "root2.cbor", "r2.pem", "r3.pem")
    result = device.offer("root", root2)
    assert result.refused == [] and device.root_version() == 2
    assert bytes.fromhex(kids["r1"]) not in device.agent.root.roles["root"].kids
    # From now on r1 counts for nothing: not on the thief's old v2, not on a v3 made from root v2.
    refuses(device, "root", evil2, "has 0 valid root signature(s), needs 2")
    copy_in(op, thief, "root2.cbor")
    evil3 = takeover(thief, "root2.cbor", {"root": [kids["r2"], kids["r3"], kids["r4"]],
                                            "bundle": [kids["b1"]]}, "evil3.cbor")
    refuses(device, "root", evil3, "has 0 valid root signature(s), needs 2")
    device = fleet.reboot(device)
    assert device.root_version() == 2 and device.store.read_root() == root2
    assert device.status()["version"] == 1

    # The same theft with a 1-of-1 root is total: the device takes the thief's root, then the
    # thief's bundle, and the operator's own next root is refused: the fleet is lost.
    solo = tmp_path / "solo"
    solo.mkdir()
    solo_kids = keygen(solo, "r1", "b1", "t1")
    tf(solo, "root", "create", "--fleet", FLEET, "--key", "root=r1.pub.pem", "--key", "bundle=b1.pub.pem",
       "--key", "timestamp=t1.pub.pem", "-o", "root.cbor")
    lone = Fleet(sign_root(solo, "root.cbor", "r1.pem"), start)
    victim = lone.device()
    installs(victim, build_bundle(solo, 1, "v1.cbor", "b1.pem"), 1)
    thief1 = tmp_path / "thief-solo"
    thief1.mkdir()
    copy_in(solo, thief1, "root.cbor", "r1.pem")
    copy_in(thief, thief1, "x.pem", "x.pub.pem", "xb.pem", "xb.pub.pem")
    stolen = takeover(thief1, "root.cbor", {"root": [solo_kids["r1"]], "bundle": [solo_kids["b1"]]},
                      "evil2.cbor")
    result = victim.offer("root", stolen)
    assert result.refused == [] and victim.root_version() == 2
    assert victim.store.read_root() == stolen
    installs(victim, build_bundle(thief1, 2, "evil-b2.cbor", "xb.pem", anchor="evil"), 2)
    tf(solo, "key", "generate", "--out", "r2.pem")
    tf(solo, "root", "rotate", "--from", "root.cbor", "--remove-key", f"root={solo_kids['r1'][:16]}",
       "--key", "root=r2.pub.pem", "-o", "root2.cbor")
    rescue = sign_root(solo, "root2.cbor", "r1.pem", "r2.pem")
    refuses(victim, "root", rescue, "has 0 valid root signature(s), needs 1")
    victim = lone.reboot(victim)
    assert victim.root_version() == 2 and victim.status()["version"] == 2


def _over_the_broker(op: Path, thief: Path, kids: dict[str, str], url: str, field: LiveDevice,
                     thief_link: brokers.Client) -> None:
    """The stolen bundle key drill as a device on the broker lives it: the thief publishes
    straight to the bundle topic (or with `trustfleet publish`, which cannot tell his bundle
    from the operator's before the rotation), the operator publishes root v2 and bundle v4."""
    topic = topics.bundle(FLEET)
    thief_link.publish(topic, (thief / "evil2.cbor").read_bytes(), retain=True)
    last_event(field, "refused", "has 1 valid bundle signature(s), needs 2")
    tf(thief, "publish", "--broker", url, "--root", "root.cbor", "evil3.cbor")
    wait_for(lambda: field.version == 3, "the field device on the thief's v3")
    tf(op, "publish", "--broker", url, "--root", "root.cbor", "root2.cbor", "v4.cbor")
    wait_for(lambda: field.version == 4 and field.device.root_version() == 2,
             "the field device on root v2 and bundle v4")
    thief_link.publish(topic, (thief / "evil5.cbor").read_bytes(), retain=True)
    last_event(field, "refused", "has 0 valid bundle signature(s), needs 2")
    with field.lock:
        assert field.version == 4 and field.device.store.read_root() == (op / "root2.cbor").read_bytes()
        assert set(field.device.agent.root.roles["bundle"].kids) == {bytes.fromhex(kids["b3"]),
                                                                     bytes.fromhex(kids["b4"])}


def test_operations_guide_names_each_drill_test():
    """docs/operations.md walks through each drill and names its test here, and only these."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = text.split("## Key-compromise drills", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    drills = {n for n in globals() if n.startswith("test_") and n != "test_operations_guide_names_each_drill_test"}
    assert named == drills
