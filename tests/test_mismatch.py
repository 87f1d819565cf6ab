"""rl.mismatch: matched, engine-attribution and FP8 rows measured on a tiny policy; the headline ratios on
hand-made rows."""

import math

from rl.mismatch import fp8_headline, headline, matched_rows_zero, measure
from rl.model import ModelConfig, TinyGPT
from rl.tasks import get_task


def test_matched_row_is_exactly_zero():
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    state = TinyGPT(cfg, seed=0).state_dict()
    prompts = task.make_dataset(4, seed=1)[0]
    row = measure(state, cfg, "bf16", None, "matched", None, None, prompts, 1.0, 0)
    assert row["n_tokens"] > 0 and row["frac_tokens_differ"] == 0.0 and row["max_abs_dlogp"] == 0.0
    assert matched_rows_zero([row])
    assert not matched_rows_zero([row, {**row, "max_abs_dlogp": 2.0**-23}])


def test_headline_ratios():
    def row(p, v):
        return {"precision": p, "head": p, "profile": "engine", "rel_rms_logp": v, "rel_rms_prob": 2 * v,
                "kl_k3": v * v, "mean_abs_dlogp": v}

    h = headline([row("fp16", 1e-4), row("bf16", 8e-4), {**row("bf16", 5.0), "head": "fp32"}])
    assert math.isclose(h["rel_rms_logp_ratio"], 8.0) and math.isclose(h["kl_k3_ratio"], 64.0)
    assert headline([row("fp16", 0.0), row("bf16", 1.0)])["kl_k3_ratio"] == math.inf
    assert math.isnan(headline([row("fp16", 0.0), row("bf16", 0.0)])["mean_abs_dlogp_ratio"])


def test_split_kv_attention_alone_gives_a_mismatch_and_split_k_alone_too():
    """The attribution rows: the engine's split-KV attention and its split-K matmuls each move the sampler's
    log-probs off the learner's on their own (a decode batch small enough that the engine splits the keys)."""
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    state = TinyGPT(cfg, seed=0).state_dict()
    prompts = task.make_dataset(4, seed=1)[0]
    for profile in ("engine-attention", "engine-matmul"):
        row = measure(state, cfg, "bf16", None, profile, None, None, prompts, 1.0, 0)
        assert row["profile"] == profile and row["n_tokens"] > 0
        assert row["frac_tokens_differ"] > 0 and row["max_abs_dlogp"] > 0, profile


def _tiny_policy():
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    return TinyGPT(cfg, seed=0, init="torch").state_dict(), cfg, task.make_dataset(4, seed=1)[0]


def test_an_fp8_rollout_differs_from_its_learner_and_fp8_matched_is_exactly_zero():
    state, cfg, prompts = _tiny_policy()
    matched = measure(state, cfg, "bf16", None, "matched", "fp8", "fp8", prompts, 1.0, 0)
    rollout = measure(state, cfg, "bf16", None, "matched", "fp8", None, prompts, 1.0, 0)
    bf16 = measure(state, cfg, "bf16", None, "matched", None, None, prompts, 1.0, 0)
    assert (matched["sampler"], matched["learner"], rollout["sampler"], rollout["learner"]) == ("fp8", "fp8", "fp8",
                                                                                                 "bf16")
    assert matched["n_tokens"] > 0 and matched["frac_tokens_differ"] == 0 and matched["max_abs_dlogp"] == 0
    assert rollout["frac_tokens_differ"] > 0 and rollout["mean_abs_dlogp"] > 0
    assert matched_rows_zero([matched, bf16]) and matched_rows_zero([matched, rollout])  # a rollout row may differ
    assert not matched_rows_zero([{**matched, "max_abs_dlogp": 1e-7}])


def test_fp8_matched_log_probs_are_quantised():
    """The same sampled tokens scored by the fp8 and the bf16 matched learners: the fp8 one quantised something."""
    import torch

    from rl.learner import sequence_logprobs
    from rl.sampler import generate

    state, cfg, prompts = _tiny_policy()
    task = get_task("reverse")
    models = {}
    for linears in (None, "fp8"):
        models[linears] = TinyGPT(ModelConfig(**{**cfg.__dict__, "precision": "bf16", "linear_precision": linears}))
        models[linears].load_state_dict(state)
    ro = generate(models["fp8"], prompts, task.max_new_tokens, generator=torch.Generator().manual_seed(0),
                  eos_id=task.eos_id, pad_id=task.pad_id)
    with torch.no_grad():
        fp8, bf16 = (sequence_logprobs(models[k], ro.tokens, task.prompt_len) for k in ("fp8", None))
    assert torch.equal(fp8[ro.mask], ro.logprobs[ro.mask])
    assert not torch.equal(fp8[ro.mask], bf16[ro.mask])


def test_fp8_headline_is_over_the_engine_row_of_the_learners_precision():
    def row(p, profile, v, sampler=None, learner=None):
        return {"precision": p, "head": p, "profile": profile, "sampler": sampler or p, "learner": learner or p,
                "mean_abs_dlogp": v}

    rows = [row("bf16", "engine", 0.01), row("fp16", "engine", 0.002), row("bf16", "matched", 0.03, "fp8"),
            row("fp16", "matched", 0.02, "fp8"), row("bf16", "matched", 0.0, "fp8", "fp8")]
    got = fp8_headline(rows)
    assert got.keys() == {"bf16", "fp16"}
    assert math.isclose(got["bf16"], 3.0) and math.isclose(got["fp16"], 10.0)
