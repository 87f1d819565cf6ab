"""The benchmarks' bad input: a clear error naming the flag, before any work.

Each case makes the measurement itself raise, so a check that ran after it would show as that
error instead of the refusal.
"""

from __future__ import annotations

import pytest
import torch

import benchmarks.hf_mismatch as bench_hf
import benchmarks.mismatch as bench_mismatch
from rl.checkpoint import save_checkpoint
from rl.model import ModelConfig, TinyGPT
from rl.tasks import get_task


def _no_measuring(*args, **kwargs):
    raise AssertionError("the measurement ran before the flags were checked")


def _refused(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


def _tinygpt_state(layers: int = 1) -> dict:
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=layers, n_heads=2, max_seq_len=task.seq_len)
    return TinyGPT(cfg, seed=0).state_dict()


@pytest.fixture
def no_measuring(monkeypatch):
    monkeypatch.setattr(bench_mismatch, "run", _no_measuring)
    monkeypatch.setattr(bench_hf, "measure", _no_measuring)
    monkeypatch.setattr(bench_hf, "run_real", _no_measuring)


def test_mismatch_refuses_an_hf_runs_checkpoint(tmp_path, capsys, no_measuring):
    path = tmp_path / "checkpoint.pt"
    hf_args = {"task": "reverse", "model": "hf:runs/tiny", "d_model": 64, "layers": 2, "heads": 2}
    save_checkpoint(path, model={"model.embed_tokens.weight": torch.zeros(16, 8)}, step=3, extra={"args": hf_args})
    err = _refused(bench_mismatch.main, ["--checkpoint", str(path), "--png", ""], capsys)
    assert f"--checkpoint: {path}" in err and "--model hf:runs/tiny" in err and "TinyGPT" in err


def test_mismatch_refuses_weights_that_do_not_fit_their_flags(tmp_path, capsys, no_measuring):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=_tinygpt_state(layers=1), step=3,
                    extra={"args": {"task": "reverse", "d_model": 16, "layers": 2, "heads": 2}})
    err = _refused(bench_mismatch.main, ["--checkpoint", str(path), "--png", ""], capsys)
    assert f"--checkpoint: {path}" in err and "do not fit" in err


def test_mismatch_calls_a_json_file_json_not_a_pickle(tmp_path, capsys, no_measuring):
    path = tmp_path / "metrics.json"
    path.write_text('{"step": 1}\n')
    err = _refused(bench_mismatch.main, ["--checkpoint", str(path), "--png", ""], capsys)
    assert f"{path}: not a checkpoint: it is JSON text" in err and "unpickl" not in err


@pytest.mark.parametrize("argv, flag", [
    (["--prompt-len", "0"], "--prompt-len must be >= 1"),
    (["--prompt-len", "-3"], "--prompt-len must be >= 1"),
    (["--prompt-len", "100000"], "--prompt-len + --max-new-tokens must be at most"),
    (["--max-new-tokens", "1000000"], "--prompt-len + --max-new-tokens must be at most"),
    (["--prompt-len", "60", "--max-new-tokens", "5"], "max_position_embeddings 64, got 60 + 5"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_hf_mismatch_lengths_are_checked_against_the_model(argv, flag, capsys, no_measuring):
    assert flag in _refused(bench_hf.main, ["--model", "all", *argv], capsys)


def test_hf_mismatch_lengths_that_fit_pass_the_checks(capsys, no_measuring):
    with pytest.raises(AssertionError, match="the measurement ran"):
        bench_hf.main(["--model", "gpt2", "--prompt-len", "60", "--max-new-tokens", "4"])


def test_hf_mismatch_real_model_max_new_tokens_within_its_context(capsys, no_measuring):
    from rl import hf

    try:
        hf.find_gguf()
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))
    err = _refused(bench_hf.main, ["--model", "smollm2", "--max-new-tokens", "1000000"], capsys)
    assert "--max-new-tokens must be at most" in err and "8192 positions" in err
