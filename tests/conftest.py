"""Shared pytest configuration for trustfleet: the MicroPython VM, real MQTT brokers, and the
no-skip rule under CI (see tests/support/environment.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import brokers
from support.environment import in_ci, require_tool, skip_or_fail
from support.mpyvm import MicroPythonVM, available
from support.pgdb import fresh_schema

_MPY_FIXTURES = ("mpy", "mpy_fresh")


# --------------------------------------------------------------------------- no skips in CI
# Tests ask for what they need through tests/support/environment.py (skip here, fail under CI). These
# hooks catch every other way a test or a module can end up skipped (pytest.skip, skipif and
# skip marks, importorskip, allow_module_level) and, under CI=true, report it as a failure
# with its reason. A test module that collects nothing fails under CI as well. There are no
# exceptions: nothing in this suite is impossible on the CI machine.


def _as_ci_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    where, reason = report.nodeid, str(report.longrepr)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, line, reason = report.longrepr
        where, reason = f"{path}:{line}", reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"{where}: skipped under CI=true, which allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _as_ci_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    _as_ci_failure(report)
    if (in_ci() and isinstance(collector, pytest.Module) and report.passed
            and not report.result):
        report.outcome = "failed"
        report.longrepr = f"{report.nodeid}: no tests collected (CI=true)"


def _require_vm() -> None:
    """Skip when the VM cannot run here; under CI=true fail instead."""
    ok, why = available()
    if not ok:
        skip_or_fail(f"node or npm package missing: run `make test`, which runs npm ci ({why})")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the VM carry the `micropython` marker (declared in pyproject).
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _MPY_FIXTURES):
            item.add_marker(pytest.mark.micropython)


@pytest.fixture(scope="session")
def mpy():
    """A started MicroPythonVM shared by the session (state persists between tests)."""
    _require_vm()
    with MicroPythonVM() as vm:
        yield vm


@pytest.fixture
def mpy_fresh(mpy):
    """The session VM, reset to a fresh interpreter before the test."""
    mpy.reset()
    return mpy


# --------------------------------------------------------------------------- MQTT brokers
# See tests/support/brokers.py. Every broker a fixture starts is stopped by PID at the end.


def _require_binary(name: str, package: str) -> str:
    return require_tool(name, f"apt-get install {package}", (f"/usr/sbin/{name}", f"/usr/bin/{name}"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """A Mosquitto for the session: the system one on 127.0.0.1:1883 when it accepts anonymous
    clients, else a private anonymous one without persistence. Yields a brokers.Broker."""
    if brokers.mqtt_connect_probe(brokers.HOST, brokers.SYSTEM_MOSQUITTO_PORT) == 0:
        yield brokers.Broker(brokers.HOST, brokers.SYSTEM_MOSQUITTO_PORT, "mosquitto", system=True)
        return
    _require_binary("mosquitto", "mosquitto")
    proc = brokers.MosquittoProcess(brokers.private_mosquitto_conf(brokers.free_port()),
                                    tmp_path_factory.mktemp("mosquitto"))
    proc.start()
    try:
        yield proc.broker()
    finally:
        proc.stop()


@pytest.fixture
def private_mosquitto(tmp_path):
    """Factory: start(config=None) -> brokers.MosquittoProcess, started.

    `config` is config text or the path of a mosquitto.conf (e.g. written by
    `trustfleet broker-config --port N`); None gives an anonymous broker on
    a free port. The process has .url/.host/.port, .stop(), .restart() (same
    port; a persistent config keeps retained messages) and .stderr. Every
    broker started is stopped at the end of the test.
    """
    _require_binary("mosquitto", "mosquitto")
    started: list[brokers.MosquittoProcess] = []

    def start(config: str | os.PathLike | None = None) -> brokers.MosquittoProcess:
        if config is None:
            text = brokers.private_mosquitto_conf(brokers.free_port())
        elif isinstance(config, os.PathLike):
            text = Path(config).read_text()
        else:
            text = config
        proc = brokers.MosquittoProcess(text, tmp_path / f"mosquitto-{len(started)}",
                                        name=f"mosquitto-{len(started)}")
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="session")
def nats_mqtt(tmp_path_factory):
    """A private nats-server with JetStream and an MQTT listener on a free port (brokers.Broker)."""
    _require_binary("nats-server", "nats-server")
    proc = brokers.NatsProcess(tmp_path_factory.mktemp("nats"))
    proc.start()
    try:
        yield brokers.Broker(proc.host, proc.port, "nats")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def embedded_broker():
    """The project's embedded broker (trustfleet_server.broker.embedded) on a free port."""
    try:
        from trustfleet_server.broker.embedded import EmbeddedBroker
    except ImportError as exc:
        skip_or_fail(f"embedded broker not available: {exc}")
    broker = EmbeddedBroker(host=brokers.HOST, port=0)
    broker.start()
    try:
        brokers.wait_for_port(brokers.HOST, broker.port, name="embedded broker")
        yield brokers.Broker(brokers.HOST, broker.port, "embedded")
    finally:
        broker.stop()


_ANY_BROKER = {"mosquitto": "mosquitto", "nats": "nats_mqtt", "embedded": "embedded_broker"}


@pytest.fixture(params=list(_ANY_BROKER))
def any_broker(request):
    """Each kind of broker in turn (brokers.Broker; .kind says which)."""
    return request.getfixturevalue(_ANY_BROKER[request.param])


@pytest.fixture
def pg_target():
    """A fresh schema on the real PostgreSQL (support.pgdb); yields a URL that uses it."""
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a fleet store lives: a SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    return request.getfixturevalue("pg_target")
