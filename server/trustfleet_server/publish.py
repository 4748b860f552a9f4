"""What `trustfleet publish` (and `simulate --publish`) sends, and where: verified first.

Every document is verified against the operator's root chain exactly as a
device would before it goes to the broker: the broker is untrusted, but we
never hand it something a device would refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustfleet_device import policy, topics
from trustfleet_device.errors import PolicyError, TrustfleetError
from trustfleet_server import audit, documents
from trustfleet_server.errors import UsageError
from trustfleet_server.times import iso


def refused(path: Path, exc: TrustfleetError) -> TrustfleetError:
    """The same error type, naming the file."""
    return type(exc)(f"{path}: {exc}")


def bundle_topic(fleet: str, target: str) -> str:
    """The topic for --to fleet | group:NAME | bucket:N. Raises: UsageError."""
    if target == "fleet":
        return topics.bundle(fleet)
    kind, _, value = target.partition(":")
    if kind == "group" and value:
        try:
            return topics.group_bundle(fleet, topics.check_name(value, "group"))
        except ValueError as exc:
            raise UsageError(f"--to: {exc}") from None
    if kind == "bucket" and value.isdigit() and 0 <= int(value) < topics.BUCKETS:
        return topics.bucket_bundle(fleet, int(value))
    raise UsageError(f"--to {target!r}: expected fleet, group:NAME or bucket:N with N in 0..99")


def doc_type(path: Path, raw: bytes) -> tuple[str, Any]:
    """(type, unverified payload object) of a signed document. Raises: TrustfleetError."""
    try:
        doc = documents.read_document(raw)
    except TrustfleetError as exc:
        raise refused(path, exc) from None
    if not doc.signed:
        raise PolicyError(f"{path}: an unsigned {doc.doc_type} payload; sign it before publishing")
    return doc.doc_type, documents.KNOWN_TYPES[doc.doc_type](doc.payload)


def plan_publish(root_paths: list[Path], files: list[Path], target: str, now: int) -> list[dict]:
    """Verify every file and say where it goes; nothing is published when one fails.

    Raises:
        TrustfleetError: a document does not verify (exit 1).
        UsageError: a bad --to, or two bundles for one topic.
    """
    chain = [documents.read_file(p) for p in root_paths]
    root = documents.load_root_chain(root_paths)
    known = set(chain)
    loaded = []
    for path in files:
        raw = documents.read_file(path)
        kind, claimed = doc_type(path, raw)
        loaded.append((path, raw, kind, claimed))
    # Roots first, in version order, so a bundle signed by new keys follows its root.
    loaded.sort(key=lambda x: (x[2] != "root", x[3].version if x[2] == "root" else 0))
    plan = []
    bundle_topics: set[str] = set()
    for path, raw, kind, claimed in loaded:
        try:
            if kind == "root":
                if raw in known:
                    version = claimed.version  # already verified: it is one of the --root chain
                else:
                    root = policy.verify_root_update(root, raw)
                    known.add(raw)
                    version = root.version
                topic = topics.root(root.fleet, version)
                info = {"version": version}
            elif kind == "bundle":
                b = policy.verify_bundle(root, raw, now=now)
                topic = bundle_topic(root.fleet, target)
                if topic in bundle_topics:
                    raise UsageError(f"{path}: two bundles for {topic}; the second would replace the first")
                bundle_topics.add(topic)
                info = {"version": b.version, "expires_at": iso(b.expires_at)}
            else:
                ts = policy.verify_timestamp(root, raw)
                topic = topics.timestamp(root.fleet)
                info = {"time": iso(ts.time), "bundle_version": ts.bundle_version}
        except TrustfleetError as exc:
            raise refused(path, exc) from None
        plan.append({"file": str(path), "type": kind, "topic": topic, "bytes": len(raw),
                     "sha256": documents.sha256(raw).hex(), "raw": raw, **info})
    return plan


def record_history(db: Any, fleet: str, plan: list[dict], now: int) -> list[int]:
    """Record the bundle versions of a published plan in the fleet store (FleetDB), so that
    statuses claiming them are believed and rollouts start above them, and each document
    published in the audit trail ("publish": topics, type, version, sha256, signers).
    Returns the bundle versions."""
    versions = []
    for p in plan:
        if p["type"] == "bundle":
            db.record_published(fleet, p["version"], p["sha256"], f"publish {p['topic']}", now)
            versions.append(p["version"])
        detail = {"topics": [p["topic"]], "type": p["type"], "version": p.get("version"),
                  "sha256": p["sha256"], "signers": audit.signers(p["raw"])}
        if p["type"] == "timestamp":
            detail.update(time=p["time"], bundle_version=p["bundle_version"])
        audit.record(db, fleet, "publish", detail, now)
    return versions
