"""Broker addresses as URLs: mqtt://[user[:password]@]host[:port] or mqtts://... (TLS).

One parser for every command that talks to a broker (publish, serve,
simulate, demo), so they all accept the same forms. Defaults: port 1883
for mqtt, 8883 for mqtts. The password may also come from the environment
variable TRUSTFLEET_MQTT_PASSWORD, so it need not appear in a process list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from trustfleet_server.errors import UsageError

PASSWORD_ENV = "TRUSTFLEET_MQTT_PASSWORD"


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse(url: str) -> BrokerURL:
    """Parse a broker URL. Raises: UsageError naming what is wrong."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UsageError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise UsageError(f"broker URL {url!r}: no host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise UsageError(f"broker URL {url!r}: bad port") from None
    password = unquote(parts.password) if parts.password else os.environ.get(PASSWORD_ENV) or None
    return BrokerURL(parts.hostname, port, parts.scheme == "mqtts",
                     unquote(parts.username) if parts.username else None, password)
