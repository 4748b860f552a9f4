"""trustfleet on a MicroPython board (ESP32): the board's application and main loop.

Frozen into the firmware with the rest of the package (or in /lib from .mpy files), so its
code costs no GC heap on a frozen board; /main.py on the board (device/board/main.py) only
starts main(). Only main() touches `machine`, so the module imports anywhere.

What it trusts: the root and state under STATE_DIR (the agent verifies the
installed bundle again at every boot) and FIRMWARE_TIME. What it does not
trust: the RTC, NTP, the network, the broker, and every document in the
inbox until the agent has verified it.

Order on every boot (boot.py has made sure STATE_DIR exists):
1. Read CONFIG_FILE and build the Device over DirStorage(STATE_DIR). If the
   last boot left a bundle on trial (a crash, a power cut, or the watchdog
   firing during its health check), the agent reverts it here, before any
   network: like MCUboot's test swap, a store that did not confirm itself
   is not kept. A second failure of the same version marks it bad.
2. Start the watchdog: from now on a hang resets the board into step 1.
3. Wi-Fi, then NTP. NTP is unauthenticated: the agent's trusted time is
   max(clock, last authenticated time, FIRMWARE_TIME, persisted reading),
   and it persists a clock reading only within 400 days of authenticated time.
4. Loop: feed the watchdog; poll MQTT (config "mqtt": subscribe to the
   fleet's root, timestamp and bundle topics, stream bundles to flash,
   publish the retained status and the reports); every TICK_S the offline
   inbox, Wi-Fi and the deadlines.

Health check of a trial store (the runner hands over the bundle on trial
and the trusted time): a TLS connection to every configured endpoint, then
TrustStore.evaluate on what the TLS stack shows us (see check_endpoint for
what each side checks, and README.md). A refusal (evaluate's or mbedTLS's)
fails it and marks the version bad; an endpoint the network cannot reach
(DNS, refused, timeout: an OSError, no certificate judged) makes it
inconclusive (None): the agent retries and never marks the version bad.

Reports: one ReportQueue per board (device.reports), shared by the health
checks and the MQTT session, which publishes it on tf/<fleet>/report/<id>.
Where the port shows the chain (verify_callback), a pin failure's report is
TrustKit's, from evaluate. Where it shows only the leaf, the pins cannot be
checked and there is no pin report; what mbedTLS refuses is reported by the
revert alone.
"""

import hashlib
import json
import os
import time

from trustfleet_device import slots, trust, x509
from trustfleet_device.agent import Config
from trustfleet_device.errors import DecodeError, StorageError
from trustfleet_device.reports import ReportQueue
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage

STATE_DIR = "/trustfleet"
CONFIG_FILE = STATE_DIR + "/config.json"
INBOX_DIR = STATE_DIR + "/inbox"
FACTORY_ROOT = STATE_DIR + "/factory-root.cose"

# UTC build time of the firmware: trusted time never goes below it, whatever the RTC
# says. main.py passes the one `trustfleet device provision` wrote there.
FIRMWARE_TIME = 1767225600

WATCHDOG_MS = 120000  # longest gap between feeds: Wi-Fi, NTP or one endpoint's TLS
TICK_S = 60
IDLE_MS = 100  # MQTT poll interval when nothing arrives
TLS_TIMEOUT_S = 15
REPORTS_KEPT = 4  # pending pin-failure reports (each carries its chain as PEM)
WIFI_TIMEOUT_MS = 20000
KINDS = ("root", "bundle", "timestamp")  # inbox order: a new root before what it signs

LOG = []
_LOG_KEEP = 20
WDT = None

# Some ports count time.time() from 2000-01-01; the agent wants Unix time.
_EPOCH_OFFSET = 0 if time.gmtime(0)[0] == 1970 else 946684800


def log(*parts):
    line = " ".join([str(p) for p in parts])
    print("trustfleet:", line)
    LOG.append(line)
    if len(LOG) > _LOG_KEEP:
        LOG.pop(0)


def feed():
    if WDT is not None:
        WDT.feed()


def clock():
    """The RTC as Unix time; untrusted, the agent decides what time it is."""
    return int(time.time()) + _EPOCH_OFFSET


# ------------------------------------------------------------------ configuration


def load_config(path=CONFIG_FILE):
    """Read the device's JSON settings. Raises: OSError, ValueError."""
    with open(path) as f:
        cfg = json.loads(f.read())
    if type(cfg) is not dict:
        raise ValueError(path + ": expected a JSON object")
    return cfg


def endpoints(cfg, key="endpoints", port=443):
    """[(host, port)] from "host", "host:port" or {"host": ..., "port": ...} entries of cfg[key]."""
    out = []
    for e in cfg.get(key, ()):
        if type(e) is dict:
            out.append((e["host"], int(e.get("port", port))))
            continue
        i = e.find(":")
        out.append((e, port) if i < 0 else (e[:i], int(e[i + 1:])))
    return out


def broker_nodes(m):
    """[(host, port)]: the broker's nodes from config's "mqtt", tried in this order.

    "hosts" (a clustered broker: entries as in "endpoints", their port
    defaulting to "port") when given, else the one "host" and "port". Port 0
    is the client's default: 8883 with TLS, else 1883.
    """
    port = m.get("port", 0)
    return endpoints(m, "hosts", port) or [(m.get("host"), port)]


def agent_config(cfg):
    return Config(fleet=cfg.get("fleet"), firmware_time=FIRMWARE_TIME,
                  health_timeout=cfg.get("health_timeout", 120),
                  device_id=cfg.get("device_id"), managed=cfg.get("managed") is True)


def build_device(cfg, clock=clock):
    """The Device over STATE_DIR, initialised from FACTORY_ROOT on first boot. Raises: TrustfleetError, OSError."""
    storage = DirStorage(STATE_DIR)
    conf = agent_config(cfg)
    if not storage.exists(slots.ROOT):
        if storage.exists(slots.STATE):
            # Starting over from the factory root would put the rollback floor back to 0.
            raise StorageError(STATE_DIR + "/" + slots.ROOT + " is missing but " + slots.STATE
                               + " is there: not re-initialising (restore the root, or wipe "
                               + STATE_DIR + " to provision again)")
        with open(FACTORY_ROOT, "rb") as f:
            runner.initialise(storage, f.read(), conf)
        log("initialised from", FACTORY_ROOT)
    eps = endpoints(cfg)
    reports = ReportQueue(REPORTS_KEPT)

    def health(bundle, now):
        # The runner hands over the bundle on trial and the trusted time.
        return check_endpoints(eps, bundle, now, conf.managed, reports)

    device = runner.Device(storage, conf, health if eps else runner.no_endpoints, clock)
    device.reports = reports  # the session publishes what the health checks queue
    for r in device.boot_result.reports:
        log("boot:", r["event"], r["detail"])
    return device


# ------------------------------------------------------------------ health check


def load_full_anchors(ctx, native, bundle):
    """Give mbedTLS the bundle's full-certificate anchors; returns how many it took.

    One DER certificate per load_verify_locations call (the calls add up):
    MicroPython's own mbedTLS configuration (unix, rp2, stm32 ports) has no
    PEM parser, and a DER buffer holding several certificates loads only
    the first. An anchor mbedTLS cannot parse (a key type it lacks, such as
    Ed25519) is left out: it could not anchor a path there anyway. An anchor
    whose key the bundle distrusts is never loaded: where only the leaf can
    be seen, mbedTLS is the one that checks the rest of the path.
    """
    taken = 0
    for a in bundle.anchors:
        if a.der is None or _distrusted_anchor(a.der, bundle):
            continue
        try:
            if native:
                ctx.load_verify_locations(a.der)
            else:
                ctx.load_verify_locations(cadata=a.der)
        except ValueError:
            continue
        taken += 1
    return taken


def _distrusted_anchor(der, bundle):
    try:
        spki = x509.parse(der).spki
    except DecodeError:
        return False  # mbedTLS gets it and decides; it anchors nothing we could check
    return hashlib.sha256(spki).digest() in bundle.distrust


def _tls_context():
    # `tls` (MicroPython >= 1.23) is the C module behind `ssl`; its SSLContext
    # has verify_callback on mbedTLS ports, which the `ssl` wrapper hides.
    try:
        import tls
        return tls, tls.SSLContext(tls.PROTOCOL_TLS_CLIENT), True
    except ImportError:
        import ssl
        return ssl, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), False


def can_see_chain():
    """True when this port's TLS context hands each certificate to verify_callback."""
    return hasattr(_tls_context()[1], "verify_callback")


def tls_chain(host, port, bundle=None):
    """Connect to host:port; return (DER chain leaf first, complete).

    bundle None: CERT_OPTIONAL, mbedTLS only collects the chain (through
    verify_callback) and evaluate alone validates it. A bundle:
    CERT_REQUIRED against its full anchors (load_full_anchors), mbedTLS
    validates the path and the host name. `complete` is False when only
    the leaf could be seen (getpeercert). Either way mbedTLS checks the
    server's handshake signature with the leaf key. Raises: OSError
    (network), ValueError (mbedTLS refused; no anchor mbedTLS took; no
    certificate of the server to be seen on this port).
    """
    import socket

    mod, ctx, native = _tls_context()
    seen = {}
    if hasattr(ctx, "verify_callback"):
        def collect(cert, depth):
            seen[depth] = bytes(cert)  # a view into mbedTLS memory, valid during the call only
            return 0  # keep mbedTLS's own verdict
        ctx.verify_callback = collect
    if bundle is None:
        ctx.verify_mode = mod.CERT_OPTIONAL
    else:
        if not load_full_anchors(ctx, native, bundle):
            # mbedTLS would have nothing to check the path against: fail closed.
            raise ValueError(f"cannot check {host}: no full-certificate anchor for mbedTLS")
        ctx.verify_mode = mod.CERT_REQUIRED  # the ssl wrapper starts at CERT_NONE
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    sock = socket.socket()
    leaf = None
    try:
        sock.settimeout(TLS_TIMEOUT_S)
        sock.connect(addr)
        conn = ctx.wrap_socket(sock, server_hostname=host)
        # Ports built without MBEDTLS_SSL_KEEP_PEER_CERTIFICATE (unix) have no getpeercert.
        if not seen and hasattr(conn, "getpeercert"):
            leaf = conn.getpeercert(True)
        conn.close()
    finally:
        sock.close()
    chain = [seen[d] for d in sorted(seen)]
    if chain:
        return chain, True
    if not leaf:
        raise ValueError(f"cannot check {host}: this port shows none of its certificates")
    return [leaf], False


def _queue(reports, report, now, result=None, reason=None):
    """Queue a decision's TrustKit report (with the verdict judge_mbedtls reached, if given)."""
    if reports is None or report is None:
        return
    if result is not None:
        report["validation-result"] = result
        report["reason"] = reason
    reports.add(report, now)


def judge_mbedtls(ts, host, port, chain, complete, now, reports=None):
    """(ok, detail) when mbedTLS validated the path against the full anchors.

    evaluate still decides when it can; where it cannot (only the leaf was
    shown, or an algorithm the pure path lacks, such as P-384) the
    certificates we have are checked for validity at trusted time,
    distrust and, for a complete chain, the pins.
    """
    where = f"{host}:{port}"
    d = ts.evaluate(host, chain, now, port)
    if d.result != trust.UNSUPPORTED and (complete or d.result != trust.CHAIN_INVALID):
        _queue(reports, d.report, now)
        return d.accepted(), f"{where} {d.result}: {d.reason}"
    certs = []
    for raw in chain:
        try:
            certs.append(x509.parse(raw))
        except DecodeError as e:
            if not certs:
                return False, f"{where} leaf does not parse: {e}"
    leaf = certs[0]
    if now < leaf.not_before or now > leaf.not_after:
        return False, f"{where} leaf is not valid at trusted time {now}"
    hashes = [hashlib.sha256(c.spki).digest() for c in certs]
    for h in hashes:
        if h in ts.bundle.distrust:
            return False, f"{where} a key in the chain is distrusted by the bundle"
    what = "chain" if complete else "leaf only"
    ps = ts.pinset_for(trust.normalize_host(host) or host)
    if ps is None or now >= ps.expires:
        return True, f"{where} {what}: path checked by mbedTLS; not pinned or pins expired"
    if not complete:
        # Pins usually name an intermediate or the root, which we cannot see.
        return True, f"{where} leaf only: path checked by mbedTLS, pins not checked"
    for h in hashes:
        if h in ps.pins:
            return True, f"{where} chain: path checked by mbedTLS, pins match"
    if ps.mode == "report":
        _queue(reports, d.report, now, trust.REPORT_ONLY,
               "no key in the chain matches the pins for " + ps.domain + " (report-only)")
        return True, f"{where} chain: no key matches the pins (report-only)"
    why = "no key in the chain matches the pins for " + ps.domain
    _queue(reports, d.report, now, trust.PIN_MISMATCH, why)
    return False, f"{where} pin-mismatch: {why}"


def check_endpoint(ts, host, port, now, reports=None):
    """(ok, detail) for one endpoint with the trial store; a decision's report goes to reports.
    Raises: OSError (no certificate judged), ValueError (mbedTLS refused, or nothing to see)."""
    if can_see_chain():
        # evaluate alone: compact and full anchors, pins, distrust, trusted time.
        chain, complete = tls_chain(host, port, None)
        d = ts.evaluate(host, chain, now, port)
        if d.result != trust.UNSUPPORTED:
            _queue(reports, d.report, now)
            return d.accepted(), f"{host}:{port} {d.result}: {d.reason}"
        log(f"{host}:{port} {d.reason}; asking mbedTLS")
    chain, complete = tls_chain(host, port, ts.bundle)
    return judge_mbedtls(ts, host, port, chain, complete, now, reports)


def check_endpoints(eps, bundle, now, managed=False, reports=None):
    """The health check of a trial bundle. Returns (ok, detail): True when every endpoint
    passed, False when one was refused, else None (inconclusive) when one was unreachable."""
    ts = trust.TrustStore(bundle, None, managed)
    unreachable = []
    for host, port in eps:
        feed()
        try:
            ok, detail = check_endpoint(ts, host, port, now, reports)
        except OSError as e:  # DNS, refused, timeout, reset: no certificate was judged
            ok, detail = None, f"{host}:{port} unreachable: {e}"
        except ValueError as e:  # mbedTLS refused the chain, or nothing of it to be seen
            ok, detail = False, f"TLS to {host}:{port} failed: {e}"
        log(detail)
        if ok is None:
            unreachable.append(detail)
        elif not ok:
            return False, detail
    if unreachable:
        return None, "; ".join(unreachable)
    return True, f"{len(eps)} endpoint(s) passed with the new store"


# ------------------------------------------------------------------ documents


def log_result(name, r):
    for rep in r.reports:
        log(name + ":", rep["event"], rep["detail"])


def file_chunks(path, size=1024):
    """Yield a file's bytes in chunks."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(size)
            if not chunk:
                return
            yield chunk


def process_inbox(device, online):
    """Offer the documents copied into INBOX_DIR (offline installs); returns [(name, Result)].

    Files are named <kind>*.cose and offered roots first, then in name
    order. A bundle waits while the board is offline: its health check
    would fail and the version would be marked bad. A file is removed only
    after its offer returned, so a reset during a health check offers it
    again after the boot-time revert (the agent allows one retry).
    """
    try:
        names = sorted(os.listdir(INBOX_DIR))
    except OSError:
        return []
    results = []
    for kind in KINDS:
        if kind == "bundle" and not online:
            continue
        for name in names:
            if not (name.startswith(kind) and name.endswith(".cose")):
                continue
            path = INBOX_DIR + "/" + name
            if kind == "bundle":
                # Streamed into the inactive slot and verified from flash: a
                # 150-root bundle never sits in RAM whole.
                r = device.receive_bundle(file_chunks(path))
            else:
                with open(path, "rb") as f:
                    raw = f.read()
                r = device.offer(kind, raw)
            os.remove(path)
            log_result(name, r)
            results.append((name, r))
    return results


# ------------------------------------------------------------------ MQTT


def broker_tls(m, device):
    """The TLS context for the broker, or None for plain MQTT ("tls" false, or without "tls"
    the (first) node's port is not 8883; every node alike: no failover to plain TCP).

    Anchors: the CA certificate the provisioning wrote ("ca": a DER file),
    and the full anchors of the installed bundle, so a bundle can bring the
    CA of a renewed broker certificate. A distrusted one is never loaded.
    mbedTLS checks the path and the host name (CERT_REQUIRED). Raises:
    OSError (the CA file), ValueError (no anchor at all: fail closed).
    """
    if not m.get("tls", broker_nodes(m)[0][1] == 8883):
        return None
    mod, ctx, native = _tls_context()
    bundle = device.active_bundle()
    taken = 0
    if m.get("ca"):
        with open(m["ca"], "rb") as f:
            der = f.read()
        if bundle is None or not _distrusted_anchor(der, bundle):
            if native:
                ctx.load_verify_locations(der)
            else:
                ctx.load_verify_locations(cadata=der)
            taken += 1
    if bundle is not None:
        taken += load_full_anchors(ctx, native, bundle)
    if not taken:
        raise ValueError("no anchor to check the broker's certificate with")
    ctx.verify_mode = mod.CERT_REQUIRED
    return ctx


def make_link(device, cfg):
    """(session, transport): the board's MQTT link (transports/mqtt.py) from config's "mqtt".

    The client id is tf-<fleet>-<device id>, the one broker-config lets this
    device's credentials use. Each connect builds a new TLS context, so it
    trusts what the store holds then. Bundles are streamed into the
    inactive slot in 1 KiB pieces; with several broker nodes ("hosts") a
    failed connect goes on to the next node at once, and the capped,
    jittered backoff comes after a whole round failed or a connection was
    lost (Transport); every node is TLS or none is ("tls" holds for all),
    each checked under its own host name; the last will marks the device
    offline. "subscribe_qos": 0 for a NATS cluster (docs/operations.md).
    """
    from trustfleet_device import session
    from trustfleet_device.transports import mqtt

    m = cfg["mqtt"]
    fleet, device_id = cfg["fleet"], cfg["device_id"]
    sess = session.Session(device, fleet, device_id, cfg.get("group"),
                           reports=getattr(device, "reports", None))
    cid = "tf-" + fleet + "-" + device_id

    def factory(host, port):
        def client():
            log("mqtt: connecting to", host, port)
            return mqtt.MQTTClient(cid, host, port, m.get("user"), m.get("password"),
                                   keepalive=m.get("keepalive", 60), ssl=broker_tls(m, device),
                                   timeout_s=TLS_TIMEOUT_S)
        return client

    nodes = [factory(h, p) for h, p in broker_nodes(m)]
    return sess, mqtt.Transport(sess, nodes, time.ticks_ms, time.sleep_ms, log=log,
                                subscribe_qos=m.get("subscribe_qos", 1))


# ------------------------------------------------------------------ network


def wlan():
    import network
    return network.WLAN(network.STA_IF)


def connect_wifi(cfg):
    """Join the configured network; True when connected."""
    w = cfg.get("wifi")
    if not w:
        # No Wi-Fi settings: online only if the interface already is (a port
        # whose network is up by other means, such as the PC run).
        return wlan().isconnected()
    sta = wlan()
    sta.active(True)
    if not sta.isconnected():
        sta.connect(w["ssid"], w.get("password", ""))
        t0 = time.ticks_ms()
        while not sta.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < WIFI_TIMEOUT_MS:
            feed()
            time.sleep_ms(250)
    return sta.isconnected()


def sync_time(cfg):
    """Set the RTC from NTP (unauthenticated: see the trusted-time rule above)."""
    import ntptime
    if cfg.get("ntp_host"):
        ntptime.host = cfg["ntp_host"]
    try:
        ntptime.settime()
    except OSError as e:
        log("NTP failed:", e)
        return False
    return True


# ------------------------------------------------------------------ main loop


def step(device, cfg, online, link=None):
    """Every TICK_S: the inbox, then deadlines and clock bookkeeping (with a link, its poll
    ticks the session instead, and what the inbox did is published as status and reports)."""
    results = process_inbox(device, online)
    if link is None:
        log_result("tick", device.tick())
        return
    sess, transport = link
    for _, r in results:
        transport.send(sess.after(r))


def main(firmware_time=None):
    """The board's life: boot, then the loop, forever. `firmware_time`: FIRMWARE_TIME."""
    global WDT, FIRMWARE_TIME
    if firmware_time is not None:
        FIRMWARE_TIME = firmware_time
    cfg = load_config()
    # Before the watchdog: the boot-time revert needs no network and cannot
    # hang; a store that cannot load is for a person at the REPL, not for a
    # reset loop.
    device = build_device(cfg)
    import machine

    WDT = machine.WDT(timeout=cfg.get("watchdog_ms", WATCHDOG_MS))
    online = connect_wifi(cfg)
    if online:
        sync_time(cfg)
    log("status", json.dumps(device.status()))
    link = make_link(device, cfg) if cfg.get("mqtt") else None
    next_step = time.ticks_ms()
    while True:
        feed()
        if time.ticks_diff(time.ticks_ms(), next_step) >= 0:
            online = (online and wlan().isconnected()) or connect_wifi(cfg)
            step(device, cfg, online, link if online else None)
            next_step = time.ticks_add(time.ticks_ms(), TICK_S * 1000)
        if link is not None and online:
            if not link[1].poll():
                time.sleep_ms(IDLE_MS)
        else:
            time.sleep_ms(1000)
