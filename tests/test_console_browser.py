"""The fleet console in a real headless browser (Debian's chromium driven by Playwright).

One fleet for the module (support.consolefleet): a private Mosquitto, a `trustfleet serve`
process with the console on a free loopback port and an operator token, and simulated devices
(real agents, real signatures). The tests run in file order, each starting the rollout it needs:

1. a rollout paused from the command line is resumed while its page is open: the page follows
   it wave by wave to done without a reload (a marker set in the page survives);
2. a bad bundle halts on its canary wave: the page shows why and lists the failing devices with
   the reasons the store holds;
3. pause is refused without the token and with a wrong one; with it, pause, resume and abort
   work, the store follows, and each lands in the audit trail (store and Audit page) as the
   token's operator from the console;
4. the device table filters by search, state and group as the store does;
5. every page has its navigation, heading and landmark, the overview, reports and audit pages
   their charts and tables, and at 360 px nothing overflows sideways;
6. the keyboard alone reaches the device search and filters the table;
7. pin-failure reports made by a device core's own TLS decision (and a refused document) reach
   the store over the broker, one of them twice: the Reports page counts them as the store does,
   the duplicate left out and said so, and each device's page lists its reports;
8. eight tabs in one browser share one event stream: each follows a pause and a resume without a
   reload, also after the tab holding the stream is closed.

Screenshots of each step go to $TRUSTFLEET_ARTIFACTS or test-artifacts/console/.
"""

from __future__ import annotations

import json
import re

import pytest

from support.browser import Browser, Shots
from support.consolefleet import FLEET, OPERATOR, ConsoleFleet
from support.environment import require_tool
from support.waiting import wait_for
from trustfleet_device import topics, trust
from trustfleet_server import rollout as ro
from trustfleet_server.console import STATES
from trustfleet_server.demo.fleet import SIGNERS
from trustfleet_server.sim.config import SAMPLE_HOST

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')")
expect = sync_api.expect
expect.set_options(timeout=30_000)

WAVES = ("canary", "50%", "100%")
LONG = 60_000  # ms: a rollout's waits on a loaded machine
NAV = ("Overview", "Rollouts", "Devices", "Reports", "Audit")


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, browser):
    require_tool("mosquitto", "apt-get install mosquitto", ("/usr/sbin/mosquitto",))
    f = ConsoleFleet(tmp_path_factory.mktemp("console-fleet")).start()
    try:
        yield f
    finally:
        f.stop()
    # serve (and the console in it) stops cleanly on SIGTERM after all this, saying nothing alarming.
    assert f.serve_exit == 0 and "Traceback" not in f.serve_log, (f.serve_exit, f.serve_log[-3000:])


@pytest.fixture
def shots(request):
    """Screenshots named after the test; a failing test's open pages are pictured too."""
    s = Shots(request.node.name)
    failed_before = request.session.testsfailed
    yield s
    if request.session.testsfailed > failed_before:
        s.failed()
    s.close()


def open_page(browser: Browser, shots: Shots, fleet: ConsoleFleet, path: str, width: int = 1280):
    page = shots.track(browser.page(width=width))
    page.goto(fleet.url.rstrip("/") + path)
    return page


def by_id(page, testid: str):
    return page.get_by_test_id(testid)


def number(page, testid: str) -> int:
    text = by_id(page, testid).inner_text().strip()
    assert re.fullmatch(r"\d+", text), f"{testid}: {text!r} is not a count"
    return int(text)


def wait_drawn(page) -> None:
    """Until the page has drawn data from the server at least once (body[data-updated])."""
    # A function, not an expression: the console's Content-Security-Policy forbids eval.
    page.wait_for_function("() => document.body.dataset.updated !== undefined", timeout=LONG)


def table_rows(page, caption: str) -> list[list[str]]:
    """The cell texts of each body row of the table with this caption."""
    table = page.get_by_role("table", name=caption)
    return [[c.strip() for c in row.locator("td, th").all_inner_texts()]
            for row in table.locator("tbody tr").all()]


def action(page, name: str, rollout_id: int):
    """Empty the action result, click a rollout action button; returns the HTTP response to it."""
    page.evaluate("document.querySelector('[data-testid=\"action-result\"]').textContent = ''")
    with page.expect_response(lambda r: r.url.endswith(f"/api/rollouts/{rollout_id}/{name.lower()}")
                              and r.request.method == "POST") as info:
        page.get_by_role("button", name=name, exact=True).click()
    return info.value


def audit_of(fleet: ConsoleFleet, what: str, rollout_id: int) -> list[dict]:
    """The store's audit entries of this action on this rollout, newest first."""
    return [e for e in fleet.db.audit_entries(fleet=FLEET, action=what, limit=50)
            if e["detail"].get("rollout") == rollout_id]


# --------------------------------------------------------------------------- 1. live progress


def test_a_running_rollout_advances_on_the_page_without_a_reload(fleet, browser, shots):
    fleet.settle()
    rid = fleet.start_rollout(fleet.good(fleet.next_version()), ",".join(WAVES))
    fleet.rollout_cli("pause", rid)  # held before its first waves are done, resumed below
    r = fleet.rollout(rid)
    assert r.state == ro.PAUSED and r.current < 1, (r.state, r.current)

    page = open_page(browser, shots, fleet, f"/rollouts/{rid}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Rollout {rid}")
    expect(by_id(page, "rollout-state")).to_have_text("paused")
    expect(by_id(page, "halt-rule")).to_have_text(ro.halt_rule(r))
    for n, name in enumerate(WAVES, 1):
        expect(page.get_by_role("heading", name=f"Wave {n}: {name}")).to_be_visible()
        expect(page.get_by_role("progressbar", name=f"Wave {n} progress")).to_be_visible()
    wait_drawn(page)
    first_wave = by_id(page, "current-wave").inner_text().strip()
    first_updated = page.evaluate("document.body.dataset.updated")
    shots.take(page, "paused")

    # Record every current-wave the page shows from now on, and mark this document: a reload
    # would lose both.
    page.evaluate("""() => {
        window.__marker = 1;
        window.__waves = [];
        setInterval(() => {
            const el = document.querySelector('[data-testid="current-wave"]');
            const text = el ? el.textContent.trim() : '';
            if (window.__waves[window.__waves.length - 1] !== text) window.__waves.push(text);
        }, 25);
    }""")
    fleet.rollout_cli("resume", rid)
    expect(by_id(page, "current-wave")).not_to_have_text(first_wave, timeout=LONG)
    shots.take(page, "moved")
    expect(by_id(page, "rollout-state")).to_have_text("done", timeout=LONG)
    expect(by_id(page, "current-wave")).to_have_text(WAVES[-1])
    shots.take(page, "done")

    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    seen = [w for w in page.evaluate("window.__waves") if w in WAVES]
    assert seen and seen[-1] == WAVES[-1], seen
    assert seen == sorted(seen, key=WAVES.index), f"the waves went backwards on the page: {seen}"
    assert page.evaluate("document.body.dataset.updated") != first_updated
    final = fleet.wait_rollout(rid, ro.DONE)
    canary = [d for d in fleet.device_rows() if d.get("group") == "canary"]
    assert number(page, "wave-1-succeeded") == len(canary) > 0
    for n in range(1, len(WAVES) + 1):
        assert number(page, f"wave-{n}-failed") == 0
    assert final.state == ro.DONE


# --------------------------------------------------------------------------- 2. halted


def test_a_halted_rollout_shows_its_reason_and_failing_devices(fleet, browser, shots):
    fleet.settle()
    fleet.wait_versions(max(d["version"] or 0 for d in fleet.device_rows()))
    rid = fleet.start_rollout(fleet.bad(fleet.next_version()), ",".join(WAVES))
    page = open_page(browser, shots, fleet, f"/rollouts/{rid}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Rollout {rid}")
    wait_drawn(page)
    page.evaluate("window.__marker = 1")
    shots.take(page, "started")

    r = fleet.wait_rollout(rid, ro.HALTED, ro.DONE, ro.ABORTED)
    assert r.state == ro.HALTED, (r.state, r.halt_reason)
    expect(by_id(page, "rollout-state")).to_have_text("halted", timeout=LONG)
    expect(by_id(page, "halt-reason")).to_be_visible()
    expect(by_id(page, "halt-reason")).to_contain_text(r.halt_reason)
    expect(by_id(page, "current-wave")).to_have_text(WAVES[0])
    table = page.get_by_role("table", name="Failing devices")
    expect(table).to_be_visible()
    expect(table.locator("thead th")).to_have_text(["Device", "Reason"])
    expect(table.locator("tbody tr")).to_have_count(len(r.failing))
    shots.take(page, "halted")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"

    canary = sorted(d["device"] for d in fleet.device_rows() if d.get("group") == "canary")
    shown = {row[0]: row[1] for row in table_rows(page, "Failing devices")}
    assert sorted(shown) == sorted(f["device"] for f in r.failing) == canary
    for f in r.failing:
        assert shown[f["device"]] == f["reason"], (f, shown[f["device"]])
        assert "health check failed" in f["reason"], f
    assert number(page, "wave-1-failed") == len(canary)
    for name in ("Pause", "Resume", "Abort"):  # nothing applies to a halted rollout
        expect(page.get_by_role("button", name=name, exact=True)).to_be_disabled()


# --------------------------------------------------------------------------- 3. actions


def test_pause_needs_the_operator_token_and_every_action_is_audited(fleet, browser, shots):
    fleet.settle()
    fleet.crash_lab()  # the lab wave then counts nobody: the rollout runs until we act
    rid = fleet.start_rollout(fleet.good(fleet.next_version()), "lab,all")
    fleet.wait_rollout(rid, ro.RUNNING)
    page = open_page(browser, shots, fleet, f"/rollouts/{rid}")
    page.on("dialog", lambda dialog: dialog.accept())  # an "are you sure" before abort, if asked
    expect(by_id(page, "rollout-state")).to_have_text("running")
    expect(by_id(page, "current-wave")).to_have_text("lab", timeout=LONG)
    pause, resume, abort = (page.get_by_role("button", name=n, exact=True) for n in ("Pause", "Resume", "Abort"))
    expect(pause).to_be_enabled()
    expect(abort).to_be_enabled()
    expect(resume).to_be_disabled()
    result = by_id(page, "action-result")
    expect(result).to_have_attribute("role", "status")
    token = page.get_by_label("Operator token")
    shots.take(page, "running")

    # No token, then a wrong one: refused, said on the page, nothing changes in the store.
    for given, step in (("", "no-token"), ("not-the-operator-token-0000", "wrong-token")):
        token.fill(given)
        response = action(page, "Pause", rid)
        assert response.status == 401, (step, response.status, response.text())
        refusal = response.json()["error"]
        expect(result).to_contain_text(refusal)
        shots.take(page, f"refused-{step}")
        assert fleet.rollout(rid).state == ro.RUNNING
        expect(by_id(page, "rollout-state")).to_have_text("running")
    assert audit_of(fleet, "rollout-pause", rid) == []

    token.fill(fleet.token)
    for name, state in (("Pause", ro.PAUSED), ("Resume", ro.RUNNING), ("Abort", ro.ABORTED)):
        response = action(page, name, rid)
        assert response.status == 200, (name, response.status, response.text())
        expect(by_id(page, "rollout-state")).to_have_text(state, timeout=LONG)
        expect(result).not_to_be_empty()
        assert fleet.rollout(rid).state == state
        entries = audit_of(fleet, f"rollout-{name.lower()}", rid)
        assert len(entries) == 1, entries
        assert entries[0]["actor"] == OPERATOR and entries[0]["source"] == "console", entries[0]
        assert entries[0]["host"] == "127.0.0.1", entries[0]  # the browser's address
        shots.take(page, name.lower())
        if state == ro.PAUSED:
            expect(pause).to_be_disabled()
            expect(resume).to_be_enabled()
        elif state == ro.RUNNING:
            expect(pause).to_be_enabled()
            expect(resume).to_be_disabled()
    for button in (pause, resume, abort):
        expect(button).to_be_disabled()

    audit = open_page(browser, shots, fleet, "/audit")
    expect(audit.get_by_role("heading", level=1)).to_have_text("Audit trail")
    table = audit.get_by_role("table", name="Audit trail")
    expect(table.locator("thead th")).to_have_text(["Time", "Action", "Actor", "Host", "Source", "Detail"])
    for what in ("rollout-pause", "rollout-resume", "rollout-abort"):
        row = table.locator("tbody tr", has_text=what).filter(has_text=OPERATOR).filter(has_text="console")
        expect(row.first).to_be_visible()
    shots.take(audit, "audit")


# --------------------------------------------------------------------------- 4. device table


def test_the_device_table_filters_as_the_store_does(fleet, browser, shots):
    fleet.crash_lab()  # two devices offline: a state to filter on besides ok
    devices = fleet.device_rows()
    page = open_page(browser, shots, fleet, "/devices")
    expect(page.get_by_role("heading", level=1)).to_have_text("Devices")
    table = page.get_by_role("table", name="Devices")
    rows = table.locator("tr[data-device]")
    count = by_id(page, "device-count")
    options = page.get_by_label("State").locator("option")
    expect(options).to_have_count(1 + len(STATES))
    assert [o.get_attribute("value") for o in options.all()] == ["", *STATES]

    def check(step: str, q: str = "", state: str = "", group: str = "") -> list[str]:
        want = sorted(d["device"] for d in devices
                      if q.lower() in d["device"].lower() and (not state or d["console_state"] == state)
                      and (not group or d.get("group") == group))
        page.get_by_label("Search devices").fill(q)
        page.get_by_label("State").select_option(state)
        page.get_by_label("Group").fill(group)
        expect(count).to_have_text(f"{len(want)} devices", timeout=LONG)
        expect(rows).to_have_count(len(want))
        shown = sorted(r.get_attribute("data-device") for r in rows.all())
        assert shown == want, (step, shown, want)
        shots.take(page, step)
        return want

    every = check("all")
    assert len(every) == fleet.n_devices + fleet.n_lab
    some = check("search", q="DEV-0000")
    assert 0 < len(some) < len(every)
    offline = check("state-offline", state="offline")
    assert offline == fleet.lab_ids()
    both = check("search-and-state", q="dev-0000", state="ok")
    assert both == some
    assert check("state-empty", q="dev-0000", state="offline") == []
    canary = check("group", group="canary")
    assert 0 < len(canary) < len(every)


# --------------------------------------------------------------------------- 5. every page


def test_every_page_has_its_heading_navigation_and_tables_also_at_360_px(fleet, browser, shots):
    latest = fleet.db.latest_rollout(FLEET)
    if latest is None:
        latest_id = fleet.start_rollout(fleet.good(fleet.next_version()), ",".join(WAVES))
    else:
        latest_id = latest.id
    pages = [("/", "Overview"), ("/rollouts", "Rollouts"), (f"/rollouts/{latest_id}", f"Rollout {latest_id}"),
             ("/devices", "Devices"), ("/devices/dev-00000", "Device dev-00000"), ("/reports", "Reports"),
             ("/audit", "Audit trail")]
    for width in (1280, 360):
        for path, heading in pages:
            page = open_page(browser, shots, fleet, path, width=width)
            h1 = page.get_by_role("heading", level=1)
            expect(h1).to_have_count(1)
            expect(h1).to_have_text(heading)
            expect(h1).to_be_visible()
            expect(page.get_by_role("main")).to_have_count(1)
            nav = page.get_by_role("navigation", name="Console")
            expect(nav).to_be_visible()
            expect(nav.get_by_role("link")).to_have_text(list(NAV))
            wait_drawn(page)
            overflow = page.evaluate("document.body.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} at {width} px: the body is {overflow} px wider than the window"
            shots.take(page, f"{width}px-{heading}")
            if width == 1280:
                check_contents(fleet, page, path)
            page.close()


def check_contents(fleet: ConsoleFleet, page, path: str) -> None:
    """What the overview, reports and audit pages must show besides the common parts."""
    if path == "/":
        expect(by_id(page, "total-devices")).to_have_text(str(len(fleet.device_rows())), timeout=LONG)
        expect(page.get_by_role("img", name="Devices by state")).to_be_visible()
        expect(page.get_by_role("table", name="Devices by version and state")).to_be_visible()
    elif path == "/rollouts":
        want = [[f"Rollout {r.id}", f"v{r.version}", r.state] for r in fleet.db.rollouts(FLEET)]
        expect(page.get_by_role("table", name="Rollouts").locator("tbody tr")).to_have_count(len(want))
        assert [row[:3] for row in table_rows(page, "Rollouts")] == want
    elif path == "/reports":
        for caption in ("Reports by kind", "Reports by domain"):
            expect(page.get_by_role("table", name=caption)).to_be_visible()
    elif path == "/audit":
        table = page.get_by_role("table", name="Audit trail")
        expect(table.locator("thead th")).to_have_text(["Time", "Action", "Actor", "Host", "Source", "Detail"])
        # The CLI's publish of v1 (publish --db) and its rollout starts are in the trail.
        expect(table.locator("tbody tr", has_text="publish").first).to_be_visible()
        expect(table.locator("tbody tr", has_text="rollout-start").first).to_be_visible()
        # ... naming who signed: the names the key holders stated with `bundle sign --signer`.
        start = table.locator("tbody tr", has_text="rollout-start").first
        expect(start).to_contain_text(SIGNERS["bundle-1"])
        expect(start).to_contain_text(SIGNERS["bundle-2"])


# --------------------------------------------------------------------------- 6. keyboard


def test_the_keyboard_alone_reaches_the_content_and_filters_the_devices(fleet, browser, shots):
    page = open_page(browser, shots, fleet, "/devices")
    wait_drawn(page)
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "Skip to content", focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    for _ in range(20):  # from the main landmark on to the search field
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == page.get_by_label("Search devices").get_attribute("id"):
            break
    else:
        raise AssertionError("Tab never reached the search field")
    page.keyboard.type("lab-")
    want = [d["device"] for d in fleet.device_rows() if "lab-" in d["device"]]
    expect(by_id(page, "device-count")).to_have_text(f"{len(want)} devices", timeout=LONG)
    shots.take(page, "typed")
    rows = page.get_by_role("table", name="Devices").locator("tr[data-device]")
    assert sorted(r.get_attribute("data-device") for r in rows.all()) == sorted(want)


# --------------------------------------------------------------------------- 7. reports


def test_device_reports_are_counted_once_on_the_reports_and_device_pages(fleet, browser, shots):
    assert fleet.db.report_overview(FLEET)["reports"] == 0, "the simulated devices keep no report queue"
    first, second = sorted(d["device"] for d in fleet.device_rows() if d["device"].startswith("dev-"))[1:3]
    bad = fleet.bad(fleet.next_version()).read_bytes()  # pins only the backup CA's key

    # Each device core judges the sample server's chain with the bad bundle on trial: its TLS
    # decision is a pin mismatch, the health check fails, the bundle is reverted and marked bad,
    # and the session publishes the decision's TrustKit report.
    a = fleet.reporting_device(first)
    sent_a = a.reports_in(a.receive(topics.bundle(FLEET), bad))
    b = fleet.reporting_device(second)
    sent_b = b.reports_in(b.receive(topics.bundle(FLEET), bad))
    for dev, sent in ((a, sent_a), (b, sent_b)):
        assert [d.result for d in dev.decisions] == [trust.PIN_MISMATCH], dev.decisions
        assert dev.device.bad_versions() and len(sent) == 1, sent
        report = json.loads(sent[0][1])
        assert (report["validation-result"], report["hostname"]) == (trust.PIN_MISMATCH, SAMPLE_HOST)
        assert report == dev.decisions[0].report
    # The second device reboots; the retained bad bundle comes again and is refused.
    b = b.restarted()
    refused = b.reports_in(b.receive(topics.bundle(FLEET), bad))
    assert len(refused) == 1, refused
    refusal = json.loads(refused[0][1])
    assert refusal["validation-result"] == "document-refused" and "reverted as bad" in refusal["reason"], refusal

    page = open_page(browser, shots, fleet, "/reports")
    expect(page.get_by_role("heading", level=1)).to_have_text("Reports")
    wait_drawn(page)
    summary = page.locator("#reports-summary")
    expect(summary).to_have_text("No reports stored.")
    page.evaluate("window.__marker = 1")
    # The first device's report goes out twice (a QoS 1 redelivery): stored twice, counted once.
    fleet.send(sent_a + sent_b + refused + sent_a)
    o = wait_for(lambda: (lambda o: o if o["reports"] + o["duplicates"] >= 4 else None)(
        fleet.db.report_overview(FLEET)), "four reports in the store", timeout=60)
    assert (o["reports"], o["duplicates"], o["devices"]) == (3, 1, 2), o
    kinds = [[k["kind"], str(k["reports"]), str(k["devices"])] for k in o["kinds"]]
    assert kinds == [["pin-mismatch", "2", "2"], ["document-refused", "1", "1"]], kinds
    domains = [[k["hostname"] or "-", k["noted"] or "-", k["kind"], str(k["reports"]), str(k["devices"])]
               for k in o["domains"]]
    assert domains == [[SAMPLE_HOST, SAMPLE_HOST.split(".", 1)[1], "pin-mismatch", "2", "2"],
                       ["-", "bundle", "document-refused", "1", "1"]], domains

    # The open page draws them without a reload, as the store counts them.
    expect(summary).to_contain_text(f"{o['reports']} distinct reports from {o['devices']} devices", timeout=LONG)
    expect(summary).to_contain_text("1 duplicate (the same report from the same device again) is not counted")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    expect(page.get_by_role("table", name="Reports by kind").locator("tbody tr")).to_have_count(len(kinds))
    assert [row[:3] for row in table_rows(page, "Reports by kind")] == kinds
    assert [row[:5] for row in table_rows(page, "Reports by domain")] == domains
    newest = {(row[1], row[2]): row[4] for row in table_rows(page, "Newest reports")}
    assert newest == {(first, "pin-mismatch"): "2", (second, "pin-mismatch"): "1",
                      (second, "document-refused"): "1"}, newest
    shots.take(page, "reports")

    # Each device's page lists its stored reports in its history, newest first.
    for device_id in (first, second):
        dpage = open_page(browser, shots, fleet, f"/devices/{device_id}")
        expect(dpage.get_by_role("heading", level=1)).to_have_text(f"Device {device_id}")
        stored = [r for r in fleet.db.reports(FLEET, 50) if r["device"] == device_id]
        rows = dpage.get_by_role("table", name="Reports", exact=True).locator("tbody tr")
        expect(rows).to_have_count(len(stored), timeout=LONG)
        shown = table_rows(dpage, "Reports")
        assert [row[1] for row in shown] == [r["kind"] for r in stored], (shown, stored)
        for row, r in zip(shown, stored, strict=True):
            detail = SAMPLE_HOST if r["kind"] == "pin-mismatch" else "reverted as bad"
            assert detail in row[2], row
        shots.take(dpage, f"device-{device_id}")
        dpage.close()
    assert [r["kind"] for r in fleet.db.reports(FLEET, 50) if r["device"] == first] == ["pin-mismatch"] * 2


# --------------------------------------------------------------------------- 8. many tabs


def test_eight_tabs_share_one_event_stream_and_each_follows_the_rollout(fleet, browser, shots):
    fleet.settle()
    fleet.crash_lab()  # the lab wave counts nobody: the rollout runs until we act
    rid = fleet.start_rollout(fleet.good(fleet.next_version()), "lab,all")
    fleet.wait_rollout(rid, ro.RUNNING)
    streams: dict[int, int] = {}  # tab -> the /api/events requests it made

    def note(tab: int, request) -> None:
        if request.url.endswith("/api/events"):
            streams[tab] = streams.get(tab, 0) + 1

    tabs = {}
    for i in range(8):  # more tabs than chromium's six connections to one host
        page = shots.track(browser.page())
        page.on("request", lambda request, i=i: note(i, request))
        page.goto(fleet.url.rstrip("/") + (f"/rollouts/{rid}" if i % 2 == 0 else "/rollouts"))
        tabs[i] = page

    def state_on(page):
        if page.url.rstrip("/").endswith("/rollouts"):
            row = page.get_by_role("table", name="Rollouts").locator("tbody tr").filter(
                has=page.get_by_role("link", name=f"Rollout {rid}", exact=True))
            return row.locator("td").nth(2)
        return by_id(page, "rollout-state")

    def follow(state: str, step: str) -> None:
        """Every open tab shows `state` after a redraw later than `before`, in the same document."""
        for i, page in tabs.items():
            expect(state_on(page)).to_have_text(state, timeout=LONG)
            page.wait_for_function("(t) => Number(document.body.dataset.updated) > t", arg=before[i],
                                   timeout=LONG)
            assert page.evaluate("window.__marker") == 1, f"tab {i} was reloaded"
        shots.take(tabs[min(tabs)], step)

    for page in tabs.values():
        wait_drawn(page)
        expect(state_on(page)).to_have_text("running")
        page.evaluate("window.__marker = 1")
    assert len(streams) == 1, f"tabs reading /api/events: {streams}"
    [holder] = streams

    def stamps() -> dict[int, float]:
        """Each tab's last redraw, as the server's time (0 before one: the Rollouts list's first
        draw has none, /api/rollouts carries no time)."""
        out = {}
        for i, page in tabs.items():
            text = page.evaluate("document.body.dataset.updated")
            out[i] = float(text) if re.fullmatch(r"\d+(\.\d+)?", text or "") else 0.0
        return out

    before = stamps()
    fleet.rollout_cli("pause", rid)
    follow("paused", "paused")

    # The tab holding the stream goes: another takes it over, and every other tab still follows.
    tabs.pop(holder).close()
    before = stamps()
    assert all(before.values()), before  # each tab redrew on an update of the stream
    fleet.rollout_cli("resume", rid)
    follow("running", "resumed")
    assert set(streams) - {holder} and len(set(streams) - {holder}) == 1, f"tabs reading /api/events: {streams}"
    fleet.rollout_cli("abort", rid)
