"""A real SoftHSM2 token in a temporary folder, for the PKCS#11 tests.

Each Token has its own softhsm2.conf (directories.tokendir under the test's
tmp_path), set through SOFTHSM2_CONF in `env`: tokens of one test never meet
another's. Commands that use it run as subprocesses with that environment,
as SoftHSM2 reads its configuration once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support import environment
from support.clirun import CLI_ENV

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
UTIL_HINT = "apt-get install softhsm2"
USER_PIN = "246810"
SO_PIN = "13579111"


def require() -> str:
    """softhsm2-util's path; skip (fail under CI) when SoftHSM2 or python-pkcs11 is missing."""
    util = environment.require_tool("softhsm2-util", UTIL_HINT)
    environment.require(os.path.exists(MODULE), f"{MODULE} is missing ({UTIL_HINT})")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        environment.skip_or_fail("python-pkcs11 is not installed (pip install 'trustfleet[pkcs11]')")
    return util


@dataclass
class Token:
    """One initialised token: its label, folder, PIN file and the environment to use it with."""

    label: str
    folder: Path
    pin_file: Path
    env: dict[str, str]

    def uri(self, obj: str | None = None, *, pin: bool = True, extra: str = "") -> str:
        """A `pkcs11:` URI for this token (and key `obj`), with the PIN file as pin-source."""
        path = f"pkcs11:token={self.label}" + (f";object={obj}" if obj else "") + extra
        query = f"module-path={MODULE}" + (f"&pin-source=file:{self.pin_file}" if pin else "")
        return f"{path}?{query}"

    def run(self, cwd: Path, *args: object, code: int = 0, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess:
        """`trustfleet ARGS` as a subprocess using this token's store (plus `env`), stdin closed and
        no terminal; require exit `code` and no traceback."""
        proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *map(str, args)],
                              cwd=cwd, env={**self.env, **env}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, start_new_session=True)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def python(self, script: str, *args: object) -> str:
        """Run a Python `script` against this token's store (python-pkcs11 reads SOFTHSM2_CONF once
        per process); its stdout."""
        proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


def init_token(tmp: Path, label: str, conf: Path | None = None) -> Token:
    """Initialise a token labelled `label` in a SoftHSM2 store under `tmp` (shared when `conf`,
    an earlier token's conf, is given): SO PIN SO_PIN, user PIN USER_PIN."""
    util = require()
    if conf is None:
        tokens = tmp / "softhsm-tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        conf = tmp / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                        f"log.level = ERROR\nslots.removable = false\n")
    env = {**CLI_ENV, "SOFTHSM2_CONF": str(conf)}
    env.pop("TRUSTFLEET_PKCS11_PIN", None)
    env.pop("TRUSTFLEET_PKCS11_MODULE", None)
    subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], env=env, check=True, capture_output=True, timeout=60)
    pin_file = tmp / f"{label}.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    return Token(label, tmp, pin_file, env)
