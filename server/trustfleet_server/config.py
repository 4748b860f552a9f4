"""The operator config: defaults for the options every fleet command repeats.

An operator works on one fleet from one folder, so `--fleet`, `--root`, `--db`,
`--broker` and the signing key of each role can come from a `trustfleet.toml` in
the working folder (or the file `--config` / `TRUSTFLEET_CONFIG` names) and from
`TRUSTFLEET_*` environment variables:

    fleet = "acme"
    root = "root.cose"              # or a rotation chain, oldest first: ["root-v1.cose", "root-v2.cose"]
    db = "fleet.db"                 # or "postgresql://fleet@db.acme.example/fleet"
    broker = "mqtts://mqtt.acme.example:8883"   # or the nodes of a cluster: ["mqtts://n1", "mqtts://n2"]

    [keys]                          # the key this machine signs with, per role
    root = "keys/root-1.pem"
    bundle = "keys/bundle-1.pem"
    timestamp = "keys/timestamp.pem"

A list of brokers is used by `serve` (it moves to the next node when one is
lost); the other commands take the first. TRUSTFLEET_BROKER lists them
separated by commas (a comma inside a URL's password is written %2C).

Precedence: an option on the command line, then the environment, then the file.
Relative paths in the file are read from the file's folder, so the config works
from anywhere; relative paths in the environment from the working folder. The
file holds paths and names only, never a secret: passphrases stay in
`TRUSTFLEET_PASSPHRASE` or a passphrase file. Unknown keys are refused, so a
typo does not silently fall back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trustfleet_server.errors import UsageError

FILE_NAME = "trustfleet.toml"
CONFIG_ENV = "TRUSTFLEET_CONFIG"
ROLES = ("root", "bundle", "timestamp")

# setting name -> (environment variable, is a path, may be a list)
# A list in the environment is split on os.pathsep, except where LIST_SEPARATORS says otherwise
# (a broker URL holds ':').
LIST_SEPARATORS = {"broker": ","}
SETTINGS: dict[str, tuple[str, bool, bool]] = {
    "fleet": ("TRUSTFLEET_FLEET", False, False),
    "root": ("TRUSTFLEET_ROOT", True, True),
    "db": ("TRUSTFLEET_DB", True, False),
    "broker": ("TRUSTFLEET_BROKER", False, True),
    **{f"keys.{role}": (f"TRUSTFLEET_{role.upper()}_KEY", True, False) for role in ROLES},
}


@dataclass(frozen=True)
class Setting:
    """One configured value and where it came from ("trustfleet.toml" or an environment variable)."""

    value: str | tuple[str, ...]
    source: str

    def as_list(self) -> list[str]:
        return list(self.value) if isinstance(self.value, tuple) else [self.value]


@dataclass
class OperatorConfig:
    """The settings in force: `path` is the config file read, if any."""

    path: Path | None = None
    settings: dict[str, Setting] = field(default_factory=dict)

    def get(self, name: str) -> Setting | None:
        return self.settings.get(name)

    def to_json(self) -> dict:
        return {"file": str(self.path) if self.path else None,
                "settings": {name: {"value": list(s.value) if isinstance(s.value, tuple) else s.value,
                                    "source": s.source}
                             for name, s in sorted(self.settings.items())}}


def _is_url(text: str) -> bool:
    return "://" in text


def _resolve(value: str, base: Path, is_path: bool) -> str:
    if not is_path or _is_url(value) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _flatten(data: dict, where: str) -> dict[str, object]:
    """{"keys": {"bundle": x}} -> {"keys.bundle": x}; refuses unknown names."""
    flat: dict[str, object] = {}
    for name, value in data.items():
        if name == "keys":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: [keys] must be a table of role = \"key file\" "
                                 f"(roles: {', '.join(ROLES)})")
            for role, path in value.items():
                if role not in ROLES:
                    raise UsageError(f"{where}: unknown role {role!r} in [keys]; roles: {', '.join(ROLES)}")
                flat[f"keys.{role}"] = path
        elif name in SETTINGS:
            flat[name] = value
        else:
            known = ", ".join([n for n in SETTINGS if "." not in n] + ["[keys]"])
            raise UsageError(f"{where}: unknown setting {name!r}; known: {known}")
    return flat


def _check(name: str, value: object, where: str) -> str | tuple[str, ...]:
    _, _, may_list = SETTINGS[name]
    if isinstance(value, str) and value.strip():
        return value
    if may_list and isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value)
    shape = "a non-empty string or a list of them" if may_list else "a non-empty string"
    raise UsageError(f"{where}: {name} must be {shape}, got {value!r}")


def read_file(path: Path) -> dict[str, Setting]:
    """The settings of one config file. Raises: UsageError (unreadable, not TOML, unknown or bad setting)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder; the config is a file ({FILE_NAME})") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file; the config is TOML ({FILE_NAME})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    out: dict[str, Setting] = {}
    for name, raw in _flatten(data, str(path)).items():
        value = _check(name, raw, str(path))
        is_path = SETTINGS[name][1]
        if isinstance(value, tuple):
            value = tuple(_resolve(v, base, is_path) for v in value)
        else:
            value = _resolve(value, base, is_path)
        out[name] = Setting(value, f"{path}")
    return out


def read_env(environ: dict[str, str] | os._Environ) -> dict[str, Setting]:
    """Settings from TRUSTFLEET_* variables; TRUSTFLEET_ROOT may list a chain separated by os.pathsep,
    TRUSTFLEET_BROKER several brokers separated by commas."""
    out: dict[str, Setting] = {}
    for name, (var, _, may_list) in SETTINGS.items():
        text = environ.get(var, "").strip()
        if not text:
            continue
        sep = LIST_SEPARATORS.get(name, os.pathsep)
        if may_list and sep in text:
            parts = tuple(p.strip() for p in text.split(sep) if p.strip())
            out[name] = Setting(parts if len(parts) > 1 else parts[0], var)
        else:
            out[name] = Setting(text, var)
    return out


def load(explicit: str | None = None, cwd: Path | None = None,
         environ: dict[str, str] | os._Environ | None = None) -> OperatorConfig:
    """The config in force: `explicit` (--config) or TRUSTFLEET_CONFIG or ./trustfleet.toml, then the
    environment over it.

    Raises: UsageError when a named config file is missing or any config is bad.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    named = explicit or environ.get(CONFIG_ENV, "").strip() or None
    path: Path | None
    if named:
        path = Path(named).expanduser()
        if not path.is_absolute():
            path = cwd / path
    else:
        path = cwd / FILE_NAME
        if not path.exists():
            path = None
    settings = read_file(path) if path is not None else {}
    settings.update(read_env(environ))
    return OperatorConfig(path=path, settings=settings)


def split_config_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` / `--config=FILE` out of argv when it comes before the command
    (`trustfleet --config ops/acme.toml fleet status`); after the command, `--config` belongs to the
    command (`board run --config` is the board's config.json).

    Raises: UsageError when --config has no value.
    """
    value: str | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise UsageError("--config: give the config file, e.g. --config trustfleet.toml")
            value = argv[i + 1]
            argv = argv[:i] + argv[i + 2:]
            continue
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            if not value:
                raise UsageError("--config: give the config file, e.g. --config=trustfleet.toml")
            argv = argv[:i] + argv[i + 1:]
            continue
        i += 1
    return value, list(argv)
