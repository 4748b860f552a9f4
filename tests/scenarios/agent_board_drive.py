import json
import os
import sys

_APP = "trustfleet_device.transports.board"  # what the board's main.py starts
for _m in ("machine", "network", "ntptime", "socket", "tls", _APP):
    sys.modules.pop(_m, None)
sys.path.insert(0, "/boardfakes")
import tls  # noqa: E402 (the fakes first on the path)

__import__(_APP)
board = sys.modules[_APP].__dict__


def _unhex_all(xs):
    import binascii
    return [binascii.unhexlify(x) for x in xs]


def drive(text):
    spec = json.loads(text)
    tls.SERVERS.clear()
    for host in spec["servers"]:
        tls.SERVERS[host] = _unhex_all(spec["servers"][host])
    tls.CALLBACK = spec["callback"]
    del tls.MODES[:]
    cfg = board["load_config"]("/trustfleet/config.json")
    clock = lambda: spec["now"]  # noqa: E731
    device = board["build_device"](cfg, clock)
    out = {"boot": [r["event"] for r in device.boot_result.reports]}
    for name in spec["inbox"]:
        with open("/trustfleet/inbox/" + name, "wb") as f:
            f.write(_read(spec["docs"][name]))
    results = board["process_inbox"](device, online=True)
    out["inbox"] = [[n, r.committed, r.reverted, r.reason()] for n, r in results]
    out["left"] = sorted(os.listdir("/trustfleet/inbox"))
    out["status"] = device.status()
    out["log"] = board["LOG"][-6:]
    out["modes"] = list(tls.MODES)
    return out


def _read(path):
    with open(path, "rb") as f:
        return f.read()
