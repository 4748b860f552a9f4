"""The console's Starlette app: pages, their JSON, live updates and the rollout actions.

Pages are HTML shells (the navigation, the heading, labelled forms and empty
tables with their captions) that console/static/console.js fills from the JSON
routes and redraws when /api/events says something changed. No inline script or
style: every response carries a Content-Security-Policy of default-src 'self'.

Access (console.__init__ has the settings):
- on loopback anyone on the machine may read; the Host header must name a
  loopback address, so a web page whose name is made to resolve to 127.0.0.1
  (DNS rebinding) reads nothing;
- off loopback (settings.public) every request but the sign-in page and the
  static files needs an operator: a Bearer token, or the session cookie the
  sign-in form at /login sets (HttpOnly, SameSite=Strict, Secure under TLS);
- pause, resume and abort (POST /api/rollouts/{id}/ACTION) need the token in an
  `Authorization: Bearer` header (a header no other site's page can send) and
  are refused from a cross-site Origin; each goes through
  fleetops.change_rollout, which writes the audit entry.

The store is opened once, on the first request that needs it, and used off the
event loop (one FleetDB; its lock serialises the worker threads). The event
stream polls a fingerprint of the store once a second for all subscribers
together and sends "update" to each open stream when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import ipaddress
import json
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from trustfleet_server import fleetops, rollout
from trustfleet_server.console import STATES, ConsoleSettings, queries
from trustfleet_server.console import metrics as metrics_module
from trustfleet_server.errors import FleetStoreError, UsageError
from trustfleet_server.fleet import db as fleetdb

log = logging.getLogger("trustfleet.console")

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
POLL = 1.0  # seconds between two looks at the store for the event stream
KEEPALIVE = 15.0  # seconds of quiet before the stream sends a comment (finds closed clients)
SESSION_COOKIE = "tf_console"
SESSION_LENGTH = 12 * 3600
MAX_SESSIONS = 1000
MAX_BODY = 4096
ACTIONS = ("pause", "resume", "abort")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts say Origin: null
    "X-Frame-Options": "DENY",
}
NAV = (("/", "Overview"), ("/rollouts", "Rollouts"), ("/devices", "Devices"), ("/reports", "Reports"),
       ("/audit", "Audit"))


class Refused(Exception):
    """A request answered with an error: HTTP status and one line."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# --------------------------------------------------------------------------- responses


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    """JSON with <, > and & written as \\u escapes: the text stays inert even if something
    sniffs it as HTML."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Response(text, status, headers={"Cache-Control": "no-store", **(headers or {})},
                    media_type="application/json")


def error_response(request: Request, exc: Refused) -> Response:
    if request.url.path.startswith("/api/"):
        return json_response({"error": exc.message}, exc.status, exc.headers)
    if request.url.path == "/metrics":
        return Response(exc.message + "\n", exc.status, headers=exc.headers, media_type="text/plain")
    body = (f"<h1>{html.escape(_STATUS_TITLES.get(exc.status, 'Error'))}</h1>"
            f'<p class="error">{html.escape(exc.message)}</p>')
    return HTMLResponse(_layout("error", _STATUS_TITLES.get(exc.status, "Error"), body, None),
                        exc.status, headers=exc.headers)


_STATUS_TITLES = {400: "Bad request", 401: "Sign-in needed", 403: "Refused", 404: "Not found",
                  405: "Not allowed", 409: "Not possible now", 413: "Too large", 503: "Unavailable"}


# --------------------------------------------------------------------------- pages


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _layout(page: str, h1: str, body: str, settings: ConsoleSettings | None, current: str = "",
            data: dict | None = None) -> str:
    """A whole page: head, navigation, one <h1> inside <main>, the page's body."""
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data or {}).items())
    mark = ' aria-current="page"'
    links = "".join(f'<li><a href="{href}"{mark if name == current else ""}>{name}</a></li>'
                    for href, name in NAV)
    fleet = f" · fleet {_e(settings.fleet)}" if settings is not None else ""
    return ("<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(h1)} · trustfleet{fleet}</title>"
            '<link rel="stylesheet" href="/static/console.css">'
            '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
            '<script src="/static/console.js" defer></script></head>'
            f'<body data-page="{_e(page)}"{attrs}>'
            '<a class="skip" href="#main">Skip to content</a>'
            f'<header><p class="brand">trustfleet{fleet}</p>'
            f'<nav aria-label="Console"><ul>{links}</ul></nav>'
            '<p class="live" id="live" hidden></p></header>'
            f'<main id="main" tabindex="-1">{body}</main></body></html>\n')


def _table(caption: str, columns: tuple[str, ...], body_id: str, extra: str = "") -> str:
    heads = "".join(f'<th scope="col">{_e(c)}</th>' for c in columns)
    return (f'<div class="scroll" tabindex="0" role="region" aria-label="{_e(caption)}">'
            f"<table{extra}><caption>{_e(caption)}</caption><thead><tr>{heads}</tr></thead>"
            f'<tbody id="{body_id}"></tbody></table></div>')


def overview_page(settings: ConsoleSettings) -> str:
    body = ('<h1>Overview</h1>'
            '<section aria-labelledby="h-devices"><h2 id="h-devices">Devices</h2>'
            '<p class="big"><span data-testid="total-devices" id="total-devices">0</span> devices</p>'
            '<svg id="state-chart" role="img" aria-label="Devices by state" viewBox="0 0 360 200" '
            'preserveAspectRatio="xMinYMin meet"></svg>'
            + _table("Devices by version and state", ("Version", *STATES, "Total"), "version-table")
            + '</section>'
            '<section aria-labelledby="h-look"><h2 id="h-look">Needs a look</h2>'
            '<dl class="counts" id="look"></dl></section>'
            '<section aria-labelledby="h-rollout"><h2 id="h-rollout">Rollout</h2>'
            '<div id="rollout-short"><p>No rollout yet.</p></div></section>'
            '<section aria-labelledby="h-reports"><h2 id="h-reports">Reports</h2>'
            '<p id="reports-short"></p></section>'
            '<section aria-labelledby="h-worker" id="worker" hidden><h2 id="h-worker">This serve worker</h2>'
            '<dl class="counts" id="worker-facts"></dl></section>')
    return _layout("overview", "Overview", body, settings, "Overview")


def rollouts_page(settings: ConsoleSettings) -> str:
    body = ("<h1>Rollouts</h1>"
            + _table("Rollouts", ("Rollout", "Version", "State", "Waves passed", "Current wave",
                                  "Started", "Finished", "Halt or abort reason"), "rollout-rows"))
    return _layout("rollouts", "Rollouts", body, settings, "Rollouts")


def rollout_page(settings: ConsoleSettings, rollout_id: int) -> str:
    body = (f"<h1>Rollout {rollout_id}</h1>"
            '<dl class="facts"><div><dt>State</dt><dd data-testid="rollout-state" id="rollout-state">'
            '</dd></div><div><dt>Current wave</dt><dd data-testid="current-wave" id="current-wave"></dd>'
            '</div><div><dt>Bundle</dt><dd id="rollout-version"></dd></div>'
            '<div><dt>Started</dt><dd id="rollout-started"></dd></div>'
            '<div><dt>Finished</dt><dd id="rollout-finished"></dd></div></dl>'
            '<section aria-labelledby="h-rule"><h2 id="h-rule">Halt rule</h2>'
            '<p data-testid="halt-rule" id="halt-rule"></p></section>'
            '<section aria-labelledby="h-halt" id="halt" hidden><h2 id="h-halt">Why it stopped</h2>'
            '<p data-testid="halt-reason" id="halt-reason"></p>'
            + _table("Failing devices", ("Device", "Reason"), "failing-rows")
            + '</section>'
            '<section aria-labelledby="h-actions"><h2 id="h-actions">Actions</h2>'
            '<form id="actions" class="actions" autocomplete="off">'
            '<p><label for="token">Operator token</label>'
            '<input id="token" name="token" type="password" autocomplete="off" spellcheck="false"></p>'
            '<p><label for="reason">Reason (kept with an abort)</label>'
            '<input id="reason" name="reason" type="text" maxlength="500"></p>'
            '<p class="buttons"><button type="button" data-action="pause" disabled>Pause</button>'
            '<button type="button" data-action="resume" disabled>Resume</button>'
            '<button type="button" data-action="abort" class="danger" disabled>Abort</button></p>'
            '</form><p role="status" aria-live="polite" data-testid="action-result" id="action-result">'
            '</p></section>'
            '<section aria-labelledby="h-waves"><h2 id="h-waves">Waves</h2><div id="waves"></div></section>'
            '<section aria-labelledby="h-events"><h2 id="h-events">Events</h2>'
            + _table("Rollout events", ("Time", "Event"), "event-rows") + "</section>")
    return _layout("rollout", f"Rollout {rollout_id}", body, settings, "Rollouts",
                   {"rollout": rollout_id})


def devices_page(settings: ConsoleSettings) -> str:
    options = "".join(f'<option value="{s}">{s}</option>' for s in STATES)
    body = ('<h1>Devices</h1>'
            '<form id="filters" class="filters" role="search" action="/devices" method="get">'
            '<p><label for="q">Search devices</label>'
            '<input id="q" name="q" type="search" maxlength="200" spellcheck="false"></p>'
            f'<p><label for="state">State</label><select id="state" name="state">'
            f'<option value="">all</option>{options}</select></p>'
            '<p><label for="version">Version</label><select id="version" name="version">'
            '<option value="">all</option><option value="none">none</option></select></p>'
            '<p><label for="group">Group</label>'
            '<input id="group" name="group" type="text" list="groups" maxlength="200" spellcheck="false">'
            '<datalist id="groups"></datalist></p>'
            '<noscript><p><button type="submit">Filter</button></p></noscript></form>'
            '<p data-testid="device-count" id="device-count" aria-live="polite">0 devices</p>'
            + _table("Devices", ("Device", "Version", "State", "Group", "Bucket", "Last seen",
                                 "Last refusal or revert"), "device-rows")
            + '<nav aria-label="Device pages" class="pager"><button type="button" id="prev" disabled>'
              'Previous page</button> <span id="page-info"></span> '
              '<button type="button" id="next" disabled>Next page</button></nav>')
    return _layout("devices", "Devices", body, settings, "Devices")


def device_page(settings: ConsoleSettings, device_id: str) -> str:
    body = (f"<h1>Device {_e(device_id)}</h1>"
            '<section aria-labelledby="h-status"><h2 id="h-status">Last status</h2>'
            '<dl class="facts" id="device-status"></dl></section>'
            '<section aria-labelledby="h-history"><h2 id="h-history">History</h2>'
            + _table("Device events", ("Time", "Action", "By", "Why"), "device-events")
            + _table("Audit entries", ("Time", "Action", "Actor", "Host", "Source", "Detail"),
                     "device-audit")
            + _table("Reports", ("Time", "Kind", "Report"), "device-reports") + "</section>")
    return _layout("device", f"Device {device_id}", body, settings, "Devices", {"device": device_id})


def reports_page(settings: ConsoleSettings) -> str:
    body = ('<h1>Reports</h1><p id="reports-summary"></p>'
            + _table("Reports by kind", ("Kind", "Reports", "Devices", "Newest"), "kind-rows")
            + _table("Reports by domain", ("Host name", "Noted host name", "Kind", "Reports", "Devices",
                                           "Newest"), "domain-rows")
            + _table("Newest reports", ("Time", "Device", "Kind", "Report", "Copies"), "report-rows"))
    return _layout("reports", "Reports", body, settings, "Reports")


def audit_page(settings: ConsoleSettings) -> str:
    body = ('<h1>Audit trail</h1>'
            + _table("Audit trail", ("Time", "Action", "Actor", "Host", "Source", "Detail"), "audit-rows")
            + '<p class="pager"><button type="button" id="older" hidden>Older entries</button></p>')
    return _layout("audit", "Audit trail", body, settings, "Audit")


def login_page(settings: ConsoleSettings, message: str = "", next_path: str = "/") -> str:
    note = f'<p class="error" role="alert">{_e(message)}</p>' if message else ""
    body = ('<h1>Sign in</h1>'
            '<p>This console is served beyond this machine: every page needs an operator token.</p>'
            f'{note}<form method="post" action="/login" class="login">'
            f'<input type="hidden" name="next" value="{_e(next_path)}">'
            '<p><label for="login-token">Operator token</label>'
            '<input id="login-token" name="token" type="password" autocomplete="current-password" required>'
            '</p><p><button type="submit">Sign in</button></p></form>')
    return _layout("login", "Sign in", body, settings)


# --------------------------------------------------------------------------- the event hub


class Hub:
    """One poll of the store per second for every open event stream together.

    `join` gives a subscriber a one-slot queue (a slow reader only ever gets the newest
    update); the poll runs while anyone is subscribed and stops with the last one.
    """

    def __init__(self, poll: Callable[[], Awaitable[Any]]) -> None:
        self._poll = poll
        self.queues: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._last: Any = None
        self._message: str | None = None
        self._seq = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def join(self) -> asyncio.Queue:
        self.loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        self.queues.add(q)
        if self._message is not None:
            q.put_nowait(self._message)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return q

    def leave(self, q: asyncio.Queue) -> None:
        self.queues.discard(q)
        if not self.queues:
            self.close()

    def close(self) -> None:
        """Stop polling; each open stream gets None (its end)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._last = self._message = None
        for q in list(self.queues):
            _replace(q, None)

    async def _run(self) -> None:
        while self.queues:
            try:
                found, error = await self._poll(), None
            except FleetStoreError as exc:
                found, error = ("error", str(exc)), str(exc)
            except Exception as exc:  # noqa: BLE001 (the poll goes on; the pages say what failed)
                log.warning("console: looking for changes failed: %s", exc)
                found, error = ("error", repr(exc)), f"looking for changes failed: {exc}"
            if found != self._last:
                self._last = found
                self._seq += 1
                message = {"time": round(time.time(), 3), "seq": self._seq}
                if error:
                    message["error"] = error
                self._message = json.dumps(message)
                for q in list(self.queues):
                    _replace(q, self._message)
            await asyncio.sleep(POLL)


class EventStream(StreamingResponse):
    """The event stream's response. A server stopping without Console.close() first cancels the
    streams still open once its grace period is over; such a stream ends its body and returns,
    instead of surfacing the cancellation as an error of the app."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _replace(q: asyncio.Queue, item: Any) -> None:
    while not q.empty():
        q.get_nowait()
    q.put_nowait(item)


# --------------------------------------------------------------------------- the console


def _loopback_host(host_header: str) -> bool:
    """Whether a Host header names a loopback address (any port)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """The app's state: the settings, the store (opened lazily), sign-in sessions, the hub."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self._db: fleetdb.FleetDB | None = None
        self._db_lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}  # sha256(cookie) -> (operator, expires)
        self.hub = Hub(self._fingerprint)
        self.static = {name: (STATIC / name).read_bytes() for name in STATIC_TYPES}

    # -- the store

    def db(self) -> fleetdb.FleetDB:
        """The console's connection, opened on first use. Raises: FleetStoreError."""
        with self._db_lock:
            if self._db is None:
                self._db = fleetdb.open_db(self.settings.db_target, create=False)
            return self._db

    async def read(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """fn(db, *args, **kw) in a worker thread; store failures become 503."""
        def call() -> Any:
            return fn(self.db(), *args, **kw)
        try:
            return await run_in_threadpool(call)
        except fleetdb.NotFound as exc:
            raise Refused(404, str(exc)) from None
        except queries.QueryError as exc:
            raise Refused(400, str(exc)) from None
        except FleetStoreError as exc:
            raise Refused(503, str(exc)) from None

    async def _fingerprint(self) -> Any:
        s = self.settings

        def look() -> Any:
            found = queries.fingerprint(self.db(), s.fleet)
            if s.live is not None:
                live = s.live()
                found += (live.get("connected"), live.get("leading"), live.get("synced"))
            return found
        return await run_in_threadpool(look)

    def close(self) -> None:
        """End the open event streams and close the store: for the server's stop, from any
        thread (the streams end on their event loop; uvicorn then need not cancel them)."""
        loop = self.hub.loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self.hub.close()
            else:
                loop.call_soon_threadsafe(self.hub.close)
        with self._db_lock:
            if self._db is not None:
                with self._db._lock:  # not under a query running in a worker thread
                    self._db.close()
                self._db = None

    # -- who is asking

    def now(self) -> int:
        return int(self.settings.clock())

    def bearer_operator(self, request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return self.settings.operator(value.strip()) if scheme.lower() == "bearer" else None

    def session_operator(self, request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        key = hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()
        found = self._sessions.get(key)
        if found is None:
            return None
        name, expires = found
        if expires < time.time() or name not in self.settings.tokens:
            self._sessions.pop(key, None)
            return None
        return name

    def new_session(self, name: str) -> str:
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
            del self._sessions[oldest]
        cookie = secrets.token_urlsafe(32)
        self._sessions[hashlib.sha256(cookie.encode()).hexdigest()] = (name, time.time() + SESSION_LENGTH)
        return cookie

    def check_host(self, request: Request) -> None:
        if not self.settings.public and not _loopback_host(request.headers.get("host", "")):
            raise Refused(403, "this console answers on its loopback address only "
                               "(the Host header names another)")

    def check_read(self, request: Request) -> None:
        """Off loopback, reading needs an operator (token or sign-in cookie)."""
        if not self.settings.public:
            return
        if self.bearer_operator(request) or self.session_operator(request):
            return
        raise Refused(401, "sign in with an operator token (at /login), or send "
                           "Authorization: Bearer <token>", {"WWW-Authenticate": 'Bearer realm="trustfleet"'})

    def check_same_origin(self, request: Request) -> None:
        """Refuse a request a page of another site made (Origin, or Sec-Fetch-Site)."""
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() != own:
            raise Refused(403, f"cross-site request refused (Origin {origin[:100]})")
        if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
            raise Refused(403, "cross-site request refused (Sec-Fetch-Site)")


# --------------------------------------------------------------------------- routes


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console's ASGI app for `settings` (console.web serves it)."""
    console = Console(settings)

    def guarded(handler: Callable[[Request], Awaitable[Response]], public_ok: bool = False):
        async def endpoint(request: Request) -> Response:
            try:
                console.check_host(request)
                if not public_ok:
                    console.check_read(request)
                response = await handler(request)
            except Refused as exc:
                if exc.status == 401 and request.method == "GET" and _wants_page(request):
                    target = urllib.parse.quote(request.url.path, safe="/")
                    response = RedirectResponse(f"/login?next={target}", 303)
                else:
                    response = error_response(request, exc)
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
            return response
        return endpoint

    def page(render: Callable[..., str]):
        async def handler(request: Request) -> Response:
            return HTMLResponse(render(settings), headers={"Cache-Control": "no-store"})
        return guarded(handler)

    async def rollout_page_handler(request: Request) -> Response:
        rid = _rollout_id(request)
        await console.read(queries.rollout_summary, settings, rid)  # 404 when there is none
        return HTMLResponse(rollout_page(settings, rid), headers={"Cache-Control": "no-store"})

    async def device_page_handler(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        await console.read(queries.device_detail, settings, device_id, console.now())  # or 404
        return HTMLResponse(device_page(settings, device_id), headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in console.static:
            raise Refused(404, f"no static file {name[:60]}")
        return Response(console.static[name], headers={"Cache-Control": "no-cache"},
                        media_type=STATIC_TYPES[name])

    async def api_overview(request: Request) -> Response:
        return json_response(await console.read(queries.overview, settings, console.now()))

    async def api_rollouts(request: Request) -> Response:
        return json_response(await console.read(queries.rollouts, settings, console.now()))

    async def api_rollout(request: Request) -> Response:
        rid = _rollout_id(request)
        return json_response(await console.read(queries.rollout_detail, settings, rid, console.now()))

    async def api_devices(request: Request) -> Response:
        p = request.query_params
        return json_response(await console.read(
            queries.devices, settings, console.now(), q=p.get("q", "").strip(),
            state=p.get("state", ""), version=p.get("version", "").strip(),
            group=p.get("group", "").strip(), limit=p.get("limit"), offset=p.get("offset")))

    async def api_device(request: Request) -> Response:
        return json_response(await console.read(queries.device_detail, settings,
                                                request.path_params["device_id"], console.now()))

    async def api_reports(request: Request) -> Response:
        return json_response(await console.read(queries.reports, settings, console.now()))

    async def api_audit(request: Request) -> Response:
        p = request.query_params
        return json_response(await console.read(queries.audit, settings, console.now(),
                                                limit=p.get("limit"), before=p.get("before"),
                                                action=p.get("action", "")))

    async def api_events(request: Request) -> Response:
        async def stream():
            q = console.hub.join()
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(q.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:
                        return
                    yield f"event: update\ndata: {message}\n\n"
            finally:
                console.hub.leave(q)

        return EventStream(stream(), media_type="text/event-stream",
                           headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def api_action(request: Request) -> Response:
        rid, action = _rollout_id(request), request.path_params["action"]
        if action not in ACTIONS:
            raise Refused(404, f"no action {action[:40]!r}; one of {', '.join(ACTIONS)}")
        console.check_same_origin(request)
        name = console.bearer_operator(request)
        if name is None:
            presented = request.headers.get("authorization", "").partition(" ")[2].strip()
            raise Refused(401, "the operator token is not valid" if presented else
                          "an operator token is needed: Authorization: Bearer <token>",
                          {"WWW-Authenticate": 'Bearer realm="trustfleet"'})
        if name in settings.read_only:
            raise Refused(403, f"operator {name}'s token is read-only: it cannot {action} a rollout")
        reason = await _reason(request)
        client = request.client.host if request.client else "unknown"
        now = console.now()

        def act(db: fleetdb.FleetDB) -> dict:
            r = db.rollout(rid)
            if r.fleet != settings.fleet:
                raise fleetdb.NotFound(f"no rollout {rid} in fleet {settings.fleet}")
            change = {"pause": rollout.pause, "resume": rollout.resume, "abort": rollout.abort}[action]
            try:
                change(r, now)  # refused here, with the engine's words, before anything is written
            except rollout.RolloutError as exc:
                raise Refused(409, str(exc)) from None
            why = reason or (f"aborted by {name} from the console" if action == "abort" else "")
            try:
                fleetops.change_rollout(db, settings.fleet, rid, action, now, why, None, actor=name,
                                        host=client, source="console", detail={"console": settings.host})
            except UsageError as exc:
                raise Refused(409, str(exc)) from None
            except fleetdb.RolloutConflict as exc:
                raise Refused(409, str(exc)) from None
            out = queries.rollout_detail(db, settings, rid, now)
            out["done"] = {"action": action, "operator": name}
            return out
        return json_response(await console.read(act))

    async def metrics(request: Request) -> Response:
        body = await console.read(lambda db: metrics_module.render(settings, db))
        return Response(body, headers={"Cache-Control": "no-store", "Content-Type": CONTENT_TYPE_LATEST})

    async def login_form(request: Request) -> Response:
        nxt = _safe_next(request.query_params.get("next", "/"))
        if not settings.public:
            return RedirectResponse(nxt, 303)
        return HTMLResponse(login_page(settings, next_path=nxt), headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        console.check_same_origin(request)
        if not settings.public:
            return RedirectResponse("/", 303)
        body = await _body(request)
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=5)
        nxt = _safe_next((form.get("next") or ["/"])[0])
        name = settings.operator((form.get("token") or [""])[0].strip())
        if name is None:
            return HTMLResponse(login_page(settings, "That token is not valid.", nxt), 401,
                                headers={"Cache-Control": "no-store"})
        response = RedirectResponse(nxt, 303)
        response.set_cookie(SESSION_COOKIE, console.new_session(name), max_age=SESSION_LENGTH,
                            path="/", secure=settings.tls, httponly=True, samesite="strict")
        return response

    routes = [
        Route("/", page(overview_page)),
        Route("/rollouts", page(rollouts_page)),
        Route("/rollouts/{rollout_id}", guarded(rollout_page_handler)),
        Route("/devices", page(devices_page)),
        Route("/devices/{device_id:path}", guarded(device_page_handler)),
        Route("/reports", page(reports_page)),
        Route("/audit", page(audit_page)),
        Route("/login", guarded(login_form, public_ok=True), methods=["GET"]),
        Route("/login", guarded(login, public_ok=True), methods=["POST"]),
        Route("/static/{name}", guarded(static, public_ok=True)),
        Route("/api/overview", guarded(api_overview)),
        Route("/api/rollouts", guarded(api_rollouts)),
        Route("/api/rollouts/{rollout_id}", guarded(api_rollout)),
        Route("/api/rollouts/{rollout_id}/{action}", guarded(api_action), methods=["POST"]),
        Route("/api/devices", guarded(api_devices)),
        Route("/api/devices/{device_id:path}", guarded(api_device)),
        Route("/api/reports", guarded(api_reports)),
        Route("/api/audit", guarded(api_audit)),
        Route("/api/events", guarded(api_events)),
        Route("/metrics", guarded(metrics)),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return await guarded(_raise_not_found)(request)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: _method_not_allowed})
    app.state.console = console
    return app


async def _raise_not_found(request: Request) -> Response:
    raise Refused(404, f"nothing at {request.url.path[:200]}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    response = error_response(request, Refused(405, f"{request.method} is not allowed here"))
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api/") or path.startswith("/static/") or path == "/metrics")


def _rollout_id(request: Request) -> int:
    text = request.path_params["rollout_id"]
    if not text.isdigit() or len(text) > 18:
        raise Refused(404, f"no rollout {text[:40]!r}: rollout ids are numbers")
    return int(text)


def _safe_next(path: str) -> str:
    """Only a path on this console (no scheme, no host, no //) to go back to after sign-in."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 500:
        return "/"
    return path


async def _body(request: Request) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        raise Refused(413, f"the request body is larger than {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, f"the request body is larger than {MAX_BODY} bytes")
    return body


async def _reason(request: Request) -> str:
    """The optional {"reason": "..."} of an action. Raises: Refused (400)."""
    body = await _body(request)
    if not body.strip():
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, 'the body must be JSON: {"reason": "..."}') from None
    reason = data.get("reason", "") if isinstance(data, dict) else None
    if not isinstance(reason, str):
        raise Refused(400, 'the body must be JSON: {"reason": "..."} with a text reason')
    reason = " ".join(reason.split())
    return reason[:500]
