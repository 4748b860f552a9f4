"""/metrics (console.metrics, issue 15): the Prometheus text parsed back with prometheus_client's
own parser.

On a real SQLite store (and PostgreSQL for the device counts): devices by version and console
state (every state, fail-open and offline included) and the silent ones; a rollout stepped by serve's own code (FleetServer.
_drive_rollout, its broker link replaced by a recorder) whose wave counts move as statuses
arrive, are kept as recorded once a wave ends, and which halts; the worker metrics from a real
FleetServer.live(). End to end: a real `trustfleet serve --http` process on a private Mosquitto
with real device cores, scraped over HTTP. And the alert rules shipped in docs/ parse and use
only metrics that render() emits.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from support import brokers
from support.fleetkit import Repo
from support.livedevice import LiveDevice, ids_in_buckets
from support.serving import RecordingLink, ServeProcess
from support.waiting import wait_for
from trustfleet_server import cli, keys, mqtturl, rollout
from trustfleet_server.console import STATES, ConsoleSettings, metrics
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve.server import FleetServer

F = "acme"
ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "prometheus-rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Every metric family the contract names (issue 15), as the parser names them (no _total).
FAMILIES = {
    "trustfleet_devices", "trustfleet_devices_silent", "trustfleet_rollout_info",
    "trustfleet_rollout_state", "trustfleet_rollout_wave", "trustfleet_rollout_waves",
    "trustfleet_rollout_wave_devices", "trustfleet_rollout_halted", "trustfleet_reports",
    "trustfleet_statuses_ingested", "trustfleet_statuses_rejected", "trustfleet_reports_ingested",
    "trustfleet_timestamp_age_seconds", "trustfleet_timestamp_interval_seconds",
    "trustfleet_broker_connected", "trustfleet_leader",
}


class Scrape:
    """A scrape parsed: families by name, and sample values by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[str, dict[frozenset, float]] = {}
        for f in self.families.values():
            for s in f.samples:
                self.samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value

    def value(self, sample: str, /, **labels: str) -> float | None:
        return self.samples.get(sample, {}).get(frozenset(labels.items()))

    def labelled(self, sample: str) -> list[dict]:
        return [dict(k) for k in self.samples.get(sample, {})]


def scrape(settings: ConsoleSettings, db: fleetdb.FleetDB) -> Scrape:
    return Scrape(metrics.render(settings, db).decode())



def status(state: str, version: int | None, seq: int, **extra) -> dict:
    return {"state": state, "version": version, "floor": version, "seq": seq,
            "time": int(time.time()) + seq, **extra}


def ingest(db: fleetdb.FleetDB, rows, now: int | None = None) -> None:
    at = int(time.time()) if now is None else now
    result = db.ingest_statuses([(F, device, st, at) for device, st in rows])
    assert not result.rejected, result.rejected


# --------------------------------------------------------------------------- devices


def test_devices_are_counted_by_version_and_console_state_and_silent_ones_apart(target):
    """On SQLite and on PostgreSQL: the grouped query runs on both."""
    now = 1_800_000_000
    path = target
    with fleetdb.open_db(path) as db:
        ingest(db, [("ok1", status("ok", 3, 1)), ("ok2", status("ok", 3, 1)),
                    ("trial1", status("trial", 3, 1)), ("behind1", status("behind", 2, 1)),
                    ("stale1", status("stale", 2, 1, reasons=["timestamp expired"])),
                    ("nostore1", status("no-store", None, 1)),
                    # fail-open: its own state is ok, but a pin-set it runs on expired
                    ("fo1", status("ok", 3, 1, fail_open=["api.acme.example"])),
                    ("off1", status("ok", 2, 1))], now)
        ingest(db, [("off1", {"state": "offline"})], now)  # its last will: keeps v2
        # Heard from two days ago and not since (no last will): silent; also counted by state.
        ingest(db, [("quiet1", status("ok", 2, 1)), ("quiet2", status("stale", 2, 1))], now - 2 * 86_400)
        ingest(db, [("gone1", status("ok", 1, 1))], now - 2 * 86_400)
        ingest(db, [("gone1", {"state": "offline"})], now - 2 * 86_400)  # offline: never silent
        ingest(db, [("elsewhere", status("ok", 3, 1))], now)
        db.ingest_statuses([("other", "elsewhere", status("stale", 3, 1), now)])  # another fleet

        settings = ConsoleSettings(str(path), F, clock=lambda: now, silent_after=86_400)
        m = scrape(settings, db)

    counts = {(s["version"], s["state"]): m.value("trustfleet_devices", **s)
              for s in m.labelled("trustfleet_devices")}
    assert {k: v for k, v in counts.items() if v} == {
        ("3", "ok"): 3, ("3", "trial"): 1, ("2", "behind"): 1, ("2", "stale"): 2, ("none", "no-store"): 1,
        ("3", "fail-open"): 1, ("2", "offline"): 1, ("2", "ok"): 1, ("1", "offline"): 1}
    # Every console state is listed for every version, 0 included (alert expressions need the zeros).
    assert set(counts) == {(v, s) for v in ("none", "1", "2", "3") for s in STATES}
    by_state = {s: sum(v for (_, st), v in counts.items() if st == s) for s in STATES}
    assert by_state == {"ok": 4, "trial": 1, "behind": 1, "stale": 2, "fail-open": 1, "no-store": 1,
                        "offline": 2}
    assert all(s["fleet"] == F for s in m.labelled("trustfleet_devices"))
    assert m.value("trustfleet_devices_silent", fleet=F) == 2
    assert m.families["trustfleet_devices"].type == "gauge"
    assert "fail-open" in m.families["trustfleet_devices"].documentation
    # No rollout yet: none exported, and nothing halted. No serve in the process: no worker metrics.
    assert m.labelled("trustfleet_rollout_state") == []
    assert m.value("trustfleet_rollout_halted", fleet=F) == 0
    assert not {"trustfleet_leader", "trustfleet_broker_connected", "trustfleet_statuses_ingested",
                "trustfleet_timestamp_age_seconds"} & set(m.families)

    # The silent cut-off follows settings.silent_after.
    with fleetdb.open_db(path) as db:
        m = scrape(ConsoleSettings(str(path), F, clock=lambda: now, silent_after=3 * 86_400), db)
    assert m.value("trustfleet_devices_silent", fleet=F) == 0


def test_reports_are_counted_by_kind_once_each(tmp_path):
    with fleetdb.open_db(tmp_path / "fleet.db") as db:
        pin = {"validation-result": "pin-mismatch", "hostname": "api.acme.example",
               "noted-hostname": "acme.example", "date-time": "2026-01-01T00:00:00Z"}
        refused = {"validation-result": "document-refused", "noted-hostname": "bundle", "reason": "expired"}
        now = int(time.time())
        for device in ("d1", "d2"):
            db.add_report(F, device, pin, now)
        db.add_report(F, "d1", pin, now)  # the same report again (a redelivery): counted once
        db.add_report(F, "d1", refused, now)
        m = scrape(ConsoleSettings(str(tmp_path / "fleet.db"), F), db)
    assert m.value("trustfleet_reports", fleet=F, kind="pin-mismatch") == 2
    assert m.value("trustfleet_reports", fleet=F, kind="document-refused") == 1


# --------------------------------------------------------------------------- rollouts


@pytest.fixture
def repo(tmp_path):
    r = Repo(fleet=F, now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(r.root_raw)
    return r


def start_rollout(capsys, tmp_path, repo: Repo, db: Path, version: int, *plan: str) -> int:
    bundle = tmp_path / f"bundle-v{version}.cose"
    bundle.write_bytes(repo.bundle(version))
    code = cli.main(["rollout", "start", "--db", str(db), "--fleet", F, "--root", str(tmp_path / "root.cose"),
                     "--bundle", str(bundle), "--json", *plan])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)["id"]


def wave(m: Scrape, rid: int, index: int, name: str) -> dict:
    return {o: m.value("trustfleet_rollout_wave_devices", fleet=F, rollout=str(rid), wave=str(index),
                       name=name, outcome=o) for o in metrics.OUTCOMES}


def one_hot(m: Scrape, rid: int) -> dict:
    return {s: m.value("trustfleet_rollout_state", fleet=F, rollout=str(rid), state=s) for s in rollout.STATES}


REVERTED = {"bad": [2], "last_revert": "health check failed: no key matches the pins", "event": "reverted",
            "detail": "bundle v2: health check failed: no key matches the pins"}


def test_wave_progress_moves_with_the_statuses_and_a_halted_rollout_shows_as_halted(capsys, tmp_path, repo):
    path = tmp_path / "fleet.db"
    with fleetdb.open_db(path) as db:
        ingest(db, [*((d, status("ok", 1, 1, group="canary")) for d in ("a", "b")),
                    *((d, status("ok", 1, 1)) for d in ("c", "d", "e"))])
    rid = start_rollout(capsys, tmp_path, repo, path, 2, "--groups", "canary,all", "--max-failure", "0.1")
    settings = ConsoleSettings(str(path), F)
    with fleetdb.open_db(path) as db:
        srv = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [repo.root_raw], db)
        srv.link = RecordingLink("w-test")  # type: ignore[assignment]
        m = scrape(settings, db)
        assert m.value("trustfleet_rollout_info", fleet=F, rollout=str(rid), version="2") == 1
        assert m.value("trustfleet_rollout_wave", fleet=F, rollout=str(rid)) == -1  # nothing published
        assert m.value("trustfleet_rollout_waves", fleet=F, rollout=str(rid)) == 2

        srv._drive_rollout()  # publishes the canary wave
        m = scrape(settings, db)
        assert m.value("trustfleet_rollout_wave", fleet=F, rollout=str(rid)) == 0
        assert one_hot(m, rid) == {"running": 1, "paused": 0, "halted": 0, "aborted": 0, "done": 0}
        assert wave(m, rid, 0, "canary") == {"members": 2, "succeeded": 0, "failed": 0, "pending": 2,
                                             "offline": 0, "silent": 0, "excluded": 0}
        assert wave(m, rid, 1, "all")["members"] == 5  # waiting: counted as it would gate now

        ingest(db, [("a", status("ok", 2, 2, group="canary"))])  # one canary device installed v2
        m = scrape(settings, db)
        assert (wave(m, rid, 0, "canary")["succeeded"], wave(m, rid, 0, "canary")["pending"]) == (1, 1)
        ingest(db, [("b", status("ok", 2, 2, group="canary"))])
        assert wave(scrape(settings, db), rid, 0, "canary")["succeeded"] == 2

        srv._drive_rollout()  # the canary wave passes; `all` goes out
        ingest(db, [("d", status("ok", 2, 2)), ("e", {"state": "offline"})])
        m = scrape(settings, db)
        assert m.value("trustfleet_rollout_wave", fleet=F, rollout=str(rid)) == 1
        assert wave(m, rid, 1, "all") == {"members": 5, "succeeded": 3, "failed": 0, "pending": 1,
                                          "offline": 1, "silent": 0, "excluded": 0}

        ingest(db, [("c", status("ok", 1, 2, **REVERTED))])
        srv._drive_rollout()  # 1 of 4 counted failed > 0.1: halted
        assert db.rollout(rid).state == rollout.HALTED
        m = scrape(settings, db)
        assert one_hot(m, rid) == {"running": 0, "paused": 0, "halted": 1, "aborted": 0, "done": 0}
        assert m.value("trustfleet_rollout_halted", fleet=F) == 1
        halted = wave(m, rid, 1, "all")
        assert (halted["failed"], halted["succeeded"], halted["offline"]) == (1, 3, 1)

        # Ended waves keep the counts the decision was made on, whatever the devices do next.
        ingest(db, [(d, status("ok", 3, 9, group="canary" if d in "ab" else None)) for d in "abcde"])
        m = scrape(settings, db)
        assert wave(m, rid, 1, "all") == halted
        assert wave(m, rid, 0, "canary")["succeeded"] == 2


def test_only_the_five_newest_rollouts_are_exported_and_a_finished_rollout_leaves_unreached_waves_out(
        capsys, tmp_path, repo):
    path = tmp_path / "fleet.db"
    with fleetdb.open_db(path) as db:
        ingest(db, [(d, status("ok", 1, 1)) for d in ("a", "b", "c")])
    ids = []
    for version in range(2, 9):
        ids.append(start_rollout(capsys, tmp_path, repo, path, version, "--waves", "50%,100%"))
        code = cli.main(["rollout", "abort", "--db", str(path), "--fleet", F, "--id", str(ids[-1])])
        assert code == 0, capsys.readouterr().err
        capsys.readouterr()
    with fleetdb.open_db(path) as db:
        m = scrape(ConsoleSettings(str(path), F), db)
    exported = sorted(int(s["rollout"]) for s in m.labelled("trustfleet_rollout_info"))
    assert exported == ids[-5:]
    assert m.value("trustfleet_rollout_state", fleet=F, rollout=str(ids[-1]), state="aborted") == 1
    assert m.value("trustfleet_rollout_halted", fleet=F) == 0  # aborted by hand: not halted
    # Aborted before a wave went out: no wave has counts to show.
    assert m.labelled("trustfleet_rollout_wave_devices") == []


# --------------------------------------------------------------------------- this worker


def test_worker_metrics_come_from_the_serve_workers_live_state(tmp_path, repo):
    path = tmp_path / "fleet.db"
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    with fleetdb.open_db(path) as db:
        srv = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [repo.root_raw], db, client_id="w1",
                          timestamp_key=keys.load_private_key(tmp_path / "timestamp.pem"),
                          timestamp_every=30)
        settings = ConsoleSettings(str(path), F, live=srv.live, clock=lambda: 1_800_000_100)
        srv.stats.statuses, srv.stats.rejected, srv.stats.reports = 7, 2, 3
        m = scrape(settings, db)
        assert m.value("trustfleet_statuses_ingested_total", fleet=F, worker="w1") == 7
        assert m.value("trustfleet_statuses_rejected_total", fleet=F, worker="w1") == 2
        assert m.value("trustfleet_reports_ingested_total", fleet=F, worker="w1") == 3
        assert m.families["trustfleet_statuses_ingested"].type == "counter"
        assert m.value("trustfleet_broker_connected", fleet=F, worker="w1") == 0  # never connected
        assert m.value("trustfleet_leader", fleet=F, worker="w1") == 0
        assert m.value("trustfleet_timestamp_interval_seconds", fleet=F) == 30
        assert "trustfleet_timestamp_age_seconds" not in m.families  # it published none
        srv.last_timestamp = 1_800_000_000  # as _publish_timestamp leaves it
        m = scrape(settings, db)
        assert m.value("trustfleet_timestamp_age_seconds", fleet=F) == 100
        assert set(m.families) == FAMILIES  # the contract's names, no more


# --------------------------------------------------------------------------- alert rules


def parse_yaml(text: str):
    """The block YAML the rules file is written in: mappings, sequences, plain and quoted
    scalars, `|` literal blocks, comments. Anything else (flow collections, tabs, anchors) is
    refused, so the file stays in a form any YAML reader reads the same way."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise ValueError(f"line {n}: a tab")
        lines.append((n, len(raw) - len(raw.lstrip(" ")), raw.strip()))

    def scalar(value: str, n: int):
        if value.startswith('"'):
            return json.loads(value)
        if value.startswith("'"):
            if not value.endswith("'") or len(value) < 2:
                raise ValueError(f"line {n}: unterminated quote")
            return value[1:-1].replace("''", "'")
        if value[:1] in "[{&*!%@`>" or " #" in value or ": " in value:
            raise ValueError(f"line {n}: not a plain scalar: {value!r}")
        return value

    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(lines) and (not lines[pos][2] or lines[pos][2].startswith("#")):
            pos += 1

    def block(indent: int):
        nonlocal pos
        skip()
        if pos >= len(lines) or lines[pos][1] < indent:
            raise ValueError("an empty block")
        indent = lines[pos][1]
        if lines[pos][2].startswith("- ") or lines[pos][2] == "-":
            out = []
            while True:
                skip()
                if pos >= len(lines) or lines[pos][1] < indent:
                    return out
                n, ind, body = lines[pos]
                if ind != indent or not body.startswith("-"):
                    raise ValueError(f"line {n}: expected a sequence item at column {indent}")
                rest = body[1:].lstrip(" ")
                lines[pos] = (n, ind + len(body) - len(rest), rest)  # the item's own block
                out.append(block(indent + 1))
        out = {}
        while True:
            skip()
            if pos >= len(lines) or lines[pos][1] < indent:
                return out
            n, ind, body = lines[pos]
            if ind != indent:
                raise ValueError(f"line {n}: bad indentation")
            key, sep, value = body.partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*", key) or (value and value[0] != " "):
                raise ValueError(f"line {n}: expected `key: value`, got {body!r}")
            if key in out:
                raise ValueError(f"line {n}: {key} given twice")
            value = value.strip()
            pos += 1
            if value == "|":
                text_lines = []
                while pos < len(lines) and (not lines[pos][2] or lines[pos][1] > indent):
                    text_lines.append(lines[pos])
                    pos += 1
                while text_lines and not text_lines[-1][2]:
                    text_lines.pop()
                if not text_lines:
                    raise ValueError(f"line {n}: an empty literal block")
                base = min(i for _, i, b in text_lines if b)
                out[key] = "\n".join(" " * (i - base) + b if b else "" for _, i, b in text_lines) + "\n"
            elif value:
                out[key] = scalar(value, n)
            else:
                out[key] = block(indent + 1)

    value = block(0)
    skip()
    if pos != len(lines):
        raise ValueError(f"line {lines[pos][0]}: left over")
    return value


def test_the_yaml_reader_refuses_what_it_does_not_read():
    assert parse_yaml("a:\n  - b: 1\n    c: \"x: y\"\n  - d: |\n      one\n        two\n") == {
        "a": [{"b": "1", "c": "x: y"}, {"d": "one\n  two\n"}]}
    for bad in ("a: [1, 2]\n", "a:\n\t- b\n", "a: 1\na: 2\n", "a:\n  b: 1\n c: 2\n", "a: b: c\n"):
        with pytest.raises(ValueError):
            parse_yaml(bad)


def test_the_alert_rules_parse_and_use_only_metrics_render_emits(tmp_path, repo):
    text = RULES.read_text()
    rules = parse_yaml(text)
    [group] = rules["groups"]
    assert group["name"] == "trustfleet"
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"TrustfleetRolloutHalted", "TrustfleetTimestampLate", "TrustfleetStaleDevices"}
    for rule in alerts.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
    assert "trustfleet_rollout_halted" in alerts["TrustfleetRolloutHalted"]["expr"]
    late = alerts["TrustfleetTimestampLate"]
    assert "trustfleet_timestamp_age_seconds" in late["expr"] and "trustfleet_timestamp_interval_seconds" \
        in late["expr"] and late["for"] == "5m"
    assert 'state="stale"' in alerts["TrustfleetStaleDevices"]["expr"]

    # What render() emits with a device and a worker that published a timestamp: every name the
    # rules use.
    path = tmp_path / "fleet.db"
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    with fleetdb.open_db(path) as db:
        ingest(db, [("d1", status("stale", 1, 1))])
        srv = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [repo.root_raw], db,
                          timestamp_key=keys.load_private_key(tmp_path / "timestamp.pem"))
        srv.last_timestamp = int(time.time())
        m = scrape(ConsoleSettings(str(path), F, live=srv.live), db)
    emitted = set(m.samples)
    used = set(re.findall(r"\btrustfleet_\w+", "\n".join(r["expr"] for r in alerts.values())))
    assert used and used <= emitted, used - emitted
    states = set(re.findall(r'state!?="([^"]+)"', text))
    assert states and states <= set(STATES), states

    # operations.md shows this very file, and names only metrics that exist.
    ops = OPERATIONS.read_text()
    assert text.split("\ngroups:", 1)[1] in ops
    section = ops.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\btrustfleet_[a-z_]+", section))
    assert {n.removesuffix("_total") for n in named} == FAMILIES, named ^ FAMILIES


# --------------------------------------------------------------------------- end to end


class Scraper:
    """Scrapes /metrics over HTTP; keeps the last scrape, for the message of a failed wait."""

    def __init__(self, url: str) -> None:
        self.url = url + "metrics"
        self.last = ""

    def __call__(self) -> Scrape:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            self.last = response.read().decode()
        return Scrape(self.last)

    def wait(self, predicate, what: str, timeout: float) -> Scrape:
        try:
            return wait_for(predicate, what, timeout, step=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last scrape:\n{self.last}") from None


def test_serve_http_exports_ingest_connection_leadership_timestamps_and_a_rollout_halting(
        private_mosquitto, tmp_path, capsys):
    """A real `trustfleet serve --http 127.0.0.1:0` on a private Mosquitto with four real device
    cores; /metrics scraped over HTTP while v2 rolls out in two waves and halts on the device
    whose health check fails."""
    broker = private_mosquitto()
    b = brokers.Broker(broker.host, broker.port, "mosquitto")
    repo = Repo(fleet=brokers.unique_fleet("metrics"), now=int(time.time()))
    fleet = repo.fleet
    root, db_path = tmp_path / "root.cose", tmp_path / "fleet.db"
    root.write_bytes(repo.root_raw)
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    for v in (1, 2):
        (tmp_path / f"bundle-v{v}.cose").write_bytes(repo.bundle(v))
    assert cli.main(["publish", "--broker", b.url, "--root", str(root), str(tmp_path / "bundle-v1.cose")]) == 0
    low, high = ids_in_buckets(50, 2, 2)  # wave 50%: low; wave 100%: all four
    devices = [LiveDevice(b, repo, n, fail_versions=(2,) if n == high[1] else ()) for n in low + high]
    name = f"m-{fleet}"
    serve = ServeProcess(name, ["--broker", b.url, "--fleet", fleet, "--root", str(root), "--db", str(db_path),
                                "--timestamp-key", str(tmp_path / "timestamp.pem"), "--timestamp-every", "2",
                                "--step-every", "1", "--http", "127.0.0.1:0"], tmp_path)
    me = {"fleet": fleet, "worker": name}
    try:
        url = wait_for(serve.console_url, "serve to print the console's address", 30)
        assert url.startswith("http://127.0.0.1:")
        get_metrics = Scraper(url)
        wait_for(lambda: all(d.version == 1 for d in devices), "the devices to install v1", 30)

        def settled() -> Scrape | None:
            m = get_metrics()
            on_v1 = sum(m.value("trustfleet_devices", fleet=fleet, version="1", state=s) or 0 for s in STATES)
            return m if (on_v1 == 4
                         and m.value("trustfleet_leader", **me) == 1
                         and m.value("trustfleet_timestamp_age_seconds", fleet=fleet) is not None) else None
        m = get_metrics.wait(settled, "four devices on v1, leadership and a timestamp in /metrics", 30)
        assert set(m.families) == FAMILIES
        assert m.value("trustfleet_broker_connected", **me) == 1
        assert m.value("trustfleet_timestamp_interval_seconds", fleet=fleet) == 2
        assert 0 <= m.value("trustfleet_timestamp_age_seconds", fleet=fleet) < 60
        before = m.value("trustfleet_statuses_ingested_total", **me)
        assert before >= 4
        assert m.value("trustfleet_statuses_rejected_total", **me) == 0
        assert m.labelled("trustfleet_rollout_info") == []

        capsys.readouterr()
        assert cli.main(["rollout", "start", "--db", str(db_path), "--fleet", fleet, "--root", str(root),
                         "--bundle", str(tmp_path / "bundle-v2.cose"), "--waves", "50%,100%",
                         "--max-failure", "0.2", "--wave-deadline", "120", "--json"]) == 0, \
            capsys.readouterr().err
        rid = str(json.loads(capsys.readouterr().out)["id"])
        seen_states, seen_waves = set(), set()

        def halted() -> Scrape | None:
            m = get_metrics()
            seen_states.update(s for s in rollout.STATES
                               if m.value("trustfleet_rollout_state", fleet=fleet, rollout=rid, state=s) == 1)
            seen_waves.add(m.value("trustfleet_rollout_wave", fleet=fleet, rollout=rid))
            return m if m.value("trustfleet_rollout_halted", fleet=fleet) == 1 else None
        m = get_metrics.wait(halted, "/metrics to show the rollout halted", 60)
        assert seen_states >= {"running", "halted"}
        assert {0, 1} <= seen_waves  # both waves went out, and /metrics followed
        assert m.value("trustfleet_rollout_state", fleet=fleet, rollout=rid, state="halted") == 1
        assert m.value("trustfleet_rollout_info", fleet=fleet, rollout=rid, version="2") == 1
        assert m.value("trustfleet_rollout_wave", fleet=fleet, rollout=rid) == 1
        first = {o: m.value("trustfleet_rollout_wave_devices", fleet=fleet, rollout=rid, wave="0", name="50%",
                            outcome=o) for o in metrics.OUTCOMES}
        assert (first["members"], first["succeeded"], first["failed"]) == (2, 2, 0)
        last = {o: m.value("trustfleet_rollout_wave_devices", fleet=fleet, rollout=rid, wave="1", name="100%",
                           outcome=o) for o in metrics.OUTCOMES}
        assert (last["members"], last["failed"]) == (4, 1)
        assert m.value("trustfleet_statuses_ingested_total", **me) > before  # v2 installs, the revert
    finally:
        for d in devices:
            d.close()
        summary = serve.stop()
    assert serve.proc.returncode == 0, serve.log()[-3000:]
    assert summary is not None and summary["statuses"] > 0  # --json's stdout is the summary alone
