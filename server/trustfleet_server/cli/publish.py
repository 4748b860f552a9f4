"""`trustfleet publish`: verify signed documents against the root chain, then publish them retained."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from trustfleet_server import documents, mqtturl, publish
from trustfleet_server.cli import common
from trustfleet_server.fleet import db as fleetdb

PUBLISH_EPILOG = """\
examples:
  trustfleet publish --broker mqtt://broker:1883 --root root.cose root.cose bundle-v7.cose
  trustfleet publish --broker mqtts://ops@broker --root root.cose --to group:canary bundle-v8.cose
  trustfleet publish --broker mqtt://broker --root root.cose root-v2.cose   # a rotation: v2 must follow v1

Topics (docs/topics.md): roots on tf/<fleet>/root/<version>, bundles on
tf/<fleet>/bundle (or .../bundle/group/<name>, .../bundle/bucket/<nn>),
timestamps on tf/<fleet>/timestamp; all retained, QoS 1.
Staged delivery is `trustfleet rollout start`; publish --to fleet reaches everyone at once.
The broker password may come from $TRUSTFLEET_MQTT_PASSWORD.
"""

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish signed roots, bundles and timestamps to the broker",
                       description="Publish signed documents, retained at QoS 1, after verifying each "
                                   "against the root chain exactly as a device would. A root must be "
                                   "one of the --root chain or exactly the next version; a bundle "
                                   "must be signed by a threshold of bundle keys and unexpired.",
                       epilog=PUBLISH_EPILOG, formatter_class=common.RAW)
    common.broker_argument(p)
    common.root_argument(p)
    p.add_argument("--to", default="fleet", metavar="TARGET",
                   help="where bundles go: fleet (default), group:NAME or bucket:N (0-99)")
    p.add_argument("--db", metavar="PATH_OR_URL",
                   help="fleet store: record the bundle versions published, the history rollouts "
                        "and device statuses are checked against, and each document in the audit "
                        "trail (`trustfleet audit`)")
    common.configured(p, "db", "db", "--db", False, lambda s: s.as_list()[0])
    p.add_argument("--json", action="store_true", help="print what was published as JSON")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="signed root, bundle or timestamp")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    url = mqtturl.parse(args.broker)
    plan = publish.plan_publish(args.root, args.files, args.to, int(time.time()))
    from trustfleet_server.serve.link import publish_retained

    # The store opens before anything is published: a typo in --db publishes nothing.
    with fleetdb.open_db(args.db) if args.db else contextlib.nullcontext() as db:
        protocol = publish_retained(url, [(p["topic"], p["raw"]) for p in plan])
        if db is not None:
            publish.record_history(db, documents.load_root_chain(args.root).fleet, plan, int(time.time()))
    for p in plan:
        del p["raw"]
    if args.json:
        common.print_json({"broker": str(url), "protocol": protocol, "published": plan})
        return 0
    for p in plan:
        what = f"{p['type']} v{p['version']}" if "version" in p else f"timestamp {p['time']}"
        print(f"published {what} -> {p['topic']} ({p['bytes']} bytes, retained, QoS 1)")
    return 0
