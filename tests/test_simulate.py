"""`trustfleet simulate`: real device agents on real brokers converge, and each fault ends as it must.

Every device is the real core (runner.Device over MemStorage, real COSE
signatures, real health check of the trial store against the sample server
chain) on its own MQTT connection. Brokers: the `mosquitto` fixture (the
system Mosquitto on 1883 when it answers, else a private one), the
`embedded_broker` fixture, and, for restarts, brokers the simulator starts
itself. Fleets are unique per test; on a shared broker the devices clear
their retained statuses and the test clears the bundle it published.
Every run is bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import cached_property

import pytest
from cryptography import x509

from support import brokers
from support.environment import require_tool, skip_or_fail
from support.fleetkit import Repo, compact_anchor, pin, pinset
from support.readme_pki import HOST as README_HOST
from support.readme_pki import make_certs
from trustfleet_device import topics
from trustfleet_server import cli, mqtturl
from trustfleet_server.broker.mosquitto import mosquitto_binary, port_open
from trustfleet_server.errors import UsageError
from trustfleet_server.sim.brokers import BrokerHandle, open_broker
from trustfleet_server.sim.config import (
    DUPLICATE,
    POWER_CUT,
    SAMPLE_HOST,
    Faults,
    Plan,
    SimConfig,
    parse_group_split,
    parse_share,
    sample_file,
)
from trustfleet_server.sim.report import Report, render
from trustfleet_server.sim.simulator import Simulation

RUN_TIMEOUT = 40.0
NO_FAULTS = Faults()
DAY = 86_400


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(sample_file(name))


class Fleet:
    """A fleet's root and bundles built on the sample PKI (fleetkit signs them for real)."""

    def __init__(self) -> None:
        self.name = brokers.unique_fleet("sim")
        self.now = int(time.time())
        self.repo = Repo(fleet=self.name, now=self.now)
        self._bundles: dict[tuple[int, bool], bytes] = {}

    @cached_property
    def root_ca(self) -> x509.Certificate:
        return _cert("demo-fleet-root-ca.pem")

    @cached_property
    def backup_ca(self) -> x509.Certificate:
        return _cert("demo-fleet-backup-ca.pem")

    def bundle(self, version: int, bad: bool = False) -> bytes:
        """Anchor: the sample root CA. Pins: root + backup CA, or (bad) the backup CA only."""
        key = (version, bad)
        if key not in self._bundles:
            pins = [pin(self.backup_ca)] if bad else [pin(self.root_ca), pin(self.backup_ca)]
            extra = {"allow_single_pin": True} if bad else {}
            ps = pinset(SAMPLE_HOST, pins, expires=self.now + 180 * DAY, **extra)
            self._bundles[key] = self.repo.bundle(version, anchors=[compact_anchor(self.root_ca)],
                                                  pinsets=[ps])
        return self._bundles[key]


def url_of(broker) -> mqtturl.BrokerURL:
    return mqtturl.BrokerURL(broker.host, broker.port)


def run(fleet: Fleet, url: mqtturl.BrokerURL, *, devices: int = 40, faults: Faults = NO_FAULTS,
        groups: tuple = (), processes: int = 1, handle: BrokerHandle | None = None,
        publish: bytes | None = None, until: int | None = None, timeout: float = RUN_TIMEOUT,
        clear: bool = True) -> Report:
    """Devices start with v1 installed; v2 (or `publish`) goes to the fleet topic once they are up."""
    cfg = SimConfig(devices=devices, broker=url, fleet=fleet.name, root_raw=fleet.repo.root_raw,
                    groups=groups, faults=faults, initial=fleet.bundle(1), seed=7, until_version=until)
    sim = Simulation(cfg, handle, processes)
    doc = fleet.bundle(2) if publish is None else publish
    return asyncio.run(sim.run(timeout, (topics.bundle(fleet.name), doc), clear=clear))


def assert_converged(report: Report, version: int = 2) -> None:
    assert report.converged, (report.states, report.versions, report.faults)
    assert report.target == version
    assert report.online == len(report.devices)
    assert all(d.bricked is None for d in report.devices)


@pytest.fixture
def fleet():
    return Fleet()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request, fleet):
    """The real Mosquitto, then the embedded broker; the fleet's bundle topic is cleared afterwards."""
    b = request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "embedded_broker")
    yield b
    brokers.clear_retained(b, [topics.bundle(fleet.name)])


@pytest.fixture
def embedded(embedded_broker, fleet):
    yield embedded_broker
    brokers.clear_retained(embedded_broker, [topics.bundle(fleet.name)])


def _require_mosquitto() -> None:
    if mosquitto_binary():
        return
    skip_or_fail("mosquitto not installed (apt-get install mosquitto)")


# --------------------------------------------------------------------------- convergence


@pytest.mark.timeout(90)
def test_fleet_converges_to_the_published_bundle(broker, fleet):
    report = run(fleet, url_of(broker), devices=60)
    assert_converged(report)
    assert report.committed == 60
    assert report.states == {"ok": 60}
    assert report.versions == {"v2": 60}
    assert report.convergence_s is not None and 0 <= report.convergence_s < RUN_TIMEOUT
    assert all(2 in d.commits for d in report.devices)


@pytest.mark.timeout(90)
def test_workers_in_two_processes_add_up(embedded, fleet):
    report = run(fleet, url_of(embedded), devices=40, processes=2,
                 faults=Faults(power_cut=0.1, health_fail=0.1))
    assert_converged(report)
    assert report.processes == 2
    assert len(report.devices) == 40 and len({d.id for d in report.devices}) == 40
    assert len(report.peak_rss_kb["workers"]) == 2
    assert report.faults["power_cut"]["cuts"] == 4
    assert report.states.get("reverted") == 4


@pytest.mark.timeout(60)
def test_devices_that_never_see_the_target_do_not_converge(embedded, fleet):
    report = run(fleet, url_of(embedded), devices=10, until=5, timeout=1.5)
    assert not report.converged
    assert report.versions == {"v2": 10}


# --------------------------------------------------------------------------- faults


@pytest.mark.timeout(90)
def test_offline_devices_come_back_and_converge(broker, fleet):
    report = run(fleet, url_of(broker), devices=40, faults=Faults(offline=0.25, offline_for=1.0))
    assert_converged(report)
    assert report.versions == {"v2": 40}
    late = report.by_fault("offline")
    assert len(late) == 10
    # They were powered off during the publish: each committed only after coming back.
    assert all(d.commits[2] >= report.t0 + 1.0 for d in late)
    assert report.convergence_s >= 1.0


@pytest.mark.timeout(90)
def test_boards_stuck_in_2000_and_skewed_clocks_install(broker, fleet):
    report = run(fleet, url_of(broker), devices=40, faults=Faults(stuck_2000=0.25, clock_skew=3600))
    assert_converged(report)
    stuck = report.by_fault("stuck-2000")
    assert len(stuck) == 10
    assert all(d.version == 2 and d.state == "ok" for d in stuck)
    assert report.states == {"ok": 40}


@pytest.mark.timeout(90)
def test_power_cut_during_install_leaves_a_verified_store_and_converges(broker, fleet):
    report = run(fleet, url_of(broker), devices=40, faults=Faults(power_cut=0.25))
    assert_converged(report)
    cut = report.by_fault("power-cut")
    assert len(cut) == 10
    assert all(d.cuts == 1 for d in cut)
    for d in cut:
        (before, after), = d.after_cut
        # Booted on what survived: a store that verified, the old one or the new one.
        assert before == 1 and after in (1, 2), d
        assert d.version == 2  # the retained bundle came again after the reconnect
    assert report.faults["power_cut"]["cuts"] == 10
    assert report.faults["power_cut"]["bricked"] == 0


@pytest.mark.timeout(90)
def test_health_fail_subset_reverts_and_reports_the_version_bad(embedded, fleet):
    report = run(fleet, url_of(embedded), devices=40, faults=Faults(health_fail=0.1), clear=False)
    assert_converged(report)
    failing = report.by_fault("health-fail")
    assert len(failing) == 4
    assert all(d.version == 1 and d.bad == [2] for d in failing)
    assert report.states == {"ok": 36, "reverted": 4}
    assert sorted(r["device"] for r in report.reverted) == sorted(d.id for d in failing)
    # What the server would ingest: the retained status of each says v2 is bad.
    c = brokers.connect(embedded)
    try:
        for d in failing:
            c.subscribe(topics.status(fleet.name, d.id))
        got = c.wait_messages(4, timeout=5)
    finally:
        c.close()
    statuses = [json.loads(m.payload) for m in got if m.payload]
    assert len(statuses) == 4
    assert all(s["bad"] == [2] and s["version"] == 1 and s["state"] == "ok" for s in statuses)


@pytest.mark.timeout(90)
def test_health_fail_group_reverts_the_whole_group(embedded, fleet):
    report = run(fleet, url_of(embedded), devices=40, groups=(("canary", 0.1), ("beta", 0.2)),
                 faults=Faults(health_fail_group="canary"))
    assert_converged(report)
    canary = [d for d in report.devices if d.group == "canary"]
    assert len(canary) == 4
    assert all(d.version == 1 and 2 in d.bad for d in canary)
    assert all(d.version == 2 for d in report.devices if d.group != "canary")


@pytest.mark.timeout(90)
def test_a_bad_bundle_fails_the_real_health_check_everywhere_and_does_not_converge(embedded, fleet):
    """No fault injected: the trial store itself refuses the sample chain (wrong pin). Every
    device settled, but none reached v2: that is not convergence, and the report says why."""
    report = run(fleet, url_of(embedded), devices=20, publish=fleet.bundle(2, bad=True))
    assert not report.converged and report.committed == 0 and report.refused == 20
    assert report.states == {"reverted": 20}
    assert all(d.version == 1 and d.bad == [2] for d in report.devices)
    reason = report.why["reason"]
    assert reason.startswith("20 of 20 devices reverted v2: their health check judged the sample "
                             f"chain of {SAMPLE_HOST} (samples/server-chain.pem) for {SAMPLE_HOST} "
                             "with the new store and it was refused (TLS to ")
    assert "give the simulated servers your chain with --chain FILE" in reason
    assert report.why["by_reason"] == {"reverted v2": 20}


@pytest.mark.timeout(90)
def test_duplicates_and_reordering_change_nothing(broker, fleet):
    report = run(fleet, url_of(broker), devices=40, faults=Faults(duplicate=0.25, reorder=0.25))
    assert_converged(report)
    assert report.states == {"ok": 40}
    assert report.versions == {"v2": 40}
    assert all(d.bad == [] for d in report.devices)
    assert all(list(d.commits) == [2] for d in report.devices)  # installed once, never twice
    assert report.faults["duplicate"]["redelivered"] > 0
    assert report.faults["reorder"]["older_first"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_broker_restart_mid_rollout_still_converges(kind, fleet):
    if kind == "mosquitto":
        _require_mosquitto()
    handle = open_broker(kind)
    try:
        port = handle.url.port
        # A quarter of the fleet boots after the restart: the rollout is still under way.
        report = run(fleet, handle.url, devices=40, handle=handle,
                     faults=Faults(broker_restart_at=0.2, offline=0.25, offline_for=1.5))
    finally:
        handle.stop()
    assert_converged(report)
    assert report.faults["broker_restart"]["restarts"] == 1
    assert report.versions == {"v2": 40}
    assert all(d.commits[2] > report.t0 + 0.2 for d in report.by_fault("offline"))
    assert not port_open("127.0.0.1", port)


def test_broker_restart_is_refused_on_an_external_broker(mosquitto, fleet):
    cfg = SimConfig(devices=5, broker=url_of(mosquitto), fleet=fleet.name, root_raw=fleet.repo.root_raw,
                    faults=Faults(broker_restart_at=1.0))
    with pytest.raises(UsageError, match="broker the simulator controls"):
        Simulation(cfg, BrokerHandle(url_of(mosquitto)))


# --------------------------------------------------------------------------- the command


def test_cli_refuses_a_restart_of_a_broker_it_did_not_start(mosquitto, fleet, tmp_path, capsys):
    root = tmp_path / "root.cose"
    root.write_bytes(fleet.repo.root_raw)
    code = cli.main(["simulate", "--devices", "5", "--broker", str(url_of(mosquitto)),
                     "--fleet", fleet.name, "--root", str(root), "--broker-restart-at", "5s"])
    assert code == 2
    assert "can only restart a broker it started" in capsys.readouterr().err


@pytest.mark.timeout(90)
def test_cli_prints_one_json_report(fleet, tmp_path, capsys):
    paths = {}
    for name, raw in (("root", fleet.repo.root_raw), ("v1", fleet.bundle(1)), ("v2", fleet.bundle(2))):
        paths[name] = tmp_path / f"{name}.cose"
        paths[name].write_bytes(raw)
    code = cli.main(["simulate", "--devices", "30", "--broker", "embedded", "--fleet", fleet.name,
                     "--root", str(paths["root"]), "--initial", str(paths["v1"]),
                     "--publish", str(paths["v2"]), "--group-split", "canary:10%",
                     "--power-cut", "0.1", "--health-fail-group", "canary", "--duplicate", "10%",
                     "--reorder", "0.1", "--clock-skew", "600", "--stuck-2000", "0.1",
                     "--forge", "10%", "--broker-restart-at", "0s", "--timeout", "40s", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert report["converged"] is True
    assert report["target_version"] == 2
    assert report["states"] == {"ok": 27, "reverted": 3}
    assert report["versions"] == {"v1": 3, "v2": 27}
    assert report["faults"]["power_cut"]["cuts"] == 3
    assert report["faults"]["broker_restart"]["restarts"] == 1
    forge = report["faults"]["forge"]
    assert forge["devices"] == 3 and forge["accepted"] == 0 and forge["refused"] == forge["forged"] >= 3
    assert report["peak_rss_kb"]["total"] > 0


def simulate_json(capsys, *argv: str) -> tuple[int, dict]:
    code = cli.main(["simulate", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.timeout(90)
def test_cli_a_bundle_whose_anchors_miss_the_sample_chain_exits_1_and_says_why(tmp_path, capsys):
    """As the README's own root and bundle: no initial bundle, anchors and pins of the acme
    certificates (openssl-made, as the README test makes them), and the default health check
    judges the sample chain of another host."""
    certs = make_certs(require_tool("openssl", "apt-get install openssl"), tmp_path)
    acme_root, backup = (x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
                         for name in ("acme-root-ca", "acme-backup-ca"))
    now = int(time.time())
    repo = Repo(fleet=brokers.unique_fleet("sim"), now=now)
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    (tmp_path / "bundle-v1.cose").write_bytes(repo.bundle(
        1, anchors=[compact_anchor(acme_root)],
        pinsets=[pinset(README_HOST, [pin(acme_root), pin(backup)], expires=now + 180 * DAY)]))
    base = ["--devices", "30", "--broker", "embedded", "--fleet", repo.fleet,
            "--root", str(tmp_path / "root.cose"), "--publish", str(tmp_path / "bundle-v1.cose")]
    code, report = simulate_json(capsys, *base)
    assert code == 1
    assert (report["converged"], report["committed"], report["refused_by_health_check"]) == (False, 0, 30)
    reason = report["not_converged"]["reason"]
    assert reason.startswith(f"30 of 30 devices reverted v1: their health check judged the sample "
                             f"chain of {SAMPLE_HOST}")
    assert "give the simulated servers your chain with --chain FILE" in reason and "\n" not in reason

    code = cli.main(["simulate", *base])  # the text report says it too
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT converged: 0/30 devices run v1" in out
    assert [ln for ln in out.splitlines() if ln.startswith("why not converged: ")] == [
        f"why not converged: {reason}"]
    assert "stays on vNone" not in out

    # The devices given the chain the bundle pins converge.
    code, report = simulate_json(capsys, *base, "--chain", str(certs / "api-chain.pem"),
                                 "--endpoint", README_HOST)
    assert code == 0, report["not_converged"]
    assert (report["converged"], report["committed"], report["refused_by_health_check"]) == (True, 30, 0)


def test_cli_refuses_a_bundle_of_another_root(fleet, tmp_path, capsys):
    other = Fleet()
    (tmp_path / "root.cose").write_bytes(fleet.repo.root_raw)
    (tmp_path / "v2.cose").write_bytes(other.bundle(2))
    code = cli.main(["simulate", "--devices", "3", "--broker", "embedded", "--fleet", fleet.name,
                     "--root", str(tmp_path / "root.cose"), "--publish", str(tmp_path / "v2.cose")])
    assert code == 1
    assert "v2.cose" in capsys.readouterr().err


@pytest.mark.parametrize("text, share", [("5%", 0.05), ("0.25", 0.25), ("100%", 1.0)])
def test_shares_read_as_percent_or_fraction(text, share):
    assert parse_share(text, "--x") == pytest.approx(share)


@pytest.mark.parametrize("text", ["150%", "-0.1", "lots"])
def test_bad_shares_are_refused(text):
    with pytest.raises(UsageError):
        parse_share(text, "--x")


def test_group_split_assigns_groups_in_id_order():
    groups = parse_group_split("canary:5%,beta:20%")
    cfg = SimConfig(devices=100, broker=mqtturl.BrokerURL("h", 1), fleet="f", root_raw=b"", groups=groups)
    plan = Plan.make(cfg)
    assert plan.groups.count("canary") == 5 and plan.groups.count("beta") == 20
    assert plan.groups[:5] == ("canary",) * 5 and plan.groups[5] == "beta"
    with pytest.raises(UsageError):
        parse_group_split("a:60%,b:50%")


def test_fault_subsets_are_reproducible_and_sized():
    cfg = SimConfig(devices=200, broker=mqtturl.BrokerURL("h", 1), fleet="f", root_raw=b"",
                    faults=Faults(power_cut=0.05, duplicate=0.1, clock_skew=60))
    a, b = Plan.make(cfg), Plan.make(cfg)
    assert a == b
    assert sum(1 for f in a.flags if f & POWER_CUT) == 10
    assert sum(1 for f in a.flags if f & DUPLICATE) == 20
    assert all(-60 <= s <= 60 for s in a.skews) and len(set(a.skews)) > 1


# --------------------------------------------------------------------------- faults end before convergence counts


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_a_restart_after_convergence_is_waited_out(kind, fleet):
    """Issue 10 finding 10: the fleet converges, then the broker restarts; "converged" must come
    from the state after the restart (every device back online), not from a snapshot before it."""
    if kind == "mosquitto":
        _require_mosquitto()
    handle = open_broker(kind)
    try:
        report = run(fleet, handle.url, devices=20, handle=handle,
                     faults=Faults(broker_restart_at=2.0))
    finally:
        handle.stop()
    assert report.faults["broker_restart"]["restarts"] == 1
    assert_converged(report)
    assert report.states == {"ok": 20}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_a_kill_9_restart_drops_every_device_and_the_fleet_comes_back(kind, fleet):
    """kill -9: no clean shutdown, nothing saved. The fleet had converged; it must reconnect to the
    new broker on the same port before the run counts as converged."""
    if kind == "mosquitto":
        _require_mosquitto()
    handle = open_broker(kind)
    try:
        pid = handle.mosquitto.proc.pid if kind == "mosquitto" else None
        report = run(fleet, handle.url, devices=20, handle=handle,
                     faults=Faults(broker_restart_at=1.0, broker_restart_signal="kill"))
        if kind == "embedded":
            # Its state went with it: the retained bundle is gone from the new broker.
            assert handle.broker.call(handle.broker.broker.retained, topics.bundle(fleet.name)) is None
        else:
            assert handle.mosquitto.proc.pid != pid
            assert "--- start 2" in handle.log.read_text()
    finally:
        handle.stop()
    assert_converged(report)
    assert report.faults["broker_restart"]["signal"] == "kill"
    assert report.faults["broker_restart"]["restarts"] == 1
    assert report.why is None


@pytest.mark.timeout(90)
def test_a_run_that_does_not_converge_says_why(fleet, tmp_path, capsys):
    """A kill -9 of the embedded broker loses the retained bundle; the devices powered off until
    after it never see v2. The JSON names them, their state, their faults and the restart."""
    paths = {}
    for name, raw in (("root", fleet.repo.root_raw), ("v1", fleet.bundle(1)), ("v2", fleet.bundle(2))):
        paths[name] = tmp_path / f"{name}.cose"
        paths[name].write_bytes(raw)
    code = cli.main(["simulate", "--devices", "20", "--broker", "embedded", "--fleet", fleet.name,
                     "--root", str(paths["root"]), "--initial", str(paths["v1"]),
                     "--publish", str(paths["v2"]), "--offline", "25%", "--offline-for", "1.5s",
                     "--broker-restart-at", "0.3s", "--broker-restart-signal", "kill",
                     "--timeout", "8s", "--json"])
    out = capsys.readouterr().out
    assert code == 1, out
    report = json.loads(out)
    assert report["converged"] is False
    why = report["not_converged"]
    assert why["unsettled"] == 5, why
    assert why["faults_pending"] == []
    assert "--timeout" in why["reason"] and "kill" in why["reason"], why["reason"]
    assert "must be published again" in why["reason"]
    for d in why["devices"]:
        assert d["online"] and d["version"] == 1 and d["faults"] == ["offline"], d
        assert "never received or never installed v2" in d["why"]
    assert report["versions"] == {"v1": 5, "v2": 15}


@pytest.mark.timeout(120)
def test_packet_loss_and_latency_slow_the_fleet_but_it_converges(broker, fleet):
    report = run(fleet, url_of(broker), devices=30,
                 faults=Faults(loss=0.1, latency=0.05), timeout=60)
    assert_converged(report)
    assert report.versions == {"v2": 30}
    assert report.faults["loss"]["lost"] > 0
    assert report.faults["latency"]["delayed"] > 0
    assert report.convergence_s is not None and report.convergence_s >= 0.05


@pytest.mark.parametrize("extra, message", [
    (["--loss", "60%"], "--loss: 60% would cut nearly every connection"),
    (["--loss", "lots"], "--loss: 'lots' is not a share"),
    (["--forge", "150%"], "--forge: 150% is outside 0..1"),
    (["--latency", "soon"], "--latency: 'soon' is not a duration"),
    (["--broker-restart-signal", "kill"], "--broker-restart-signal: needs --broker-restart-at"),
    (["--republish"], "--republish: needs --broker-restart-at and --publish"),
])
def test_bad_fault_options_are_one_clear_line(fleet, tmp_path, capsys, extra, message):
    root = tmp_path / "root.cose"
    root.write_bytes(fleet.repo.root_raw)
    code = cli.main(["simulate", "--devices", "5", "--broker", "embedded", "--fleet", fleet.name,
                     "--root", str(root), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_kill_9_with_devices_offline_reconverges_when_the_bundle_is_published_again(kind, fleet):
    """The same kill -9 as above, mid-rollout with a quarter of the fleet still powered off; the
    simulator publishes its bundle again once the broker is back (what serve does), so the late
    devices get v2 and the report gives the time from the kill to convergence."""
    if kind == "mosquitto":
        _require_mosquitto()
    handle = open_broker(kind)
    try:
        report = run(fleet, handle.url, devices=20, handle=handle,
                     faults=Faults(broker_restart_at=0.3, broker_restart_signal="kill", republish=True,
                                   offline=0.25, offline_for=1.5))
    finally:
        handle.stop()
    assert_converged(report)
    restart = report.faults["broker_restart"]
    assert restart["republished"] == 1 and restart["reconverged_s"] > 0
    assert all(d.commits[2] > report.t0 + 0.3 for d in report.by_fault("offline"))


@pytest.mark.timeout(60)
def test_a_fault_still_pending_at_the_timeout_is_named(fleet):
    """Every device settled, but the restart was due after --timeout: not converged, and why."""
    handle = open_broker("embedded")
    try:
        report = run(fleet, handle.url, devices=10, handle=handle,
                     faults=Faults(broker_restart_at=60.0), timeout=3)
    finally:
        handle.stop()
    assert not report.converged
    assert report.versions == {"v2": 10}
    assert report.why["faults_pending"] == ["broker_restart"]
    assert report.why["unsettled"] == 0
    assert "faults not yet applied: broker_restart" in report.why["reason"]
    assert report.to_json()["not_converged"] == report.why
    assert "why not converged: still running at --timeout (3 s); faults not yet applied: broker_restart" \
        in render(report)
