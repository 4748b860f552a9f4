"""The JSON output convention both command lines follow (README, "Command-line conventions").

One JSON object per output; a time is an RFC 3339 UTC string with the epoch seconds beside it as
`<name>_epoch`; an error is {"error": {"exit", "kind", "message"}} on stdout when the command line
asked for --json, parser errors included. The server imports this module too: imports point from
server to device.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from typing import Any


def iso(epoch: int | float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def with_times(value: Any, keys: Iterable[str], zero_is_never: bool = False) -> Any:
    """`value` with every field named in `keys` that holds epoch seconds written as RFC 3339 and the
    seconds kept beside it as `<name>_epoch`, in nested objects and lists too. `zero_is_never`:
    0 means "never" (null)."""
    keys = frozenset(keys)

    def convert(item: Any) -> Any:
        if isinstance(item, dict):
            out: dict[str, Any] = {}
            for key, sub in item.items():
                if key in keys and isinstance(sub, int | float) and not isinstance(sub, bool):
                    out[key] = None if zero_is_never and sub <= 0 else iso(sub)
                    out[f"{key}_epoch"] = int(sub)
                else:
                    out[key] = convert(sub)
            return out
        if isinstance(item, list | tuple):
            return [convert(sub) for sub in item]
        return item

    return convert(value)


def error_object(code: int, kind: str, message: str) -> str:
    """The JSON error line: kind is "usage", "refused" or "interrupted"."""
    return json.dumps({"error": {"exit": code, "kind": kind, "message": message}})


class JsonErrorParser(argparse.ArgumentParser):
    """argparse, with a usage error also printed as the JSON error object when `json_errors` is set
    (the command line has --json). Subparsers inherit the class."""

    json_errors = False

    def error(self, message: str):  # type: ignore[override]
        if JsonErrorParser.json_errors:
            print(error_object(2, "usage", f"{self.prog}: {message}"), flush=True)
        super().error(message)


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for --json (before a `--`)."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)
