"""Device trust stores for tests: anchors, pin sets and bundles built directly from
trustfleet_device.documents objects, on the certificates of support.pki.
"""

from __future__ import annotations

from support.pki import DAY, NOW, der, spki_der
from trustfleet_device import trust
from trustfleet_device.documents import Anchor, Bundle, PinSet, Policy

HOST = "api.example.com"
LATER = NOW + 365 * DAY


# --------------------------------------------------------------------------- bundle helpers


def full(cert) -> Anchor:
    return Anchor(der(cert), None, None, None, None)


def compact(cert, label=None) -> Anchor:
    return Anchor(None, cert.subject.public_bytes(), spki_der(cert),
                  int(cert.not_valid_after_utc.timestamp()),
                  label or cert.subject.rfc4514_string())


def pinset(domain="api.example.com", pins=(), *, subdomains=False, expires=LATER,
           mode="enforce") -> PinSet:
    pins = list(pins)
    return PinSet(domain, subdomains, pins, expires, mode, ["https://reports.example/"],
                  len(pins) < 2)


def bundle(anchors, pinsets=(), distrust=(), user_anchors=False) -> Bundle:
    return Bundle("fleet", 1, NOW - DAY, NOW + 30 * DAY, list(anchors), list(pinsets),
                  list(distrust), Policy(user_anchors, 7 * DAY))


def store(anchors, pinsets=(), distrust=(), *, user_anchors=None, allow=False, managed=False):
    return trust.TrustStore(bundle(anchors, pinsets, distrust, allow), user_anchors, managed)


def evaluate(st, chain, host=HOST, now=NOW):
    return st.evaluate(host, chain, now)
