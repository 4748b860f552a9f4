import json
import os
import sys

for _m in ("machine", "network", "ntptime", "socket", "tls", "board_main"):
    sys.modules.pop(_m, None)
sys.path.insert(0, "/boardfakes")
import tls  # noqa: E402 (the fakes first on the path)

with open("/board/main.py") as f:
    _src = f.read()
board = {"__name__": "board_main"}
exec(compile(_src, "main.py", "exec"), board)


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
