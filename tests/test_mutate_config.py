"""`make mutate`'s configuration stays true to the tree (without running the mutation run): the
modules it mutates and the tests it runs exist, and the safety modules are all in it."""
import pathlib
import re

from tukar_tools import mutate

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = mutate.config(ROOT)
# Where the safety rules of cabinet.md live (docs/core.md: the rule-to-code table; edge.py holds
# the core's events and its edge to the shell, once in core.py; packs.py the retirement rule,
# never dispensing a worn pack, and the energy counters that must survive a power cut).
SAFETY_MODULES = {"core", "edge", "slot", "session", "commands", "journal", "gate", "sign", "outbox", "packs"}


def test_every_module_mutated_exists_in_the_firmware():
    for mod in mutate.modules(CFG):
        assert (ROOT / "firmware" / mod).is_file(), mod


def test_the_safety_modules_are_all_mutated():
    names = {pathlib.Path(m).stem for m in mutate.modules(CFG)}
    assert SAFETY_MODULES <= names


def test_every_test_file_run_against_the_mutants_exists():
    files = mutate.test_files(CFG)
    assert files
    for f in files:
        assert (ROOT / f).is_file() or (ROOT / f).is_dir(), f


def test_the_tests_written_against_survivors_are_run_against_the_mutants():
    assert "tests/mutants/" in mutate.test_files(CFG)
    assert sorted((ROOT / "tests" / "mutants").glob("test_*.py"))


def test_mutmut_is_pinned_and_make_has_the_target():
    assert re.search(r"^mutmut==\d+\.\d+\.\d+$", (ROOT / "requirements.txt").read_text(), re.M)
    assert re.search(r"^mutate:", (ROOT / "Makefile").read_text(), re.M)
    assert CFG["source_paths"] == ["tukar"]


def test_every_survivor_the_docs_explain_is_named_after_a_mutated_module():
    text = (ROOT / "docs" / "safety.md").read_text()
    assert "## Mutation testing" in text
    mods = {pathlib.Path(m).stem for m in mutate.modules(CFG)}
    for name in re.findall(r"`tukar\.(\w+)\.x[^`]*__mutmut_\d+`", text):
        assert name in mods, name


def test_a_survivor_the_retest_killed_counts_as_killed_until_mutmut_runs_again(tmp_path, monkeypatch):
    import json
    stage = tmp_path / "mutate"
    (stage / "mutants" / "tukar").mkdir(parents=True)
    stats = stage / "mutants" / "mutmut-stats.json"
    stats.write_text("{}")
    meta = {"exit_code_by_key": {"tukar.gate.x_a__mutmut_1": 1, "tukar.gate.x_a__mutmut_2": 0,
                                 "tukar.gate.x_a__mutmut_3": 0, "tukar.gate.x_a__mutmut_4": 33}}
    (stage / "mutants" / "tukar" / "gate.py.meta").write_text(json.dumps(meta))
    monkeypatch.setattr(mutate, "STAGE", stage)
    monkeypatch.setattr(mutate, "RETEST", stage / "retest.json")
    cfg = {"only_mutate": ["tukar/gate.py"]}
    assert mutate.results(cfg)["tukar/gate.py"][0] == 1
    (stage / "retest.json").write_text(json.dumps({
        "tree_mtime": stats.stat().st_mtime,
        "killed": {"tukar.gate.x_a__mutmut_2": True, "tukar.gate.x_a__mutmut_3": False,
                   "tukar.gate.x_a__mutmut_4": True}}))
    killed, survived, other = mutate.results(cfg)["tukar/gate.py"]
    assert (killed, survived, other) == (3, ["tukar.gate.x_a__mutmut_3"], [])
    stats.write_text("{}  ")  # mutmut ran again: its results stand alone
    import os
    os.utime(stats, (1, 1))
    assert mutate.results(cfg)["tukar/gate.py"][0] == 1
