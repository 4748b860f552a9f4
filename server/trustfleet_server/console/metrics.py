"""/metrics: the fleet in the Prometheus text format (prometheus_client).

Each scrape builds a fresh registry whose one collector reads the store then and there,
so every value is as of the scrape and nothing is kept between scrapes:

- devices by version and console state, and the silent ones, from one grouped query;
- the fleet's newest ROLLOUTS rollouts (older ones are history: the cardinality stays
  bounded): which version, which state, which wave, and each wave's devices by outcome,
  counted now for the waves of a running or paused rollout and as recorded when a
  wave ended (passed, halted or aborted; rollout.history);
- reports by kind, each distinct report once (fleet.db report_overview);
- with a serve worker in the process (settings.live): what it ingested and refused,
  whether it is connected to the broker and leads the fleet, and how old the newest
  timestamp it published is.

Every serve worker with --http exports the same store-wide gauges; the worker metrics
carry a `worker` label. docs/operations.md ("Monitoring") has a scrape config and alert
rules (docs/prometheus-rules.yml).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trustfleet_server import rollout as ro
from trustfleet_server.console import STATES, ConsoleSettings, queries
from trustfleet_server.fleet.db import FleetDB

ROLLOUTS = 5  # rollouts exported per fleet, newest first
OUTCOMES = ("members", "succeeded", "failed", "pending", "offline", "silent", "excluded")



def render(settings: ConsoleSettings, db: FleetDB) -> bytes:
    """The fleet's metrics now, in the Prometheus text format (CONTENT_TYPE_LATEST).

    Raises: FleetDBError (the store failed; nothing partial is returned).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, db))
    return generate_latest(registry)


class FleetCollector(Collector):
    """Reads the store (and serve's counters) at each collect()."""

    def __init__(self, settings: ConsoleSettings, db: FleetDB) -> None:
        self.settings = settings
        self.db = db

    def collect(self) -> Iterator[Metric]:
        now = int(self.settings.clock())
        yield from self._devices(now)
        yield from self._rollouts(now)
        yield from self._reports()
        if self.settings.live is not None:
            yield from self._worker(self.settings.live(), now)

    # -- devices ------------------------------------------------------------------

    def _devices(self, now: int) -> Iterator[Metric]:
        fleet = self.settings.fleet
        rows = queries.state_counts(self.db, fleet, now - self.settings.silent_after)
        counts: dict[str, dict[str, int]] = {}
        silent = 0
        for r in rows:
            version = "none" if r["version"] is None else str(r["version"])
            by_state = counts.setdefault(version, dict.fromkeys(STATES, 0))
            by_state[r["cstate"]] = by_state.get(r["cstate"], 0) + int(r["count"])
            silent += int(r["silent"] or 0)
        devices = GaugeMetricFamily(
            "trustfleet_devices",
            "Devices of the fleet by the bundle version they last reported (\"none\": not known) "
            "and their state as the console shows it: the status's state, or fail-open for a "
            "device (not offline) running on an expired pin-set. Every state is listed for "
            "every version present, 0 included.",
            labels=("fleet", "version", "state"))
        for version in sorted(counts, key=lambda v: (v != "none", int(v) if v != "none" else 0)):
            for state, n in counts[version].items():
                devices.add_metric((fleet, version, state), n)
        yield devices
        yield _one("trustfleet_devices_silent",
                   f"Devices not offline (no last will) but not heard from for "
                   f"{self.settings.silent_after} s: gone without a word, or their statuses "
                   f"do not reach the broker.", fleet, silent)

    # -- rollouts -----------------------------------------------------------------

    def _rollouts(self, now: int) -> Iterator[Metric]:
        fleet = self.settings.fleet
        rollouts = self.db.rollouts(fleet, ROLLOUTS)
        info = GaugeMetricFamily(
            "trustfleet_rollout_info",
            f"1 for each of the fleet's {ROLLOUTS} newest rollouts, naming the bundle version "
            f"it carries.", labels=("fleet", "rollout", "version"))
        state = GaugeMetricFamily(
            "trustfleet_rollout_state",
            "1 for the rollout's state, 0 for the others: running, paused (by an operator), "
            "halted (by its own gates: too many failures, or no success by the wave deadline), "
            "aborted (by an operator), done (every wave passed).",
            labels=("fleet", "rollout", "state"))
        wave = GaugeMetricFamily(
            "trustfleet_rollout_wave",
            "The rollout's current wave, from 0 (-1: its first wave is not published yet). "
            "Waves are cumulative: wave i reaches every device of waves 0..i.",
            labels=("fleet", "rollout"))
        waves = GaugeMetricFamily(
            "trustfleet_rollout_waves", "How many waves the rollout has.",
            labels=("fleet", "rollout"))
        wave_devices = GaugeMetricFamily(
            "trustfleet_rollout_wave_devices",
            "Devices of a wave (index from 0, and name) by outcome: members (counted devices "
            "of the wave), succeeded (run the version), failed (reverted it, marked it bad, or "
            "no trust store at the deadline), pending, offline and silent (not counted by the "
            "gates), excluded (suspect or quarantined). Counted now for a running or paused "
            "rollout; as recorded when the wave ended for one that passed, halted or was "
            "aborted. Waves a finished rollout never reached are left out.",
            labels=("fleet", "rollout", "wave", "name", "outcome"))
        devices = None
        if any(r.state in ro.ACTIVE for r in rollouts):
            devices = self.db.devices(fleet)
        for r in rollouts:
            rid = str(r.id)
            info.add_metric((fleet, rid, str(r.version)), 1)
            for s in ro.STATES:
                state.add_metric((fleet, rid, s), 1 if r.state == s else 0)
            wave.add_metric((fleet, rid), r.current)
            waves.add_metric((fleet, rid), len(r.waves))
            recorded = self.db.wave_results(r.id) if r.current >= 0 else {}
            for p in ro.history(r, devices or (), now, recorded):
                if p.source == "not recorded":
                    continue
                for outcome in OUTCOMES:
                    wave_devices.add_metric((fleet, rid, str(p.index), p.name, outcome),
                                            getattr(p, outcome))
        yield from (info, state, wave, waves, wave_devices)
        newest = rollouts[0] if rollouts else None
        yield _one("trustfleet_rollout_halted",
                   "1 when the fleet's newest rollout halted by its own gates (its topics were "
                   "cleared; a new rollout is needed), else 0.",
                   fleet, int(newest is not None and newest.state == ro.HALTED))

    # -- reports ------------------------------------------------------------------

    def _reports(self) -> Iterator[Metric]:
        fleet = self.settings.fleet
        overview = self.db.report_overview(fleet, limit=0)
        reports = GaugeMetricFamily(
            "trustfleet_reports",
            "Failure reports stored for the fleet by kind (pin failures, refused documents), "
            "each distinct report once: the same report from the same device stored again "
            "is not counted. Retention prunes old reports, so this can go down.",
            labels=("fleet", "kind"))
        for k in overview["kinds"]:
            reports.add_metric((fleet, k["kind"]), k["reports"])
        yield reports

    # -- this serve worker --------------------------------------------------------

    def _worker(self, live: dict, now: int) -> Iterator[Metric]:
        fleet, worker = self.settings.fleet, str(live["worker"])
        labels = ("fleet", "worker")
        for name, doc, value in (
                ("trustfleet_statuses_ingested",
                 "Device statuses this worker stored (ignored duplicates and older ones are "
                 "not counted) since it started.", live["statuses"]),
                ("trustfleet_statuses_rejected",
                 "Messages (statuses and reports) this worker refused since it started: "
                 "malformed or over the size limit.", live["rejected"]),
                ("trustfleet_reports_ingested",
                 "Failure reports this worker stored since it started.", live["reports"])):
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric((fleet, worker), value)
            yield counter
        connected = GaugeMetricFamily(
            "trustfleet_broker_connected", "1 while this worker is connected to the broker.",
            labels=labels)
        connected.add_metric((fleet, worker), int(bool(live["connected"])))
        yield connected
        leader = GaugeMetricFamily(
            "trustfleet_leader",
            "1 while this worker leads the fleet (holds its lease in the store): it steps "
            "rollouts and publishes timestamps. One worker per fleet leads at a time.",
            labels=labels)
        leader.add_metric((fleet, worker), int(bool(live["leading"])))
        yield leader
        if live.get("last_timestamp") is not None:
            yield _one("trustfleet_timestamp_age_seconds",
                       "Seconds since the newest timestamp this worker published (only a worker "
                       "that published one has it). Devices go stale when timestamps stop.",
                       fleet, max(0, now - int(live["last_timestamp"])))
        if live.get("timestamp_every") is not None:
            yield _one("trustfleet_timestamp_interval_seconds",
                       "Seconds between the timestamps the leading worker publishes "
                       "(serve --timestamp-every; present with a timestamp key).",
                       fleet, live["timestamp_every"])


def _one(name: str, doc: str, fleet: str, value: float) -> GaugeMetricFamily:
    """A gauge with one sample, labelled by fleet."""
    g = GaugeMetricFamily(name, doc, labels=("fleet",))
    g.add_metric((fleet,), value)
    return g
