"""`trustfleet simulate`: a fleet of real device agents on a broker, with faults (simulate.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from trustfleet_device import policy, topics
from trustfleet_device.errors import TrustfleetError
from trustfleet_server import documents, mqtturl, spec, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.publish import bundle_topic
from trustfleet_server.sim.brokers import open_broker
from trustfleet_server.sim.config import (
    SAMPLE_HOST,
    Faults,
    SimConfig,
    chain_ders,
    parse_group_split,
    parse_share,
)
from trustfleet_server.sim.report import render
from trustfleet_server.sim.simulator import (
    MANY_DEVICES,
    Simulation,
    default_processes,
    progress_printer,
)

EPILOG = """\
examples:
  trustfleet simulate --devices 100 --broker embedded --fleet acme --root root.cose \\
      --initial bundle-v1.cose --publish bundle-v2.cose
  trustfleet simulate --devices 1000 --broker mqtt://127.0.0.1:1883 --fleet acme --root root.cose \\
      --group-split canary:5%,beta:20% --until-version 8 --timeout 600   # next to `trustfleet serve`
  trustfleet simulate --devices 10000 --processes 2 --broker mosquitto ... --json

faults (shares are of the fleet, 0.05 or 5%; subsets are reproducible with --seed):
  --offline 0.1 --offline-for 10s   powered off until 10 s after the new bundle first arrives
  --clock-skew 3600                 every clock off by a random amount within +-3600 s
  --stuck-2000 0.05                 clocks reading 2000-01-01 (firmware_time: a month-old build)
  --power-cut 0.05                  power lost at a random step of the first install; reboot, reconnect
  --health-fail 0.02                health check fails on this share ...
  --health-fail-group canary        ... or on every device of a group
  --duplicate 0.1 --reorder 0.1     messages handed over again; older documents delivered around newer
  --forge 0.01                      these devices get each bundle first with one bit flipped (must
                                    refuse it while the rest of the fleet holds the genuine one)
  --broker-restart-at 5s            restart the broker 5 s after the new bundle first arrives
                                    (only a broker the simulator started: embedded or mosquitto)
  --broker-restart-signal kill      ... as kill -9: nothing saved, retained messages since the
                                    last autosave lost (embedded: all of them)
  --republish                       after the restart, publish the --publish bundle again, as
                                    `serve` re-publishes what it owns (else a lost bundle stays lost)
  --loss 5%                         each message, either way, lost with this chance; a loss cuts
                                    the connection and the device reconnects
  --latency 50ms                    every message, either way, arrives this much later

  trustfleet simulate --devices 50 --broker mosquitto ... --broker-restart-at 3s \\
      --broker-restart-signal kill --loss 2% --latency 50ms --json

The new bundle comes from --publish (published once every device is connected) or
from elsewhere (`trustfleet publish`, a rollout driven by `trustfleet serve`). The run
ends when every device runs the target version (--until-version, else the newest one
any device verified) or reverted it as bad, or at --timeout (exit 1). Convergence is
judged after the faults end: after a broker restart, every device must be back online
on a new connection. Converged (exit 0) means every device runs the target, except
those a --health-fail fault made revert it; a device whose own health check refused
the new store did not converge (exit 1). A run that does not converge says why (JSON:
not_converged, with the unsettled devices, their state and faults).
Health check: each device's trial store judges --chain for --endpoint (default: the
sample chain of api.demo-fleet.example shipped in trustfleet_server/samples); for your
own bundle give your server's chain:
  trustfleet simulate --devices 1000 --broker embedded --fleet acme --root root.cose \\
      --publish bundle-v1.cose --chain certs/api-chain.pem --endpoint api.acme.example

In your own tests: pip install 'trustfleet[testing]' gives pytest fixtures (tf_fleet,
tf_devices, ...) over this same simulator, with typed results (docs/testing.md).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run N simulated devices (real agents) against a broker, with faults",
                       description="Run a fleet of real device agents (signature checks, A/B slots, "
                                   "health checks) over MQTT, multiplexed with asyncio, and report "
                                   "convergence, states, versions and the faults applied.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, required=True, metavar="N", help="how many devices to simulate")
    p.add_argument("--broker", required=True, metavar="URL|embedded|mosquitto",
                   help="mqtt://host:port, or start a broker: embedded (in this process) or "
                        "mosquitto (a private one on a free port). Never taken from trustfleet.toml: "
                        "a simulation does not go to the fleet's broker unless named here")
    common.fleet_argument(p)
    common.root_argument(p, chain=False, help="the factory root")
    p.add_argument("--initial", type=Path, metavar="BUNDLE",
                   help="a signed bundle already installed on every device (factory image)")
    p.add_argument("--publish", type=Path, metavar="BUNDLE",
                   help="publish this bundle (retained, QoS 1) once the devices are connected")
    p.add_argument("--to", default="fleet", metavar="TARGET",
                   help="topic for --publish: fleet (default), group:NAME or bucket:N")
    p.add_argument("--group-split", metavar="G:SHARE,...", help="rollout groups, e.g. canary:5%%,beta:20%%")
    p.add_argument("--processes", type=int, metavar="P",
                   help=f"worker processes (default 1, or one per CPU above {MANY_DEVICES} devices)")
    p.add_argument("--timeout", default="120s", metavar="DURATION", help="give up after this (default 120s)")
    p.add_argument("--until-version", metavar="V", help="the version to converge on")
    p.add_argument("--endpoint", default=SAMPLE_HOST, metavar="HOST",
                   help=f"host the health check judges (default {SAMPLE_HOST})")
    p.add_argument("--chain", type=Path, metavar="PEM", help="server chain, leaf first (default: the sample)")
    p.add_argument("--id-prefix", default="sim", help="device ids are PREFIX-00000... (default sim)")
    p.add_argument("--seed", type=int, default=1, help="fault subsets and clock skews (default 1)")
    p.add_argument("--keep-retained", action="store_true",
                   help="on an external broker, leave the devices' retained statuses (default: cleared)")
    p.add_argument("--keep-running", action="store_true",
                   help="stay until --timeout (or Ctrl-C) even after converging, e.g. next to `serve`")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    f = p.add_argument_group("faults")
    f.add_argument("--offline", default="0", metavar="SHARE",
                   help="share of devices powered off when the new bundle arrives (0.1 or 10%%)")
    f.add_argument("--offline-for", default="10s", metavar="DURATION",
                   help="how long --offline devices stay off after the bundle first arrives (default 10s)")
    f.add_argument("--clock-skew", type=int, default=0, metavar="SECONDS",
                   help="every device clock off by a random amount within +-SECONDS (default 0)")
    f.add_argument("--stuck-2000", default="0", metavar="SHARE",
                   help="share of devices whose clock reads 2000-01-01")
    f.add_argument("--power-cut", default="0", metavar="SHARE",
                   help="share of devices losing power at a random step of the first install")
    f.add_argument("--health-fail", default="0", metavar="SHARE",
                   help="share of devices whose health check fails (they revert the bundle)")
    f.add_argument("--health-fail-group", metavar="GROUP",
                   help="every device of this rollout group fails its health check")
    f.add_argument("--duplicate", default="0", metavar="SHARE",
                   help="share of messages handed over again")
    f.add_argument("--reorder", default="0", metavar="SHARE",
                   help="share of messages delivered after newer ones")
    f.add_argument("--forge", default="0", metavar="SHARE",
                   help="share of devices handed each bundle first with one bit flipped")
    f.add_argument("--broker-restart-at", metavar="DURATION",
                   help="restart the broker this long after the new bundle first arrives "
                        "(embedded or mosquitto only)")
    f.add_argument("--broker-restart-signal", choices=("term", "kill"), default="term",
                   help="term: clean stop (default); kill: kill -9, state not saved")
    f.add_argument("--republish", action="store_true",
                   help="after the restart, publish the --publish bundle again (as serve does)")
    f.add_argument("--loss", default="0", metavar="SHARE",
                   help="chance each message is lost, either way; a loss cuts the connection")
    f.add_argument("--latency", default="0s", metavar="DURATION",
                   help="delay added to every message, either way (default 0s)")
    p.set_defaults(func=cmd_simulate)


def faults_from(args: argparse.Namespace) -> Faults:
    """Raises: UsageError."""
    if args.clock_skew < 0:
        raise UsageError("--clock-skew: must be 0 or more seconds")
    group = args.health_fail_group
    if group is not None:
        try:
            topics.check_name(group, "--health-fail-group")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.broker_restart_signal != "term" and not args.broker_restart_at:
        raise UsageError("--broker-restart-signal: needs --broker-restart-at (when to restart)")
    if args.republish and not (args.broker_restart_at and args.publish):
        raise UsageError("--republish: needs --broker-restart-at and --publish (what to publish again)")
    loss = parse_share(args.loss, "--loss")
    if loss > 0.5:
        raise UsageError(f"--loss: {args.loss} would cut nearly every connection; at most 50%")
    share = parse_share
    return Faults(
        offline=share(args.offline, "--offline"),
        offline_for=times.parse_duration(args.offline_for, "--offline-for", strict=False),
        clock_skew=args.clock_skew,
        stuck_2000=share(args.stuck_2000, "--stuck-2000"),
        power_cut=share(args.power_cut, "--power-cut"),
        health_fail=share(args.health_fail, "--health-fail"),
        health_fail_group=group,
        duplicate=share(args.duplicate, "--duplicate"),
        reorder=share(args.reorder, "--reorder"),
        forge=share(args.forge, "--forge"),
        broker_restart_at=(times.parse_duration(args.broker_restart_at, "--broker-restart-at", strict=False)
                           if args.broker_restart_at else None),
        broker_restart_signal=args.broker_restart_signal,
        republish=args.republish,
        loss=loss,
        latency=times.parse_duration(args.latency, "--latency", strict=False))


def _verified_bundle(root_raw: bytes, path: Path, fleet: str) -> bytes:
    raw = documents.read_file(path)
    try:
        b = policy.verify_bundle(policy.load_trusted_root(root_raw), raw, now=int(time.time()))
    except TrustfleetError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if b.fleet != fleet:
        raise UsageError(f"{path} is a bundle of fleet {b.fleet}, not {fleet}")
    return raw


def config_from(args: argparse.Namespace, url) -> tuple[SimConfig, tuple[str, bytes] | None]:
    """The SimConfig and the (topic, bundle) to publish. Raises: UsageError, TrustfleetError."""
    try:
        fleet = topics.check_name(args.fleet, "fleet")
        topics.check_name(args.id_prefix, "--id-prefix")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.devices < 1:
        raise UsageError("--devices must be at least 1")
    root_raw, _ = documents.read_document_file(args.root, "root")
    root = documents.load_root_chain([args.root])  # a refusal names the file
    if root.fleet != fleet:
        raise UsageError(f"--fleet {fleet} does not match the root's fleet {root.fleet}")
    initial = _verified_bundle(root_raw, args.initial, fleet) if args.initial else None
    publish = None
    if args.publish:
        publish = (bundle_topic(fleet, args.to), _verified_bundle(root_raw, args.publish, fleet))
    chain = chain_ders(documents.read_file(args.chain), str(args.chain)) if args.chain else ()
    cfg = SimConfig(
        devices=args.devices, broker=url, fleet=fleet, root_raw=root_raw,
        groups=parse_group_split(args.group_split) if args.group_split else (),
        faults=faults_from(args), endpoint=args.endpoint, chain=chain, initial=initial,
        id_prefix=args.id_prefix, seed=args.seed,
        until_version=(spec.parse_version(args.until_version, "--until-version")
                       if args.until_version is not None else None))
    return cfg, publish


def cmd_simulate(args: argparse.Namespace) -> int:
    timeout = times.parse_duration(args.timeout, "--timeout", strict=False)
    processes = args.processes if args.processes else default_processes(args.devices)
    if processes < 1:
        raise UsageError("--processes must be at least 1")
    if args.broker_restart_at and args.broker not in ("embedded", "mosquitto"):
        raise UsageError(f"--broker-restart-at: the simulator can only restart a broker it started "
                           f"(--broker embedded or --broker mosquitto), not {args.broker}")
    # Check everything that can be checked before starting a broker.
    cfg, publish = config_from(args, mqtturl.BrokerURL("127.0.0.1", 1))
    broker = open_broker(args.broker)
    try:
        cfg = SimConfig(**{**cfg.__dict__, "broker": broker.url})
        sim = Simulation(cfg, broker, processes)
        if not args.json:
            print(f"simulating {cfg.devices} devices of fleet {cfg.fleet} on {broker.describe()}, "
                  f"{sim.processes} process(es)", flush=True)
        show = progress_printer(cfg.until_version)
        try:
            # On a shared broker the devices clear their retained statuses on the way out.
            clear = not broker.controlled and not args.keep_retained
            report = asyncio.run(sim.run(timeout, publish, show, clear, args.keep_running))
        finally:
            show.end()
    finally:
        broker.stop()
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print("\n".join(render(report)))
    return 0 if report.converged else 1
