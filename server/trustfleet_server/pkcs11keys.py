"""Signing keys held in a PKCS#11 token (a hardware token, an HSM, or SoftHSM2).

A key is named by an RFC 7512 `pkcs11:` URI, accepted wherever a key file is:
`token=`, `manufacturer=`, `serial=`, `model=` and `slot-id=` choose the
token; `object=` (the label), `id=` (percent-encoded bytes) and `type=`
choose the key. The module comes from `module-path=`, else
$TRUSTFLEET_PKCS11_MODULE, else SoftHSM2's module when it is installed.

The PIN comes from `pin-source=file:PATH` (its first line), else
$TRUSTFLEET_PKCS11_PIN, else a prompt on the terminal. A URI with
`pin-value=` is refused: a PIN on a command line lands in shell history and
the process list.

`Pkcs11PrivateKey` is a cryptography EC private key whose `sign` runs
CKM_ECDSA inside the token, so `keys.sign`, `documents` and `serve` use it
as they use a key read from a file. Its private half never leaves the token:
`private_bytes` refuses. Keys made by `generate` are P-256 with CKA_SENSITIVE
true and CKA_EXTRACTABLE false.

Every failure (no module, wrong PIN, locked token, no such token or key,
several matches, a key that is not EC P-256) raises `Pkcs11Error`, one line.
The library is python-pkcs11, imported only when a `pkcs11:` URI is used.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from trustfleet_server.errors import UsageError

SCHEME = "pkcs11:"
MODULE_ENV = "TRUSTFLEET_PKCS11_MODULE"
PIN_ENV = "TRUSTFLEET_PKCS11_PIN"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
INSTALL_HINT = "pip install 'trustfleet[pkcs11]'"
PIN_HINT = f"pin-source=file:PATH in the URI, or ${PIN_ENV}"
MAX_PIN_BYTES = 4096

_PATH_ATTRS = ("token", "manufacturer", "serial", "model", "object", "id", "type", "slot-id")
_QUERY_ATTRS = ("module-path", "module-name", "pin-source", "pin-value")
_TYPES = ("private", "public", "cert", "secret-key", "data")
_P256_OID = "1.2.840.10045.3.1.7"


class Pkcs11Error(UsageError):
    """A PKCS#11 key cannot be used: module, token, PIN or key (exit code 2).

    keys.load_private_key dispatches `pkcs11:` URIs here, so this module does
    not import `keys` (no import circle).
    """


def is_uri(text: object) -> bool:
    """True when `text` (a str or Path) is a `pkcs11:` URI rather than a file name."""
    return str(text).startswith(SCHEME)


# --------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class Uri:
    """The attributes of a `pkcs11:` URI that trustfleet uses, percent-decoded."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    text: str = field(default="", compare=False)


def parse_uri(text: str) -> Uri:
    """Parse an RFC 7512 URI.

    Raises:
        Pkcs11Error: not a `pkcs11:` URI, an unknown or repeated attribute, a bad
            slot-id or type, or a `pin-value` (never accepted).
    """
    text = str(text)
    if not is_uri(text):
        raise Pkcs11Error(f"{text}: not a pkcs11: URI")
    path, _, query = text[len(SCHEME):].partition("?")
    values: dict[str, bytes] = {}
    for part, allowed, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            if name == "pin-value":
                raise Pkcs11Error(f"{_shown(text)}: pin-value is refused (a PIN on the command line is "
                                  f"readable by others); use {PIN_HINT}")
            if not eq or name not in allowed:
                where = "path" if sep == ";" else "query"
                raise Pkcs11Error(f"{_shown(text)}: unknown {where} attribute {name!r} (known: "
                                  f"{', '.join(a for a in allowed if a != 'pin-value')})")
            if name in values:
                raise Pkcs11Error(f"{_shown(text)}: {name} is given twice")
            values[name] = urllib.parse.unquote_to_bytes(value)

    def string(name: str) -> str | None:
        raw = values.get(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Pkcs11Error(f"{_shown(text)}: {name} is not UTF-8 text") from None

    slot = string("slot-id")
    if slot is not None and not slot.isdigit():
        raise Pkcs11Error(f"{_shown(text)}: slot-id must be a decimal number, got {slot!r}")
    kind = string("type")
    if kind is not None and kind not in _TYPES:
        raise Pkcs11Error(f"{_shown(text)}: type must be one of {', '.join(_TYPES)}, got {kind!r}")
    if "module-name" in values and "module-path" not in values:
        raise Pkcs11Error(f"{_shown(text)}: module-name is not supported; give module-path= "
                          f"(or set ${MODULE_ENV})")
    return Uri(token=string("token"), manufacturer=string("manufacturer"), serial=string("serial"),
               model=string("model"), slot_id=int(slot) if slot is not None else None,
               object=string("object"), id=values.get("id"), type=kind,
               module_path=string("module-path"), pin_source=string("pin-source"), text=text)


def _shown(text: str) -> str:
    """The URI for a message, with any pin-value's value left out."""
    return text.split("?", 1)[0] + ("?..." if "?" in text else "")


def _quote(value: str | bytes) -> str:
    return urllib.parse.quote(value, safe="-._~")


def format_uri(*, token: str, object: str | None = None, id: bytes | None = None,
               serial: str | None = None, module_path: str | None = None,
               pin_source: str | None = None) -> str:
    """Build a `pkcs11:` URI naming one private key (id= every byte percent-encoded)."""
    path = [f"token={_quote(token)}"]
    if serial:
        path.append(f"serial={_quote(serial)}")
    if object is not None:
        path.append(f"object={_quote(object)}")
    if id is not None:
        path.append("id=" + "".join(f"%{b:02x}" for b in id))
    path.append("type=private")
    query = [f"{name}={urllib.parse.quote(value, safe='/:-._~')}"
             for name, value in (("module-path", module_path), ("pin-source", pin_source)) if value]
    return SCHEME + ";".join(path) + ("?" + "&".join(query) if query else "")


# --------------------------------------------------------------------------- module, token, PIN

_LIBS: dict[str, Any] = {}


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise Pkcs11Error(f"pkcs11: URIs need python-pkcs11, which is not installed ({INSTALL_HINT})") from None
    return pkcs11


def module_path(uri: Uri) -> str:
    """The PKCS#11 module to load for `uri`.

    Raises:
        Pkcs11Error: none given and SoftHSM2 is not installed.
    """
    path = uri.module_path or os.environ.get(MODULE_ENV) or None
    if path is None and os.path.exists(SOFTHSM_MODULE):
        path = SOFTHSM_MODULE
    if path is None:
        raise Pkcs11Error(f"no PKCS#11 module: give module-path= in the URI or set ${MODULE_ENV}")
    return path


def _load_library(path: str) -> Any:
    pkcs11 = _pkcs11()
    if path not in _LIBS:
        if not os.path.exists(path):
            raise Pkcs11Error(f"PKCS#11 module {path} does not exist")
        try:
            _LIBS[path] = pkcs11.lib(path)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise Pkcs11Error(f"cannot load PKCS#11 module {path}: {_reason(exc)}") from None
    return _LIBS[path]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _token_name(token: Any) -> str:
    return f"{token.label!r} (serial {_serial(token)}, slot {token.slot.slot_id})"


def _serial(token: Any) -> str:
    serial = token.serial
    return (serial.decode("ascii", "replace") if isinstance(serial, bytes) else str(serial)).strip()


def find_token(uri: Uri) -> Any:
    """The one token `uri` names.

    Raises:
        Pkcs11Error: no token or several tokens match, naming those present.
    """
    pkcs11 = _pkcs11()
    lib = _load_library(module_path(uri))
    try:
        slots = lib.get_slots(token_present=True)
        tokens = [slot.get_token() for slot in slots]
        # An uninitialised slot (SoftHSM2 always offers one) holds no keys.
        tokens = [t for t in tokens if t.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED]
    except pkcs11.exceptions.PKCS11Error as exc:
        raise Pkcs11Error(f"PKCS#11 module cannot list its tokens: {_reason(exc)}") from None

    def wanted(token: Any) -> bool:
        return ((uri.token is None or token.label == uri.token)
                and (uri.serial is None or _serial(token) == uri.serial)
                and (uri.manufacturer is None or token.manufacturer_id.strip() == uri.manufacturer)
                and (uri.model is None or token.model.strip() == uri.model)
                and (uri.slot_id is None or token.slot.slot_id == uri.slot_id))

    found = [t for t in tokens if wanted(t)]
    present = ", ".join(_token_name(t) for t in tokens) or "none"
    if not found:
        raise Pkcs11Error(f"{_shown(uri.text)}: no such token; tokens present: {present}")
    if len(found) > 1:
        raise Pkcs11Error(f"{_shown(uri.text)}: {len(found)} tokens match ({present}); add token=, "
                          f"serial= or slot-id=")
    return found[0]


def read_pin(uri: Uri) -> str:
    """The user PIN: pin-source file, then $TRUSTFLEET_PKCS11_PIN, then a terminal prompt.

    Raises:
        Pkcs11Error: the pin-source is unreadable or empty, or there is no source at all.
    """
    if uri.pin_source is not None:
        return _pin_from_file(uri.pin_source)
    value = os.environ.get(PIN_ENV)
    if value:
        return value
    if _has_terminal():
        try:
            pin = getpass.getpass("PKCS#11 PIN: ")
        except EOFError:
            pin = ""
        if pin:
            return pin
    raise Pkcs11Error(f"no PKCS#11 PIN given: use {PIN_HINT}, or run on a terminal")


def _has_terminal() -> bool:
    """Whether getpass can read without echo (as keys._has_terminal)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def kid_hex(public: ec.EllipticCurvePublicKey) -> str:
    """The kid as `key show` prints it: SHA-256 of the DER SubjectPublicKeyInfo, hex."""
    return hashlib.sha256(public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def describe(public: ec.EllipticCurvePublicKey) -> str:
    """"EC P-256" for P-256, "EC <SEC name>" for other curves."""
    return "EC P-256" if isinstance(public.curve, ec.SECP256R1) else f"EC {public.curve.name}"


def _pin_from_file(source: str) -> str:
    if source.startswith("file:"):
        path = source.removeprefix("file:")
        path = "/" + path.lstrip("/") if path.startswith("//") else path
    elif ":" in source:
        raise Pkcs11Error(f"pin-source {source!r}: only file: sources are read")
    else:
        path = source
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PIN_BYTES)
    except OSError as exc:
        raise Pkcs11Error(f"pin-source {path}: cannot read it: {exc.strerror or exc}") from None
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not line:
        raise Pkcs11Error(f"pin-source {path}: empty (the first line is the PIN)")
    return line.decode("utf-8", "replace")


def open_session(uri: Uri, *, rw: bool = False) -> tuple[Any, Any]:
    """(token, session) logged in as the user.

    Raises:
        Pkcs11Error: a wrong PIN, a locked token, or the token refused the session.
    """
    pkcs11 = _pkcs11()
    exc_ = pkcs11.exceptions
    token = find_token(uri)
    pin = read_pin(uri)
    name = f"token {token.label!r}"
    try:
        return token, token.open(rw=rw, user_pin=pin)
    except exc_.PinIncorrect:
        raise Pkcs11Error(f"{name}: wrong PIN (each wrong try counts towards locking it)") from None
    except exc_.PinLocked:
        raise Pkcs11Error(f"{name}: locked after too many wrong PINs; its security officer must "
                          f"unlock it") from None
    except (exc_.PinExpired, exc_.UserPinNotInitialized):
        raise Pkcs11Error(f"{name}: its user PIN is not set or has expired; set it first") from None
    except (exc_.PinInvalid, exc_.PinLenRange):
        raise Pkcs11Error(f"{name}: the PIN has characters or a length this token does not "
                          f"accept") from None
    except exc_.PKCS11Error as exc:
        raise Pkcs11Error(f"{name}: cannot log in: {_reason(exc)}") from None


# --------------------------------------------------------------------------- keys


def _label(obj: Any) -> str:
    pkcs11 = _pkcs11()
    try:
        return obj[pkcs11.Attribute.LABEL]
    except pkcs11.exceptions.PKCS11Error:
        return ""


def _id(obj: Any) -> bytes:
    pkcs11 = _pkcs11()
    try:
        return bytes(obj[pkcs11.Attribute.ID])
    except pkcs11.exceptions.PKCS11Error:
        return b""


def _describe(obj: Any) -> str:
    return f"object={_label(obj)!r} id={_id(obj).hex() or '-'}"


def private_keys(session: Any, uri: Uri | None = None) -> list[Any]:
    """The private keys on the token, those `uri` names when given."""
    pkcs11 = _pkcs11()
    A = pkcs11.Attribute
    template: dict[Any, Any] = {A.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}
    if uri is not None and uri.object is not None:
        template[A.LABEL] = uri.object
    if uri is not None and uri.id is not None:
        template[A.ID] = uri.id
    return list(session.get_objects(template))


def public_key_of(session: Any, private: Any) -> ec.EllipticCurvePublicKey | None:
    """The public half of a token private key: the public key (or certificate) with its CKA_ID
    (and label when it has no id), or None when the token holds neither or it is not EC."""
    from pkcs11.util.ec import encode_ec_public_key

    pkcs11 = _pkcs11()
    A = pkcs11.Attribute
    key_id = _id(private)
    match = {A.ID: key_id} if key_id else {A.LABEL: _label(private)}
    for obj in session.get_objects({A.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, **match}):
        try:
            if obj[A.KEY_TYPE] != pkcs11.KeyType.EC:
                return None
            return serialization.load_der_public_key(encode_ec_public_key(obj))
        except (pkcs11.exceptions.PKCS11Error, ValueError):
            continue
    for obj in session.get_objects({A.CLASS: pkcs11.ObjectClass.CERTIFICATE, **match}):
        try:
            from cryptography import x509
            public = x509.load_der_x509_certificate(bytes(obj[A.VALUE])).public_key()
        except (pkcs11.exceptions.PKCS11Error, ValueError):
            continue
        return public if isinstance(public, ec.EllipticCurvePublicKey) else None
    return None


def _key_kind(private: Any) -> str:
    pkcs11 = _pkcs11()
    try:
        return pkcs11.KeyType(private[pkcs11.Attribute.KEY_TYPE]).name
    except (pkcs11.exceptions.PKCS11Error, ValueError):
        return "unknown"


def find_private_key(session: Any, uri: Uri) -> Any:
    """The one private key `uri` names.

    Raises:
        Pkcs11Error: none or several match, naming the keys present.
    """
    if uri.type not in (None, "private"):
        raise Pkcs11Error(f"{_shown(uri.text)}: type={uri.type} is not a private key; use type=private "
                          f"or leave type out")
    if uri.object is None and uri.id is None:
        raise Pkcs11Error(f"{_shown(uri.text)}: name the key with object= (its label) or id=")
    found = private_keys(session, uri)
    if len(found) == 1:
        return found[0]
    present = "; ".join(_describe(k) for k in private_keys(session)) or "none"
    if not found:
        raise Pkcs11Error(f"{_shown(uri.text)}: no such private key on the token; private keys "
                          f"there: {present}")
    raise Pkcs11Error(f"{_shown(uri.text)}: {len(found)} private keys match ({present}); add id= "
                      f"to pick one")


class Pkcs11PrivateKey(ec.EllipticCurvePrivateKey):
    """An EC P-256 private key inside a token: signs there, never exports.

    Keeps its session open for as long as it lives (serve signs timestamps
    for days); signing is serialised, as sessions are not shared between
    threads.
    """

    def __init__(self, session: Any, key: Any, public: ec.EllipticCurvePublicKey, name: str):
        self._session = session
        self._key = key
        self._public = public
        self.name = name
        self._lock = threading.Lock()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """ECDSA in the token (CKM_ECDSA over the digest); returns a DER signature like cryptography."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("a PKCS#11 EC key signs with ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        pkcs11 = _pkcs11()
        try:
            with self._lock:
                raw = self._key.sign(digest, mechanism=pkcs11.Mechanism.ECDSA)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise Pkcs11Error(f"{self.name}: the token refused to sign: {_reason(exc)}") from None
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        raise Pkcs11Error(f"{self.name}: a PKCS#11 key never leaves its token")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise Pkcs11Error(f"{self.name}: a PKCS#11 key never leaves its token")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise Pkcs11Error(f"{self.name}: a trustfleet PKCS#11 key only signs")

    def __copy__(self) -> Pkcs11PrivateKey:
        return self

    def __deepcopy__(self, memo: dict) -> Pkcs11PrivateKey:
        return self


def load_private_key(text: str) -> Pkcs11PrivateKey:
    """Open the token a `pkcs11:` URI names and return its EC P-256 private key.

    Raises:
        Pkcs11Error: any failure on the way (see the module docstring), one line.
    """
    uri = parse_uri(text)
    token, session = open_session(uri)
    try:
        key = find_private_key(session, uri)
        name = f"token {token.label!r} {_describe(key)}"
        kind = _key_kind(key)
        if kind != "EC":
            raise Pkcs11Error(f"{name}: expected an EC P-256 key, found a {kind} key")
        public = public_key_of(session, key)
        if public is None:
            raise Pkcs11Error(f"{name}: no EC public key or certificate with the same id on the "
                              f"token, so its kid cannot be known")
        if describe(public) != "EC P-256":
            raise Pkcs11Error(f"{name}: expected an EC P-256 key, found {describe(public)}")
    except BaseException:
        session.close()
        raise
    return Pkcs11PrivateKey(session, key, public, name)


# --------------------------------------------------------------------------- generate, list


@dataclass(frozen=True)
class TokenKey:
    """One private key on a token, as `key list --pkcs11` shows it."""

    token: str
    label: str
    id: bytes
    kind: str  # "EC P-256", "RSA", ...
    kid: str | None
    sensitive: bool | None
    extractable: bool | None
    uri: str

    def as_json(self) -> dict[str, Any]:
        return {"token": self.token, "label": self.label, "id": self.id.hex(), "kind": self.kind, "kid": self.kid,
                "sensitive": self.sensitive, "extractable": self.extractable, "uri": self.uri}


def _flag(obj: Any, attribute: Any) -> bool | None:
    pkcs11 = _pkcs11()
    try:
        return bool(obj[attribute])
    except pkcs11.exceptions.PKCS11Error:
        return None


def _token_key(session: Any, token: Any, private: Any, uri: Uri) -> TokenKey:
    pkcs11 = _pkcs11()
    public = public_key_of(session, private) if _key_kind(private) == "EC" else None
    kind = describe(public) if public is not None else _key_kind(private)
    return TokenKey(
        token=token.label, label=_label(private), id=_id(private), kind=kind,
        kid=kid_hex(public) if public is not None else None,
        sensitive=_flag(private, pkcs11.Attribute.SENSITIVE),
        extractable=_flag(private, pkcs11.Attribute.EXTRACTABLE),
        uri=format_uri(token=token.label, serial=_serial(token), object=_label(private),
                       id=_id(private) or None, module_path=uri.module_path, pin_source=uri.pin_source))


def list_keys(text: str) -> list[TokenKey]:
    """The private keys on the token `text` names (object=/id= narrow the list).

    Raises:
        Pkcs11Error: the token cannot be opened.
    """
    uri = parse_uri(text)
    token, session = open_session(uri)
    try:
        return [_token_key(session, token, k, uri) for k in private_keys(session, uri)]
    finally:
        session.close()


def generate(text: str, label: str | None = None) -> tuple[TokenKey, ec.EllipticCurvePublicKey]:
    """Generate a P-256 key pair inside the token: the private key sensitive, not extractable,
    for signing only. The label is `label`, else the URI's object=; the id is 16 random bytes.

    Raises:
        Pkcs11Error: no label, a key with that label exists, or the token refuses.
    """
    from pkcs11.util.ec import encode_named_curve_parameters

    pkcs11 = _pkcs11()
    A = pkcs11.Attribute
    uri = parse_uri(text)
    label = label if label is not None else uri.object
    if not label:
        raise Pkcs11Error(f"{_shown(uri.text)}: give the new key a label (--label, or object= in "
                          f"the URI)")
    if uri.id is not None:
        raise Pkcs11Error(f"{_shown(uri.text)}: leave id= out; the new key gets a random id")
    token, session = open_session(uri, rw=True)
    try:
        if list(session.get_objects({A.LABEL: label})):
            raise Pkcs11Error(f"token {token.label!r}: an object labelled {label!r} exists already; "
                              f"choose another label")
        key_id = secrets.token_bytes(16)
        try:
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC, {A.EC_PARAMS: encode_named_curve_parameters(_P256_OID)}, local=True)
            _, private = params.generate_keypair(
                id=key_id, label=label, store=True, mechanism=pkcs11.Mechanism.EC_KEY_PAIR_GEN,
                public_template={A.TOKEN: True, A.VERIFY: True, A.PRIVATE: False, A.DERIVE: False},
                private_template={A.TOKEN: True, A.PRIVATE: True, A.SIGN: True, A.SENSITIVE: True,
                                  A.EXTRACTABLE: False, A.DERIVE: False, A.DECRYPT: False,
                                  A.UNWRAP: False})
        except pkcs11.exceptions.PKCS11Error as exc:
            raise Pkcs11Error(f"token {token.label!r}: cannot generate a P-256 key: {_reason(exc)}") from None
        made = _token_key(session, token, private, uri)
        public = public_key_of(session, private)
        if public is None or made.extractable or not made.sensitive:
            raise Pkcs11Error(f"token {token.label!r}: the new key {label!r} did not come out as "
                              f"asked (EC, sensitive, not extractable); do not use it")
        return made, public
    finally:
        session.close()

