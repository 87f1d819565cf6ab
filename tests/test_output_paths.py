"""Output paths (rl.output_paths, benchmarks._output): a device, a FIFO or a link is written through, never replaced.

The FIFO stands in for a device node (making one needs root, and a test must not risk the
machine's /dev): before the rule, ``write_json`` replaced whatever was at the path with a
regular file.
"""

from __future__ import annotations

import ast
import json
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import benchmarks.hf_mismatch as bench_hf
import benchmarks.mismatch as bench_mismatch
import benchmarks.precision_error as bench_precision
from benchmarks._output import OutputExistsError, OutputPathError, prepare_output_path, write_json
from rl.output_paths import check_output_path, open_output, output_target

ROOT = Path(__file__).resolve().parents[1]


def _read_fifo(path: Path, got: list) -> threading.Thread:
    def read():
        with open(path, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "report"
    os.mkfifo(fifo)
    got: list = []
    reader = _read_fifo(fifo, got)
    check_output_path(fifo)
    write_json({"x": 1}, fifo)
    reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert json.loads(got[0]) == {"x": 1}
    assert os.listdir(tmp_path) == ["report"]


def test_a_link_stays_a_link_and_its_target_gets_the_report(tmp_path):
    target = tmp_path / "reports" / "r.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_json([1, 2], link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == [1, 2]
    assert sorted(os.listdir(target.parent)) == ["r.json"]  # no temporary file left beside it


def test_a_link_to_dev_null_stays_a_link_to_the_device(tmp_path):
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    write_json({"x": 1}, link)
    assert link.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert output_target(link) == (link, True)


def test_a_link_to_nothing_creates_its_target(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "made.json")
    check_output_path(link)
    write_json({"x": 1}, link)
    assert link.is_symlink() and json.loads((tmp_path / "made.json").read_text()) == {"x": 1}


def test_the_processes_own_stdout_is_appended_to_not_replaced(tmp_path):
    """``--json /dev/stdout`` (here /proc/self/fd/1, stdout redirected to a file) keeps what was printed before."""
    log = tmp_path / "log.txt"
    code = ("from benchmarks._output import write_json\nprint('table')\n"
            "write_json({'x': 1}, '/proc/self/fd/1')\nprint('after')\n")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert log.read_text() == 'table\n{\n "x": 1\n}\nafter\n'
    assert sorted(os.listdir(tmp_path)) == ["log.txt"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), open_output(path) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_a_directory_is_refused_by_name(tmp_path):
    with pytest.raises(OutputPathError, match="--png .*names a directory"):
        prepare_output_path(tmp_path, "--png")
    with pytest.raises(OutputPathError, match="names a directory"):
        write_json({}, tmp_path)


def test_replace_false_refuses_a_file_also_through_a_link_but_not_a_device(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"png")
    link = tmp_path / "link.png"
    link.symlink_to(path)
    for p in (path, link):
        with pytest.raises(OutputExistsError, match="--png .*already there"):
            prepare_output_path(p, "--png", replace=False)
    assert prepare_output_path(tmp_path / "new.png", "--png", replace=False) == tmp_path / "new.png"
    assert prepare_output_path(os.devnull, "--png", replace=False) == Path(os.devnull)


def _no_measuring(*args, **kwargs):
    raise AssertionError("the measurement ran before the paths were checked")


@pytest.mark.parametrize("tool", [bench_mismatch, bench_precision], ids=["mismatch", "precision_error"])
def test_an_existing_plot_is_refused_before_the_measurement_unless_forced(tmp_path, capsys, monkeypatch, tool):
    monkeypatch.setattr(tool, "run", _no_measuring)
    png = tmp_path / "plot.png"
    png.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--png", str(png), "--seed", "0"])
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err and png.read_bytes() == b"keep me"
    with pytest.raises(AssertionError, match="the measurement ran"):  # with --force the checks pass
        tool.main(["--png", str(png), "--force"])


def test_mismatch_help_names_where_the_plot_goes(capsys):
    with pytest.raises(SystemExit):
        bench_mismatch.main(["--help"])
    assert "default runs/mismatch.png" in " ".join(capsys.readouterr().out.split())


def _mismatch_row(precision: str, profile: str, x: float) -> dict:
    keys = ("mean_abs_dlogp", "max_abs_dlogp", "frac_tokens_differ", "kl_k1", "kl_k3", "seq_k3", "rel_rms_logp",
            "rel_rms_prob", "dp_p99")
    return {"task": "reverse", "precision": precision, "head": precision, "profile": profile, **dict.fromkeys(keys, x)}


def test_mismatch_redraws_through_a_link_with_force(tmp_path):
    """make demo's second half: --records, then --png --force over the last plot, here through a link to it."""
    records = tmp_path / "mismatch.json"
    write_json([_mismatch_row("fp32", "matched", 0.0), _mismatch_row("fp16", "engine", 1e-3),
                _mismatch_row("bf16", "engine", 1e-2)], records)
    plot = tmp_path / "plots" / "mismatch.png"
    plot.parent.mkdir()
    plot.write_bytes(b"old plot")
    link = tmp_path / "mismatch.png"
    link.symlink_to(plot)
    assert bench_mismatch.main(["--records", str(records), "--png", str(link), "--force"]) == 0
    assert link.is_symlink() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hf_mismatch_json_is_strict_and_written_by_the_shared_writer(tmp_path, monkeypatch):
    rows = []

    def measure(name, precision, matched, **kwargs):
        row = {"model": name, "precision": precision, "mode": "matched" if matched else "torch",
               "mean_abs_dlogp": math.nan, "max_abs_dlogp": 0.0, "frac_tokens_differ": 0.0, "k1": 0.0,
               "k3": math.inf, "seq_k3": 0.0, "rel_rms_logp": 0.0, "dp_p99": 0.0,
               "alone_vs_batch_logits_differ": 0.0, "uncovered_ops": [], "seconds": 0.0}
        rows.append(row)
        return row

    monkeypatch.setattr(bench_hf, "measure", measure)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    got: list = []
    reader = _read_fifo(fifo, got)
    bench_hf.main(["--model", "llama", "--json", str(fifo)])
    reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    written = json.loads(got[0], parse_constant=refuse)
    assert len(written) == len(rows) == 6 and all(r["mean_abs_dlogp"] is None and r["k3"] is None for r in written)


def test_records_cut_back_on_resume_keep_a_linked_metrics_file_a_link(tmp_path):
    from rl.run_records import records_up_to

    target = tmp_path / "elsewhere.jsonl"
    target.write_text('{"step": 1}\n{"step": 2}\n')
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(target)
    assert [r["step"] for r in records_up_to(link, 1, lambda *_: None)] == [1]
    assert link.is_symlink() and target.read_text() == '{"step": 1}\n'


# Writes that bypass the rule: a file opened to be written from its start, write_text/bytes, savefig to a path,
# os.replace, torch.save. Appending ("a": metrics.jsonl's records) replaces nothing and writes a link's target.
_WRITE_MODES = ("w", "x")
_ALLOWED = {
    "rl/output_paths.py": "the rule itself",
    "benchmarks/export_subset.py": "GGUFWriter opens its own file: the target comes from output_target",
}


def _names(args: list, name: str) -> bool:
    return bool(args) and isinstance(args[0], ast.Name) and args[0].id == name


def _bypasses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
        if name == "open" and owner != "os" and isinstance(func, ast.Attribute):
            mode = next((a.value for a in node.args[:1] if isinstance(a, ast.Constant)), None)  # Path.open(mode)
        mode = next((k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)),
                    mode)
        if (name == "open" and isinstance(mode, str) and mode[:1] in _WRITE_MODES
                or name in ("write_text", "write_bytes")
                or name == "replace" and owner == "os"
                or name == "save" and owner == "torch" and not _names(node.args[1:2], "f")  # open_output's file
                or name == "savefig" and not _names(node.args[:1], "buffer")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


@pytest.mark.parametrize("package", ["benchmarks", "rl"])
def test_every_output_goes_through_the_rule(package):
    files = sorted((ROOT / package).glob("*.py"))
    found = [hit for f in files if str(f.relative_to(ROOT)) not in _ALLOWED for hit in _bypasses(f)]
    assert not found, f"outputs written around rl.output_paths: {found}"
