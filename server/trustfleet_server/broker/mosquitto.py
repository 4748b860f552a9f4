"""A private Mosquitto: `mosquitto -c <generated config>` on a free loopback port, stopped by PID.

For whatever needs a real broker of its own for a while: the fleet demo,
the simulator (`--broker mosquitto` and its broker-restart fault), the
tests and the benchmarks. It never touches the machine's own Mosquitto
(the system service on 1883): a private broker listens where its config
says, by default on a port the OS picks, with its config, log and any
database in a directory of its own.

    with PrivateMosquitto() as broker:          # anonymous, no persistence
        ... broker.url, broker.host, broker.port ...
        broker.restart()                        # same port; persistence keeps retained messages

Waiting for the port is bounded (START_TIMEOUT) and a broker that does
not come up is reported with the tail of what it wrote to stderr;
stopping is SIGTERM (Mosquitto saves its database on it), then SIGKILL,
to the process's own PID only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from trustfleet_server.errors import BrokerError

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_LISTENER = re.compile(r"^\s*listener\s+(\d+)(?:\s+(\S+))?", re.MULTILINE)
_USER = re.compile(r"^\s*user\s+\S+", re.MULTILINE)


class MosquittoError(BrokerError, RuntimeError):
    """A broker did not come up (the message carries its stderr), or mosquitto is not installed."""


class MosquittoNotInstalled(MosquittoError):
    """No mosquitto executable on PATH or in /usr/sbin."""


# --------------------------------------------------------------------------- ports and processes


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether host:port accepts a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_log(log: Path | None, limit: int = 4000) -> str:
    """The last `limit` characters of a log file, or a note saying why there are none."""
    if log is None:
        return "(no log)"
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return text[-limit:] if text else "(empty stderr)"


def wait_for_port(host: str, port: int, *, proc: subprocess.Popen | None = None,
                  log: Path | None = None, name: str = "broker",
                  timeout: float = START_TIMEOUT) -> None:
    """Return once host:port accepts TCP.

    Raises: MosquittoError, with the tail of `log`, when `proc` exits first
    or nothing listens after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise MosquittoError(f"{name} exited with {proc.returncode} before listening on "
                                 f"{host}:{port}:\n{read_log(log)}")
        if port_open(host, port, timeout=0.2):
            return
        time.sleep(0.05)
    raise MosquittoError(f"{name} not listening on {host}:{port} after {timeout:.0f} s:\n"
                         f"{read_log(log)}")


def stop_process(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (Mosquitto saves its database on it), then SIGKILL after `timeout`; by PID only."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def start_process(argv: list[str], *, log: Path, listens: Iterable[tuple[str, int]], name: str,
                  timeout: float = START_TIMEOUT, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in a session of its own, stdout and stderr appended to `log`, and wait until
    every (host, port) of `listens` accepts TCP, all within `timeout` seconds.

    Raises: MosquittoError with the log's tail (the process is stopped first).
    """
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        for host, port in listens:
            wait_for_port(host, port, proc=proc, log=log, name=name,
                          timeout=max(deadline - time.monotonic(), 0.1))
    except BaseException:
        stop_process(proc)
        raise
    return proc


# --------------------------------------------------------------------------- Mosquitto


def mosquitto_binary() -> str | None:
    """mosquitto on PATH, or Debian's /usr/sbin/mosquitto (often not on a user's PATH); None if neither."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def config_text(port: int, host: str = HOST, *, persistence_dir: Path | str | None = None,
                extra: Iterable[str] = ()) -> str:
    """A throwaway broker's config: one anonymous listener on host:port, log to stderr.

    With `persistence_dir`, retained messages and sessions are saved there
    (on SIGTERM) and survive a restart; without, nothing is saved. `extra`
    lines come last; one that sets allow_anonymous, persistence,
    persistence_location or log_dest replaces the default line for it
    (e.g. "log_dest none" for a benchmark).
    """
    extra = [line.strip() for line in extra if line.strip()]
    given = {line.split()[0] for line in extra}
    lines = [f"listener {port} {host}", "allow_anonymous true"]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {str(persistence_dir).rstrip('/')}/"]
    else:
        lines.append("persistence false")
    lines.append("log_dest stderr")
    lines = [line for line in lines if line.startswith("listener ") or line.split()[0] not in given]
    return "\n".join(lines + extra) + "\n"


def _add_line(config: str, line: str) -> str:
    """`config` with `line` appended on a line of its own."""
    if config and not config.endswith("\n"):
        config += "\n"
    return f"{config}{line}\n"


class PrivateMosquitto:
    """A private `mosquitto -c <conf>`; its listeners keep their ports across restarts.

    Args:
        config: the configuration text (default: `config_text` on a free
            port). Its first `listener PORT [HOST]` line says where it
            listens (.host, .port); with none, one on a free port is added.
            start() waits for every listener's port.
        workdir: where the config (NAME.conf) and the stderr log (NAME.log)
            go; default a temporary directory, removed by close().
        persistence, extra: for the default config only: keep retained
            messages in workdir across restarts; more config lines.
        name: file names and the name in error messages.
        binary: the mosquitto executable; default `mosquitto_binary()`.

    Running as root, a `user root` line is added (unless the config has a
    `user`): Mosquitto would otherwise switch to the `mosquitto` user, which
    cannot read 0600 files (password file, keys) or write a database in a
    private 0700 directory.

    Raises: MosquittoNotInstalled (here), MosquittoError when it does not
    start (start()).
    """

    kind = "mosquitto"

    def __init__(self, config: str | None = None, workdir: Path | str | None = None, *,
                 persistence: bool = False, extra: Iterable[str] = (), name: str = "mosquitto",
                 binary: str | None = None, start_timeout: float = START_TIMEOUT) -> None:
        binary = binary or mosquitto_binary()
        if binary is None:
            raise MosquittoNotInstalled("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.name = name
        self.start_timeout = start_timeout
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="trustfleet-mosquitto-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if config is None:
            config = config_text(free_port(), persistence_dir=self.workdir if persistence else None,
                                 extra=extra)
        listeners = [(host or HOST, int(port)) for port, host in _LISTENER.findall(config)]
        if not listeners:
            listeners = [(HOST, free_port())]
            config = _add_line(config, f"listener {listeners[0][1]} {HOST}")
        self.host, self.port = listeners[0]
        self.listeners = listeners
        if os.geteuid() == 0 and not _USER.search(config):
            config = _add_line(config, "user root")
        self.config_text = config
        self.conf = self.workdir / f"{name}.conf"
        self.conf.write_text(config)
        self.log = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def stderr(self) -> Path:
        """The file Mosquitto's stdout and stderr go to (appended to on every start)."""
        return self.log

    def stderr_tail(self, limit: int = 4000) -> str:
        return read_log(self.log, limit)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> PrivateMosquitto:
        """Start (no-op when running) and wait for every listener. Raises: MosquittoError."""
        if self.running:
            return self
        self.starts += 1
        with open(self.log, "ab") as err:
            err.write(f"--- start {self.starts}\n".encode())
        self.proc = start_process([self.binary, "-c", str(self.conf)], log=self.log,
                                  listens=self.listeners, name=self.name, timeout=self.start_timeout)
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); start() or restart() can bring it back."""
        stop_process(self.proc)

    def restart(self) -> PrivateMosquitto:
        """Stop (SIGTERM: a persistent broker writes its database) and start on the same ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop for good; a temporary workdir made here is removed."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateMosquitto:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
