"""The GPU check (.ci/gpu_check) without a GPU: its dry run on the real selection, and its failure cases.

The dry run collects the selection's test files (pytest --collect-only) and fails unless every
entry of tests/gpu_selection.txt resolves and every test marked ``gpu`` is in it. The failure
cases run the script from a copy of .ci/ beside a small synthetic test folder, so their
collections import no torch and load no pytest plugin. The python the script uses is this one (PK_GPU_CHECK_PYTHON).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CI = ROOT / ".ci"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, CI / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod           # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


gpu_selection = _module("gpu_selection")
gpu_results = _module("gpu_results")


def _run(args: list[str], root: pathlib.Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PK_GPU_CHECK_PYTHON=sys.executable)
    env.pop("OUT", None)
    if root != ROOT:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"    # the synthetic tree needs no plugin: ~3 s less a run
    return subprocess.run(["bash", str(root / ".ci" / "gpu_check"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=root)


def test_dry_run_on_the_real_selection():
    proc = _run(["--dry-run"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "gpu_check --dry-run: ok" in out
    for step in ("versions", "tests_gpu_only", "tests_invariants", "compile_check", "gpu_report"):
        assert f"  {step} " in out, step
    sum_line = next(line for line in out.splitlines() if line.strip().startswith("sum "))
    timeouts = sum(int(line.split()[1]) for line in out.splitlines()
                   if line.split()[:1] and line.split()[0] in ("versions", "tests_gpu_only", "tests_invariants",
                                                                "gpu_report"))
    assert int(sum_line.split()[1]) == timeouts <= 270     # 4.5 minutes on the GPU, compile time included
    for section in gpu_selection.sections(gpu_selection.parse(ROOT / "tests" / "gpu_selection.txt")):
        assert f"[{section}]" in out
    counts = next(line for line in out.splitlines() if line.startswith("selected tests by section:"))
    assert "gpu_only" in counts and "invariants" in counts and "all in the selection" in out


# ---- failure cases in a synthetic tree --------------------------------------------------------

# The marker is spelled apart, so that the dry run's scan for files marking tests gpu skips this file.
TESTS = '''
import pytest

@pytest.GPU_MARK
@pytest.mark.parametrize("n", [1, 2])
def test_on_gpu(n):
    pass

@pytest.mark.skipif(True, reason="GPU-only: by its reason")
def test_gpu_only_unmarked():
    pass

def test_invariant_a():
    pass

def test_invariant_b():
    pass
'''.replace("GPU_MARK", "mark." + "gpu")


@pytest.fixture
def tree(tmp_path):
    (tmp_path / ".ci").mkdir()
    for name in ("gpu_check", "gpu_selection.py", "gpu_results.py"):
        shutil.copy(CI / name, tmp_path / ".ci" / name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    return tmp_path


def _selection(tree, text: str) -> str:
    path = tree / "tests" / "sel.txt"
    path.write_text(text)
    return str(path)


def test_dry_run_passes_a_complete_selection_and_notes_optional_entries(tree):
    sel = _selection(tree, "[gpu_only]\ntests/test_a.py::test_on_gpu\n[invariants]\n"
                           "tests/test_a.py::test_invariant_*\n?tests/test_later.py\n")
    proc = _run(["--dry-run", "--selection", sel], root=tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "tests_gpu_only: 2 tests" in out and "tests_invariants: 2 tests" in out
    assert "(optional) matches no test yet" in out and "(file not there yet)" in out
    assert "GPU-only by its skip reason but not marked 'gpu': tests/test_a.py::test_gpu_only_unmarked" in out


def test_dry_run_fails_on_a_missing_gpu_test_and_an_entry_that_matches_nothing(tree):
    sel = _selection(tree, "[gpu_only]\ntests/test_a.py::test_on_gpu[1]\n[invariants]\n"
                           "tests/test_a.py::test_no_such_test\n")
    proc = _run(["--dry-run", "--selection", sel], root=tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "test marked 'gpu' is in no section of the selection: tests/test_a.py::test_on_gpu[2]" in out
    assert "line 4 [invariants] 'tests/test_a.py::test_no_such_test' matches no collected test" in out
    assert "FAIL" in out and "gpu_check --dry-run: ok" not in out


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--selection", "no/such/selection.txt"], "--selection 'no/such/selection.txt' is not a file"),
    (["--out"], "--out needs a folder"),
    (["--steps", "versions,nothing"], "--steps: unknown step 'nothing'"),
])
def test_bad_arguments_are_named(args, message):
    proc = _run(args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_a_malformed_selection_is_refused_before_any_collection(tree):
    sel = _selection(tree, "[gpu_only]\ntests/test_a.py::\n")
    proc = _run(["--dry-run", "--selection", sel], root=tree)
    assert proc.returncode == 2 and "sel.txt:2: expected tests/<file>.py" in proc.stderr, proc.stderr


# ---- the selection's parser and matching, in process -------------------------------------------

def _entries(tmp_path, text):
    path = tmp_path / "sel.txt"
    path.write_text(text)
    return gpu_selection.parse(path)


def test_patterns_match_names_with_and_without_parameters(tmp_path):
    e = _entries(tmp_path, "[s]\ntests/t.py::test_x\ntests/t.py::test_y*\ntests/t.py::test_z[1-a]\ntests/u.py\n"
                           "tests/t.py::C::test_?\n")
    x, y, z, u, c = e
    assert x.matches("tests/t.py::test_x") and x.matches("tests/t.py::test_x[3-b]")
    assert not x.matches("tests/t.py::test_xy") and not x.matches("tests/u.py::test_x")
    assert y.matches("tests/t.py::test_yes[1]") and not y.matches("tests/t.py::test_x")
    assert z.matches("tests/t.py::test_z[1-a]") and not z.matches("tests/t.py::test_z[1]")  # [ is literal
    assert u.matches("tests/u.py::anything[1]") and not u.matches("tests/t.py::test_x")
    assert c.matches("tests/t.py::C::test_a") and not c.matches("tests/t.py::C::test_ab")


def test_check_orders_by_entry_and_reports_problems(tmp_path):
    entries = _entries(tmp_path, "[first]\ntests/t.py::test_b\n[second]\ntests/t.py::test_*\n?tests/v.py\n")
    ids = ["tests/t.py::test_a", "tests/t.py::test_b", "tests/t.py::test_c"]
    report = gpu_selection.check(entries, ids, gpu_marked=["tests/t.py::test_c", "tests/w.py::test_g"],
                                 gpu_only_unmarked=[])
    assert report["sections"] == {"first": ["tests/t.py::test_b"], "second": ["tests/t.py::test_a",
                                                                              "tests/t.py::test_c"]}
    assert report["problems"] == ["test marked 'gpu' is in no section of the selection: tests/w.py::test_g"]
    assert [e["matches"] for e in report["entries"]] == [1, 3, 0]


@pytest.mark.parametrize("text, message", [
    ("tests/t.py\n", "comes before any [section]"),
    ("[a b]\ntests/t.py\n", "a section name is"),
    ("[s]\ntests/t.txt\n", "expected tests/<file>.py"),
    ("[s]\ntests/t.py -k x\n", "without spaces"),
    ("[s]\n# only a comment\n", "holds no entries"),
])
def test_malformed_selections_name_the_line(tmp_path, text, message):
    with pytest.raises(gpu_selection.SelectionError, match=re.escape(message)):
        _entries(tmp_path, text)


# ---- the plugin's outcome lines and deadline; the results JSON ----------------------------------

def test_deadline_stops_the_run_and_outcomes_are_written_as_they_come(tree):
    (tree / "tests" / "test_slow.py").write_text(
        "import time\nimport pytest\n\n@pytest.mark.parametrize('i', range(5))\n"
        "def test_sleep(i):\n    time.sleep(0.2)\n\ndef test_fails():\n    assert 1 == 2\n")
    sel = _selection(tree, "[s]\ntests/test_slow.py::test_fails\ntests/test_slow.py::test_sleep\n")
    outcomes = tree / "outcomes.jsonl"
    outcomes.write_text('{"step": "s"}\n')
    env = dict(os.environ, PYTHONPATH=str(tree / ".ci"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_selection",
                           "--gpu-selection", sel, "--gpu-outcomes", str(outcomes), "--gpu-deadline", "1",
                           "tests/test_slow.py"], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "deadline for this step passed" in proc.stdout, proc.stdout[-2000:]
    parsed = gpu_results.parse_outcomes(outcomes, "s")
    # The selection's order is the run's: the failing test first, then the deadline stops the rest.
    assert list(parsed["tests"]) == ["tests/test_slow.py::test_fails"]
    assert parsed["counts"]["failed"] == 1 and "assert 1 == 2" in parsed["failures"][0]["message"]


def test_results_record_each_step_and_the_summary_says_what_ran(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"steps": [{"name": "versions", "timeout_s": 20, "estimate_s": 8},
                                          {"name": "tests_gpu_only", "timeout_s": 70, "estimate_s": 45},
                                          {"name": "gpu_report", "timeout_s": 60, "estimate_s": 45}]}))
    out = tmp_path / "out"
    assert gpu_results.main(["init", "--out", str(out), "--plan", str(plan)]) == 0
    lines = [{"step": "tests_gpu_only"},
             {"test": "tests/t.py::test_ok", "when": "call", "outcome": "passed", "seconds": 0.5, "xfail": False,
              "message": ""},
             {"test": "tests/t.py::test_bad", "when": "setup", "outcome": "failed", "seconds": 0.1, "xfail": False,
              "message": "E   RuntimeError: no CUDA"},
             {"test": "tests/t.py::test_skip", "when": "setup", "outcome": "skipped", "seconds": 0.0,
              "xfail": False, "message": "needs the cut"},
             {"step": "other"},
             {"test": "tests/t.py::test_elsewhere", "when": "call", "outcome": "passed", "seconds": 1.0,
              "xfail": False, "message": ""}]
    jsonl = tmp_path / "o.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"test": "cut off')
    gpu_results.main(["step", "--out", str(out), "--name", "tests_gpu_only", "--rc", "0", "--seconds", "40",
                      "--outcomes", str(jsonl)])
    results = json.loads((out / "results.json").read_text())
    step = results["steps"]["tests_gpu_only"]
    assert step["status"] == "failed"             # pytest's rc 0 is overruled by an error in the outcomes
    assert step["counts"]["passed"] == 1 and step["counts"]["error"] == 1 and step["counts"]["skipped"] == 1
    assert "tests/t.py::test_elsewhere" not in step["tests"]
    gpu_results.main(["step", "--out", str(out), "--name", "gpu_report", "--rc", "124", "--seconds", "60"])
    assert gpu_results.main(["finish", "--out", str(out)]) == 1
    summary = (out / "summary.md").read_text()
    assert "| tests_gpu_only | failed | 40 (45, 70) | 1 passed, 0 failed, 1 error, 1 skipped |" in summary
    assert "| gpu_report | timeout |" in summary and "| versions | not run |" in summary
    assert "`tests/t.py::test_bad`: E   RuntimeError: no CUDA" in summary
