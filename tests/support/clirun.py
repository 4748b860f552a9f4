"""Running a command line in-process, as the CLI tests do: the exit code, stdout and stderr, and
the rule every error follows (one line, no traceback)."""

from __future__ import annotations

from collections.abc import Callable


def run_main(main: Callable[[list[str]], int], capsys, *args: object) -> tuple[int, str, str]:
    """main([...]) in-process: (exit code, stdout, stderr); a traceback on stderr fails the test."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line(err: str) -> str:
    """The single line of `err`; more or fewer lines fail the test."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
