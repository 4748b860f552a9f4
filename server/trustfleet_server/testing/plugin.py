"""pytest fixtures for simulated fleets (registered through the `pytest11` entry point).

Installed with `pip install 'trustfleet[testing]'`; nothing to import or
list in conftest.py. The fixtures compose:

    tf_broker      session: one MQTT broker for the run (a private Mosquitto
                   when `mosquitto` is installed, else trustfleet's embedded
                   broker; --tf-broker or the ini option tf_broker picks)
    tf_fleet       a Fleet with fresh keys and a root, named after the test,
                   on tf_broker (marker: tf_fleet(thresholds=..., key_counts=...,
                   max_time_lead=...))
    tf_tls_server  a loopback TLS server presenting the fleet's chain for
                   api.<fleet>.example (marker: tf_tls_server(domain=...))
    tf_devices     simulated devices of tf_fleet whose health checks are real
                   TLS handshakes with tf_tls_server (marker:
                   tf_devices(count, faults={...}, groups={...}, initial=...);
                   or parametrize "tf_devices" indirectly with a count or a dict)

Teardown stops every device, server and worker process the fixtures
started and removes every file they made, whether the test passed or
failed. When a test using tf_fleet fails, the report gets a "trustfleet
fleet" section: the fleet as it was at the failure.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_DEVICES = 10
_FLEET_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trustfleet", "trustfleet simulated fleets")
    group.addoption("--tf-broker", default=None, metavar="BROKER",
                    help="broker for tf_broker: auto (default), mosquitto, embedded, or an "
                         "mqtt:// URL of a broker you run")
    parser.addini("tf_broker", "broker for tf_broker (as --tf-broker)", default="auto")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tf_fleet(thresholds=None, key_counts=None, "
                            "max_time_lead=None): how the tf_fleet fixture makes the fleet")
    config.addinivalue_line("markers", "tf_devices(count=10, **options): how many simulated "
                            "devices tf_devices starts, with Fleet.devices options "
                            "(faults, groups, initial, processes, seed)")
    config.addinivalue_line("markers", "tf_tls_server(domain=None): the server name "
                            "tf_tls_server presents a chain for")


def _marker_kwargs(request: pytest.FixtureRequest, name: str, positional: tuple[str, ...] = ()
                   ) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    kwargs = dict(zip(positional, marker.args, strict=False))
    kwargs.update(marker.kwargs)
    return kwargs


def _fleet_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name.removeprefix("test_")).strip("-.")
    base = base[:24].strip("-.") or "fleet"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def tf_broker(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The session's MQTT broker (a BrokerHandle: .url, .kind, .restart(), stopped at the end)."""
    from trustfleet_server.sim.brokers import open_broker

    spec = pytestconfig.getoption("--tf-broker") or pytestconfig.getini("tf_broker") or "auto"
    broker = open_broker(spec)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def tf_fleet(request: pytest.FixtureRequest, tf_broker: Any) -> Iterator[Any]:
    """A new Fleet (trustfleet_server.testing.Fleet) on tf_broker, closed after the test."""
    from trustfleet_server.testing import Fleet

    fleet = Fleet.create(_fleet_name(request), broker=tf_broker,
                         **_marker_kwargs(request, "tf_fleet"))
    request.node.stash[_FLEET_KEY] = fleet
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def tf_tls_server(request: pytest.FixtureRequest, tf_fleet: Any) -> Iterator[Any]:
    """A TLSServer on 127.0.0.1 presenting tf_fleet.chain(domain), stopped after the test."""
    from trustfleet_server.testing import TLSServer

    domain = _marker_kwargs(request, "tf_tls_server", ("domain",)).get("domain")
    server = TLSServer(tf_fleet.chain(domain))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tf_devices(request: pytest.FixtureRequest, tf_fleet: Any, tf_tls_server: Any) -> Iterator[Any]:
    """Simulated devices of tf_fleet, connected, health-checking against tf_tls_server."""
    options: dict[str, Any] = {"count": DEFAULT_DEVICES}
    options.update(_marker_kwargs(request, "tf_devices", ("count",)))
    param = getattr(request, "param", None)
    if isinstance(param, int):
        options["count"] = param
    elif isinstance(param, dict):
        options.update(param)
    count = options.pop("count")
    devices = tf_fleet.devices(count, tls_server=tf_tls_server, **options)
    try:
        yield devices
    finally:
        devices.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    fleet = item.stash.get(_FLEET_KEY, None)
    if fleet is not None and report.failed and call.when == "call":
        try:
            text = fleet.state().describe(limit=10)
        except Exception as exc:  # noqa: BLE001 - the report must not fail because of this
            text = f"(could not read the fleet: {exc})"
        report.sections.append(("trustfleet fleet", text))
    return report
