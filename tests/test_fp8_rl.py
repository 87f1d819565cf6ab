"""FP8 in the RL lab (rl.train): an FP8 (W8A8) rollout against a bf16 learner, and the FP8 matched variant.

The FP8 matched run's sampler and learner run the same quantised linears, so ``--strict`` finds no
mismatch and the straight-through gradient still trains the fp32 masters; an FP8 rollout against a
bf16 learner differs on every step and ``--strict`` lets it (that mismatch is the measurement).
"""

from __future__ import annotations

import json

import pytest
import torch

from rl.tiny_hf import write_tiny_llama
from rl.train import main

FLAGS = ["--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--dataset-size", "16",
         "--eval-every", "100", "--eval-prompts", "4", "--steps", "2", "--no-progress", "--precision", "bf16"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fp8_matched_has_no_mismatch_and_trains_the_fp32_masters(tmp_path):
    assert main([*FLAGS, "--linear-precision", "fp8", "--strict", "--out", str(tmp_path)]) == 0
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["frac_tokens_differ"] == 0 and r["max_abs_dlogp"] == 0 and r["n_tokens"] > 0 for r in records)
    assert any(r["grad_norm"] > 0 for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["linear_precision"] == summary["rollout_precision"] == "fp8"
    assert summary["config"]["linear_precision"] == "fp8"
    model = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in model.values())


def test_an_fp8_rollout_against_a_bf16_learner_differs_and_strict_lets_it(tmp_path):
    assert main([*FLAGS, "--rollout-precision", "fp8", "--strict", "--out", str(tmp_path)]) == 0
    records = _records(tmp_path)
    assert len(records) == 2 and all(r["frac_tokens_differ"] > 0 and r["mean_abs_dlogp"] > 0 for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rollout_precision"] == "fp8" and summary["linear_precision"] is None


@pytest.mark.parametrize("flag", ["--rollout-precision", "--linear-precision"])
def test_a_hugging_face_model_refuses_fp8_linears(tmp_path, capsys, flag):
    pytest.importorskip("transformers")
    config = write_tiny_llama(tmp_path / "tiny", layers=1, tokenizer=False, vocab_size=16)
    with pytest.raises(SystemExit) as exc:
        main(["--model", f"hf:{config}", "--task", "add", flag, "fp8", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
