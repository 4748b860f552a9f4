"""A device that floods: QoS 0 statuses and reports as fast as its socket takes them, in a
process of its own (so the flood does not share the test's or serve's interpreter).

    python flooder.py HOST PORT FLEET DEVICE [--username U --password P --client-id C]
                      [--kinds status,report] [--pad BYTES]

Runs until killed (SIGTERM) or the broker stops taking it; then prints one JSON line:
{"sent": N, "refused": reason or null} (refused: the broker would not let it back in).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("fleet")
    ap.add_argument("device")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--client-id")
    ap.add_argument("--kinds", default="status,report")
    ap.add_argument("--pad", type=int, default=0)
    a = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    state = {"connack": None, "gone": False}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.client_id or f"{a.fleet}-{a.device}",
                    protocol=mqtt.MQTTv311)
    if a.username:
        c.username_pw_set(a.username, a.password)
    c.on_connect = lambda cl, ud, flags, rc, props: state.__setitem__("connack", rc)
    c.on_disconnect = lambda cl, ud, flags, rc, props: state.__setitem__("gone", True)
    base = f"tf/{a.fleet}"
    kinds = a.kinds.split(",")
    pad = "x" * a.pad
    sent, refused = 0, None
    c.connect(a.host, a.port, 30)
    while not stop:
        if state["gone"]:
            # Kicked: try to come back, as a misbehaving device would.
            state.update(connack=None, gone=False)
            try:
                c.reconnect()
            except OSError:
                time.sleep(0.2)
                state["gone"] = True
                continue
            end = time.monotonic() + 5
            while state["connack"] is None and not state["gone"] and time.monotonic() < end:
                c.loop(0.05)
            rc = state["connack"]
            if rc is None or rc.is_failure:
                refused = str(rc)
                break
        for kind in kinds:
            body = {"device": a.device, "fleet": a.fleet, "seq": sent}
            body.update({"state": "ok", "version": 1} if kind == "status" else {"event": "flood"})
            if pad:
                body["pad"] = pad
            if c.publish(f"{base}/{kind}/{a.device}", json.dumps(body)).rc == mqtt.MQTT_ERR_SUCCESS:
                sent += 1
        rc = c.loop(0)
        while rc == mqtt.MQTT_ERR_SUCCESS and c.want_write() and not stop:
            rc = c.loop(0.01)  # as fast as the socket takes them, not faster
        if rc != mqtt.MQTT_ERR_SUCCESS:
            state["gone"] = True
    print(json.dumps({"sent": sent, "refused": refused}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
