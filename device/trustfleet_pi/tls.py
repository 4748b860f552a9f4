"""TLS for applications on the Raspberry Pi, enforcing the installed trust store.

What it trusts: the installed Bundle (verified by the agent before it was
stored), the device's trusted time (Device.trusted_time: never earlier than
the last authenticated time or the firmware build time), and, on managed
devices whose bundle allows them, the enterprise anchors given here. The
server's chain is trusted for nothing until TrustStore.evaluate() accepts
it.

How a connection is checked. CPython 3.11 has no certificate-verify
callback, so TrustContext (an ssl.SSLContext) makes TrustSocket and
TrustObject (asyncio) instances, which after the handshake, and before any
application data can be read or written, take the server's chain as sent
(`_sslobj.get_unverified_chain()`, public from 3.13) and run
TrustStore.evaluate(server_hostname, chain, trusted_now): path validation
to the bundle's anchors, hostname, distrust, then pins with their expiry.
A "reject" closes the socket and raises TrustVerificationError, an
ssl.SSLCertVerificationError whose message carries the decision's reason;
"accept-fail-open" (pins past their expiry, chain still valid) connects.
Every report a decision carries (TrustKit's format, from trust.evaluate)
goes into `context.reports`, a deduplicated, rate-limited ReportQueue. The
agent gives every context it makes (broker, health checks, context_for)
the device's one SharedReports, which its MQTT session drains into
tf/<fleet>/report/<device>; SharedReports locks, since handshakes and the
session may run on different threads.

OpenSSL's own verification, and why it is sometimes off:
- A compact anchor is only a subject and an SPKI: there is no certificate
  to load into OpenSSL. When any anchor is compact, OpenSSL runs with
  CERT_NONE and check_hostname=False, and evaluate() alone decides.
- When every anchor (the active enterprise ones included) is a whole
  certificate, OpenSSL also verifies, as defence in depth: CERT_REQUIRED,
  check_hostname, those anchors as its only CAs (never the system store).
  Both validators must agree. Two flags make OpenSSL judge what evaluate()
  judges, no more: X509_V_FLAG_PARTIAL_CHAIN (a bundle anchor may be an
  intermediate) and X509_V_FLAG_NO_CHECK_TIME (validity is checked at the
  device's trusted time by evaluate(), not at a Pi clock that may read
  2000 after a power cut). When OpenSSL refuses, evaluate() still runs on
  the chain (for its reason and report) when OpenSSL kept it.
- In both modes the handshake proves the server holds the leaf's key.

Refused: creating a socket without server_hostname (pins and names are
checked against it), server-side use, and a name other than `host` when the
context was made for one host. An IP literal as the name is checked against
the certificate's iPAddress SANs (Python sends no SNI for it, and OpenSSL,
when it verifies, matches the address too). A resumed session carries no chain and is
therefore rejected: do not pass `session=`.

A context is a snapshot of the store it was made from, anchors loaded into
RAM (a store read from flash leaves them there): make a new context after an
install. Trusted time is read at every handshake.
"""

from __future__ import annotations

import _ssl
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trustfleet_device import trust
from trustfleet_device.documents import Bundle
from trustfleet_device.errors import DeviceError
from trustfleet_device.reports import ReportQueue
from trustfleet_pi.oserrors import plain_reason

DEFAULT_PORT = 443
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0+); Python has no name for it.
_NO_CHECK_TIME = 0x200000
# OpenSSL's X509_V_ERR_APPLICATION_VERIFICATION: "rejected by the application".
_APPLICATION_VERIFICATION = 50


class SharedReports(ReportQueue):
    """A ReportQueue that several threads may add to and drain (one per device on the Pi)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()

    def add(self, report: dict, now: int) -> bool:
        with self.lock:
            return super().add(report, now)

    def drain(self) -> list[dict]:
        with self.lock:
            return super().drain()

    def __len__(self) -> int:
        with self.lock:
            return super().__len__()


class TrustVerificationError(ssl.SSLCertVerificationError):
    """The trust store rejected the server's chain. `decision` is the trust.Decision."""

    def __init__(self, host: str, decision: trust.Decision):
        super().__init__(1, f"certificate verify failed for {host}: {decision.reason} "
                            f"({decision.result})")
        self.decision = decision
        self.verify_code = _APPLICATION_VERIFICATION
        self.verify_message = decision.reason
        self.reason = "CERTIFICATE_VERIFY_FAILED"
        self.library = "SSL"


# --------------------------------------------------------------------------- endpoints


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split "host", "host:port" or "[v6]:port" into (host, port).

    Raises:
        ValueError: not of that form, the host is neither a DNS name nor an IP address,
            or the port is not 1..65535.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"endpoint {text!r}: expected host or host:port")
    text = text.strip()
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise ValueError(f"endpoint {text!r}: expected [address]:port")
        host = text[1:end]
        if end + 1 < len(text):
            port = text[end + 2:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"endpoint {text!r}: write an IPv6 address as [address]:port")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {text!r}: expected host:port with a port from 1 to 65535")
    if not (is_ip(host) or is_dns_name(host)):
        raise ValueError(f"endpoint {text!r}: {host!r} is neither a DNS name nor an IP address")
    return host, int(port)


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def is_dns_name(name: str) -> bool:
    """A host name TLS can send and check: dot-separated labels of letters, digits, "-" (and
    "_"), at most 253 characters; an internationalised name counts by its IDNA form."""
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return False
    ascii_name = ascii_name[:-1] if ascii_name.endswith(".") else ascii_name
    if not ascii_name or len(ascii_name) > 253:
        return False
    return all(_LABEL.match(label) for label in ascii_name.split("."))


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 address (brackets allowed): not a name a certificate can match."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the context


def _peer_chain(sslobj: Any) -> list[bytes]:
    """The certificates the server sent, as DER, leaf first (empty for a resumed session)."""
    get = getattr(sslobj, "get_unverified_chain", None)
    if get is None:  # CPython < 3.10: no way to read the chain, so no way to trust it
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in get() or ()]


class TrustContext(ssl.SSLContext):
    """A client SSLContext whose connections are decided by a trust.TrustStore.

    Attributes: trust_store, reports (ReportQueue), openssl_verifies (True
    when OpenSSL verifies too: every anchor is a whole certificate), host
    (the only server name allowed, or None).
    """

    sslsocket_class: type = ssl.SSLSocket  # replaced below by TrustSocket
    sslobject_class: type = ssl.SSLObject  # replaced below by TrustObject

    def __new__(cls, *args: Any, **kwargs: Any) -> TrustContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, store: trust.TrustStore, now: Callable[[], int], *, host: str | None = None,
                 reports: ReportQueue | None = None):
        store = in_memory(store)
        self.trust_store = store
        self.trust_now = now
        self.host = _name_for(host, None, None) if host is not None else None
        self.reports = reports if reports is not None else SharedReports()
        self._reports_lock = threading.Lock()  # for a plain ReportQueue given by the caller
        self.minimum_version = ssl.TLSVersion.TLSv1_2
        ders = [a.der for a in store.anchors]
        self.openssl_verifies = bool(ders) and all(d is not None for d in ders)
        if self.openssl_verifies:
            # Defence in depth; see the module docstring for the two flags.
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | _NO_CHECK_TIME
            self.hostname_checks_common_name = False
            self.load_verify_locations(cadata=b"".join(ders))
        else:
            self.check_hostname = False
            self.verify_mode = ssl.CERT_NONE

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        name = _name_for(server_hostname, self.host, server_side)
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
                                   name, session)

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        name = _name_for(server_hostname, self.host, server_side)
        return super().wrap_bio(incoming, outgoing, server_side, name, session)

    def decide(self, host: str, chain: Sequence[bytes], port: int = DEFAULT_PORT) -> trust.Decision:
        """Evaluate a chain for host (reached on port) at the trusted time; queue its report."""
        now = int(self.trust_now())
        decision = self.trust_store.evaluate(host, list(chain), now, port)
        if decision.report is not None:
            if isinstance(self.reports, SharedReports):
                self.reports.add(decision.report, now)
            else:
                with self._reports_lock:
                    self.reports.add(decision.report, now)
        return decision


def _name_for(server_hostname: str | bytes | None, bound: str | None,
              server_side: bool | None) -> str:
    """The server name to send and check. Raises: ValueError (a caller mistake)."""
    if server_side:
        raise ValueError("a trustfleet TLS context verifies servers; it cannot be used server-side")
    if isinstance(server_hostname, bytes):
        server_hostname = server_hostname.decode("ascii", "replace")
    if not server_hostname:
        if bound is None:
            raise ValueError("server_hostname is required: the store checks the certificate's "
                             "names and the pins against it")
        server_hostname = bound
    if is_ip(server_hostname):
        # Checked against iPAddress SANs; Python sends no SNI for an address.
        server_hostname = ipaddress.ip_address(server_hostname.strip("[]")).compressed
    if bound is not None and _name_key(server_hostname) != _name_key(bound):
        raise ValueError(f"this context is for {bound}, not {server_hostname}")
    return server_hostname


def _name_key(name: str) -> Any:
    """What two spellings of one server name have in common (an address, or the DNS name)."""
    if is_ip(name):
        return ipaddress.ip_address(name.strip("[]"))
    return trust.normalize_host(name) or name


def _peer_port(conn: Any) -> int:
    """The server's port, for the report (a memory-BIO connection has none: 443)."""
    try:
        port = conn.getpeername()[1]
    except (AttributeError, OSError, IndexError, TypeError):
        return DEFAULT_PORT
    return port if isinstance(port, int) else DEFAULT_PORT


def _verify(conn: TrustSocket | TrustObject, openssl_error: ssl.SSLCertVerificationError | None
            ) -> trust.Decision:
    """Decide on the finished handshake of conn; raise TrustVerificationError when rejected."""
    ctx = conn.context
    host = conn.server_hostname
    chain = _peer_chain(conn._sslobj) if conn._sslobj is not None else []
    if not chain and openssl_error is None and conn.session_reused:
        decision = trust.Decision(trust.REJECT, trust.CHAIN_INVALID,
                                  "a resumed session carries no certificate chain to check",
                                  None, None, None, [])
    else:
        decision = ctx.decide(host, chain, _peer_port(conn))
    if openssl_error is not None:
        why = f"OpenSSL refused the chain: {openssl_error.verify_message}"
        if decision.accepted():
            decision = trust.Decision(trust.REJECT, trust.CHAIN_INVALID,
                                      f"{why} (the trust store alone would accept)",
                                      decision.pinset, decision.anchor, None, [])
        elif chain:
            decision.reason = f"{decision.reason}; {why}"
        else:
            decision.reason = why
    conn.trust_decision = decision
    if not decision.accepted():
        raise TrustVerificationError(host, decision)
    return decision


class _TrustGated:
    """read and write wait for the trust decision (the class's _trust_gate), then pass through.

    Mixed in before ssl.SSLSocket (TrustSocket) and ssl.SSLObject (TrustObject).
    """

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._trust_gate()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        self._trust_gate()
        return super().write(data)


class TrustSocket(_TrustGated, ssl.SSLSocket):
    """An SSLSocket that lets no data through until the trust store accepted the server.

    trust_decision: the trust.Decision, once the handshake finished.
    """

    trust_decision: trust.Decision | None = None
    _trust_done = False

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except ssl.SSLCertVerificationError as exc:
            if self._trust_done or isinstance(exc, TrustVerificationError):
                raise
            self._trust_done = True
            try:
                _verify(self, exc)
            except TrustVerificationError:
                self.close()
                raise
            raise  # not reached: _verify rejects whenever OpenSSL did
        if self._trust_done:
            return
        self._trust_done = True
        try:
            _verify(self, None)
        except TrustVerificationError:
            self.close()
            raise

    def _trust_gate(self) -> None:
        # With do_handshake_on_connect=False, OpenSSL would otherwise finish the
        # handshake inside the first read or write, unseen by the store.
        if not self._trust_done and self._sslobj is not None:
            self.do_handshake()

    def send(self, data: Any, flags: int = 0) -> int:
        self._trust_gate()
        return super().send(data, flags)


class TrustObject(_TrustGated, ssl.SSLObject):
    """The SSLObject (memory BIO, used by asyncio) counterpart of TrustSocket."""

    trust_decision: trust.Decision | None = None
    _trust_done = False

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            if self._trust_done or isinstance(exc, TrustVerificationError):
                raise
            self._trust_done = True
            _verify(self, exc)
            raise
        if not self._trust_done:
            self._trust_done = True
            _verify(self, None)

    def _trust_gate(self) -> None:
        if not self._trust_done:
            self.do_handshake()


TrustContext.sslsocket_class = TrustSocket
TrustContext.sslobject_class = TrustObject


# --------------------------------------------------------------------------- building contexts


def in_memory(store: trust.TrustStore) -> trust.TrustStore:
    """The store with every bundle anchor loaded (a store read from flash keeps them there).

    On the Pi RAM is plentiful, and a context must be a snapshot that later
    writes to the A/B slots cannot change; `store.anchors` is then complete.
    """
    b = store.bundle
    if type(b.anchors) is list:
        return store
    loaded = Bundle(b.fleet, b.version, b.issued_at, b.expires_at, list(b.anchors), b.pinsets,
                    b.distrust, b.policy)
    users = [a.der for a in store.anchors if a.user]
    return trust.TrustStore(loaded, users, store.managed)


def _is_device(obj: Any) -> bool:
    return hasattr(obj, "active_bundle") and hasattr(obj, "trusted_time") and hasattr(obj, "config")


def store_for(source: Any, *, managed: bool | None = None,
              user_anchors: Iterable[bytes] | None = None) -> trust.TrustStore:
    """A TrustStore from a TrustStore, a Bundle or a device (its active bundle).

    Raises:
        DeviceError: the device has no bundle installed.
        ValueError: source is none of those.
    """
    if isinstance(source, trust.TrustStore):
        return in_memory(source)
    if isinstance(source, Bundle):
        return in_memory(trust.TrustStore(source, list(user_anchors or ()), managed is True))
    if not _is_device(source):
        raise ValueError("expected a trust.TrustStore, a Bundle or a device")
    bundle = source.active_bundle()
    if bundle is None:
        where = getattr(source, "state_dir", "this device")
        raise DeviceError(f"{where} has no bundle installed: nothing to check TLS against")
    if managed is None:
        managed = getattr(source.config, "managed", False) is True
    return in_memory(trust.TrustStore(bundle, list(user_anchors or ()), managed))


def _clock_for(source: Any, clock: Callable[[], float]) -> Callable[[], int]:
    if _is_device(source):
        return lambda: source.trusted_time(int(clock()))
    return lambda: int(clock())


def context_for(store_or_device: Any, *, host: str | None = None, managed: bool | None = None,
                user_anchors: Iterable[bytes] | None = None, clock: Callable[[], float] = time.time,
                reports: ReportQueue | None = None) -> TrustContext:
    """An SSLContext for clients that enforces the store's anchors, pins and distrust list.

    Args:
        store_or_device: a trust.TrustStore, a verified Bundle, or a device
            (runner.Device / LocalDevice: its active bundle and trusted time).
        host: when given, the only server name this context connects to, and
            the name used when the caller passes no server_hostname.
        managed: whether enterprise anchors may be used (None: the device's
            config says; False for a bare Bundle). The bundle's policy must
            allow them too.
        user_anchors: enterprise anchors as certificate DER.
        clock: seconds since the epoch; with a device, the trusted time is
            max(clock, what the device has authenticated).
        reports: a ReportQueue to share; a new one by default.

    Returns:
        A TrustContext; its `reports` collects pin-validation reports.

    Raises:
        DeviceError: the device has no bundle installed.
        ValueError: a caller mistake (unknown source type).
    """
    store = store_for(store_or_device, managed=managed, user_anchors=user_anchors)
    return TrustContext(store, _clock_for(store_or_device, clock), host=host, reports=reports)


# --------------------------------------------------------------------------- one connection


def probe(ctx: TrustContext, host: str, port: int, timeout: float,
          servername: str | None = None) -> trust.Decision:
    """Connect to host:port, finish the handshake checked as servername (default host).

    Returns the Decision, accepted or not.

    Raises:
        OSError: no TCP or TLS connection could be made (no decision was possible).
        ValueError: a caller mistake (a name other than the context's host).
    """
    name = _name_for(servername or host, ctx.host, False)  # before connecting: fail fast
    with socket.create_connection((host, port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return tls.trust_decision
        except TrustVerificationError as exc:
            return exc.decision


def check(host: str, port: int, device: Any, timeout: float = 10.0, *,
          servername: str | None = None, clock: Callable[[], float] = time.time,
          managed: bool | None = None, user_anchors: Iterable[bytes] | None = None,
          reports: ReportQueue | None = None) -> trust.Decision:
    """A real TLS connection to host:port, evaluated with the device's installed store.

    reports: the device's queue, for the decision's report (a new one by default).

    Raises:
        DeviceError: no bundle installed.
        OSError: the connection or handshake failed before any decision.
    """
    ctx = context_for(device, managed=managed, user_anchors=user_anchors, clock=clock,
                      reports=reports)
    return probe(ctx, host, port, timeout, servername)


# --------------------------------------------------------------------------- health check


def health_check_for(endpoints: Iterable[str], timeout: float = 10.0, *, managed: bool = False,
                     user_anchors: Iterable[bytes] | None = None,
                     reports: ReportQueue | None = None
                     ) -> Callable[[Bundle, int], tuple[bool | None, str]]:
    """The `health_check(bundle, trusted_time) -> (ok, detail)` the runner calls while an install is on trial.

    Every endpoint ("host:port") is reached over TLS with the NEW store,
    built from `bundle` (the one on trial, handed over by the runner) and
    judged at `trusted_time`. managed and user_anchors: as for context_for.
    reports: the device's queue; each decision's report goes there.

    ok is True when every endpoint's decision was accept or
    accept-fail-open; False when any decision rejected (trust store or
    OpenSSL: chain, name, pins, distrust); otherwise None when some
    endpoint gave no decision at all (DNS failure, refused, timeout, reset
    before the certificate was judged): the network, not the trust store,
    failed, and the version must not be marked bad for it.

    Raises:
        ValueError: an endpoint is malformed (checked here, not at install time).
    """
    targets = [parse_endpoint(e) for e in endpoints]
    anchors = list(user_anchors or ())

    def health_check(bundle: Bundle, trusted_time: int) -> tuple[bool | None, str]:
        if not targets:
            return True, "no endpoints configured"
        version = bundle.version
        try:
            store = store_for(bundle, managed=managed, user_anchors=anchors)
            ctx = TrustContext(store, lambda: trusted_time, reports=reports)
        except Exception as exc:  # the health check must answer, never crash a trial
            return False, f"cannot build the trial store for v{version}: {exc}"
        good, bad, unreachable = [], [], []
        for host, port in targets:
            where = f"{host}:{port}"
            try:
                d = probe(ctx, host, port, timeout)
            except ValueError as exc:
                bad.append(f"{where} cannot be checked: {exc}")
                continue
            except OSError as exc:  # no certificate was judged: DNS, refused, timeout, reset
                unreachable.append(f"{where} unreachable: {_oserror_text(exc)}")
                continue
            if d.accepted():
                good.append(f"{where} {d.result}")
            else:
                bad.append(f"{where} {d.result}: {d.reason}")
        if bad:
            return False, "; ".join(bad + unreachable)
        if unreachable:
            return None, "; ".join(unreachable)
        return True, f"v{version} reaches {len(good)} endpoint(s): " + ", ".join(good)

    return health_check


def _oserror_text(exc: OSError) -> str:
    return plain_reason(exc)
