"""Hugging Face models under pk.matched_mode(): generate() log-probs equal a teacher-forced forward, bit for bit.

Tiny random-init models from a config (no downloads, eager attention), built by
benchmarks.hf_mismatch. For each model and precision: a batch of 4 equal-length prompts
sampled with the KV cache, one forward over prompt + response, and prompt 0 alone.
"""

from __future__ import annotations

import json

import pytest
import torch

import precision_kernels as pk
from precision_kernels.matched import UncoveredOpError

pytest.importorskip("transformers")

from benchmarks.hf_mismatch import build_model, prompts, sample_and_score  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("name", ["llama", "qwen3", "gpt2", "llama-odd"])
def test_generate_equals_forward_bitwise(name, precision):
    """Sampler (KV cache, 4 rows) == learner (one forward) == prompt alone; audit empty.

    llama-odd has hidden 72 and intermediate 200: its SiLU/RMSNorm rows are not multiples
    of 16 wide, which the vector-path elementwise ops cover.
    """
    model = build_model(name, DTYPES[precision], seed=0)
    ids = prompts(4, 6, seed=1)
    with pk.matched_mode(audit=True) as report:
        r = sample_and_score(model, ids, max_new_tokens=4, seed=2)
    assert r["tokens"].shape == (4, 10)
    assert torch.equal(bits(r["gen_logp"]), bits(r["fwd_logp"])), (r["gen_logp"] - r["fwd_logp"]).abs().max()
    assert torch.equal(bits(r["alone_logits"][0]), bits(r["fwd_logits"][0]))
    assert not report.uncovered, report.summary()
    assert {rec.op for rec in report.sampling.values()} >= {"multinomial.default"}
    assert report.served["mm.default"] + report.served["addmm.default"] > 0 and report.served["bmm.default"] > 0


# Ops a causal LM's loss needs that pk does not serve: the embedding's gradient and the NLL gather.
LOSS_OPS_NOT_SERVED = {"embedding_dense_backward.default", "nll_loss_forward.default", "nll_loss_backward.default"}


def _param_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


# GPT-2 runs all three pk backward handlers (softmax, log-softmax, layer norm); 16-bit Llama's attention takes
# an fp32 softmax of 16-bit scores, and its norms go through mean.
@pytest.mark.parametrize("name, precision", [("gpt2", "fp32"), ("gpt2", "fp16"), ("gpt2", "bf16"), ("llama", "bf16")])
def test_loss_backward_under_the_mode_is_as_accurate_as_torch(name, precision):
    """loss.backward() inside the mode: softmax, log-softmax and layer-norm backward run on pk's backward
    ops, and every parameter's gradient is as close to FP64 (the same weights in float64) as torch's own."""
    model, ids = build_model(name, DTYPES[precision], seed=0), prompts(3, 9, seed=1)
    with pk.matched_mode(audit=True) as report:
        ours = _param_grads(model, ids)
    plain = _param_grads(model, ids)
    oracle = _param_grads(model.double(), ids)
    served = {"_softmax_backward_data.default", "_log_softmax_backward_data.default"}
    if name == "gpt2":
        served.add("native_layer_norm_backward.default")
    assert all(report.served[op] > 0 for op in served), report.summary()
    assert {rec.op for rec in report.uncovered.values()} <= LOSS_OPS_NOT_SERVED, report.summary()
    assert ours.keys() == oracle.keys()
    for k, o in oracle.items():
        err, torch_err = ((g.double() - o).norm() / o.norm() for g in (ours[k], plain[k]))
        assert err <= 1.5 * torch_err + 2.0**-24, (k, float(err), float(torch_err))


def test_strict_serves_sdpa_attention():
    """A model with SDPA attention runs under strict=True, its attention on pk (tests/test_hf_sdpa.py: the rest)."""
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    model = tf.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad(), pk.matched_mode(strict=True) as report:
        model(prompts(2, 5))
    assert report.served["_scaled_dot_product_flash_attention_for_cpu.default"] == 1


def test_strict_refuses_float_cumsum_inside_a_model():
    model = build_model("llama", torch.float32)
    model.model.norm.register_forward_hook(lambda mod, inp, out: out.cumsum(-1))
    with torch.no_grad(), pk.matched_mode(strict=True):
        with pytest.raises(UncoveredOpError, match="cumsum"):
            model(prompts(2, 5))


def test_hf_mismatch_command(tmp_path, capsys):
    from benchmarks import hf_mismatch

    path = tmp_path / "hf.json"
    code = hf_mismatch.main(["--model", "qwen3", "--batch", "2", "--prompt-len", "3", "--max-new-tokens", "2",
                             "--json", str(path)])
    assert code == 0, capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [(r["precision"], r["mode"]) for r in rows] == [(p, m) for p in DTYPES for m in ("torch", "matched")]
    for r in rows:
        if r["mode"] == "matched":
            assert r["frac_tokens_differ"] == 0 and r["max_abs_dlogp"] == 0 and r["uncovered_ops"] == []
    assert "matched rows exactly zero, nothing uncovered: True" in capsys.readouterr().out
