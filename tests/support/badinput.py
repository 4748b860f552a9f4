"""Materials for the bad-input tables (tests/test_bad_input_tables.py): good files made by the real
CLI, and wrong ones of every kind an operator might pass by mistake.

`make(d)` fills folder `d` and returns a map from a short name to its path:

    good:   key (P-256 private, made by `key generate`), pub, r1/b1/t1 keys, root (signed root),
            unsigned (built bundle), bundle (signed bundle), spec (bundle.toml), ca (PEM chain),
            broker (a broker-config folder knowing device esp-1), nsc (an Android network security config)
    wrong:  missing (no such file), dir (a folder), empty (0 bytes), cert (a PEM certificate),
            rsa / p384 (private keys of the wrong kind), rsa_pub (an RSA public key),
            garbage (random bytes)
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from support import fleetkit as fk
from trustfleet_server import cli

GARBAGE = bytes(range(256)) * 3


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _ok(*args: object) -> None:
    code = cli.main([str(a) for a in args])
    assert code == 0, args


def make(d: Path) -> dict[str, Path]:
    """Write the good and the wrong materials into `d` (see the module docstring)."""
    os.environ.pop("TRUSTFLEET_PASSPHRASE", None)
    d.mkdir(parents=True, exist_ok=True)
    m = {name: d / f"{name}.pem" for name in ("key", "r1", "b1", "t1")}
    for path in m.values():
        _ok("key", "generate", "--out", path)
    m["pub"] = d / "key.pub.pem"
    m["root"] = d / "root.cose"
    _ok("root", "create", "--fleet", "acme", "--key", f"root={d / 'r1.pub.pem'}",
        "--key", f"bundle={d / 'b1.pub.pem'}", "--key", f"timestamp={d / 't1.pub.pem'}", "-o", m["root"])
    _ok("root", "sign", "--key", m["r1"], m["root"])
    acme = fk.chain("acme")
    m["ca"] = fk.write_pem(d / "ca.pem", acme.ca, acme.intermediate)
    m["cert"] = fk.write_pem(d / "cert.pem", acme.leaf)
    m["spec"] = d / "bundle.toml"
    m["spec"].write_text(f'fleet = "acme"\nversion = 3\nexpires = "90d"\n'
                         f'[[anchors]]\nfiles = ["{m["ca"]}"]\n')
    m["unsigned"] = d / "unsigned.cose"
    _ok("bundle", "build", m["spec"], "-o", m["unsigned"])
    m["bundle"] = d / "bundle.cose"
    _ok("bundle", "sign", "--key", m["b1"], m["unsigned"], "-o", m["bundle"])
    m["nsc"] = d / "nsc.xml"
    _ok("export", "nsc", m["bundle"], "-o", m["nsc"])
    m["broker"] = d / "broker"
    _ok("broker-config", "--fleet", "acme", "--out", m["broker"])
    _ok("device", "add", "--fleet", "acme", "--id", "esp-1", "--broker-dir", m["broker"],
        "--out", d / "esp-1.json")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    m["rsa"] = d / "rsa.pem"
    m["rsa"].write_bytes(_pem_private(rsa_key))
    m["rsa_pub"] = d / "rsa.pub.pem"
    m["rsa_pub"].write_bytes(_pem_public(rsa_key))
    m["p384"] = d / "p384.pem"
    m["p384"].write_bytes(_pem_private(ec.generate_private_key(ec.SECP384R1())))
    m["garbage"] = d / "garbage.bin"
    m["garbage"].write_bytes(GARBAGE)
    m["empty"] = d / "empty.cose"
    m["empty"].write_bytes(b"")
    m["dir"] = d / "afolder"
    m["dir"].mkdir()
    m["missing"] = d / "nosuch.cose"
    return m
