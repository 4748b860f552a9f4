"""docs/testing.md's first fleet tests run as a user's test file, and they can fail.

The examples run unmodified with a pytest of their own in a folder outside the
repository (support.userfleet), the plugin loaded through its entry point. A
control run changes one thing each example depends on and must fail, with the
fleet described in the report (the plugin's "trustfleet fleet" section).
"""

from __future__ import annotations

import re
import sys

from support.userfleet import REPO, docs_examples, outcome_count, run_user_pytest, write_user_tests


def test_the_docs_have_three_examples_of_at_most_15_lines():
    examples = docs_examples()
    assert [e.count("\ndef test_") + e.startswith("def test_") for e in examples] == [1, 1, 1]
    assert all(len(e.strip().splitlines()) <= 15 for e in examples), [
        len(e.strip().splitlines()) for e in examples]


def test_the_examples_pass_as_a_users_test_file(tmp_path):
    write_user_tests(tmp_path)
    run = run_user_pytest(sys.executable, tmp_path, "-rA")
    assert outcome_count(run, "passed") == 3, run.stdout[-4000:] + run.stderr[-2000:]
    assert "skipped" not in run.stdout.splitlines()[-1]


def test_each_example_fails_when_what_it_checks_is_broken(tmp_path):
    bad, rotation, stuck = docs_examples()
    broken = [
        # A good v2: the rollout completes instead of halting at the canary wave.
        bad.replace("pinsets=[only_spare]", "pinsets=None"),
        # The server moves to a key no bundle pinned (two rotations at once): v1's backup pin
        # no longer matches, so the devices refuse the server.
        rotation.replace("tf_tls_server.use(tf_fleet.rotate_chain())",
                         "tf_tls_server.use(tf_fleet.rotate_chain().rotate())"),
        # The devices' clock is right, so the stuck-2000 fault check itself must fail.
        stuck.replace('"stuck_2000": 1.0', '"stuck_2000": 0.0'),
    ]
    write_user_tests(tmp_path, broken)
    run = run_user_pytest(sys.executable, tmp_path)
    out = run.stdout
    assert outcome_count(run, "failed") == 3, out[-4000:] + run.stderr[-2000:]
    assert out.count("trustfleet fleet") >= 3, out[-4000:]
    assert "rollout 1 of v2: done" in out
    assert "no key matches the pins" in out   # each device's refusal of the moved server


def test_the_readmes_fleet_test_is_one_of_the_docs_examples():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split("## Simulated fleets in your tests\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 1 and blocks[0] in docs_examples()
