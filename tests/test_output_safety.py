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
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.clirun import CLI_ENV, one_line, run_trustfleet
from trustfleet_server import demo

MARKER = ".trustfleet-demo"


def tf(cwd: Path, *args: str, code: int = 0, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `trustfleet ARGS` in cwd, in a session of its own (no terminal); require exit `code`."""
    return run_trustfleet(cwd, *args, code=code, timeout=timeout, **kw)


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


# --------------------------------------------------------------------------- -o a/b/c


def spec(d: Path) -> Path:
    acme = fk.chain("acme")
    fk.write_pem(d / "ca.pem", acme.ca, acme.intermediate)
    primary, backup = (fk.b64(p) for p in acme.pins)
    path = d / "bundle.toml"
    path.write_text(f"""fleet = "acme-sensors"
version = 1
expires = "90d"

[policy]
user_anchors = false
max_timestamp_age = "48h"

[[anchors]]
files = ["ca.pem"]

[[pinsets]]
domain = "{acme.domain}"
pins = ["{primary}", "{backup}"]
expires = "180d"
""")
    return path


def test_outputs_in_missing_folders_are_created(tmp_path):
    spec(tmp_path)
    tf(tmp_path, "key", "generate", "--out", "keys/root-1.pem")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert (tmp_path / "keys" / "root-1.pem").is_file() and (tmp_path / "keys" / "root-1.pub.pem").is_file()
    tf(tmp_path, "bundle", "build", "bundle.toml", "-o", "nodir/b.cose")
    assert (tmp_path / "nodir" / "b.cose").stat().st_size > 0
    xml = "app/src/main/res/xml/network_security_config.xml"
    tf(tmp_path, "export", "nsc", "nodir/b.cose", "-o", xml)
    assert "<network-security-config" in (tmp_path / xml).read_text()
    # Nothing else (no temp files) is left behind.
    assert sorted(p.name for p in (tmp_path / "nodir").iterdir()) == ["b.cose"]


@pytest.mark.parametrize("cmd", [
    ["bundle", "build", "bundle.toml", "-o", "{out}"],
    ["export", "nsc", "bundle.toml", "-o", "{out}"],
])
def test_an_output_that_is_a_folder_or_under_a_file_is_one_line_naming_it(tmp_path, cmd):
    spec(tmp_path)
    (tmp_path / "existing_dir").mkdir()
    (tmp_path / "existing_dir" / "keep.txt").write_text("keep\n")
    (tmp_path / "afile").write_text("a file\n")
    before = snapshot(tmp_path)
    for out in ("existing_dir", "afile/x.cose"):
        line = error_line(tf(tmp_path, *[a.format(out=out) for a in cmd], code=2))
        assert line.startswith(f"trustfleet: error: {out}: "), line
        assert ".tmp" not in line, line
        assert snapshot(tmp_path) == before


def test_key_generate_into_a_folder_or_under_a_file_is_one_line(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "afile").write_text("a file\n")
    before = snapshot(tmp_path)
    line = one_line(tf(tmp_path, "key", "generate", "--out", "keys", code=2))
    assert line.startswith("trustfleet: error: keys: ") and "folder" in line, line
    line = one_line(tf(tmp_path, "key", "generate", "--out", "afile/k.pem", "--force", code=2))
    assert line.startswith("trustfleet: error: afile/k.pem: "), line
    assert snapshot(tmp_path) == before


def test_key_generate_never_overwrites_an_existing_key(tmp_path):
    tf(tmp_path, "key", "generate", "--out", "keys/k.pem")
    before = snapshot(tmp_path)
    line = one_line(tf(tmp_path, "key", "generate", "--out", "keys/k.pem", code=2))
    assert "already exists" in line and "--force" in line, line
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- passphrase prompts


@pytest.fixture
def key_and_bundle(tmp_path) -> Path:
    spec(tmp_path)
    tf(tmp_path, "key", "generate", "--out", "b1.pem")
    tf(tmp_path, "bundle", "build", "bundle.toml", "-o", "b.cose")
    return tmp_path


def test_ask_passphrase_with_stdin_closed_is_one_line(key_and_bundle):
    d = key_and_bundle
    before = snapshot(d)
    for cmd in (["bundle", "sign", "--key", "b1.pem", "--ask-passphrase", "b.cose"],
                ["key", "generate", "--out", "new.pem", "--ask-passphrase"]):
        line = one_line(tf(d, *cmd, code=2))
        assert "no passphrase given: standard input is closed" in line, line
        assert snapshot(d) == before


def test_ctrl_c_at_the_passphrase_prompt_is_one_line_and_writes_nothing(key_and_bundle):
    d = key_and_bundle
    before = snapshot(d)
    for cmd in (["key", "generate", "--out", "new.pem", "--ask-passphrase"],
                ["bundle", "sign", "--key", "b1.pem", "--ask-passphrase", "b.cose"]):
        master, slave = os.openpty()  # a terminal for the prompt; the session has no /dev/tty
        try:
            proc = subprocess.Popen([sys.executable, "-m", "trustfleet_server.cli", *cmd], cwd=d, env=CLI_ENV,
                                    stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            err = b""
            deadline = time.monotonic() + 30
            while b"Passphrase:" not in err and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stderr], [], [], 1)
                if ready:
                    err += os.read(proc.stderr.fileno(), 4096)
            assert b"Passphrase:" in err, err
            proc.send_signal(signal.SIGINT)
            out, rest = proc.communicate(timeout=30)
        finally:
            os.close(master)
            os.close(slave)
        err = (err + rest).decode()
        assert "Traceback" not in err, err
        assert proc.returncode == 130, (proc.returncode, err)
        lines = err.replace("Passphrase:", "").strip().splitlines()
        assert len(lines) == 1 and "interrupted" in lines[0], err
        assert snapshot(d) == before
