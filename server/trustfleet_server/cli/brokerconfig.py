"""`trustfleet broker-config`: a Mosquitto configuration with per-identity passwords and ACL.

Only parses arguments and prints; the files are built by `brokerconfig`.
stdout carries the result (the files written, or JSON with --json); notes
for the operator go to stderr. Passwords are never printed: they are in
the secrets file (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from trustfleet_server import brokerconfig
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError

DEFAULT_BROKER_USER = "mosquitto"  # whom Mosquitto 2 switches to when started as root

DESCRIPTION = """\
Generate a Mosquitto 2.0 configuration for one fleet in DIR:

  mosquitto.conf  listener, allow_anonymous false, the dynamic security
                  plugin, persistence (retained documents survive a restart)
                  and limits fitting a 512 KiB document
  dynamic-security.json
                  what the broker enforces, default deny: devices subscribe
                  only to the fleet's documents, write only their own status
                  and report topics, and must connect with client id
                  tf-<fleet>-<device id>; the operator writes documents; the
                  server reads statuses/reports (only it may join the shared
                  group $share/trustfleet/...) and writes the timestamp and
                  rollout-wave topics; password hashes; mode 0600
  acl, passwords  the same rules and $7$ hashes in Mosquitto's file syntax,
                  for a file-based broker (not used by mosquitto.conf)
  secrets.json    each identity's username, password and role, mode 0600:
                  hand each device its own entry at provisioning
  data/           persistence directory

Running it again in the same DIR keeps the passwords of identities already
in secrets.json (so adding devices does not re-provision the fleet) and
drops identities no longer listed; --rotate gives everyone a new password.
Run the broker with `mosquitto -c DIR/mosquitto.conf`, and restart it after
any change: the plugin reads its file at start only (SIGHUP does not).
"""

EPILOG = """\
examples:
  trustfleet broker-config --fleet acme --out /etc/trustfleet/broker \\
      --devices-file devices.txt --listener 0.0.0.0:8883 \\
      --tls-cert /etc/ssl/broker.crt --tls-key /etc/ssl/broker.key --user mosquitto
  trustfleet broker-config --fleet lab --out ./broker --device pi-01 --device pi-02 --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "broker-config",
        help="generate a Mosquitto config, ACL and passwords for a fleet",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.fleet_argument(p, help="fleet name (letters, digits, '-', '_', '.')")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the files to")
    devices = p.add_mutually_exclusive_group()
    devices.add_argument("--device", action="append", default=[], metavar="ID",
                         help="a device id (its MQTT username); repeat for more")
    devices.add_argument("--devices-file", metavar="FILE",
                         help="one `ID` or `ID GROUP` per line ('#' starts a comment), the format "
                              "of `device add --ids-file`; the broker needs only the ID")
    p.add_argument("--operator", default=brokerconfig.DEFAULT_OPERATOR, metavar="NAME",
                   help="the operator's username (default: %(default)s)")
    p.add_argument("--server", default=brokerconfig.DEFAULT_SERVER, metavar="NAME",
                   help="the server's username (default: %(default)s)")
    p.add_argument("--listener", default="127.0.0.1", metavar="HOST[:PORT]",
                   help="address to listen on (default: 127.0.0.1, port 1883, or 8883 with TLS)")
    p.add_argument("--port", type=int, metavar="N", help="listener port (overrides --listener's)")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM) for TLS")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--no-persistence", action="store_true",
                   help="keep retained messages in memory only (lost on restart)")
    p.add_argument("--user", metavar="NAME",
                   help="system user Mosquitto runs as when started as root (default: its own"
                        " default, mosquitto); when run as root, the files Mosquitto reads and"
                        " data/ are given to it")
    p.add_argument("--dynsec-plugin", metavar="FILE",
                   help="path of mosquitto_dynamic_security.so (default: found under /usr/lib)")
    p.add_argument("--rotate", action="store_true",
                   help="new passwords for every identity, even those in an existing secrets.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _broker_user(user: str | None) -> tuple[str | None, str | None]:
    """Who gets the files Mosquitto reads, and a warning when nobody can.

    Only root hands files over. Started as root without a `user` line,
    Mosquitto 2 switches to `mosquitto`: that user, when this machine has it.
    """
    if os.geteuid() != 0:
        return None, None
    if user:
        return user, None
    import pwd

    try:
        pwd.getpwnam(DEFAULT_BROKER_USER)
    except KeyError:
        return None, (f"no user {DEFAULT_BROKER_USER!r} here, which Mosquitto started as root"
                      " switches to: it could not read its files; give --user NAME")
    return DEFAULT_BROKER_USER, None


def run(args: argparse.Namespace) -> int:
    host, port = brokerconfig.parse_listener(args.listener)
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port}: must be 1 to 65535")
        port = args.port
    if args.tls_cert and args.tls_key:
        brokerconfig.check_tls_files(args.tls_cert, args.tls_key)
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    devices = brokerconfig.read_devices_file(args.devices_file) if args.devices_file else args.device
    out = Path(args.out)
    brokerconfig.check_same_fleet(out / brokerconfig.SECRETS_NAME, args.fleet)
    previous = {} if args.rotate else brokerconfig.load_secrets(out / brokerconfig.SECRETS_NAME)
    cfg = brokerconfig.generate(
        args.fleet, devices, operator=args.operator, server=args.server, host=host, port=port,
        tls_cert=args.tls_cert, tls_key=args.tls_key, persistence=not args.no_persistence,
        user=args.user, previous=previous, dynsec_plugin=args.dynsec_plugin)
    owner, owner_note = _broker_user(args.user)
    result = brokerconfig.write(cfg, out, owner=owner)
    if owner_note:
        print(f"trustfleet: warning: {owner_note}", file=sys.stderr)
    elif owner and owner != "root":
        blocked = brokerconfig.unreachable_dir(out, owner)
        if blocked is not None:
            print(f"trustfleet: warning: Mosquitto started as root runs as {owner}, which cannot"
                  f" enter {blocked}: give --out a folder it can reach (or --user NAME)",
                  file=sys.stderr)
    if not Path(cfg.dynsec_plugin).is_file():
        print(f"trustfleet: warning: {cfg.dynsec_plugin} is not here: Mosquitto will not start"
              " without its dynamic security plugin; give --dynsec-plugin FILE", file=sys.stderr)
    if not cfg.tls_cert and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"trustfleet: warning: listener {host}:{port} has no TLS: passwords cross the"
              " network in clear; give --tls-cert and --tls-key", file=sys.stderr)
    dropped = sorted({name for name, _ in previous} - {i.username for i in cfg.identities})
    if args.json:
        doc = {
            "fleet": cfg.fleet,
            "url": cfg.url,
            **result,
            "identities": [{"username": i.username, "role": i.role} for i in cfg.identities],
            "devices": len(cfg.devices()),
            "kept_passwords": len(cfg.reused),
            "dropped": dropped,
        }
        print(json.dumps(doc, indent=2))
        return 0
    for name, path in result["files"].items():
        print(f"{name}: {path}")
    print(f"trustfleet: {len(cfg.devices())} device(s), operator {cfg.identity('operator').username!r},"
          f" server {cfg.identity('server').username!r}; {len(cfg.reused)} password(s) kept"
          + (f", dropped {', '.join(dropped)}" if dropped else "")
          + f"; start with: mosquitto -c {result['files']['config']}", file=sys.stderr)
    return 0
