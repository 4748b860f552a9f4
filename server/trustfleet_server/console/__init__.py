"""The fleet console: a web page and /metrics served by `trustfleet serve --http`.

The parts:

- console.web: binds the address (loopback by default; another address needs TLS
  or --http-public), runs the ASGI app under uvicorn in a thread of the serve
  process, and stops it with serve.
- console.app: the Starlette app: the pages (overview, rollouts, devices,
  reports, audit), their JSON, a server-sent event stream for live updates, and
  the rollout actions (pause, resume, abort), which need an operator token.
- console.metrics: /metrics in the Prometheus text format (prometheus_client).

This module holds what they share: the settings, the operator tokens and the
state a device is shown in.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from trustfleet_server.errors import UsageError

# The states the console and /metrics count devices in: the status's own state, except that
# a device that reports fail-open pin-sets (and is not offline) is shown as "fail-open".
STATES = ("ok", "trial", "behind", "stale", "fail-open", "no-store", "offline")

# The same rule in SQL over tf_devices (state, fail_open), for GROUP BY and WHERE.
STATE_SQL = "CASE WHEN state <> 'offline' AND fail_open <> '[]' THEN 'fail-open' ELSE state END"

MIN_TOKEN = 16  # characters: a shorter operator token is refused when the file is read
READ_ONLY = "read-only"  # a token file line's flag: the token reads, it cannot act
DEFAULT_OPERATOR = "operator"


def console_state(state: str, fail_open: list | str | None) -> str:
    """The console's state of a device from its stored state and fail_open list (or its JSON)."""
    has = bool(fail_open) and fail_open != "[]"
    return "fail-open" if state != "offline" and has else state


@dataclasses.dataclass
class ConsoleSettings:
    """What the console serves and who may act.

    db_target: the fleet store (a path or postgresql:// URL); the console opens
        connections of its own, read-mostly, beside serve's.
    fleet: the fleet shown.
    tokens: operator name -> token (load_tokens); empty: every action is refused.
    read_only: operators whose token reads but cannot act (read_token_file).
    public: bound to a non-loopback address: reading needs a token too.
    tls: served over HTTPS (cookies get the Secure flag).
    live: serve's counters (FleetServer.live), None when no serve runs in the process.
    host: this machine's name, for the audit trail.
    silent_after: seconds without a status before a device counts as silent.
    clock: wall-clock seconds (tests pass a fake).
    """

    db_target: str
    fleet: str
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    read_only: frozenset[str] = frozenset()
    public: bool = False
    tls: bool = False
    live: Callable[[], dict] | None = None
    host: str = dataclasses.field(default_factory=lambda: socket.gethostname())
    silent_after: int = 86_400
    clock: Callable[[], float] = time.time

    def operator(self, presented: str | None) -> str | None:
        """The operator name whose token was presented, or None. Every token is compared, each in
        constant time, so the time taken does not tell which one, or how much of it, matched."""
        if not presented:
            return None
        given = presented.encode("utf-8", "replace")
        found = None
        for name, token in self.tokens.items():
            if hmac.compare_digest(given, token.encode()):
                found = name
        return found


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """Operator name -> token of a token file (read_token_file has the format)."""
    return {name: token for name, (token, _) in read_token_file(path).items()}


def read_token_file(path: str | os.PathLike[str]) -> dict[str, tuple[str, bool]]:
    """name -> (token, read-only) of a token file: one per line, `NAME:TOKEN` or a bare `TOKEN`
    (named "operator"), optionally followed by ` read-only` (a token that reads but cannot act,
    e.g. Prometheus's); blank lines and # comments are skipped.

    The file must not be readable by group or others (as ssh keys), and each token must be at
    least MIN_TOKEN characters. Raises: UsageError (one line naming the file and the problem).
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--token-file {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"--token-file {p}: readable by others (mode {stat.S_IMODE(mode):o}); "
                         f"chmod 600 {p}")
    tokens: dict[str, tuple[str, bool]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, flag = line.partition(" ")
        flag = flag.strip()
        if flag not in ("", READ_ONLY):
            raise UsageError(f"--token-file {p}:{n}: after the token only {READ_ONLY!r} may follow, "
                             f"not {flag[:40]!r}")
        name, sep, token = entry.rpartition(":")
        name = name.strip() if sep else DEFAULT_OPERATOR
        if not name or len(name) > 64 or not name.isprintable():
            raise UsageError(f"--token-file {p}:{n}: the operator name must be 1-64 printable characters")
        if len(token) < MIN_TOKEN:
            raise UsageError(f"--token-file {p}:{n}: the token is shorter than {MIN_TOKEN} characters "
                             f"(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        if name in tokens:
            raise UsageError(f"--token-file {p}:{n}: operator {name} is listed twice")
        if any(token == t for t, _ in tokens.values()):
            raise UsageError(f"--token-file {p}:{n}: the same token is given to two operators")
        tokens[name] = (token, flag == READ_ONLY)
    if not tokens:
        raise UsageError(f"--token-file {p}: holds no token")
    return tokens
