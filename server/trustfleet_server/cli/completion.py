"""`trustfleet completion bash|zsh`: the shell completion script, generated from the argument parser.

shtab writes the script from the same parser `trustfleet` runs, so commands and
options never drift from what the completion offers. Options and positionals
that take a path complete file names.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

SHELLS = ("bash", "zsh")

EPILOG = """\
install:
  bash  source <(trustfleet completion bash)        # add to ~/.bashrc to keep it
        trustfleet completion bash | sudo tee /etc/bash_completion.d/trustfleet
  zsh   trustfleet completion zsh > "${fpath[1]}/_trustfleet"   # then: compinit
"""


def register(sub: argparse._SubParsersAction, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """`build_parser` makes the whole `trustfleet` parser (passed in: a group never imports cli/__init__)."""
    p = sub.add_parser("completion", help="print the bash or zsh completion script",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, help="the shell the script is for: bash or zsh")
    p.set_defaults(func=lambda args: cmd_completion(args, build_parser))


def cmd_completion(args: argparse.Namespace, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    print(script(build_parser(), args.shell), end="")
    return 0


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `parser` (its prog names the command completed)."""
    import shtab

    mark_paths(parser, shtab.FILE)
    return shtab.complete(parser, shell=shell)


def mark_paths(parser: argparse.ArgumentParser, complete: dict) -> None:
    """Make every action that takes a Path complete file names (shtab's `complete` attribute)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                mark_paths(child, complete)
        elif action.type is Path and not action.choices and not hasattr(action, "complete"):
            action.complete = complete  # type: ignore[attr-defined]
