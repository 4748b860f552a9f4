"""The README, followed literally: every shell block of two sections runs as written.

The ```sh blocks of "A 5-minute walkthrough" and "The seed workflow, end to end"
run in the README's order, each with `bash -e -o pipefail`, in one temporary
working folder, with .venv/bin first on PATH (what `. .venv/bin/activate`
does). A non-zero exit fails the test with the block, the command and its output.

What the README assumes of a user's machine is stood in for here, without
changing a command:
- certs/: the user's CA certificates and the chain their server sends, made with openssl;
- a local TLS server that sends that chain, for `pin --connect`;
- tools/: a link to the checkout's tools/ (the README runs in a checkout);
- `sudo`: a shim that runs the command as this user (no password prompt, no real root);
- TRUSTFLEET_INSTALL_ROOT: install-pi.sh installs into a temporary folder instead of /,
  whose venv is made here from this Python (the real pip install: test_install_pi.py).
Only SUBSTITUTIONS change the text of a command.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support.environment import require_tool
from support.pivenv import stand_in_venv
from support.readme_pki import HOST, make_certs
from trustfleet_server.demo.tlsserver import LoopbackTLSServer

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTIONS = ("A 5-minute walkthrough", "The seed workflow, end to end")

# (text in the README, what runs instead, why). Each must occur in the blocks.
SUBSTITUTIONS = [
    (f"{HOST}:443", "127.0.0.1:{port} --servername " + HOST,
     "api.acme.example does not resolve: the local TLS server sends the same chain"),
]


def section(text: str, title: str) -> str:
    """The body of the `## title` section (up to the next `## ` heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def fenced_blocks(body: str) -> list[tuple[str, str]]:
    """Every fenced block of a section as (language, text)."""
    return re.findall(r"^```(\w*)\n(.*?)^```\n", body, re.M | re.S)


def readme_blocks() -> list[tuple[str, str]]:
    """The sh blocks of SECTIONS as (section title, block), in the README's order."""
    text = README.read_text(encoding="utf-8")
    order = sorted(SECTIONS, key=lambda t: text.index(f"## {t}\n") if f"## {t}\n" in text else -1)
    out = []
    for title in order:
        blocks = fenced_blocks(section(text, title))
        others = [lang or "(no language)" for lang, _ in blocks if lang != "sh"]
        assert not others, (f"'{title}' has a {others[0]} block: a user cannot run it as written; "
                            f"make it a file with a heredoc inside a sh block")
        out.extend((title, body) for _, body in blocks)
    return out


def test_blocks_are_found_and_every_substitution_is_used():
    blocks = readme_blocks()
    assert len(blocks) >= 6
    text = "".join(b for _, b in blocks)
    for old, _new, why in SUBSTITUTIONS:
        assert old in text, f"substitution {old!r} ({why}) no longer matches the README"


def last_command(trace: str) -> str:
    """The last command bash -x traced (lines starting with PS4)."""
    lines = [ln for ln in trace.splitlines() if ln.startswith("+ ")]
    return lines[-1][2:] if lines else "(none traced)"


@pytest.mark.timeout(900)
def test_the_readme_runs_as_written(tmp_path):
    openssl = require_tool("openssl", "apt-get install openssl")
    bash = require_tool("bash", "apt-get install bash")
    work = tmp_path / "work"
    work.mkdir()
    certs = make_certs(openssl, work)
    server_key = tmp_path / "api.key"
    (certs / f"{HOST}.key").rename(server_key)
    (work / "tools").symlink_to(REPO / "tools")
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "sudo").chmod(0o755)
    install_root = tmp_path / "pi-root"
    stand_in_venv(install_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTFLEET_")}
    env.update(PATH=os.pathsep.join([str(shims), str(REPO / ".venv" / "bin"), env.get("PATH", "")]),
               TRUSTFLEET_INSTALL_ROOT=str(install_root), PS4="+ ", LC_ALL="C.UTF-8")
    env.pop("PYTHONPATH", None)

    with LoopbackTLSServer(certs / "api-chain.pem", server_key) as server:
        ran = []
        for n, (title, block) in enumerate(readme_blocks()):
            script = block
            for old, new, _why in SUBSTITUTIONS:
                script = script.replace(old, new.format(port=server.port))
            path = tmp_path / f"block-{n}.sh"
            path.write_text("set -e -o pipefail -x\n" + script)
            proc = subprocess.run([bash, str(path)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"README '{title}', block {n + 1}: exit {proc.returncode}\n"
                            f"command: {last_command(proc.stdout)}\n"
                            f"--- block ---\n{block}--- output ---\n{proc.stdout[-6000:]}",
                            pytrace=False)
            ran.append(proc.stdout)
        assert server.handshakes >= 1  # pin --connect reached the stand-in server

    # What the blocks were meant to leave behind.
    for name in ("root.cose", "bundle-v1.cose", "bundle-v2.cose", "TrustKit.plist",
                 "app/src/main/res/xml/network_security_config.xml", "pi-0042.json"):
        assert (work / name).is_file(), name
    assert (install_root / "var/lib/trustfleet/root.cose").read_bytes() == (work / "root.cose").read_bytes()
    assert "Acme Root CA" in "".join(ran)  # what pin --connect showed
