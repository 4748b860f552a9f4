"""Lints (TF101-TF110): each code fires on a minimal bad spec and not on a good one.

The good spec pins the issuing CA of a private chain plus a backup key, with
the served chain and the backup's public key supplied; each bad spec changes
one thing. Times are fixed with --at (fleetkit's NOW, 2026-01-01). A
stand-in public root plays Mozilla's part through --public-roots; one test
uses a real certifi root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import certifi
import pytest
from cryptography import x509

from support import fleetkit as fk
from trustfleet_server import cli, keys, lint, x509util

REPO = Path(__file__).resolve().parents[1]
AT = "2026-01-01"
DOMAIN = "api.lint.example"
EXPECTED_SEVERITIES = {
    "TF101": "error", "TF102": "error", "TF103": "error", "TF104": "warning", "TF105": "warning",
    "TF106": "error", "TF107": "error", "TF108": "warning", "TF109": "warning", "TF110": "error",
    "TF111": "error", "TF112": "warning",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("lint")
    k = {name: keys.generate_key() for name in
         ("ca", "int", "leaf", "backup", "other", "short", "pubroot", "cdn", "cdnleaf")}
    ca = fk.make_cert("Lint Root CA", k["ca"])
    issuing = fk.make_cert("Lint Issuing CA", k["int"], ca, k["ca"], not_after=fk.NOW + 1825 * fk.DAY)
    leaf = fk.make_cert(DOMAIN, k["leaf"], issuing, k["int"], ca=False,
                        not_after=fk.NOW + 90 * fk.DAY, dns=DOMAIN)
    pub_root = fk.make_cert("Stand-in Public Root", k["pubroot"])
    cdn = fk.make_cert("Stand-in CDN CA", k["cdn"], pub_root, k["pubroot"])
    cdn_leaf = fk.make_cert(DOMAIN + " via cdn", k["cdnleaf"], cdn, k["cdn"], ca=False, dns=DOMAIN)
    fk.write_pem(d / "ca.pem", ca)
    fk.write_pem(d / "ca-reissued.pem", fk.make_cert("Lint Root CA (reissued)", k["ca"]))
    fk.write_pem(d / "short.pem", fk.make_cert("Short Root", k["short"], not_after=fk.NOW + 30 * fk.DAY))
    fk.write_pem(d / "chain.pem", leaf, issuing, ca)
    fk.write_pem(d / "public-chain.pem", cdn_leaf, cdn)
    fk.write_pem(d / "public-roots.pem", pub_root)
    (d / "backup.pub.pem").write_bytes(keys.public_key_pem(k["backup"]))
    repo = fk.Repo(fleet="acme")  # root v2 lets a timestamp lead by 200 days (TF112)
    (d / "root-v1.cose").write_bytes(repo.root_raw)
    (d / "root-v2.cose").write_bytes(repo.rotate("bundle", policy={"max_time_lead": 200 * fk.DAY}))
    return SimpleNamespace(
        dir=d, primary=fk.b64(fk.pin(issuing)), backup=fk.b64(fk.pin(k["backup"])),
        other=fk.b64(fk.pin(k["other"])), cdn=fk.b64(fk.pin(cdn)), ca=ca, issuing=issuing,
        leaf=leaf, backup_key=k["backup"], other_key=k["other"])


def spec_text(pki, *, pins=None, pinset_extra="", expires='expires = "180d"',
              chains='chains = ["chain.pem", "backup.pub.pem"]', anchors='["ca.pem"]',
              top="", tail="") -> str:
    pins = pins if pins is not None else [pki.primary, pki.backup]
    pin_list = ", ".join(f'"{p}"' for p in pins)
    return f"""fleet = "acme"
version = 1
expires = "90d"
{top}
[[anchors]]
files = {anchors}

[[pinsets]]
domain = "{DOMAIN}"
include_subdomains = true
pins = [{pin_list}]
{expires}
{chains}
{pinset_extra}
{tail}"""


def run_lint(capsys, pki, text, *extra, public_roots=True):
    path = pki.dir / "spec.toml"
    path.write_text(text)
    argv = ["lint", str(path), "--at", AT, "--json", *map(str, extra)]
    if public_roots:
        argv += ["--public-roots", str(pki.dir / "public-roots.pem")]
    rc = cli.main(argv)
    return rc, json.loads(capsys.readouterr().out)


def codes(report) -> list[str]:
    return [f["code"] for f in report["findings"]]


# --------------------------------------------------------------------------- good


def test_good_spec_has_no_findings_and_exits_0(pki, capsys):
    rc, report = run_lint(capsys, pki, spec_text(pki))
    assert (rc, report["findings"], report["ok"]) == (0, [], True)


def test_good_spec_has_no_findings_against_the_real_mozilla_roots(pki, capsys):
    rc, report = run_lint(capsys, pki, spec_text(pki), public_roots=False)
    assert (rc, report["findings"]) == (0, [])


def test_good_spec_with_chains_given_on_the_command_line(pki, capsys):
    rc, report = run_lint(capsys, pki, spec_text(pki, chains=""), "--chain", pki.dir / "chain.pem",
                          "--chain", pki.dir / "backup.pub.pem")
    assert (rc, report["findings"]) == (0, [])
    assert report["chains"] == [str(pki.dir / "chain.pem"), str(pki.dir / "backup.pub.pem")]


# --------------------------------------------------------------------------- each code


def _bad_specs(pki):
    return {
        "TF101": spec_text(pki, pins=[pki.primary], pinset_extra="allow_single_pin = true"),
        "TF102": spec_text(pki, pins=[pki.primary, pki.primary, pki.backup]),
        "TF103": spec_text(pki, expires=""),
        "TF104": spec_text(pki, expires='expires = "2025-12-01"',
                           top='issued_at = "2025-06-01T00:00:00Z"'),
        "TF105": spec_text(pki, expires='expires = "500d"'),
        "TF106": spec_text(pki, pins=[pki.primary, pki.other]),
        "TF107": spec_text(pki, pins=[pki.cdn, pki.backup],
                           chains='chains = ["public-chain.pem", "backup.pub.pem"]'),
        "TF108": spec_text(pki, anchors='["ca.pem", "short.pem"]'),
        "TF109": spec_text(pki, anchors='["ca.pem", "ca-reissued.pem"]'),
        "TF110": spec_text(pki, tail=f'[distrust]\npins = ["{pki.backup}"]'),
        "TF111": spec_text(pki, top='issued_at = "2026-03-01T00:00:00Z"'),  # after AT
        "TF112": spec_text(pki),  # with EXTRA's root: pins expire 180 days after issue
    }


def _extra(pki, code: str) -> tuple:
    """Options a code needs to fire: TF112 needs the root."""
    if code == "TF112":
        return ("--root", pki.dir / "root-v1.cose", "--root", pki.dir / "root-v2.cose")
    return ()


@pytest.mark.parametrize("code", sorted(EXPECTED_SEVERITIES))
def test_each_code_fires_alone_on_a_minimal_bad_spec(pki, code, capsys):
    rc, report = run_lint(capsys, pki, _bad_specs(pki)[code], *_extra(pki, code))
    assert codes(report) == [code]
    finding = report["findings"][0]
    assert finding["severity"] == EXPECTED_SEVERITIES[code]
    assert finding["fix"] == lint.RULES[code].fix
    assert rc == (1 if finding["severity"] == "error" else 0)


@pytest.mark.parametrize("code", sorted(EXPECTED_SEVERITIES))
def test_strict_lint_fails_on_every_code(pki, code, capsys):
    rc, report = run_lint(capsys, pki, _bad_specs(pki)[code], "--strict", *_extra(pki, code))
    assert rc == 1 and report["ok"] is False and report["strict"] is True


def test_locations_name_the_pinset_domain_and_the_anchor_label(pki, capsys):
    _, report = run_lint(capsys, pki, _bad_specs(pki)["TF106"])
    assert report["findings"][0]["location"] == f"pinsets[0] {DOMAIN}"
    assert pki.other in report["findings"][0]["message"]
    _, report = run_lint(capsys, pki, _bad_specs(pki)["TF108"])
    assert report["findings"][0]["location"] == "anchors[1] Short Root"


def test_single_pin_without_override_is_reported_not_refused(pki, capsys):
    # The builder refuses this outright; the lint names it by code.
    _, report = run_lint(capsys, pki, spec_text(pki, pins=[pki.primary]))
    assert codes(report) == ["TF101"]
    assert "allow_single_pin" not in report["findings"][0]["message"]


def test_the_same_anchor_file_twice_is_a_duplicate_certificate(pki, capsys):
    _, report = run_lint(capsys, pki, spec_text(pki, anchors='["ca.pem", "ca.pem"]'))
    assert codes(report) == ["TF109"]
    assert "same certificate as anchors[0]" in report["findings"][0]["message"]
    _, report = run_lint(capsys, pki, _bad_specs(pki)["TF109"])
    assert "same key as anchors[0]" in report["findings"][0]["message"]


def test_distrusted_anchor_key_is_flagged_on_the_anchor(pki, capsys):
    _, report = run_lint(capsys, pki, spec_text(pki, tail='[distrust]\nfiles = ["ca.pem"]'))
    assert [(f["code"], f["location"]) for f in report["findings"]] == [
        ("TF110", "anchors[0] Lint Root CA")]


def test_horizon_is_configurable(pki, capsys):
    text = spec_text(pki, expires='expires = "500d"')
    assert codes(run_lint(capsys, pki, text, "--horizon", "600d")[1]) == []
    assert codes(run_lint(capsys, pki, spec_text(pki), "--horizon", "100d")[1]) == ["TF105"]


def test_pin_on_a_real_mozilla_root_is_public_infrastructure(pki, capsys):
    isrg = next(c for c in x509util.load_certificates(certifi.where())
                if "ISRG Root X1" in c.subject.rfc4514_string())
    text = spec_text(pki, pins=[x509util.pin_b64(isrg), pki.backup], chains="")
    _, report = run_lint(capsys, pki, text, public_roots=False)
    assert codes(report) == ["TF107"]
    assert "ISRG Root X1" in report["findings"][0]["message"]


def test_a_command_line_chain_applies_only_to_the_pinset_it_names(pki, capsys):
    other = f"""
[[pinsets]]
domain = "elsewhere.example"
pins = ["{pki.other}", "{pki.backup}"]
expires = "180d"
"""
    _, report = run_lint(capsys, pki, spec_text(pki, chains="", tail=other), "--chain", pki.dir / "chain.pem")
    # The chain's leaf names api.lint.example: its backup is unproven; elsewhere is not checked.
    assert [(f["code"], f["location"]) for f in report["findings"]] == [
        ("TF106", f"pinsets[0] {DOMAIN}")]
    assert pki.backup in report["findings"][0]["message"]


def test_codes_are_stable_and_documented():
    assert {c: r.severity for c, r in lint.RULES.items()} == EXPECTED_SEVERITIES
    doc = (REPO / "docs" / "lints.md").read_text()
    rows = re.findall(r"^\| (TF\d{3}) \| (\w+) \| (.+?) \| (.+?) \|$", doc, re.M)
    assert [(c, s, t, f) for c, s, t, f in rows] == [
        (r.code, r.severity, r.title, r.fix) for r in lint.RULES.values()]


# --------------------------------------------------------------------------- output


def test_json_report_has_counts_and_one_object_per_finding(pki, capsys):
    _, report = run_lint(capsys, pki, _bad_specs(pki)["TF102"])
    assert set(report) == {"file", "kind", "checked_at", "horizon_days", "chains", "strict", "allowed", "ok",
                           "errors", "warnings", "findings", "notes"}
    assert report["kind"] == "spec" and report["checked_at"] == "2026-01-01T00:00:00Z"
    assert report["horizon_days"] == 400 and (report["errors"], report["warnings"]) == (1, 0)
    assert set(report["findings"][0]) == {"code", "severity", "location", "message", "fix"}


def test_text_output_has_code_location_and_fix(pki, capsys):
    path = pki.dir / "spec.toml"
    path.write_text(_bad_specs(pki)["TF105"])
    assert cli.main(["lint", str(path), "--at", AT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"TF105 [warning] pinsets[0] {DOMAIN}: pins expire ")
    assert lines[1] == f"  fix: {lint.RULES['TF105'].fix}"
    assert lines[2] == f"{path}: 0 error(s), 1 warning(s)"


# --------------------------------------------------------------------------- bundles


def test_lint_reads_a_built_bundle(pki, capsys):
    spec = pki.dir / "single.toml"
    spec.write_text(_bad_specs(pki)["TF101"])
    assert cli.main(["bundle", "build", str(spec), "-o", str(pki.dir / "single.cbor")]) == 0
    capsys.readouterr()
    assert cli.main(["lint", str(pki.dir / "single.cbor"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "bundle" and codes(report) == ["TF101"]
    assert report["notes"] == ["the bundle was read without verifying its signatures"]


def test_lint_reads_a_signed_bundle_the_device_would_refuse(pki, capsys):
    payload = {"type": "bundle", "spec": 1, "fleet": "acme", "version": 1, "issued_at": fk.NOW,
               "expires_at": fk.NOW + 90 * fk.DAY, "anchors": [fk.compact_anchor(pki.ca)],
               "pinsets": [fk.pinset(DOMAIN, [fk.pin(pki.issuing)] * 2)], "distrust": [],
               "policy": {"user_anchors": False, "max_timestamp_age": 3600}}
    path = pki.dir / "dup.cose"
    path.write_bytes(fk.sign(fk.encode(payload, check=False), [keys.generate_key()]))
    assert cli.main(["lint", str(path), "--at", AT, "--json"]) == 1
    assert codes(json.loads(capsys.readouterr().out)) == ["TF101", "TF102"]


def test_lint_of_a_root_document_is_a_usage_error(tmp_path, capsys):
    repo = fk.Repo()
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    assert cli.main(["lint", str(tmp_path / "root.cose")]) == 2
    assert "a root document, not a bundle" in capsys.readouterr().err


# --------------------------------------------------------------------------- bundle build


def _build(pki, text, *extra):
    spec = pki.dir / "build.toml"
    spec.write_text(text)
    out = pki.dir / "built.cbor"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "bundle", "build",
                           str(spec), "-o", str(out), *map(str, extra)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr
    return proc, out


def test_bundle_build_prints_an_overridden_error_as_allowed(pki):
    proc, out = _build(pki, _bad_specs(pki)["TF101"], "--json")
    assert proc.returncode == 0 and out.exists()
    assert proc.stderr.startswith(f"allowed: TF101 [error] pinsets[0] {DOMAIN}: ")
    assert proc.stderr.rstrip().endswith(f"; fix: {lint.RULES['TF101'].fix}")
    assert [f["code"] for f in json.loads(proc.stdout)["lint"]] == ["TF101"]


def test_bundle_build_strict_fails_with_exit_1_on_a_finding_and_writes_nothing(pki):
    proc, out = _build(pki, _bad_specs(pki)["TF105"], "--strict")
    assert proc.returncode == 1 and not out.exists()
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"error: TF105 [warning] pinsets[0] {DOMAIN}: ")
    assert lines[-1] == "trustfleet: refused: 1 lint finding(s) with --strict; nothing written"


@pytest.mark.parametrize("code", ["TF106", "TF110"])  # TF107: the build uses certifi's roots
def test_bundle_build_refuses_an_error_level_finding_and_writes_nothing(pki, code):
    proc, out = _build(pki, _bad_specs(pki)[code])
    assert proc.returncode == 1 and not out.exists()
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"error: {code} [error] ")
    assert lines[-1] == (f"trustfleet: refused: 1 lint error(s); nothing written (fix the spec, or "
                         f"--allow {code} to build it anyway; docs/lints.md)")


@pytest.mark.parametrize("code", ["TF106", "TF110"])
def test_bundle_build_allow_names_the_rule_it_lets_pass(pki, code):
    proc, out = _build(pki, _bad_specs(pki)[code], "--allow", code.lower(), "--json")
    assert proc.returncode == 0 and out.exists(), proc.stderr
    assert proc.stderr.startswith(f"allowed: {code} [error] ")
    assert [f["code"] for f in json.loads(proc.stdout)["lint"]] == [code]


def test_bundle_build_allow_of_another_rule_still_refuses(pki):
    proc, out = _build(pki, _bad_specs(pki)["TF106"], "--allow", "TF110")
    assert proc.returncode == 1 and not out.exists()


def test_bundle_build_allow_of_an_unknown_rule_is_a_usage_error(pki):
    proc, out = _build(pki, _bad_specs(pki)["TF106"], "--allow", "TF999")
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.startswith("trustfleet: error: --allow TF999: no such lint rule; rules: TF101, ")


def test_bundle_build_keeps_the_explicit_single_pin_override_as_allowed(pki):
    proc, out = _build(pki, _bad_specs(pki)["TF101"])
    assert proc.returncode == 0 and out.exists()
    assert proc.stderr.startswith("allowed: TF101 [error] ") and "allow_single_pin" in proc.stderr


def test_bundle_build_strict_passes_a_clean_spec(pki):
    proc, out = _build(pki, spec_text(pki), "--strict", "--json")
    assert proc.returncode == 0 and out.exists() and proc.stderr == ""
    assert json.loads(proc.stdout)["lint"] == []


def test_bundle_build_takes_chains_and_horizon(pki):
    proc, _ = _build(pki, spec_text(pki, chains=""), "--strict", "--chain", pki.dir / "chain.pem")
    assert proc.returncode == 1 and "TF106" in proc.stderr
    proc, _ = _build(pki, spec_text(pki), "--strict", "--horizon", "30d")
    assert proc.returncode == 1 and "TF105" in proc.stderr


# --------------------------------------------------------------------------- the engine


def test_lint_payload_is_a_pure_function_of_its_inputs(pki):
    payload = {"issued_at": fk.NOW, "expires_at": fk.NOW + 90 * fk.DAY,
               "anchors": [fk.full_anchor(pki.ca), fk.compact_anchor(pki.ca)],
               "pinsets": [fk.pinset(DOMAIN, [fk.pin(pki.issuing), fk.pin(pki.backup_key)])],
               "distrust": []}
    chain = lint.Chain("chain", x509util.load_pin_subject(pki.dir / "chain.pem"))
    findings = lint.lint_payload(payload, now=fk.NOW, chains=[chain])
    assert [(f.code, f.location) for f in findings] == [
        ("TF106", f"pinsets[0] {DOMAIN}"), ("TF109", "anchors[1] Lint Root CA")]
    assert findings == lint.lint_payload(payload, now=fk.NOW, chains=[chain])
    later = lint.lint_payload(payload, now=fk.NOW + 200 * fk.DAY)
    assert [f.code for f in later] == ["TF104", "TF109"]


def test_wildcard_leaf_concerns_a_pinset_for_a_name_below_it(pki):
    key = keys.generate_key()
    wildcard = fk.make_cert("wild", key, pki.issuing, None, ca=False, dns="*.lint.example")
    chain = lint.Chain("wild", [x509util.PinSubject("wild", key.public_key(), wildcard)])
    assert lint.chain_concerns(chain, {"domain": DOMAIN, "subdomains": False, "pins": []})
    assert not lint.chain_concerns(chain, {"domain": "a.b.lint.example", "subdomains": False,
                                           "pins": []})
    assert not lint.chain_concerns(chain, {"domain": "lint.example", "subdomains": False,
                                           "pins": []})


def test_classify_needs_a_verified_signature_not_just_a_name(pki):
    roots = lint.PublicRoots(x509util.load_certificates(pki.dir / "public-roots.pem"))
    subjects = x509util.load_pin_subject(pki.dir / "public-chain.pem")
    assert [o["owner"] for o in lint.classify(subjects, roots)] == ["yours", "public"]
    assert isinstance(subjects[1].cert, x509.Certificate)
    impostor = fk.make_cert("Stand-in Public Root", keys.generate_key())
    fake_roots = lint.PublicRoots([impostor])
    assert [o["owner"] for o in lint.classify(subjects, fake_roots)] == ["yours", "yours"]


def test_lint_allow_passes_an_error_and_says_which(capsys, pki):
    text = _bad_specs(pki)["TF106"]
    code, out = run_lint(capsys, pki, text)
    assert code == 1 and not out["ok"]
    code, out = run_lint(capsys, pki, text, "--allow", "TF106")
    assert code == 0 and out["ok"] and out["allowed"] == ["TF106"]
    assert [f["code"] for f in out["findings"]] == ["TF106"]  # still reported
