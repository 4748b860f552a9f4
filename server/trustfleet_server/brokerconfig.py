"""Mosquitto configuration for one fleet: config, ACL, password file and secrets.

The broker is untrusted for content (every document verifies itself) but it
is still the fleet's access control: only the operator and the server may
write documents, and a device may write nothing but its own status and
reports. `generate()` builds the texts; `write()` puts them in a directory:

    mosquitto.conf   listener, allow_anonymous false, the dynamic security
                     plugin, persistence (retained documents survive a restart), limits
    dynamic-security.json
                     what Mosquitto enforces: every identity's password hash,
                     each device's one client id, and who may publish and
                     subscribe to what (default: nothing), mode 0600
    acl              the same rules in Mosquitto's acl_file syntax, and
    passwords        one PBKDF2-SHA512 ($7$) hash per identity, mode 0600: for
                     a file-based broker (the embedded one reads `passwords`)
    secrets.json     every identity's username and password, mode 0600, for
                     provisioning devices and configuring the server
    data/            the persistence directory, mode 0700

Identities are MQTT usernames: each device's id, one operator identity
(`trustfleet publish`) and one server identity (`trustfleet serve`). ACL
`pattern` rules use %u, the authenticated username, never the client id,
which any client may choose. Mosquitto 2 warns about a `pattern` with
neither %u nor %c, and applies `topic` lines above the first `user` line
to anonymous clients only, so each device reads the documents through
`topic` lines under its own `user` line.

Started as root, Mosquitto switches to its `user` (default `mosquitto`)
before it reads the password file and the plugin's file and opens its
database: `write` gives those to that user, and `unreachable_dir` says
when that user cannot even enter the folder.

Why the plugin and not password_file/acl_file (checked against Mosquitto
2.0.11 in tests/test_broker_identity.py): the acl_file never checks a
SUBSCRIBE (not even `topic deny`), so a device could join the server's
shared group `$share/trustfleet/...`, take its round-robin turn and have
the message dropped by the read check, swallowing other devices' statuses;
and nothing there ties a client id to a username, so a device could connect
as `tf-<fleet>-<other>` and knock that device off. The dynamic security
plugin checks every SUBSCRIBE against the full filter (`$share/<group>/`
included) with default deny, and refuses a device whose client id is not
its own (DEVICE_CLIENT_ID). The server and operator may use any client id,
so several `serve` workers keep their own stable ids.

Passwords are 24 random bytes (URL-safe base64), so the 101 PBKDF2
iterations that `mosquitto_passwd` uses cost nothing in security and keep a
reconnect storm of a large fleet cheap for the broker.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trustfleet_device import topics
from trustfleet_device._cpython.files import write_atomic
from trustfleet_device.limits import DEFAULT as DEFAULT_LIMITS
from trustfleet_server import keys, x509util
from trustfleet_server.errors import UsageError

DEVICE = "device"
OPERATOR = "operator"
SERVER = "server"

DEFAULT_OPERATOR = "trustfleet-operator"
DEFAULT_SERVER = "trustfleet-server"

CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"
PASSWORDS_NAME = "passwords"
SECRETS_NAME = "secrets.json"
DATA_NAME = "data"
DYNSEC_NAME = "dynamic-security.json"

# The server's shared-subscription group (serve/server.py SHARE_GROUP): only
# the server identity may subscribe through it.
SHARE_GROUP = "trustfleet"
# serve fences a flooding device by disabling it here (serve/server.py, _fence_step). The
# plugin has no narrower grant: whoever holds the server's password administers the broker.
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"
DEVICE_CLIENT_ID = "tf-{fleet}-{device}"  # what the agent uses (trustfleet_pi/paho.py)
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"  # Debian amd64
DYNSEC_PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                       "/usr/local/lib/mosquitto_dynamic_security.so",
                       "/usr/local/lib/*/mosquitto_dynamic_security.so",
                       "/usr/lib/mosquitto/mosquitto_dynamic_security.so")

# A signed document is at most limits.max_document bytes (512 KiB); the
# packet adds the topic and a few header bytes, so allow 8 KiB on top.
# Only max_packet_size, not the deprecated message_size_limit: for an MQTT 5
# QoS 1 publish over the latter, Mosquitto 2.0.11 answers PUBACK 0x95, a code
# PUBACK may not carry, which paho 2.2 takes as a malformed packet and then
# reconnects and resends forever. Over max_packet_size the publisher is
# disconnected ("Packet too large" on MQTT 5), and MQTT 5 clients are told the
# limit in CONNACK.
MAX_DOCUMENT = DEFAULT_LIMITS.max_document
MAX_PACKET_SIZE = MAX_DOCUMENT + 8 * 1024

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
SALT_BYTES = 12
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Identity:
    username: str
    password: str
    role: str  # DEVICE, OPERATOR or SERVER


@dataclass
class BrokerConfig:
    """Everything `write()` puts on disk; build it with `generate()`."""

    fleet: str
    identities: list[Identity]
    host: str = "127.0.0.1"
    port: int = 1883
    tls_cert: str | None = None
    tls_key: str | None = None
    persistence: bool = True
    user: str | None = None
    reused: list[str] = field(default_factory=list)
    dynsec_plugin: str = DYNSEC_PLUGIN

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_cert else 'mqtt'}://{self.host}:{self.port}"

    def identity(self, role: str) -> Identity:
        return next(i for i in self.identities if i.role == role)

    def devices(self) -> list[Identity]:
        return [i for i in self.identities if i.role == DEVICE]


# --------------------------------------------------------------------------- passwords


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2.0's password-file hash: $7$<iterations>$<b64 salt>$<b64 PBKDF2-HMAC-SHA512>."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if `password` matches a $7$ line's hash (as Mosquitto checks it)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt, int(parts[2])), hashed)


def write_password_file(path: Path, identities: list[Identity], tool: str | None = "auto") -> str:
    """Write Mosquitto's password file (mode 0600). Returns "mosquitto_passwd" or "builtin".

    With tool "auto" the file is hashed by `mosquitto_passwd -U` when it is on
    PATH (one call for the whole fleet); with None, or when it is missing,
    the same $7$ hashes are computed here.
    """
    if tool == "auto":
        tool = shutil.which("mosquitto_passwd")
    if tool:
        # Plain "user:password" lines, 0600, hashed in place by -U.
        plain = "".join(f"{i.username}:{i.password}\n" for i in identities)
        write_atomic(path, plain.encode(), mode=0o600)
        try:
            run = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            path.unlink(missing_ok=True)
            raise UsageError(f"{tool} -U {path}: {exc}") from None
        if run.returncode != 0:
            path.unlink(missing_ok=True)
            raise UsageError(f"{tool} -U {path} failed: {(run.stderr or run.stdout).strip()}")
        os.chmod(path, 0o600)
        return "mosquitto_passwd"
    text = "".join(f"{i.username}:{hash_password(i.password)}\n" for i in identities)
    write_atomic(path, text.encode(), mode=0o600)
    return "builtin"


# --------------------------------------------------------------------------- texts


def find_dynsec_plugin() -> str:
    """The installed mosquitto_dynamic_security.so, or the Debian amd64 path when none is found."""
    import glob

    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return DYNSEC_PLUGIN


def device_client_id(fleet: str, device: str) -> str:
    """The one MQTT client id the broker accepts from `device`."""
    return DEVICE_CLIENT_ID.format(fleet=fleet, device=device)


def _dynsec_client(identity: Identity, roles: list[str], clientid: str | None) -> dict:
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", identity.password.encode(), salt, PBKDF2_ITERATIONS)
    client = {"username": identity.username, "textdescription": identity.role,
              "password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
              "iterations": PBKDF2_ITERATIONS, "roles": [{"rolename": r} for r in roles]}
    if clientid is not None:
        client["clientid"] = clientid
    return client


def _acls(kind: str, topic_filters: list[str]) -> list[dict]:
    return [{"acltype": kind, "topic": t, "allow": True} for t in topic_filters]


def dynsec_doc(cfg: BrokerConfig) -> dict:
    """The dynamic security plugin's configuration: the same rules as `acl_text`, enforced on SUBSCRIBE.

    Default deny for publishing and subscribing; receiving is allowed, so a
    client gets exactly what it was allowed to subscribe to. Devices get a
    role each (their own status and report topics) and a bound client id.
    """
    f = cfg.fleet
    base = f"{topics.PREFIX}/{f}"
    docs = document_topics(f)
    roles = [
        {"rolename": OPERATOR, "acls": _acls("publishClientSend", docs) + _acls("subscribePattern", [f"{base}/#"])},
        {"rolename": SERVER, "acls": _acls("publishClientSend", [
            topics.timestamp(f), topics.bundle(f), f"{base}/bundle/group/+", f"{base}/bundle/bucket/+",
            DYNSEC_CONTROL])
            + _acls("subscribePattern", [f"{base}/#", f"$share/{SHARE_GROUP}/{base}/#",
                                         DYNSEC_CONTROL + "/response"])
            # The plugin's answers: $-topics are not covered by the default receive access.
            + _acls("publishClientReceive", [DYNSEC_CONTROL + "/response"])},
    ]
    clients = []
    for i in cfg.identities:
        if i.role == DEVICE:
            role = f"{DEVICE}-{i.username}"
            roles.append({"rolename": role, "acls": _acls("subscribePattern", docs) + _acls(
                "publishClientSend", [topics.status(f, i.username), topics.report(f, i.username)])})
            clients.append(_dynsec_client(i, [role], device_client_id(f, i.username)))
        else:
            clients.append(_dynsec_client(i, [i.role], None))
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def document_topics(fleet: str) -> list[str]:
    """The topic filters of the fleet's signed documents (docs/topics.md)."""
    base = f"{topics.PREFIX}/{fleet}"
    return [f"{base}/root/+", f"{base}/bundle", f"{base}/bundle/#", f"{base}/timestamp"]


def acl_text(fleet: str, operator: str, server: str, devices: Iterable[str] = ()) -> str:
    """The Mosquitto ACL file for one fleet (what `dynsec_doc` enforces, in acl_file syntax).

    Anonymous clients get nothing (and are refused by allow_anonymous false).
    An acl_file checks reads only on delivery, never the SUBSCRIBE, so on its
    own it cannot keep a device out of the server's `$share` group, and it
    cannot bind client ids: the generated mosquitto.conf uses the plugin.
    """
    base = f"{topics.PREFIX}/{fleet}"
    docs = document_topics(fleet)
    lines = [
        f"# trustfleet broker ACL for fleet {fleet!r} (generated by `trustfleet broker-config`).",
        "# Mosquitto: `topic` lines apply to the `user` above them; `pattern` lines apply to",
        "# every authenticated user, %u being the username. Nothing is granted to anonymous.",
        "",
        "# The operator (trustfleet publish) writes the signed documents and reads the fleet.",
        f"user {operator}",
        *(f"topic write {t}" for t in docs),
        f"topic read {base}/#",
        "",
        "# The server (trustfleet serve) reads statuses, reports and documents (also through",
        "# $share/... shared subscriptions) and writes the timestamp and the rollout waves,",
        "# the last of which is the fleet-wide bundle topic. Documents verify themselves:",
        "# this identity can delay or withhold them, never forge them.",
        f"user {server}",
        f"topic read {base}/#",
        f"topic write {topics.timestamp(fleet)}",
        f"topic write {topics.bundle(fleet)}",
        f"topic write {base}/bundle/group/+",
        f"topic write {base}/bundle/bucket/+",
        "",
        "# Devices (username = device id) write only their own status (retained, last",
        "# will) and reports; each reads the documents under its own `user` line below.",
        f"pattern write {base}/status/%u",
        f"pattern write {base}/report/%u",
        "",
    ]
    for device in devices:
        lines += [f"user {device}", *(f"topic read {t}" for t in docs), ""]
    return "\n".join(lines)


def conf_text(cfg: BrokerConfig, out: Path) -> str:
    """mosquitto.conf with absolute paths into `out`."""
    out = out.resolve()
    lines = [
        f"# Mosquitto 2.0 configuration for trustfleet fleet {cfg.fleet!r}",
        "# (generated by `trustfleet broker-config`; regenerate rather than edit).",
        "",
        "per_listener_settings false",
        "allow_anonymous false",
        "",
        "# Passwords, client ids bound to devices and every publish/subscribe rule",
        f"# (default deny) are in {DYNSEC_NAME}. Mosquitto reads it at start: restart",
        "# the broker after adding devices (a SIGHUP does not reload it).",
        f"plugin {cfg.dynsec_plugin}",
        f"plugin_opt_config_file {out / DYNSEC_NAME}",
        "",
        "# Retained documents (roots, bundles, timestamp) and statuses survive a restart.",
        f"persistence {'true' if cfg.persistence else 'false'}",
    ]
    if cfg.persistence:
        lines += [
            f"persistence_location {out / DATA_NAME}/",
            "autosave_interval 60",
            "persistent_client_expiration 14d",
        ]
    lines += [
        "",
        "# Limits: one signed document is at most 512 KiB.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "max_inflight_messages 20",
        "max_queued_messages 1000",
        "max_keepalive 3600",
        "retain_available true",
        "",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if cfg.user:
        lines += ["", "# When started as root, run as this user.", f"user {cfg.user}"]
    lines += ["", f"listener {cfg.port} {cfg.host}"]
    if cfg.tls_cert:
        lines += [
            f"certfile {Path(cfg.tls_cert).resolve()}",
            f"keyfile {Path(cfg.tls_key).resolve()}",  # type: ignore[arg-type]
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def secrets_json(cfg: BrokerConfig) -> str:
    doc = {
        "fleet": cfg.fleet,
        "broker": cfg.url,
        "identities": [{"username": i.username, "password": i.password, "role": i.role}
                       for i in cfg.identities],
    }
    return json.dumps(doc, indent=2) + "\n"


# --------------------------------------------------------------------------- generate / write


def parse_listener(value: str) -> tuple[str, int | None]:
    """"HOST:PORT", "HOST" or "[v6]:PORT". Raises: UsageError."""
    host, port = value, None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"--listener {value!r}: expected [ADDRESS]:PORT")
        rest = rest[1:]
    elif value.count(":") == 1:
        host, rest = value.split(":")
    else:
        rest = ""
    if rest:
        if not rest.isdigit() or not 0 < int(rest) < 65536:
            raise UsageError(f"--listener {value!r}: bad port")
        port = int(rest)
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"--listener {value!r}: no host")
    return host, port


def read_ids_file(path: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """Lines "ID" or "ID GROUP"; blank lines and '#' comments skipped. Raises: UsageError."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file; expected `ID` or `ID GROUP` lines") from None
    for n, raw in enumerate(lines, 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise UsageError(f"{path}:{n}: expected `ID` or `ID GROUP`, got {raw.strip()!r}")
        out.append((words[0], words[1] if len(words) == 2 else None))
    return out


def check_tls_files(cert: str, key: str) -> None:
    """Refuse a --tls-cert that holds no certificate, a --tls-key that holds no private key, or a
    pair that does not match, before anything is written: Mosquitto would fail only at start.
    Raises: UsageError naming the file."""
    for path in (cert, key):
        if Path(path).is_dir():
            raise UsageError(f"{path}: is a folder; give a PEM file")
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    chain = x509util.load_certificates(cert)
    material = keys.inspect_key_file(key)
    if material.kind != keys.KIND_PRIVATE:
        raise UsageError(f"{key}: expected the certificate's private key, found a {material.kind}")
    if material.locked:
        raise UsageError(f"{key}: the key is encrypted; Mosquitto needs it unencrypted")
    if keys.spki_der(material.public_key) != keys.spki_der(chain[0].public_key()):
        raise UsageError(f"{key}: not the private key of the first certificate in {cert}")


def read_devices_file(path: str) -> list[str]:
    """The device ids of `device add --ids-file`'s format (read_ids_file; the broker needs no
    group). Raises: UsageError."""
    return [device for device, _group in read_ids_file(path)]


def check_same_fleet(path: Path, fleet: str) -> None:
    """Refuse to rewrite a broker folder made for another fleet: a typo in --fleet would drop its
    devices' identities. Raises: UsageError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no folder yet, or load_secrets says what is wrong with it
    old = doc.get("fleet") if isinstance(doc, dict) else None
    if isinstance(old, str) and old != fleet:
        raise UsageError(f"{path} is fleet {old!r}, not {fleet!r}: give that fleet's name, or another --out")


def load_secrets(path: Path) -> dict[tuple[str, str], str]:
    """(username, role) -> password from an earlier secrets.json; {} if there is none."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {(i["username"], i["role"]): i["password"] for i in doc["identities"]}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a secrets file written by broker-config ({exc})") from None


def generate(fleet: str, devices: list[str], *, operator: str = DEFAULT_OPERATOR,
             server: str = DEFAULT_SERVER, host: str = "127.0.0.1", port: int | None = None,
             tls_cert: str | None = None, tls_key: str | None = None, persistence: bool = True,
             user: str | None = None, previous: dict[tuple[str, str], str] | None = None,
             dynsec_plugin: str | None = None) -> BrokerConfig:
    """Check the names and pick a password per identity (reusing `previous` ones).

    Raises: UsageError for a bad or duplicate name or a half-given TLS pair.
    """
    try:
        topics.check_name(fleet, "fleet")
        topics.check_name(operator, "operator name")
        topics.check_name(server, "server name")
        for d in devices:
            topics.check_name(d, "device id")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if operator == server:
        raise UsageError(f"operator and server need different names (both {operator!r})")
    seen: set[str] = set()
    for d in devices:
        if d in (operator, server):
            raise UsageError(f"device id {d!r} is the operator's or the server's username")
        if d in seen:
            raise UsageError(f"device id {d!r} is listed twice")
        seen.add(d)
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if port is None:
        port = 8883 if tls_cert else 1883
    previous = previous or {}
    identities, reused = [], []
    for name, role in [(operator, OPERATOR), (server, SERVER), *((d, DEVICE) for d in devices)]:
        password = previous.get((name, role))
        if password:
            reused.append(name)
        identities.append(Identity(name, password or new_password(), role))
    return BrokerConfig(fleet, identities, host, port, tls_cert, tls_key, persistence, user, reused,
                        dynsec_plugin or find_dynsec_plugin())


def write_identities(cfg: BrokerConfig, out: str | os.PathLike[str], *, passwd_tool: str | None = "auto",
                     broker_url: str | None = None) -> tuple[dict[str, str], str]:
    """Write secrets.json, the dynamic security file, the password file and the ACL; leave mosquitto.conf alone.

    Used by `write` and by `trustfleet device add`, which changes identities
    without regenerating the broker's configuration. `broker_url` replaces
    the listener recorded in secrets.json (a BrokerConfig rebuilt from
    secrets.json does not know it). The password file keeps its owner (the
    broker's user, when broker-config gave it away as root).
    """
    out = Path(out)
    files = {"secrets": out / SECRETS_NAME, "passwords": out / PASSWORDS_NAME, "acl": out / ACL_NAME,
             "dynsec": out / DYNSEC_NAME}
    text = secrets_json(cfg)
    if broker_url is not None:
        doc = json.loads(text)
        doc["broker"] = broker_url
        text = json.dumps(doc, indent=2) + "\n"
    write_atomic(files["secrets"], text.encode(), mode=0o600)
    owners = {}
    for name in ("passwords", "dynsec"):
        with contextlib.suppress(FileNotFoundError):
            st = files[name].stat()
            owners[name] = (st.st_uid, st.st_gid)
    hashed_by = write_password_file(files["passwords"], cfg.identities, passwd_tool)
    write_atomic(files["dynsec"], (json.dumps(dynsec_doc(cfg), indent=2) + "\n").encode(), mode=0o600)
    for name, owner in owners.items():
        if os.geteuid() == 0 and owner != (0, 0):
            os.chown(files[name], *owner)
    write_atomic(files["acl"], acl_text(cfg.fleet, cfg.identity(OPERATOR).username,
                                        cfg.identity(SERVER).username,
                                        [i.username for i in cfg.devices()]).encode(), mode=0o644)
    return {k: str(v) for k, v in files.items()}, hashed_by


def write(cfg: BrokerConfig, out: str | os.PathLike[str], *, passwd_tool: str | None = "auto",
          owner: str | None = None) -> dict:
    """Write the files into `out` (created mode 0700). Returns their paths and how they were hashed.

    Run as root, the password file, the plugin's file and data/ go to `owner`
    (default: cfg.user), the user Mosquitto switches to; so does the group of
    `out` (mode 0750) when `out` is this tool's: made now, or holding its
    secrets.json. A folder of the user's keeps its owner and mode.
    """
    out = Path(out)
    ours = not out.exists() or (out / SECRETS_NAME).is_file()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = {
        "config": out / CONF_NAME,
        "acl": out / ACL_NAME,
        "passwords": out / PASSWORDS_NAME,
        "secrets": out / SECRETS_NAME,
        "dynsec": out / DYNSEC_NAME,
    }
    _, hashed_by = write_identities(cfg, out, passwd_tool=passwd_tool)
    write_atomic(files["config"], conf_text(cfg, out).encode(), mode=0o644)
    owned = [files["passwords"], files["dynsec"]]
    if cfg.persistence:
        data = out / DATA_NAME
        data.mkdir(mode=0o700, exist_ok=True)
        files["data"] = data
        owned.append(data)
    owner = owner or cfg.user
    if owner and os.geteuid() == 0 and owner != "root":
        # Mosquitto drops to `user` before it reads the password file and
        # writes its database, so those must be that user's.
        import pwd

        try:
            entry = pwd.getpwnam(owner)
        except KeyError:
            raise UsageError(f"--user {owner!r}: no such user") from None
        for p in owned:
            os.chown(p, entry.pw_uid, entry.pw_gid)
        if ours:
            # The broker's group may enter the directory; secrets.json stays 0600 root.
            os.chown(out, -1, entry.pw_gid)
            os.chmod(out, 0o750)
    return {"files": {k: str(v) for k, v in files.items()}, "hashed_by": hashed_by}


def unreachable_dir(path: str | os.PathLike[str], user: str) -> Path | None:
    """The first folder on the way to `path` (itself included) that `user` may not enter."""
    import pwd

    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    target = Path(path).resolve()
    for folder in [*reversed(target.parents), target]:
        st = folder.stat()
        if st.st_uid == entry.pw_uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return folder
    return None
