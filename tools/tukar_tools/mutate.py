"""`make mutate`: mutation testing of the core's safety modules with mutmut, and the score per module.

mutmut 3 names a mutant after its module path relative to where it runs, and the tests import the
firmware as `tukar.<module>`; so the run happens in a staging directory (build/mutate) that holds
`tukar/` (a copy of firmware/tukar), `tests/` and pyproject.toml (whose [tool.mutmut] section is the
configuration: the modules mutated and the tests run). mutmut writes its mutated tree to
build/mutate/mutants; TUKAR_FIRMWARE points the host environment (hostenv) at it, so the tests
import the mutated firmware and never the original. The staging copy keeps file times, so mutmut
retests only what changed since the last run; `--fresh` starts over.

Usage: python -m tukar_tools.mutate [--max-children N] [--fresh] [--survivors] [mutant names...]
"""
import argparse
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


def results(cfg):
    """{module: (killed, survived names, not run names)} from mutmut's .meta files."""
    out = {}
    for mod in modules(cfg):
        meta = STAGE / "mutants" / (mod + ".meta")
        data = json.loads(meta.read_text()) if meta.exists() else {"exit_code_by_key": {}}
        killed = 0
        survived = []
        other = []
        for name, code in sorted(data["exit_code_by_key"].items()):
            if code in KILLED:
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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tukar mutate", description=__doc__.split("\n")[0])
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutants (2 cores: 1-2)")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results and start over")
    ap.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    ap.add_argument("--report-only", action="store_true", help="print the last run's figures")
    ap.add_argument("mutants", nargs="*", help="mutant names or globs to (re)test only")
    a = ap.parse_args(argv)
    cfg = config()
    if not a.report_only:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
