"""rl.mismatch: one matched row measured on a tiny policy, and the headline ratios on hand-made rows."""

import math

from rl.mismatch import headline, matched_rows_zero, measure
from rl.model import ModelConfig, TinyGPT
from rl.tasks import get_task


def test_matched_row_is_exactly_zero():
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=task.seq_len)
    state = TinyGPT(cfg, seed=0).state_dict()
    prompts = task.make_dataset(4, seed=1)[0]
    row = measure(state, cfg, "bf16", None, "matched", prompts, 1.0, 0)
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
        row = measure(state, cfg, "bf16", None, profile, prompts, 1.0, 0)
        assert row["profile"] == profile and row["n_tokens"] > 0
        assert row["frac_tokens_differ"] > 0 and row["max_abs_dlogp"] > 0, profile
