"""The benchmarks' output paths and inputs are checked before any measuring; their JSON is strict.

Each case makes the measurement itself raise, so a check that ran after it would show as that
error instead of the refusal.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import benchmarks.mismatch as bench_mismatch
import benchmarks.precision_error as bench_precision
import rl.mismatch as M
from benchmarks._output import OutputPathError, prepare_json_path, write_json
from rl.checkpoint import save_checkpoint
from rl.model import ModelConfig, TinyGPT
from rl.tasks import get_task


def _no_measuring(*args, **kwargs):
    raise AssertionError("the measurement ran before the paths were checked")


@pytest.mark.parametrize("tool", [bench_mismatch, bench_precision], ids=["mismatch", "precision_error"])
def test_an_unwritable_json_path_fails_before_the_measurement(tmp_path, capsys, monkeypatch, tool):
    monkeypatch.setattr(tool, "run", _no_measuring)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--json", str(tmp_path / "file" / "out.json"), "--png", ""])
    assert exc.value.code == 2 and "--json" in capsys.readouterr().err


def test_the_json_directory_is_created_before_the_measurement(tmp_path, monkeypatch):
    seen = {}

    def run(*args, **kwargs):
        seen["dir"] = (tmp_path / "new" / "deeper").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_mismatch, "run", run)
    with pytest.raises(KeyboardInterrupt):
        bench_mismatch.main(["--json", str(tmp_path / "new" / "deeper" / "m.json"), "--png", "",
                             "--checkpoint", _checkpoint(tmp_path, "reverse")])
    assert seen == {"dir": True}


def test_gpu_report_checks_its_json_path_before_anything(tmp_path, capsys, monkeypatch):
    import benchmarks.gpu_report as gpu_report

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", _no_measuring)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exc:
        gpu_report.main(["--json", str(tmp_path / "file" / "r.json")])
    assert exc.value.code == 2 and "--json" in capsys.readouterr().err


def test_prepare_json_path_refuses_a_directory(tmp_path):
    with pytest.raises(OutputPathError, match="directory"):
        prepare_json_path(tmp_path)
    assert prepare_json_path(None) is None


def test_json_outputs_write_null_for_figures_that_are_not_finite(tmp_path):
    path = write_json([{"ratio": math.inf, "loss": math.nan, "ok": 1.5, "nested": [-math.inf]}], tmp_path / "r.json")

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == [{"ratio": None, "loss": None, "ok": 1.5,
                                                                     "nested": [None]}]


def _checkpoint(tmp_path, task_name: str) -> str:
    task = get_task(task_name)
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    path = tmp_path / f"{task_name}.pt"
    save_checkpoint(path, model=TinyGPT(cfg, seed=0), step=7,
                    extra={"args": {"task": task_name, "d_model": 16, "layers": 1, "heads": 2}})
    return str(path)


def test_a_missing_checkpoint_is_an_error_not_a_random_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_mismatch, "run", _no_measuring)
    with pytest.raises(SystemExit) as exc:
        bench_mismatch.main(["--checkpoint", str(tmp_path / "missing.pt"), "--png", ""])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "missing.pt" in err


def test_the_checkpoints_task_is_measured(tmp_path, monkeypatch):
    """A sort checkpoint is measured on sort prompts (its vocabulary and lengths), not on reverse ones."""
    jobs = []

    def measure(state, cfg, precision, head, profile, sampler, learner, prompts, temperature, seed, task="reverse"):
        jobs.append((task, tuple(prompts.shape)))
        return {"task": task, "precision": precision, "head": head or precision, "profile": profile, "x": 0.0}

    monkeypatch.setattr(M, "measure", measure)
    monkeypatch.setattr(M.os, "cpu_count", lambda: 1)
    records, source = M.run(True, _checkpoint(tmp_path, "sort"))
    sort = get_task("sort")
    assert "step 7" in source and {r["task"] for r in records} == {"sort"}
    assert set(jobs) == {("sort", (32, sort.prompt_len))}
