#!/usr/bin/env python3
"""Mutation testing of the trusted device core: does every check have a test that notices it gone?

Usage:
    python tools/mutate.py                        every mutant of every core module (make mutate)
    python tools/mutate.py --module cose          one module (repeatable)
    python tools/mutate.py --sample 60 --seed daily   a sampled run (CI)
    python tools/mutate.py --list [--module M]    the mutants, without running anything
    python tools/mutate.py --show ID              one mutant as a diff

How it works. Each core module (cose, cbor, policy, agent, trust, x509, p256
in device/trustfleet_device) is parsed with `ast`; every mutation point gives
one mutant (operators below). One baseline run of the fast CPython tests
under coverage records which test reaches which line. Then, for each mutant,
a forked child installs an import hook that serves the mutated module in
place of the real one and runs only the tests that reach the mutated line,
stopping at the first failure. A failing or timed-out run kills the mutant;
a passing run means it survived: a check can change and no test notices.
A mutant on a line no test reaches survives without a run.

Operators: comparison swaps (== !=, < <=, > >=, is / is not, in / not in),
and/or swapped, `not` dropped, arithmetic and bitwise operators swapped,
an integer constant plus one, True/False swapped, a `raise` replaced by
`pass`, `break`/`continue` swapped, and a statement with an effect deleted
(a call as a statement, an assignment to an attribute or an item, an
augmented assignment). Message text is not mutated: the arguments of a
`raise` and string formatting are left alone.

Mutant ids are `module.function#hash`, the hash taken over the function,
the source line's text and the mutation, so they survive edits elsewhere
in the file. Survivors that no test can kill because the mutant behaves
exactly like the original (for example a cache size, or a bound that a
later check enforces too) are listed with a one-line reason in
tools/mutate-equivalents.txt. A reason that starts with `GAP:` marks a
known survivor that is not equivalent (a test is owed): it still counts
against the score, but --strict does not fail on it, so CI catches new
survivors while the known ones are worked off. Listed mutants run like
the others; the command warns when a listed one is killed or no longer
exists, so the file stays current.

Exit status: 0 when every module scores at least --fail-under (default 95;
not applied to a --sample run)
and, with --strict, no survivor is left unlisted; 1 otherwise; 2 on bad
arguments. The score is killed / (mutants - listed equivalents).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import hashlib
import importlib.abc
import importlib.util
import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "device" / "trustfleet_device"
PACKAGE = "trustfleet_device"
MODULES = ("cose", "cbor", "policy", "agent", "trust", "x509", "p256")
EQUIVALENTS = REPO / "tools" / "mutate-equivalents.txt"
CACHE = REPO / ".mutate-cache"

# The fast CPython tests of the core: these files and every tests/test_*_rules.py.
# Tests that run the core in a subprocess or in the MicroPython VM cannot see an
# in-memory mutant, and broker or CLI tests add minutes for nothing, so they are left out.
CORE_TESTS = ("test_agent.py", "test_cbor.py", "test_cose_vectors.py", "test_documents.py",
              "test_p256.py", "test_reports.py", "test_session.py", "test_streaming.py",
              "test_trust.py", "test_x509.py")
FAST_TESTS = sorted({"tests/" + n for n in CORE_TESTS if (REPO / "tests" / n).exists()}
                    | {str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*_rules.py")})
PYTEST_ARGS = ["-q", "-x", "-p", "no:cacheprovider", "-m", "not micropython and not slow",
               "--hypothesis-seed=0", "-o", "addopts=", "--timeout=0"]


# ------------------------------------------------------------------ mutants

_CMP_SWAP = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
    ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_BIN_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
}
_SYMBOL = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%",
    ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|",
    ast.BitXor: "^", ast.And: "and", ast.Or: "or",
}


class Mutant:
    def __init__(self, module, index, line, func, desc, source_line):
        self.module = module
        self.index = index          # position in the module's deterministic walk
        self.line = line
        self.stmt_line = line       # first line of the enclosing statement
        self.func = func
        self.desc = desc
        self.source_line = source_line
        self.id = None              # set once all mutants of the module are known
        self.tests = []
        self.status = None          # killed | survived | timeout | equivalent | uncovered
        self.seconds = 0.0

    def label(self):
        return f"{self.id}  {self.module}.py:{self.line}  {self.source_line.strip()}   [{self.desc}]"


def _parents(tree):
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child._mut_parent = node


def _protected(node):
    """True inside text that only builds a message: raise arguments and string formatting."""
    p = getattr(node, "_mut_parent", None)
    while p is not None:
        if isinstance(p, ast.Raise):
            return True
        if (isinstance(p, ast.BinOp) and isinstance(p.op, (ast.Mod, ast.Add))
                and isinstance(p.left, ast.Constant) and isinstance(p.left.value, str)):
            return True
        if isinstance(p, ast.JoinedStr):
            return True
        p = getattr(p, "_mut_parent", None)
    return False


def _func_name(node):
    names = []
    p = getattr(node, "_mut_parent", None)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(p.name)
        p = getattr(p, "_mut_parent", None)
    return ".".join(reversed(names)) or "<module>"


def _points(tree):
    """Yield (node, kind, payload, description) for every mutation point, in a fixed order."""
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is None:
            continue
        if isinstance(node, ast.Compare):
            if _protected(node):
                continue
            for i, op in enumerate(node.ops):
                new = _CMP_SWAP.get(type(op))
                if new:
                    yield node, "cmp", (i, new), f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}"
        elif isinstance(node, ast.BoolOp):
            if _protected(node):
                continue
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            yield node, "bool", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            if not _protected(node):
                yield node, "not", None, "drop not"
        elif isinstance(node, (ast.BinOp, ast.AugAssign)):
            if _protected(node) or (isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant)
                                    and isinstance(node.left.value, (str, bytes))):
                continue
            new = _BIN_SWAP.get(type(node.op))
            if new:
                yield node, "bin", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}"
            if isinstance(node, ast.AugAssign) and _statement_ok(node):
                yield node, "delete", None, "delete statement"
        elif isinstance(node, ast.Constant):
            if _protected(node):
                continue
            v = node.value
            if v is True or v is False:
                yield node, "const", (not v), f"{v!r} -> {not v!r}"
            elif type(v) is int:
                yield node, "const", v + 1, f"{v} -> {v + 1}"
        elif isinstance(node, ast.Raise):
            yield node, "raise", None, "raise -> pass"
        elif isinstance(node, ast.Break):
            yield node, "loop", ast.Continue, "break -> continue"
        elif isinstance(node, ast.Continue):
            yield node, "loop", ast.Break, "continue -> break"
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            if _statement_ok(node):
                yield node, "delete", None, "delete statement"
        elif (isinstance(node, ast.Assign) and _statement_ok(node)
              and any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets)):
            yield node, "delete", None, "delete statement"


def _statement_line(node):
    """The first line of the statement holding node: coverage records only that line."""
    while node is not None and not isinstance(node, ast.stmt):
        node = getattr(node, "_mut_parent", None)
    return node.lineno if node is not None else None


def _statement_ok(node):
    p = getattr(node, "_mut_parent", None)
    return not isinstance(p, ast.Module)   # module-level statements set the module up


def _apply(node, kind, payload):
    if kind == "cmp":
        i, new = payload
        node.ops[i] = new()
    elif kind == "bool" or kind == "bin":
        node.op = payload()
    elif kind == "const":
        node.value = payload
    elif kind == "not":
        return node.operand
    elif kind == "raise" or kind == "delete":
        return ast.Pass()
    elif kind == "loop":
        return payload()
    return node


class _Replace(ast.NodeTransformer):
    def __init__(self, target, replacement):
        self.target = target
        self.replacement = replacement

    def visit(self, node):
        if node is self.target:
            return ast.copy_location(self.replacement, node)
        return super().visit(node)


def module_source(module):
    return (CORE / (module + ".py")).read_text(encoding="utf-8")


def enumerate_mutants(module):
    source = module_source(module)
    lines = source.splitlines()
    tree = ast.parse(source)
    _parents(tree)
    mutants = []
    seen = {}
    for index, (node, _kind, _payload, desc) in enumerate(_points(tree)):
        line = node.lineno
        m = Mutant(module, index, line, _func_name(node), desc, lines[line - 1])
        m.stmt_line = _statement_line(node)
        key = f"{module}|{m.func}|{m.source_line.strip()}|{desc}"
        n = seen.get(key, 0)
        seen[key] = n + 1
        digest = hashlib.sha256(f"{key}|{n}".encode()).hexdigest()[:8]
        m.id = f"{module}.{m.func}#{digest}"
        mutants.append(m)
    return mutants


def mutated_code(module, index):
    """Compile the module with mutant `index` applied."""
    tree = ast.parse(module_source(module))
    _parents(tree)
    point = next((p for i, p in enumerate(_points(tree)) if i == index), None)
    if point is None:
        raise KeyError(index)
    node, kind, payload, _desc = point
    replacement = _apply(node, kind, payload)
    if replacement is not node:
        tree = _Replace(node, replacement).visit(tree)
    ast.fix_missing_locations(tree)
    return compile(tree, str(CORE / (module + ".py")), "exec"), tree


def mutant_diff(m):
    _code, tree = mutated_code(m.module, m.index)
    new = ast.unparse(tree).splitlines()
    old = ast.unparse(ast.parse(module_source(m.module))).splitlines()
    return "\n".join(difflib.unified_diff(old, new, m.module + ".py", m.module + ".py (mutant)",
                                          n=2, lineterm=""))


# ------------------------------------------------------------------ equivalents

def read_equivalents(path):
    """{id: reason} from the equivalents file: `ID  reason` per line, # comments."""
    out = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise SystemExit(f"{path}:{n}: an entry needs an id and a reason")
        out[parts[0]] = parts[1]
    return out


# ------------------------------------------------------------------ baseline

class _Tracker:
    """pytest plugin: one coverage context per test, and each test's duration."""

    def __init__(self, cov):
        self.cov = cov
        self.durations = {}
        self.failed = []

    def pytest_runtest_setup(self, item):
        self.cov.switch_context(item.nodeid)

    def pytest_runtest_teardown(self, item):
        self.cov.switch_context("")

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)


def _fingerprint():
    h = hashlib.sha256()
    files = ([REPO / t for t in FAST_TESTS] + [REPO / "tests" / "conftest.py"]
             + list((REPO / "tests" / "support").rglob("*.py")))
    for p in sorted(files) + sorted(CORE.glob("*.py")):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def baseline(quiet=False):
    """{module: {line: [(nodeid, seconds), ...]}} from one traced run of the fast tests (cached)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / (f"baseline-{_fingerprint()}.json")
    if path.exists():
        return json.loads(path.read_text())
    if not quiet:
        print("baseline: running the fast tests under coverage (once per change of tests or core)",
              file=sys.stderr, flush=True)
    # Several runs may build the same baseline at once: each writes its own file and
    # renames it into place atomically; the last rename wins with identical content.
    partial = path.with_suffix(f".{os.getpid()}.partial")
    script = (f"import json, sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; import mutate; "
              f"open({str(partial)!r}, 'w').write(json.dumps(mutate._traced_run()))")
    import subprocess
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not partial.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit("baseline run failed: fix the failing tests first")
    data = json.loads(partial.read_text())
    os.replace(partial, path)
    for old in CACHE.glob("baseline-*.json"):
        if old != path:
            old.unlink(missing_ok=True)
    return data


def _traced_run():
    import coverage
    import pytest
    cov = coverage.Coverage(data_file=None, include=[str(CORE / (m + ".py")) for m in MODULES])
    tracker = _Tracker(cov)
    cov.start()
    code = pytest.main(FAST_TESTS + ["-q", "-p", "no:cacheprovider", "-m", "not micropython and not slow",
                                "--hypothesis-seed=0", "-o", "addopts="],
                       plugins=[tracker])
    cov.stop()
    if code not in (0,) or tracker.failed:
        sys.stderr.write(f"failing tests: {tracker.failed[:10]}\n")
        raise SystemExit(1)
    data = cov.get_data()
    out = {}
    for m in MODULES:
        f = str(CORE / (m + ".py"))
        by_line = data.contexts_by_lineno(f)
        # Lines run only at import (module constants, default arguments) carry the
        # empty context; "*" stands for every test that reaches the module.
        out[m] = {str(line): sorted(set(c if c else "*" for c in ctxs))
                  for line, ctxs in by_line.items()}
    # durations ride along under a reserved key
    out["_durations"] = tracker.durations
    return out


def _line_tests(base, m):
    """The tests that reach the mutated line (and the statement span around it), fastest first."""
    lines = base.get(m.module, {})
    tests = set(lines.get(str(m.line), ())) | set(lines.get(str(m.stmt_line), ()))
    if "*" in tests:
        tests.discard("*")
        for other in lines.values():
            tests.update(other)
        tests.discard("*")
    durations = base["_durations"]
    return sorted(tests, key=lambda t: (durations.get(t, 0.0), t))


# ------------------------------------------------------------------ running

class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, fullname, code):
        self.fullname = fullname
        self.code = code

    def find_spec(self, fullname, path, target=None):
        if fullname != self.fullname:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.code.co_filename)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.code.co_filename
        exec(self.code, module.__dict__)


def _child(m, tests):
    """In a forked child: serve the mutant, run its tests, exit 0 (survived) or 1 (killed)."""
    import pytest
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        code, _tree = mutated_code(m.module, m.index)
        for name in list(sys.modules):
            if name.startswith(PACKAGE) or name.startswith("trustfleet_"):
                del sys.modules[name]
        sys.meta_path.insert(0, _MutantFinder(PACKAGE + "." + m.module, code))
        rc = pytest.main(tests + PYTEST_ARGS)
    except BaseException:
        os._exit(1)
    os._exit(0 if rc == 0 else 1)


def run_mutants(mutants, base, jobs, timeout_factor, progress):
    """Run each mutant's tests in a forked child, `jobs` at a time."""
    durations = base["_durations"]
    todo = []
    for m in mutants:
        if m.status is not None:
            continue
        m.tests = _line_tests(base, m)
        if not m.tests:
            m.status = "uncovered"
            continue
        todo.append(m)
    running = {}
    done = len(mutants) - len(todo)
    total = len(mutants)
    last = 0.0
    while todo or running:
        while todo and len(running) < jobs:
            m = todo.pop(0)
            budget = 10.0 + timeout_factor * sum(durations.get(t, 0.0) for t in m.tests)
            pid = os.fork()
            if pid == 0:
                _child(m, m.tests)
            running[pid] = (m, time.monotonic(), budget)
        now = time.monotonic()
        for pid, (m, started, budget) in list(running.items()):
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == 0:
                if now - started > budget:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    m.status = "timeout"
                else:
                    continue
            else:
                code = os.waitstatus_to_exitcode(status)
                m.status = "survived" if code == 0 else "killed"
            m.seconds = time.monotonic() - started
            del running[pid]
            done += 1
        if progress and time.monotonic() - last > 5:
            last = time.monotonic()
            print(f"  {done}/{total} mutants run", file=sys.stderr, flush=True)
        if running:
            select.select([], [], [], 0.02)


# ------------------------------------------------------------------ report

def summarise(mutants, equivalents):
    """Per module: killed, listed equivalents, known gaps, new survivors and the score."""
    rows = []
    for module in MODULES:
        ms = [m for m in mutants if m.module == module]
        if not ms:
            continue
        alive = [m for m in ms if m.status in ("survived", "uncovered")]
        killed = [m for m in ms if m.status in ("killed", "timeout")]
        equiv = [m for m in alive if m.id in equivalents and not _is_gap(equivalents[m.id])]
        gaps = [m for m in alive if m.id in equivalents and _is_gap(equivalents[m.id])]
        new = [m for m in alive if m.id not in equivalents]
        scored = len(ms) - len(equiv)
        score = 100.0 * len(killed) / scored if scored else 100.0
        rows.append({"module": module, "mutants": len(ms), "killed": len(killed),
                     "equivalent": len(equiv), "known_gaps": len(gaps), "survived": len(new),
                     "score": round(score, 1),
                     "survivors": [_survivor(m) for m in new],
                     "known": [_survivor(m) for m in gaps],
                     "killed_but_listed": [m.id for m in killed if m.id in equivalents]})
    return rows


def _is_gap(reason):
    return reason.upper().startswith("GAP:")


def _survivor(m):
    return {"id": m.id, "line": m.line, "source": m.source_line.strip(), "mutation": m.desc,
            "reached_by": len(m.tests)}


def _daily_seed():
    return int(datetime.date.today().strftime("%Y%m%d"))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="tools/mutate.py",
        description="Mutation testing of the trusted device core (see the module docstring).")
    ap.add_argument("--module", action="append", choices=MODULES,
                    help=f"mutate only this module (repeatable; default: all of {', '.join(MODULES)})")
    ap.add_argument("--sample", type=int, metavar="N", help="run N mutants drawn at random")
    ap.add_argument("--seed", default="daily",
                    help="seed for --sample: an integer, or 'daily' (today's date, so CI rotates)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    ap.add_argument("--fail-under", type=float, default=95.0, metavar="PCT",
                    help="exit 1 when a module scores below this (default 95)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when a survivor is not listed in the equivalents file")
    ap.add_argument("--equivalents", type=Path, default=EQUIVALENTS, help="the equivalents file")
    ap.add_argument("--timeout-factor", type=float, default=5.0,
                    help="a mutant times out after 10 s + this x its tests' baseline time")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--show", metavar="ID", help="print one mutant as a diff and exit")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    os.chdir(REPO)
    modules = args.module or list(MODULES)
    mutants = []
    for module in (MODULES if args.show else modules):
        mutants.extend(enumerate_mutants(module))
    if args.show:
        for m in mutants:
            if m.id == args.show:
                print(m.label())
                print(mutant_diff(m))
                return 0
        print(f"no mutant {args.show}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(m.label())
        print(f"{len(mutants)} mutants")
        return 0

    try:
        equivalents = read_equivalents(args.equivalents)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    all_ids = {m.id for module in MODULES for m in
               (mutants if args.module is None else enumerate_mutants(module))}
    stale = sorted(i for i in equivalents if i not in all_ids)

    seed = None
    if args.sample:
        seed = _daily_seed() if args.seed == "daily" else int(args.seed)
        pool = [m for m in mutants if m.id not in equivalents]
        mutants = sorted(random.Random(seed).sample(pool, min(args.sample, len(pool))),
                         key=lambda m: (MODULES.index(m.module), m.index))

    # Import heavy third-party code once, before forking.
    import cbor2  # noqa: F401
    import cryptography.hazmat.primitives.asymmetric.ec  # noqa: F401
    import hypothesis  # noqa: F401
    import pytest  # noqa: F401

    started = time.monotonic()
    base = baseline(quiet=args.json)
    run_mutants(mutants, base, max(1, args.jobs), args.timeout_factor, progress=not args.json)
    rows = summarise(mutants, equivalents)
    elapsed = time.monotonic() - started

    # A sample of a few mutants a module says nothing about a module's score:
    # a sampled run fails only on unlisted survivors (with --strict).
    failing = [] if seed is not None else [r for r in rows if r["score"] < args.fail_under]
    unexplained = sum(r["survived"] for r in rows)
    if args.json:
        print(json.dumps({"seed": seed, "seconds": round(elapsed, 1), "modules": rows,
                          "stale_equivalents": stale}, indent=2))
    else:
        what = f"sample of {len(mutants)} (seed {seed})" if seed is not None else "all mutants"
        print(f"mutation run: {what}, {elapsed:.0f} s")
        print(f"{'module':<8} {'mutants':>8} {'killed':>8} {'equiv':>6} {'gaps':>5} "
              f"{'survived':>8} {'score':>7}")
        for r in rows:
            print(f"{r['module']:<8} {r['mutants']:>8} {r['killed']:>8} {r['equivalent']:>6} "
                  f"{r['known_gaps']:>5} {r['survived']:>8} {r['score']:>6.1f}%")
        for r in rows:
            for s in r["survivors"]:
                how = (f"reached by {s['reached_by']} test(s)" if s["reached_by"]
                       else "no test reaches it")
                print(f"survived  {s['id']}  {r['module']}.py:{s['line']}  {s['source']}   "
                      f"[{s['mutation']}]  {how}")
        for r in rows:
            for i in r["killed_but_listed"]:
                print(f"warning: {i} is listed in {args.equivalents.name} but a test kills it now")
        for i in stale:
            print(f"warning: {i} is listed in {args.equivalents.name} but no such mutant exists now")
    if failing or (args.strict and unexplained):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
