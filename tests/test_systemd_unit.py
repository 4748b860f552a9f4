"""The systemd units: the Raspberry Pi agent's (tools/systemd/trustfleet-agent.service) and
`trustfleet serve`'s (tools/systemd/trustfleet-serve.service).

The unit is parsed here (a small systemd-style parser: repeated keys add
values, an empty assignment resets the list) and its hardening checked key
by key; `systemd-analyze verify` checks it as systemd would (Debian's systemd
package has it, and it works in a container where systemd does not run;
without it the test skips, or fails under CI=true).
"""

from __future__ import annotations

import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from support.environment import require_tool
from trustfleet_pi.cli import build_parser
from trustfleet_server.cli import build_parser as server_parser

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "tools" / "systemd" / "trustfleet-agent.service"
# Keys systemd < 254 does not know; it ignores them with a warning (documented in the unit).
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}: like systemd, a repeated key adds, an empty value resets."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        assert "=" in line and not line.endswith("\\"), f"not a key=value line: {line!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        values = section.setdefault(key, [])
        if value:
            values.append(value)
        else:
            values.clear()
            values.append("")
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def test_unit_starts_the_agent_from_its_config(unit):
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start == "/usr/bin/env trustfleet-agent run --config /etc/trustfleet/agent.toml"
    argv = shlex.split(exec_start)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[1] in scripts
    args = build_parser().parse_args(argv[2:])
    assert (args.command, str(args.config)) == ("run", "/etc/trustfleet/agent.toml")
    assert "network-online.target" in unit["Unit"]["Wants"][0]
    assert "network-online.target" in unit["Unit"]["After"][0]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_restarts_on_failure_with_backoff_but_not_on_a_config_error(unit):
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec") == "5s"
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # usage/config: see cli.py
    assert one(unit, "Service", "RestartSteps") and one(unit, "Service", "RestartMaxDelaySec")
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"


def test_unit_is_hardened(unit):
    s = unit["Service"]
    assert one(unit, "Service", "User") == "trustfleet" or one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "StateDirectory") == "trustfleet"
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality", "RestrictRealtime"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""      # no capabilities at all
    assert one(unit, "Service", "AmbientCapabilities") == ""
    assert set(" ".join(s["RestrictAddressFamilies"]).split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert all(v.startswith("~") for v in s["SystemCallFilter"][1:])  # only narrowing after it
    assert one(unit, "Service", "UMask") == "0077"
    assert "ReadWritePaths" not in s  # nothing writable beyond the state directory by default


def verify_unit(unit: Path, cwd: Path) -> None:
    """systemd-analyze verify passes, apart from keys newer than this machine's systemd."""
    exe = require_tool("systemd-analyze", "apt-get install systemd")
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=cwd)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    unexpected = [ln for ln in lines
                  if not any(f"Unknown key '{k}'" in ln or f"Unknown key name '{k}'" in ln
                             for k in NEWER_KEYS)]
    assert proc.returncode == 0 and unexpected == [], lines


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    verify_unit(UNIT, tmp_path)


# --------------------------------------------------------------------------- trustfleet serve

SERVE_UNIT = REPO / "tools" / "systemd" / "trustfleet-serve.service"


@pytest.fixture(scope="module")
def serve_unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(SERVE_UNIT.read_text())


def test_serve_unit_runs_serve_with_its_options_from_the_environment_file(serve_unit):
    exec_start = one(serve_unit, "Service", "ExecStart")
    env = {"BROKER": "mqtts://broker:8883", "FLEET": "acme", "DB": "postgresql://trustfleet@db/fleet",
           "SERVE_OPTIONS": "--timestamp-key /etc/trustfleet/serve/timestamp.pem --client-id w1"}
    assert one(serve_unit, "Service", "EnvironmentFile") == "/etc/trustfleet/serve.env"
    # systemd: ${X} is one word, $X splits on spaces.
    argv = []
    for word in shlex.split(exec_start):
        if word.startswith("${") and word.endswith("}"):
            argv.append(env[word[2:-1]])
        elif word.startswith("$"):
            argv.extend(env[word[1:]].split())
        else:
            argv.append(word)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == "/usr/bin/env" and argv[1] in scripts
    args = server_parser().parse_args(argv[2:])
    assert (args.fleet, args.db, args.client_id) == ("acme", env["DB"], "w1")
    assert not args.once and args.duration is None  # long-running
    assert "network-online.target" in serve_unit["Unit"]["After"][0]
    assert one(serve_unit, "Install", "WantedBy") == "multi-user.target"


def test_serve_unit_always_comes_back_with_a_growing_delay(serve_unit):
    assert one(serve_unit, "Service", "Restart") == "on-failure"
    assert "RestartPreventExitStatus" not in serve_unit["Service"]  # exit 2 may be a store not up yet
    assert one(serve_unit, "Service", "RestartSec") == "5s"
    assert one(serve_unit, "Service", "RestartSteps") and one(serve_unit, "Service", "RestartMaxDelaySec")
    assert one(serve_unit, "Unit", "StartLimitIntervalSec") == "0"
    assert one(serve_unit, "Service", "KillSignal") == "SIGTERM"


def test_serve_unit_is_hardened(serve_unit):
    s = serve_unit["Service"]
    assert one(serve_unit, "Service", "User") == "trustfleet-serve"
    assert one(serve_unit, "Service", "StateDirectory") == "trustfleet-serve"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictNamespaces",
                "RestrictSUIDSGID", "LockPersonality", "RestrictRealtime"):
        assert one(serve_unit, "Service", key) == "yes", key
    assert one(serve_unit, "Service", "ProtectSystem") == "strict"
    assert one(serve_unit, "Service", "CapabilityBoundingSet") == ""
    assert set(" ".join(s["RestrictAddressFamilies"]).split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one(serve_unit, "Service", "UMask") == "0077"


def test_systemd_analyze_verify_accepts_the_serve_unit(tmp_path):
    verify_unit(SERVE_UNIT, tmp_path)
