"""The MQTT topic layout shared by devices and the server (docs/topics.md).

    tf/<fleet>/root/<version>        signed root v<version>       retained, QoS 1
    tf/<fleet>/bundle                signed bundle for everyone   retained, QoS 1
    tf/<fleet>/bundle/group/<group>  bundle for a rollout group   retained, QoS 1
    tf/<fleet>/bundle/bucket/<nn>    bundle for hash bucket nn    retained, QoS 1
    tf/<fleet>/timestamp             signed timestamp             retained, QoS 1
    tf/<fleet>/status/<device>       device status (JSON)         retained, QoS 1, will "offline"
    tf/<fleet>/report/<device>       failure report (JSON)        QoS 1, not retained

Topics carry no authority: every document verifies itself, so a broker
that mislabels or replays a message can only make a device refuse it.
Names are checked so a device id or group cannot inject '/', '+' or '#'.
"""

import hashlib

PREFIX = "tf"
BUCKETS = 100
MAX_NAME = 64


def check_name(name, what):
    """Refuse ids that would break the topic tree. Raises: ValueError."""
    if not name or len(name) > MAX_NAME:
        raise ValueError("%s must be 1 to %d characters" % (what, MAX_NAME))
    for ch in name:
        if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch in "-_."):
            raise ValueError("%s %r may hold only letters, digits, '-', '_' and '.'" % (what, name))
    return name


def bucket(device_id):
    """The device's stable rollout bucket, 0..99: the first 4 bytes of SHA-256(id) mod 100."""
    d = hashlib.sha256(device_id.encode()).digest()
    return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) % BUCKETS


def root(fleet, version):
    return "%s/%s/root/%d" % (PREFIX, fleet, version)


def roots(fleet):
    return "%s/%s/root/+" % (PREFIX, fleet)


def bundle(fleet):
    return "%s/%s/bundle" % (PREFIX, fleet)


def group_bundle(fleet, group):
    return "%s/%s/bundle/group/%s" % (PREFIX, fleet, group)


def bucket_bundle(fleet, n):
    return "%s/%s/bundle/bucket/%02d" % (PREFIX, fleet, n)


def timestamp(fleet):
    return "%s/%s/timestamp" % (PREFIX, fleet)


def status(fleet, device_id):
    return "%s/%s/status/%s" % (PREFIX, fleet, device_id)


def statuses(fleet):
    return "%s/%s/status/+" % (PREFIX, fleet)


def report(fleet, device_id):
    return "%s/%s/report/%s" % (PREFIX, fleet, device_id)


def reports(fleet):
    return "%s/%s/report/+" % (PREFIX, fleet)


def device_subscriptions(fleet, device_id, group=None):
    """What a device subscribes to: roots, the fleet bundle, its group's and bucket's, the timestamp."""
    subs = [roots(fleet), bundle(fleet), bucket_bundle(fleet, bucket(device_id)), timestamp(fleet)]
    if group:
        subs.append(group_bundle(fleet, group))
    return subs


def classify(fleet, topic):
    """("root", version) / ("bundle", None) / ("timestamp", None) / ("status"|"report", device) / (None, None)."""
    base = "%s/%s/" % (PREFIX, fleet)
    if not topic.startswith(base):
        return None, None
    rest = topic[len(base):]
    if rest == "bundle" or rest.startswith("bundle/group/") or rest.startswith("bundle/bucket/"):
        return "bundle", None
    if rest == "timestamp":
        return "timestamp", None
    if rest.startswith("root/"):
        tail = rest[5:]
        if tail.isdigit() and len(tail) < 10:
            return "root", int(tail)
        return None, None
    if rest.startswith("status/"):
        return "status", rest[7:]
    if rest.startswith("report/"):
        return "report", rest[7:]
    return None, None
