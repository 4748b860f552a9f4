"""What one simulation is: the demo samples, its configuration and faults, and the fleet plan."""

from __future__ import annotations

import importlib.resources
import random
from dataclasses import dataclass

from trustfleet_device import topics
from trustfleet_server import mqtturl, x509util
from trustfleet_server.errors import UsageError

SAMPLE_HOST = "api.demo-fleet.example"
SAMPLE_CHAIN = "server-chain.pem"
KEEPALIVE = 60

# Fault flags per device.
OFFLINE, STUCK, POWER_CUT, HEALTH_FAIL, DUPLICATE, REORDER, FORGE = 1, 2, 4, 8, 16, 32, 64
FLAG_NAMES = {OFFLINE: "offline", STUCK: "stuck-2000", POWER_CUT: "power-cut",
              HEALTH_FAIL: "health-fail", DUPLICATE: "duplicate", REORDER: "reorder",
              FORGE: "forge"}


# --------------------------------------------------------------------------- samples


def sample_file(name: str) -> bytes:
    """Bytes of a file shipped in trustfleet_server/samples/ (the demo PKI, public certs only)."""
    return importlib.resources.files("trustfleet_server").joinpath("samples", name).read_bytes()


SAMPLE_FILES = ("demo-fleet-root-ca.pem", "demo-fleet-backup-ca.pem", "demo-fleet-issuing-ca.pem",
                f"{SAMPLE_HOST}.pem", SAMPLE_CHAIN)


def chain_ders(pem: bytes, name: str = SAMPLE_CHAIN) -> tuple[bytes, ...]:
    """DER certificates (leaf first) from PEM text. Raises: CertificateFileError."""
    certs, _ = x509util.parse_certificates(pem, name, strict=True)
    return tuple(x509util.cert_der(c) for c in certs)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Faults:
    """Which faults to apply, as shares of the fleet (0..1) and durations in seconds."""

    offline: float = 0.0
    offline_for: float = 10.0
    clock_skew: int = 0
    stuck_2000: float = 0.0
    power_cut: float = 0.0
    health_fail: float = 0.0
    health_fail_group: str | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    forge: float = 0.0                     # share of devices handed a forged copy of each bundle first
    broker_restart_at: float | None = None
    broker_restart_signal: str = "term"   # "term": clean stop; "kill": kill -9, state not saved
    loss: float = 0.0                      # share of messages lost (each cuts its connection)
    latency: float = 0.0                   # seconds added to every message, both directions
    republish: bool = False                # after a restart, publish the bundle again (as serve does)


@dataclass(frozen=True)
class SimConfig:
    """One simulation. Picklable: worker processes get a copy.

    Args:
        devices: fleet size.
        broker: where the devices connect.
        fleet: fleet name (must be the root's).
        root_raw: the factory root every device starts with.
        groups: (group, share) pairs; devices are assigned in id order.
        faults: see Faults.
        endpoint: host the health check judges the chain for.
        chain: the server chain (DER, leaf first) the health check judges.
        initial: a signed bundle in every device's factory image, or None.
        id_prefix: device ids are <prefix>-<00000>.
        seed: makes the fault subsets and clock skews reproducible.
        until_version: the target; None means the newest version any device verified.
        health_address: (host, port) of a live TLS server: each health check is then a real
            handshake with it, checked as `endpoint` by the trial store (trustfleet_pi.tls.probe),
            instead of judging `chain` without sockets.
    """

    devices: int
    broker: mqtturl.BrokerURL
    fleet: str
    root_raw: bytes
    groups: tuple[tuple[str, float], ...] = ()
    faults: Faults = Faults()
    endpoint: str = SAMPLE_HOST
    chain: tuple[bytes, ...] = ()
    initial: bytes | None = None
    id_prefix: str = "sim"
    seed: int = 1
    until_version: int | None = None
    keepalive: int = KEEPALIVE
    health_address: tuple[str, int] | None = None


def parse_share(text: str, option: str) -> float:
    """'5%' or '0.05' -> 0.05. Raises: UsageError."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a share like 0.05 or 5%") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{option}: {text} is outside 0..1 (0%..100%)")
    return value


def parse_group_split(text: str) -> tuple[tuple[str, float], ...]:
    """'canary:5%,beta:20%' -> (('canary', 0.05), ('beta', 0.2)). Raises: UsageError."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, share = part.partition(":")
        if not sep:
            raise UsageError(f"--group-split: {part!r} is not NAME:SHARE (e.g. canary:5%)")
        try:
            topics.check_name(name, "group")
        except ValueError as exc:
            raise UsageError(f"--group-split: {exc}") from None
        out.append((name, parse_share(share, "--group-split")))
    if sum(s for _, s in out) > 1.0 + 1e-9:
        raise UsageError(f"--group-split: the shares add up to more than 100% ({text})")
    if len({n for n, _ in out}) != len(out):
        raise UsageError(f"--group-split: a group is named twice ({text})")
    return tuple(out)


# --------------------------------------------------------------------------- the fleet plan


def device_id(cfg: SimConfig, index: int) -> str:
    return f"{cfg.id_prefix}-{index:05d}"


def _subset(cfg: SimConfig, name: str, share: float) -> frozenset[int]:
    """A reproducible random subset of round(share x N) device indexes (at least one if share > 0)."""
    if share <= 0:
        return frozenset()
    k = min(cfg.devices, max(1, round(share * cfg.devices)))
    return frozenset(random.Random(f"{cfg.seed}:{name}").sample(range(cfg.devices), k))


def group_of(cfg: SimConfig, index: int) -> str | None:
    """Groups take the first ids in order: canary:5% of 100 is sim-00000..sim-00004."""
    start = 0
    for name, share in cfg.groups:
        count = round(share * cfg.devices)
        if start <= index < start + count:
            return name
        start += count
    return None


@dataclass(frozen=True)
class Plan:
    """Each device's group, fault flags and clock skew, the same in every worker."""

    groups: tuple[str | None, ...]
    flags: tuple[int, ...]
    skews: tuple[int, ...]

    @classmethod
    def make(cls, cfg: SimConfig) -> Plan:
        f = cfg.faults
        groups = tuple(group_of(cfg, i) for i in range(cfg.devices))
        sets = {OFFLINE: _subset(cfg, "offline", f.offline),
                STUCK: _subset(cfg, "stuck-2000", f.stuck_2000),
                POWER_CUT: _subset(cfg, "power-cut", f.power_cut),
                HEALTH_FAIL: _subset(cfg, "health-fail", f.health_fail),
                DUPLICATE: _subset(cfg, "duplicate", f.duplicate),
                REORDER: _subset(cfg, "reorder", f.reorder),
                FORGE: _subset(cfg, "forge", f.forge)}
        flags = []
        for i in range(cfg.devices):
            bits = 0
            for flag, members in sets.items():
                if i in members:
                    bits |= flag
            if f.health_fail_group is not None and groups[i] == f.health_fail_group:
                bits |= HEALTH_FAIL
            flags.append(bits)
        rng = random.Random(f"{cfg.seed}:skew")
        skews = tuple(rng.randint(-f.clock_skew, f.clock_skew) if f.clock_skew else 0
                      for _ in range(cfg.devices))
        return cls(groups, tuple(flags), skews)


def flag_names(bits: int) -> tuple[str, ...]:
    return tuple(name for flag, name in FLAG_NAMES.items() if bits & flag)
