"""`trustfleet demo`: a fleet on a real broker, a staged rollout, and a bad bundle that halts itself.

Every operator step prints the command line it runs and then runs exactly
that command in-process, so the output doubles as a tutorial. The
long-running parts (`serve`, `simulate`) run in background threads of this
process and are printed with a trailing `&`:

  broker   a private Mosquitto on a free port from a generated config when
           `mosquitto` is installed, else the embedded broker (--broker picks);
  keys     root 2-of-2, bundle 2-of-2, one online timestamp key;
  bundles  built from the sample PKI shipped in trustfleet_server/samples
           (root CA, backup CA, issuing CA, a leaf for api.demo-fleet.example);
  serve    ingest into SQLite in the demo directory, rollouts, timestamps, and
           the fleet console with /metrics on 127.0.0.1:8080 (a free port when
           8080 is taken), its operator token in keys/console.tokens;
  devices  50 simulated agents (real verification, A/B slots, health check of
           the trial store against the sample server chain), canary 10 %;
  board    one real MicroPython board (demo/board.py): the unmodified board
           main.py run by `trustfleet board run` in the firmware stand-in at
           111,936 B of heap when built, else the venv's unix port; it joins
           the same broker, is counted in the waves and commits v2 in its own wave;
  rollout  v2 in waves canary -> 50 % -> 100 %, each gated on success;
  bad      v3 pins a key the sample server does not use: the canary devices
           fail their health check and revert, the rollout halts itself and
           names them; the rest of the fleet never sees v3.

After the last step everything stays up (the console too) for --keep seconds,
or on a terminal until Enter; without --keep and a terminal (scripts, CI) it
stops at once. Ctrl-C stops it cleanly at any time. Everything is stopped at
the end (devices, server, console, broker: its port closed).
`trustfleet demo --offline` runs the offline walkthrough instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trustfleet_device import topics
from trustfleet_server import keys, render, rollout
from trustfleet_server.broker import mosquitto
from trustfleet_server.demo import board as demo_board
from trustfleet_server.demo import prepare_out
from trustfleet_server.demo.offline import Step
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.sim.brokers import BrokerHandle, MosquittoHandle, open_broker
from trustfleet_server.sim.config import SAMPLE_FILES, SAMPLE_HOST, SimConfig, sample_file
from trustfleet_server.sim.simulator import BackgroundSimulation

if TYPE_CHECKING:
    from trustfleet_server.console.web import ConsoleServer

FLEET = "demo-fleet"
# The names each key holder states when signing (`sign --signer`): the audit trail shows them.
SIGNERS = {"root-1": "ada", "root-2": "grace", "bundle-1": "alan", "bundle-2": "barbara"}
DEVICES = 50
WAVES = (rollout.Wave("canary", groups=("canary",)), rollout.Wave("50%", buckets=50),
         rollout.Wave("100%", buckets=100))
STEP_EVERY = 0.5
WAIT = 30.0
_DEADLINE = re.compile(r", deadline in \d+s")
CONSOLE = "127.0.0.1:8080"   # where the demo's console listens, unless the port is taken
OPERATOR = "demo"            # the operator name of the demo's console token (in the audit trail)

SPEC = """\
fleet = "demo-fleet"
version = {version}
expires = "90d"

[policy]
max_timestamp_age = "48h"

[[anchors]]
files = [{anchors}]

[[pinsets]]
domain = "{host}"
include_subdomains = true
pin_files = [{pins}]
expires = "180d"
mode = "enforce"
{extra}
"""


def _q(path: Path | str) -> str:
    return str(path)


class FleetDemo:
    """The fleet demo's steps and the background pieces it starts (and always stops)."""

    def __init__(self, out: Path, broker: str, devices: int, trustfleet: Callable[[list[str]], int],
                 keep: float | None = None) -> None:
        self.out, self.broker_spec, self.devices, self.keep = out, broker, devices, keep
        self.s = Step(out, trustfleet)
        self.broker: BrokerHandle | None = None
        self.server = None
        self.server_thread: threading.Thread | None = None
        self.server_errors: list[BaseException] = []
        self.console: ConsoleServer | None = None
        self.sim: BackgroundSimulation | None = None
        self.board: demo_board.DemoBoard | None = None
        self.db: fleetdb.FleetDB | None = None
        self._log_handler: logging.Handler | None = None

    # -- paths ------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.out / "root.cose"

    @property
    def db_path(self) -> Path:
        return self.out / "fleet.db"

    @property
    def keys(self) -> Path:
        return self.out / "keys"

    @property
    def tokens(self) -> Path:
        return self.keys / "console.tokens"

    # -- the whole run ----------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        prepare_out(self.out)
        (self.out / "keys").mkdir()
        (self.out / "certs").mkdir()
        port = None
        try:
            self.start_broker()
            port = self.broker.url.port
            self.operator_setup()
            self.start_server()
            self.start_devices()
            self.start_board()
            self.baseline()
            self.good_rollout()
            self.bad_rollout()
            self.fleet_table()
            self.keep_up()
        finally:
            self.shutdown()
        closed = port is None or not self.broker.controlled or not mosquitto.port_open("127.0.0.1", port)
        threads = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if self.broker is not None and not self.broker.controlled:
            ended = f"the fleet's retained topics on {self.broker.url} cleared"
        else:
            ended = f"broker stopped (port {port} {'closed' if closed else 'STILL OPEN'})"
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s; devices disconnected, server "
              f"and console stopped, {ended}; files in {self.out}/")
        if threads:
            print(f"demo: threads still running: {', '.join(threads)}")
        return 0 if closed and not threads else 1

    # -- steps ------------------------------------------------------------------------

    def start_broker(self) -> None:
        self.s.title("The broker")
        spec = self.broker_spec
        if spec == "auto":
            spec = "mosquitto" if mosquitto.mosquitto_binary() else "embedded"
        if spec == "mosquitto":
            self.broker = MosquittoHandle(self.out / "broker", persistence=False)
            print(f"$ mosquitto -c {self.broker.conf} &    # a private broker on a free port, "
                  f"stopped at the end")
        else:
            self.broker = open_broker(spec)
            if self.broker.controlled:
                print("# no mosquitto installed: trustfleet's embedded broker runs in this process")
            else:
                self.clear_topics()  # what an earlier run may have left on a shared broker
        print(f"broker: {self.broker.describe()} -> {self.broker.url}")

    def clear_topics(self) -> None:
        """Empty the fleet's retained documents on a broker the demo does not own."""
        f = FLEET
        names = [topics.root(f, 1), topics.bundle(f), topics.timestamp(f), topics.group_bundle(f, "canary"),
                 topics.status(f, demo_board.BOARD_ID)]
        names += [topics.bucket_bundle(f, n) for n in range(topics.BUCKETS)]
        from trustfleet_server.serve.link import publish_retained

        publish_retained(self.broker.url, [(t, b"") for t in names])

    def operator_setup(self) -> None:
        s, k = self.s, self.keys
        s.title("Operator keys: two root keys, two bundle keys, one online timestamp key")
        for name in ("root-1", "root-2", "bundle-1", "bundle-2", "timestamp"):
            s.run("trustfleet", ["key", "generate", "--out", _q(k / f"{name}.pem")])
        s.title("The fleet root: 2 of 2 root keys, 2 of 2 bundle keys")
        root = _q(self.root)
        s.run("trustfleet", ["root", "create", "--fleet", FLEET, "--expires", "365d",
                             "--key", f"root={k / 'root-1.pub.pem'}", "--key", f"root={k / 'root-2.pub.pem'}",
                             "--threshold", "root=2",
                             "--key", f"bundle={k / 'bundle-1.pub.pem'}",
                             "--key", f"bundle={k / 'bundle-2.pub.pem'}", "--threshold", "bundle=2",
                             "--key", f"timestamp={k / 'timestamp.pub.pem'}", "-o", root])
        for name in ("root-1", "root-2"):
            s.run("trustfleet", ["root", "sign", "--key", _q(k / f"{name}.pem"), "--signer", SIGNERS[name], root])
        s.title(f"The sample PKI (trustfleet_server/samples): the server of {SAMPLE_HOST} "
                "chains to the Demo Fleet Root CA; the Backup CA's key is the spare pin")
        for name in SAMPLE_FILES:
            (self.out / "certs" / name).write_bytes(sample_file(name))
        for name in ("demo-fleet-root-ca.pem", "demo-fleet-backup-ca.pem"):
            s.run("trustfleet", ["pin", _q(self.out / "certs" / name)])
        s.title("Bundle v1: the root CA as anchor, pins on the root CA and the backup CA (rule of two)")
        self.bundle(1)

    def bundle(self, version: int, *, pins: tuple[str, ...] = ("demo-fleet-root-ca.pem",
                                                              "demo-fleet-backup-ca.pem"),
               anchors: tuple[str, ...] = ("demo-fleet-root-ca.pem",), extra: str = "") -> Path:
        """Write a spec, build it, sign it twice, verify it. Returns the signed bundle's path."""
        spec = self.out / f"bundle-v{version}.toml"
        quoted = lambda names: ", ".join(f'"certs/{n}"' for n in names)  # noqa: E731
        spec.write_text(SPEC.format(version=version, anchors=quoted(anchors), pins=quoted(pins),
                                    host=SAMPLE_HOST.split(".", 1)[1], extra=extra))
        path = self.out / f"bundle-v{version}.cose"
        self.s.run("trustfleet", ["bundle", "build", _q(spec), "-o", _q(path)])
        for name in ("bundle-1", "bundle-2"):
            self.s.run("trustfleet", ["bundle", "sign", "--key", _q(self.keys / f"{name}.pem"),
                                      "--signer", SIGNERS[name], _q(path)])
        self.s.run("trustfleet", ["bundle", "verify", "--root", _q(self.root), _q(path)])
        return path

    def start_server(self) -> None:
        from trustfleet_server.serve.server import FleetServer

        self.s.title("The fleet server: ingests statuses into SQLite, publishes timestamps, drives rollouts, "
                     "serves the fleet console")
        self.write_tokens()
        console, taken = self.bind_console()
        url = str(self.broker.url)
        print(f"$ trustfleet serve --broker {url} --fleet {FLEET} --root {self.root} --db {self.db_path} "
              f"--timestamp-key {self.keys / 'timestamp.pem'} --step-every {STEP_EVERY} "
              f"--http 127.0.0.1:{console.port} --token-file {self.tokens} &")
        if taken:
            print(f"# {CONSOLE} is taken ({taken}): the console listens on free port {console.port} instead")
        self._quiet_logs()
        db = fleetdb.open_db(str(self.db_path))
        key = keys.load_private_key(self.keys / "timestamp.pem")
        self.server = FleetServer(self.broker.url, FLEET, [self.root.read_bytes()], db, key,
                                  timestamp_every=60, step_every=STEP_EVERY, client_id="demo-serve")
        server_db = db

        def serve() -> None:
            try:
                self.server.run()
            except BaseException as exc:  # noqa: BLE001 - reported when the demo stops it
                self.server_errors.append(exc)
            finally:
                server_db.close()

        console.settings.live = self.server.live
        self.console = console
        console.start()
        self.server_thread = threading.Thread(target=serve, name="trustfleet-demo-serve", daemon=True)
        self.server_thread.start()
        self.db = fleetdb.open_db(str(self.db_path))
        self.wait(lambda: self.server.synced, "the server to read the retained statuses")
        print(f"fleet console: {console.url}  (read-only on loopback; pause, resume and abort need the "
              f"token)\nmetrics:       {console.url}metrics\n"
              f"operator token: {self.tokens}  ({OPERATOR}:TOKEN, mode 600)\n"
              f"# in another terminal: curl -s {console.url}metrics | grep '^trustfleet_rollout'")

    def write_tokens(self) -> None:
        """The console's operator token, in a file only this user can read (a new one each run)."""
        line = f"{OPERATOR}:{secrets.token_urlsafe(24)}\n"
        fd = os.open(self.tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# the operator token of the demo's fleet console (NAME:TOKEN), made by trustfleet demo\n")
            f.write(line)

    def bind_console(self) -> tuple[ConsoleServer, str | None]:
        """The console bound on CONSOLE, or on a free loopback port when that one is taken:
        (ConsoleServer, why CONSOLE was refused or None). Not started yet."""
        from trustfleet_server import console
        from trustfleet_server.console import web

        settings = console.ConsoleSettings(str(self.db_path), FLEET, console.load_tokens(self.tokens))
        try:
            return web.ConsoleServer(settings, web.parse_bind(CONSOLE)), None
        except UsageError as exc:
            why = str(exc).rpartition(": ")[2] or "cannot listen"
        return web.ConsoleServer(settings, web.parse_bind("127.0.0.1:0")), why

    def start_devices(self) -> None:
        n = self.devices
        self.s.title(f"{n} devices (simulated agents, real verification): canary 10 %, the rest by hash bucket")
        print(f"$ trustfleet simulate --devices {n} --broker {self.broker.url} --fleet {FLEET} "
              f"--root {self.root} --group-split canary:10% --keep-running --timeout 10m &")
        cfg = SimConfig(devices=n, broker=self.broker.url, fleet=FLEET,
                                 root_raw=self.root.read_bytes(), groups=(("canary", 0.1),),
                                 id_prefix="dev")
        self.sim = BackgroundSimulation(cfg, self.broker)
        p = self.sim.start(connect_timeout=WAIT)
        print(f"{p.online} devices connected, each with its own MQTT session, retained status and last will; "
              f"no trust store yet")

    def start_board(self) -> None:
        """The real board, when a MicroPython binary runs here; the demo says which and why."""
        self.s.title("A real MicroPython board: the unmodified device/board/main.py, in the same fleet")
        if self.broker.url.tls:
            print("# no board: the broker speaks TLS and the demo has no CA file to give the board")
            return
        runtime, why = demo_board.find_runtime()
        if runtime is None:
            print(f"# no board: {why}")
            return
        board = demo_board.DemoBoard(runtime, self.out, FLEET, self.broker.url, self.root)
        how = ("package frozen, a stock ESP32's GC heap" if runtime.kind == "firmware stand-in" else
               f"package from .py files, so a larger heap; {why}")
        print(f"$ trustfleet {' '.join(board.command())} > {board.log_path} 2>&1 &")
        print(f"# {demo_board.BOARD_ID}: {runtime.describe()}, {how}; bucket "
              f"{topics.bucket(demo_board.BOARD_ID)}, so rollouts reach it in wave "
              f"{demo_board.first_wave(WAVES)}; no health-check endpoint (the sample server's name "
              f"does not resolve here)")
        board.start()
        self.board = board

    @property
    def members(self) -> int:
        """Devices the server should count: the simulated ones and the board."""
        return self.devices + (1 if self.board is not None else 0)

    def board_line(self) -> None:
        if self.board is not None:
            row = next((d for d in self.db.devices(FLEET) if d.get("device") == demo_board.BOARD_ID), None)
            print(self.board.summary(row))

    def composition(self) -> str:
        return f" ({self.devices} simulated, 1 board)" if self.board is not None else ""

    def baseline(self) -> None:
        self.s.title("Bundle v1 to the whole fleet at once (the fleet topic)")
        path = self.out / "bundle-v1.cose"
        self.s.run("trustfleet", ["publish", "--broker", str(self.broker.url), "--root", _q(self.root),
                                  _q(path)])
        self.wait(lambda: self.count(1) >= self.members, f"{self.members} devices to report v1")
        print(f"the server's view: {self.count(1)}/{self.members} devices run v1{self.composition()}")
        self.board_line()

    def good_rollout(self) -> None:
        self.s.title("Bundle v2 (adds the backup CA as an anchor) in a staged rollout: canary, 50 %, 100 %")
        path = self.bundle(2, anchors=("demo-fleet-root-ca.pem", "demo-fleet-backup-ca.pem"))
        self.s.run("trustfleet", ["bundle", "diff", _q(self.out / "bundle-v1.cose"), _q(path)])
        r = self.start_rollout(path)
        final = self.watch(r.id)
        if final.state != rollout.DONE:
            raise SystemExit(f"demo: rollout of v2 ended {final.state}: {final.halt_reason}")
        self.wait(lambda: self.count(2) >= self.members, f"{self.members} devices to report v2")
        print(f"rollout {r.id} done: {self.count(2)}/{self.members} devices run v2{self.composition()}")
        self.board_line()

    def bad_rollout(self) -> None:
        self.s.title("A bad bundle: v3 pins only the backup CA's key, which the sample server does not use")
        path = self.bundle(3, pins=("demo-fleet-backup-ca.pem",), extra="allow_single_pin = true")
        self.s.run("trustfleet", ["bundle", "diff", _q(self.out / "bundle-v2.cose"), _q(path)])
        r = self.start_rollout(path)
        final = self.watch(r.id)
        if final.state != rollout.HALTED:
            raise SystemExit(f"demo: the bad rollout ended {final.state}, expected halted")
        print(f"\nrollout {r.id} HALTED by itself: {final.halt_reason}; failing: "
              + ", ".join(f["device"] for f in final.failing))
        canary = [d for d in self.db.devices(FLEET) if d.get("group") == "canary"]
        reverted = sum(1 for d in canary if 3 in (d.get("bad") or []) and d.get("version") == 2)
        cleared = "cleared" if not self.db.rollout(r.id).published else "NOT cleared"
        print(f"{reverted}/{len(canary)} canary devices reverted to v2 and marked v3 bad (never retried); "
              f"{self.count(2)}/{self.members} devices run v2, {self.count(3)} run v3; "
              f"the wave topics were {cleared}")
        print(f"(the rollout's events: trustfleet rollout status --db {self.db_path} --fleet {FLEET})")
        self.board_line()

    def fleet_table(self) -> None:
        self.s.title("The fleet, as the server sees it")
        self.s.run("trustfleet", ["fleet", "status", "--db", _q(self.db_path), "--fleet", FLEET])

    def keep_up(self) -> None:
        """Keep everything up after the last step: --keep seconds (Enter on a terminal ends it
        sooner), else until Enter when both stdin and stdout are a terminal, else not at all (a
        script, CI, output captured). Ctrl-C ends it too."""
        tty = sys.stdin is not None and sys.stdin.isatty()  # Enter can end it
        if self.keep == 0 or (self.keep is None and not (tty and sys.stdout.isatty())):
            return
        if self.keep is None:
            how = "until you press Enter (or Ctrl-C)"
        else:
            how = f"for {self.keep:g} s; {'Enter or ' if tty else ''}Ctrl-C stops sooner"
        print(f"\nthe broker, devices, server and fleet console ({self.console.url}) stay up {how}",
              flush=True)
        deadline = None if self.keep is None else time.monotonic() + self.keep
        board_seen = False
        try:
            while deadline is None or time.monotonic() < deadline:
                if self.board is not None and not board_seen and (why := self.board.failed()):
                    print(f"# {demo_board.BOARD_ID}: {why}\n# the rest stays up", flush=True)
                    board_seen = True
                self.check_serve()
                if tty:
                    if select.select([sys.stdin], [], [], 0.25)[0]:
                        sys.stdin.readline()
                        return
                else:
                    time.sleep(0.25)
        except KeyboardInterrupt:
            print("\nCtrl-C: stopping", flush=True)

    # -- helpers ----------------------------------------------------------------------

    def start_rollout(self, path: Path) -> rollout.Rollout:
        self.s.run("trustfleet", ["rollout", "start", "--db", _q(self.db_path), "--fleet", FLEET,
                                  "--root", _q(self.root), "--bundle", _q(path),
                                  "--groups", ",".join(w.name for w in WAVES),
                                  "--success", "0.9", "--max-failure", "0.2", "--wave-deadline", "60"])
        return self.db.latest_rollout(FLEET)

    def watch(self, rollout_id: int, timeout: float = WAIT) -> rollout.Rollout:
        """Progress bars until the rollout is final (what `trustfleet fleet watch` shows)."""
        print(f"$ trustfleet fleet watch --db {self.db_path} --fleet {FLEET}")
        deadline = time.monotonic() + timeout
        shown: list[str] = []
        while True:
            self.check_server()
            now = int(time.time())
            r = self.db.rollout(rollout_id)
            lines = render.render_rollout(r, rollout.progress(r, self.db.devices(FLEET), now), now,
                                             tty=False)
            stable = [_DEADLINE.sub("", line) for line in lines]
            if stable != shown:
                for line, old in zip(stable, shown + [None] * len(stable), strict=False):
                    if line != old:
                        print(f"  {line.strip()}", flush=True)
                shown = stable
            if r.state in rollout.FINAL:
                return r
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: rollout {rollout_id} still {r.state} after {timeout:.0f} s")
            time.sleep(0.2)

    def count(self, version: int) -> int:
        return sum(1 for d in self.db.devices(FLEET)
                   if d.get("version") == version and d.get("state") in ("ok", "stale"))

    def wait(self, done: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self.check_server()
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def check_server(self) -> None:
        """Stop the demo when the server (or the board run) has failed, instead of waiting on."""
        if self.board is not None and (why := self.board.failed()):
            raise SystemExit(f"demo: {demo_board.BOARD_ID}: {why}")
        self.check_serve()

    def check_serve(self) -> None:
        """Stop the demo when the server has failed or stopped."""
        if self.server_errors:
            raise SystemExit(f"demo: the server failed: {self.server_errors[0]}")
        if self.server_thread is not None and not self.server_thread.is_alive():
            raise SystemExit("demo: the server stopped")

    def _quiet_logs(self) -> None:
        """Only the server's errors reach the demo's output: its warnings (a halt) are shown anyway."""
        logger = logging.getLogger("trustfleet")
        handler = logging.StreamHandler(sys.stdout)
        handler.setLevel(logging.ERROR)
        handler.setFormatter(logging.Formatter("  [serve] %(message)s"))
        logger.addHandler(handler)
        self._log_handler = handler

    def shutdown(self) -> None:
        """Stop the board, devices, server and broker, whatever happened before."""
        if self.board is not None:
            self.board.stop()
        if self.sim is not None:
            with contextlib.suppress(Exception):
                self.sim.stop(clear=not self.broker.controlled)
        if self.console is not None:
            self.console.stop()
        if self.server is not None:
            self.server.stop()
        if self.server_thread is not None:
            self.server_thread.join(15)
        if self.db is not None:
            self.db.close()
        if self.broker is not None:
            if not self.broker.controlled:
                with contextlib.suppress(Exception):
                    self.clear_topics()
            self.broker.stop()
        if self._log_handler is not None:
            logging.getLogger("trustfleet").removeHandler(self._log_handler)

