"""``--rollout-precision bf16|fp16``: the whole sampler model at another precision than the learner's.

The sampler is the policy's ``at_precision`` view: the same fp32 masters rounded to the rollout precision,
so a step moves both; the learner runs ``--precision``. Flags are checked like every flag, and a resumed
run equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

import precision_kernels as pk
from rl import hf, hf_policy
from rl.learner import sequence_logprobs
from rl.mismatch import measure
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate
from rl.tiny_hf import write_tiny_llama
from rl.train import build_parser, main, train

FLAGS = ["--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--eval-every", "100",
         "--eval-prompts", "2", "--dataset-size", "8", "--warmup-target", "0.0", "--no-progress"]


def test_a_tinygpt_view_rounds_the_same_masters_to_its_precision():
    model = TinyGPT(ModelConfig(precision="fp32", d_model=32, n_layers=1), seed=0)
    view = model.at_precision("bf16")
    assert view.cfg.precision == "bf16" and model.cfg.precision == "fp32" and view.cfg.head_dtype == torch.bfloat16
    w = view.compute_weights()
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    assert all(a is b for a, b in zip(model.parameters(), view.parameters()))
    assert torch.equal(w["lm_head.weight"], pk.round_to(model.lm_head.weight.detach(), torch.bfloat16))
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # a step on the masters moves the sampler too
    assert torch.equal(view.compute_weights()["lm_head.weight"],
                       pk.round_to(model.lm_head.weight.detach(), torch.bfloat16))
    kept = TinyGPT(ModelConfig(precision="bf16", head_precision="fp32", d_model=32, n_layers=1)).at_precision("fp16")
    assert kept.cfg.head_dtype == torch.float32  # a head set apart stays apart


def test_a_bf16_sampler_against_the_fp32_learner_differs_and_the_same_view_matches_itself():
    model = TinyGPT(ModelConfig(precision="fp32", d_model=32, n_layers=1), seed=0)
    view = model.at_precision("bf16")
    prompts = torch.randint(0, 10, (3, 7), generator=torch.Generator().manual_seed(0))
    ro = generate(view, prompts, 5, seed=3)
    with torch.no_grad():
        fp32, bf16 = sequence_logprobs(model, ro.tokens, 7), sequence_logprobs(view, ro.tokens, 7)
    assert torch.equal(bf16[ro.mask], ro.logprobs[ro.mask])   # the view is matched with itself
    assert not torch.equal(fp32[ro.mask], ro.logprobs[ro.mask])


def test_an_hf_view_rounds_to_its_precision(tmp_path):
    pytest.importorskip("transformers")
    config = write_tiny_llama(tmp_path / "tiny", layers=1, tokenizer=False, vocab_size=16)
    model, _ = hf.load_model(hf.parse_model(f"hf:{config}"), 0, torch.device("cpu"))
    policy = hf_policy.HFPolicy(model, "fp32")
    view = policy.at_precision("fp16")
    assert (policy.dtype, view.dtype, view.head_dtype) == (torch.float32, torch.float16, torch.float16)
    assert all(t.dtype == torch.float16 for t in view.compute_weights().values())
    assert view.hf is policy.hf


def _records(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_fp32_learner_with_a_bf16_rollout_trains_logs_its_mismatch_and_resumes_bit_for_bit(tmp_path):
    flags = [*FLAGS, "--precision", "fp32", "--rollout-precision", "bf16", "--strict", "--eval-every", "1"]
    summary = train(build_parser().parse_args([*flags, "--steps", "2", "--out", str(tmp_path / "full")]),
                    log=lambda *_: None)
    assert summary["rollout_precision"] == "bf16" and summary["precision"] == "fp32"
    train(build_parser().parse_args([*flags, "--steps", "1", "--out", str(tmp_path / "part")]), log=lambda *_: None)
    train(build_parser().parse_args([*flags, "--steps", "2", "--resume", "--out", str(tmp_path / "part")]),
          log=lambda *_: None)
    full, part = _records(tmp_path / "full"), _records(tmp_path / "part")
    assert full == part and [r["step"] for r in full] == [1, 2]
    # --strict did not stop it: a different sampler precision is a mismatch by design, and it shows
    assert all(r["frac_tokens_differ"] > 0 and r["seq_logratio_std"] > 0 and r["ess_seq"] < 1 for r in full)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a) and all(v.dtype == torch.float32 for v in a.values())


@pytest.mark.parametrize("flags,flag", [
    (["--rollout-precision", "fp4"], "--rollout-precision"),
    (["--rollout-precision", "fp16"], "--rollout-precision"),  # the default --precision fp16 itself
    (["--precision", "fp32", "--rollout-precision", "bf16", "--linear-precision", "fp8"], "--linear-precision"),
])
def test_bad_rollout_flags_are_refused_before_any_work(tmp_path, capsys, flags, flag):
    with pytest.raises(SystemExit) as exc:
        main([*FLAGS, *flags, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_mismatch_table_has_whole_model_rollout_rows():
    from rl.mismatch import VARIANTS, must_match
    from rl.tasks import get_task

    assert ("fp32", None, "matched", "bf16", None) in VARIANTS and ("fp32", None, "matched", "fp16", None) in VARIANTS
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    state = TinyGPT(cfg, seed=0, init="torch").state_dict()
    row = measure(state, cfg, "fp32", None, "matched", "bf16", None, task.make_dataset(4, seed=1)[0], 1.0, 0)
    assert (row["sampler"], row["learner"], row["precision"]) == ("bf16", "fp32", "fp32") and not must_match(row)
    assert row["n_tokens"] > 0 and row["frac_tokens_differ"] > 0 and row["mean_abs_dlogp"] > 0


def test_train_compare_names_the_whole_model_rollouts():
    from benchmarks.train_compare import parse_runs, train_flags

    (run,) = parse_runs("fp32:matched:bf16-rollout")
    assert run == ("fp32", "matched", "bf16-rollout")
    flags = train_flags(*run, "grpo", 3, 0)
    assert flags[flags.index("--rollout-precision") + 1] == "bf16" and flags[flags.index("--precision") + 1] == "fp32"
