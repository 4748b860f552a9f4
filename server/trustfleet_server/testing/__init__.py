"""Simulated fleets for test suites: trustfleet's public testing API.

    from trustfleet_server.testing import Fleet, TLSServer

    with Fleet.create("acme") as fleet, TLSServer(fleet.chain()) as server:
        fleet.devices(20, tls_server=server, faults={"stuck_2000": 0.25})
        fleet.publish(fleet.bundle(1))
        state = fleet.wait(lambda s: s.converged, timeout=30)
        assert state.versions == {1: 20}

With `pip install 'trustfleet[testing]'` the same parts are pytest
fixtures (tf_broker, tf_fleet, tf_tls_server, tf_devices: see
trustfleet_server.testing.plugin and docs/testing.md).
"""

from trustfleet_server.sim.config import Faults
from trustfleet_server.testing.fleet import Bundle, Connection, Devices, Fleet, PinSet, WaitTimeout
from trustfleet_server.testing.pki import Chain, pin
from trustfleet_server.testing.state import (
    DeviceState,
    FleetState,
    Refusal,
    Report,
    Revert,
    RolloutState,
)
from trustfleet_server.testing.tlsserver import TLSServer

__all__ = ["Bundle", "Chain", "Connection", "DeviceState", "Devices", "Faults", "Fleet", "FleetState", "PinSet",
           "Refusal", "Report", "Revert", "RolloutState", "TLSServer", "WaitTimeout", "pin"]
