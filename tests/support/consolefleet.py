"""A real fleet behind the console: private Mosquitto, `trustfleet serve --http`, simulated devices.

    fleet = ConsoleFleet(workdir).start()   # v1 on every device
    fleet.url                               # the console, e.g. http://127.0.0.1:41234/
    rid = fleet.start_rollout(2, "canary,50%,100%")
    fleet.wait_rollout(rid, "done")
    fleet.stop()

The operator side is the demo's (trustfleet_server.demo.fleet): keys, a 2-of-2 root, bundles
built from the sample PKI and signed twice, each step a `trustfleet` command run in this
process. serve is a process of its own (support.serving.ServeProcess) with the console on a
free loopback port, an operator token file and --step-every 1. The devices are real agents
from the simulator (trustfleet_server.sim) in two sets: "dev-*" (the first share in group
canary, the rest by hash bucket) and "lab-*" (group lab), each lab device in a worker process
of its own. `crash_lab()` kills those processes: the broker sends the devices' last wills, the
store shows them offline, and a wave of the lab group counts none of them, so it neither passes
nor fails before its deadline (600 s): a rollout that keeps running as long as a test needs.

Reports: `reporting_device(id)` is a device core (support.reportingdevice) under the id of one
of the fleet's devices that keeps the reports its own decisions make; `send(messages)` publishes
what its session says to publish over the fleet's broker, as the device would.

Bundles: `good(version)` adds the backup CA as an anchor (what the demo's v2 does);
`bad(version)` pins only the backup CA's key, which the sample server does not use, so every
device's health check fails, it reverts, and the rollout halts on its first wave.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from support import brokers
from support.reportingdevice import ReportingDevice
from support.serving import ServeProcess
from support.waiting import wait_for
from trustfleet_server import cli, mqtturl
from trustfleet_server import rollout as ro
from trustfleet_server.console import console_state
from trustfleet_server.demo.fleet import SIGNERS, SPEC
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.sim.config import (
    SAMPLE_CHAIN,
    SAMPLE_FILES,
    SAMPLE_HOST,
    SimConfig,
    chain_ders,
    sample_file,
)
from trustfleet_server.sim.simulator import BackgroundSimulation

FLEET = "console-fleet"
OPERATOR = "alice"
ROOT_CA, BACKUP_CA = "demo-fleet-root-ca.pem", "demo-fleet-backup-ca.pem"
WAIT = 60.0


class ConsoleFleet:
    """The broker, the keys and bundles, serve with its console, and the devices; `stop()` ends
    every one of them (by PID for the processes)."""

    def __init__(self, workdir: Path, devices: int = 16, canary: float = 0.25, lab: int = 2) -> None:
        self.dir = Path(workdir)
        self.n_devices, self.canary, self.n_lab = devices, canary, lab
        self.keys, self.certs = self.dir / "keys", self.dir / "certs"
        self.root = self.dir / "root.cose"
        self.db_path = self.dir / "fleet.db"
        self.token = secrets.token_urlsafe(24)
        self.token_file = self.dir / "operators.tokens"
        self.broker: brokers.MosquittoProcess | None = None
        self.serve: ServeProcess | None = None
        self.devices: BackgroundSimulation | None = None
        self.lab: BackgroundSimulation | None = None
        self.db: fleetdb.FleetDB | None = None
        self.url = ""
        self.serve_exit: int | None = None  # serve's exit code once stopped
        self.serve_log = ""

    # -- starting ---------------------------------------------------------------------

    def start(self) -> ConsoleFleet:
        """Everything up and every device on v1. On failure, what started is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker = brokers.MosquittoProcess(brokers.private_mosquitto_conf(brokers.free_port()),
                                               self.dir / "broker")
        self.broker.start()
        self.operator_setup()
        self.token_file.write_text(f"{OPERATOR}:{self.token}\n")
        os.chmod(self.token_file, 0o600)
        self.serve = ServeProcess("console-serve", [
            "--broker", self.broker_url, "--fleet", FLEET, "--root", str(self.root),
            "--db", str(self.db_path), "--timestamp-key", str(self.keys / "timestamp.pem"),
            "--timestamp-every", "60", "--step-every", "1",
            "--http", "127.0.0.1:0", "--token-file", str(self.token_file)], self.dir)
        self.url = wait_for(self.serve.console_url, "serve to print the console's address", timeout=WAIT)
        self.db = fleetdb.open_db(str(self.db_path))
        self.devices = self._simulation("dev", self.n_devices, (("canary", self.canary),))
        self.lab = self._simulation("lab", self.n_lab, (("lab", 1.0),), processes=self.n_lab)
        self.publish(self.bundle(1))
        self.wait_versions(1)

    @property
    def broker_url(self) -> str:
        return f"mqtt://{self.broker.host}:{self.broker.port}"

    def trustfleet(self, *argv: str) -> None:
        """One `trustfleet` command in this process; AssertionError when it does not exit 0."""
        code = cli.main(list(argv))
        assert code == 0, f"trustfleet {' '.join(argv)} exited {code}"

    def operator_setup(self) -> None:
        """Five keys, the 2-of-2 root signed by both root keys, the sample PKI's certificates."""
        self.keys.mkdir(exist_ok=True)
        self.certs.mkdir(exist_ok=True)
        for name in ("root-1", "root-2", "bundle-1", "bundle-2", "timestamp"):
            self.trustfleet("key", "generate", "--out", str(self.keys / f"{name}.pem"))
        k = self.keys
        self.trustfleet("root", "create", "--fleet", FLEET, "--expires", "365d",
                        "--key", f"root={k / 'root-1.pub.pem'}", "--key", f"root={k / 'root-2.pub.pem'}",
                        "--threshold", "root=2",
                        "--key", f"bundle={k / 'bundle-1.pub.pem'}", "--key", f"bundle={k / 'bundle-2.pub.pem'}",
                        "--threshold", "bundle=2", "--key", f"timestamp={k / 'timestamp.pub.pem'}",
                        "-o", str(self.root))
        for name in ("root-1", "root-2"):
            self.trustfleet("root", "sign", "--key", str(k / f"{name}.pem"), "--signer", SIGNERS[name],
                            str(self.root))
        for name in SAMPLE_FILES:
            (self.certs / name).write_bytes(sample_file(name))

    def bundle(self, version: int, *, pins: tuple[str, ...] = (ROOT_CA, BACKUP_CA),
               anchors: tuple[str, ...] = (ROOT_CA,), extra: str = "") -> Path:
        """Build bundle `version` from the demo's spec, sign it with both bundle keys, verify it."""
        quoted = lambda names: ", ".join(f'"certs/{n}"' for n in names)  # noqa: E731
        spec = self.dir / f"bundle-v{version}.toml"
        spec.write_text(SPEC.format(version=version, anchors=quoted(anchors), pins=quoted(pins),
                                    host=SAMPLE_HOST.split(".", 1)[1], extra=extra)
                        .replace('fleet = "demo-fleet"', f'fleet = "{FLEET}"'))
        path = self.dir / f"bundle-v{version}.cose"
        self.trustfleet("bundle", "build", str(spec), "-o", str(path))
        for name in ("bundle-1", "bundle-2"):
            self.trustfleet("bundle", "sign", "--key", str(self.keys / f"{name}.pem"), "--signer",
                            SIGNERS[name], str(path))
        self.trustfleet("bundle", "verify", "--root", str(self.root), str(path))
        return path

    def good(self, version: int) -> Path:
        """A bundle every device's health check passes: the backup CA added as an anchor."""
        return self.bundle(version, anchors=(ROOT_CA, BACKUP_CA))

    def bad(self, version: int) -> Path:
        """A bundle every device's health check fails: it pins only the backup CA's key."""
        return self.bundle(version, pins=(BACKUP_CA,), extra="allow_single_pin = true")

    def _simulation(self, prefix: str, n: int, groups: tuple, processes: int = 1) -> BackgroundSimulation:
        cfg = SimConfig(devices=n, broker=mqtturl.parse(self.broker_url), fleet=FLEET,
                        root_raw=self.root.read_bytes(), groups=groups, id_prefix=prefix)
        sim = BackgroundSimulation(cfg, processes=processes)
        sim.start(connect_timeout=WAIT)
        return sim

    # -- operating --------------------------------------------------------------------

    def publish(self, path: Path) -> None:
        self.trustfleet("publish", "--broker", self.broker_url, "--root", str(self.root),
                        "--db", str(self.db_path), str(path))

    def start_rollout(self, path: Path, groups: str, *extra: str) -> int:
        """`trustfleet rollout start` of the bundle at `path`; returns the new rollout's id."""
        self.trustfleet("rollout", "start", "--db", str(self.db_path), "--fleet", FLEET,
                        "--root", str(self.root), "--bundle", str(path), "--groups", groups,
                        "--success", "0.9", "--max-failure", "0.2", *extra)
        return self.db.latest_rollout(FLEET).id

    def rollout_cli(self, action: str, rollout_id: int) -> None:
        """`trustfleet rollout pause|resume|abort` from the command line."""
        self.trustfleet("rollout", action, "--db", str(self.db_path), "--fleet", FLEET,
                        "--id", str(rollout_id))

    def reporting_device(self, device_id: str) -> ReportingDevice:
        """A device core for `device_id` (its group as stored) on the fleet's root, whose health
        check judges the sample server's chain for the sample host, as the simulator's do."""
        group = (self.db.device(FLEET, device_id) or {}).get("group")
        return ReportingDevice(FLEET, device_id, self.root.read_bytes(),
                               chain_ders(sample_file(SAMPLE_CHAIN)), SAMPLE_HOST, group)

    def send(self, messages: list[tuple]) -> None:
        """Publish (topic, payload, retain, qos) messages over the fleet's broker, each acknowledged."""
        client = brokers.connect(self.broker)
        try:
            for topic, payload, retain, qos in messages:
                client.publish(topic, payload, qos=qos, retain=retain)
        finally:
            client.close()

    def rollout(self, rollout_id: int) -> ro.Rollout:
        return self.db.rollout(rollout_id)

    def wait_rollout(self, rollout_id: int, *states: str, timeout: float = WAIT) -> ro.Rollout:
        """The rollout once its state is one of `states` in the store."""
        self.check_serve()
        return wait_for(lambda: self._in_state(rollout_id, states),
                        f"rollout {rollout_id} to be {' or '.join(states)}", timeout=timeout)

    def _in_state(self, rollout_id: int, states: tuple[str, ...]) -> ro.Rollout | None:
        self.check_serve()
        r = self.rollout(rollout_id)
        return r if r.state in states else None

    def device_rows(self) -> list[dict]:
        """The store's devices, each with "console_state" (the state the console shows)."""
        rows = self.db.devices(FLEET)
        for d in rows:
            d["console_state"] = console_state(d.get("state"), d.get("fail_open"))
        return rows

    def wait_versions(self, version: int, timeout: float = WAIT) -> None:
        """Every device (both sets) reports `version` in the store."""
        want = self.n_devices + self.n_lab
        wait_for(lambda: (self.check_serve() or
                          sum(1 for d in self.db.devices(FLEET) if d.get("version") == version) >= want),
                 f"{want} devices to report v{version}", timeout=timeout)

    def lab_ids(self) -> list[str]:
        return [f"lab-{i:05d}" for i in range(self.n_lab)]

    def crash_lab(self) -> None:
        """Kill the lab devices' processes (no DISCONNECT: the broker sends their last wills) and
        wait until the store shows every one of them offline. Safe to call twice."""
        if self.lab is not None:
            for link in self.lab.sim.links:
                link.kill()
            with contextlib.suppress(Exception):  # the workers are gone: nothing answers the stop
                self.lab.stop()
            self.lab = None
        wait_for(lambda: (self.check_serve() or
                          all((self.db.device(FLEET, d) or {}).get("state") == "offline"
                              for d in self.lab_ids())),
                 "the crashed lab devices to show offline", timeout=WAIT)

    def next_version(self) -> int:
        """One above every bundle version published or rolled out so far."""
        versions = [p["version"] for p in self.db.published(FLEET)]
        versions += [r.version for r in self.db.all_rollouts(FLEET)]
        return max(versions) + 1

    def settle(self) -> None:
        """Abort the fleet's active rollout, if any, so a new one can start."""
        r = self.db.latest_rollout(FLEET)
        if r is not None and r.state in ro.ACTIVE:
            self.rollout_cli("abort", r.id)

    def check_serve(self) -> None:
        if self.serve is not None and self.serve.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.serve.proc.returncode}:\n{self.serve.log()[-3000:]}")

    # -- stopping ---------------------------------------------------------------------

    def stop_serve(self) -> dict | None:
        """SIGTERM serve and return its --json summary."""
        if self.serve is None:
            return None
        summary = self.serve.stop()
        self.serve_exit, self.serve_log = self.serve.proc.returncode, self.serve.log()
        return summary

    def stop(self) -> None:
        for sim in (self.devices, self.lab):
            if sim is not None:
                with contextlib.suppress(Exception):
                    sim.stop()
        self.devices = self.lab = None
        self.stop_serve()
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
