#!/usr/bin/env python3
"""Mutational fuzzing of the decoders that read untrusted bytes, device and server side.

Usage: python tools/fuzz_decoders.py [--target NAME ...] [--seconds N] [--iterations N]
           [--seed S] [--limit S] [--strict] [--json] [--replay HEX]

Targets (--target, repeatable; default all), each described above its code:
  documents    cbor, cose and the bundle schema (the rest of this docstring)
  x509         trustfleet_device.x509.parse, then sigcheck on what it accepts
  mqtt         the server's MQTT codec (trustfleet_server.broker.packets)
  mqtt-device  the device's MQTT reading (MQTTClient.wait_msg, Transport.poll)
  status       the status/report decoding and storage `serve` runs (fleetdb)

Budget: --seconds per target (default 60), or --iterations inputs per
target (seeds included), whichever ends first. With --iterations and a
fixed --seed the inputs are the same on every run, except in `documents`,
whose seed documents carry randomised ECDSA signatures (replay the printed
input there). Failures that are filed and not fixed yet are listed in KNOWN
(target, exception class): they are reported apart and do not fail the run
unless --strict.

Target "documents".

Seeds: valid CBOR values, RFC 7049 appendix A and the COSE WG examples (the
repository's copies in tests/vectors/), and real trustfleet documents built
with the operator code: root, bundle and timestamp payloads, a COSE_Sign
bundle with two signatures, a signed root and a COSE_Sign1 timestamp.

Mutations: bit flips, byte sets with CBOR-significant values, inserts,
deletes, truncation, splices from other seeds, chunk repeats, length-field
tweaks (argument changed, widened to a non-shortest form, major type
changed), deep nesting, and structural edits on the decoded tree (a field
replaced, dropped, duplicated or added), including inside the byte strings
that hold CBOR (COSE payloads and protected headers), re-wrapped so the edit
reaches the inner parser.

Targets per input: cbor.decode and cbor.decode_pure (COSE tags allowed, and
every fourth input with no tags), cose.parse in trustfleet's profile and
leniently (untagged COSE_Sign, alg anywhere) with verify_signer for every
signer, and device_docs.parse_root / parse_bundle / parse_timestamp on the
input and on any parsed COSE payload.

Invariant: every call returns or raises a TrustfleetError subclass; nothing
else. No call takes more than --limit seconds (default 1), in every target.
decode and decode_pure agree: the same value, or both refuse. Any violation
prints the input hex (replay it with --replay HEX --target NAME) and the
exit status is 1.

--seed fixes the mutation choices and the signing keys; ECDSA signatures are
randomised, so a time-bounded run is not byte-for-byte repeatable: replay
the printed input instead. Progress goes to stderr every few seconds; the
summary goes to stdout (as JSON with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import random
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("server", "device"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from trustfleet_device import cbor, cose, sigcheck, topics, x509  # noqa: E402
from trustfleet_device import documents as device_docs  # noqa: E402
from trustfleet_device import status as status_schema  # noqa: E402
from trustfleet_device.cbor import Tag  # noqa: E402
from trustfleet_device.errors import (  # noqa: E402
    BundleError,
    DecodeError,
    TransportError,
    TrustfleetError,
)
from trustfleet_device.limits import DEFAULT  # noqa: E402
from trustfleet_device.transports import mqtt as dmqtt  # noqa: E402
from trustfleet_server import documents, keys  # noqa: E402
from trustfleet_server.broker import packets as p  # noqa: E402
from trustfleet_server.fleet import db as fleetdb  # noqa: E402
from trustfleet_server.fleet import messages  # noqa: E402

COSE_TAGS = (cose.TAG_SIGN1, cose.TAG_SIGN)
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
PROGRESS_EVERY_S = 3.0
MAX_INPUT = 8192  # mutated inputs longer than this are cut back (speed, not a limit test)

INTERESTING_BYTES = (
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x3F, 0x40, 0x5F, 0x60,
    0x7F, 0x80, 0x81, 0x9F, 0xA0, 0xA1, 0xBF, 0xC0, 0xC2, 0xD2, 0xD8, 0xED, 0xF4, 0xF5,
    0xF6, 0xF7, 0xF9, 0xFB, 0xFF,
)  # fmt: skip

PALETTE = [
    0, 1, -1, 23, 24, -7, 2**32, 2**64 - 1, -(2**64), "", "x", "root", "bundle", "timestamp",
    "enforce", "report", "a" * 300, "Example.COM", "*.example.com", "a..b", b"", b"\x30" * 16,
    bytes(32), bytes(33), b"\x04" + bytes(64), [], [0], [bytes(32)], {}, {"x": 1}, {1: -7},
    True, False, None, Tag(98, []), Tag(18, [b"", {}, b"", b""]),
]  # fmt: skip
# Tags cbor2 gives a meaning to (dates, bignums, decimals, shared values, sets,
# self-describe...): the fast path must refuse them exactly like the strict one.
CBOR2_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799)
PALETTE += [
    Tag(2, b"\x01\x00\x00"),
    Tag(3, bytes(7) + b"\x01"),
    Tag(28, "abcd"),
    Tag(29, 0),
    Tag(258, [1, 2]),
    Tag(55799, 0),
    Tag(1, 1_700_000_000),
    Tag(0, "2024-01-01T00:00:00Z"),
]
PALETTE_KEYS = [0, 1, 2, 3, 4, -1, 24, "", "type", "spec", "fleet", "version", "zzz", "keys"]


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` swallows it."""


# ------------------------------------------------------------------ seeds


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def compact_anchor(name: bytes, spki: bytes, not_after: int, label: str | None) -> list:
    """The compact anchor entry as the builder writes it (the schema lives in bundle.py)."""
    if hasattr(device_docs, "compact_anchor"):
        return device_docs.compact_anchor(name, spki, not_after, label)
    return [name, spki, not_after, label or ""]


def trustfleet_documents(rng: random.Random) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Payloads and signed documents as the operator tools make them; and kid -> point."""
    k1, k2, k3 = (ec.derive_private_key(rng.randrange(1, P256_N), ec.SECP256R1()) for _ in range(3))
    kid1, kid2, kid3 = (keys.kid_of(k) for k in (k1, k2, k3))
    root = documents.encode_payload(
        {
            "type": "root",
            "spec": device_docs.SPEC,
            "fleet": "fleet-1",
            "version": 1,
            "expires": 1_900_000_000,
            "keys": sorted(keys.spki_der(k) for k in (k1, k2, k3)),
            "roles": {
                "root": {"keys": [kid1], "threshold": 1},
                "bundle": {"keys": [kid1, kid2], "threshold": 2},
                "timestamp": {"keys": [kid3], "threshold": 1},
            },
        }
    )
    payload = documents.encode_payload({
        "type": "bundle", "spec": device_docs.SPEC, "fleet": "fleet-1", "version": 5,
        "issued_at": 1_700_000_000, "expires_at": 1_800_000_000,
        "anchors": [
            b"\x30\x82\x01\x0a" + bytes(rng.randrange(256) for _ in range(40)),
            compact_anchor(b"\x30\x0b\x31\x09", keys.spki_der(k2), 1_850_000_000, "Root CA \u00fc"),
            compact_anchor(b"\x30\x00", b"\x30\x0a" + bytes(10), 1_850_000_000, None),
        ],
        "pinsets": [
            {"domain": "api.example.com", "subdomains": True, "pins": [bytes(32), b"\x01" * 32],
             "expires": 1_800_000_000, "mode": "enforce",
             "report_to": ["https://report.example.com/pins"]},
            {"domain": "mqtt.example.net", "subdomains": False, "pins": [b"\x02" * 32],
             "expires": 1_800_000_000, "mode": "report", "report_to": [],
             "allow_single_pin": True},
        ],
        "distrust": [hashlib.sha256(b"revoked").digest()],
        "policy": {"user_anchors": False, "max_timestamp_age": 86_400},
    })  # fmt: skip
    signed = documents.add_signature(documents.add_signature(payload, k1), k2)
    signed_root = documents.add_signature(root, k1)
    stamp = documents.encode_payload({
        "type": "timestamp", "spec": device_docs.SPEC, "fleet": "fleet-1", "time": 1_750_000_000,
        "bundle_version": 5, "bundle_sha256": hashlib.sha256(signed).digest(),
    })  # fmt: skip
    docs = [root, payload, stamp, signed, signed_root, documents.sign1(stamp, k3)]
    points = {keys.kid_of(k): public_point(k) for k in (k1, k2, k3)}
    return docs, points


def vector_documents() -> list[bytes]:
    """Appendix A entries we accept and every COSE WG example (tests/vectors/, always there)."""
    base = REPO / "tests" / "vectors"
    out = [bytes.fromhex(e["hex"]) for e in json.loads((base / "cbor" / "appendix_a.json").read_text())]
    examples = sorted((base / "cose-wg").glob("*/*.json"))
    if not examples:
        raise FileNotFoundError(f"no COSE WG examples under {base / 'cose-wg'}")
    for path in examples:
        out.append(bytes.fromhex(json.loads(path.read_text())["output"]["cbor"]))
    return out


def handmade_documents() -> list[bytes]:
    values = [
        0, 2**64 - 1, -(2**64), b"", "\u00fc\U00010151", [], {}, [1, [2, [3, [4]]]],
        {1: 2, -1: [True, False, None], "a": {"b": b"\x00" * 40}}, {24: 0, -1: 1, "aa": 2, "b": 3},
        Tag(98, [b"", {}, b"payload", [[b"\xa1\x01\x26", {4: b"kid"}, bytes(64)]]]),
        Tag(18, [b"\xa1\x01\x26", {}, b"payload", bytes(64)]),
    ]  # fmt: skip
    return [cbor.encode(v) for v in values]


# -------------------------------------------------------------- mutation


def scan_heads(data: bytes) -> list[tuple[int, int]]:
    """(offset, head length) of every head in the well-formed leading part of data, in order."""
    heads = []
    pos = 0
    while pos < len(data) and len(heads) < 512:
        ib = data[pos]
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            size, arg = 1, ai
        elif ai <= 27:
            size = 1 + (1 << (ai - 24))
            if pos + size > len(data):
                break
            arg = int.from_bytes(data[pos + 1 : pos + size], "big")
        else:
            break
        heads.append((pos, size))
        pos += size
        if major in (2, 3):
            pos += arg
    return heads


def encode_head(rng: random.Random, major: int, arg: int) -> bytes:
    """The head for (major, arg), shortest or deliberately wider."""
    arg &= 0xFFFFFFFFFFFFFFFF
    shortest = cbor.head(major, arg)
    if rng.random() < 0.6:
        return shortest
    widths = [w for w, ai in ((1, 24), (2, 25), (4, 26), (8, 27)) if arg < 1 << (8 * w)]
    width = rng.choice(widths)
    return bytes(((major << 5) | {1: 24, 2: 25, 4: 26, 8: 27}[width],)) + arg.to_bytes(width, "big")


def tweak_length(rng: random.Random, out: bytearray) -> None:
    heads = scan_heads(bytes(out))
    if not heads:
        return
    pos, size = rng.choice(heads)
    ib = out[pos]
    major, ai = ib >> 5, ib & 0x1F
    arg = ai if ai < 24 else int.from_bytes(out[pos + 1 : pos + size], "big")
    choice = rng.randrange(4)
    if choice == 0:
        arg += rng.choice((-1, 1, 2, -2))
    elif choice == 1:
        arg = rng.choice((0, 23, 24, 255, 256, 65535, 65536, 2**31, 2**32 - 1, 2**63, 2**64 - 1))
    elif choice == 2:
        major = rng.randrange(8) if major != 7 else major
    else:
        arg = rng.randrange(1 << rng.choice((5, 8, 16, 32)))
    if major == 7:
        out[pos : pos + size] = bytes((rng.choice((0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFF)),))
        return
    out[pos : pos + size] = encode_head(rng, major, max(arg, 0))


def nest(rng: random.Random, out: bytearray) -> None:
    unit = rng.choice((b"\x81", b"\xa1\x00", b"\xd8\x62", b"\xd2", b"\xa1\x61\x61", b"\x82\x00"))
    heads = scan_heads(bytes(out))
    pos = rng.choice(heads)[0] if heads else 0
    out[pos:pos] = unit * rng.choice((1, 2, 15, 16, 17, 40, 1000))


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(10)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[pos % len(out)] = (
                rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
            )
        elif op == 2:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 1, 2, 4))))
        elif op == 3 and out:
            del out[pos : pos + rng.choice((1, 1, 2, 8, 32))]
        elif op == 4:
            other = rng.choice(corpus)
            start = rng.randint(0, len(other))
            chunk = other[start : start + rng.choice((1, 4, 16, 64, 512))]
            if rng.random() < 0.5:
                out[pos:pos] = chunk
            else:
                out[pos : pos + len(chunk)] = chunk
        elif op == 5 and out:
            start = rng.randrange(len(out))
            chunk = out[start : start + rng.choice((1, 3, 9, 40))]
            out[pos:pos] = chunk * rng.choice((1, 2, 16))
        elif op in (6, 7):
            tweak_length(rng, out)
        elif op == 8:
            nest(rng, out)
        else:
            del out[pos:]
    return bytes(out[:MAX_INPUT])


def containers(value, found: list, depth: int = 0) -> list:
    """Every list, dict and Tag inside value (value included), up to a depth."""
    if depth > 20 or len(found) > 400:
        return found
    if isinstance(value, list | dict | Tag):
        found.append(value)
    children = (
        value if isinstance(value, list) else value.values() if isinstance(value, dict) else ()
    )
    if isinstance(value, Tag):
        children = (value.value,)
    for child in children:
        containers(child, found, depth + 1)
    return found


def random_value(rng: random.Random, corpus_values: list):
    if corpus_values and rng.random() < 0.2:
        found = containers(rng.choice(corpus_values), [])
        if found:
            return copy.deepcopy(rng.choice(found))
    value = copy.deepcopy(rng.choice(PALETTE))
    return value if rng.random() < 0.9 else [value] * rng.choice((1, 17, 300))


def mutate_inner(rng: random.Random, raw: bytes, corpus: list[bytes], corpus_values: list) -> bytes:
    """Mutate a byte string that holds CBOR: structurally if it decodes, else as bytes."""
    if rng.random() < 0.5:
        try:
            value = cbor.decode_pure(raw, DEFAULT, COSE_TAGS)
        except DecodeError:
            pass
        else:
            return cbor.encode(mutate_tree(rng, value, corpus, corpus_values))
    return mutate_bytes(rng, raw, corpus)


def mutate_tree(rng: random.Random, value, corpus: list[bytes], corpus_values: list):
    """Return value with one structural edit somewhere inside it."""
    root = [value]
    nodes = containers(root, [])
    node = rng.choice(nodes[1:] if len(nodes) > 1 and rng.random() < 0.9 else nodes)
    if isinstance(node, Tag):
        node.value = random_value(rng, corpus_values) if rng.random() < 0.5 else node.value
        if rng.random() < 0.3:
            node.number = rng.choice(CBOR2_TAGS + COSE_TAGS)
        return root[0] if root else None
    if isinstance(node, list):
        if not node:
            node.append(random_value(rng, corpus_values))
            return root[0] if root else None
        i = rng.randrange(len(node))
        op = rng.randrange(5)
        if op == 0:
            node[i] = random_value(rng, corpus_values)
        elif op == 1:
            del node[i]
        elif op == 2:
            node.insert(i, copy.deepcopy(node[i]))
        elif op == 3 and isinstance(node[i], bytes):
            node[i] = mutate_inner(rng, node[i], corpus, corpus_values)
        elif rng.random() < 0.3:
            node[i] = Tag(rng.choice(CBOR2_TAGS), node[i])
        else:
            node[i] = [node[i]] if rng.random() < 0.5 else {rng.choice(PALETTE_KEYS): node[i]}
        return root[0] if root else None
    # dict
    op = rng.randrange(5)
    if not node or op == 0:
        node[rng.choice(PALETTE_KEYS)] = random_value(rng, corpus_values)
        return root[0] if root else None
    key = rng.choice(list(node))
    if op == 1:
        del node[key]
    elif op == 2 or not isinstance(node[key], bytes):
        node[key] = random_value(rng, corpus_values)
    else:
        node[key] = mutate_inner(rng, node[key], corpus, corpus_values)
    return root[0] if root else None


# ---------------------------------------------------------------- running


def shape(value):
    """A comparable form that keeps types apart (True is not 1)."""
    if value is None or value is True or value is False:
        return ("simple", value)
    if type(value) is list:
        return ("list", tuple(shape(v) for v in value))
    if type(value) is dict:
        return ("map", tuple(sorted((shape(k), shape(v)) for k, v in value.items())))
    if type(value) is Tag:
        return ("tag", value.number, shape(value.value))
    return (type(value).__name__, value)


# Failures this tool finds that are filed and not fixed yet: (target prefix, exception class
# or violation kind) -> where they are tracked. They are counted and printed as "known",
# apart from violations, and leave the exit status alone unless --strict is given. Only
# the exact pair is excused: any other failure of the same target is still a violation.
KNOWN: dict[tuple[str, str], str] = {}


def known_issue(target: str, what: str) -> str | None:
    for (prefix, cls), note in KNOWN.items():
        if target.startswith(prefix) and what == cls:
            return note
    return None


class Harness:
    """One fuzz target: its seeds (`corpus`), how it makes inputs and what it calls.

    Subclasses set `name`, fill `corpus` and implement run_input(data, replay)
    and next_input(). `call` runs one function under the invariant: it returns,
    or raises one of `allowed`; nothing else, and within --limit seconds.
    """

    name = ""

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        self.rng = random.Random(seed)
        self.seed = seed
        self.limit_s = limit_s
        self.strict = strict
        self.corpus: list[bytes] = []
        self.inputs = 0
        self.accepted: Counter = Counter()
        self.refused: Counter = Counter()
        self.slowest = (0.0, "", b"")
        self.violations: dict[tuple, dict] = {}
        self.violation_count = 0
        self.known: dict[tuple, dict] = {}
        self.known_count = 0
        self.live = sys.stdout  # where violations are printed as they happen

    # ("ok", result), ("refused", error) or ("bug", None) after recording a violation.
    def call(self, target: str, data: bytes, fn, *args, allowed=(TrustfleetError,), **kw):
        start = time.perf_counter()
        arm_alarm(3 * self.limit_s)
        try:
            result = fn(*args, **kw)
        except allowed as exc:
            self.refused[(target, type(exc).__name__)] += 1
            self.check_refusal(target, exc, data)
            return "refused", exc
        except Hang:
            self.violation("hang", target, f"no answer within {3 * self.limit_s:.0f} s", data)
            return "bug", None
        except Exception as exc:  # noqa: BLE001 - this is what we hunt
            self.violation("exception", target, f"{type(exc).__name__}: {exc}"[:500], data)
            return "bug", None
        finally:
            arm_alarm(0)
            spent = time.perf_counter() - start
            if spent > self.slowest[0]:
                self.slowest = (spent, target, data)
            if spent > self.limit_s:
                self.violation("slow", target, f"{spent:.2f} s", data)
        self.accepted[target] += 1
        return "ok", result

    def check_refusal(self, target: str, exc: BaseException, data: bytes) -> None:
        """Hook: a target may hold its refusals to more than their class."""

    def violation(self, kind: str, target: str, error: str, data: bytes) -> None:
        what = error.split(":")[0] if kind == "exception" else kind
        note = None if self.strict else known_issue(target, what)
        key = (kind, target, error.split(":")[0])
        record = {"kind": kind, "target": target, "error": error, "input_hex": data.hex()}
        if note is not None:
            self.known_count += 1
            if key not in self.known:
                self.known[key] = dict(record, known=note)
            return
        self.violation_count += 1
        if key not in self.violations:
            self.violations[key] = record
            print(f"VIOLATION {kind} in {target}: {error}\n  input: {data.hex()}",
                  file=self.live, flush=True)

    def summary(self, seconds: float) -> dict:
        targets = sorted(set(self.accepted) | {t for t, _ in self.refused})
        by_target = {
            t: {
                "accepted": self.accepted[t],
                "refused": {cls: n for (tt, cls), n in sorted(self.refused.items()) if tt == t},
            }
            for t in targets
        }
        return {
            "target": self.name,
            "seed": self.seed,
            "seconds": round(seconds, 2),
            "inputs": self.inputs,
            "inputs_per_s": round(self.inputs / seconds, 1) if seconds else 0,
            "seed_documents": len(self.corpus),
            "slowest_call_ms": round(self.slowest[0] * 1000, 2),
            "slowest_target": self.slowest[1],
            "targets": by_target,
            "violation_count": self.violation_count,
            "violations": list(self.violations.values()),
            "known_count": self.known_count,
            "known": list(self.known.values()),
        }

    def run_input(self, data: bytes, replay: bool = False) -> None:
        raise NotImplementedError

    def next_input(self) -> bytes:
        raise NotImplementedError


# ----------------------------------------------- target "documents": cbor, cose, bundle


class Fuzzer(Harness):
    name = "documents"

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        super().__init__(seed, limit_s, strict)
        docs, self.points = trustfleet_documents(self.rng)
        self.corpus = docs + vector_documents() + handmade_documents()
        self.corpus_values = []
        for raw in self.corpus:
            with contextlib.suppress(DecodeError):
                self.corpus_values.append(cbor.decode_pure(raw, DEFAULT, COSE_TAGS))
        self.fallback_point = next(iter(self.points.values()))
        self.verified = 0

    def compare(self, target: str, fast: tuple, pure: tuple, data: bytes) -> None:
        """Record a violation unless both decoders refused, or both gave the same value."""
        try:
            a = (
                ("refused", type(fast[1]).__name__)
                if fast[0] == "refused"
                else ("ok", shape(fast[1]))
            )
            b = (
                ("refused", type(pure[1]).__name__)
                if pure[0] == "refused"
                else ("ok", shape(pure[1]))
            )
        except Exception as exc:  # noqa: BLE001 - a value outside the data model
            self.violation("exception", target, f"comparing results: {exc!r}", data)
            return
        if a != b:
            self.violation(
                "disagree", target, f"{a[0]}: {a[1]!r:.120} / {b[0]}: {b[1]!r:.120}", data
            )

    def run_input(self, data: bytes, replay: bool = False) -> None:
        self.inputs += 1
        tag_sets = (COSE_TAGS, ()) if replay or self.inputs % 4 == 0 else (COSE_TAGS,)
        for tags in tag_sets:
            suffix = "" if tags else "/no-tags"
            fast = self.call("cbor.decode" + suffix, data, cbor.decode, data, DEFAULT, tags)
            pure = self.call(
                "cbor.decode_pure" + suffix, data, cbor.decode_pure, data, DEFAULT, tags
            )
            if "bug" not in (fast[0], pure[0]):
                self.compare("cbor.decode vs decode_pure" + suffix, fast, pure, data)
        payloads = [data]
        for target, kw in (
            ("cose.parse", {}),
            ("cose.parse/lenient", {"untagged": cose.TAG_SIGN, "require_protected_alg": False}),
        ):
            status, msg = self.call(target, data, cose.parse, data, DEFAULT, **kw)
            if status != "ok":
                continue
            payloads.append(msg.unverified_payload)
            for signer in msg.signers:
                point = self.points.get(signer.kid, self.fallback_point)
                status, ok = self.call(
                    "cose.verify_signer", data, cose.verify_signer, msg, signer, point
                )
                self.verified += status == "ok" and ok is True
        for payload in payloads[:2]:
            for name in ("parse_root", "parse_bundle", "parse_timestamp"):
                self.call("documents." + name, payload, getattr(device_docs, name), payload, DEFAULT)

    def next_input(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3 and self.corpus_values:
            value = copy.deepcopy(rng.choice(self.corpus_values))
            for _ in range(rng.choice((1, 1, 2, 3))):
                value = mutate_tree(rng, value, self.corpus, self.corpus_values)
            try:
                data = cbor.encode(value)
            except ValueError:
                data = rng.choice(self.corpus)
            return data if rng.random() < 0.7 else mutate_bytes(rng, data, self.corpus)
        return mutate_bytes(rng, rng.choice(self.corpus), self.corpus)

    def summary(self, seconds: float) -> dict:
        out = super().summary(seconds)
        out["signatures_verified"] = self.verified
        return out


# ------------------------------------------------------------ target "x509": DER certificates
#
# Seeds: the sample PKI shipped with the server, a chain built here with
# cryptography from seeded keys and deterministic ECDSA (so a seed gives the
# same bytes every run), and a few RSA roots of the Mozilla store (certifi).
# Inputs: the byte mutations above, or an edit of the DER tree (an element
# dropped, repeated, moved in from another certificate, retagged, wrapped,
# its content replaced by a telling value) re-encoded with the lengths fixed
# up, so the edit reaches the field parsers instead of the outer framing;
# now and then one length is written in a non-minimal form.

OID_CONTENTS = [bytes.fromhex(h) for h in (
    "551d13", "551d0f", "551d11", "551d25", "551d1e", "551d0e", "551d23", "551d20",
    "2a8648ce3d040302", "2a8648ce3d040303", "2a8648ce3d040304", "2a864886f70d01010b",
    "2a864886f70d010101", "2a864886f70d010105", "2a864886f70d01010a", "2a8648ce3d0201",
    "2a8648ce3d030107", "2b81040022", "2b6570", "550403", "55040a",
    "2b06010505070301", "2b06010505070302", "8001", "2a" + "81" * 70 + "01",
)]  # fmt: skip
DER_TAGS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x30,
            0x31, 0x80, 0x81, 0x82, 0x87, 0x88, 0xA0, 0xA1, 0xA3, 0x1F, 0x3F)
DER_CONTENTS = [
    b"", b"\x00", b"\x01", b"\x7f", b"\x00\x80", b"\xff", b"\x00" * 33, b"\x01" * 70,
    b"\x00\x04" + bytes(64), b"\x04" + bytes(64), b"\x06\xff", b"\x01\x00", b"\x07\x80",
    b"991231235959Z", b"500101000000Z", b"000229000000Z", b"20500101000000Z",
    b"19991231235960Z", b"2024013100000Z", b"example.com", b"*.example.com", b"a..b",
    b"\xc3\x28", b"\x00example", b"x" * 254,
]  # fmt: skip


def der_parse(data: bytes, depth: int = 0):
    """DER as a tree: a list of [tag, content] where content is bytes or, for a constructed
    element or a BIT/OCTET STRING holding DER, a list. None if data is not clean DER."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            return None
        tag, first = data[pos], data[pos + 1]
        if first < 0x80:
            size, head = first, 2
        elif 0x81 <= first <= 0x83:
            n = first & 0x7F
            if len(data) - pos < 2 + n:
                return None
            size, head = int.from_bytes(data[pos + 2 : pos + 2 + n], "big"), 2 + n
        else:
            return None
        if pos + head + size > len(data):
            return None
        content = data[pos + head : pos + head + size]
        node = [tag, content]
        if depth < 12:
            if tag & 0x20:
                inner = der_parse(content, depth + 1)
                if inner is None:
                    return None
                node[1] = inner
            elif tag == 0x04 and content[:1] in (b"\x30", b"\x03", b"\x04", b"\x02"):
                inner = der_parse(content, depth + 1)
                if inner:
                    node.append("wrapped")
                    node[1] = inner
            elif tag == 0x03 and content[:2] == b"\x00\x30":
                inner = der_parse(content[1:], depth + 1)
                if inner:
                    node.append("bits")
                    node[1] = inner
        out.append(node)
        pos += head + size
    return out


def der_length(rng: random.Random | None, n: int) -> bytes:
    if n < 0x80 and (rng is None or rng.random() > 0.02):
        return bytes((n,))
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    if rng is not None and rng.random() < 0.02:
        raw = b"\x00" + raw  # non-minimal
    return bytes((0x80 | len(raw),)) + raw


def der_encode(nodes: list, rng: random.Random | None = None) -> bytes:
    out = []
    for node in nodes:
        tag, content = node[0], node[1]
        if isinstance(content, list):
            body = der_encode(content, rng)
            if len(node) > 2 and node[2] == "bits":
                body = b"\x00" + body
        else:
            body = content
        out.append(bytes((tag,)) + der_length(rng, len(body)) + body)
    return b"".join(out)


def der_nodes(nodes: list, found: list) -> list:
    """(parent list, index) of every element, depth first."""
    for i, node in enumerate(nodes):
        found.append((nodes, i))
        if isinstance(node[1], list):
            der_nodes(node[1], found)
    return found


def mutate_der(rng: random.Random, data: bytes, corpus_trees: list) -> bytes | None:
    tree = der_parse(data)
    if not tree:
        return None
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        spots = der_nodes(tree, [])
        if not spots:
            break
        parent, i = rng.choice(spots)
        node = parent[i]
        op = rng.randrange(9)
        if op == 0 and len(parent) > 0:
            del parent[i]
        elif op == 1:
            parent.insert(i, copy.deepcopy(node))
        elif op == 2 and corpus_trees:
            other_parent, j = rng.choice(der_nodes(rng.choice(corpus_trees), []))
            parent[i] = copy.deepcopy(other_parent[j])
        elif op == 3:
            parent[i] = [rng.choice(DER_TAGS), node[1]] + node[2:]
        elif op == 4:
            parent[i] = [0x30, [node]]
        elif op == 5:
            wrapped = node
            for _ in range(rng.choice((4, 9, 20))):
                wrapped = [0x30, [wrapped]]
            parent[i] = wrapped
        elif op == 6:
            value = rng.choice(OID_CONTENTS) if node[0] == 0x06 else rng.choice(DER_CONTENTS)
            parent[i] = [node[0], value]
        elif op == 7 and not isinstance(node[1], list):
            parent[i] = [node[0], mutate_bytes(rng, node[1], [node[1]])[:512]]
        else:
            parent.insert(i, [rng.choice(DER_TAGS), rng.choice(DER_CONTENTS)])
    return der_encode(tree, rng)


def sample_certificates() -> list[bytes]:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives.serialization import Encoding

    out = []
    for path in sorted((REPO / "server" / "trustfleet_server" / "samples").glob("*.pem")):
        for cert in cx509.load_pem_x509_certificates(path.read_bytes()):
            out.append(cert.public_bytes(Encoding.DER))
    try:
        import certifi
    except ImportError:
        return out
    from cryptography.hazmat.primitives.asymmetric import rsa

    with warnings.catch_warnings():  # a few Mozilla roots have a serial of 0
        warnings.simplefilter("ignore")
        roots = cx509.load_pem_x509_certificates(Path(certifi.where()).read_bytes())
    rsa_roots = sorted(c.public_bytes(Encoding.DER) for c in roots
                       if isinstance(c.public_key(), rsa.RSAPublicKey))
    return out + rsa_roots[:4]


def built_certificates(rng: random.Random) -> list[bytes]:
    """A root, an intermediate and two leaves, from seeded keys with deterministic ECDSA."""
    import datetime
    import ipaddress

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> cx509.Name:
        return cx509.Name([cx509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fuzz Fleet"),
                           cx509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, issuer, key, signer, serial, *, ca=None, ext=(), until=2034, alg=None):
        b = (cx509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(serial)
             .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
             .not_valid_after(datetime.datetime(until, 1, 1, tzinfo=datetime.UTC)))
        if ca is not None:
            b = b.add_extension(cx509.BasicConstraints(ca=True, path_length=ca), critical=True)
            b = b.add_extension(cx509.KeyUsage(False, False, False, False, False, True, True,
                                               False, False), critical=True)
        for e, critical in ext:
            b = b.add_extension(e, critical=critical)
        if isinstance(signer, ed25519.Ed25519PrivateKey):
            return b.sign(signer, None).public_bytes(Encoding.DER)
        return b.sign(signer, alg or hashes.SHA256(), ecdsa_deterministic=True) \
            .public_bytes(Encoding.DER)

    root_key = ec.derive_private_key(rng.randrange(1, 2**383), ec.SECP384R1())
    mid_key = ec.derive_private_key(rng.randrange(1, P256_N), ec.SECP256R1())
    leaf_key = ec.derive_private_key(rng.randrange(1, P256_N), ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(rng.randrange(256) for _ in range(32)))
    root = cert("Fuzz Root", "Fuzz Root", root_key, root_key, 1, ca=1, alg=hashes.SHA384(),
                until=2051)
    mid = cert("Fuzz Issuing", "Fuzz Root", mid_key, root_key, 2, ca=0, alg=hashes.SHA384(), ext=[
        (cx509.NameConstraints([cx509.DNSName("example.com")], None), True),
        (cx509.SubjectKeyIdentifier.from_public_key(mid_key.public_key()), False)])
    leaf = cert("api.example.com", "Fuzz Issuing", leaf_key, mid_key, 3, ext=[
        (cx509.SubjectAlternativeName([cx509.DNSName("api.example.com"),
                                       cx509.DNSName("*.api.example.com"),
                                       cx509.IPAddress(ipaddress.ip_address("192.0.2.1"))]), False),
        (cx509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (cx509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
        (cx509.UnrecognizedExtension(cx509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
         True)])
    ed_leaf = cert("ed.example.com", "Fuzz Ed", ed_key, ed_key, 4)
    return [root, mid, leaf, ed_leaf]


class X509Fuzzer(Harness):
    name = "x509"

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        super().__init__(seed, limit_s, strict)
        self.corpus = sample_certificates() + built_certificates(self.rng)
        self.trees = [t for t in (der_parse(c) for c in self.corpus) if t]
        self.spkis = [x509.parse(c).spki for c in self.corpus]

    def run_input(self, data: bytes, replay: bool = False) -> None:
        self.inputs += 1
        self.call("x509.name_label", data, x509.name_label, data, allowed=())
        status, cert = self.call("x509.parse", data, x509.parse, data, allowed=(DecodeError,))
        if status != "ok":
            return
        problem = certificate_problem(cert, data)
        if problem:
            self.violation("invalid", "x509.parse", problem, data)
        self.call("x509.label", data, cert.label, allowed=())
        self.call("sigcheck.parse_public_key", data, sigcheck.parse_public_key, cert.spki)
        issuers = [cert.spki, self.rng.choice(self.spkis)]
        for spki in issuers:
            fast = self.call("sigcheck.verify_certificate", data, sigcheck.verify_certificate,
                             cert, spki, "cryptography")
            if fast[0] == "ok" and fast[1] not in (True, False):
                self.violation("invalid", "sigcheck.verify_certificate",
                               f"returned {fast[1]!r}", data)
            if replay or self.inputs % 8 == 0:  # the pure path is slow: every eighth input
                pure = self.call("sigcheck.verify_certificate/pure", data,
                                 sigcheck.verify_certificate, cert, spki, "pure")
                if fast[0] == pure[0] == "ok" and fast[1] != pure[1]:
                    self.violation("disagree", "sigcheck.verify_certificate",
                                   f"cryptography {fast[1]} / pure {pure[1]}", data)

    def next_input(self) -> bytes:
        rng = self.rng
        seed = rng.choice(self.corpus)
        if rng.random() < 0.6:
            out = mutate_der(rng, seed, self.trees)
            if out is not None:
                return out if rng.random() < 0.9 else mutate_bytes(rng, out, self.corpus)
        return mutate_bytes(rng, seed, self.corpus)


def certificate_problem(cert, der: bytes) -> str | None:
    """What is wrong with a parsed certificate's fields, or None."""
    if cert.der != der or cert.tbs not in der or not cert.tbs:
        return "der/tbs are not the input and a part of it"
    if cert.version not in (1, 3):
        return f"version {cert.version!r}"
    for field_name in ("issuer", "subject", "spki", "serial", "signature", "signature_der"):
        if type(getattr(cert, field_name)) is not bytes:
            return f"{field_name} is {type(getattr(cert, field_name)).__name__}"
    if not cert.spki or not cert.subject or not cert.issuer:
        return "empty spki, subject or issuer"
    if type(cert.not_before) is not int or type(cert.not_after) is not int:
        return "dates are not integers"
    if not all(type(n) is str for n in cert.dns_names) or type(cert.unknown_critical) is not list:
        return "dns_names/unknown_critical of the wrong types"
    if cert.sig_alg in ("1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4") \
            and len(cert.signature) not in (64, 96, 132):
        return f"ECDSA signature of {len(cert.signature)} bytes"
    return None


# ------------------------------------------------- target "mqtt": the server's packet codec
#
# Seeds: every packet type encoded for 3.1.1 and 5 (with properties, a will,
# credentials), alone and as streams (a CONNECT at level 5 switches the rest
# of a stream to MQTT 5). Inputs: byte mutations, or a frame-level edit: one
# frame's body mutated and re-framed with the right remaining length (so the
# edit reaches the body decoder), its flags or type changed, its length field
# corrupted or made non-minimal, a frame dropped, repeated or taken from
# another seed. Invariant: PacketError (or a subclass) or packets that encode
# again and decode to the same packets; a stream fed in random pieces gives the
# same packets as fed whole.


def mqtt_frames(data: bytes) -> list[list]:
    """[first byte, body] per frame, leniently (a tail that is no whole frame stays raw)."""
    frames = []
    pos = 0
    while pos < len(data):
        size = shift = 0
        i = pos + 1
        complete = False
        while i < len(data) and i <= pos + 4:
            b = data[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                complete = True
                break
        if not complete or i + size > len(data):
            frames.append([None, data[pos:]])
            break
        frames.append([data[pos], data[i : i + size]])
        pos = i + size
    return frames


def mqtt_join(rng: random.Random, frames: list[list]) -> bytes:
    out = []
    for first, body in frames:
        if first is None:
            out.append(body)
            continue
        length = p.encode_varint(len(body))
        if rng.random() < 0.02 and len(length) < 4:
            length = bytes(b | 0x80 for b in length) + b"\x00"  # non-minimal
        out.append(bytes((first,)) + length + body)
    return b"".join(out)


def next_mqtt_input(rng: random.Random, corpus: list[bytes]) -> bytes:
    """A corpus entry, mutated packet-aware most of the time, byte-wise otherwise."""
    seed = rng.choice(corpus)
    if rng.random() < 0.7:
        return mutate_mqtt(rng, seed, corpus)
    return mutate_bytes(rng, seed, corpus)


def mutate_mqtt(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    frames = mqtt_frames(data)
    if not frames:
        return mutate_bytes(rng, data, corpus)
    for _ in range(rng.choice((1, 1, 2))):
        i = rng.randrange(len(frames))
        first, body = frames[i]
        op = rng.randrange(8)
        if first is None or op <= 2:
            frames[i] = [first, mutate_bytes(rng, body, corpus)]
        elif op == 3:
            frames[i] = [(first & 0xF0) | rng.randrange(16), body]
        elif op == 4:
            frames[i] = [(rng.randrange(16) << 4) | (first & 0x0F), body]
        elif op == 5:
            del frames[i]
        elif op == 6:
            frames.insert(i, list(frames[i]))
        else:
            frames.insert(i, rng.choice(mqtt_frames(rng.choice(corpus)) or [[0xC0, b""]]))
        if not frames:
            frames = [[0xC0, b""]]
    out = mqtt_join(rng, frames)
    if rng.random() < 0.05:  # a length field that no longer fits
        out = mutate_bytes(rng, out, corpus)
    return out[:MAX_INPUT]


def mqtt_seed_packets() -> list[bytes]:
    props = {p.USER_PROPERTY: [("k", "v"), ("k", "w")], p.REASON_STRING: "why"}
    will = p.Will("tf/fleet/status/dev", b'{"state":"offline"}', 1, True,
                  {p.WILL_DELAY_INTERVAL: 5, p.CONTENT_TYPE: "application/json"})
    packets5 = [
        p.Connect("dev-1", p.MQTT5, True, 30, "user", b"secret", will,
                  {p.SESSION_EXPIRY_INTERVAL: 60, p.RECEIVE_MAXIMUM: 10,
                   p.MAXIMUM_PACKET_SIZE: 65536, p.TOPIC_ALIAS_MAXIMUM: 4}),
        p.Connack(False, 0, {p.MAXIMUM_QOS: 1, p.RETAIN_AVAILABLE: 1,
                             p.ASSIGNED_CLIENT_IDENTIFIER: "auto-1", p.SERVER_KEEP_ALIVE: 30}),
        p.Publish("tf/fleet/bundle", b"\xd8\x62" + bytes(40), 1, True, False, 7,
                  {p.MESSAGE_EXPIRY_INTERVAL: 3600, p.PAYLOAD_FORMAT_INDICATOR: 0,
                   p.CORRELATION_DATA: b"c", p.RESPONSE_TOPIC: "r/t", p.TOPIC_ALIAS: 1,
                   p.SUBSCRIPTION_IDENTIFIER: [3]}),
        p.Publish("tf/fleet/timestamp", b"ts", 0, False),
        p.Puback(7), p.Puback(8, 0x10, props),
        p.Ack(9, 0, {}, p.PUBREC), p.Ack(9, 0, {}, p.PUBREL), p.Ack(9, 0, {}, p.PUBCOMP),
        p.Subscribe(3, [("tf/fleet/root/+", p.SubOptions(1, True, True, 2)),
                        ("$share/g/tf/+/status/#", p.SubOptions(0))], {p.USER_PROPERTY: [("a", "b")]}),
        p.Suback(3, [1, 0, 0x80], props),
        p.Unsubscribe(4, ["tf/fleet/root/+", "a/b"], {}),
        p.Unsuback(4, [0, 0x11], props),
        p.Pingreq(), p.Pingresp(),
        p.Disconnect(p.DISCONNECT_WITH_WILL, {p.SESSION_EXPIRY_INTERVAL: 0, p.SERVER_REFERENCE: "x"}),
        p.Auth(0x18, {p.AUTHENTICATION_METHOD: "SCRAM", p.AUTHENTICATION_DATA: b"\x01\x02"}),
    ]
    packets4 = [
        p.Connect("dev-1", p.MQTT311, True, 60, "user", b"pw", p.Will("w/t", b"bye", 1, False)),
        p.Connect("", p.MQTT311), p.Connack(True, 0), p.Connack(False, 5),
        p.Publish("tf/fleet/bundle", bytes(300), 1, True, False, 1), p.Publish("a", b"", 0),
        p.Puback(1), p.Subscribe(2, [("a/#", p.SubOptions(1)), ("b/+", p.SubOptions(0))]),
        p.Suback(2, [1, 0x80]), p.Unsubscribe(5, ["a/#"]), p.Unsuback(5), p.Pingreq(),
        p.Pingresp(), p.Disconnect(),
    ]
    one5 = [x.encode(p.MQTT5) for x in packets5]
    one4 = [x.encode(p.MQTT311) for x in packets4]
    return one4 + one5 + [b"".join(one4), b"".join(one5), one5[0] + b"".join(one5[1:])]


def mqtt_decode_stream(pieces: list[bytes], version: int, max_packet: int) -> tuple[list, int]:
    """Frames decoded as a receiver does: (packets with the version each was read at, bytes left)."""
    reader = p.FrameReader(max_packet)
    out = []
    for piece in pieces:
        reader.feed(piece)
        while (frame := reader.next_frame()) is not None:
            packet = p.decode(*frame, version)
            if isinstance(packet, p.Connect):
                version = packet.protocol_level
            out.append((packet, version))
    return out, reader.buffered()


def mqtt_roundtrip_problem(packets: list) -> str | None:
    for packet, version in packets:
        encoded = packet.encode(version)
        again = p.decode_all(encoded, version)
        if again != [packet]:
            return f"{type(packet).__name__} v{version}: {packet!r:.200} re-read as {again!r:.200}"
    return None


class MQTTFuzzer(Harness):
    name = "mqtt"

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        super().__init__(seed, limit_s, strict)
        self.corpus = mqtt_seed_packets()

    def run_input(self, data: bytes, replay: bool = False) -> None:
        self.inputs += 1
        rng = self.rng
        max_packet = rng.choice((p.DEFAULT_MAX_PACKET, p.DEFAULT_MAX_PACKET, 64, 1024))
        for version in (p.MQTT311, p.MQTT5):
            target = f"mqtt.decode_all/v{version}"
            self.call(target, data, p.decode_all, data, version, max_packet,
                      allowed=(p.PacketError,))
            whole = self.call(target + "/stream", data, mqtt_decode_stream, [data], version,
                              max_packet, allowed=(p.PacketError,))
            cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.choice((1, 3, 9)))))
            pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)], strict=True)]
            split = self.call(target + "/pieces", data, mqtt_decode_stream, pieces, version,
                              max_packet, allowed=(p.PacketError,))
            if "bug" in (whole[0], split[0]):
                continue
            a = whole[1] if whole[0] == "ok" else type(whole[1]).__name__
            b = split[1] if split[0] == "ok" else type(split[1]).__name__
            if a != b:
                self.violation("disagree", target + "/pieces",
                               f"whole {a!r:.200} / in pieces {b!r:.200}", data)
            if whole[0] == "ok":
                status, problem = self.call(target + "/roundtrip", data, mqtt_roundtrip_problem,
                                            whole[1][0], allowed=())
                if status == "ok" and problem:
                    self.violation("roundtrip", target, problem, data)

    def next_input(self) -> bytes:
        return next_mqtt_input(self.rng, self.corpus)


# ---------------------------------------- target "mqtt-device": the device's MQTT reading
#
# What a broker sends a device after CONNACK, read by trustfleet_device.transports.mqtt:
# MQTTClient.wait_msg (the umqtt.simple-like client) and Transport.poll (the
# loop that streams bundles to the session). The socket is a script that ends
# in EOF; the session is a stub that reads bundle chunks (sometimes stopping
# early) and answers some messages. Invariant: wait_msg returns or raises
# TransportError/OSError; Transport.poll never raises (it must survive any
# broker), hands the session only payloads within max_small and chunks within
# max_chunk, and ends the connection once the script runs out.

DEVICE_FLEET = "fleet-1"
DEVICE_ID = "dev-1"


class ScriptSocket:
    """The broker side of one connection: reads come from `data`, then EOF; writes are kept."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.sent = 0
        self.closed = False

    def _check(self):
        if self.closed:
            raise OSError(9, "read on a closed socket")

    def read(self, n):
        self._check()
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def readinto(self, buf, n=None):
        self._check()
        n = len(buf) if n is None else n
        out = self.data[self.pos : self.pos + n]
        buf[: len(out)] = out
        self.pos += len(out)
        return len(out)

    def write(self, data):
        self._check()
        self.sent += len(data)
        return len(data)

    def setblocking(self, flag):
        pass

    def settimeout(self, seconds):
        pass

    def close(self):
        self.closed = True


class StubSession:
    """What Transport asks of a session, with checks on what it is handed."""

    def __init__(self, rng: random.Random, max_small: int, max_chunk: int):
        self.rng = rng
        self.fleet = DEVICE_FLEET
        self.device_id = DEVICE_ID
        self.max_small = max_small
        self.max_chunk = max_chunk
        self.problems: list[str] = []

    def subscriptions(self):
        return topics.device_subscriptions(self.fleet, self.device_id, "g1")

    def will(self):
        return topics.status(self.fleet, self.device_id), b'{"state":"offline"}', True, 1

    def connected(self):
        return [(topics.status(self.fleet, self.device_id), b'{"state":"ok"}', True, 1)]

    def tick(self):
        return []

    def on_message(self, topic, payload):
        if type(topic) is not str or type(payload) is not bytes or len(payload) > self.max_small:
            self.problems.append(f"on_message({topic!r:.60}, {len(payload)} bytes)")
        if self.rng.random() < 0.2:
            raise BundleError("stub session refuses this message")
        return [(topics.report(self.fleet, self.device_id), b"{}", False, 1)] \
            if self.rng.random() < 0.3 else []

    def on_bundle_chunks(self, topic, chunks):
        stop = self.rng.choice((None, None, 0, 1, 3))
        for n, chunk in enumerate(chunks):
            if not isinstance(chunk, bytes | bytearray | memoryview) or len(chunk) > self.max_chunk:
                self.problems.append(f"bundle chunk {n} of {len(chunk)} bytes")
            if stop is not None and n >= stop:
                break
        return self.connected()


def device_client_reads(stream: bytes) -> int:
    """MQTTClient: CONNACK, then wait_msg until the script is read. Returns the messages seen."""
    got = []
    sock = ScriptSocket(b"\x20\x02\x00\x00" + stream)
    client = dmqtt.MQTTClient(DEVICE_ID, "broker.example", 1883, keepalive=30, max_msg=512,
                              sock_factory=lambda *a: sock)
    client.set_callback(lambda topic, msg: got.append((topic, msg)))
    client.connect()
    while sock.pos < len(sock.data):
        client.wait_msg()
    return len(got)


def device_transport_reads(stream: bytes, rng: random.Random) -> list[str]:
    """Transport.poll over the script until it drops the connection; returns what was wrong."""
    max_small, max_chunk = rng.choice(((512, 64), (16384, 1024), (64, 16)))
    session = StubSession(rng, max_small, max_chunk)
    sockets = [ScriptSocket(b"\x20\x02\x00\x00" + stream)]

    def factory(*args):
        if not sockets:
            raise OSError("the fuzz broker takes one connection")
        return sockets.pop()

    clock = [0]
    transport = dmqtt.Transport(
        session, lambda: dmqtt.MQTTClient(DEVICE_ID, "broker.example", 1883, keepalive=30,
                                          sock_factory=factory),
        lambda: clock[0], lambda ms: None, max_chunk=max_chunk, max_small=max_small,
        backoff=dmqtt.Backoff(1000, 1000, lambda: 0.0))
    for _ in range(len(stream) + 10):
        transport.poll()
        clock[0] += 1
        if transport.connects and transport.client is None:
            break
    else:
        session.problems.append("the connection outlived the end of its stream")
    return session.problems


def device_seed_streams() -> list[bytes]:
    f = DEVICE_FLEET

    def pub(topic, payload, qos=1, retain=True, pid=1):
        return p.Publish(topic, payload, qos, retain, False, pid if qos else 0).encode(p.MQTT311)

    subacks = b"".join(p.Suback(i, [1]).encode(p.MQTT311) for i in range(1, 6))
    bundle_raw = b"\xd8\x62\x84" + bytes(3000)
    return [
        subacks,
        subacks + p.Puback(6).encode(p.MQTT311) + pub(topics.bundle(f), bundle_raw),
        pub(topics.root(f, 2), b"\xd8\x62" + bytes(200), 0) + pub(topics.timestamp(f), b"ts"),
        pub(topics.bucket_bundle(f, 7), bytes(20000), 1, True, 9) + b"\xd0\x00",
        pub("other/topic", b"x" * 100, 0) + pub(topics.group_bundle(f, "g1"), b"", 1, True, 3),
        p.Suback(1, [0x80]).encode(p.MQTT311) + pub(topics.bundle(f), bytes(70), 1, False, 2)
        + b"\xd0\x00" + p.Puback(2).encode(p.MQTT311),
    ]


class DeviceMQTTFuzzer(Harness):
    name = "mqtt-device"

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        super().__init__(seed, limit_s, strict)
        self.corpus = device_seed_streams()

    def run_input(self, data: bytes, replay: bool = False) -> None:
        self.inputs += 1
        self.call("device.MQTTClient.wait_msg", data, device_client_reads, data,
                  allowed=(TransportError, OSError))
        status, problems = self.call("device.Transport.poll", data, device_transport_reads, data,
                                     self.rng, allowed=())
        if status == "ok" and problems:
            self.violation("invalid", "device.Transport.poll", "; ".join(problems)[:300], data)

    def next_input(self) -> bytes:
        return next_mqtt_input(self.rng, self.corpus)


# --------------------------------------------- target "status": what serve ingests from devices
#
# A device status or report payload (JSON) as the server takes it from the
# broker: fleetdb.decode_message, normalise_status, normalise_report, and the
# batch writers ingest_statuses / add_reports on an in-memory SQLite store
# (the path `serve` runs). Seeds: statuses with every field, a last will,
# reports, odd but valid JSON. Inputs: byte mutations, or JSON edits (a field
# set to a telling value: huge or negative numbers, floats, NaN, long text,
# lone surrogate escapes, deep nesting; a field dropped or added).
# Invariant: StatusError with a one-line message, or a normalised row whose
# fields have the documented types and bounds; the batch writers return an
# IngestResult that accounts for the message and raise nothing.

STATUS_FIELDS = {
    "device": DEVICE_ID, "fleet": DEVICE_FLEET, "group": "canary", "bucket": 17, "state": "ok",
    "version": 12, "floor": 11, "bad": [9, 10], "last_revert": "v10 failed its health check",
    "reasons": ["no timestamp"], "root_version": 2, "trusted_time": 1_750_000_000,
    "last_timestamp": 1_750_000_000, "fail_open": ["api.example.com"], "event": "installed",
    "detail": "", "agent_version": "1.4.0", "time": 1_750_000_123, "seq": 41,
}  # fmt: skip
JSON_PALETTE = [
    None, True, False, 0, -1, 2**63 - 1, 2**63, 2**64, -(2**63), 1.5, 1e308, float("nan"),
    float("inf"), "", "ok", "offline", "x" * 40, "y" * 2000, "\u00fc\u4e2d\U0001f600", "\ud800",
    "\udc00x", "a\nb", "\x00", [], [1, 2], ["a", "b"], list(range(70)), ["s"] * 70, {}, {"a": 1},
    "../../etc", "fleet-1", "dev-1", "other-dev",
]  # fmt: skip


def status_seeds() -> list[bytes]:
    docs = [
        dict(STATUS_FIELDS),
        {"device": DEVICE_ID, "fleet": DEVICE_FLEET, "state": "offline"},
        {"state": "offline"},
        {"state": "trial", "version": 13, "seq": 1, "time": 5},
        {"device": DEVICE_ID, "fleet": DEVICE_FLEET, "validation-result": "pin-mismatch",
         "host": "api.example.com", "chain": ["MIIB"], "time": 1},
        {"event": "refused", "detail": "bundle: signature threshold not met"},
    ]
    out = [json.dumps(d, separators=(",", ":")).encode() for d in docs]
    return out + [b"{}", b"[]", b'"ok"', b"null", b'{"state":"ok","state":"stale"}', b" {\"state\" : \"ok\" } "]


def mutate_json(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return mutate_bytes(rng, data, corpus)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(6)
        if isinstance(value, dict) and value and op <= 1:
            key = rng.choice(list(value))
            if op == 0:
                value[key] = copy.deepcopy(rng.choice(JSON_PALETTE))
            else:
                del value[key]
        elif isinstance(value, dict) and op == 2:
            value[rng.choice(list(STATUS_FIELDS) + ["x", "", "validation-result"])] = \
                copy.deepcopy(rng.choice(JSON_PALETTE))
        elif op == 3:  # nesting, written as text: json.dumps itself stops near 1000 levels
            depth = rng.choice((2, 20, 200, 900, 1100, 3000))
            opener, closer = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
            inner = opener * depth + "1" + closer * depth * (rng.random() < 0.8)
            key = rng.choice(list(STATUS_FIELDS))
            return (f'{{"state":"ok","{key}":{inner}}}' if rng.random() < 0.7 else inner).encode()
        elif op == 4 and isinstance(value, dict):
            for key in rng.sample(list(STATUS_FIELDS), 3):
                value[key] = copy.deepcopy(rng.choice(JSON_PALETTE))
        else:
            value = {"state": rng.choice(("ok", "offline", "stale", "")), "seq": rng.choice((0, 1, 2**62))}
    try:
        text = json.dumps(value, ensure_ascii=rng.random() < 0.7, allow_nan=True)
    except (ValueError, RecursionError):
        return mutate_bytes(rng, data, corpus)
    raw = text.encode("utf-8", "surrogatepass")
    return raw if rng.random() < 0.85 else mutate_bytes(rng, raw, corpus)


def status_row_problem(row: dict) -> str | None:
    ints = ("version", "floor", "root_version", "trusted_time", "last_timestamp", "seq", "time")
    if row.get("fleet") != DEVICE_FLEET or row.get("device") != DEVICE_ID:
        return "identity is not the topic's"
    if type(row.get("state")) is not str or not 1 <= len(row["state"]) <= 32:
        return f"state {row.get('state')!r:.60}"
    for key in ints:
        v = row.get(key)
        if v is not None and (type(v) is not int or not 0 <= v <= status_schema.MAX_INT):
            return f"{key} = {v!r:.60}"
    for key in ("last_revert", "event", "detail", "agent_version"):
        v = row.get(key)
        if v is not None and (type(v) is not str or len(v) > status_schema.MAX_TEXT):
            return f"{key} is {type(v).__name__} of {len(v) if isinstance(v, str) else '?'}"
    for key in ("reasons", "fail_open", "bad"):
        v = row.get(key)
        if type(v) is not list or len(v) > status_schema.MAX_LIST:
            return f"{key} is not a short list"
    raw = row.get("raw")
    if type(raw) is not str or len(raw) > status_schema.MAX_BYTES:
        return "raw is not JSON text within the limit"
    json.loads(raw)
    return None


class StatusFuzzer(Harness):
    name = "status"

    def __init__(self, seed: int, limit_s: float, strict: bool = False):
        super().__init__(seed, limit_s, strict)
        self.corpus = status_seeds()
        self.db = fleetdb.open_db(":memory:")
        self.now = 1_750_000_000

    def check_refusal(self, target: str, exc: BaseException, data: bytes) -> None:
        text = str(exc)
        if "\n" in text or "\r" in text or not text:
            self.violation("refusal", target, f"not a one-line message: {text[:200]!r}", data)

    def run_input(self, data: bytes, replay: bool = False) -> None:
        self.inputs += 1
        self.now += 1
        ok = (messages.StatusError,)
        self.call("status.decode_message", data, messages.decode_message, data, allowed=ok)
        status, row = self.call("status.normalise_status", data, messages.normalise_status,
                                DEVICE_FLEET, DEVICE_ID, data, allowed=ok)
        if status == "ok":
            problem = self.call("status.row", data, status_row_problem, row, allowed=())
            if problem[0] == "ok" and problem[1]:
                self.violation("invalid", "status.normalise_status", problem[1], data)
        status, rep = self.call("status.normalise_report", data, messages.normalise_report,
                                DEVICE_FLEET, DEVICE_ID, data, allowed=ok)
        if status == "ok" and not (type(rep[0]) is str and len(rep[0]) <= 64
                                   and type(rep[1]) is str):
            self.violation("invalid", "status.normalise_report", f"{rep!r:.200}", data)
        batch = [(DEVICE_FLEET, DEVICE_ID, data, self.now)]
        for target, fn in (("status.ingest", self.db.ingest_statuses),
                           ("status.add_reports", self.db.add_reports)):
            status, result = self.call(target, data, fn, batch, allowed=())
            if status == "ok":
                total = result.accepted + result.ignored + len(result.rejected)
                if total != 1:
                    self.violation("invalid", target, f"accounts for {total} of 1 message", data)
                for _, why in result.rejected:
                    self.check_refusal(target, messages.StatusError(why), data)

    def next_input(self) -> bytes:
        rng = self.rng
        seed = rng.choice(self.corpus)
        if rng.random() < 0.75:
            return mutate_json(rng, seed, self.corpus)[:MAX_INPUT * 2]
        return mutate_bytes(rng, seed, self.corpus)


HARNESSES = {h.name: h for h in (Fuzzer, X509Fuzzer, MQTTFuzzer, DeviceMQTTFuzzer, StatusFuzzer)}


# ---------------------------------------------------------------- main


def print_summary(s: dict) -> None:
    print(
        f"fuzz_decoders --target {s['target']}: seed {s['seed']}, {s['seconds']} s, "
        f"{s['inputs']} inputs ({s['inputs_per_s']}/s) from {s['seed_documents']} seeds"
    )
    extra = (f"; signatures verified {s['signatures_verified']}"
             if "signatures_verified" in s else "")
    print(f"slowest call {s['slowest_call_ms']} ms ({s['slowest_target']}){extra}")
    print(f"{'call':38} {'accepted':>9} {'refused':>9}  by error class")
    for target, row in s["targets"].items():
        refused = sum(row["refused"].values())
        classes = ", ".join(f"{cls} {n}" for cls, n in row["refused"].items())
        print(f"{target:38} {row['accepted']:>9} {refused:>9}  {classes}")
    print(f"violations: {s['violation_count']} ({len(s['violations'])} distinct)")
    for v in s["violations"]:
        print(f"  {v['kind']} in {v['target']}: {v['error']}\n    input: {v['input_hex']}")
    if s["known"]:
        print(f"known failures (not counted): {s['known_count']} ({len(s['known'])} distinct)")
        for v in s["known"]:
            print(f"  {v['kind']} in {v['target']}: {v['error'][:160]}\n    known: {v['known']}"
                  f"\n    input: {v['input_hex'][:400]}")


def arm_alarm(seconds: float) -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, seconds)


def on_alarm(signum, frame):
    raise Hang


def run_target(h: Harness, seconds: float | None, iterations: int | None) -> float:
    """Seeds first (they must pass too), then mutated inputs, until a budget runs out."""
    start = time.monotonic()
    next_report = start + PROGRESS_EVERY_S
    queue = list(h.corpus)
    while True:
        now = time.monotonic()
        if seconds is not None and now - start >= seconds:
            break
        if iterations is not None and h.inputs >= iterations:
            break
        if now >= next_report:
            rate = h.inputs / (now - start)
            print(f"[{h.name} {now - start:6.1f}s] {h.inputs} inputs ({rate:.0f}/s), "
                  f"violations {h.violation_count}", file=sys.stderr, flush=True)
            next_report = now + PROGRESS_EVERY_S
        h.run_input(queue.pop() if queue else h.next_input())
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", action="append", choices=[*HARNESSES, "all"],
                        help="what to fuzz; repeatable (default: all)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per target (default 60, or none with --iterations)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="inputs per target, seeds included: with --seed, the same inputs "
                             "every run")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    parser.add_argument(
        "--limit", type=float, default=1.0, help="seconds allowed per call (default 1)"
    )
    parser.add_argument("--strict", action="store_true",
                        help="count the known failures (KNOWN) as violations too")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--replay", metavar="HEX", help="run one input through every selected target and exit"
    )
    args = parser.parse_args(argv)
    names = args.target or ["all"]
    names = list(HARNESSES) if "all" in names else list(dict.fromkeys(names))
    seconds = args.seconds
    if seconds is None and args.iterations is None:
        seconds = 60.0

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, on_alarm)
    summaries = {}
    for name in names:
        h = HARNESSES[name](args.seed, args.limit, args.strict)
        if args.json:  # stdout carries only the JSON summary, which lists the inputs too
            h.live = sys.stderr
        if args.replay is not None:
            start = time.monotonic()
            h.run_input(bytes.fromhex(args.replay), replay=True)
            spent = time.monotonic() - start
        else:
            spent = run_target(h, seconds, args.iterations)
        summaries[name] = h.summary(spent)
    violations = sum(s["violation_count"] for s in summaries.values())
    known = sum(s["known_count"] for s in summaries.values())
    if args.json:
        print(json.dumps({"seed": args.seed, "violation_count": violations, "known_count": known,
                          "targets": summaries}, indent=2))
    else:
        for s in summaries.values():
            print_summary(s)
            print()
        print(f"fuzz_decoders: {violations} violation(s), {known} known failure(s) "
              f"in {', '.join(names)}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
