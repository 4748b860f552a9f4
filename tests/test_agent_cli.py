"""`trustfleet-agent` check, export, config and post-commit hook, one subprocess per command.

The TLS servers are real (loopback threads from tests/support/tlsagent.py); bundles
are real signed documents; the agent runs on the real clock, so the test
certificates are valid around today. Exit codes are the contract: check
0 accepted / 1 rejected / 2 no connection or usage; install 0 / 1 / 2. No
command may ever show a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import fleetkit as fk
from support.tlsagent import HOST, OTHER, PKI, T0, agent, make_bundle, tls_server
from trustfleet_pi.config import ConfigError, load_config


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo(now=T0)


@pytest.fixture
def server():
    with tls_server(PKI) as s:
        yield s


def init(repo: fk.Repo, tmp_path: Path, *bundles: bytes, config: Path | None = None) -> Path:
    """A state directory with the fleet's root and the given bundles installed in order."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    root = tmp_path / "root.cose"
    root.write_bytes(repo.root_raw)
    agent("init", "--state", state, "--root", root, code=0)
    for i, raw in enumerate(bundles):
        path = tmp_path / f"b{i}.cose"
        path.write_bytes(raw)
        extra = ["--config", config] if config else []
        agent("install", "--state", state, *extra, path, code=0)
    return state


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- check


def test_check_accepts_a_pinned_server_and_exits_0(repo, server, tmp_path):
    state = init(repo, tmp_path, make_bundle(repo))
    out = agent("check", f"127.0.0.1:{server.port}", "--servername", HOST, "--state", state,
                code=0).stdout
    assert out.startswith(f"accept (pin-match) {HOST} at 127.0.0.1:{server.port}, bundle v1")
    assert "matches the pins for api.example.com" in out
    data = json.loads(agent("check", f"localhost:{server.port}", "--state", state, "--json",
                            code=0).stdout)
    assert (data["verdict"], data["result"], data["pinset"]) == ("accept", "pin-match", "localhost")
    assert data["anchor"] == "TLS Test Root" and data["openssl_verifies"] is False
    assert [p["subject"] for p in data["path"]] == [HOST, "TLS Test Issuing CA"]
    assert data["path"][1]["spki_sha256"] == "sha256/" + fk.b64(PKI.pins()[0])
    assert data["elapsed_ms"] > 0


def test_check_rejects_and_exits_1(repo, server, tmp_path):
    state = init(repo, tmp_path, make_bundle(repo, pins=OTHER.pins()))
    proc = agent("check", f"localhost:{server.port}", "--state", state, code=1)
    assert proc.stdout.startswith("reject (pin-mismatch) localhost")
    data = json.loads(agent("check", f"127.0.0.1:{server.port}", "--servername", "www.example.org",
                            "--state", state, "--json", code=1).stdout)
    assert (data["verdict"], data["result"]) == ("reject", "hostname-mismatch")
    assert data["path"] == []


def test_check_without_a_connection_or_a_store_exits_2(repo, tmp_path):
    state = init(repo, tmp_path)
    proc = agent("check", "localhost:1", "--state", state, code=2)
    assert "has no bundle installed" in proc.stderr
    state = init(repo, tmp_path / "x", make_bundle(repo))
    proc = agent("check", "localhost:1", "--state", state, "--timeout", "2", code=2)
    assert "no TLS connection to localhost:1" in proc.stderr
    # An IP address is a name to check (against IP address SANs), not a usage error.
    proc = agent("check", "127.0.0.1:1", "--state", state, "--timeout", "2", code=2)
    assert "no TLS connection to 127.0.0.1:1" in proc.stderr
    assert "port from 1 to 65535" in agent("check", "h:0", "--state", state, code=2).stderr


# --------------------------------------------------------------------------- export


def test_export_writes_full_anchors_as_pem_and_the_pins_as_json(repo, tmp_path):
    raw = repo.bundle(1, anchors=[fk.full_anchor(PKI.root), fk.compact_anchor(OTHER.root, "Other"),
                                  fk.full_anchor(OTHER.inter)],
                      pinsets=[fk.pinset(HOST, PKI.pins(), expires=T0 + 100 * 86_400)],
                      distrust=[fk.pin(OTHER.inter)])
    state = init(repo, tmp_path, raw)
    pem, pins = tmp_path / "out" / "ca.pem", tmp_path / "out" / "pins.json"
    pem.parent.mkdir()
    proc = agent("export", "--state", state, "--pem", pem, "--pins", pins, code=0)
    assert f"wrote {pem}: 1 certificate(s) from bundle v1" in proc.stdout
    assert "1 compact anchor(s) hold no certificate" in proc.stderr
    assert 'form = "full"' in proc.stderr
    assert "1 anchor(s) left out: their key is distrusted" in proc.stderr
    certs = x509.load_pem_x509_certificates(pem.read_bytes())
    assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [fk.der(PKI.root)]
    doc = json.loads(pins.read_text())
    assert doc == {
        "version": 1,
        "pinsets": [{"domain": HOST, "include_subdomains": True,
                     "pins": ["sha256/" + fk.b64(p) for p in PKI.pins()],
                     "expires": _iso(T0 + 100 * 86_400), "mode": "enforce"}],
        "distrust": ["sha256/" + fk.b64(fk.pin(OTHER.inter))],
    }
    assert sorted(p.name for p in pem.parent.iterdir()) == ["ca.pem", "pins.json"]  # no temp files
    assert "nothing to export" in agent("export", "--state", state, code=2).stderr


def _iso(t: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


HOOK = """\
import json, os, sys
keys = ("TRUSTFLEET_VERSION", "TRUSTFLEET_STATE", "TRUSTFLEET_PEM", "TRUSTFLEET_PINS")
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: os.environ[k] for k in keys}) + "\\n")
print("reload failed: app not running", file=sys.stderr)
sys.exit(int(sys.argv[2]))
"""


def hook_config(tmp_path: Path, exit_code: int, endpoint: str | None = None) -> Path:
    (tmp_path / "hook.py").write_text(HOOK)
    health = f'[health]\nendpoints = ["{endpoint}"]\ntimeout = 5\n' if endpoint else ""
    return write_config(tmp_path, f"""\
fleet = "acme-sensors"
device_id = "pi-test"
state_dir = "state"
{health}
[export]
pem = "ca.pem"
pins = "pins.json"

[post_commit]
command = ["{sys.executable}", "hook.py", "hook.log", "{exit_code}"]
timeout = 20
""")


def test_install_exports_and_runs_the_hook_with_the_new_version(repo, server, tmp_path):
    cfg = hook_config(tmp_path, 0, f"localhost:{server.port}")
    root = tmp_path / "root.cose"
    root.write_bytes(repo.root_raw)
    agent("init", "--config", cfg, "--root", root, code=0)
    for v in (1, 2):
        (tmp_path / f"v{v}.cose").write_bytes(make_bundle(repo, v, form="full"))
        proc = agent("install", "--config", cfg, tmp_path / f"v{v}.cose", code=0)
        assert f"installed bundle v{v}" in proc.stdout
    calls = [json.loads(line) for line in (tmp_path / "hook.log").read_text().splitlines()]
    assert calls == [{"TRUSTFLEET_VERSION": str(v), "TRUSTFLEET_STATE": str(tmp_path / "state"),
                      "TRUSTFLEET_PEM": str(tmp_path / "ca.pem"),
                      "TRUSTFLEET_PINS": str(tmp_path / "pins.json")} for v in (1, 2)]
    assert json.loads((tmp_path / "pins.json").read_text())["version"] == 2
    assert len(x509.load_pem_x509_certificates((tmp_path / "ca.pem").read_bytes())) == 1
    # A reverted install neither exports nor runs the hook.
    (tmp_path / "v3.cose").write_bytes(make_bundle(repo, 3, pins=OTHER.pins()))
    agent("install", "--config", cfg, tmp_path / "v3.cose", code=1)
    assert len((tmp_path / "hook.log").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "pins.json").read_text())["version"] == 2


def test_a_failing_hook_is_reported_and_does_not_revert(repo, tmp_path):
    cfg = hook_config(tmp_path, 3)
    root = tmp_path / "root.cose"
    root.write_bytes(repo.root_raw)
    agent("init", "--config", cfg, "--root", root, code=0)
    (tmp_path / "v1.cose").write_bytes(make_bundle(repo, 1))
    proc = agent("install", "--config", cfg, "--json", tmp_path / "v1.cose", code=0)
    result = json.loads(proc.stdout)
    assert result["installed"] is True and result["hook"]["returncode"] == 3
    assert "failed with exit 3: reload failed: app not running" in proc.stderr
    assert "the install stays committed" in proc.stderr
    assert "1 compact anchor(s) cannot be written as PEM" in proc.stderr
    assert not (tmp_path / "ca.pem").exists(), "no empty CA file"
    status = json.loads(agent("status", "--state", tmp_path / "state", "--json", code=0).stdout)
    assert (status["version"], status["state"]) == (1, "ok")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("text", "named"), [
    ('state_dir = "s"\nendpoint = ["x:1"]\n', "unknown key 'endpoint'"),
    ('[health]\nendpoints = ["x:1"]\ntimeout_s = 3\n', "unknown key 'health.timeout_s'"),
    ('[exports]\npem = "a.pem"\n', "unknown key 'exports'"),
    ("managed = 1\n", "managed must be true or false"),
    ('[health]\nendpoints = ["x:99999"]\n', "health.endpoints: endpoint 'x:99999'"),
    ("firmware_time = 2026-01-01T00:00:00\n", "firmware_time must be a time with an offset"),
    ("state_dir = [\n", "not valid TOML"),
])
def test_config_errors_name_the_key_and_exit_2(repo, tmp_path, text, named):
    cfg = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        load_config(cfg)
    (tmp_path / "b.cose").write_bytes(b"")
    proc = agent("install", "--config", cfg, tmp_path / "b.cose", code=2)
    assert proc.stderr.startswith("trustfleet-agent: error: ")
    assert named in proc.stderr


def test_config_file_values(tmp_path):
    (tmp_path / "ent.pem").write_bytes(fk.pem(OTHER.root))
    cfg = load_config(write_config(tmp_path, """\
state_dir = "/var/lib/trustfleet"
device_id = "pi-1"
fleet = "acme-sensors"
managed = true
firmware_time = 2026-01-01T00:00:00Z
user_anchors = ["ent.pem"]
[health]
endpoints = ["a.example:443", "b.example:8883"]
timeout = 90
[post_commit]
command = ["true"]
"""))
    core = cfg.core_config()
    assert (core.fleet, core.device_id, core.managed, core.firmware_time) == (
        "acme-sensors", "pi-1", True, 1_767_225_600)
    assert core.health_timeout >= 180, "the trial deadline covers every endpoint's timeout"
    assert cfg.user_anchor_ders() == [fk.der(OTHER.root)]
    assert cfg.state_dir == Path("/var/lib/trustfleet") and cfg.post_commit_timeout == 30


def test_usage_errors_show_no_traceback(repo, tmp_path):
    assert "--state is required" in agent("install", tmp_path / "x.cose", code=2).stderr
    assert "cannot read" in agent("install", "--config", tmp_path / "none.toml",
                                  tmp_path / "x.cose", code=2).stderr
    agent("check", code=2)
    assert "no such state directory" in agent("export", "--state", tmp_path / "nope", "--pem",
                                     tmp_path / "a.pem", code=2).stderr
    for command in ("check", "export", "install", "init"):
        assert "examples:" in agent(command, "--help", code=0).stdout


def test_installing_the_installed_bundle_again_changes_nothing_and_an_older_one_is_refused(repo, tmp_path):
    v1, v2 = make_bundle(repo, 1), make_bundle(repo, 2)
    state = init(repo, tmp_path, v1, v2)
    before = (state / "state.json").read_bytes()
    again = tmp_path / "again.cose"
    again.write_bytes(v2)
    proc = agent("install", "--state", state, again, code=0)
    assert proc.stdout.strip() == "bundle v2 is already installed (the same bundle): nothing to do"
    assert proc.stderr == ""
    result = json.loads(agent("install", "--state", state, again, "--json", code=0).stdout)
    assert result["already_installed"] is True and result["installed"] is False and result["version"] == 2
    assert (state / "state.json").read_bytes() == before
    older = tmp_path / "older.cose"
    older.write_bytes(v1)
    proc = agent("install", "--state", state, older, code=1)
    assert proc.stderr.strip() == ("trustfleet-agent: refused: bundle version 1 is not newer than "
                                   "installed version 2")
    assert "None" not in proc.stderr
