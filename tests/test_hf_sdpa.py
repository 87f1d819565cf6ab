"""Hugging Face models with their default attention (SDPA) under pk.matched_mode(audit=True).

Tiny random-init models from a config (no downloads), loaded without ``attn_implementation``, so
HF picks "sdpa". For each: generate() log-probs equal one teacher-forced forward bit for bit, the
audit is empty and ``report.served`` holds torch's SDPA op (so allowlisting it cannot pass), and a
prompt alone equals itself inside a left-padded batch of prompts of other lengths, long enough to
span at least 3 key blocks (the interpreter's key block is 64 keys). One precision per model runs in
make test (qwen3 bf16 and gpt2 fp16 through generate, llama fp32 left-padded); the others are
behind ``slow``.
"""

from __future__ import annotations

import os

import pytest
import torch

import precision_kernels as pk
from precision_kernels import profiles

pytest.importorskip("transformers")

from benchmarks.hf_mismatch import VOCAB, prompts, sample_and_score, token_logprobs  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SDPA = "_scaled_dot_product_flash_attention_for_cpu.default"
SDPA_BWD = "_scaled_dot_product_flash_attention_for_cpu_backward.default"
KEY_BLOCK = profiles.attention_orders_for("interpreter", "fp32")[0]
# Prompt 0 spans 3 key blocks and more; the others make it left-padded by a count that is no multiple of the block.
LENGTHS = (2 * KEY_BLOCK + 11, 2 * KEY_BLOCK + 11 + 23, KEY_BLOCK + 5)
MODELS = ("llama", "qwen3", "gpt2")


def _cases(*make_test: tuple[str, str]) -> list:
    """Every (model, precision); only those in ``make_test`` outside ``slow`` (the interpreter's time)."""
    return [pytest.param(m, p, marks=() if (m, p) in make_test else pytest.mark.slow) for m in MODELS for p in DTYPES]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def build_sdpa_model(name: str, dtype: torch.dtype, seed: int = 0, **overrides):
    """A tiny random-init causal LM with HF's default attention implementation (no ``attn_implementation``)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if name == "llama":
        cls, cfg = tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=64, intermediate_size=128, **common)
    elif name == "qwen3":
        cls, cfg = tf.Qwen3ForCausalLM, tf.Qwen3Config(hidden_size=64, intermediate_size=128, head_dim=16,
                                                       **common, **overrides)
    elif name == "gpt2":
        cls, cfg = tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                     n_positions=512, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(name)
    torch.manual_seed(seed)
    model = cls._from_config(cfg, dtype=dtype).to(device=pk.backend.device(), dtype=dtype).eval()
    assert model.config._attn_implementation == "sdpa"
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.top_k, gc.top_p, gc.temperature = None, 0, None, None, 1.0
    return model


def left_padded(lengths, seed: int = 1):
    """(ids, mask) of prompts of ``lengths``, left-padded with id 0 to the longest."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[i, t - n:] = 1
    dev = pk.backend.device()
    return ids.to(dev), mask.to(dev)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _assert_served(report, *ops):
    assert not report.uncovered, report.summary()
    for op in ops:
        assert report.served[op] > 0, report.summary()


@pytest.mark.parametrize("name, precision", _cases(("qwen3", "bf16"), ("gpt2", "fp16")))
def test_sdpa_generate_equals_forward_bitwise(name, precision):
    """Equal-length prompts: prefill is_causal=True, decode no mask. Sampler == learner == prompt alone."""
    model = build_sdpa_model(name, DTYPES[precision])
    with pk.matched_mode(audit=True) as report:
        r = sample_and_score(model, prompts(3, 6, seed=1), max_new_tokens=3, seed=2)
    assert torch.equal(bits(r["gen_logp"]), bits(r["fwd_logp"])), (r["gen_logp"] - r["fwd_logp"]).abs().max()
    assert torch.equal(bits(r["alone_logits"][0]), bits(r["fwd_logits"][0]))
    _assert_served(report, SDPA)


@torch.no_grad()
def _left_padded_roundtrip(model, new_tokens: int = 2):
    """generate() on a left-padded batch, then prompt 0 + its response alone in one forward; both inside the mode."""
    ids, mask = left_padded(LENGTHS)
    torch.manual_seed(3)
    with pk.matched_mode(audit=True) as report:
        out = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, use_cache=True, output_logits=True,
                             return_dict_in_generate=True)
        full_mask = torch.cat([mask, torch.ones_like(out.sequences[:, ids.shape[1]:])], dim=1)
        batch_logits = model(out.sequences, attention_mask=full_mask, position_ids=positions(full_mask),
                             use_cache=False).logits
        pad = ids.shape[1] - LENGTHS[0]
        alone = out.sequences[:1, pad:]
        alone_logits = model(alone, attention_mask=torch.ones_like(alone), use_cache=False).logits
    gen_logp = token_logprobs(torch.stack(out.logits, 1)[:1], out.sequences[:1, ids.shape[1]:])
    alone_logp = token_logprobs(alone_logits[:, LENGTHS[0] - 1:-1], alone[:, LENGTHS[0]:])
    return batch_logits[0, pad:], alone_logits[0], gen_logp, alone_logp, report


@pytest.mark.parametrize("name, precision", _cases(("llama", "fp32")))
def test_sdpa_prompt_alone_equals_itself_in_a_left_padded_batch(name, precision):
    """A prompt of 3+ key blocks alone == its row of a left-padded batch (a forward, and generate's decode)."""
    model = build_sdpa_model(name, DTYPES[precision])
    in_batch, alone, gen_logp, alone_logp, report = _left_padded_roundtrip(model)
    assert torch.equal(bits(in_batch), bits(alone)), (in_batch.float() - alone.float()).abs().max()
    assert torch.equal(bits(gen_logp), bits(alone_logp)), (gen_logp - alone_logp).abs().max()
    _assert_served(report, SDPA)


@pytest.mark.slow
def test_left_padding_needs_the_first_real_key(monkeypatch):
    """Negative control: with each item's first real key not passed to pk (blocks counted from key 0), the
    left-padded row differs from the prompt alone."""
    from precision_kernels.matched import attention as sdpa

    monkeypatch.setattr(sdpa, "_key_start", lambda live, batch: torch.zeros(batch, dtype=torch.int64,
                                                                            device=live.device))
    model = build_sdpa_model("llama", torch.float32)
    in_batch, alone, *_ = _left_padded_roundtrip(model, new_tokens=1)
    assert not torch.equal(bits(in_batch), bits(alone))


def test_sdpa_loss_backward_is_served_and_as_accurate_as_torch():
    """loss.backward() inside the mode runs the SDPA backward on pk, with gradients as close to FP64 as torch's."""
    model = build_sdpa_model("llama", torch.float32)
    ids = prompts(2, 9, seed=1)

    def grads(m):
        m.zero_grad(set_to_none=True)
        m(ids, labels=ids).loss.backward()
        return {k: p.grad for k, p in m.named_parameters() if p.grad is not None}

    with pk.matched_mode(audit=True) as report:
        ours = grads(model)
    plain = grads(model)
    oracle = grads(model.double())
    assert report.served[SDPA] > 0 and report.served[SDPA_BWD] == report.served[SDPA], report.summary()
    for k, o in oracle.items():
        err, torch_err = ((g.double() - o).norm() / o.norm() for g in (ours[k], plain[k]))
        assert err <= 1.5 * torch_err + 2.0**-24, (k, float(err), float(torch_err))


def test_sliding_window_is_reported_and_its_backward_stays_on_torch():
    """A sliding-window mask (rows starting at different keys) is declined and shows in the audit; the backward of
    that declined forward is torch's too (pk never runs a backward on torch's forward outputs)."""
    from precision_kernels.matched._common import Decline
    from precision_kernels.matched.attention import plan

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    t = torch.arange(6)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - 3)
    with pytest.raises(Decline, match="sliding window"):
        plan(q, k, v, 0.0, False, band, None)
    with pk.matched_mode(audit=True) as report:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band)
        out.sum().backward()
    assert report.served[SDPA] == 0 and report.served[SDPA_BWD] == 0, report.summary()
    reasons = {rec.op: rec.reason for rec in report.uncovered.values()}
    assert "sliding window" in reasons[SDPA], report.summary()
    assert "forward ran on torch" in reasons[SDPA_BWD], report.summary()


def test_an_sdpa_call_pk_cannot_serve_runs_on_torch_where_torch_does_not_raise():
    """scale=1e39 is inf in float32: torch returns NaN, pk.attention refuses it. Inside the mode the call runs on
    torch and is reported (audit), or is refused as uncovered (strict); it never raises where torch does not."""
    from precision_kernels.matched import UncoveredOpError

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1e39)
    with pk.matched_mode(audit=True) as report:
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1e39)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert report.served[SDPA] == 0
    reasons = {rec.op: rec.reason for rec in report.uncovered.values()}
    assert "fell back to torch: scale must be finite in float32" in reasons[SDPA], report.summary()
    with pk.matched_mode(strict=True), pytest.raises(UncoveredOpError, match="scale must be finite in float32"):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1e39)


def test_the_sdpa_backward_is_reported_in_the_profile_it_runs_matched():
    """Under the engine profile the SDPA forward is served by the engine, its backward by the matched kernels (the
    only ones it has): the report says so, and strict lets a backward run under an active engine profile."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g, requires_grad=True) for _ in range(3))
    with pk.use_profile("engine"), pk.matched_mode(strict=True, allow_engine=True) as report:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert report.served_profiles[SDPA] == {"engine": 1}
    assert report.served_profiles[SDPA_BWD] == {"matched": 1}, report.summary()
    with pk.matched_mode(strict=True) as report:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        with pk.use_profile("engine"):
            out.sum().backward()
    assert report.served_profiles[SDPA_BWD] == {"matched": 1}


SMOLLM2 = pytest.mark.skipif(not os.environ.get("PK_SLOW"), reason="loads the real model (about 30 s): PK_SLOW=1")


@pytest.mark.slow
@SMOLLM2
def test_smollm2_default_attention_left_padded_generate_equals_forward():
    """The real 2-layer SmolLM2 cut with SDPA in bf16: left-padded generate == forward bitwise, audit empty."""
    from rl import hf

    try:
        model, tokenizer = hf.load_smollm2(layers=2, dtype=torch.bfloat16, attn_implementation="sdpa")
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, tokenizer.pad_token_id
    ids, mask = hf.encode_prompts(tokenizer, ["The capital of France is", "Once upon a time, in a small village,"])
    n = 3
    with torch.no_grad(), pk.matched_mode(audit=True) as report:
        torch.manual_seed(0)
        out = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=n, min_new_tokens=n,
                             output_logits=True, return_dict_in_generate=True, top_k=None, top_p=None)
        full = torch.cat([mask, torch.ones_like(out.sequences[:, ids.shape[1]:])], 1)
        logits = model(out.sequences, attention_mask=full, position_ids=positions(full), use_cache=False).logits
    response = out.sequences[:, ids.shape[1]:]
    gen = token_logprobs(torch.stack(out.logits, 1), response)
    fwd = token_logprobs(logits[:, ids.shape[1] - 1:-1], response)
    assert torch.equal(bits(gen), bits(fwd)), (gen - fwd).abs().max()
    _assert_served(report, SDPA)


# ---- the CUDA ops' handlers, run here on CPU with each op's argument layout ---------------------------------

def _bshd(b, t, h, d, g):
    """A (B, H, T, D) view of a (B, T, H, D) tensor, the layout HF's projections give."""
    return torch.randn(b, t, h, d, generator=g).transpose(1, 2).requires_grad_()


CUDA_OPS = {  # their schemas: torch.ops.aten.<op>.default._schema
    "flash": "_scaled_dot_product_flash_attention",
    "efficient": "_scaled_dot_product_efficient_attention",
    "cudnn": "_scaled_dot_product_cudnn_attention",
}


@pytest.mark.parametrize("op", CUDA_OPS)
def test_cuda_sdpa_handlers_on_cpu(op):
    """Forward: pk.attention's bits in the op's output layout (its meta kernel's); backward: pk.attention's
    autograd gradients bit for bit; a backward whose forward pk did not serve declines."""
    from precision_kernels.matched import HANDLERS
    from precision_kernels.matched._common import Decline

    aten = torch.ops.aten
    name = CUDA_OPS[op]
    fwd, bwd = HANDLERS[f"aten.{name}.default"], HANDLERS[f"aten.{name}_backward.default"]
    g = torch.Generator().manual_seed(5)
    b, h, t, d, pad = 2, 2, 70, 16, 9
    q, k, v = (_bshd(b, t, h, d, g) for _ in range(3))
    bias = None
    if op == "flash":
        args, causal, key_start = (q, k, v, 0.0, True, False), True, None
    else:
        keep = torch.ones(b, 1, t, t, dtype=torch.bool).tril()
        keep[1, :, :, :pad] = False                          # item 1 left-padded by 9 keys
        keep[1, :, :pad, :] = False                          # its pad query rows see nothing
        bias = torch.zeros(b, 1, t, t).masked_fill(~keep, float("-inf"))
        args = (q, k, v, bias, True, 0.0, False) + ((False,) if op == "cudnn" else ())
        causal, key_start = False, torch.tensor([0, pad])
    with torch.no_grad():
        outs = fwd(*args, scale=None)
    like = getattr(aten, name).default(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    assert len(outs) == len(like)
    for o, m in zip(outs, like):
        if isinstance(m, torch.Tensor):
            assert (o.shape, o.stride(), o.dtype) == (m.shape, m.stride(), m.dtype)
        else:
            assert o == m
    ref = pk.attention(q, k, v, causal=causal, attn_mask=bias, key_start=key_start)
    assert torch.equal(bits(outs[0]), bits(ref))
    dout = torch.randn(b, h, t, d, generator=g)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    qkv = (q.detach(), k.detach(), v.detach())
    with torch.no_grad():
        if op == "flash":
            got = bwd(dout, q, k, v, outs[0], outs[1], outs[2], outs[3], outs[4], outs[5], 0.0, True, outs[6],
                      outs[7], scale=None)
            declined = lambda: bwd(dout, *qkv, ref.detach(), *outs[1:6], 0.0, True, *outs[6:8])  # noqa: E731
        elif op == "efficient":
            got = bwd(dout, q, k, v, bias, outs[0], outs[1], outs[2], outs[3], 0.0, [True, True, True, False], False)
            declined = lambda: bwd(dout, *qkv, bias, ref.detach(), *outs[1:4], 0.0,  # noqa: E731
                                   [True, True, True, False], False)
        else:
            got = bwd(dout, q, k, v, outs[0], outs[1], outs[6], outs[7], bias, outs[2], outs[3], outs[4], outs[5],
                      0.0, False)
            declined = lambda: bwd(dout, *qkv, ref.detach(), outs[1], outs[6], outs[7], bias,  # noqa: E731
                                   *outs[2:6], 0.0, False)
    for a, w in zip(got, want):
        assert torch.equal(bits(a), bits(w))
    with pytest.raises(Decline, match="forward ran on torch"):
        declined()


def test_backward_outside_the_mode_gets_a_torch_compatible_lse():
    """A forward served by pk whose backward runs after the block runs torch's backward on pk's out and lse: the lse
    is torch's (natural log, scaled scores, 0 for a row with no key), so the gradients match torch's own to rounding."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    keep = torch.ones(1, 1, 7, 7, dtype=torch.bool).tril()
    keep[..., :2] = False
    keep[..., :2, :] = False
    with pk.matched_mode() as report:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert report.served[SDPA] == 1
    mine = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    theirs = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(mine, theirs):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
