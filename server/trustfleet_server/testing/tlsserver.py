"""A TLS server on loopback that presents a fleet's chain: what devices health-check against.

    with TLSServer(fleet.chain()) as server:   # 127.0.0.1, a free port
        devices = fleet.devices(10, tls_server=server)
        server.use(fleet.chain().rotate())     # the server moves to a new chain

Devices reach it as (server.host, server.port) and check it as server.domain
(the SNI name sent). It answers one connection at a time, which is plenty
for test fleets of hundreds of devices; it is no production server.
"""

from __future__ import annotations

from trustfleet_server.demo.tlsserver import LoopbackTLSServer, server_context
from trustfleet_server.testing.pki import Chain


class TLSServer:
    """A started loopback TLS server presenting `chain` (leaf and issuing CA) for chain.domain."""

    def __init__(self, chain: Chain, host: str = "127.0.0.1") -> None:
        self.chain = chain
        self._server = LoopbackTLSServer(chain.pem, chain.key_pem, host=host).start()
        self.host, self.port = self._server.host, self._server.port

    @property
    def domain(self) -> str:
        return self.chain.domain

    @property
    def handshakes(self) -> int:
        """TLS handshakes completed so far (any client, any outcome of its own checks)."""
        return self._server.handshakes

    def use(self, chain: Chain) -> None:
        """Present `chain` from the next connection on (a certificate or key rotation)."""
        self._server.context = server_context(chain.pem, chain.key_pem)
        self.chain = chain

    def stop(self) -> None:
        """Stop the thread and close the port (idempotent)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

    def __enter__(self) -> TLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
