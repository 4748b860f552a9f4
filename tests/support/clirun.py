"""Running a command line in-process, as the CLI tests do: the exit code, stdout and stderr, and
the rule every error follows (one line, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The environment of a `trustfleet` subprocess: the checkout's packages, no passphrase.
CLI_ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
CLI_ENV.pop("TRUSTFLEET_PASSPHRASE", None)


def run_main(main: Callable[[list[str]], int], capsys, *args: object) -> tuple[int, str, str]:
    """main([...]) in-process: (exit code, stdout, stderr); a traceback on stderr fails the test."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def run_trustfleet(cwd: Path, *args: object, code: int = 0, timeout: float = 60,
                   **kw) -> subprocess.CompletedProcess:
    """Run `trustfleet ARGS` in cwd as a subprocess in a session of its own (no terminal, stdin
    closed unless `kw` says otherwise); require exit `code` and no traceback."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *map(str, args)], cwd=cwd,
                          env=CLI_ENV, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_cli(*args: str, env: dict[str, str] | None = None, code: int | None = 0,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """`trustfleet ARGS` as a subprocess in this directory with `env` (None: this process's);
    require exit `code` (None: any) and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    if code is not None:
        assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def one_line(err: str | subprocess.CompletedProcess) -> str:
    """The single line of `err` (a process: its stderr); more or fewer lines fail the test."""
    if isinstance(err, subprocess.CompletedProcess):
        err = err.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def make_operator(d, root_name: str = "root.cose", extra_keys: tuple[str, ...] = ()):
    """An operator's folder made by the real CLI: keys r1, b1, t1 (+ `extra_keys`), a root signed by
    r1 with one key per role, acme.pem (a CA chain), b.toml (bundle v3 of fleet acme anchoring it)
    and unsigned.cbor built from it. Returns (folder, root path)."""
    import os

    from support import fleetkit as fk
    from trustfleet_server import cli

    def ok(*args: object) -> None:
        assert cli.main([str(a) for a in args]) == 0, args

    os.environ.pop("TRUSTFLEET_PASSPHRASE", None)
    for name in ("r1", "b1", "t1", *extra_keys):
        ok("key", "generate", "--out", d / f"{name}.pem")
    root = d / root_name
    ok("root", "create", "--fleet", "acme", "--key", f"root={d / 'r1.pub.pem'}", "--key",
       f"bundle={d / 'b1.pub.pem'}", "--key", f"timestamp={d / 't1.pub.pem'}", "-o", root)
    ok("root", "sign", "--key", d / "r1.pem", root)
    acme = fk.chain("acme")
    fk.write_pem(d / "acme.pem", acme.ca, acme.intermediate)
    (d / "b.toml").write_text(f'fleet = "acme"\nversion = 3\nexpires = "90d"\n'
                              f'[[anchors]]\nfiles = ["{d / "acme.pem"}"]\n')
    ok("bundle", "build", d / "b.toml", "-o", d / "unsigned.cbor")
    return d, root
