import binascii
import json
import os
import sys

with open(sys.argv[-1]) as _f:
    SPEC = json.loads(_f.read())

if SPEC["port"] != "native":
    # Hide `tls` from main.py; it falls back to `ssl`: this port's wrapper
    # (imported first, so that it keeps its own `tls`) or LEAF_ONLY_SSL.
    import builtins
    import ssl

    import leafonly_ssl

    _real_import = builtins.__import__
    _ssl = leafonly_ssl if SPEC["port"] == "leaf-only" else ssl

    def _port_import(name, *rest):
        if name == "tls":
            raise ImportError("no module named 'tls'")
        if name == "ssl":
            return _ssl
        return _real_import(name, *rest)

    builtins.__import__ = _port_import

from trustfleet_device import policy, trust
from trustfleet_device.transports import board
from trustfleet_device.transports.storage import FileSource


def _read(path):
    with open(path, "rb") as f:
        return f.read()


ROOT = policy.load_trusted_root(_read(SPEC["root"]), fleet=SPEC["fleet"])
NOW = SPEC["now"]


def bundle(name):
    """The named bundle, verified and streamed from its file as a board installs it."""
    path = SPEC["bundles"][name]
    if SPEC["stream"]:
        return policy.verify_bundle(ROOT, FileSource(path, os.stat(path)[6]), now=NOW)
    return policy.verify_bundle(ROOT, _read(path), now=NOW)


class Recording:
    """A real SSLContext that notes what load_verify_locations was given and what it refused."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.given = []

    def load_verify_locations(self, *args, **kw):
        data = args[0] if args else kw["cadata"]
        try:
            self.ctx.load_verify_locations(*args, **kw)
        except ValueError as e:
            self.given.append([binascii.hexlify(data).decode(), "ValueError: " + str(e)])
            raise
        self.given.append([binascii.hexlify(data).decode(), "taken"])


def boot_and_install(state):
    """Boot main.py's device over `state` and offer what its inbox holds, as main() does."""
    board.STATE_DIR = state
    board.CONFIG_FILE = state + "/config.json"
    board.INBOX_DIR = state + "/inbox"
    board.FACTORY_ROOT = state + "/factory-root.cose"
    del board.LOG[:]
    device = board.build_device(board.load_config(board.CONFIG_FILE), lambda: NOW)
    results = board.process_inbox(device, True)
    return {"inbox": [[n, r.committed, r.reverted, r.reason()] for n, r in results],
            "status": device.status(), "log": list(board.LOG)}


def step(s):
    op = s["op"]
    if op == "can_see_chain":
        return board.can_see_chain()
    if op == "boot":
        return boot_and_install(s["state"])
    b = bundle(s["bundle"])
    if op == "anchors":
        mod, ctx, native = board._tls_context()
        rec = Recording(ctx)
        return [board.load_full_anchors(rec, native, b), rec.given]
    host, port = s["host"], s["port"]
    if op == "check":
        del board.LOG[:]
        ok, detail = board.check_endpoints([(host, port)], b, NOW)
        return [ok, detail, list(board.LOG)]
    if op == "judge":
        chain, complete = board.tls_chain(host, port, b)
        ok, detail = board.judge_mbedtls(trust.TrustStore(b), host, port, chain, complete, NOW)
        return [ok, detail, complete, [binascii.hexlify(c).decode() for c in chain]]
    raise ValueError("unknown step " + op)


print(SPEC["mark"] + json.dumps([step(s) for s in SPEC["steps"]]))
