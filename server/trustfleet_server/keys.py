"""Operator signing keys: ECDSA P-256 only.

Trusts: nothing inside a key file. Every file is parsed by `cryptography`
and the key is checked to be EC P-256 before it is used to sign.

Refuses: other algorithms and curves, an encrypted key without (or with the
wrong) passphrase, and overwriting an existing key file unless asked to.
Refusals raise `KeyFileError` naming the file and what was expected; no
message ever contains key material or a passphrase.

Order of things when writing a private key:
  1. serialise to PKCS#8 PEM (encrypted when a passphrase is given);
  2. create missing folders above it with mode 0700, then the file with
     mode 0600 in the open(2) call itself (O_EXCL), so there is no moment
     at which another user could read it;
  3. for a forced overwrite, write a fresh 0600 temp file in the same
     directory and os.replace() it over the old one, so a reader sees the
     old key or the new key, never half of one.

The key id (kid) is SHA-256 over the DER SubjectPublicKeyInfo, the same
bytes an SPKI pin is computed from. Signatures are raw r||s, 32 bytes each,
as COSE requires for ES256 (RFC 9053 section 2.1).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from trustfleet_device._cpython.files import fsync_directory, make_parents, write_atomic, write_fd
from trustfleet_server.errors import UsageError

PASSPHRASE_ENV = "TRUSTFLEET_PASSPHRASE"
PASSPHRASE_HINT = f"--passphrase-file or {PASSPHRASE_ENV}"
MAX_KEY_FILE_BYTES = 1 << 20  # a key or certificate file is a few KiB; refuse anything absurd
COORDINATE_BYTES = 32  # P-256 field size; r and s are each left-padded to this
DIGEST_BYTES = 32  # SHA-256

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
KEY_FOLDER_MODE = 0o700  # a folder made for a new key: owner only

KIND_PRIVATE = "private key"
KIND_PUBLIC = "public key"
KIND_CERTIFICATE = "certificate"

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CERTIFICATE_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class KeyFileError(UsageError):
    """A key file is unreadable, locked, or holds the wrong kind of key (exit code 2)."""


# --------------------------------------------------------------------------- generate, ids


def generate_key() -> ec.EllipticCurvePrivateKey:
    """Return a fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(key: Any) -> bytes:
    """Return the DER SubjectPublicKeyInfo of a public key (or of a private key's public half)."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def kid_of(key: Any) -> bytes:
    """Return the 32-byte key id: SHA-256 over the DER SubjectPublicKeyInfo.

    Args:
        key: a public key, or a private key (its public half is used).
    """
    return hashlib.sha256(spki_der(key)).digest()


def kid_hex(key: Any) -> str:
    """Return `kid_of(key)` as 64 lowercase hex digits."""
    return kid_of(key).hex()


# --------------------------------------------------------------------------- describe, check


def curve_name(curve: ec.EllipticCurve) -> str:
    """Return "P-256" style names for NIST curves, the SEC name otherwise."""
    return _CURVE_NAMES.get(curve.name, curve.name)


def describe_key(key: Any) -> str:
    """Return an algorithm-and-size description such as "RSA 2048" or "EC P-384"."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {curve_name(key.curve)}"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}"
    named = (
        (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, "Ed25519"),
        (ed448.Ed448PublicKey, ed448.Ed448PrivateKey, "Ed448"),
        (x25519.X25519PublicKey, x25519.X25519PrivateKey, "X25519"),
        (x448.X448PublicKey, x448.X448PrivateKey, "X448"),
    )
    for public_type, private_type, name in named:
        if isinstance(key, public_type | private_type):
            return name
    return type(key).__name__


def is_p256(key: Any) -> bool:
    """Return True for an EC key on P-256 (secp256r1), public or private."""
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def check_p256(name: str, key: Any) -> None:
    """Raise KeyFileError unless `key` is EC P-256.

    Raises:
        KeyFileError: naming the file and the algorithm found.
    """
    if not is_p256(key):
        raise KeyFileError(f"{name}: expected an EC P-256 key, found {describe_key(key)}")


# --------------------------------------------------------------------------- passphrases


def read_passphrase(
    args_passphrase_file: str | None,
    *,
    confirm: bool,
    env: str = PASSPHRASE_ENV,
    ask: bool = False,
) -> bytes | None:
    """Find the passphrase the operator supplied, if any.

    Sources, first match wins: the terminal (when `ask`), the first line of
    `args_passphrase_file`, the environment variable `env` (an empty value
    counts as unset). The passphrase is never echoed or logged.

    Args:
        args_passphrase_file: path given with --passphrase-file, or None.
        confirm: when prompting, ask twice and require both to match
            (use for a new key).
        env: environment variable to fall back on.
        ask: prompt on the terminal (--ask-passphrase).

    Raises:
        KeyFileError: the passphrase file is unreadable or empty.
        UsageError: the prompted passphrases are empty or do not match.

    Returns:
        The passphrase bytes, or None when no source supplied one.
    """
    if ask:
        return _ask_passphrase(confirm)
    if args_passphrase_file is not None:
        return _passphrase_from_file(args_passphrase_file)
    value = os.environ.get(env)
    return os.fsencode(value) if value else None


def _passphrase_from_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read passphrase file: {exc.strerror or exc}") from None
    line = data.split(b"\n", 1)[0]
    line = line.removesuffix(b"\r")  # a file saved with CRLF line endings
    if not line:
        raise KeyFileError(f"{path}: passphrase file is empty (the first line is the passphrase)")
    return line


def _ask_passphrase(confirm: bool) -> bytes:
    first = _prompt("Passphrase: ")
    if not first:
        raise UsageError("empty passphrase; refusing to use it")
    if confirm and _prompt("Repeat passphrase: ") != first:
        raise UsageError("the two passphrases do not match")
    return first.encode("utf-8")


def _prompt(text: str) -> str:
    """One passphrase from the terminal. Ctrl-C: one line on stderr, then KeyboardInterrupt (exit 130).

    Raises:
        UsageError: there is no terminal and standard input is closed or empty.
    """
    try:
        if not _has_terminal():
            # getpass would warn that the input may be echoed: there is nothing to echo to.
            line = sys.stdin.readline() if sys.stdin is not None else ""
            if not line:
                raise EOFError
            return line.removesuffix("\n").removesuffix("\r")
        return getpass.getpass(text)
    except EOFError:
        raise UsageError(f"no passphrase given: standard input is closed (use {PASSPHRASE_HINT}, "
                         f"or run on a terminal)") from None
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line; main() prints the message
        raise KeyboardInterrupt("interrupted at the passphrase prompt; nothing written") from None


def _has_terminal() -> bool:
    """Whether getpass can read without echo: /dev/tty opens, or standard input is a terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
    os.close(fd)
    return True


# --------------------------------------------------------------------------- writing


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    """Serialise a P-256 private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    _require_p256_private(key)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: Any) -> bytes:
    """Serialise the public half of `key` as SubjectPublicKeyInfo PEM."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private_key(
    path: str | os.PathLike[str],
    key: ec.EllipticCurvePrivateKey,
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write `key` as PKCS#8 PEM to a file that is mode 0600 from its creation.

    Args:
        path: destination file.
        key: an EC P-256 private key.
        passphrase: encrypt with BestAvailableEncryption when given.
        overwrite: replace an existing file atomically instead of refusing.

    Raises:
        KeyFileError: the file exists and `overwrite` is False.
        ValueError: `key` is not an EC P-256 private key.
        OSError: the directory is not writable.
    """
    _write_file(Path(path), private_key_pem(key, passphrase), PRIVATE_MODE, overwrite)


def write_public_key(path: str | os.PathLike[str], key: Any, *, overwrite: bool = False) -> None:
    """Write the public half of `key` as SubjectPublicKeyInfo PEM, mode 0644.

    Raises:
        KeyFileError: the file exists and `overwrite` is False.
        OSError: the directory is not writable.
    """
    _write_file(Path(path), public_key_pem(key), PUBLIC_MODE, overwrite)


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    if path.is_dir():
        raise KeyFileError(f"{path}: is a folder; give the key's file name, e.g. {path / 'key.pem'}")
    if overwrite:
        # A 0600 temp file in the same directory, renamed over the old one.
        write_atomic(path, data, mode, folder_mode=KEY_FOLDER_MODE)
        return
    make_parents(path, KEY_FOLDER_MODE)
    _create_file(path, data, mode)
    fsync_directory(path.parent)


def _create_file(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL also refuses a symlink planted at `path`, dangling or not.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(
            f"{path}: already exists; refusing to overwrite it (pass --force to replace it)"
        ) from None
    try:
        write_fd(fd, data, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PemBlock:
    """One armoured block of a PEM file: its label and the full text to hand to a loader."""

    label: str
    data: bytes


@dataclass(frozen=True)
class KeyMaterial:
    """One certificate or key read from a file, of any algorithm.

    `public_key` is None only for an encrypted private key read without a
    passphrase (`locked`).
    """

    kind: str  # KIND_PRIVATE, KIND_PUBLIC or KIND_CERTIFICATE
    encrypted: bool
    public_key: Any
    private_key: Any = None
    certificate: x509.Certificate | None = None

    @property
    def locked(self) -> bool:
        return self.kind == KIND_PRIVATE and self.private_key is None


def split_pem(data: bytes) -> list[PemBlock]:
    """Return every `-----BEGIN X-----` ... `-----END X-----` block, in file order."""
    return [
        PemBlock(match.group(1).decode("ascii"), match.group(0))
        for match in _PEM_BLOCK.finditer(data)
    ]


def looks_like_pem(data: bytes) -> bool:
    """Return True when `data` contains PEM armour (as opposed to raw DER)."""
    return b"-----BEGIN " in data


def read_file_limited(path: str | os.PathLike[str], limit: int, error: type[UsageError]) -> bytes:
    """Read a whole file, refusing one larger than `limit` bytes.

    Raises:
        error: the file is larger than `limit`.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes; not a key or certificate file")
    return data


def read_key_objects(
    path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    limit: int = MAX_KEY_FILE_BYTES,
) -> list[KeyMaterial]:
    """Read every certificate and key in a PEM or DER file, in file order.

    Encrypted private keys are decrypted when `passphrase` is given and
    returned locked otherwise; callers decide whether that is acceptable
    (see `require_unlocked`). Keys of any algorithm are returned.

    Raises:
        KeyFileError: nothing recognisable, a block does not parse, or the
            passphrase is wrong.
        OSError: the file cannot be read.
    """
    name = str(path)
    data = read_file_limited(path, limit, KeyFileError)
    if looks_like_pem(data):
        return _pem_objects(name, data, passphrase)
    return [_der_object(name, data, passphrase)]


def require_unlocked(name: str, material: KeyMaterial) -> KeyMaterial:
    """Return `material`, or raise when it is an encrypted key read without a passphrase.

    Raises:
        KeyFileError: the key needs a passphrase.
    """
    if material.locked:
        raise KeyFileError(f"{name}: encrypted key needs a passphrase ({PASSPHRASE_HINT})")
    return material


def _pem_objects(name: str, data: bytes, passphrase: bytes | None) -> list[KeyMaterial]:
    blocks = split_pem(data)
    objects = []
    for index, block in enumerate(blocks, start=1):
        where = name if len(blocks) == 1 else f"{name}: PEM block #{index}"
        material = _pem_block_object(where, block, passphrase)
        if material is not None:
            objects.append(material)
    if not objects:
        found = ", ".join(sorted({b.label for b in blocks})) or "none complete"
        raise KeyFileError(
            f"{name}: expected a PEM certificate, public key or private key; found blocks: {found}"
        )
    return objects


def _pem_block_object(where: str, block: PemBlock, passphrase: bytes | None) -> KeyMaterial | None:
    label = block.label
    if label in _CERTIFICATE_LABELS:
        return _certificate_object(where, x509.load_pem_x509_certificate, block.data)
    if label in _PUBLIC_LABELS:
        return _public_object(where, serialization.load_pem_public_key, block.data)
    if label == "OPENSSH PRIVATE KEY":
        raise KeyFileError(
            f"{where}: OpenSSH key format is not supported; convert it to PKCS#8 "
            "(ssh-keygen -p -m PKCS8 -f FILE)"
        )
    if label.endswith("PRIVATE KEY"):
        return _private_object(where, serialization.load_pem_private_key, block.data, passphrase)
    return None  # e.g. "EC PARAMETERS" written by `openssl ecparam -genkey`


def _der_object(name: str, data: bytes, passphrase: bytes | None) -> KeyMaterial:
    # DER carries no label, so try each kind; only the private-key attempt can
    # need a passphrase, so it goes last.
    with contextlib.suppress(ValueError):
        return _certificate_object(name, x509.load_der_x509_certificate, data, quiet=True)
    with contextlib.suppress(ValueError):
        return _public_object(name, serialization.load_der_public_key, data, quiet=True)
    try:
        return _private_object(
            name, serialization.load_der_private_key, data, passphrase, quiet=True
        )
    except ValueError:
        raise KeyFileError(
            f"{name}: expected a certificate, public key or private key (PEM or DER); none parses"
        ) from None


def _certificate_object(where: str, loader: Any, data: bytes, quiet: bool = False) -> KeyMaterial:
    try:
        cert = load_certificate_quietly(loader, data)
        public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        if quiet:
            raise ValueError(str(exc)) from None
        raise KeyFileError(f"{where}: not a valid X.509 certificate ({exc})") from None
    return KeyMaterial(KIND_CERTIFICATE, False, public, certificate=cert)


def load_certificate_quietly(loader: Any, data: bytes) -> x509.Certificate:
    """Call a cryptography certificate loader without its deprecation warnings.

    Deployed roots exist with a non-positive serial number; cryptography warns
    about them on stderr, which would break output meant for diffing. Pins and
    anchors use only the subject and the SPKI, so the serial does not matter.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return loader(data)


def _public_object(where: str, loader: Any, data: bytes, quiet: bool = False) -> KeyMaterial:
    try:
        public = loader(data)
    except (ValueError, UnsupportedAlgorithm):
        if quiet:
            raise ValueError("not a public key") from None
        raise KeyFileError(f"{where}: not a valid public key") from None
    return KeyMaterial(KIND_PUBLIC, False, public)


def _private_object(
    where: str, loader: Any, data: bytes, passphrase: bytes | None, quiet: bool = False
) -> KeyMaterial:
    # Try without a password first: cryptography raises TypeError exactly when
    # the key is encrypted, which tells "locked" apart from "malformed".
    try:
        key = loader(data, password=None)
    except TypeError:
        return _decrypt_private(where, loader, data, passphrase)
    except UnsupportedAlgorithm:
        raise KeyFileError(f"{where}: private key of an unsupported algorithm") from None
    except ValueError:
        if quiet:
            raise
        raise KeyFileError(f"{where}: not a valid private key") from None
    return KeyMaterial(KIND_PRIVATE, False, key.public_key(), private_key=key)


def _decrypt_private(where: str, loader: Any, data: bytes, passphrase: bytes | None) -> KeyMaterial:
    if passphrase is None:
        return KeyMaterial(KIND_PRIVATE, True, None)
    try:
        key = loader(data, password=passphrase)
    except UnsupportedAlgorithm:
        raise KeyFileError(
            f"{where}: encrypted with an unsupported cipher; re-encrypt it as PKCS#8"
        ) from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{where}: wrong passphrase (or the encrypted key is corrupt)") from None
    return KeyMaterial(KIND_PRIVATE, True, key.public_key(), private_key=key)


def inspect_key_file(path: str | os.PathLike[str], passphrase: bytes | None = None) -> KeyMaterial:
    """Return the main object of a key file: its private key if it has one, else the first object.

    An encrypted private key without a passphrase comes back locked rather
    than raising, so callers can still report what the file is.

    Raises:
        KeyFileError: the file holds nothing recognisable or the passphrase is wrong.
        OSError: the file cannot be read.
    """
    objects = read_key_objects(path, passphrase)
    private = [m for m in objects if m.kind == KIND_PRIVATE]
    return private[0] if private else objects[0]


def load_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Load an EC P-256 private key from a PEM or DER file, or from a token by `pkcs11:` URI.

    Args:
        path: PKCS#8 or SEC1 key file, optionally encrypted; or an RFC 7512
            `pkcs11:` URI (see pkcs11keys: the key signs inside its token).
        passphrase: needed when the key is encrypted; ignored otherwise.

    Raises:
        KeyFileError: no private key in the file, it is encrypted and no
            passphrase was given, the passphrase is wrong, or it is not P-256;
            for a URI, pkcs11keys.Pkcs11Error (a UsageError, exit code 2).
        OSError: the file cannot be read.
    """
    name = str(path)
    if name.startswith("pkcs11:"):
        from trustfleet_server import pkcs11keys

        return pkcs11keys.load_private_key(name)
    material = inspect_key_file(path, passphrase)
    if material.kind != KIND_PRIVATE:
        raise KeyFileError(f"{name}: expected a private key, found a {material.kind}")
    key = require_unlocked(name, material).private_key
    check_p256(name, key)
    return key


def load_public_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> ec.EllipticCurvePublicKey:
    """Load an EC P-256 public key from a public key, private key or certificate file.

    Args:
        path: PEM or DER file; a private key yields its public half, a
            certificate its subject public key.
        passphrase: only needed for an encrypted private key file.

    Raises:
        KeyFileError: nothing recognisable, a locked private key, or not P-256.
        OSError: the file cannot be read.
    """
    name = str(path)
    material = require_unlocked(name, read_key_objects(path, passphrase)[0])
    check_p256(name, material.public_key)
    return material.public_key


# --------------------------------------------------------------------------- signing


def sign_digest(key: ec.EllipticCurvePrivateKey, digest32: bytes) -> bytes:
    """Sign a SHA-256 digest with ECDSA P-256.

    Args:
        key: an EC P-256 private key.
        digest32: the 32-byte SHA-256 of the message.

    Raises:
        ValueError: the key is not P-256 or the digest is not 32 bytes.

    Returns:
        The 64-byte raw signature r || s (RFC 9053 section 2.1).
    """
    _require_p256_private(key)
    if len(digest32) != DIGEST_BYTES:
        raise ValueError(f"digest must be {DIGEST_BYTES} bytes (SHA-256), got {len(digest32)}")
    der = key.sign(bytes(digest32), ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    return r.to_bytes(COORDINATE_BYTES, "big") + s.to_bytes(COORDINATE_BYTES, "big")


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Sign `message` (hashed with SHA-256) and return the 64-byte raw r || s."""
    return sign_digest(key, hashlib.sha256(message).digest())


def _require_p256_private(key: Any) -> None:
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and is_p256(key)):
        raise ValueError(f"expected an EC P-256 private key, got {describe_key(key)}")
