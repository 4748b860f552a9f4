import tls as _tls
from tls import CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED, PROTOCOL_TLS_CLIENT  # noqa: F401 (ssl API)


class _Socket:
    def __init__(self, conn, leaf):
        self._conn = conn
        self._leaf = leaf

    def getpeercert(self, binary_form=False):
        return self._leaf

    def close(self):
        self._conn.close()


class SSLContext:
    def __init__(self, protocol):
        self._ctx = _tls.SSLContext(protocol)
        self.verify_mode = CERT_NONE  # as the ssl wrapper starts

    def load_verify_locations(self, cafile=None, cadata=None):
        self._ctx.load_verify_locations(cadata)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        kept = {}

        def keep_leaf(cert, depth):
            if depth == 0:
                kept[0] = bytes(cert)
            return 0

        self._ctx.verify_callback = keep_leaf
        # mbedTLS calls the callback only while it verifies: CERT_OPTIONAL verifies and
        # ignores the outcome, which is what CERT_NONE means to the caller.
        mode = self.verify_mode
        self._ctx.verify_mode = CERT_OPTIONAL if mode == CERT_NONE else mode
        conn = self._ctx.wrap_socket(sock, server_hostname=server_hostname)
        return _Socket(conn, kept.get(0))
