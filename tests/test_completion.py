"""Shell completion (issue 13): `trustfleet completion bash|zsh` and `trustfleet-agent completion bash|zsh`
print shtab's script for the real parsers; the bash one is valid and completes in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trustfleet_pi import cli as agent_cli
from trustfleet_server import cli

BASH = shutil.which("bash") or "/bin/bash"


def script(capsys, main, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def complete(script_path: Path, function: str, words: list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY of `function` for the command line `words` (the last word is being completed), in a
    fresh bash that sourced the script."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source '{script_path}'\n"
               f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               f"COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n"
               f"{function} '{words[0]}' '{words[-1]}' '{words[-2]}'\n"
               f"printf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run([BASH, "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          timeout=30, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture
def bash_script(tmp_path, capsys) -> Path:
    path = tmp_path / "trustfleet.bash"
    path.write_text(script(capsys, cli.main, "completion", "bash"))
    return path


def test_the_bash_script_is_valid_bash(bash_script):
    done = subprocess.run([BASH, "-n", str(bash_script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "complete -o bashdefault -F _shtab_trustfleet trustfleet" in bash_script.read_text()


def test_bash_completes_a_command(bash_script):
    assert complete(bash_script, "_shtab_trustfleet", ["trustfleet", "bun"]) == ["bundle"]
    assert complete(bash_script, "_shtab_trustfleet", ["trustfleet", "do"]) == ["doctor"]
    assert complete(bash_script, "_shtab_trustfleet", ["trustfleet", "bundle", "ver"]) == ["verify"]


def test_bash_completes_options_and_file_names(bash_script, tmp_path):
    assert sorted(complete(bash_script, "_shtab_trustfleet", ["trustfleet", "doctor", "--ti"])) == [
        "--timeout", "--timestamp"]
    (tmp_path / "root.cose").write_bytes(b"")
    (tmp_path / "roster.txt").write_bytes(b"")
    got = complete(bash_script, "_shtab_trustfleet", ["trustfleet", "doctor", "--root", "ro"], cwd=tmp_path)
    assert sorted(got) == ["root.cose", "roster.txt"]


def test_the_zsh_script_is_for_trustfleet(capsys):
    text = script(capsys, cli.main, "completion", "zsh")
    assert text.startswith("#compdef trustfleet\n")
    assert "doctor" in text and "bundle" in text


def test_an_unknown_shell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["completion", "fish"])
    assert exc.value.code == 2
    assert "argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh')" in capsys.readouterr().err


def test_the_agent_script_completes_its_commands(tmp_path, capsys):
    path = tmp_path / "agent.bash"
    path.write_text(script(capsys, agent_cli.main, "completion", "bash"))
    assert subprocess.run([BASH, "-n", str(path)]).returncode == 0
    assert complete(path, "_shtab_trustfleet_agent", ["trustfleet-agent", "ins"]) == ["install"]
    assert script(capsys, agent_cli.main, "completion", "zsh").startswith("#compdef trustfleet-agent\n")


def test_the_installed_command_prints_the_script():
    """As a user runs it: `trustfleet completion bash` from the entry point, sourced by bash."""
    exe = Path(sys.executable).with_name("trustfleet")
    done = subprocess.run([str(exe), "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "_shtab_trustfleet" in done.stdout
