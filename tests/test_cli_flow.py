"""The operator's flow through the real `trustfleet` CLI, one subprocess per command.

Keys are generated, a root is created and signed by two root keys, a bundle
is built from a TOML spec that names real certificate files, then signed by
two separate invocations (as on two offline machines) and verified. Exit
codes are part of the contract: 0 valid, 1 refused with a one-line reason,
2 usage error. No command may ever show a traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import fleetkit as fk
from support.clirun import one_line, run_trustfleet


def tf(cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    """Run `trustfleet ARGS` in cwd; require exit `code` and no traceback."""
    return run_trustfleet(cwd, *args, code=code, timeout=60)


def spec_text(version: int = 7, anchors: str = 'files = ["certs/acme-chain.pem"]',
              pinsets: str | None = None) -> str:
    acme = fk.chain("acme")
    primary, backup = _b64_pins(acme)
    pinsets = pinsets if pinsets is not None else f"""
[[pinsets]]
domain = "{acme.domain}"
include_subdomains = true
pins = ["{primary}", "{backup}"]
expires = "180d"
"""
    return f"""fleet = "acme-sensors"
version = {version}
expires = "90d"

[policy]
user_anchors = false
max_timestamp_age = "48h"

[[anchors]]
{anchors}
{pinsets}"""


def _b64_pins(chain: fk.Chain) -> list[str]:
    return [fk.b64(p) for p in chain.pins]


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> SimpleNamespace:
    """Keys, a signed v1 root and a bundle v7 signed by both bundle keys, all made by the CLI."""
    d = tmp_path_factory.mktemp("operator")
    kids = {}
    for name in ("r1", "r2", "b1", "b2", "t1"):
        kids[name] = tf(d, "key", "generate", "--out", f"{name}.pem").stdout.strip()
        assert len(kids[name]) == 64
    tf(d, "root", "create", "--fleet", "acme-sensors",
       "--key", "root=r1.pub.pem", "--key", "root=r2.pub.pem", "--threshold", "root=2",
       "--key", "bundle=b1.pub.pem", "--key", "bundle=b2.pub.pem", "--threshold", "bundle=2",
       "--key", "timestamp=t1.pub.pem", "-o", "root.cbor")
    tf(d, "root", "sign", "--key", "r1.pem", "root.cbor")
    tf(d, "root", "sign", "--key", "r2.pem", "root.cbor")
    info = json.loads(tf(d, "root", "verify", "root.cbor", "--json").stdout)
    assert info["valid"] is True and info["version"] == 1 and info["fleet"] == "acme-sensors"

    acme, backup = fk.chain("acme"), fk.chain("backup")
    (d / "certs").mkdir()
    fk.write_pem(d / "certs" / "acme-chain.pem", acme.ca, acme.intermediate)
    (d / "roots").mkdir()
    fk.write_pem(d / "roots" / "acme.pem", acme.ca)
    fk.write_pem(d / "roots" / "backup.crt", backup.ca)
    (d / "bundle.toml").write_text(spec_text())
    built = json.loads(tf(d, "bundle", "build", "bundle.toml", "-o", "unsigned.cbor", "--json").stdout)
    assert built["signed"] is False and built["version"] == 7 and built["anchors"] == 2
    (d / "bundle.cbor").write_bytes((d / "unsigned.cbor").read_bytes())
    # Two separate invocations: each key can live on its own offline machine.
    first = json.loads(tf(d, "bundle", "sign", "--key", "b1.pem", "bundle.cbor", "-o", "half.cbor",
                          "--json").stdout)
    assert first["signatures"] == 1 and first["kid"] == kids["b1"]
    second = json.loads(tf(d, "bundle", "sign", "--key", "b2.pem", "half.cbor", "-o", "bundle.cbor",
                           "--json").stdout)
    assert second["signatures"] == 2 and second["kid"] == kids["b2"]
    return SimpleNamespace(dir=d, kids=kids)


def test_operator_flow_signs_and_verifies_a_bundle(flow):
    d = flow.dir
    out = tf(d, "bundle", "verify", "--root", "root.cbor", "bundle.cbor").stdout
    assert out.startswith("valid: bundle v7 for fleet acme-sensors")
    result = json.loads(tf(d, "bundle", "verify", "--root", "root.cbor", "bundle.cbor", "--json").stdout)
    assert result["valid"] is True and result["version"] == 7 and result["reason"] is None
    assert result["root_version"] == 1


def test_building_never_signs(flow):
    d = flow.dir
    proc = tf(d, "bundle", "verify", "--root", "root.cbor", "unsigned.cbor", code=1)
    assert "not signed" in one_line(proc)
    result = json.loads(tf(d, "bundle", "verify", "--root", "root.cbor", "unsigned.cbor", "--json",
                           code=1).stdout)
    assert result["valid"] is False and "not signed" in result["reason"]
    assert json.loads(tf(d, "bundle", "inspect", "unsigned.cbor", "--json").stdout)["signed"] is False


def test_same_key_cannot_sign_twice(flow):
    proc = tf(flow.dir, "bundle", "sign", "--key", "b1.pem", "half.cbor", "-o", "twice.cbor", code=1)
    assert "already signed" in one_line(proc)


@pytest.fixture(scope="module")
def refusals(flow):
    """Files that must fail verification, made by the CLI (and one byte flip)."""
    d = flow.dir
    raw = (d / "bundle.cbor").read_bytes()
    (d / "tampered.cbor").write_bytes(fk.flip_payload_byte(raw, -1))
    tf(d, "key", "generate", "--out", "x1.pem")
    tf(d, "root", "create", "--fleet", "acme-sensors", "--key", "root=x1.pub.pem",
       "--key", "bundle=x1.pub.pem", "--key", "timestamp=x1.pub.pem", "-o", "other-root.cbor")
    tf(d, "root", "sign", "--key", "x1.pem", "other-root.cbor")
    return d


@pytest.mark.parametrize("args, reason", [
    (["half.cbor"], "bundle has 1 valid bundle signature(s), needs 2"),
    (["tampered.cbor"], "signature does not verify"),
    (["--root", "other-root.cbor", "bundle.cbor"], "not a bundle key"),
    (["bundle.cbor", "--at", "2099-01-01"], "bundle v7 expired at"),
    (["bundle.cbor", "--installed-version", "7"], "bundle version 7 is not newer than installed version 7"),
])
def test_verify_refuses_with_one_line_reason(refusals, args, reason):
    base = ["bundle", "verify"] if "--root" in args else ["bundle", "verify", "--root", "root.cbor"]
    proc = tf(refusals, *base, *args, code=1)
    line = one_line(proc)
    assert line.startswith("invalid: ") and reason in line
    result = json.loads(tf(refusals, *base, *args, "--json", code=1).stdout)
    assert result["valid"] is False and reason in result["reason"]
    assert result["version"] == 7  # the version the file claims, for the report


def test_usage_errors_exit_2(flow, tmp_path):
    d = flow.dir
    proc = tf(d, "bundle", "verify", "--root", "missing.cbor", "bundle.cbor", code=2)
    assert "missing.cbor" in one_line(proc)
    proc = tf(d, "bundle", "verify", "--root", "root.cbor", "missing.cbor", code=2)
    assert "missing.cbor" in one_line(proc)
    (tmp_path / "bad.toml").write_text("fleet = \n")
    assert "not valid TOML" in one_line(tf(tmp_path, "bundle", "build", "bad.toml", "-o", "x.cbor", code=2))
    tf(tmp_path, "bundle", "verify", "bundle.cbor", code=2)  # argparse: --root is required
    assert not (tmp_path / "x.cbor").exists()


def test_unknown_spec_key_is_named(flow, tmp_path):
    acme = fk.chain("acme")
    primary, backup = _b64_pins(acme)
    fk.write_pem(tmp_path / "ca.pem", acme.ca)
    typo = f"""
[[pinsets]]
domain = "{acme.domain}"
include_subdomain = true
pins = ["{primary}", "{backup}"]
expires = "180d"
"""
    (tmp_path / "b.toml").write_text(spec_text(anchors='files = ["ca.pem"]', pinsets=typo))
    line = one_line(tf(tmp_path, "bundle", "build", "b.toml", "-o", "x.cbor", code=2))
    assert "pinsets[0]" in line and "'include_subdomain'" in line


def test_build_refuses_pinset_with_one_pin_unless_overridden(tmp_path):
    acme = fk.chain("acme")
    primary, _ = _b64_pins(acme)
    fk.write_pem(tmp_path / "ca.pem", acme.ca)
    single = f"""
[[pinsets]]
domain = "{acme.domain}"
pins = ["{primary}"]
expires = "180d"
"""
    (tmp_path / "b.toml").write_text(spec_text(anchors='files = ["ca.pem"]', pinsets=single))
    line = one_line(tf(tmp_path, "bundle", "build", "b.toml", "-o", "x.cbor", code=2))
    assert "pinsets[0].pins: 1 pin(s)" in line and "allow_single_pin" in line
    assert not (tmp_path / "x.cbor").exists()
    (tmp_path / "b.toml").write_text(spec_text(anchors='files = ["ca.pem"]',
                                               pinsets=single + "allow_single_pin = true\n"))
    tf(tmp_path, "bundle", "build", "b.toml", "-o", "x.cbor")
    info = json.loads(tf(tmp_path, "bundle", "inspect", "x.cbor", "--json").stdout)
    assert info["pinsets"][0]["allow_single_pin"] is True
    assert "SINGLE PIN (override)" in tf(tmp_path, "bundle", "inspect", "x.cbor").stdout


def test_inspect_json_shows_what_the_bundle_holds(flow):
    info = json.loads(tf(flow.dir, "bundle", "inspect", "bundle.cbor", "--json").stdout)
    acme = fk.chain("acme")
    assert info["type"] == "bundle" and info["signed"] is True and info["envelope"] == "COSE_Sign"
    assert sorted(info["signers"]) == sorted([flow.kids["b1"], flow.kids["b2"]])
    assert info["fleet"] == "acme-sensors" and info["version"] == 7
    assert [a["label"] for a in info["anchors"]] == ["acme Root CA", "acme Issuing CA"]
    assert {a["form"] for a in info["anchors"]} == {"compact"}
    assert info["pinsets"][0]["domain"] == acme.domain
    assert info["pinsets"][0]["pins"] == list(_b64_pins(acme))
    assert info["pinsets"][0]["include_subdomains"] is True
    assert info["policy"] == {"user_anchors": False, "max_timestamp_age": 48 * 3600}
    assert info["distrust"] == []


def test_build_from_folder_and_certifi_with_match(flow, tmp_path):
    d = flow.dir
    anchors = 'files = ["roots"]\nform = "full"\n\n[[anchors]]\ncertifi = true\nmatch = ["ISRG Root X1"]'
    (d / "mixed.toml").write_text(spec_text(anchors=anchors))
    built = json.loads(tf(d, "bundle", "build", "mixed.toml", "-o", "mixed.cbor", "--json").stdout)
    assert built["anchors"] == 3
    info = json.loads(tf(d, "bundle", "inspect", "mixed.cbor", "--json").stdout)
    assert [(a["form"], a["label"]) for a in info["anchors"]] == [
        ("full", "acme Root CA"), ("full", "backup Root CA"), ("compact", "ISRG Root X1")]
    (d / "nomatch.toml").write_text(spec_text(anchors='certifi = true\nmatch = ["No Such Root CA 42"]'))
    line = one_line(tf(d, "bundle", "build", "nomatch.toml", "-o", "x.cbor", code=2))
    assert "No Such Root CA 42" in line


def test_diff_shows_added_pinset_and_removed_anchor(flow):
    d = flow.dir
    other = fk.chain("other")
    extra = spec_text(version=8, anchors='files = ["certs/acme-chain.pem"]')
    primary, backup = _b64_pins(other)
    extra += f"""
[[pinsets]]
domain = "{other.domain}"
pins = ["{primary}", "{backup}"]
expires = "30d"
"""
    # v8 drops the intermediate as an anchor and adds a pin-set.
    fk.write_pem(d / "certs" / "root-only.pem", fk.chain("acme").ca)
    (d / "v8.toml").write_text(extra.replace("certs/acme-chain.pem", "certs/root-only.pem"))
    tf(d, "bundle", "build", "v8.toml", "-o", "v8.cbor")
    out = tf(d, "bundle", "diff", "unsigned.cbor", "v8.cbor").stdout.splitlines()
    assert "~ version: 7 -> 8" in out
    assert any(line.startswith(f"+ pin-set {other.domain} (2 pins") for line in out)
    assert any(line.startswith("- anchor acme Issuing CA") for line in out)
    assert not any(line.startswith("+ anchor") for line in out)
    changes = json.loads(tf(d, "bundle", "diff", "unsigned.cbor", "v8.cbor", "--json").stdout)["changes"]
    assert changes == out


def test_root_rotation_and_chain_verify(flow, tmp_path):
    d = flow.dir
    for name in ("r3", "b3"):
        flow.kids[name] = tf(d, "key", "generate", "--out", f"{name}.pem").stdout.strip()
    tf(d, "root", "rotate", "--from", "root.cbor", "--remove-key", f"root={flow.kids['r2'][:8]}",
       "--key", "root=r3.pub.pem", "--remove-key", f"bundle={flow.kids['b1'][:12]}",
       "--key", "bundle=b3.pub.pem", "-o", "root2.cbor")
    # Old threshold (r1, r2) and new threshold (r1, r3): three signatures.
    tf(d, "root", "sign", "--key", "r1.pem", "root2.cbor")
    tf(d, "root", "sign", "--key", "r3.pem", "root2.cbor")
    line = one_line(tf(d, "root", "verify", "root.cbor", "root2.cbor", code=1))
    assert "checked with root v1 keys) has 1 valid root signature(s), needs 2" in line
    tf(d, "root", "sign", "--key", "r2.pem", "root2.cbor")
    info = json.loads(tf(d, "root", "verify", "root.cbor", "root2.cbor", "--json").stdout)
    assert info["valid"] is True and info["version"] == 2
    roles = json.loads(tf(d, "root", "inspect", "root2.cbor", "--json").stdout)["roles"]
    assert sorted(roles["root"]["keys"]) == sorted([flow.kids["r1"], flow.kids["r3"]])
    assert sorted(roles["bundle"]["keys"]) == sorted([flow.kids["b2"], flow.kids["b3"]])

    tf(d, "bundle", "build", "bundle.toml", "--version", "9", "-o", "v9.cbor")
    tf(d, "bundle", "sign", "--key", "b2.pem", "v9.cbor")
    tf(d, "bundle", "sign", "--key", "b3.pem", "v9.cbor")
    result = json.loads(tf(d, "bundle", "verify", "--root", "root.cbor", "--root", "root2.cbor",
                           "v9.cbor", "--json").stdout)
    assert result["valid"] is True and result["version"] == 9 and result["root_version"] == 2
    # The old root alone does not know b3; the new root no longer trusts b1.
    assert "needs 2" in one_line(tf(d, "bundle", "verify", "--root", "root.cbor", "v9.cbor", code=1))
    assert "needs 2" in one_line(tf(d, "bundle", "verify", "--root", "root.cbor", "--root", "root2.cbor",
                                    "bundle.cbor", code=1))


def test_timestamp_create_then_inspect(flow):
    d = flow.dir
    out = tf(d, "timestamp", "create", "--bundle", "bundle.cbor", "--key", "t1.pem",
             "--time", "2026-03-01T12:00:00Z", "-o", "ts.cbor").stdout
    assert "bundle v7" in out
    info = json.loads(tf(d, "bundle", "inspect", "ts.cbor", "--json").stdout)
    assert info["type"] == "timestamp" and info["envelope"] == "COSE_Sign1"
    assert info["signers"] == [flow.kids["t1"]]
    assert info["time"] == "2026-03-01T12:00:00Z" and info["bundle_version"] == 7
    assert info["bundle_sha256"] == fk.documents.sha256((d / "bundle.cbor").read_bytes()).hex()
    line = one_line(tf(d, "timestamp", "create", "--bundle", "unsigned.cbor", "--key", "t1.pem",
                       "-o", "ts2.cbor", code=2))
    assert "expected a signed bundle" in line


def test_diff_says_absent_for_a_field_one_bundle_does_not_carry(flow):
    d = flow.dir
    acme = fk.chain("acme")
    primary, backup = _b64_pins(acme)
    (d / "v9.toml").write_text(spec_text(version=9, pinsets=f"""
[[pinsets]]
domain = "{acme.domain}"
include_subdomains = true
pins = ["{primary}", "{backup}"]
expires = "180d"
report_to = "https://reports.acme.example/pins"
allow_single_pin = true
"""))
    tf(d, "bundle", "build", "v9.toml", "-o", "v9.cbor")
    out = tf(d, "bundle", "diff", "unsigned.cbor", "v9.cbor").stdout.splitlines()
    assert f"~ pin-set {acme.domain} report_to: none -> https://reports.acme.example/pins" in out
    assert f"~ pin-set {acme.domain} allow_single_pin: absent -> True" in out
    assert not any("None" in line for line in out)
