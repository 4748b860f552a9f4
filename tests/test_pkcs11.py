"""Signing keys in a PKCS#11 token: a real SoftHSM2 token made by each test in its tmp folder.

Every command runs as a `trustfleet` subprocess with SOFTHSM2_CONF pointing at the test's token
store (support.softhsm). Keys are generated inside the token by `key generate --pkcs11`; roots,
bundles and timestamps signed with them (mixed with file keys) are checked by the device's own
verifier (trustfleet_device.policy), and `serve --timestamp-key pkcs11:...` publishes a timestamp
on a real broker that the device verifier accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support import brokers, softhsm
from support import fleetkit as fk
from support.clirun import one_line
from trustfleet_device import cbor, cose, policy, topics
from trustfleet_device.errors import BundleError
from trustfleet_server import pkcs11keys

# Reads the key's flags in its own process (python-pkcs11 and SoftHSM2 read the conf once), then
# asks for CKA_VALUE, which a sensitive key must refuse.
READ_FLAGS = """
import json, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(user_pin=sys.argv[3]) as s:
    [key] = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: sys.argv[4]})
    out = {"sensitive": key[Attribute.SENSITIVE], "extractable": key[Attribute.EXTRACTABLE],
           "sign": key[Attribute.SIGN]}
    try:
        key[Attribute.VALUE]
        out["value"] = "read"
    except pkcs11.exceptions.AttributeSensitive:
        out["value"] = "sensitive"
    print(json.dumps(out))
"""

# The CLI as if python-pkcs11 were not installed (an import of it fails).
WITHOUT_PKCS11 = ("import sys; sys.modules['pkcs11'] = None; from trustfleet_server import cli; "
                  "sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture
def token(tmp_path) -> softhsm.Token:
    return softhsm.init_token(tmp_path, "ops-a")


def generate(token: softhsm.Token, folder: Path, label: str) -> dict:
    """`key generate --pkcs11` a key labelled `label`; its JSON (kid, uri, ...), public key at
    folder/label.pub.pem."""
    out = token.run(folder, "key", "generate", "--pkcs11", token.uri(), "--label", label, "--out",
                    folder / f"{label}.pub.pem", "--json").stdout
    return json.loads(out)


def test_key_generate_in_the_token_prints_its_kid_and_uri_and_key_list_shows_it(token, tmp_path):
    made = generate(token, tmp_path, "root-a")
    shown = json.loads(token.run(tmp_path, "key", "show", tmp_path / "root-a.pub.pem", "--json").stdout)
    assert made["kid"] == shown["kid"] and shown["kind"] == "public key" and shown["curve"] == "P-256"
    assert made["label"] == "root-a" and made["kind"] == "EC P-256"
    assert made["uri"].startswith("pkcs11:token=ops-a;") and "object=root-a" in made["uri"]
    assert made["sensitive"] is True and made["extractable"] is False
    # The plain output: the kid, then the URI to sign with.
    second = token.run(tmp_path, "key", "generate", "--pkcs11", token.uri("bundle-a")).stdout.split()
    assert len(second) == 2 and len(second[0]) == 64 and "object=bundle-a" in second[1]

    listed = json.loads(token.run(tmp_path, "key", "list", "--pkcs11", token.uri(), "--json").stdout)["keys"]
    assert {k["label"]: k["kid"] for k in listed} == {"root-a": made["kid"], "bundle-a": second[0]}
    text = token.run(tmp_path, "key", "list", "--pkcs11", token.uri()).stdout
    assert made["kid"] in text and "not extractable" in text

    # The label is taken: refused, nothing made.
    err = one_line(token.run(tmp_path, "key", "generate", "--pkcs11", token.uri(), "--label",
                             "root-a", code=2))
    assert "labelled 'root-a' exists already" in err
    assert len(json.loads(token.run(tmp_path, "key", "list", "--pkcs11", token.uri(),
                                    "--json").stdout)["keys"]) == 2


def test_the_private_key_is_not_extractable(token, tmp_path):
    generate(token, tmp_path, "root-a")
    flags = json.loads(token.python(READ_FLAGS, softhsm.MODULE, "ops-a", softhsm.USER_PIN, "root-a"))
    assert flags == {"sensitive": True, "extractable": False, "sign": True, "value": "sensitive"}


@dataclass
class Operator:
    """An operator's folder: a 2-of-2 root (token key root-a + file key r2), bundle keys 2-of-2
    (token key bundle-a + file key b2), timestamp keys t1 (file) and ts-a (token)."""

    dir: Path
    token: softhsm.Token
    fleet: str
    uris: dict[str, str]

    @property
    def root(self) -> Path:
        return self.dir / "root.cose"

    def run(self, *args: object, code: int = 0):
        return self.token.run(self.dir, *args, code=code)


def make_operator(token: softhsm.Token, folder: Path, fleet: str = "acme") -> Operator:
    uris = {label: generate(token, folder, label)["uri"] for label in ("root-a", "bundle-a", "ts-a")}
    op = Operator(folder, token, fleet, uris)
    for name in ("r2", "b2", "t1"):
        op.run("key", "generate", "--out", folder / f"{name}.pem")
    op.run("root", "create", "--fleet", fleet, "--key", f"root={folder / 'root-a.pub.pem'}",
           "--key", f"root={folder / 'r2.pub.pem'}", "--threshold", "root=2",
           "--key", f"bundle={folder / 'bundle-a.pub.pem'}", "--key", f"bundle={folder / 'b2.pub.pem'}",
           "--threshold", "bundle=2", "--key", f"timestamp={folder / 't1.pub.pem'}",
           "--key", f"timestamp={folder / 'ts-a.pub.pem'}", "-o", op.root)
    return op


def sign_root(op: Operator) -> None:
    op.run("root", "sign", "--key", op.uris["root-a"], op.root)
    with pytest.raises(BundleError):  # 1 of 2: not yet a root
        policy.load_trusted_root(op.root.read_bytes())
    op.run("root", "sign", "--key", op.dir / "r2.pem", op.root)


def build_bundle(op: Operator, version: int = 3) -> Path:
    acme = fk.chain("acme")
    fk.write_pem(op.dir / "acme.pem", acme.ca, acme.intermediate)
    (op.dir / "b.toml").write_text(f'fleet = "{op.fleet}"\nversion = {version}\nexpires = "90d"\n'
                                   f'[[anchors]]\nfiles = ["{op.dir / "acme.pem"}"]\n')
    bundle = op.dir / "bundle.cose"
    op.run("bundle", "build", op.dir / "b.toml", "-o", bundle)
    signed = op.run("bundle", "sign", "--key", op.uris["bundle-a"], "--root", op.root, bundle, "--json")
    assert json.loads(signed.stdout)["signatures"] == 1
    op.run("bundle", "sign", "--key", op.dir / "b2.pem", "--root", op.root, bundle)
    return bundle


def test_root_and_bundle_signed_by_token_and_file_keys_verify_on_the_device(token, tmp_path):
    op = make_operator(token, tmp_path)
    sign_root(op)
    root = policy.load_trusted_root(op.root.read_bytes())
    bundle = build_bundle(op)
    b = policy.verify_bundle(root, bundle.read_bytes())
    assert b.version == 3
    # Both signatures count: the token key's kid is one of the two.
    kids = {bytes(s[1][cose.HDR_KID]) for s in fk.open_sign(bundle.read_bytes())[3]}
    listed = json.loads(op.run("key", "list", "--pkcs11", token.uri("bundle-a"), "--json").stdout)["keys"]
    assert bytes.fromhex(listed[0]["kid"]) in kids and len(kids) == 2
    # Without the token's signature the bundle falls short of its threshold on the device.
    only_file = fk.drop_signature(bundle.read_bytes(), 0)
    with pytest.raises(BundleError):
        policy.verify_bundle(root, only_file)
    # A token key of the wrong role is refused before anything is written.
    before = bundle.read_bytes()
    err = one_line(op.run("bundle", "sign", "--key", op.uris["root-a"], "--root", op.root, bundle,
                          code=2))
    assert "is not a bundle key of root v1" in err and bundle.read_bytes() == before


def test_a_timestamp_signed_in_the_token_verifies_on_the_device(token, tmp_path):
    op = make_operator(token, tmp_path)
    sign_root(op)
    bundle = build_bundle(op)
    out = json.loads(op.run("timestamp", "create", "--bundle", bundle, "--key", op.uris["ts-a"],
                            "--root", op.root, "-o", tmp_path / "ts.cose", "--json").stdout)
    root = policy.load_trusted_root(op.root.read_bytes())
    ts = policy.verify_timestamp(root, (tmp_path / "ts.cose").read_bytes())
    assert ts.bundle_version == 3 and abs(ts.time - time.time()) < 60
    assert out["kid"] == generate_kid(op, "ts-a")


def generate_kid(op: Operator, label: str) -> str:
    listed = json.loads(op.run("key", "list", "--pkcs11", op.token.uri(label), "--json").stdout)["keys"]
    return listed[0]["kid"]


def test_serve_publishes_timestamps_signed_by_a_token_key(token, tmp_path, mosquitto):
    fleet = brokers.unique_fleet()
    op = make_operator(token, tmp_path, fleet)
    sign_root(op)
    bundle = build_bundle(op)
    names = [topics.root(fleet, 1), topics.bundle(fleet), topics.timestamp(fleet)]
    try:
        op.run("publish", "--broker", mosquitto.url, "--root", op.root, op.root, bundle)
        out = op.run("serve", "--broker", mosquitto.url, "--fleet", fleet, "--root", op.root, "--db",
                     tmp_path / "fleet.db", "--timestamp-key", op.uris["ts-a"], "--once", "--json")
        assert json.loads(out.stdout.strip().splitlines()[-1])["timestamps"] == 1
        raw = brokers.retained(mosquitto, topics.timestamp(fleet))
        assert raw is not None
        ts = policy.verify_timestamp(policy.load_trusted_root(op.root.read_bytes()), raw)
        assert ts.bundle_version == 3
        sign1 = cbor.decode(raw, tags=(cose.TAG_SIGN1,)).value
        assert bytes(sign1[1][cose.HDR_KID]).hex() == generate_kid(op, "ts-a")
        # A token key that is not a timestamp key of the root: refused at start, one line.
        err = one_line(op.run("serve", "--broker", mosquitto.url, "--fleet", fleet, "--root", op.root,
                              "--db", tmp_path / "fleet.db", "--timestamp-key", op.uris["root-a"],
                              "--once", code=2))
        assert "is not a timestamp key of root v1" in err
    finally:
        brokers.clear_retained(mosquitto, names)


# --------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_with_exit_2(token, tmp_path):
    generate(token, tmp_path, "root-a")
    (tmp_path / "wrong.pin").write_text("000000\n")
    unsigned = tmp_path / "unsigned.cbor"
    (tmp_path / "r.pub.pem").write_bytes((tmp_path / "root-a.pub.pem").read_bytes())
    token.run(tmp_path, "root", "create", "--fleet", "acme", "--key", "root=r.pub.pem",
              "--key", "bundle=r.pub.pem", "--key", "timestamp=r.pub.pem", "-o", unsigned)
    before = unsigned.read_bytes()
    base = f"pkcs11:token=ops-a;object=root-a?module-path={softhsm.MODULE}"

    def refused(uri: str, **env: str) -> str:
        line = one_line(token.run(tmp_path, "root", "sign", "--key", uri, unsigned, code=2, **env))
        assert line.startswith("trustfleet: error: ") and unsigned.read_bytes() == before
        assert softhsm.USER_PIN not in line
        return line

    assert "wrong PIN" in refused(f"{base}&pin-source=file:{tmp_path / 'wrong.pin'}")
    assert "wrong PIN" in refused(base, TRUSTFLEET_PKCS11_PIN="111111")
    assert "no PKCS#11 PIN given" in refused(base)
    line = refused(token.uri("nothing-here"))
    assert "no such private key" in line and "object='root-a'" in line
    line = refused(token.uri("root-a").replace("token=ops-a", "token=ops-z"))
    assert "no such token" in line and "'ops-a'" in line
    line = refused(f"{base}&pin-value={softhsm.USER_PIN}")
    assert "pin-value is refused" in line
    assert "does not exist" in refused("pkcs11:token=ops-a;object=root-a?module-path=/no/such.so")
    assert "unknown path attribute 'colour'" in refused(token.uri("root-a", extra=";colour=red"))
    assert "pin-source" in refused(f"{base}&pin-source=file:{tmp_path / 'absent.pin'}")
    # Without python-pkcs11 installed: one line naming the extra to install.
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PKCS11, "root", "sign", "--key", base, unsigned],
                          env=token.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'trustfleet[pkcs11]'" in one_line(proc.stderr)
    # The right PIN from the environment signs.
    token.run(tmp_path, "root", "sign", "--key", base, unsigned, TRUSTFLEET_PKCS11_PIN=softhsm.USER_PIN)
    assert policy.load_trusted_root(unsigned.read_bytes()).version == 1


def test_a_non_ec_key_in_the_token_is_refused(token, tmp_path):
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    util = softhsm.require()
    subprocess.run([util, "--import", rsa_pem, "--token", "ops-a", "--label", "old-rsa", "--id",
                    "0a0b", "--pin", softhsm.USER_PIN], env=token.env, check=True, capture_output=True)
    listed = json.loads(token.run(tmp_path, "key", "list", "--pkcs11", token.uri(), "--json").stdout)["keys"]
    assert [(k["label"], k["kind"], k["kid"]) for k in listed] == [("old-rsa", "RSA", None)]
    err = one_line(token.run(tmp_path, "timestamp", "create", "--bundle", tmp_path / "none.cose",
                             "--key", token.uri("old-rsa"), "-o", tmp_path / "ts.cose", code=2))
    assert "expected an EC P-256 key, found a RSA key" in err


def test_uris_are_read_as_rfc_7512_says():
    uri = pkcs11keys.parse_uri("pkcs11:token=Ops%20A;object=root%2d1;id=%01%ff;slot-id=7;type=private"
                               "?module-path=/opt/hsm/lib.so&pin-source=file:/run/pin")
    assert (uri.token, uri.object, uri.id, uri.slot_id, uri.type) == ("Ops A", "root-1", b"\x01\xff", 7,
                                                                      "private")
    assert (uri.module_path, uri.pin_source) == ("/opt/hsm/lib.so", "file:/run/pin")
    made = pkcs11keys.format_uri(token="Ops A", object="root 1", id=b"\x01\xff", module_path="/m.so")
    back = pkcs11keys.parse_uri(made)
    assert (back.token, back.object, back.id, back.module_path) == ("Ops A", "root 1", b"\x01\xff", "/m.so")
    for bad, said in (("pkcs11:token=a;token=b", "given twice"), ("pkcs11:slot-id=x", "decimal"),
                      ("pkcs11:type=secret", "type must be"), ("pkcs11:colour=red", "unknown path"),
                      ("pkcs11:token=a?pin-value=1234", "pin-value is refused"),
                      ("pkcs11:token=a?module-name=softhsm2", "module-name is not supported")):
        with pytest.raises(pkcs11keys.Pkcs11Error, match=said) as caught:
            pkcs11keys.parse_uri(bad)
        assert "1234" not in str(caught.value)


def test_doctor_checks_a_token_key_without_opening_the_token(token, tmp_path):
    """`doctor` takes a pkcs11: URI as a key: it checks the URI and the module, and does not ask
    for the PIN (no pin-source here, no terminal: opening the token would fail)."""
    ok = token.run(tmp_path, "doctor", "--key", f"bundle={token.uri('bundle-a', pin=False)}", "--json")
    checks = {c["check"]: c for c in json.loads(ok.stdout)["checks"]}
    assert checks["key bundle"]["status"] == "ok" and "PKCS#11 token" in checks["key bundle"]["message"]
    bad = token.run(tmp_path, "doctor", "--key", "bundle=pkcs11:token=x?module-path=/nonexistent/p11.so",
                    "--json", code=1)
    checks = {c["check"]: c for c in json.loads(bad.stdout)["checks"]}
    assert checks["key bundle"]["status"] == "fail" and "no such file" in checks["key bundle"]["message"]
