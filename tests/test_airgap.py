"""Air-gapped signing (issue 16): `sign --request` on the online machine, `review` and
`sign-request` on offline ones, `sign --attach` back online.

Every command runs as the real CLI in its own working folder: online/ builds and attaches, ada/ and
grace/ are offline signers holding only their private keys. Between them travel the public keys
(once, for the root) and then only request and signature files, copied across. The results are
checked by the device verifier (trustfleet_device.policy) and the audit trail of a real publish.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from support import fleetkit as fk
from support import softhsm
from support.clirun import one_line, run_trustfleet
from trustfleet_device import cbor, cose, policy
from trustfleet_server import audit, keys, signreq

F = "acme"


def tf(cwd: Path, *args: object, code: int = 0):
    return run_trustfleet(cwd, *args, code=code)


def carry(path: Path, folder: Path, name: str | None = None) -> Path:
    """Copy one file to another machine's folder (the USB stick)."""
    dst = folder / (name or path.name)
    shutil.copyfile(path, dst)
    return dst


def kid(folder: Path, name: str) -> bytes:
    return keys.kid_of(keys.load_private_key(folder / f"{name}.pem", None))


class Ceremony:
    """The three folders and the files the round trip made."""

    def __init__(self, tmp: Path):
        self.online, self.ada, self.grace = (tmp / n for n in ("online", "ada", "grace"))
        for d in (self.online, self.ada, self.grace):
            d.mkdir()

    def offline(self, request: Path, folder: Path, key: str, signer: str | None = None,
                code: int = 0) -> Path:
        """Carry `request` to `folder`, review it and sign it there with `key`; carry the signature
        file back. Returns it (online), or the refusal's process when `code` is not 0."""
        req = carry(request, folder)
        if code == 0:
            tf(folder, "review", req.name)
        named = ("--signer", signer) if signer else ()
        sig = f"{req.stem}-{key}.sig"
        proc = tf(folder, "sign-request", req.name, "--key", f"{key}.pem", *named, "-o", sig, code=code)
        if code:
            assert not (folder / sig).exists()
            return proc
        return carry(folder / sig, self.online)


@pytest.fixture
def cer(tmp_path) -> Ceremony:
    """Keys made offline (ada: r1, b1; grace: r2, b2, t1), the public halves carried online; there a
    root v1 (root r1; bundle b1 and b2, 2 of 2; timestamp t1) signed offline by ada, and an unsigned
    bundle v3."""
    c = Ceremony(tmp_path)
    for folder, names in ((c.ada, ("r1", "b1")), (c.grace, ("r2", "b2", "t1"))):
        for name in names:
            tf(folder, "key", "generate", "--out", f"{name}.pem")
            carry(folder / f"{name}.pub.pem", c.online)
    on = c.online
    tf(on, "root", "create", "--fleet", F, "--key", "root=r1.pub.pem", "--key", "bundle=b1.pub.pem",
       "--key", "bundle=b2.pub.pem", "--threshold", "bundle=2", "--key", "timestamp=t1.pub.pem",
       "-o", "root.cose")
    tf(on, "root", "sign", "--request", "root.req", "root.cose")
    sig = c.offline(on / "root.req", c.ada, "r1", "ada")
    tf(on, "root", "sign", "--attach", sig.name, "root.cose")
    acme = fk.chain("acme")
    fk.write_pem(on / "acme.pem", acme.ca, acme.intermediate)
    (on / "b.toml").write_text(f'fleet = "{F}"\nversion = 3\nexpires = "90d"\n'
                               f'[[anchors]]\nfiles = ["acme.pem"]\n')
    tf(on, "bundle", "build", "b.toml", "-o", "unsigned.cbor")
    return c


def signed_bundle(c: Ceremony, version: int = 3) -> Path:
    """Bundle `version` signed 2 of 2 offline (b1 by ada, b2 by grace) and attached online."""
    on = c.online
    if version != 3:
        tf(on, "bundle", "build", "b.toml", "--version", version, "-o", f"unsigned-v{version}.cbor")
    src = "unsigned.cbor" if version == 3 else f"unsigned-v{version}.cbor"
    tf(on, "bundle", "sign", "--request", f"bundle-v{version}.req", src, "-o", f"bundle-v{version}.cose")
    out = on / f"bundle-v{version}.cose"
    shutil.copyfile(on / src, out)
    for folder, key, name in ((c.ada, "b1", "ada"), (c.grace, "b2", "grace")):
        sig = c.offline(on / f"bundle-v{version}.req", folder, key, name)
        tf(on, "bundle", "sign", "--attach", sig.name, "--root", "root.cose", out.name)
    return out


# --------------------------------------------------------------------------- the round trip

def test_a_root_its_rotation_a_2_of_2_bundle_and_a_timestamp_signed_offline_pass_the_device_and_name_their_signers_in_the_audit_trail(
        cer, private_mosquitto):
    c, on = cer, cer.online
    root_raw = (on / "root.cose").read_bytes()
    root = policy.load_trusted_root(root_raw)  # the device's first trust: r1's threshold met
    assert audit.signers(root_raw) == [{"kid": kid(c.ada, "r1").hex(), "name": "ada"}]

    # The review shows what is signed, from the bytes: fleet, version, roles and thresholds.
    shown = json.loads(tf(c.ada, "review", "--json", "root.req").stdout)
    assert (shown["type"], shown["role"], shown["envelope"]) == ("root", "root", "COSE_Sign")
    assert shown["summary"]["fleet"] == F and shown["summary"]["version"] == 1
    assert shown["summary"]["roles"]["bundle"]["threshold"] == 2
    text = tf(c.ada, "review", "root.req").stdout
    assert "a root key signs this root" in text and "bundle     2 of 2" in text
    assert f"{kid(c.ada, 'r1').hex()}  root" in text  # whole kids, to compare with the key's

    bundle = signed_bundle(c)
    raw = bundle.read_bytes()
    b = policy.verify_bundle(root, raw)
    assert (b.fleet, b.version) == (F, 3)
    assert audit.signers(raw) == [{"kid": kid(c.ada, "b1").hex(), "name": "ada"},
                                  {"kid": kid(c.grace, "b2").hex(), "name": "grace"}]
    # Each attached signature is what a local `sign --signer` writes: {alg, signer} protected, kid.
    for s, name in zip(cose.parse(raw).signers, ("ada", "grace"), strict=True):
        assert s.protected_raw == cbor.encode({cose.HDR_ALG: cose.ALG_ES256, "signer": name})
        assert s.unprotected == {cose.HDR_KID: s.kid} and s.problem is None
    tf(on, "bundle", "verify", "--root", "root.cose", bundle.name)
    # One of two is not enough: the device refuses the bundle with ada's signature alone.
    tf(on, "bundle", "sign", "--request", "half.req", "unsigned.cbor")
    shutil.copyfile(on / "unsigned.cbor", on / "half.cose")
    sig = c.offline(on / "half.req", c.ada, "b1")
    tf(on, "bundle", "sign", "--attach", sig.name, "--root", "root.cose", "half.cose")
    with pytest.raises(Exception, match="threshold|signature"):
        policy.verify_bundle(root, (on / "half.cose").read_bytes())

    # A timestamp: the request names the bundle; grace's t1 signs it offline.
    tf(on, "timestamp", "create", "--bundle", bundle.name, "--request", "ts.req")
    assert json.loads(tf(on, "review", "--json", "ts.req").stdout)["envelope"] == "COSE_Sign1"
    sig = c.offline(on / "ts.req", c.grace, "t1")
    tf(on, "timestamp", "create", "--request", "ts.req", "--attach", sig.name, "--root", "root.cose",
       "-o", "ts.cose")
    ts = policy.verify_timestamp(root, (on / "ts.cose").read_bytes())
    assert ts.bundle_version == 3 and ts.fleet == F

    # A rotation: root v2 adds r2 (grace) as its root key; the old root's r1 and the new r2 sign.
    tf(on, "root", "rotate", "--from", "root.cose", "--key", "root=r2.pub.pem", "--remove-key",
       f"root={kid(c.ada, 'r1').hex()[:16]}", "-o", "root-v2.cose")
    tf(on, "root", "sign", "--request", "root-v2.req", "root-v2.cose")
    # Without --root only v2's own root keys may sign: r1's signature is refused, nothing written.
    sig_r1 = c.offline(on / "root-v2.req", c.ada, "r1", "ada")
    before = (on / "root-v2.cose").read_bytes()
    err = one_line(tf(on, "root", "sign", "--attach", sig_r1.name, "root-v2.cose", code=2))
    assert "is not a root key of this root (v2)" in err
    assert (on / "root-v2.cose").read_bytes() == before
    tf(on, "root", "sign", "--attach", sig_r1.name, "--root", "root.cose", "root-v2.cose")
    sig_r2 = c.offline(on / "root-v2.req", c.grace, "r2", "grace")
    tf(on, "root", "sign", "--attach", sig_r2.name, "root-v2.cose")
    v2 = policy.verify_root_update(root, (on / "root-v2.cose").read_bytes())
    assert v2.version == 2 and kid(c.grace, "r2") in v2.roles["root"].kids
    tf(on, "root", "verify", "root.cose", "root-v2.cose")

    # The audit trail of a real publish names the offline signers.
    broker = private_mosquitto()
    tf(on, "publish", "--broker", broker.url, "--root", "root.cose", "--db", "fleet.db", "root.cose",
       bundle.name)
    entries = json.loads(tf(on, "audit", "--db", "fleet.db", "--json").stdout)["entries"]
    by_type = {e["detail"]["type"]: e["detail"]["signers"] for e in entries if e["action"] == "publish"}
    assert [s["name"] for s in by_type["root"]] == ["ada"]
    assert [s["name"] for s in by_type["bundle"]] == ["ada", "grace"]


# --------------------------------------------------------------------------- refusals

def _edit(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_review_and_sign_request_refuse_an_altered_request_in_one_line_and_write_nothing(cer):
    c, on = cer, cer.online
    tf(on, "bundle", "sign", "--request", "b.req", "unsigned.cbor")
    other = fk.chain("other")
    fk.write_pem(on / "other.pem", other.ca)
    (on / "evil.toml").write_text(f'fleet = "{F}"\nversion = 3\nexpires = "90d"\n'
                                  f'[[anchors]]\nfiles = ["other.pem"]\n')
    tf(on, "bundle", "build", "evil.toml", "-o", "evil.cbor")
    evil = base64.b64encode((on / "evil.cbor").read_bytes()).decode()
    evil_sha = json.loads(tf(on, "bundle", "sign", "--request", "evil.req", "evil.cbor",
                             "--json").stdout)["sha256"]

    def summary_version(v):
        v["summary"]["version"] = 9

    def swapped_payload(v):  # another document under the reviewed summary
        v["payload"], v["sha256"] = evil, evil_sha

    def payload_only(v):
        v["payload"] = evil

    def role(v):
        v["role"] = "timestamp"

    cases = {"summary_version": (summary_version, "summary disagrees with the payload (version"),
             "swapped_payload": (swapped_payload, "summary disagrees with the payload (anchors"),
             "payload_only": (payload_only, "sha256 does not match the payload"),
             "role": (role, "role says 'timestamp'")}
    for name, (change, expected) in cases.items():
        req = carry(on / "b.req", c.ada, f"{name}.req")
        _edit(req, change)
        for args in (("review", req.name), ("review", "--json", req.name),
                     ("sign-request", req.name, "--key", "b1.pem", "-o", f"{name}.sig")):
            proc = tf(c.ada, *args, code=2)
            assert expected in (one_line(proc) if "--json" not in args
                                else json.loads(proc.stdout)["error"]["message"]), (name, proc.stderr)
        assert not (c.ada / f"{name}.sig").exists()
    (c.ada / "junk.req").write_text("not json")
    assert "not a signing request" in one_line(tf(c.ada, "review", "junk.req", code=2))
    (c.ada / "huge.req").write_bytes(b" " * (signreq.MAX_FILE + 1))
    assert "not a signing request" in one_line(tf(c.ada, "review", "huge.req", code=2))
    req = carry(on / "b.req", c.ada, "v2.req")
    _edit(req, lambda v: v.update(version=2))
    assert "version 2" in one_line(tf(c.ada, "review", req.name, code=2))
    carry(on / "b.req", c.ada)
    assert "--signer" in one_line(tf(c.ada, "sign-request", "b.req", "--key", "b1.pem", "--signer",
                                     " ada", "-o", "x.sig", code=2))
    assert not (c.ada / "x.sig").exists()


def test_attach_refuses_another_document_another_roles_key_a_bad_signature_and_a_second_signature_by_one_key(cer):
    c, on = cer, cer.online
    tf(on, "bundle", "build", "b.toml", "--version", 4, "-o", "v4.cbor")
    tf(on, "bundle", "sign", "--request", "v3.req", "unsigned.cbor")
    tf(on, "bundle", "sign", "--request", "v4.req", "v4.cbor")
    sig_v3 = c.offline(on / "v3.req", c.ada, "b1", "ada")
    sig_t1 = c.offline(on / "v3.req", c.grace, "t1")  # a timestamp key signs the bundle request
    sig_r1 = c.offline(on / "v3.req", c.ada, "r1")  # a root key too

    def refused(*args: object, code: int = 2) -> str:
        before = {p.name: p.read_bytes() for p in on.iterdir()}
        line = one_line(tf(on, *args, code=code))
        assert {p.name: p.read_bytes() for p in on.iterdir()} == before, args  # nothing written
        return line

    assert "is for another document" in refused("bundle", "sign", "--attach", sig_v3.name, "--root",
                                                "root.cose", "v4.cbor", "-o", "v4.cose")
    assert "is not a bundle key of root v1" in refused("bundle", "sign", "--attach", sig_t1.name,
                                                       "--root", "root.cose", "unsigned.cbor")
    assert "is not a bundle key of root v1" in refused("bundle", "sign", "--attach", sig_r1.name,
                                                       "--root", "root.cose", "unsigned.cbor")
    assert "give --root" in refused("bundle", "sign", "--attach", sig_v3.name, "unsigned.cbor")
    # The root's request signed by a bundle key: not a root key.
    sig_b1_root = c.offline(on / "root.req", c.ada, "b1")
    assert "is not a root key of this root (v1)" in refused("root", "sign", "--attach",
                                                            sig_b1_root.name, "root.cose")
    # A bundle signature file given to a root: another document.
    assert "is for another document" in refused("root", "sign", "--attach", sig_v3.name, "root.cose")

    # Tampered signature files: a flipped signature bit, and a digest rewritten to match v4.
    bad = carry(sig_v3, on, "flipped.sig")
    _edit(bad, lambda v: v.update(signature=base64.b64encode(
        bytes([base64.b64decode(v["signature"])[0] ^ 1]) + base64.b64decode(v["signature"])[1:]).decode()))
    assert "does not verify" in refused("bundle", "sign", "--attach", bad.name, "--root", "root.cose",
                                        "unsigned.cbor")
    v4_sha = json.loads((on / "v4.req").read_text())["sha256"]
    moved = carry(sig_v3, on, "moved.sig")
    _edit(moved, lambda v: v.update(sha256=v4_sha))
    assert "does not verify" in refused("bundle", "sign", "--attach", moved.name, "--root", "root.cose",
                                        "v4.cbor")
    # A signer name changed in transit: the protected header is covered by the signature.
    renamed = carry(sig_v3, on, "renamed.sig")
    _edit(renamed, lambda v: v.update(protected=base64.b64encode(
        cbor.encode({cose.HDR_ALG: cose.ALG_ES256, "signer": "mallory"})).decode()))
    assert "does not verify" in refused("bundle", "sign", "--attach", renamed.name, "--root",
                                        "root.cose", "unsigned.cbor")

    # Attached once it counts; a second attach of the same key is refused as a local sign is.
    tf(on, "bundle", "sign", "--attach", sig_v3.name, "--root", "root.cose", "unsigned.cbor",
       "-o", "v3.cose")
    assert "has already signed" in refused("bundle", "sign", "--attach", sig_v3.name, "--root",
                                           "root.cose", "v3.cose", code=1)
    assert "has already signed" in refused("bundle", "sign", "--key", carry(c.ada / "b1.pem", on).name,
                                           "v3.cose", code=1)
    (on / "b1.pem").unlink()

    # Timestamps: a bundle key's signature of the timestamp request is not a timestamp key's.
    tf(on, "timestamp", "create", "--bundle", "v3.cose", "--request", "ts.req")
    sig_b2_ts = c.offline(on / "ts.req", c.grace, "b2")
    assert "is not a timestamp key of root v1" in refused(
        "timestamp", "create", "--request", "ts.req", "--attach", sig_b2_ts.name, "--root", "root.cose",
        "-o", "ts.cose")
    assert "is for another document" in refused(
        "timestamp", "create", "--request", "ts.req", "--attach", sig_v3.name, "--root", "root.cose",
        "-o", "ts.cose")
    assert "--signer" in one_line(c.offline(on / "ts.req", c.grace, "t1", "grace", code=2))


def test_an_offline_signer_with_a_pkcs11_token_signs_a_request_with_a_key_that_never_leaves_it(cer):
    """The offline side's key may be a SoftHSM2 token key (a pkcs11: URI), beside a file key."""
    c, on = cer, cer.online
    hsm = on.parent / "hsm"
    hsm.mkdir()
    token = softhsm.init_token(hsm, "offline-b")
    token.run(hsm, "key", "generate", "--pkcs11", token.uri(), "--label", "b-token", "--out",
              "b-token.pub.pem")
    carry(hsm / "b-token.pub.pem", on)
    tf(on, "root", "create", "--fleet", F, "--key", "root=r1.pub.pem", "--key", "bundle=b1.pub.pem",
       "--key", "bundle=b-token.pub.pem", "--threshold", "bundle=2", "--key", "timestamp=t1.pub.pem",
       "-o", "root-hsm.cose")
    tf(on, "root", "sign", "--request", "root-hsm.req", "root-hsm.cose")
    tf(on, "root", "sign", "--attach", c.offline(on / "root-hsm.req", c.ada, "r1").name, "root-hsm.cose")
    tf(on, "bundle", "sign", "--request", "b.req", "unsigned.cbor")
    tf(on, "bundle", "sign", "--attach", c.offline(on / "b.req", c.ada, "b1", "ada").name, "--root",
       "root-hsm.cose", "unsigned.cbor", "-o", "bundle.cose")
    carry(on / "b.req", hsm)
    token.run(hsm, "review", "b.req")
    token.run(hsm, "sign-request", "b.req", "--key", token.uri("b-token"), "--signer", "hopper",
              "-o", "b-token.sig")
    tf(on, "bundle", "sign", "--attach", carry(hsm / "b-token.sig", on).name, "--root", "root-hsm.cose",
       "bundle.cose")
    raw = (on / "bundle.cose").read_bytes()
    b = policy.verify_bundle(policy.load_trusted_root((on / "root-hsm.cose").read_bytes()), raw)
    assert b.version == 3
    assert [s["name"] for s in audit.signers(raw)] == ["ada", "hopper"]
    assert [p.name for p in hsm.glob("*.pem")] == ["b-token.pub.pem"]  # no private key file
