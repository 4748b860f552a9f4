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
