import binascii
import json
import time

from trustfleet_device import trust, x509
from trustfleet_device.documents import Anchor, Bundle, PinSet, Policy
from trustfleet_device.reports import ReportQueue


def _unhex(s):
    return binascii.unhexlify(s)


def _hex(b):
    return binascii.hexlify(b).decode()


def _load(path):
    with open(path) as f:
        return json.loads(f.read())


def _anchor(a):
    if "der" in a:
        return Anchor(_unhex(a["der"]), None, None, None, None)
    return Anchor(None, _unhex(a["name"]), _unhex(a["spki"]), a["not_after"], a["label"])


def make_store(spec):
    pinsets = []
    for p in spec["pinsets"]:
        pins = [_unhex(x) for x in p["pins"]]
        pinsets.append(PinSet(p["domain"], p["subdomains"], pins, p["expires"], p["mode"],
                              p["report_to"], len(pins) < 2))
    b = Bundle("fleet", 1, 0, 4102444800, [_anchor(a) for a in spec["anchors"]], pinsets,
               [_unhex(x) for x in spec["distrust"]], Policy(spec["allow"], 86400))
    return trust.TrustStore(b, [_unhex(x) for x in spec["user_anchors"]], spec["managed"])


def decide(spec):
    st = make_store(spec)
    d = st.evaluate(spec["host"], [_unhex(c) for c in spec["chain"]], spec["now"])
    return {"verdict": d.verdict, "result": d.result, "reason": d.reason, "pinset": d.pinset,
            "anchor": d.anchor, "path": len(d.path), "report": d.report}


def decide_file(path):
    return decide(_load(path))


def time_file(path, runs):
    spec = _load(path)
    st = make_store(spec)
    chain = [_unhex(c) for c in spec["chain"]]
    times = []
    for _ in range(runs):
        t0 = time.ticks_ms()
        d = st.evaluate(spec["host"], chain, spec["now"])
        times.append(time.ticks_diff(time.ticks_ms(), t0))
    return {"verdict": d.verdict, "ms": times}


def parse_summary(hexder):
    try:
        c = x509.parse(_unhex(hexder))
    except Exception as e:  # any class: a non-DecodeError shows up by name in the comparison
        return {"error": type(e).__name__, "message": str(e)}
    return {"tbs": _hex(c.tbs), "sig_alg": c.sig_alg, "signature": _hex(c.signature),
            "issuer": _hex(c.issuer), "subject": _hex(c.subject), "label": c.label(),
            "not_before": c.not_before, "not_after": c.not_after, "spki": _hex(c.spki),
            "is_ca": c.is_ca, "path_len": c.path_len, "key_cert_sign": c.key_cert_sign,
            "dns_names": c.dns_names, "eku": c.ext_key_usage,
            "unknown_critical": c.unknown_critical, "version": c.version}


def parse_file(path):
    return [parse_summary(h) for h in _load(path)]


def queue_check(reports, now):
    q = ReportQueue(max_items=3)
    added = [q.add(r, now) for r in reports]
    return {"added": added, "pending": len(q), "dropped": q.dropped,
            "duplicates": q.duplicates, "rate_limited": q.rate_limited}
