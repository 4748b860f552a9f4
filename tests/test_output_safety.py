"""Nothing of the user's is deleted or overwritten, and every output path just works (issue 13).

- `demo --out DIR` refuses a non-empty folder that is not its own (no
  `.trustfleet-demo` marker) and leaves every file in it alone; a folder it
  made itself is cleared and reused.
- `-o a/b/c` creates the missing folders; an output that is a folder, or
  whose parent is a file, is one line naming the user's path (never an
  internal temp file), exit 2, and nothing written.
- `--ask-passphrase` with standard input closed is one line, exit 2; Ctrl-C
  at the prompt is one line, exit 130, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trustfleet_server import demo

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
ENV.pop("TRUSTFLEET_PASSPHRASE", None)
MARKER = ".trustfleet-demo"


def tf(cwd: Path, *args: str, code: int = 0, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `trustfleet ARGS` in cwd, in a session of its own (no terminal); require exit `code`."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
    return proc


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line, last on stderr (a command may print its warnings before it)."""
    lines = proc.stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("trustfleet: error")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- demo --out


def users_folder(d: Path) -> dict[str, bytes | None]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub").mkdir()
    (d / "sub" / "draft.md").write_text("keep me\n")
    return snapshot(d)


def test_offline_demo_refuses_a_users_folder_and_leaves_every_file_alone(tmp_path):
    d = tmp_path / "mine"
    before = users_folder(d)
    line = one_line(tf(tmp_path, "demo", "--offline", "--out", d, code=2))
    assert str(d) in line and "not empty" in line, line
    assert snapshot(d) == before


def test_fleet_demo_refuses_a_users_folder_before_starting_anything(tmp_path):
    d = tmp_path / "mine"
    before = users_folder(d)
    proc = tf(tmp_path, "demo", "--broker", "embedded", "--out", d, code=2)
    assert str(d) in one_line(proc) and proc.stdout == ""
    assert snapshot(d) == before


def test_demo_out_dot_refuses_the_working_folder(tmp_path):
    (tmp_path / "important.txt").write_text("do not lose\n")
    before = snapshot(tmp_path)
    line = one_line(tf(tmp_path, "demo", "--offline", "--out", ".", code=2))
    assert "not empty" in line, line
    assert snapshot(tmp_path) == before


def test_demo_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("a file\n")
    line = one_line(tf(tmp_path, "demo", "--offline", "--out", "f", code=2))
    assert line.startswith("trustfleet: error: f:"), line
    assert (tmp_path / "f").read_text() == "a file\n"


def test_offline_demo_creates_its_folder_and_reruns_over_its_own_folder(tmp_path):
    d = tmp_path / "deep" / "er" / "demo-out"
    tf(tmp_path, "demo", "--offline", "--out", d)
    assert (d / MARKER).is_file() and (d / "root.cose").is_file()
    # Everything it wrote is on the demo's list, so a re-run replaces all of it.
    assert [n for n in os.listdir(d) if n != MARKER and not demo.is_output(n)] == []
    # A file the user drops in later is not the demo's: it survives the re-run.
    (d / "notes.txt").write_text("mine\n")
    first_root = (d / "root.cose").read_bytes()
    tf(tmp_path, "demo", "--offline", "--out", d)
    assert (d / "notes.txt").read_text() == "mine\n"
    assert (d / "root.cose").read_bytes() != first_root  # a fresh run, fresh keys
