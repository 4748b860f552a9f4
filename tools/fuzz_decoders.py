#!/usr/bin/env python3
"""Mutational fuzzing of the device decoders: cbor, cose and the bundle schema.

Usage: python tools/fuzz_decoders.py [--seconds N] [--seed S] [--json] [--replay HEX]

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
signer, and bundle.parse_root / parse_bundle / parse_timestamp on the
input and on any parsed COSE payload.

Invariant: every call returns or raises a TrustfleetError subclass; nothing
else. No call takes more than --limit seconds (default 1). decode and
decode_pure agree: the same value, or both refuse. Any violation prints
the input hex (replay it with --replay HEX) and the exit status is 1.

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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("server", "device"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from trustfleet_device import bundle, cbor, cose  # noqa: E402
from trustfleet_device.cbor import Tag  # noqa: E402
from trustfleet_device.errors import DecodeError, TrustfleetError  # noqa: E402
from trustfleet_device.limits import DEFAULT  # noqa: E402
from trustfleet_server import documents, keys  # noqa: E402

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
    if hasattr(bundle, "compact_anchor"):
        return bundle.compact_anchor(name, spki, not_after, label)
    return [name, spki, not_after, label or ""]


def trustfleet_documents(rng: random.Random) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Payloads and signed documents as the operator tools make them; and kid -> point."""
    k1, k2, k3 = (ec.derive_private_key(rng.randrange(1, P256_N), ec.SECP256R1()) for _ in range(3))
    kid1, kid2, kid3 = (keys.kid_of(k) for k in (k1, k2, k3))
    root = documents.encode_payload(
        {
            "type": "root",
            "spec": bundle.SPEC,
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
        "type": "bundle", "spec": bundle.SPEC, "fleet": "fleet-1", "version": 5,
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
        "type": "timestamp", "spec": bundle.SPEC, "fleet": "fleet-1", "time": 1_750_000_000,
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


class Fuzzer:
    def __init__(self, seed: int, limit_s: float):
        self.rng = random.Random(seed)
        self.limit_s = limit_s
        docs, self.points = trustfleet_documents(self.rng)
        self.corpus = docs + vector_documents() + handmade_documents()
        self.corpus_values = []
        for raw in self.corpus:
            with contextlib.suppress(DecodeError):
                self.corpus_values.append(cbor.decode_pure(raw, DEFAULT, COSE_TAGS))
        self.fallback_point = next(iter(self.points.values()))
        self.inputs = 0
        self.accepted: Counter = Counter()
        self.refused: Counter = Counter()
        self.verified = 0
        self.slowest = (0.0, "", b"")
        self.violations: dict[tuple, dict] = {}
        self.violation_count = 0
        self.live = sys.stdout  # where violations are printed as they happen

    # One call of one target under the invariant: ("ok", result), ("refused", error)
    # or ("bug", None) after recording a violation.
    def call(self, target: str, data: bytes, fn, *args, **kw):
        start = time.perf_counter()
        arm_alarm(3 * self.limit_s)
        try:
            result = fn(*args, **kw)
        except TrustfleetError as exc:
            self.refused[(target, type(exc).__name__)] += 1
            return "refused", exc
        except Hang:
            self.violation("hang", target, f"no answer within {3 * self.limit_s:.0f} s", data)
            return "bug", None
        except Exception as exc:  # noqa: BLE001 - this is what we hunt
            self.violation("exception", target, f"{type(exc).__name__}: {exc}", data)
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

    def violation(self, kind: str, target: str, error: str, data: bytes) -> None:
        self.violation_count += 1
        key = (kind, target, error.split(":")[0])
        if key not in self.violations:
            self.violations[key] = {
                "kind": kind,
                "target": target,
                "error": error,
                "input_hex": data.hex(),
            }
            print(
                f"VIOLATION {kind} in {target}: {error}\n  input: {data.hex()}",
                file=self.live,
                flush=True,
            )

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

    def run_input(self, data: bytes, every_tag_set: bool = False) -> None:
        self.inputs += 1
        tag_sets = (COSE_TAGS, ()) if every_tag_set or self.inputs % 4 == 0 else (COSE_TAGS,)
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
                self.call("bundle." + name, payload, getattr(bundle, name), payload, DEFAULT)

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

    def summary(self, seconds: float, seed: int) -> dict:
        targets = sorted(set(self.accepted) | {t for t, _ in self.refused})
        by_target = {
            t: {
                "accepted": self.accepted[t],
                "refused": {cls: n for (tt, cls), n in sorted(self.refused.items()) if tt == t},
            }
            for t in targets
        }
        return {
            "seed": seed,
            "seconds": round(seconds, 2),
            "inputs": self.inputs,
            "inputs_per_s": round(self.inputs / seconds, 1) if seconds else 0,
            "seed_documents": len(self.corpus),
            "signatures_verified": self.verified,
            "slowest_call_ms": round(self.slowest[0] * 1000, 2),
            "slowest_target": self.slowest[1],
            "targets": by_target,
            "violation_count": self.violation_count,
            "violations": list(self.violations.values()),
        }


def print_summary(s: dict) -> None:
    print(
        f"fuzz_decoders: seed {s['seed']}, {s['seconds']} s, {s['inputs']} inputs "
        f"({s['inputs_per_s']}/s) from {s['seed_documents']} seed documents"
    )
    print(
        f"slowest call {s['slowest_call_ms']} ms ({s['slowest_target']}); "
        f"signatures verified {s['signatures_verified']}"
    )
    print(f"{'target':34} {'accepted':>9} {'refused':>9}  by error class")
    for target, row in s["targets"].items():
        refused = sum(row["refused"].values())
        classes = ", ".join(f"{cls} {n}" for cls, n in row["refused"].items())
        print(f"{target:34} {row['accepted']:>9} {refused:>9}  {classes}")
    print(f"violations: {s['violation_count']} ({len(s['violations'])} distinct)")
    for v in s["violations"]:
        print(f"  {v['kind']} in {v['target']}: {v['error']}\n    input: {v['input_hex']}")


def arm_alarm(seconds: float) -> None:
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, seconds)


def on_alarm(signum, frame):
    raise Hang


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    parser.add_argument(
        "--limit", type=float, default=1.0, help="seconds allowed per call (default 1)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--replay", metavar="HEX", help="run one input through every target and exit"
    )
    args = parser.parse_args(argv)

    fuzzer = Fuzzer(args.seed, args.limit)
    if args.json:  # stdout carries only the JSON summary, which lists the inputs too
        fuzzer.live = sys.stderr
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    if args.replay is not None:
        fuzzer.run_input(bytes.fromhex(args.replay), every_tag_set=True)
        return report(fuzzer, time.monotonic() - start, args)

    next_report = start + PROGRESS_EVERY_S
    # The seeds themselves first: they must all pass the invariant too.
    queue = list(fuzzer.corpus)
    while True:
        now = time.monotonic()
        if now - start >= args.seconds:
            break
        if now >= next_report:
            rate = fuzzer.inputs / (now - start)
            print(
                f"[{now - start:6.1f}s] {fuzzer.inputs} inputs ({rate:.0f}/s), "
                f"violations {fuzzer.violation_count}",
                file=sys.stderr,
                flush=True,
            )
            next_report = now + PROGRESS_EVERY_S
        fuzzer.run_input(queue.pop() if queue else fuzzer.next_input())
    return report(fuzzer, time.monotonic() - start, args)


def report(fuzzer: Fuzzer, seconds: float, args: argparse.Namespace) -> int:
    summary = fuzzer.summary(seconds, args.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 1 if fuzzer.violation_count else 0


if __name__ == "__main__":
    sys.exit(main())
