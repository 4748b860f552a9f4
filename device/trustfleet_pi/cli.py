"""`trustfleet-agent`: the CPython device agent (Raspberry Pi).

Exit codes (the same table as `trustfleet`):
  0    done (check: the server is accepted; run: stopped by SIGTERM or SIGINT)
  1    refused, with the reason on one line: the document was refused (also an
       empty file or another kind of document), the install was reverted, check:
       the server is rejected, export: nothing could be written as PEM, run: the
       device failed while running (e.g. its state directory became unwritable)
  2    usage error: a missing or unreadable file, a folder given as a file, an
       unusable state directory or config file (run: also no [mqtt] table, or an
       mqtts:// broker and no installed bundle to check it with), check: no TLS
       connection could be made
  130  interrupted (Ctrl-C) while it waited (a health check, a TLS connection)
Errors are one line on stderr: "trustfleet-agent: error: ..." (2) or
"trustfleet-agent: refused: ..." (1); `--json` output goes to stdout only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import trustfleet_device
from trustfleet_device import cbor, cose, policy, trust, x509
from trustfleet_device._cpython import jsonout
from trustfleet_device._cpython.files import read_capped
from trustfleet_device.agent import Config
from trustfleet_device.documents import Bundle

try:  # the documented maximum (issue 12); the same value where documents.py predates it
    from trustfleet_device.documents import MAX_VERSION
except ImportError:  # pragma: no cover
    MAX_VERSION = 2**30 - 1
from trustfleet_device.errors import BundleError, DeviceError
from trustfleet_device.limits import DEFAULT
from trustfleet_pi import export as exports
from trustfleet_pi import tls
from trustfleet_pi.config import ConfigError, MqttConfig, PiConfig, load_config
from trustfleet_pi.local import LocalDevice
from trustfleet_pi.oserrors import plain_oserror, plain_reason

DEFAULT_STATE = Path("/var/lib/trustfleet")

EPILOG = """\
examples:
  trustfleet-agent init --state /var/lib/trustfleet --root root.cose --bundle factory.cose
  trustfleet-agent init --config /etc/trustfleet/agent.toml --root root.cose
  trustfleet-agent install --state /var/lib/trustfleet bundle-v8.cose
  trustfleet-agent install --config /etc/trustfleet/agent.toml bundle-v8.cose
  trustfleet-agent install --state /var/lib/trustfleet --endpoint api.acme.example:443 bundle-v8.cose
  trustfleet-agent check api.acme.example                 # exit 0 accepted, 1 rejected
  trustfleet-agent check 10.0.0.7:8883 --servername mqtt.acme.example --json
  trustfleet-agent export --pem /etc/trustfleet/ca.pem --pins /etc/trustfleet/pins.json
  trustfleet-agent status --state /var/lib/trustfleet --json
  trustfleet-agent clear-bad 8 --state /var/lib/trustfleet   # v8 may be installed again
  trustfleet-agent run --config /etc/trustfleet/agent.toml   # the service (systemd)

agent.toml (every key optional; unknown keys are refused):
  state_dir = "/var/lib/trustfleet"
  device_id = "pi-0042"
  fleet = "acme-sensors"
  managed = false                        # true: enterprise anchors, if the bundle allows them
  user_anchors = ["enterprise-root.pem"]
  firmware_time = 2026-01-01T00:00:00Z
  [health]
  endpoints = ["api.acme.example:443"]   # TLS with the new store before it is committed
  timeout = 10
  on_unreachable = "revert"              # or "keep": no endpoint answered by the deadline
  [export]
  pem = "/etc/trustfleet/ca-bundle.pem"  # for SSL_CERT_FILE / curl --cacert
  pins = "/etc/trustfleet/pins.json"
  [post_commit]
  command = ["systemctl", "try-reload-or-restart", "acme-app"]
  timeout = 30
  [mqtt]                                 # for `run`
  broker = "mqtts://mqtt.acme.example:8883"   # a cluster: brokers = ["mqtts://n1...", "mqtts://n2..."]
  username = "pi-0042"
  password_file = "/etc/trustfleet/mqtt-password"
  keepalive = 60
  protocol = "3.1.1"                     # or "5"
  group = "canary"
"""

INIT_EPILOG = """\
examples:
  trustfleet-agent init --state /var/lib/trustfleet --root root.cose
  trustfleet-agent init --config /etc/trustfleet/agent.toml --root root.cose --bundle factory.cose

With --config, the root must belong to its fleet, and a factory bundle goes
through the same health check, exports and hook as `install`.
"""

INSTALL_EPILOG = """\
The bundle is verified, written to the inactive slot and switched to; then
every endpoint (--endpoint, else [health] endpoints in --config) must be
reached over TLS with the NEW store. A TLS verification failure (chain,
name, pins, distrust) switches back and marks the version bad: it is never
retried (`clear-bad` undoes that). An endpoint that cannot be reached at
all (DNS, refused, timeout) decides nothing: the check is retried, one
line per retry on stderr, until the trial deadline (--health-deadline);
then the device switches back WITHOUT marking the version bad. After a
commit the [export] files are rewritten and the [post_commit] command
runs; their failures are reported, not reverted.
Exit 0 installed (or that same bundle is installed already), 1 refused or reverted (reason on stderr), 2 usage.

examples:
  trustfleet-agent install --state /var/lib/trustfleet bundle-v8.cose
  trustfleet-agent install --state /var/lib/trustfleet --endpoint api.acme.example:443 bundle-v8.cose
  trustfleet-agent install --config /etc/trustfleet/agent.toml --json bundle-v8.cose
  trustfleet-agent install --state /var/lib/trustfleet --endpoint 10.0.0.7:443 bundle-v8.cose
"""

CLEAR_BAD_EPILOG = """\
A version reverted because its health check failed is refused from then
on. Once the cause is fixed (a server's certificate, a wrong endpoint), an
operator with access to the device's state directory clears the mark and
the version can be installed again. Nothing else changes.
Exit 0 cleared, 2 the version is not marked bad (or usage).

examples:
  trustfleet-agent clear-bad 8 --state /var/lib/trustfleet
  trustfleet-agent clear-bad 8 --config /etc/trustfleet/agent.toml --json
"""

CHECK_EPILOG = """\
The connection is made to HOST:PORT (default port 443); the certificate is
checked for --servername (default HOST; an IP address is matched against
the certificate's IP address SANs) with the installed store at the device's trusted time: path to an anchor,
hostname, distrust list, pins (past their expiry: CA validation only).
Exit 0 accept or accept-fail-open, 1 reject, 2 no TLS connection or usage.

examples:
  trustfleet-agent check api.acme.example
  trustfleet-agent check 127.0.0.1:8443 --servername api.acme.example --json
"""

RUN_EPILOG = """\
Boots the device from the state directory (a trial left by a crash is
reverted first), connects to [mqtt] broker (or the first of brokers that
answers, moving to the next node when one is lost), subscribes to the fleet's root,
bundle (fleet, group, bucket) and timestamp topics, and installs what
verifies, with the [health] check, [export] files and [post_commit] hook of
`install`. It publishes its status (retained; last will "offline") and
reports, reconnects with capped, jittered exponential backoff, and runs
until SIGTERM or SIGINT. One line per event on stderr.
Exit 0 stopped by a signal, 1 the device failed while running, 2 usage or
config error (nothing to connect to, not initialised, mqtts:// without an
installed bundle).

examples:
  trustfleet-agent run --config /etc/trustfleet/agent.toml
  systemctl start trustfleet-agent     # tools/systemd/trustfleet-agent.service
"""

EXPORT_EPILOG = """\
Writes the active store for software that reads its own trust files. The
PEM bundle holds whole-certificate anchors only: a compact anchor is a
subject and a key, not a certificate (build with form = "full" for anchors
that must be exported). It enforces no pins; the pins JSON lists them.
Both files are replaced atomically. `install` rewrites them after every
commit when [export] is configured.

examples:
  trustfleet-agent export --state /var/lib/trustfleet --pem ca.pem --pins pins.json
  SSL_CERT_FILE=ca.pem curl https://api.acme.example/
"""


def _read(path: Path) -> bytes:
    return read_capped(path, DEFAULT.max_document)


def _read_document(path: Path, kind: str) -> bytes:
    """A signed document's bytes, with one clear line for what is plainly not one.

    Raises: OSError (a missing file, a folder), BundleError (empty, PEM or text, or a
    signed trustfleet document of another kind: a root given as a bundle).
    """
    raw = _read(path)
    if not raw.strip():
        raise BundleError(f"{path}: the file is empty; expected a signed {kind} (.cose)")
    if raw.lstrip().startswith(b"-----BEGIN"):
        raise BundleError(f"{path}: is a PEM file (a key or certificate), not a signed {kind} "
                          "(.cose)")
    other = _kind_of(raw)
    if other is not None and other != kind:
        raise BundleError(f"{path}: is a signed {other}, not a {kind}")
    return raw


def _kind_of(raw: bytes) -> str | None:
    """The "type" of a trustfleet COSE document (root, bundle, timestamp), read unverified;
    None when that cannot be told (the verifier then says why it refuses)."""
    try:
        payload = cose.parse(raw, DEFAULT).unverified_payload
        value = cbor.decode(payload, DEFAULT) if payload is not None else None
    except (BundleError, ValueError, TypeError, IndexError):
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if kind in ("root", "bundle", "timestamp") else None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def _endpoint(text: str) -> str:
    try:
        tls.parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _version(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 < value <= MAX_VERSION:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bundle version from 1 to {MAX_VERSION}")
    return value


def _package_version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    try:
        return importlib.metadata.version("trustfleet")
    except importlib.metadata.PackageNotFoundError:
        return trustfleet_device.VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = jsonout.JsonErrorParser(prog="trustfleet-agent", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}",
                        help="print the version of trustfleet-agent and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, helptext: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=helptext, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("init", "set up the factory state: trusted root, optional first bundle",
                INIT_EPILOG)
    p.add_argument("--state", type=Path, help="state directory, created 0700 (default: state_dir "
                   "from --config)")
    p.add_argument("--config", type=Path, help="agent.toml: fleet, device id, endpoints, exports")
    p.add_argument("--root", type=Path, required=True, help="the fleet's signed root document")
    p.add_argument("--bundle", type=Path, help="factory bundle to install right away")
    p.add_argument("--force", action="store_true", help="re-initialise an existing state directory")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the state directory, root version and install")
    p.set_defaults(func=cmd_init)

    p = command("install", "install a signed bundle from a file (same path as network delivery)",
                INSTALL_EPILOG)
    p.add_argument("--state", type=Path, help="state directory (default: state_dir from --config)")
    p.add_argument("--config", type=Path, help="agent.toml: endpoints, exports, post-commit hook")
    p.add_argument("--endpoint", action="append", default=[], metavar="HOST:PORT", type=_endpoint,
                   help="health check: reach this server over TLS with the new store before "
                        "committing (repeatable; replaces [health] endpoints)")
    p.add_argument("--health-timeout", type=_seconds, metavar="SECONDS",
                   help="per-endpoint timeout (default: [health] timeout, else 10)")
    p.add_argument("--health-deadline", type=_seconds, metavar="SECONDS",
                   help="how long the trial may wait for reachable endpoints before it is "
                        "reverted (default: every endpoint's timeout + 30, at least 120)")
    p.add_argument("file", type=Path, metavar="BUNDLE", help="the signed bundle (.cose) to install")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: installed, version, reverted, health, status")
    p.set_defaults(func=cmd_install)

    p = command("status", "show the installed store and its freshness")
    p.add_argument("--state", type=Path, required=True, help="state directory")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.set_defaults(func=cmd_status)

    p = command("clear-bad", "let a version reverted as bad be installed again", CLEAR_BAD_EPILOG)
    p.add_argument("version", type=_version, metavar="VERSION",
                   help="the bundle version to clear (see `status`: refused as bad)")
    p.add_argument("--state", type=Path, help="state directory (default: state_dir from --config)")
    p.add_argument("--config", type=Path, help="agent.toml (state_dir)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: cleared, detail, bad, status")
    p.set_defaults(func=cmd_clear_bad)

    p = command("check", "connect to a TLS server and judge it with the installed store",
                CHECK_EPILOG)
    p.add_argument("target", metavar="HOST[:PORT]",
                   help="the TLS server to connect to (default port 443)")
    p.add_argument("--state", type=Path,
                   help=f"state directory (default: state_dir from --config, else {DEFAULT_STATE})")
    p.add_argument("--config", type=Path, help="agent.toml (managed, user_anchors, state_dir)")
    p.add_argument("--servername", metavar="NAME", help="name to send (SNI) and check (default: HOST)")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="for the TCP connection and the handshake (default 10)")
    p.add_argument("--json", action="store_true",
                   help="print the verdict, path, pins and timing as one JSON object")
    p.set_defaults(func=cmd_check)

    p = command("run", "the long-running agent: receive bundles over MQTT until SIGTERM",
                RUN_EPILOG)
    p.add_argument("--config", type=Path, required=True,
                   help="agent.toml with fleet, device_id and an [mqtt] table")
    p.add_argument("--state", type=Path, help="state directory (default: state_dir from --config)")
    p.set_defaults(func=cmd_run)

    p = command("export", "write the active store as a PEM bundle and/or pins JSON", EXPORT_EPILOG)
    p.add_argument("--state", type=Path,
                   help=f"state directory (default: state_dir from --config, else {DEFAULT_STATE})")
    p.add_argument("--config", type=Path, help="agent.toml ([export] gives the default paths)")
    p.add_argument("--pem", metavar="FILE",
                   help=f"PEM bundle to write (a folder: {exports.PEM_NAME} in it)")
    p.add_argument("--pins", metavar="FILE",
                   help=f"pins JSON to write (a folder: {exports.PINS_NAME} in it)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the files written, their paths and counts")
    p.set_defaults(func=cmd_export)

    p = command("completion", "print the bash or zsh completion script, generated from this parser by "
                "shtab: source <(trustfleet-agent completion bash)")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell the script is for: bash or zsh")
    p.set_defaults(func=lambda args: print(importlib.import_module("shtab").complete(parser, shell=args.shell),
                                           end=""))
    return parser


# --------------------------------------------------------------------------- helpers


class UsageError(Exception):
    """A command line that cannot be carried out (exit 2)."""


def _config(args: argparse.Namespace) -> PiConfig:
    return load_config(args.config) if getattr(args, "config", None) else PiConfig()


def _state(args: argparse.Namespace, cfg: PiConfig, default: Path | None = None) -> Path:
    state = args.state or cfg.state_dir or default
    if state is None:
        raise UsageError("--state is required (or state_dir in --config)")
    return state


def _initialised(state: Path) -> Path:
    """`state` as an initialised state directory, else one clear line (exit 2)."""
    if not state.exists():
        raise UsageError(f"{state}: no such state directory; set one up with "
                         f"`trustfleet-agent init --state {state} --root root.cose`")
    if not state.is_dir():
        raise UsageError(f"{state}: is a file, not a state directory")
    if not (state / "root.cose").exists():
        raise UsageError(f"{state}: not initialised (no root.cose); run `trustfleet-agent init "
                         f"--state {state} --root root.cose` first")
    return state


def _core_config(args: argparse.Namespace, cfg: PiConfig) -> Config:
    # Without --config, the same Config() as before config files existed.
    conf = cfg.core_config() if getattr(args, "config", None) else Config()
    deadline = getattr(args, "health_deadline", None)
    if deadline is not None:
        conf.health_timeout = max(1, math.ceil(deadline))
    return conf


def _warn(text: str) -> None:
    print(f"trustfleet-agent: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- init / install


def cmd_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _state(args, cfg)
    if state.exists() and not state.is_dir():
        raise UsageError(f"{state}: is a file, not a folder: give a state directory")
    if (state / "root.cose").exists() and not args.force:
        raise UsageError(f"{state} is already initialised (use --force)")
    conf = _core_config(args, cfg)
    root_raw = _read_document(args.root, "root")
    root = policy.load_trusted_root(root_raw, conf.limits, conf.fleet)  # before any folder is made
    bundle_raw = _read_document(args.bundle, "bundle") if args.bundle else None
    try:
        LocalDevice.initialise(state, root_raw, conf)
    except OSError as exc:
        raise UsageError(f"cannot set up the state directory: {plain_oserror(exc, state)}") from None
    out: dict[str, Any] = {"initialised": str(state), "root_version": root.version,
                           "fleet": root.fleet, "install": None}
    if not args.json:
        print(f"initialised {state}")
    code = 0
    if bundle_raw is not None:
        code, out["install"] = _install(args, cfg, state, bundle_raw, as_json=args.json)
    if args.json:
        print_json(out)
    return code


def cmd_install(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _initialised(_state(args, cfg))
    code, result = _install(args, cfg, state, _read_document(args.file, "bundle"), args.json)
    if args.json:
        print_json(result)
    return code


class _Recorder:
    """Wraps a health check to remember its last answer for the output."""

    def __init__(self, check: Any):
        self.check = check
        self.answer: tuple[bool | None, str] | None = None

    def __call__(self, bundle: Bundle, trusted_time: int) -> tuple[bool | None, str]:
        self.answer = self.check(bundle, trusted_time)
        return self.answer


def _merge(into: Any, more: Any) -> Any:
    """Add a later runner.Result to an earlier one (what the whole install did)."""
    into.refused.extend(more.refused)
    into.reports.extend(more.reports)
    if more.committed is not None:
        into.committed = more.committed
    if more.reverted is not None:
        into.reverted = more.reverted
    return into


def _settle(device: LocalDevice, outcome: Any, health: _Recorder) -> Any:
    """While the trial waits for reachable endpoints, retry when the agent says, until it is
    committed or reverted (the agent enforces the trial deadline); one stderr line per retry.

    With [health] on_unreachable = "keep" the trial outlives its deadline: stop asking then
    (`run` keeps retrying)."""
    next_retry = getattr(device, "next_health_retry", None)
    deadline = time.monotonic() + device.config.health_timeout
    keep = getattr(device.config, "on_unreachable", "revert") == "keep"
    while device.busy() and next_retry is not None:
        wait = next_retry()
        if wait is None or (keep and time.monotonic() + wait > deadline):
            break
        why = health.answer[1] if health.answer else "no answer yet"
        _warn(f"endpoint unreachable, retrying in {max(0, wait):g} s ({why})")
        time.sleep(max(0, wait))
        _merge(outcome, device.tick())
    return outcome


def _install(args: argparse.Namespace, cfg: PiConfig, state: Path, raw: bytes,
             as_json: bool) -> tuple[int, dict[str, Any]]:
    """Install `raw`; prints the text lines unless as_json. Returns (exit code, JSON result)."""
    endpoints = list(getattr(args, "endpoint", None) or cfg.endpoints)
    timeout = getattr(args, "health_timeout", None) or cfg.health_timeout
    anchors = cfg.user_anchor_ders()
    health = _Recorder(tls.health_check_for(endpoints, timeout, managed=cfg.managed,
                                            user_anchors=anchors))
    device = LocalDevice(state, _core_config(args, cfg), health)
    outcome = _settle(device, device.install(raw), health)
    marked_bad = outcome.reverted is not None and outcome.reverted in device.bad_versions()
    # The agent answers the installed bundle offered again with nothing at all (no refusal, no
    # report): installing it again is done already.
    same = (outcome.committed is None and outcome.reverted is None and not device.busy()
            and outcome.reason() is None and device.active_bundle() is not None)
    result: dict[str, Any] = {
        "installed": outcome.committed is not None, "already_installed": same,
        "version": device.active_bundle().version if same else outcome.committed,
        "reverted": outcome.reverted, "marked_bad": marked_bad, "on_trial": device.busy(),
        "reason": outcome.reason(), "status": device.status()}
    if endpoints:
        result["health"] = health.answer[1] if health.answer else None
    notes: list[str] = []
    if outcome.committed is not None:
        result.update(_after_commit(device, cfg, anchors, state, outcome.committed, notes))
    if as_json:
        pass  # the caller prints the JSON
    elif same:
        print(f"bundle v{result['version']} is already installed (the same bundle): nothing to do")
    elif result["installed"]:
        print(f"installed bundle v{outcome.committed}")
        if endpoints and health.answer:
            print(f"  health check: {health.answer[1]}")
    elif outcome.reverted is not None and not marked_bad:
        _warn(f"reverted: endpoints unreachable; v{outcome.reverted} is not marked bad "
              f"({result.get('health') or result['reason']})")
    elif result["on_trial"]:
        _warn("still on trial: endpoints unreachable; `trustfleet-agent run` keeps retrying "
              f"({result['health']})")
    else:
        _warn(f"refused: {result['reason']}")
    for note in notes:
        _warn(note)
    return (0 if result["installed"] or same else 1), result


def _after_commit(device: LocalDevice, cfg: PiConfig, anchors: list[bytes], state: Path,
                  version: int, notes: list[str]) -> dict[str, Any]:
    """Exports and the post-commit hook; failures are reported, the install stays."""
    out: dict[str, Any] = {}
    if cfg.export_pem is not None or cfg.export_pins is not None:
        try:
            store = tls.store_for(device, managed=cfg.managed, user_anchors=anchors)
            done = exports.export(store, cfg.export_pem, cfg.export_pins)
            out["export"] = _export_summary(done)
            if done.pem_refused is not None:
                notes.append(f"export: {done.pem_path} not written: {done.pem_refused} (the install "
                             "stays committed)")
            elif done.pem is not None:
                notes.extend(f"export: {n}" for n in done.pem.notes())
        except OSError as exc:
            out["export"] = {"ok": False, "error": plain_oserror(exc)}
            notes.append(f"export failed (the install stays committed): {plain_oserror(exc)}")
    if cfg.post_commit:
        hook = exports.run_hook(cfg.post_commit, version=version, state_dir=state,
                                pem_path=cfg.export_pem, pins_path=cfg.export_pins,
                                timeout=cfg.post_commit_timeout,
                                cwd=cfg.path.parent if cfg.path is not None else None)
        out["hook"] = {"ok": hook.ok, "detail": hook.detail, "returncode": hook.returncode}
        if not hook.ok:
            notes.append(f"{hook.detail} (the install stays committed)")
    return out


def _export_summary(done: exports.ExportResult) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": done.pem_refused is None}
    if done.pem is not None:
        out.update(pem=str(done.pem_path), pem_written=done.pem_written,
                   certificates=done.pem.certificates, compact_skipped=len(done.pem.compact),
                   distrusted_skipped=len(done.pem.distrusted))
        if done.pem_refused is not None:
            out["error"] = f"{done.pem_path} not written: {done.pem_refused}"
    if done.pins_path is not None:
        out["pins"] = str(done.pins_path)
    return out


# --------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    status = LocalDevice(_initialised(args.state), Config()).status()
    if args.json:
        print_json(status)
    else:
        version = "none" if status["version"] is None else f"v{status['version']}"
        print(f"state {status['state']}, bundle {version}, root v{status['root_version']}, "
              f"floor {status['floor']}")
        for reason in status["reasons"]:
            print(f"  {reason}")
        if status["bad"]:
            print(f"  refused as bad: {', '.join(map(str, status['bad']))}")
        if status["last_revert"]:
            print(f"  last revert: {status['last_revert']}")
    return 0


def cmd_clear_bad(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _initialised(_state(args, cfg))
    device = LocalDevice(state, _core_config(args, cfg))
    version = args.version
    if version not in device.bad_versions():
        raise UsageError(f"v{version} is not marked bad on {state}: nothing to clear "
                         f"(bad: {', '.join(map(str, device.bad_versions())) or 'none'})")
    clear = getattr(device, "clear_bad", None)
    if clear is None:
        raise UsageError("this device core cannot clear a bad mark (no Device.clear_bad)")
    result = clear(version)
    detail = "; ".join(r["detail"] for r in result.reports) or f"v{version} is no longer bad"
    if args.json:
        print_json({"cleared": version, "detail": detail, "bad": device.bad_versions(),
                    "status": device.status()})
    else:
        print(f"cleared the bad mark of v{version}: it may be installed again ({detail})")
    return 0


# --------------------------------------------------------------------------- check / export


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _state(args, cfg, DEFAULT_STATE)
    try:
        host, port = tls.parse_endpoint(args.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    name = args.servername or host
    if not (tls.is_ip(name) or tls.is_dns_name(name)):
        raise UsageError(f"--servername {name!r}: neither a DNS name nor an IP address")
    device = LocalDevice(_initialised(state), _core_config(args, cfg))
    ctx = tls.context_for(device, managed=cfg.managed, user_anchors=cfg.user_anchor_ders())
    started = time.perf_counter()
    try:
        decision = tls.probe(ctx, host, port, args.timeout, name)
    except OSError as exc:
        _warn(f"error: no TLS connection to {host}:{port}: {plain_reason(exc)}")
        return 2
    elapsed_ms = (time.perf_counter() - started) * 1000
    bundle = ctx.trust_store.bundle
    if args.json:
        print_json({
            "host": host, "port": port, "servername": name, "verdict": decision.verdict,
            "result": decision.result, "reason": decision.reason, "pinset": decision.pinset,
            "anchor": decision.anchor,
            "path": [{"subject": c.label(), "spki_sha256": _pin_of(c.spki),
                      "not_after": x509.format_time(c.not_after)} for c in decision.path],
            "report": decision.report is not None, "bundle_version": bundle.version,
            "openssl_verifies": ctx.openssl_verifies, "elapsed_ms": round(elapsed_ms, 1)})
    else:
        print(f"{decision.verdict} ({decision.result}) {name} at {host}:{port}, "
              f"bundle v{bundle.version}, {elapsed_ms:.0f} ms")
        print(f"  {decision.reason}")
        if decision.anchor:
            print(f"  anchor: {decision.anchor}")
        if decision.pinset:
            print(f"  pin-set: {decision.pinset}")
    return 0 if decision.accepted() else 1


def _pin_of(spki: bytes) -> str:
    return trust.pin_text(hashlib.sha256(spki).digest())


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = _state(args, cfg, DEFAULT_STATE)
    pem, pins = args.pem or cfg.export_pem, args.pins or cfg.export_pins
    if pem is None and pins is None:
        raise UsageError("nothing to export: give --pem and/or --pins (or [export] in --config)")
    device = LocalDevice(_initialised(state), _core_config(args, cfg))
    if device.active_bundle() is None:
        raise UsageError(f"{state} has no bundle installed: nothing to export (install one with "
                         "`trustfleet-agent install`)")
    store = tls.store_for(device, managed=cfg.managed, user_anchors=cfg.user_anchor_ders())
    done = exports.export(store, pem, pins)
    version = store.bundle.version
    if args.json:
        summary = _export_summary(done)
        print_json({"state": str(state), "bundle_version": version,
                    "pinsets": len(store.bundle.pinsets), **summary})
    else:
        if done.pem_written and done.pem is not None:
            print(f"wrote {done.pem_path}: {done.pem.certificates} certificate(s) from bundle "
                  f"v{version}")
        if done.pins_path is not None:
            print(f"wrote {done.pins_path}: {len(store.bundle.pinsets)} pin-set(s) from bundle "
                  f"v{version}")
    if done.pem_refused is not None:
        _warn(f"refused: {done.pem_path} not written: {done.pem_refused}")
        return 1
    if done.pem is not None:
        for note in done.pem.notes():
            _warn(f"export: {note}")
    return 0


# --------------------------------------------------------------------------- run


class _RunDevice(LocalDevice):
    """A LocalDevice that tells the caller about every commit (for exports and the hook)."""

    on_commit: Any = None

    def run(self, actions: Any) -> Any:
        result = super().run(actions)
        if result.committed is not None and self.on_commit is not None:
            self.on_commit(result.committed)
        return result


def _run_settings(cfg: PiConfig, state: Path) -> MqttConfig:
    if cfg.mqtt is None:
        raise UsageError(f"{cfg.path}: no [mqtt] table: `run` needs broker = "
                         "\"mqtt://host:port\" (or mqtts://)")
    if not cfg.fleet or not cfg.device_id:
        raise UsageError(f"{cfg.path}: `run` needs fleet and device_id")
    if not (state / "root.cose").exists():
        raise UsageError(f"{state} is not initialised: run `trustfleet-agent init` first")
    return cfg.mqtt


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from trustfleet_device.session import Session
    from trustfleet_pi import paho as mqtt

    cfg = load_config(args.config)
    state = _state(args, cfg)
    settings = _run_settings(cfg, state)
    anchors = cfg.user_anchor_ders()
    # One report queue for the device: the broker's TLS, every health check and the MQTT
    # session, which publishes what they queue on tf/<fleet>/report/<device>.
    reports = tls.SharedReports()
    health = tls.health_check_for(cfg.endpoints, cfg.health_timeout, managed=cfg.managed,
                                  user_anchors=anchors, reports=reports)
    device = _RunDevice(state, cfg.core_config(), health)
    for r in device.boot_result.reports:
        _warn(f"boot: {r['event']}: {r['detail']}")

    def committed(version: int) -> None:
        notes: list[str] = []
        _after_commit(device, cfg, anchors, state, version, notes)
        for note in notes:
            _warn(note)

    device.on_commit = committed
    context = None
    if settings.tls:
        if device.active_bundle() is None:
            raise UsageError(f"{settings.url()}: the broker's certificate is checked with the "
                             "installed trust store, and none is installed: give `init` a "
                             "factory bundle (--bundle), or use mqtt://")
        context = mqtt.broker_context(device, settings, managed=cfg.managed, user_anchors=anchors,
                                      reports=reports)
    settings.read_password()  # an unreadable password file is a config error: exit 2 now
    session = Session(device, cfg.fleet, cfg.device_id, settings.group, reports=reports)
    transport = mqtt.PahoTransport(session, settings, tls_context=context,
                                    max_packet=cfg.core_config().limits.max_document + 4096)
    stop = mqtt.StopFlag()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set(signal.Signals(signum).name)  # no I/O here: the loop logs it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = device.status()
    held = "no bundle yet" if status["version"] is None else f"bundle v{status['version']}"
    _warn(f"started: device {cfg.device_id} of {cfg.fleet}, state {status['state']}, "
          f"{held}, broker {', '.join(settings.url(n) for n in settings.all_servers())}")
    try:
        transport.run(stop)
    except DeviceError as exc:
        _warn(f"error: the device failed: {exc}")
        return 1
    _warn(f"stopped ({stop.reason})")
    return 0


# Status fields that hold epoch seconds, printed by the JSON time convention (jsonout); 0 (never)
# is null. The MQTT status message itself keeps epoch seconds (docs/topics.md).
JSON_TIME_KEYS = frozenset({"trusted_time", "last_timestamp", "time", "since", "firmware_time"})


def print_json(value: Any) -> None:
    """One JSON object on stdout, times by the convention."""
    print(json.dumps(jsonout.with_times(value, JSON_TIME_KEYS, zero_is_never=True)), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and an exit code (module docstring), and
    with --json also {"error": {"exit", "kind", "message"}} on stdout."""
    argv = list(sys.argv[1:] if argv is None else argv)
    jsonout.JsonErrorParser.json_errors = jsonout.wants_json(argv)

    def fail(code: int, message: str) -> int:
        print(f"trustfleet-agent: {'refused' if code == 1 else 'error'}: {message}", file=sys.stderr)
        if jsonout.JsonErrorParser.json_errors:
            print(jsonout.error_object(code, "refused" if code == 1 else "usage", message), flush=True)
        return code

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("trustfleet-agent: interrupted", file=sys.stderr)
        if jsonout.JsonErrorParser.json_errors:
            print(jsonout.error_object(130, "interrupted", "interrupted"), flush=True)
        return 130
    except BundleError as exc:
        return fail(1, str(exc))
    except BrokenPipeError:
        return 0
    except OSError as exc:
        return fail(2, plain_oserror(exc))
    except (DeviceError, ConfigError, UsageError) as exc:
        return fail(2, str(exc))
    except ValueError as exc:  # a caller mistake the parser could not see (e.g. an IP as name)
        return fail(2, str(exc))


if __name__ == "__main__":
    sys.exit(main())
