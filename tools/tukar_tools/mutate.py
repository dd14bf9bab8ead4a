"""`make mutate`: mutation testing of the core's safety modules with mutmut, and the score per module.

mutmut 3 names a mutant after its module path relative to where it runs, and the tests import the
firmware as `tukar.<module>`; so the run happens in a staging directory (build/mutate) that holds
`tukar/` (a copy of firmware/tukar), `tests/` and pyproject.toml (whose [tool.mutmut] section is the
configuration: the modules mutated and the tests run). mutmut writes its mutated tree to
build/mutate/mutants; TUKAR_FIRMWARE points the host environment (hostenv) at it, so the tests
import the mutated firmware and never the original. The staging copy keeps file times, so mutmut
retests only what changed since the last run; `--fresh` starts over.

Retesting. mutmut retests a survivor against new tests only when the mutant is named, and then
runs every test its function's coverage lists (minutes for a core function). `--retest TESTS...`
instead runs just the given tests against each survivor (and each mutant mutmut found no test for
or has not run yet: one these tests do not kill stays undecided, not survived),
the way mutmut does (the tests imported once, then one fork per mutant), and keeps what it finds
in build/mutate/retest.json, after each verdict (an interrupted retest keeps what it found): the
report counts a survivor those tests kill as killed, and says so.
The results name the mutated tree they were found on; a new `make mutate` run supersedes them.

Usage: python -m tukar_tools.mutate [--max-children N] [--fresh] [--survivors] [mutant names...]
       python -m tukar_tools.mutate --retest tests/mutants/ [more tests...]
"""
import argparse
import fnmatch
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGE = ROOT / "build" / "mutate"
KILLED = (1, 3, 36, 24, -24, 152, 255, -9, -11, 37)  # a failing test, a time-out, a crash


def config(root=ROOT):
    """The [tool.mutmut] section of pyproject.toml."""
    text = (root / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["tool"]["mutmut"]
    raise SystemExit("tukar mutate needs Python 3.11 (tomllib)")


def modules(cfg):
    """The firmware modules mutated, as paths under firmware/ (tukar/core.py ...)."""
    return list(cfg["only_mutate"])


def test_files(cfg):
    """The test files each mutant is run against (node ids reduced to their files)."""
    return [a.split("::")[0] for a in cfg["pytest_add_cli_args_test_selection"]
            if a.startswith("tests/")]


def _sync(src, dst):
    """Copy src's tree to dst keeping file times (mutmut skips files whose time is unchanged);
    files gone from src are removed from dst."""
    dst.mkdir(parents=True, exist_ok=True)
    names = set()
    for p in src.rglob("*"):
        if "__pycache__" in p.parts or p.suffix in (".pyc", ".mpy"):
            continue
        rel = p.relative_to(src)
        names.add(rel)
        q = dst / rel
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
        elif not q.exists() or q.stat().st_mtime != p.stat().st_mtime or q.stat().st_size != p.stat().st_size:
            shutil.copy2(p, q)
    for q in sorted(dst.rglob("*"), reverse=True):
        rel = q.relative_to(dst)
        if "__pycache__" in rel.parts or rel in names:
            continue
        if q.is_dir():
            shutil.rmtree(q)
        else:
            q.unlink()


def stage(fresh=False):
    if fresh and STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True, exist_ok=True)
    _sync(ROOT / "firmware" / "tukar", STAGE / "tukar")
    _sync(ROOT / "tests", STAGE / "tests")
    src = ROOT / "pyproject.toml"
    if not (STAGE / "pyproject.toml").exists() or (STAGE / "pyproject.toml").read_bytes() != src.read_bytes():
        shutil.copy2(src, STAGE / "pyproject.toml")


RETEST = STAGE / "retest.json"


def _retested():
    """{mutant name: killed (bool)} from the last --retest, for the mutated tree it was run on."""
    try:
        data = json.loads(RETEST.read_text())
    except (OSError, ValueError):
        return {}
    tree = STAGE / "mutants" / "mutmut-stats.json"
    if not tree.exists() or data.get("tree_mtime") != tree.stat().st_mtime:
        return {}  # mutmut has run since: its results supersede these
    return data.get("killed", {})


def results(cfg):
    """{module: (killed, survived names, not run names)} from mutmut's .meta files; a survivor (or
    a mutant with no test) that --retest killed counts as killed."""
    again = _retested()
    out = {}
    for mod in modules(cfg):
        meta = STAGE / "mutants" / (mod + ".meta")
        data = json.loads(meta.read_text()) if meta.exists() else {"exit_code_by_key": {}}
        killed = 0
        survived = []
        other = []
        for name, code in sorted(data["exit_code_by_key"].items()):
            if code in KILLED or (code in (0, 33, None) and again.get(name)):
                killed += 1
            elif code == 0:
                survived.append(name)
            else:
                other.append((name, code))
        out[mod] = (killed, survived, other)
    return out


def report(cfg, show_survivors=False, file=sys.stdout):
    res = results(cfg)
    tk = tt = 0
    print("%-22s %7s %7s %7s" % ("module", "mutants", "killed", "score"), file=file)
    for mod, (killed, survived, other) in res.items():
        total = killed + len(survived) + len(other)
        tk += killed
        tt += total
        print("%-22s %7d %7d %6.1f%%" % (mod, total, killed, 100.0 * killed / total if total else 0),
              file=file)
    print("%-22s %7d %7d %6.1f%%" % ("total", tt, tk, 100.0 * tk / tt if tt else 0), file=file)
    for mod, (killed, survived, other) in res.items():
        for name, code in other:
            print("not decided (exit %s): %s" % (code, name), file=file)
        if show_survivors:
            for name in survived:
                print("survived: %s" % name, file=file)
    return tk, tt


def retest(cfg, tests, max_children=2, only=()):
    """Run `tests` against every survivor and every mutant with no test or not run (matching a glob of
    `only`, when given), one fork per mutant after one run of the tests without a mutant; record
    which are killed in RETEST (added to what earlier retests of this tree found)."""
    res = results(cfg)
    names = [n for _, (_, survived, other) in res.items()
             for n in survived + [m for m, code in other if code in (33, None)]
             if not only or any(fnmatch.fnmatchcase(n, g) for g in only)]
    tree = STAGE / "mutants" / "mutmut-stats.json"
    env = dict(os.environ)
    env["TUKAR_FIRMWARE"] = str(STAGE / "mutants")
    env["TUKAR_MUTATE"] = "1"
    env.pop("PYTHONPATH", None)
    args = json.dumps(cfg["pytest_add_cli_args"] + ["-q", "-x", "-p", "no:randomly"] + list(tests))
    t0 = time.monotonic()
    before = _retested()
    killed = {}

    def keep():  # after every verdict: an interrupted retest keeps what it found
        RETEST.write_text(json.dumps({"tree_mtime": tree.stat().st_mtime,
                                      "killed": dict(before, **killed)}, indent=1))

    err = open(STAGE / "retest.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _FORKER, args, str(max_children)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                            cwd=ROOT, env=env)
    proc.stdin.write("\n".join(names))
    proc.stdin.close()
    for line in proc.stdout:
        verdict, _, name = line.strip().partition(" ")
        if verdict in ("KILLED", "SURVIVED"):
            killed[name] = verdict == "KILLED"
            keep()
            print("%s %s (%d of %d)" % (verdict, name, len(killed), len(names)), flush=True)
    rc = proc.wait()
    err.close()
    if rc != 0 or len(killed) != len(names):
        sys.stderr.write((STAGE / "retest.log").read_text()[-2000:])
        raise SystemExit("tukar mutate --retest: the tests did not run cleanly without a mutant")
    print("retested %d mutants against %s in %.0f s: %d killed"
          % (len(names), " ".join(tests), time.monotonic() - t0, sum(killed.values())))


# The retest's worker: pytest once without a mutant (every import done), then a fork per mutant,
# MUTANT_UNDER_TEST set in the child as mutmut does; `max_children` forks at a time. A mutant that
# loops is stopped by a CPU limit (5 x the run without a mutant, and 30 s more), which counts as a
# kill, as mutmut's time-out does.
_FORKER = """
import json, os, resource, sys, time
import pytest
args, width = json.loads(sys.argv[1]), int(sys.argv[2])
names = [n for n in sys.stdin.read().split("\\n") if n]
quiet = open(os.devnull, "w")
real, sys.stdout = sys.stdout, quiet
t0 = time.process_time()
rc = pytest.main(args)
limit = int(5 * (time.process_time() - t0)) + 30
sys.stdout = real
if rc != 0:
    sys.exit("the tests fail without a mutant (pytest exit %d)" % rc)
running = {}
def reap():
    pid, st = os.wait()
    print(("KILLED " if os.waitstatus_to_exitcode(st) else "SURVIVED ") + running.pop(pid), flush=True)
for n in names:
    while len(running) >= width:
        reap()
    pid = os.fork()
    if pid == 0:
        os.environ["MUTANT_UNDER_TEST"] = n
        used = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime)
        resource.setrlimit(resource.RLIMIT_CPU, (used + limit, used + limit + 5))
        sys.stdout = quiet
        os._exit(int(pytest.main(args)))
    running[pid] = n
while running:
    reap()
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tukar mutate", description=__doc__.split("\n")[0])
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutants (2 cores: 1-2)")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results and start over")
    ap.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    ap.add_argument("--report-only", action="store_true", help="print the last run's figures")
    ap.add_argument("--retest", nargs="+", metavar="TESTS",
                    help="run these tests against every survivor (quick; see above)")
    ap.add_argument("mutants", nargs="*", help="mutant names or globs to (re)test only")
    a = ap.parse_args(argv)
    cfg = config()
    if a.retest:
        retest(cfg, a.retest, a.max_children, a.mutants)
    elif not a.report_only:
        stage(a.fresh)
        env = dict(os.environ)
        env["TUKAR_FIRMWARE"] = str(STAGE / "mutants")
        env["TUKAR_MUTATE"] = "1"  # tests/conftest.py: the mutate hypothesis profile, quick tests first
        env.pop("PYTHONPATH", None)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(a.max_children)]
        rc = subprocess.call(cmd + a.mutants, cwd=STAGE, env=env)
        print("mutmut run: exit %d, %.0f s" % (rc, time.monotonic() - t0))
        if rc not in (0, 1):
            return rc
    report(cfg, a.survivors)
    n = sum(1 for v in _retested().values() if v)
    if n:
        print("(of those killed, %d by --retest: %s)" % (n, RETEST.relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
