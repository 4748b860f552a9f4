"""The board's TLS context for the broker (transports/board.py, broker_tls) on the native
MicroPython unix port (real mbedTLS): which anchors it trusts, and that distrust holds there.

The context is built from the provisioned CA file and the installed bundle's full anchors.
A CA the bundle distrusts is never loaded, not even the provisioned one; with nothing left the
board fails closed (ValueError) instead of connecting unchecked. Plain MQTT gets no context.
"""

from __future__ import annotations

import json

import pytest

from support import fleetkit as fk
from support import mpunix
from trustfleet_server import keys

SCRIPT = """
import json, sys
from trustfleet_device import policy
from trustfleet_device.transports import board
spec = json.loads(open(sys.argv[-1]).read())
root = policy.load_trusted_root(open(spec["root"], "rb").read())
bundle = None
if spec["bundle"]:
    bundle = policy.verify_bundle(root, open(spec["bundle"], "rb").read(), now=spec["now"])

class Device:
    def active_bundle(self):
        return bundle

try:
    ctx = board.broker_tls(spec["mqtt"], Device())
    out = "plain" if ctx is None else "tls"
except ValueError as e:
    out = "refused: " + str(e)
print(MARK + json.dumps(out))
"""


@pytest.fixture(scope="module")
def port():
    return mpunix.require()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("brokertls")
    broker_ca = fk.make_cert("broker CA", keys.generate_key())
    other_ca = fk.make_cert("another CA", keys.generate_key())
    (folder / "broker-ca.der").write_bytes(fk.der(broker_ca))
    repo = fk.Repo(fleet="brokertls", now=fk.NOW)
    (folder / "root.cose").write_bytes(repo.root_raw)
    return folder, repo, broker_ca, other_ca


def run(port, pki, mqtt: dict, bundle: bytes | None) -> str:
    folder, repo, _, _ = pki
    path = None
    if bundle is not None:
        path = folder / "bundle.cose"
        path.write_bytes(bundle)
    spec = {"root": str(folder / "root.cose"), "bundle": str(path) if path else None,
            "now": fk.NOW + 1, "mqtt": mqtt}
    (folder / "spec.json").write_text(json.dumps(spec))
    script = f"MARK = {mpunix.RESULT_MARK!r}\n" + SCRIPT
    return port.run_json(script, path=[mpunix.DEVICE_DIR], args=[str(folder / "spec.json")])


def test_plain_mqtt_gets_no_tls_context(port, pki):
    assert run(port, pki, {"port": 1883}, None) == "plain"
    assert run(port, pki, {"port": 8883, "tls": False}, None) == "plain"


def test_the_provisioned_ca_is_enough_before_any_bundle(port, pki):
    folder = pki[0]
    assert run(port, pki, {"port": 8883, "ca": str(folder / "broker-ca.der")}, None) == "tls"


def test_no_anchor_at_all_fails_closed(port, pki):
    assert run(port, pki, {"port": 8883}, None).startswith("refused: no anchor")


def test_a_bundles_full_anchor_is_enough_without_the_ca_file(port, pki):
    _, repo, broker_ca, _ = pki
    raw = repo.bundle(2, anchors=[fk.full_anchor(broker_ca)], pinsets=[])
    assert run(port, pki, {"port": 8883}, raw) == "tls"


def test_a_distrusted_ca_is_never_loaded_not_even_the_provisioned_one(port, pki):
    folder, repo, broker_ca, other_ca = pki
    # The bundle distrusts the broker's CA: the provisioned file is left out, and so is the
    # bundle's own copy of it; with nothing left the board refuses to connect.
    raw = repo.bundle(2, anchors=[fk.full_anchor(broker_ca)], pinsets=[], distrust=[fk.pin(broker_ca)])
    got = run(port, pki, {"port": 8883, "ca": str(folder / "broker-ca.der")}, raw)
    assert got.startswith("refused: no anchor"), got
    # Another full anchor stays usable beside the distrusted one.
    raw = repo.bundle(2, anchors=[fk.full_anchor(broker_ca), fk.full_anchor(other_ca)], pinsets=[],
                      distrust=[fk.pin(broker_ca)])
    assert run(port, pki, {"port": 8883, "ca": str(folder / "broker-ca.der")}, raw) == "tls"
