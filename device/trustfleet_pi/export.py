"""Exports of the active store for other software, and the post-commit hook.

What it writes, each file atomically (temp file, fsync, rename, fsync of
the directory), so a reader sees the old file or the new one:
- a PEM bundle of the anchors (for SSL_CERT_FILE, curl --cacert, requests'
  REQUESTS_CA_BUNDLE). Only whole-certificate anchors can be exported: a
  compact anchor (subject + SPKI) holds no certificate. Anchors whose key
  the bundle distrusts are left out, since evaluate() would refuse them.
  When no certificate is left, the PEM file is NOT written (an empty CA
  file makes every TLS client that reads it fail): ExportResult.pem_refused
  says why, and an earlier file at that path stays as it was.
  Enterprise anchors are included only when the store uses them (managed
  device, bundle policy allows). The PEM file carries no pins.
- the pins as JSON: {"version", "pinsets": [{"domain",
  "include_subdomains", "pins": ["sha256/<b64>"], "expires", "mode"}],
  "distrust": ["sha256/<b64>"]}, times as ISO 8601 UTC.

The post-commit hook (argv list, no shell) runs after the exports with
TRUSTFLEET_VERSION, TRUSTFLEET_STATE, TRUSTFLEET_PEM and TRUSTFLEET_PINS
in its environment (empty when that export is not configured), in the
config file's directory, with a timeout. Its failure is reported, never reverts the install: the store
already proved itself in the health check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from trustfleet_device import trust, x509
from trustfleet_device._cpython.files import write_atomic
from trustfleet_pi.tls import in_memory

FULL_FORM_HINT = 'use form = "full" in the bundle spec for anchors that must be exported'
PEM_NAME = "ca-bundle.pem"  # the file written into a folder given as the PEM target
PINS_NAME = "pins.json"
_HOOK_OUTPUT_SHOWN = 300


@dataclass
class PemExport:
    """What a PEM export holds: the text and what was left out, and why."""

    text: str
    certificates: int = 0
    compact: list[str] = field(default_factory=list)      # labels of compact anchors
    distrusted: list[str] = field(default_factory=list)   # labels of distrusted anchors

    def notes(self) -> list[str]:
        """One line per kind of anchor left out (for stderr)."""
        out = []
        if self.compact:
            out.append(f"{len(self.compact)} compact anchor(s) hold no certificate and are not in "
                       f"the PEM file; {FULL_FORM_HINT}")
        if self.distrusted:
            out.append(f"{len(self.distrusted)} anchor(s) left out: their key is distrusted by the "
                       "bundle")
        return out

    def refusal(self) -> str | None:
        """Why no PEM file can be written (no certificate left), else None."""
        if self.certificates:
            return None
        if self.compact:
            return (f"{len(self.compact)} compact anchor(s) cannot be written as PEM: a compact "
                    "anchor is a subject and a key, not a certificate; for whole certificates "
                    'build the bundle with form = "full" in its spec\'s [[anchors]]')
        if self.distrusted:
            return f"every anchor's key is distrusted by the bundle ({len(self.distrusted)})"
        return "the bundle has no anchor to write"


def target(path: str | os.PathLike[str] | None, default_name: str) -> Path | None:
    """Where to write: a folder (an existing one, or a path ending in "/") means the default
    file name inside it."""
    if path is None:
        return None
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return Path(text) / default_name
    return Path(text)


def pem_export(store: trust.TrustStore) -> PemExport:
    """The store's whole-certificate anchors as PEM text, each under a comment naming it."""
    store = in_memory(store)
    distrust = {bytes(d) for d in store.bundle.distrust}
    out = PemExport(text="")
    parts = [f"# trustfleet bundle v{store.bundle.version} ({store.bundle.fleet}): "
             "anchors for TLS server authentication; pins are not enforced by this file\n"]
    for a in store.anchors:
        if a.spki_sha256 in distrust:
            out.distrusted.append(a.label)
            continue
        if a.der is None:
            out.compact.append(a.label)
            continue
        kind = "enterprise anchor" if a.user else "anchor"
        parts.append(f"\n# {kind}: {a.label}\n# pin: {trust.pin_text(a.spki_sha256)}\n")
        parts.append(trust.pem(a.der))
        out.certificates += 1
    out.text = "".join(parts)
    return out


def pins_document(store: trust.TrustStore) -> dict:
    """The pins JSON document for the store's bundle."""
    b = store.bundle
    return {
        "version": b.version,
        "pinsets": [{
            "domain": ps.domain,
            "include_subdomains": ps.subdomains,
            "pins": [trust.pin_text(p) for p in ps.pins],
            "expires": x509.format_time(ps.expires),
            "mode": ps.mode,
        } for ps in b.pinsets],
        "distrust": [trust.pin_text(bytes(d)) for d in b.distrust],
    }


@dataclass
class ExportResult:
    pem: PemExport | None = None
    pem_path: Path | None = None
    pins_path: Path | None = None
    pem_refused: str | None = None  # why the PEM file was not written (no certificate to write)

    @property
    def pem_written(self) -> bool:
        return self.pem is not None and self.pem_refused is None


def export(store: trust.TrustStore, pem_path: str | os.PathLike[str] | None,
           pins_path: str | os.PathLike[str] | None) -> ExportResult:
    """Write the configured exports (a folder as a path: the default name in it); the pins
    are written even when the PEM file is refused. Raises: OSError."""
    result = ExportResult()
    if pem_path is not None:
        result.pem = pem_export(store)
        result.pem_path = target(pem_path, PEM_NAME)
        result.pem_refused = result.pem.refusal()
    if pins_path is not None:
        result.pins_path = target(pins_path, PINS_NAME)
        text = json.dumps(pins_document(store), indent=2) + "\n"
        write_atomic(result.pins_path, text.encode("ascii"))
    if result.pem_path is not None and result.pem is not None and result.pem_refused is None:
        write_atomic(result.pem_path, result.pem.text.encode("ascii"))
    return result


@dataclass
class HookResult:
    ok: bool
    detail: str
    returncode: int | None = None


def run_hook(command: list[str], *, version: int, state_dir: str | os.PathLike[str],
             pem_path: str | os.PathLike[str] | None, pins_path: str | os.PathLike[str] | None,
             timeout: float, cwd: str | os.PathLike[str] | None = None) -> HookResult:
    """Run the post-commit hook (in cwd); never raises for the hook's own failure."""
    env = dict(os.environ)
    env.update({
        "TRUSTFLEET_VERSION": str(version),
        "TRUSTFLEET_STATE": os.fspath(state_dir),
        "TRUSTFLEET_PEM": os.fspath(pem_path) if pem_path is not None else "",
        "TRUSTFLEET_PINS": os.fspath(pins_path) if pins_path is not None else "",
    })
    try:
        # Its own session, so a timeout kills the hook's children too (they
        # would otherwise keep its output pipes, and us, waiting).
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, cwd=cwd)
    except OSError as exc:
        return HookResult(False, f"post-commit hook {command[0]} could not start: {exc}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return HookResult(False, f"post-commit hook {command[0]} gave no answer within {timeout:g} s "
                                 "and was killed")
    if proc.returncode == 0:
        return HookResult(True, f"post-commit hook {command[0]} done", 0)
    said = (err or out).decode("utf-8", "replace").strip()
    said = said.splitlines()[-1][:_HOOK_OUTPUT_SHOWN] if said else "no output"
    return HookResult(False, f"post-commit hook {command[0]} failed with exit {proc.returncode}: "
                             f"{said}", proc.returncode)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.communicate()
