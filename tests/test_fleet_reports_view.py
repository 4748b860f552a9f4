"""`fleet status` shows the fleet's reports by domain and kind (issue 12, reports delivered).

Real reports: pin failures decided by the device's trust code on real certificate chains
(trust.TrustStore.evaluate builds the TrustKit-format report), queued in a real device's
Session report queue and turned into tf/<fleet>/report/<device> messages by Session, plus a
"document-refused" report the Session makes for a forged bundle. They travel as MQTT
messages through the real broker to a running `serve`, which stores them; `fleet status`
(text and --json) counts them by kind and by domain (hostname / noted-hostname), with the
devices per kind and the newest time, and leaves out a message delivered twice.
"""

from __future__ import annotations

import json
import time

import pytest

from support import brokers
from support.fleetkit import Repo
from support.pki import pin, pki
from support.serving import running
from support.truststores import evaluate, full, pinset, store
from support.waiting import wait_for
from trustfleet_device import agent as core
from trustfleet_device import topics
from trustfleet_device.session import Session
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage
from trustfleet_server import cli, mqtturl
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server


class Device:
    """A device core and its MQTT Session; what the Session emits goes out on `client`."""

    def __init__(self, repo: Repo, device_id: str, client: brokers.Client) -> None:
        config = core.Config(fleet=repo.fleet, device_id=device_id, health_timeout=60)
        storage = MemStorage()
        runner.initialise(storage, repo.root_raw, config)
        dev = runner.Device(storage, config, lambda b, t: (True, "ok"), time.time)
        self.session = Session(dev, repo.fleet, device_id)
        self.client = client
        self.sent: list[tuple[str, bytes]] = []

    def send(self, messages: list) -> None:
        for topic, payload, retain, qos in messages:
            self.client.publish(topic, payload, qos=qos, retain=retain)
            self.sent.append((topic, payload))

    def tls_failure(self, report: dict) -> None:
        """A TLS decision's report goes into the device's one queue; the next tick sends it."""
        assert self.session.reports.add(report, int(time.time()))
        self.send(self.session.tick())

    def reports_sent(self) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.sent if t == topics.report(self.session.fleet, self.session.device_id)]


def tls_reports() -> dict[str, dict]:
    """Reports the device's trust code makes for three failed connections."""
    p = pki()
    backup_only = [pin(p.backup_key), pin(p.backup_root)]
    mismatch = evaluate(store([full(p.root)], [pinset(pins=backup_only)]), p.chain())
    report_only = evaluate(store([full(p.root)], [pinset(pins=backup_only, mode="report")]), p.chain())
    www = evaluate(store([full(p.root)], [pinset(domain="www.example.com", pins=backup_only)]),
                   p.chain(), host="www.example.com")
    out = {"mismatch": mismatch.report, "report-only": report_only.report, "www": www.report}
    assert out["mismatch"]["validation-result"] == "pin-mismatch"
    assert out["report-only"]["validation-result"] == "report-only-mismatch"
    assert out["www"]["hostname"] == "www.example.com" and out["www"]["validation-result"] != "pin-mismatch"
    return out


@pytest.fixture
def setup(mosquitto, tmp_path):
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    client = brokers.connect(mosquitto)
    yield repo, client, str(tmp_path / "fleet.db")
    client.close()
    brokers.clear_retained(mosquitto, [topics.status(repo.fleet, d) for d in ("pi-1", "pi-2")])


def stored(db_path: str, fleet: str) -> int:
    with fleetdb.open_db(db_path) as db:
        return len(db.reports(fleet, limit=1000))


def test_fleet_status_counts_real_reports_by_kind_and_domain_and_drops_a_redelivery(setup, mosquitto,
                                                                                    capsys):
    repo, client, db_path = setup
    f = repo.fleet
    made = tls_reports()
    db = fleetdb.open_db(db_path)
    srv = server.FleetServer(mqtturl.parse(mosquitto.url), f, [repo.root_raw], db, None,
                             step_every=0.2)
    before = int(time.time())
    with running(srv, db):
        pi1, pi2 = Device(repo, "pi-1", client), Device(repo, "pi-2", client)
        pi1.tls_failure(made["mismatch"])
        pi1.tls_failure(made["www"])
        pi2.tls_failure(made["mismatch"])
        pi2.tls_failure(made["report-only"])
        # A forged bundle (someone else's keys) on the fleet topic: pi-2's Session refuses it
        # and reports it.
        forged = Repo(fleet=f, now=repo.now).bundle(5)
        pi2.send(pi2.session.on_message(topics.bundle(f), forged))
        assert len(pi1.reports_sent()) == 2 and len(pi2.reports_sent()) == 3
        # The broker delivers one of pi-1's messages twice (QoS 1 redelivery).
        topic, payload = pi1.reports_sent()[0]
        client.publish(topic, payload, qos=1)
        wait_for(lambda: stored(db_path, f) == 6, "serve to store the six report messages")

    code = cli.main(["fleet", "status", "--db", db_path, "--fleet", f, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    o = json.loads(out)["report_overview"]
    assert (o["reports"], o["duplicates"], o["devices"]) == (5, 1, 2)
    assert before <= o["newest"] <= int(time.time())
    kinds = {k["kind"]: (k["reports"], k["devices"]) for k in o["kinds"]}
    assert kinds == {"pin-mismatch": (2, 2), "report-only-mismatch": (1, 1),
                     made["www"]["validation-result"]: (1, 1), "document-refused": (1, 1)}
    assert o["kinds"][0]["kind"] == "pin-mismatch"  # the most reported first
    domains = {(d["hostname"], d["noted"], d["kind"]): (d["reports"], d["devices"]) for d in o["domains"]}
    assert domains[("api.example.com", "api.example.com", "pin-mismatch")] == (2, 2)
    assert domains[("api.example.com", "api.example.com", "report-only-mismatch")] == (1, 1)
    assert domains[("www.example.com", "www.example.com", made["www"]["validation-result"])] == (1, 1)
    assert domains[(None, "bundle", "document-refused")] == (1, 1)
    assert o["domains_count"] == 4

    code = cli.main(["fleet", "status", "--db", db_path, "--fleet", f])
    text = capsys.readouterr().out
    assert code == 0
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("reports: ")))
    assert lines[head].startswith("reports: 5 from 2 device(s), newest ")
    assert lines[head].endswith("1 duplicate(s) not counted")
    assert lines[head + 2].split()[:3] == ["pin-mismatch", "2", "2"]
    assert any(line.split()[:4] == ["api.example.com", "pin-mismatch", "2", "2"] for line in lines)
    assert any(line.split()[:4] == ["-", "/", "bundle", "document-refused"] for line in lines)
    assert "recent reports:" in text


def test_fleet_status_escapes_control_characters_in_reported_names(tmp_path, capsys):
    """A device chooses its report's names: the terminal gets them escaped."""
    db_path = str(tmp_path / "fleet.db")
    evil = {"hostname": "evil\x1b[2J.example", "noted-hostname": "evil.example",
            "validation-result": "pin-mismatch", "fleet": "acme", "device": "d1"}
    with fleetdb.open_db(db_path) as db:
        db.add_report("acme", "d1", evil, int(time.time()))
    assert cli.main(["fleet", "status", "--db", db_path, "--fleet", "acme"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2J.example" in out


def test_the_overview_counts_the_same_on_sqlite_and_postgresql(target):
    now = int(time.time())
    body = {"hostname": "api.example.com", "noted-hostname": "api.example.com",
            "validation-result": "pin-mismatch", "date-time": "2026-01-01T00:00:00Z"}
    later = {**body, "date-time": "2026-01-02T00:00:00Z"}
    with fleetdb.open_db(target) as db:
        db.add_reports([("acme", "d1", body, now - 60), ("acme", "d1", body, now - 50),
                        ("acme", "d1", later, now - 10), ("acme", "d2", body, now),
                        ("other", "d9", body, now)])
        o = db.report_overview("acme")
    assert (o["reports"], o["duplicates"], o["devices"], o["newest"]) == (3, 1, 2, now)
    assert o["kinds"] == [{"kind": "pin-mismatch", "reports": 3, "devices": 2, "newest": now}]
    assert o["domains"] == [{"hostname": "api.example.com", "noted": "api.example.com",
                             "kind": "pin-mismatch", "reports": 3, "devices": 2, "newest": now}]


def test_fleet_status_lists_devices_behind_the_latest_timestamp(target, capsys):
    """status "behind" (issue 12): fleet status lists those devices, as it lists stale ones."""
    now = int(time.time())
    with fleetdb.open_db(target) as db:
        db.record_published("acme", 2, "ab" * 32, "test", now)
        db.ingest_statuses([("acme", "late", {"state": "behind", "version": 1, "seq": 1, "time": now}, now),
                            ("acme", "fine", {"state": "ok", "version": 2, "seq": 1, "time": now}, now)])
    assert cli.main(["fleet", "status", "--db", target, "--fleet", "acme", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["behind_count"] == 1 and [d["device"] for d in s["behind"]] == ["late"]
    assert cli.main(["fleet", "status", "--db", target, "--fleet", "acme"]) == 0
    out = capsys.readouterr().out
    assert "behind (the latest timestamp names a newer bundle than it holds): 1" in out
    assert any(line.split()[:2] == ["late", "v1"] for line in out.splitlines())
