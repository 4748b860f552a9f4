"""The console app over real HTTP (issue 15): a real console.web.ConsoleServer (uvicorn on a
port of its own) in front of a real store (SQLite, then PostgreSQL: the `target` fixture),
filled through FleetDB.ingest_statuses and add_reports, with rollouts started by fleetops from
real signed bundles and driven by serve's own rollout step (FleetServer._drive_rollout, its
broker link replaced by a recorder as in test_rollout_history). Read with urllib: every page
and JSON route, the event stream, the token and origin rules of the actions and their audit
entries, public mode (every request needs the token or the sign-in cookie), and hostile text
coming out inert.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from support import pki
from support.browser import Browser
from support.fleetkit import Repo
from support.serving import RecordingLink
from trustfleet_server import fleetops, mqtturl, rollout
from trustfleet_server.console import STATES, ConsoleSettings
from trustfleet_server.console.web import ConsoleServer, parse_bind
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve.server import FleetServer

F = "acme"
TOKEN = "alice-token-0123456789abcdef"
OTHER = "bob-token-0123456789abcdefgh"
READER = "prometheus-token-0123456789ab"
HOSTILE = '<img src=x onerror=alert(1)>"\'&'
PAGES = {"/": "Overview", "/rollouts": "Rollouts", "/devices": "Devices", "/reports": "Reports",
         "/audit": "Audit trail"}
NAV = ["Overview", "Rollouts", "Devices", "Reports", "Audit"]
REVERTED = {"bad": [2], "last_revert": f"health check failed: {HOSTILE}", "event": "reverted",
            "detail": f"bundle v2: health check failed: {HOSTILE}"}



_seq = iter(range(1, 1_000_000))


def status(version: int | None, group: str | None = None, state: str = "ok", **extra) -> dict:
    seq = next(_seq)
    return {"state": state, "version": version, "floor": version, "seq": seq,
            "time": int(time.time()) + seq, "group": group, **extra}


def ingest(db: fleetdb.FleetDB, *rows: tuple[str, dict]) -> None:
    result = db.ingest_statuses([(F, device, st, int(time.time())) for device, st in rows])
    assert not result.rejected, result.rejected


# --------------------------------------------------------------------------- HTTP


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        assert self.headers["Content-Type"].startswith("application/json"), self.headers["Content-Type"]
        return json.loads(self.body)


def call(url: str, path: str, method: str = "GET", body: bytes | None = None, **headers: str) -> Answer:
    request = urllib.request.Request(url.rstrip("/") + path, data=body, method=method,
                                     headers={k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with OPENER.open(request, timeout=20) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


def act(url: str, rid: int, action: str, token: str | None = TOKEN, reason: str | None = None,
        **headers: str) -> Answer:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"reason": reason}).encode() if reason is not None else b""
    return call(url, f"/api/rollouts/{rid}/{action}", "POST", body, Content_Type="application/json",
                **headers)


def texts(value) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in texts(v)] if isinstance(value, list) else []


def check_shell(page: str, h1: str) -> None:
    """The structure every page shares (the contract the browser tests rely on)."""
    nav = re.findall(r'<nav aria-label="Console">(.*?)</nav>', page, re.S)
    assert len(nav) == 1, page[:400]
    assert re.findall(r">([^<>]+)</a>", nav[0]) == NAV
    assert re.findall(r"<h1>(.*?)</h1>", page) == [h1]
    assert page.count("<main") == 1 and "<script>" not in page and "style=" not in page


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def repo(tmp_path):
    r = Repo(fleet=F, now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(r.root_raw)
    return r


@pytest.fixture
def store(target):
    """The fleet store (SQLite, then PostgreSQL) and a connection of the test's own."""
    with fleetdb.open_db(target) as db:
        yield target, db


def start_rollout(tmp_path, repo: Repo, db: fleetdb.FleetDB, version: int, groups: str,
                  max_failure: float = 0.1) -> int:
    bundle = tmp_path / f"bundle-v{version}.cose"
    bundle.write_bytes(repo.bundle(version))
    now = int(time.time())
    plan = fleetops.plan_rollout(F, [tmp_path / "root.cose"], bundle, now, waves=None, groups=groups,
                                 success=0.9, max_failure=max_failure, deadline=600)
    return fleetops.start_rollout(db, plan, bundle, now, actor="ci", host="test", source="cli").id


def serve_step(repo: Repo, db: fleetdb.FleetDB) -> None:
    """One rollout step of the real serve code."""
    s = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [repo.root_raw], db)
    s.link = RecordingLink()  # type: ignore[assignment]
    s._drive_rollout()


def console(path: str, public: bool = False, tls: bool = False) -> ConsoleServer:
    settings = ConsoleSettings(path, F, {"alice": TOKEN, "bob": OTHER, "prometheus": READER},
                               frozenset({"prometheus"}), public=public, tls=tls, host="console-host")
    return ConsoleServer(settings, parse_bind("127.0.0.1:0")).start()


@pytest.fixture
def served(store):
    path, db = store
    server = console(path)
    yield server, db
    server._server.config.app.state.console.close()
    server.stop()


def fleet_with_history(tmp_path, repo: Repo, db: fleetdb.FleetDB) -> int:
    """Seven devices in every console state but trial, reports (one sent twice), a device
    quarantined from the CLI, and a rollout of v2 whose canary wave passed and whose second
    wave halted on c's revert. Returns the rollout id."""
    ingest(db, *((d, status(1, "canary")) for d in "ab"), ("c", status(1)), ("d", status(1)),
           ("e", status(1, state="stale", reasons=["timestamp expired"])),
           ("f", status(1, fail_open=["api.acme.example"])), ("g", status(None, state="no-store")))
    db.ingest_statuses([(F, "h", {"state": "offline"}, int(time.time()))])
    now = int(time.time())
    report = {"device": "d", "fleet": F, "validation-result": "pin-mismatch",
              "hostname": "api.acme.example", "noted-hostname": "acme.example", "reason": HOSTILE}
    db.add_reports([(F, "d", report, now), (F, "d", report, now),
                    (F, "e", {**report, "device": "e", "reason": "x"}, now)])
    fleetops.device_action(db, F, "g", "quarantine", "ci@test", "lost in the lab", now,
                           actor="carol", host="laptop", source="cli")
    rid = start_rollout(tmp_path, repo, db, 2, "canary,all")
    serve_step(repo, db)  # publishes canary
    ingest(db, *((d, status(2, "canary")) for d in "ab"))
    serve_step(repo, db)  # canary passes; `all` goes out
    ingest(db, ("c", status(1, **REVERTED)))
    serve_step(repo, db)  # c failed: 1 of 6 counted > 0.1
    assert db.rollout(rid).state == rollout.HALTED
    return rid


# --------------------------------------------------------------------------- pages and JSON


def test_every_page_has_the_shared_structure_and_the_security_headers(served):
    server, _ = served
    for path, h1 in PAGES.items():
        a = call(server.url, path)
        assert a.status == 200, (path, a.text[:300])
        assert a.headers["Content-Type"].startswith("text/html")
        assert a.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert a.headers["X-Content-Type-Options"] == "nosniff"
        check_shell(a.text, h1)
    overview = call(server.url, "/").text
    assert 'data-testid="total-devices"' in overview
    assert '<svg id="state-chart" role="img" aria-label="Devices by state"' in overview
    assert "<caption>Devices by version and state</caption>" in overview
    devices = call(server.url, "/devices").text
    for label in ("Search devices", "State", "Version", "Group"):
        assert re.search(rf'<label for="(\w+)">{label}</label>', devices), label
    options = re.findall(r'<option value="([^"]*)">', devices.split('id="state"')[1].split("</select>")[0])
    assert options == ["", *STATES]
    assert "<caption>Devices</caption>" in devices and 'data-testid="device-count"' in devices
    reports = call(server.url, "/reports").text
    assert "<caption>Reports by kind</caption>" in reports and "<caption>Reports by domain</caption>" in reports
    audit = call(server.url, "/audit").text
    assert re.findall(r'<th scope="col">(\w+)</th>', audit.split("<caption>Audit trail</caption>")[1]) == \
        ["Time", "Action", "Actor", "Host", "Source", "Detail"]
    js = call(server.url, "/static/console.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert call(server.url, "/static/console.css").status == 200
    assert call(server.url, "/static/../app.py").status == 404
    assert call(server.url, "/rollouts/999").status == 404 and call(server.url, "/devices/nobody").status == 404
    missing = call(server.url, "/no/such/page")
    assert missing.status == 404 and missing.headers["Content-Security-Policy"]
    assert call(server.url, "/api/rollouts/999").json() == {"error": "no rollout 999"}
    assert call(server.url, "/api/rollouts/abc").status == 404


def test_the_json_routes_show_the_fleet_the_rollout_and_the_history(served, tmp_path, repo):
    server, db = served
    rid = fleet_with_history(tmp_path, repo, db)

    o = call(server.url, "/api/overview").json()
    assert o["devices"] == 8
    assert o["by_state"] == {"ok": 4, "trial": 0, "behind": 0, "stale": 1, "fail-open": 1, "no-store": 1,
                             "offline": 1}
    assert {(t["version"], t["total"]) for t in o["table"]} == {(2, 2), (1, 4), (None, 2)}
    assert o["counts"]["quarantined"] == 1 and o["counts"]["offline"] == 1
    assert o["rollout"]["id"] == rid and o["rollout"]["state"] == "halted"
    assert o["reports"] == {"reports": 2, "duplicates": 1, "devices": 2, "newest": o["reports"]["newest"]}

    assert [r["id"] for r in call(server.url, "/api/rollouts").json()["rollouts"]] == [rid]
    r = call(server.url, f"/api/rollouts/{rid}").json()
    assert (r["state"], r["wave"], r["waves_done"]) == ("halted", "all", 1)
    assert r["halt_reason"] == "wave all: 1 of 6 devices failed (0.17 > 0.10)"
    assert r["halt_rule"] == rollout.halt_rule(db.rollout(rid))
    assert r["failing_devices"] == [{"device": "c", "reason": f"marked v2 bad: health check failed: {HOSTILE}"}]
    assert [(p["name"], p["status"], p["succeeded"], p["failed"]) for p in r["progress"]] == [
        ("canary", "passed", 2, 0), ("all", "halted", 2, 1)]
    assert r["actions"] == {"pause": False, "resume": False, "abort": False}
    assert any(e["text"].startswith("started: v2") for e in r["events"])
    page = call(server.url, f"/rollouts/{rid}").text
    check_shell(page, f"Rollout {rid}")
    for testid in ("rollout-state", "current-wave", "halt-rule", "halt-reason", "action-result"):
        assert f'data-testid="{testid}"' in page, testid
    assert '<label for="token">Operator token</label>' in page and 'role="status"' in page
    assert "<caption>Failing devices</caption>" in page
    assert [b for b in re.findall(r"<button[^>]*>(\w+)</button>", page)] == ["Pause", "Resume", "Abort"]

    d = call(server.url, "/api/devices").json()
    assert (d["total"], d["matching"]) == (8, 8) and [x["device"] for x in d["devices"]] == list("abcdefgh")
    assert d["versions"] == [2, 1, None] and d["groups"] == ["canary"]
    f = next(x for x in d["devices"] if x["device"] == "f")
    assert (f["console_state"], f["state"]) == ("fail-open", "ok")
    c = next(x for x in d["devices"] if x["device"] == "c")
    assert c["last_problem"] == f"reverted: bundle v2: health check failed: {HOSTILE}"

    def matching(**query) -> list[str]:
        a = call(server.url, "/api/devices?" + urllib.parse.urlencode(query)).json()
        assert a["matching"] == len(a["devices"]) or "limit" in query
        return [x["device"] for x in a["devices"]]

    assert matching(q="A") == ["a"]
    assert matching(state="fail-open") == ["f"] and matching(state="ok") == ["a", "b", "c", "d"]
    assert matching(version="2") == ["a", "b"] and matching(version="v1") == list("cdef")
    assert matching(version="none") == ["g", "h"]
    assert matching(group="canary") == ["a", "b"] and matching(group="none") == list("cdefgh")
    assert matching(state="ok", version="1") == ["c", "d"]
    assert matching(q="%") == [] and matching(q="_") == []
    assert matching(limit="3", offset="3") == ["d", "e", "f"]
    for bad in ({"state": "sideways"}, {"version": "seven"}, {"limit": "-1"}, {"offset": "x"}):
        a = call(server.url, "/api/devices?" + urllib.parse.urlencode(bad))
        assert a.status == 400 and "\n" not in a.json()["error"], bad

    g = call(server.url, "/api/devices/g").json()
    assert g["status"]["quarantined"] is True and g["status"]["console_state"] == "no-store"
    assert [(e["action"], e["who"], e["why"]) for e in g["events"]] == [("quarantine", "ci@test", "lost in the lab")]
    assert [(e["action"], e["actor"], e["host"], e["source"]) for e in g["audit"]] == [
        ("device-quarantine", "carol", "laptop", "cli")]
    dd = call(server.url, "/api/devices/d").json()
    assert [x["report"]["reason"] for x in dd["reports"]] == [HOSTILE, HOSTILE]  # as stored, both copies
    assert call(server.url, "/api/devices/nobody").status == 404
    check_shell(call(server.url, "/devices/g").text, "Device g")

    rep = call(server.url, "/api/reports").json()
    assert rep["overview"]["kinds"][0]["kind"] == "pin-mismatch" and rep["overview"]["kinds"][0]["reports"] == 2
    assert (rep["overview"]["domains"][0]["hostname"], rep["overview"]["domains"][0]["noted"]) == \
        ("api.acme.example", "acme.example")
    assert [(x["device"], x["copies"]) for x in rep["recent"]] == [("e", 1), ("d", 2)]  # newest first, once each

    au = call(server.url, "/api/audit").json()
    assert au["entries"] == db.audit_entries(F)
    assert [e["action"] for e in au["entries"]][-2:] == ["rollout-start", "device-quarantine"]
    assert {"wave-publish", "rollout-halt"} <= {e["action"] for e in au["entries"]}
    assert call(server.url, "/api/audit?action=rollout-start&limit=1").json()["entries"][0]["detail"]["rollout"] == rid
    page = call(server.url, "/api/audit?limit=2").json()
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in au["entries"][:2]]
    older = call(server.url, f"/api/audit?before={page['next_before']}").json()["entries"]
    assert older == au["entries"][2:]


def test_metrics_are_served_in_the_prometheus_text_format(served, tmp_path, repo):
    server, db = served
    fleet_with_history(tmp_path, repo, db)
    a = call(server.url, "/metrics")
    assert a.status == 200 and a.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(a.text)}
    devices = {(s.labels["version"], s.labels["state"]): s.value for s in families["trustfleet_devices"].samples}
    assert devices[("1", "fail-open")] == 1 and devices[("2", "ok")] == 2


# --------------------------------------------------------------------------- live updates


class Stream:
    """An /api/events stream read in a thread of its own: the updates, as they arrive."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.conn.request("GET", "/api/events", headers=headers or {})
        self.response = self.conn.getresponse()
        self.updates: list[dict] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event = None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "update":
                    self.updates.append(json.loads(line[6:]))
        except Exception:  # noqa: BLE001 (the connection closed under the reader: its end)
            pass
        self.closed.set()

    def wait(self, count: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.updates) < count:
            assert time.monotonic() < deadline, f"no update {count} within {timeout} s: {self.updates}"
            time.sleep(0.05)
        return self.updates[count - 1]

    def close(self) -> None:
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def test_the_event_stream_sends_an_update_when_a_status_changes(served):
    server, db = served
    ingest(db, ("a", status(1)))
    a = Stream(server.url)
    assert a.response.status == 200 and a.response.headers["Content-Type"].startswith("text/event-stream")
    first = a.wait(1)
    b = Stream(server.url)
    assert b.wait(1) == first  # a second tab is told the same, from the same poll
    hub = server._server.config.app.state.console.hub
    assert len(hub.queues) == 2
    time.sleep(2.5)  # nothing changed: nothing is sent
    assert len(a.updates) == 1
    ingest(db, ("a", status(2)))
    second = a.wait(2)
    assert second["seq"] == first["seq"] + 1 and second["time"] > first["time"]
    assert b.wait(2) == second
    ingest(db, ("b", status(1)))  # a new device
    assert a.wait(3)["seq"] == second["seq"] + 1
    a.close()
    b.close()
    deadline = time.monotonic() + 30
    while hub.queues:  # both streams ended on the server side too, and the poll with them
        assert time.monotonic() < deadline, "the server kept a closed stream"
        time.sleep(0.1)
    assert hub._task is None


@pytest.mark.parametrize("closed_first", [True, False], ids=["closed-first", "stop-only"])
def test_stopping_the_console_ends_an_open_event_stream(store, caplog, closed_first):
    """Console.close() ends the streams at once; a server stopped without it cancels them after
    its grace period, and the stream still ends its body cleanly, with no error of the app."""
    path, db = store
    server = console(path)
    uvicorn_log = logging.getLogger("uvicorn")  # configured by uvicorn: it does not propagate
    uvicorn_log.addHandler(caplog.handler)
    try:
        s = Stream(server.url)
        s.wait(1)
    finally:
        if closed_first:
            server._server.config.app.state.console.close()
        server.stop()
        uvicorn_log.removeHandler(caplog.handler)
    assert s.closed.wait(10), "the stream stayed open after the console stopped"
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]


# --------------------------------------------------------------------------- actions


def test_actions_need_the_token_refuse_other_sites_and_land_in_the_audit_trail(served, tmp_path, repo):
    server, db = served
    ingest(db, *((d, status(1, "canary")) for d in "ab"), ("c", status(1)))
    rid = start_rollout(tmp_path, repo, db, 2, "canary,all")
    serve_step(repo, db)

    for token, why in ((None, "an operator token is needed"), ("wrong-token-0123456789", "not valid")):
        a = act(server.url, rid, "pause", token)
        assert a.status == 401 and why in a.json()["error"] and a.headers["WWW-Authenticate"]
    a = act(server.url, rid, "pause", TOKEN, Origin="https://evil.example")
    assert a.status == 403 and "cross-site" in a.json()["error"]
    a = act(server.url, rid, "pause", TOKEN, Sec_Fetch_Site="cross-site")
    assert a.status == 403
    a = act(server.url, rid, "pause", READER)  # a read-only token reads, but cannot act
    assert a.status == 403 and "read-only" in a.json()["error"]
    assert call(server.url, "/metrics", Authorization=f"Bearer {READER}").status == 200
    assert call(server.url, f"/api/rollouts/{rid}/pause", "GET").status == 405
    assert act(server.url, rid, "explode").status == 404
    assert db.rollout(rid).state == rollout.RUNNING
    assert not db.audit_entries(F, action="rollout-pause")

    a = act(server.url, rid, "pause", TOKEN, Origin=server.url.rstrip("/"))
    assert a.status == 200, a.text
    body = a.json()
    assert (body["id"], body["state"], body["done"]) == (rid, "paused", {"action": "pause", "operator": "alice"})
    assert body["actions"] == {"pause": False, "resume": True, "abort": True}
    assert db.rollout(rid).state == rollout.PAUSED
    a = act(server.url, rid, "pause", TOKEN)
    assert a.status == 409 and "only a running rollout can be paused" in a.json()["error"]
    assert act(server.url, rid, "resume", OTHER).json()["state"] == "running"
    a = act(server.url, rid, "abort", TOKEN, reason="wrong  bundle\nbuilt")
    assert a.status == 200 and a.json()["state"] == "aborted"
    assert db.rollout(rid).halt_reason == "wrong bundle built"
    assert act(server.url, rid, "abort", TOKEN).status == 409
    assert act(server.url, rid, "resume", TOKEN, reason="x" * 5000).status == 413

    entries = db.audit_entries(F)
    done = [(e["action"], e["actor"], e["host"], e["source"], e["detail"]["console"])
            for e in entries if e["source"] == "console"]
    assert done == [("rollout-abort", "alice", "127.0.0.1", "console", "console-host"),
                    ("rollout-resume", "bob", "127.0.0.1", "console", "console-host"),
                    ("rollout-pause", "alice", "127.0.0.1", "console", "console-host")]
    assert entries[0]["detail"]["reason"] == "wrong bundle built"
    au = call(server.url, "/api/audit").json()["entries"]
    assert [e["action"] for e in au][:3] == ["rollout-abort", "rollout-resume", "rollout-pause"]


def test_a_rollout_of_another_fleet_cannot_be_touched(served, tmp_path):
    server, db = served
    other = Repo(fleet="other", now=int(time.time()))
    (tmp_path / "other.cose").write_bytes(other.root_raw)
    (tmp_path / "o2.cose").write_bytes(other.bundle(2))
    db.ingest_statuses([("other", "z", status(1), int(time.time()))])
    plan = fleetops.plan_rollout("other", [tmp_path / "other.cose"], tmp_path / "o2.cose", int(time.time()),
                                 waves=None, groups=None, success=0.9, max_failure=0.1, deadline=600)
    rid = fleetops.start_rollout(db, plan, tmp_path / "o2.cose", int(time.time())).id
    assert call(server.url, f"/api/rollouts/{rid}").status == 404
    assert act(server.url, rid, "abort").status == 404
    assert db.rollout(rid).state == rollout.RUNNING


# --------------------------------------------------------------------------- access


def test_on_loopback_a_foreign_host_name_reads_nothing(served):
    server, _ = served
    a = call(server.url, "/api/overview", Host="attacker.example:8080")
    assert a.status == 403 and "loopback" in a.json()["error"]
    assert call(server.url, "/", Host=f"localhost:{server.port}").status == 200


def test_public_mode_needs_the_token_or_the_sign_in_cookie_for_every_request(store, tmp_path, repo):
    path, db = store
    ingest(db, ("a", status(1)))
    server = console(path, public=True)
    try:
        for p in ["/", "/devices", "/devices/a", "/rollouts/1"]:
            a = call(server.url, p)
            assert a.status == 303 and a.headers["Location"] == f"/login?next={p}", p
        for p in ["/api/overview", "/api/devices", "/api/devices/a", "/api/rollouts", "/api/reports",
                  "/api/audit", "/api/events", "/metrics"]:
            a = call(server.url, p)
            assert a.status == 401 and a.headers["WWW-Authenticate"].startswith("Bearer"), p
            assert call(server.url, p, Authorization="Bearer not-a-token-at-all").status == 401
        assert call(server.url, "/api/overview", Authorization=f"Bearer {TOKEN}").json()["devices"] == 1
        assert call(server.url, "/login").status == 200
        assert call(server.url, "/static/console.css").status == 200

        def login(token: str, **headers: str) -> Answer:
            form = urllib.parse.urlencode({"token": token, "next": "/devices"}).encode()
            return call(server.url, "/login", "POST", form,
                        Content_Type="application/x-www-form-urlencoded", **headers)

        assert login("wrong-token-0123456789").status == 401
        assert login(TOKEN, Origin="https://evil.example").status == 403
        a = login(TOKEN)
        assert a.status == 303 and a.headers["Location"] == "/devices"
        cookie = a.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain HTTP here; under TLS the flag is set
        session = cookie.split(";")[0]
        assert TOKEN not in session
        for p in ["/", "/devices", "/api/overview", "/api/devices/a", "/metrics"]:
            assert call(server.url, p, Cookie=session).status == 200, p
        assert call(server.url, "/api/overview", Cookie=session + "x").status == 401
        s = Stream(server.url, {"Cookie": session})
        assert s.wait(1)["seq"] >= 1
        s.close()
        # The cookie reads; an action still needs the token in its header.
        rid = start_rollout(tmp_path, repo, db, 2, "all")
        assert act(server.url, rid, "pause", None, Cookie=session).status == 401
        assert act(server.url, rid, "pause", TOKEN).json()["state"] == "paused"
        assert call(server.url, "/", Host="console.example.net").status == 303  # any name off loopback
    finally:
        server._server.config.app.state.console.close()
        server.stop()


def test_the_sign_in_cookie_is_secure_under_tls(store, tmp_path):
    path, _ = store
    p = pki.pki("ec")
    leaf = p.leaf(sans=("localhost",), not_before=int(time.time()) - 3600, not_after=int(time.time()) + 86_400)
    cert, key = tmp_path / "console.pem", tmp_path / "console.key"
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, p.inter)))
    key.write_bytes(p.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    settings = ConsoleSettings(path, F, {"alice": TOKEN}, public=True, tls=True)
    ca = ssl.create_default_context(cadata=p.root.public_bytes(serialization.Encoding.PEM).decode())
    with ConsoleServer(settings, parse_bind("127.0.0.1:0"), str(cert), str(key)) as server:
        form = urllib.parse.urlencode({"token": TOKEN, "next": "/"}).encode()
        request = urllib.request.Request(f"https://localhost:{server.port}/login", data=form, method="POST")
        opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=ca))
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(request, timeout=20)
        server._server.config.app.state.console.close()
    assert e.value.code == 303
    cookie = e.value.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_the_sign_in_form_works_in_a_real_browser(store):
    """The form posts to /login from the console's own page: the browser must say where from
    (a Referrer-Policy of no-referrer made chromium send Origin: null, which is refused)."""
    path, db = store
    ingest(db, ("a", status(1)), ("b", status(1)))
    browser = Browser()
    server = console(path, public=True)
    try:
        page = browser.page(width=360)
        page.goto(server.url + "devices")
        assert page.url == server.url + "login?next=/devices"
        page.get_by_label("Operator token").fill("wrong-token-0123456789")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("That token is not valid.").wait_for()
        page.get_by_label("Operator token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_test_id("device-count").filter(has_text="2 devices").wait_for()
        assert page.url == server.url + "devices"
        page.close()
    finally:
        browser.close()
        server._server.config.app.state.console.close()
        server.stop()


# --------------------------------------------------------------------------- hostile text


def test_hostile_text_from_devices_and_reports_comes_out_inert(served, tmp_path, repo):
    server, db = served
    rid = fleet_with_history(tmp_path, repo, db)
    for p in (f"/api/rollouts/{rid}", "/api/devices", "/api/devices/c", "/api/devices/d", "/api/reports"):
        a = call(server.url, p)
        assert a.headers["X-Content-Type-Options"] == "nosniff"
        assert b"<img" not in a.body and b"<" not in a.body and b"&" not in a.body.replace(b"\\u0026", b""), p
        assert any(HOSTILE in t for t in texts(a.json())), p  # the same text, once decoded
    # A hostile device id in the path (no device can have it: ids are topic names) is escaped.
    a = call(server.url, "/devices/" + urllib.parse.quote(HOSTILE))
    assert a.status == 404 and "<img" not in a.text
    assert "no device &lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp; in fleet acme" in a.text
    a = call(server.url, "/api/devices/" + urllib.parse.quote(HOSTILE))
    assert a.status == 404 and b"<img" not in a.body
    assert HOSTILE in a.json()["error"]
    login = call(server.url, "/login?next=" + urllib.parse.quote("//evil.example/"))
    assert login.status == 303 and login.headers["Location"] == "/"
