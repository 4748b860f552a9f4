"""The Raspberry Pi agent's config file (`agent.toml`), read strictly.

Every key is optional; unknown keys are refused by name (a typo must not
silently turn a feature off). Relative paths are taken from the file's
directory. Nothing here is trusted for security decisions beyond what the
device owner configures: the fleet id checks the root, enterprise anchors
apply only when `managed = true` AND the signed bundle's policy allows them.

    state_dir = "/var/lib/trustfleet"
    device_id = "pi-0042"
    fleet = "acme-sensors"
    managed = false
    firmware_time = 2026-01-01T00:00:00Z    # or epoch seconds; the earliest trusted time
    user_anchors = ["enterprise-root.pem"]  # PEM files; used only when managed and allowed

    [health]                                # TLS with the new store before committing it
    endpoints = ["api.acme.example:443", "mqtt.acme.example:8883"]
    timeout = 10                            # seconds per endpoint (connect + handshake)
    on_unreachable = "revert"               # or "keep": what a trial whose endpoints never
                                            # answered does at its deadline (never marked bad)

    [export]                                # rewritten after every commit
    pem = "/etc/trustfleet/ca-bundle.pem"   # whole-certificate anchors, for SSL_CERT_FILE
    pins = "/etc/trustfleet/pins.json"

    [post_commit]                           # run after the exports, in this file's directory;
                                            # its failure never reverts
    command = ["systemctl", "try-reload-or-restart", "acme-app"]
    timeout = 30

    [mqtt]                                  # `trustfleet-agent run`: delivery over MQTT
    broker = "mqtts://mqtt.acme.example:8883"   # or mqtt://host[:port] (1883 / 8883 by default)
    # or, for a clustered broker, several nodes instead of `broker` (tried in turn, see paho.py):
    # brokers = ["mqtts://mqtt-1.acme.example", "mqtts://mqtt-2.acme.example"]
    username = "pi-0042"
    password_file = "/etc/trustfleet/mqtt-password"   # or password = "..." (not both)
    client_cert = "/etc/trustfleet/client.pem"  # TLS client certificate (mqtts only) ...
    client_key = "/etc/trustfleet/client-key.pem"   # ... and its key (default: in client_cert)
    keepalive = 60                          # seconds, 5 to 3600
    protocol = "3.1.1"                      # or "5"
    group = "canary"                        # rollout group: also subscribes to its bundle topic
    client_id = "tf-acme-sensors-pi-0042"   # default: tf-<fleet>-<device_id>
    subscribe_qos = 1                       # or 0 (a NATS cluster: docs/operations.md)

With mqtts:// the broker's certificate is checked by the INSTALLED trust
store (anchors, pins, distrust at trusted time; see tls.py), never by the
system's CA store: the device needs a bundle (a factory bundle at `init`)
before it can reach an mqtts:// broker, and the broker's name must be a DNS
name. Credentials in the URL are refused (they would end up in logs).
With `brokers`, every URL follows the same rules, and all of them are
mqtts:// or all mqtt://: a failover must never downgrade to plain TCP.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustfleet_device import topics
from trustfleet_device.agent import Config
from trustfleet_pi.oserrors import plain_reason
from trustfleet_pi.tls import is_ip, parse_endpoint

MAX_CONFIG_BYTES = 64 * 1024
DEFAULT_HEALTH_TIMEOUT = 10.0
DEFAULT_HOOK_TIMEOUT = 30.0
# The agent's deadline for a trial is at least this (agent.Config's default).
_MIN_TRIAL_DEADLINE = 120
ON_UNREACHABLE = ("revert", "keep")

_TOP = ("state_dir", "device_id", "fleet", "managed", "firmware_time", "user_anchors",
        "health", "export", "post_commit", "mqtt")
_TABLES = {
    "health": ("endpoints", "timeout", "on_unreachable"),
    "export": ("pem", "pins"),
    "post_commit": ("command", "timeout"),
    "mqtt": ("broker", "brokers", "username", "password", "password_file", "client_cert", "client_key",
             "keepalive", "protocol", "group", "client_id", "subscribe_qos"),
}
DEFAULT_KEEPALIVE = 60
MAX_PASSWORD_BYTES = 4096
PROTOCOLS = ("3.1.1", "5")


class ConfigError(ValueError):
    """The agent config file is unreadable or names an unknown or ill-typed key."""


@dataclass
class MqttConfig:
    """The [mqtt] table: where and how `trustfleet-agent run` reaches the broker."""

    broker: str
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive: int = DEFAULT_KEEPALIVE
    protocol: str = "3.1.1"
    group: str | None = None
    client_id: str | None = None
    subscribe_qos: int = 1
    # Every broker node as (host, port), the first being host/port; empty means just that one.
    servers: list[tuple[str, int]] = field(default_factory=list)

    def url(self, server: tuple[str, int] | None = None) -> str:
        host, port = server if server is not None else (self.host, self.port)
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{port}"

    def all_servers(self) -> list[tuple[str, int]]:
        """The broker nodes to try, in order (one unless `brokers` lists several)."""
        return list(self.servers) or [(self.host, self.port)]

    def read_password(self) -> str | None:
        """The password, read from password_file at each call (so a rotated file is picked up).

        Raises:
            ConfigError: the file cannot be read or is too large.
        """
        if self.password_file is None:
            return self.password
        try:
            with open(self.password_file, "rb") as f:
                raw = f.read(MAX_PASSWORD_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {self.password_file}: "
                              f"{plain_reason(exc)}") from None
        if len(raw) > MAX_PASSWORD_BYTES:
            raise ConfigError(f"mqtt.password_file: {self.password_file} is over "
                              f"{MAX_PASSWORD_BYTES} bytes")
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"mqtt.password_file: {self.password_file} is not UTF-8") from None


@dataclass
class PiConfig:
    """The settings of one Raspberry Pi agent (see the module docstring for the file)."""

    path: Path | None = None
    state_dir: Path | None = None
    device_id: str | None = None
    fleet: str | None = None
    managed: bool = False
    firmware_time: int = 0
    user_anchors: list[Path] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    on_unreachable: str = "revert"
    export_pem: Path | None = None
    export_pins: Path | None = None
    post_commit: list[str] = field(default_factory=list)
    post_commit_timeout: float = DEFAULT_HOOK_TIMEOUT
    mqtt: MqttConfig | None = None

    def core_config(self) -> Config:
        """The device core's agent.Config.

        The trial deadline covers every endpoint's timeout, and never less
        than the core's default of 120 s.
        """
        deadline = max(_MIN_TRIAL_DEADLINE,
                       math.ceil(self.health_timeout * max(1, len(self.endpoints))) + 30)
        conf = Config(fleet=self.fleet, firmware_time=self.firmware_time, health_timeout=deadline,
                      device_id=self.device_id, managed=self.managed)
        conf.on_unreachable = self.on_unreachable
        return conf

    def user_anchor_ders(self) -> list[bytes]:
        """The enterprise anchors as certificate DER; none unless managed. Raises: ConfigError."""
        if not self.managed:
            return []
        out = []
        where = self.path if self.path is not None else "config"
        for path in self.user_anchors:
            try:
                certs = x509.load_pem_x509_certificates(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"{where}: user_anchors: cannot read {path}: "
                                  f"{plain_reason(exc)}") from None
            except ValueError:
                raise ConfigError(f"{where}: user_anchors: {path} holds no PEM certificate") from None
            out.extend(c.public_bytes(serialization.Encoding.DER) for c in certs)
        return out


def load_config(path: str | Path) -> PiConfig:
    """Read and check an agent.toml.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key (named), or a value of the wrong type.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {plain_reason(exc)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text); give the agent.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path | None = None) -> PiConfig:
    """Build an PiConfig from parsed TOML. Raises: ConfigError."""
    where = str(path) if path is not None else "config"
    base = path.parent if path is not None else Path.cwd()
    _refuse_unknown(data, _TOP, where, "")
    cfg = PiConfig(path=path)
    r = _Reader(data, where, "", base)
    cfg.state_dir = r.path("state_dir")
    cfg.device_id = r.text("device_id")
    cfg.fleet = r.text("fleet")
    for key in ("fleet", "device_id"):
        if getattr(cfg, key) is not None:
            try:  # both name MQTT topics: refuse now what `run` could not use
                topics.check_name(getattr(cfg, key), key)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    cfg.managed = r.boolean("managed", False)
    cfg.firmware_time = r.time("firmware_time")
    cfg.user_anchors = r.paths("user_anchors")
    for table, known in _TABLES.items():
        value = data.get(table, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {table} must be a table ([{table}]), not {_shown(value)}")
        _refuse_unknown(value, known, where, table + ".")
    health = _Reader(data.get("health", {}), where, "health.", base)
    cfg.endpoints = health.strings("endpoints")
    for e in cfg.endpoints:
        try:
            parse_endpoint(e)
        except ValueError as exc:
            raise ConfigError(f"{where}: health.endpoints: {exc}") from None
    cfg.health_timeout = health.seconds("timeout", DEFAULT_HEALTH_TIMEOUT)
    cfg.on_unreachable = health.text("on_unreachable") or "revert"
    if cfg.on_unreachable not in ON_UNREACHABLE:
        raise ConfigError(f"{where}: health.on_unreachable must be \"revert\" or \"keep\", "
                          f"not {_shown(cfg.on_unreachable)}")
    export = _Reader(data.get("export", {}), where, "export.", base)
    cfg.export_pem = export.path("pem")
    cfg.export_pins = export.path("pins")
    hook = _Reader(data.get("post_commit", {}), where, "post_commit.", base)
    cfg.post_commit = hook.strings("command")
    cfg.post_commit_timeout = hook.seconds("timeout", DEFAULT_HOOK_TIMEOUT)
    if "mqtt" in data:
        cfg.mqtt = _mqtt(_Reader(data["mqtt"], where, "mqtt.", base))
    return cfg


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host[:port] or mqtts://host[:port].

    Raises:
        ValueError: another scheme, no host, a bad port, credentials, a path or a query.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"broker {url!r}: put credentials in username / password_file, "
                         "not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker {url!r}: a broker URL has no path or query")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker {url!r}: the port must be 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"broker {url!r}: no host")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _broker_urls(r: _Reader) -> tuple[str, list[str]]:
    """(the key used, its URLs) from mqtt.broker or mqtt.brokers (one of them, not both)."""
    if "broker" in r.table and "brokers" in r.table:
        raise ConfigError(f"{r.where}: mqtt.broker and mqtt.brokers: give one, not both "
                          "(brokers = [...] lists every node of a cluster)")
    if "brokers" in r.table:
        urls = r.strings("brokers")
        if not urls:
            raise r._fail("brokers", 'a list of one or more broker URLs (e.g. ["mqtt://a", "mqtt://b"])')
        if len(set(urls)) != len(urls):
            raise ConfigError(f"{r.where}: mqtt.brokers lists a broker twice")
        return "brokers", urls
    url = r.text("broker")
    if url is None:
        raise ConfigError(f"{r.where}: mqtt.broker is required in [mqtt] "
                          "(mqtt://host:port or mqtts://host:port, or brokers = [...] for a cluster)")
    return "broker", [url]


def _mqtt(r: _Reader) -> MqttConfig:
    key, urls = _broker_urls(r)
    servers: list[tuple[str, int]] = []
    schemes = set()
    for url in urls:
        try:
            host, port, tls = parse_broker_url(url)
        except ValueError as exc:
            raise ConfigError(f"{r.where}: mqtt.{key} {str(exc).removeprefix('broker ')}") from None
        if tls and is_ip(host):
            raise ConfigError(f"{r.where}: mqtt.{key}: {host} is an IP address; mqtts needs the "
                              "broker's DNS name (its certificate and pins are checked against it)")
        servers.append((host, port))
        schemes.add(tls)
    if len(schemes) > 1:
        raise ConfigError(f"{r.where}: mqtt.brokers mixes mqtt:// and mqtts://; list only one kind "
                          "(a failover must not fall back to plain TCP)")
    url, (host, port), tls = urls[0], servers[0], schemes.pop()
    m = MqttConfig(broker=url, host=host, port=port, tls=tls, username=r.text("username"),
                   password=r.text("password"), password_file=r.path("password_file"),
                   client_cert=r.path("client_cert"), client_key=r.path("client_key"),
                   keepalive=r.integer("keepalive", DEFAULT_KEEPALIVE, 5, 3600),
                   protocol=_protocol(r), group=r.text("group"),
                   client_id=r.text("client_id"), servers=servers if len(servers) > 1 else [],
                   subscribe_qos=r.integer("subscribe_qos", 1, 0, 1))
    if m.password is not None and m.password_file is not None:
        raise ConfigError(f"{r.where}: mqtt.password and mqtt.password_file: give one, not both")
    if (m.password is not None or m.password_file is not None) and m.username is None:
        raise ConfigError(f"{r.where}: mqtt.username is required with a password")
    if m.client_key is not None and m.client_cert is None:
        raise ConfigError(f"{r.where}: mqtt.client_key needs mqtt.client_cert")
    if m.client_cert is not None and not tls:
        raise ConfigError(f"{r.where}: mqtt.client_cert needs an mqtts:// broker")
    if m.group is not None:
        try:
            topics.check_name(m.group, "mqtt.group")
        except ValueError as exc:
            raise ConfigError(f"{r.where}: {exc}") from None
    return m


def _protocol(r: _Reader) -> str:
    v = r.table.get("protocol", "3.1.1")
    if v == 5 and not isinstance(v, bool):
        return "5"  # `protocol = 5` reads naturally in TOML
    if not isinstance(v, str) or v not in PROTOCOLS:
        raise ConfigError(f"{r.where}: mqtt.protocol must be \"3.1.1\" or \"5\", not {_shown(v)}")
    return v


def _refuse_unknown(table: dict[str, Any], known: tuple[str, ...], where: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}' (known: "
                              f"{', '.join(prefix + k for k in known)})")


def _shown(value: Any) -> str:
    """A config value as it would be written in TOML, cut short."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(_shown(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Typed reads of one TOML table; every error names the key."""

    def __init__(self, table: dict[str, Any], where: str, prefix: str, base: Path):
        self.table = table
        self.where = where
        self.prefix = prefix
        self.base = base

    def _fail(self, key: str, expected: str) -> ConfigError:
        """`key must be <expected>, not <the value given>` (as it reads in TOML)."""
        return ConfigError(f"{self.where}: {self.prefix}{key} must be {expected}, "
                           f"not {_shown(self.table.get(key))}")

    def text(self, key: str) -> str | None:
        v = self.table.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise self._fail(key, "a non-empty string")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.table.get(key, default)
        if not isinstance(v, bool):
            raise self._fail(key, "true or false")
        return v

    def strings(self, key: str) -> list[str]:
        v = self.table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise self._fail(key, 'a list of non-empty strings (e.g. ["a", "b"])')
        return list(v)

    def path(self, key: str) -> Path | None:
        v = self.text(key)
        return self.base / v if v is not None else None

    def paths(self, key: str) -> list[Path]:
        return [self.base / s for s in self.strings(key)]

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        v = self.table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise self._fail(key, f"a whole number from {low} to {high}")
        return v

    def seconds(self, key: str, default: float) -> float:
        v = self.table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
            raise self._fail(key, "a number of seconds, more than 0 and at most 3600")
        return float(v)

    def time(self, key: str) -> int:
        v = self.table.get(key, 0)
        if isinstance(v, dt.datetime):
            if v.tzinfo is None:
                raise self._fail(key, "a time with an offset (e.g. 2026-01-01T00:00:00Z)")
            return int(v.timestamp())
        if isinstance(v, dt.date):
            return int(dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC).timestamp())
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise self._fail(key, "a TOML date-time with an offset, a date, or epoch seconds")
        return v
