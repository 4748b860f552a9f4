"""A test fleet: its keys and root, bundles, a broker, simulated devices, publishing and rollouts.

    with Fleet.create("acme", thresholds={"root": 2, "bundle": 2}) as fleet:
        devices = fleet.devices(20, faults={"stuck_2000": 0.25})
        fleet.publish(fleet.bundle(1))
        state = fleet.wait(lambda s: s.converged, timeout=30)

Everything is real: P-256 keys, COSE signatures, the bundle built by the
same code as `trustfleet bundle build`, a real MQTT broker (a private
Mosquitto when installed, else the embedded one), real device agents (the
simulator's), staged rollouts driven by the real fleet server over SQLite.
The fleet's files (root.cose, keys/, bundle specs and signed bundles,
fleet.db) live in `fleet.workdir`, so a test can also run `trustfleet`
commands on them. `close()` stops what the fleet started and removes the
directory it made, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustfleet_device import topics
from trustfleet_server import documents, fleetops, keys, publish, roots, spec
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve.link import publish_retained
from trustfleet_server.sim.brokers import BrokerHandle, open_broker
from trustfleet_server.sim.config import Faults, SimConfig, device_id
from trustfleet_server.sim.simulator import BackgroundSimulation
from trustfleet_server.testing.pki import Chain, b64, pin, pins_of
from trustfleet_server.testing.state import DeviceState, FleetState, Report, RolloutState

DAY = 86_400
ROLES = ("root", "bundle", "timestamp")
DEFAULT_THRESHOLDS = {"root": 2, "bundle": 2, "timestamp": 1}
CONNECT_TIMEOUT = 30.0


class WaitTimeout(AssertionError):
    """A condition did not hold in time; the message describes the fleet as it was last seen.

    `state` is that last FleetState. An AssertionError, so pytest shows it as a failed check.
    """

    def __init__(self, message: str, state: FleetState) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class Bundle:
    """A signed bundle: its bytes, version and where its file is."""

    version: int
    raw: bytes
    path: Path

    @property
    def sha256(self) -> str:
        return documents.sha256(self.raw).hex()


@dataclass(frozen=True)
class PinSet:
    """A pin-set for a bundle: `pins` are 32-byte digests (Chain.pins, pin(cert))."""

    domain: str
    pins: tuple[bytes, ...]
    expires: str = "180d"
    subdomains: bool = False
    mode: str = "enforce"
    allow_single_pin: bool = False


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} in a bundle spec")


class Connection(NamedTuple):
    """One device's TLS connection to a server (Devices.connect)."""

    accepted: bool
    detail: str


class Devices:
    """A set of simulated devices of one fleet (Fleet.devices makes them; Fleet.close stops them)."""

    def __init__(self, fleet: Fleet, cfg: SimConfig, processes: int) -> None:
        self.fleet, self.cfg = fleet, cfg
        self.sim = BackgroundSimulation(cfg, fleet.broker, processes)
        self.ids = [device_id(cfg, i) for i in range(cfg.devices)]

    def __len__(self) -> int:
        return self.cfg.devices

    def start(self, timeout: float) -> Devices:
        try:
            self.sim.start(connect_timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def states(self) -> list[DeviceState]:
        return [DeviceState.of(d) for d in self.sim.devices()]

    def connect(self, server: Any, domain: str | None = None) -> dict[str, Connection]:
        """Every device makes a real TLS connection to `server` (a TLSServer, or (host, port))
        with the trust store it has installed, checked as `domain` (default: the server's).

        Returns {device id: Connection(accepted, detail)}; detail is the decision (e.g.
        pin-match) or why the device refused the server.
        """
        host, port = (server.host, server.port) if hasattr(server, "port") else server
        name = domain or getattr(server, "domain", None)
        if name is None:
            raise ValueError("connect: give the domain the devices check the server as")
        return {ident: Connection(ok, why) for ident, ok, why in self.sim.probe(host, port, name)}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.sim.stop(clear=not self.fleet.owns_broker)
        for link in self.sim.sim.links:
            link.kill()


class _Server:
    """The fleet server (serve) in a thread of this process, over SQLite in the fleet's workdir."""

    def __init__(self, fleet: Fleet, step_every: float) -> None:
        from trustfleet_server.serve.server import FleetServer

        self.db_path = fleet.workdir / "fleet.db"
        self.errors: list[BaseException] = []
        db = fleetdb.open_db(str(self.db_path))
        try:
            self.server = FleetServer(fleet.broker.url, fleet.name, [fleet.root], db,
                                      fleet.keys["timestamp"][0], timestamp_every=60,
                                      step_every=step_every,
                                      client_id=f"tf-testing-{fleet.name}-{id(self):x}")
        except BaseException:
            db.close()
            raise
        self.thread = threading.Thread(target=self._run, args=(db,), daemon=True,
                                       name=f"trustfleet-testing-serve-{fleet.name}")
        self.thread.start()
        self.db = fleetdb.open_db(str(self.db_path))

    def _run(self, db: fleetdb.FleetDB) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - raised by check() in the test's thread
            self.errors.append(exc)
        finally:
            db.close()

    def check(self) -> None:
        if self.errors:
            raise RuntimeError(f"the fleet server failed: {self.errors[0]}") from self.errors[0]
        if not self.thread.is_alive():
            raise RuntimeError("the fleet server stopped")

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(15)
        self.db.close()


class Fleet:
    """One fleet under test: keys per role, a root, a broker, devices and (for rollouts) a server.

    Make one with `Fleet.create`; every method raises what the matching CLI command would
    (UsageError, PolicyError, ...) with the same message.
    """

    def __init__(self, name: str, workdir: Path, own_workdir: bool, broker: BrokerHandle,
                 own_broker: bool, key_sets: dict[str, list], thresholds: dict[str, int],
                 root: bytes) -> None:
        self.name, self.workdir, self.broker = name, workdir, broker
        self.keys, self.thresholds = key_sets, thresholds
        self.root = root
        self.root_path = workdir / "root.cose"
        self.target: int | None = None
        self._own_workdir, self._own_broker = own_workdir, own_broker
        self._devices: list[Devices] = []
        self._server: _Server | None = None
        self._chains: dict[str, Chain] = {}
        self._closed = False

    # -- making one -------------------------------------------------------------------

    @classmethod
    def create(cls, name: str = "test-fleet", *, thresholds: Mapping[str, int] | None = None,
               key_counts: Mapping[str, int] | None = None, broker: BrokerHandle | str = "auto",
               workdir: str | Path | None = None, max_time_lead: int | None = None) -> Fleet:
        """A new fleet with fresh keys and a signed root v1.

        Args:
            name: the fleet's name (topics tf/<name>/...).
            thresholds: signatures needed per role ("root", "bundle"; "timestamp" is 1).
                Default: 2 of 2 root keys, 2 of 2 bundle keys.
            key_counts: keys per role when more than the threshold (e.g. {"bundle": 3}).
            broker: "auto" (a private Mosquitto when installed, else the embedded broker),
                "mosquitto", "embedded", an mqtt:// URL, or a broker handle (left running
                at close: the caller owns it).
            workdir: where the fleet's files go (default: a new temporary directory,
                removed at close). A given directory must be empty or not exist yet, so
                that everything in it is the fleet's; it is kept at close.
            max_time_lead: the root's policy.max_time_lead in seconds, or None.
        """
        topics.check_name(name, "fleet")
        for given in (thresholds or {}, key_counts or {}):
            unknown = sorted(set(given) - set(ROLES))
            if unknown:
                raise ValueError(f"unknown role {unknown[0]!r}: the roles are {', '.join(ROLES)}")
        if any(not isinstance(n, int) or n < 1 for n in (thresholds or {}).values()):
            raise ValueError(f"thresholds must be whole numbers of at least 1: {thresholds}")
        wanted = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        counts = {role: max(wanted[role], (key_counts or {}).get(role, 0)) for role in ROLES}
        own_workdir = workdir is None
        path = Path(tempfile.mkdtemp(prefix=f"trustfleet-{name}-")) if own_workdir else Path(workdir)
        if not own_workdir and path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"workdir {path} is not an empty directory; the fleet writes its "
                                  f"keys, root and bundles there and overwrites nothing")
        handle = None
        try:
            (path / "keys").mkdir(parents=True)
            key_sets = {role: [keys.generate_key() for _ in range(counts[role])] for role in ROLES}
            for role, ks in key_sets.items():
                for i, k in enumerate(ks, 1):
                    keys.write_private_key(path / "keys" / f"{role}-{i}.pem", k)
            keymap = {keys.kid_of(k): keys.spki_der(k) for ks in key_sets.values() for k in ks}
            roles = {role: {"keys": [keys.kid_of(k) for k in ks], "threshold": wanted[role]}
                     for role, ks in key_sets.items()}
            raw = roots.root_payload(name, 1, int(time.time()) + 365 * DAY, keymap, roles,
                                     max_time_lead)
            for i, k in enumerate(key_sets["root"][: wanted["root"]], 1):
                raw = documents.add_signature(raw, k, signer=f"root-{i}")
            (path / "root.cose").write_bytes(raw)
            own_broker = isinstance(broker, str)
            handle = open_broker(broker) if isinstance(broker, str) else broker
            return cls(name, path, own_workdir, handle, own_broker, key_sets, wanted, raw)
        except BaseException:
            if handle is not None and isinstance(broker, str):
                handle.stop()
            if own_workdir:
                shutil.rmtree(path, ignore_errors=True)
            raise

    @property
    def owns_broker(self) -> bool:
        """Whether the fleet started its broker (then it stops it at close; otherwise it takes
        its retained documents and statuses off it)."""
        return self._own_broker

    # -- certificates -----------------------------------------------------------------

    @property
    def domain(self) -> str:
        """The fleet's default server name: api.<fleet>.example (the name made DNS-safe)."""
        label = re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:63] or "fleet"
        return f"api.{label}.example"

    def chain(self, domain: str | None = None) -> Chain:
        """The certificate chain of a test server for `domain` (default: the fleet's), made once."""
        domain = domain or self.domain
        if domain not in self._chains:
            self._chains[domain] = Chain.create(domain)
        return self._chains[domain]

    def rotate_chain(self, domain: str | None = None) -> Chain:
        """Move the domain's chain to its spare key (Chain.rotate) and make that the fleet's
        chain: bundles built from now on pin the new issuing CA and a new spare. Returns it."""
        rotated = self.chain(domain).rotate()
        self._chains[rotated.domain] = rotated
        return rotated

    # -- bundles ----------------------------------------------------------------------

    def pinset(self, chain_or_domain: Chain | str, pins: Sequence[Any] | None = None, *,
               expires: str = "180d", subdomains: bool = False, mode: str = "enforce",
               allow_single_pin: bool = False) -> PinSet:
        """A pin-set for a chain (its primary and backup pins) or for a domain and given pins
        (digests, base64 text, certificates or keys)."""
        if isinstance(chain_or_domain, Chain):
            domain, given = chain_or_domain.domain, pins or chain_or_domain.pins
        else:
            domain, given = chain_or_domain, pins or ()
        return PinSet(domain, tuple(pins_of(list(given))), expires, subdomains, mode, allow_single_pin)

    def bundle(self, version: int, *, anchors: Iterable[x509.Certificate] | None = None,
               pinsets: Iterable[PinSet] | None = None, distrust: Iterable[Any] = (),
               policy: Mapping[str, Any] | None = None, expires: str = "90d",
               signers: Sequence[Any] | None = None, full_anchors: bool = False) -> Bundle:
        """Build and sign bundle `version` the way `trustfleet bundle build` and `bundle sign` do.

        Defaults: the fleet chain's root CA as the anchor, its primary and backup pins,
        no distrust, policy max_timestamp_age 48h, expiring in 90 days, signed by the
        first threshold of bundle keys. `signers` replaces the signing keys (any keys:
        a test of a bad signature set gives the wrong ones).

        Raises: SpecError (what bundle build refuses), PolicyError.
        """
        chain = self.chain()
        anchors = list(anchors) if anchors is not None else [chain.root]
        pinsets = list(pinsets) if pinsets is not None else [self.pinset(chain)]
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        lines = [f"fleet = {_toml(self.name)}", f"version = {int(version)}",
                 f"expires = {_toml(expires)}", "", "[policy]"]
        for key, value in {"max_timestamp_age": "48h", **(policy or {})}.items():
            lines.append(f"{key} = {_toml(value)}")
        files = []
        for cert in anchors:
            path = certs / f"anchor-{pin(cert).hex()[:16]}.pem"
            path.write_bytes(cert.public_bytes(Encoding.PEM))
            files.append(f"certs/{path.name}")
        lines += ["", "[[anchors]]", f"files = {_toml(files)}",
                  f"form = {_toml('full' if full_anchors else 'compact')}"]
        for p in pinsets:
            lines += ["", "[[pinsets]]", f"domain = {_toml(p.domain)}",
                      f"include_subdomains = {_toml(p.subdomains)}",
                      f"pins = {_toml([b64(x) for x in p.pins])}", f"expires = {_toml(p.expires)}",
                      f"mode = {_toml(p.mode)}"]
            if p.allow_single_pin:
                lines.append("allow_single_pin = true")
        gone = pins_of(list(distrust))
        if gone:
            lines += ["", "[distrust]", f"pins = {_toml([b64(x) for x in gone])}"]
        spec_path = self.workdir / f"bundle-v{version}.toml"
        spec_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        payload, _ = spec.load_spec(spec_path)
        raw = documents.encode_payload(payload)
        keyset = list(signers) if signers is not None else self.signers("bundle")
        for i, k in enumerate(keyset, 1):
            raw = documents.add_signature(raw, k, signer=f"bundle-{i}")
        path = self.workdir / f"bundle-v{version}.cose"
        path.write_bytes(raw)
        return Bundle(int(version), raw, path)

    def signers(self, role: str) -> list:
        """The first threshold of a role's keys: what signs by default."""
        return self.keys[role][: self.thresholds[role]]

    def timestamp(self, bundle: Bundle, when: int | None = None) -> bytes:
        """A timestamp for `bundle` signed by the online timestamp key (what serve publishes)."""
        return documents.sign_timestamp(bundle.raw, int(time.time()) if when is None else when,
                                        self.keys["timestamp"][0], str(bundle.path))[0]

    # -- devices ----------------------------------------------------------------------

    def devices(self, count: int, *, groups: Mapping[str, float] | Sequence[tuple[str, float]] = (),
                faults: Faults | Mapping[str, Any] | None = None, initial: Bundle | None = None,
                tls_server: Any = None, endpoint: str | None = None, id_prefix: str = "dev",
                seed: int = 1, processes: int = 1, connect_timeout: float = CONNECT_TIMEOUT
                ) -> Devices:
        """Start `count` simulated devices (real agents) on the fleet's broker; returns once all
        powered-on devices are connected.

        Args:
            groups: {"canary": 0.1}: shares of the fleet by group, assigned in id order.
            faults: a sim.config.Faults or its fields as a dict, e.g. {"stuck_2000": 0.25,
                "power_cut": 0.1, "health_fail": 0.05, "offline": 0.1, "clock_skew": 3600}.
            initial: a bundle every device leaves the factory with.
            tls_server: a TLSServer: each health check is a real TLS handshake with it,
                checked as its domain. Without one, the health check judges the fleet
                chain's certificates for `endpoint` without sockets.
            endpoint: the server name health checks judge (default: the TLS server's
                domain, else the fleet's).
            processes: worker processes (1: all devices on one event loop in a thread).
        """
        if isinstance(faults, Mapping):
            faults = Faults(**faults)
        pairs = tuple(groups.items()) if isinstance(groups, Mapping) else tuple(groups)
        domain = endpoint or getattr(tls_server, "domain", None) or self.domain
        chain = tls_server.chain if tls_server is not None else self.chain(domain)
        address = (tls_server.host, tls_server.port) if tls_server is not None else None
        cfg = SimConfig(devices=count, broker=self.broker.url, fleet=self.name, root_raw=self.root,
                        groups=pairs, faults=faults or Faults(), endpoint=domain, chain=chain.ders,
                        initial=initial.raw if initial is not None else None,
                        id_prefix=id_prefix, seed=seed, health_address=address)
        if any(d.cfg.id_prefix == id_prefix for d in self._devices):
            raise ValueError(f"devices with id prefix {id_prefix!r} are already running; "
                             f"give another id_prefix")
        devices = Devices(self, cfg, processes)
        devices.start(connect_timeout)
        self._devices.append(devices)
        return devices

    # -- publishing and rollouts ------------------------------------------------------

    def publish(self, bundle: Bundle, to: str = "fleet", timestamp: bool = False) -> None:
        """Publish `bundle` retained at QoS 1 to the whole fleet ("fleet"), "group:NAME" or
        "bucket:N", as `trustfleet publish` does; with `timestamp`, a fresh timestamp too."""
        messages = [(publish.bundle_topic(self.name, to), bundle.raw)]
        if timestamp:
            messages.append((topics.timestamp(self.name), self.timestamp(bundle)))
        publish_retained(self.broker.url, messages)
        if to == "fleet":
            self.target = max(self.target or 0, bundle.version)

    def serve(self, step_every: float = 0.2, timeout: float = CONNECT_TIMEOUT) -> None:
        """Start the fleet server (ingest, rollouts, timestamps) if it is not running, and wait
        until it has read the devices' retained statuses. rollout() calls it."""
        if self._server is not None:
            return
        self._server = _Server(self, step_every)
        deadline = time.monotonic() + timeout
        while not self._server.server.synced:
            self._server.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fleet server did not read the retained statuses within "
                                   f"{timeout:g} s")
            time.sleep(0.05)
        want = sum(len(d) for d in self._devices)
        while len(self._server.db.devices(self.name)) < want and time.monotonic() < deadline:
            time.sleep(0.05)

    def rollout(self, bundle: Bundle, waves: str = "canary,50%,100%", *, success: float = 0.9,
                max_failure: float = 0.2, wave_deadline: int = 60) -> RolloutState:
        """Start a staged rollout of `bundle` as `trustfleet rollout start --groups WAVES` does
        (a wave is a group name or a share like 50%); the server publishes wave by wave and
        halts by itself when a wave fails. Returns the rollout as stored.

        Raises: UsageError (a wave reaches no device, bad thresholds), RollbackError.
        """
        self.serve()
        now = int(time.time())
        plan = fleetops.plan_rollout(self.name, [self.root_path], bundle.path, now, waves=None,
                                     groups=waves, success=success, max_failure=max_failure,
                                     deadline=wave_deadline)
        db = self._server.db
        fleetops.check_floor(db, plan, bundle.path)
        fleetops.check_reach(plan, db.devices(self.name), False)
        r = fleetops.start_rollout(db, plan, bundle.path, now)
        self.target = max(self.target or 0, bundle.version)
        return RolloutState.of(r)

    # -- reading and waiting ----------------------------------------------------------

    def state(self) -> FleetState:
        """The fleet now: every device, the newest rollout and the stored reports."""
        devices = tuple(s for d in self._devices for s in d.states())
        rollout = reports = None
        if self._server is not None:
            self._server.check()
            latest = self._server.db.latest_rollout(self.name)
            rollout = RolloutState.of(latest) if latest is not None else None
            reports = tuple(Report(r["device"], r["kind"], r["time"], r["report"])
                            for r in self._server.db.reports(self.name, limit=1000))
        return FleetState(devices, self.target, rollout, reports or ())

    def wait(self, condition: Callable[[FleetState], object], timeout: float = 10.0,
             what: str | None = None, every: float = 0.1) -> FleetState:
        """Poll the fleet until `condition(state)` is true; return that state.

        Raises: WaitTimeout (an AssertionError) naming `what` and describing the fleet.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if condition(state):
                return state
            if time.monotonic() > deadline:
                name = what or getattr(condition, "__name__", "the condition")
                raise WaitTimeout(f"waited {timeout:g} s for {name}; the fleet: "
                                  f"{state.describe()}", state)
            time.sleep(every)

    # -- the end ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop devices, server and (when the fleet started it) broker; remove the workdir the
        fleet made. Safe to call twice; what one part fails to stop does not stop the rest."""
        if self._closed:
            return
        self._closed = True
        for devices in self._devices:
            devices.stop()
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
        if not self._own_broker:  # a broker others use: take the fleet's documents off it
            with contextlib.suppress(Exception):
                self._clear_retained()
        if self._own_broker:
            with contextlib.suppress(Exception):
                self.broker.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        logging.getLogger("trustfleet").debug("fleet %s closed", self.name)

    def _clear_retained(self) -> None:
        """Empty every document topic of the fleet the broker may retain: root v1, the fleet,
        timestamp, group and bucket bundle topics (devices clear their own statuses)."""
        f = self.name
        groups = {g for d in self._devices for g, _ in d.cfg.groups}
        names = [topics.root(f, 1), topics.bundle(f), topics.timestamp(f)]
        names += [topics.group_bundle(f, g) for g in sorted(groups)]
        names += [topics.bucket_bundle(f, n) for n in range(topics.BUCKETS)]
        publish_retained(self.broker.url, [(t, b"") for t in names])

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
