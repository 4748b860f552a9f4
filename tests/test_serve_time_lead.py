"""serve warns before devices would refuse its timestamps (docs/format.md, "Trusted time").

Devices refuse a timestamp more than the root's max_time_lead past the newest
bundle's issued_at, so a fleet whose operator stops signing bundles goes stale.
serve sees the fleet bundle, so it says so a week ahead, then hourly, and says
what to do.
"""

from __future__ import annotations

import logging

from support.fleetkit import DAY, NOW, Repo
from trustfleet_server import mqtturl
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server

LEAD = 10 * DAY


def _serve(tmp_path, repo: Repo, clock) -> server.FleetServer:
    db = fleetdb.open_db(tmp_path / "fleet.db")
    return server.FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), repo.fleet, [repo.root_raw], db,
                              clock=clock)


def test_serve_warns_a_week_before_devices_refuse_its_timestamps_then_says_they_do(tmp_path, caplog):
    repo = Repo(time_lead=LEAD)
    t = [NOW]
    srv = _serve(tmp_path, repo, lambda: t[0])
    srv._on_fleet_bundle(repo.bundle(version=3))
    caplog.set_level(logging.WARNING, logger=server.log.name)

    srv._warn_time_lead(NOW + LEAD - 7 * DAY - 1)
    assert caplog.records == [], "more than a week ahead: nothing to say"
    srv._warn_time_lead(NOW + LEAD - 7 * DAY)
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "devices will refuse timestamps" in warning.getMessage()
    assert "fleet bundle v3" in warning.getMessage() and "sign and publish a new bundle" in warning.getMessage()
    srv._warn_time_lead(NOW + LEAD - 7 * DAY + 3599)
    assert len(caplog.records) == 1, "at most once an hour"
    srv._warn_time_lead(NOW + LEAD + 1)
    assert caplog.records[-1].levelno == logging.ERROR
    assert "devices refuse these timestamps" in caplog.records[-1].getMessage()


def test_serve_says_nothing_while_the_fleet_bundle_is_recent(tmp_path, caplog):
    repo = Repo()  # the default lead, 30 days
    srv = _serve(tmp_path, repo, lambda: NOW)
    srv._on_fleet_bundle(repo.bundle(version=1))
    caplog.set_level(logging.WARNING, logger=server.log.name)
    srv._warn_time_lead(NOW + 22 * DAY)
    assert caplog.records == []
    srv._warn_time_lead(NOW + 23 * DAY)
    assert "devices will refuse timestamps" in caplog.records[-1].getMessage()
