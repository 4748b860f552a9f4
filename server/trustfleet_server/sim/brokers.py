"""The brokers a simulation runs against: an external URL, the embedded broker or a private Mosquitto."""

from __future__ import annotations

import contextlib
from pathlib import Path

from trustfleet_server import mqtturl
from trustfleet_server.broker.mosquitto import (
    MosquittoError,
    MosquittoNotInstalled,
    PrivateMosquitto,
    mosquitto_binary,
)
from trustfleet_server.errors import UsageError


class BrokerHandle:
    """A broker the simulation uses; `controlled` ones can be restarted and are stopped at the end."""

    kind = "external"
    controlled = False

    def __init__(self, url: mqtturl.BrokerURL) -> None:
        self.url = url

    def describe(self) -> str:
        return f"broker {self.url}"

    def restart(self, hard: bool = False) -> None:
        raise UsageError(f"cannot restart {self.url}: the simulator did not start it; use "
                           f"--broker embedded or --broker mosquitto for --broker-restart-at")

    def stop(self) -> None:
        pass

    def peak_rss_kb(self) -> int | None:
        return None


class EmbeddedHandle(BrokerHandle):
    """trustfleet's embedded broker in a thread of this process. Restarts keep retained messages."""

    kind = "embedded"
    controlled = True

    def __init__(self, port: int = 0) -> None:
        from trustfleet_server.broker.embedded import EmbeddedBroker

        self.broker = EmbeddedBroker("127.0.0.1", port).start()
        super().__init__(mqtturl.BrokerURL("127.0.0.1", self.broker.port))

    def describe(self) -> str:
        return f"embedded broker on {self.url.host}:{self.url.port}"

    def restart(self, hard: bool = False) -> None:
        """Clean: the Broker object, with its retained store, outlives its listener; every
        connection is closed and it listens again on the same port. Hard (kill -9 emulated):
        every socket is aborted without a word, no will goes out, the broker thread is left
        and its state (retained messages, sessions) is thrown away; a fresh broker listens
        on the same port."""
        if not hard:
            self.broker.stop()
            self.broker.start()
            return
        from trustfleet_server.broker.embedded import EmbeddedBroker

        self.broker.kill()
        self.broker = EmbeddedBroker(self.url.host, self.url.port).start()

    def stop(self) -> None:
        self.broker.stop()


class MosquittoHandle(BrokerHandle):
    """A private Mosquitto (mqtt.mosquitto.PrivateMosquitto) on a free loopback port, stopped by its PID.

    Args:
        workdir: where mosquitto.conf, the log and the persistence file go
            (default: a temporary directory removed at stop()).
        persistence: keep retained messages across restart() (SIGTERM saves them).
    """

    kind = "mosquitto"
    controlled = True

    def __init__(self, workdir: Path | None = None, persistence: bool = True) -> None:
        try:
            self.mosquitto = PrivateMosquitto(workdir=workdir, persistence=persistence,
                                              extra=["max_keepalive 300"])
        except MosquittoNotInstalled as exc:
            raise UsageError(f"{exc}; use --broker embedded") from None
        self.conf, self.log, self.dir = self.mosquitto.conf, self.mosquitto.log, self.mosquitto.workdir
        self._peak_kb: int | None = None
        super().__init__(mqtturl.BrokerURL(self.mosquitto.host, self.mosquitto.port))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def describe(self) -> str:
        return f"private Mosquitto on {self.url.host}:{self.url.port} (config {self.conf})"

    def _start(self) -> None:
        try:
            self.mosquitto.start()
        except MosquittoError as exc:
            raise UsageError(str(exc)) from None

    def _note_peak(self) -> None:
        proc = self.mosquitto.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kb = int(line.split()[1])
                    self._peak_kb = max(self._peak_kb or 0, kb)

    def peak_rss_kb(self) -> int | None:
        self._note_peak()
        return self._peak_kb

    def restart(self, hard: bool = False) -> None:
        """Clean: SIGTERM (a persistent Mosquitto saves its database). Hard: kill -9, nothing
        saved since the last autosave."""
        self._note_peak()
        proc = self.mosquitto.proc
        if hard and proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.mosquitto.stop()
        self._start()

    def stop(self) -> None:
        self._note_peak()
        self.mosquitto.close()


def open_broker(spec: str, workdir: Path | None = None) -> BrokerHandle:
    """'embedded', 'mosquitto', 'auto' (a private Mosquitto if installed, else embedded) or a URL.

    Raises: UsageError (bad URL, mosquitto missing or not starting).
    """
    if spec == "auto":
        spec = "mosquitto" if mosquitto_binary() else "embedded"
    if spec == "embedded":
        return EmbeddedHandle()
    if spec == "mosquitto":
        return MosquittoHandle(workdir)
    return BrokerHandle(mqtturl.parse(spec))
