# Runs in the VM after transport_vm.py, which defines Clock, Broker, load_scripts and mqtt.
# ruff: noqa: F821


def client_scenario(path):
    msgs = []
    clock = Clock()
    broker = Broker(clock, load_scripts(path))
    c = mqtt.MQTTClient("cli-1", "broker.test", keepalive=30, sock_factory=broker, max_msg=16384)
    c.set_callback(lambda t, m: msgs.append([t.decode(), m.decode()]))
    c.set_last_will("tf/x/will", b"gone", True, 1)
    out = {"session_present": c.connect()}
    c.subscribe("tf/x/#", 1)             # a PUBLISH before the SUBACK goes to the callback
    c.publish("tf/x/out", b"hello", False, 1)
    c.publish("tf/x/q0", b"q0")
    c.ping()
    out["ops"] = [c.check_msg() for _ in range(4)]
    c.disconnect()
    out["msgs"] = msgs
    errors = []
    for _ in range(2):
        try:
            c.connect()
            c.subscribe("tf/secret", 1)
        except mqtt.MQTTException as exc:
            errors.append(str(exc))
    out["errors"] = errors
    out["sent"] = broker.sent()
    return out
