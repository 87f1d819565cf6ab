"""The engine profiles' split-KV attention (flash-decoding) and TinyGPT's fused attention.

* ``profiles.attention_splits_for``: FlashAttention-2's split heuristic, decode steps only, engine profiles with
  split-KV only (the matched profile never splits by length);
* an engine decode step differs from the matched one for some cache lengths and batches, while the matched decode
  step equals its row of the full pass (prefill), and a multi-query call is never split;
* the split output is attention all the same (FP64 oracle), its partials are rounded (its error exceeds the
  matched kernel's on average), and masked chunks carry no weight;
* TinyGPT: one attention launch a layer, 16 launches a decode token; its engine-attention decode differs from the
  full pass, its matched decode does not.
"""

import pytest
import torch

import precision_kernels as pk
from benchmarks.launches import count_launches
from precision_kernels import profiles
from precision_kernels.ops.attention import reference_attention
from rl.model import ModelConfig, TinyGPT

DEVICE = pk.backend.device()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _qkv(b, h, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g).to(dtype).to(DEVICE) for t in (tq, tk, tk))


def test_num_splits_heuristic_matches_flash_attention_2():
    # hand-evaluated FA2 num_splits_heuristic(batch_nheads_mblocks, num_SMs, num_n_blocks, max_splits)
    assert profiles.num_splits_heuristic(212, 264, 16, 128) == 1     # >= 0.8 * SMs: one split
    assert profiles.num_splits_heuristic(64, 264, 4, 128) == 4       # efficiency 64 s / 264 grows up to s = 4
    assert profiles.num_splits_heuristic(128, 264, 4, 128) == 2      # s = 2 fills 0.97 of a wave
    assert profiles.num_splits_heuristic(2, 264, 3, 128) == 3        # capped by the key blocks
    assert profiles.num_splits_heuristic(100, 264, 1, 128) == 1      # one key block: nothing to split


@pytest.mark.parametrize("profile", ["matched", "engine-matmul"])
def test_profiles_without_split_kv_never_split(profile):
    with pk.use_profile(profile):
        for items in (1, 2, 64):
            for keys in (1, 8, 64, 4096):
                assert profiles.attention_splits_for(items, 1, keys) == (1, 0)


@pytest.mark.parametrize("profile", ["engine", "engine-attention"])
def test_split_count_depends_on_cache_length_and_batch(profile):
    with pk.use_profile(profile):
        assert profiles.attention_splits_for(64, 1, 4) == (1, 0)        # one key block
        assert profiles.attention_splits_for(64, 1, 15) == (4, 4)
        assert profiles.attention_splits_for(128, 1, 15) == (2, 8)      # a larger batch: fewer splits
        assert profiles.attention_splits_for(256, 1, 15) == (1, 0)      # enough programs: none
        assert profiles.attention_splits_for(2, 1, 64) == (16, 4)
        assert profiles.attention_splits_for(2, 2, 64) == (1, 0)        # more than one query: no split
    with pytest.raises(ValueError, match="keys must be a count"):
        profiles.attention_splits_for(2, 1, -1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_decode_differs_from_matched_while_matched_decode_equals_prefill(dtype):
    q, k, v = _qkv(8, 2, 13, 13, 8, dtype)
    full = pk.attention(q, k, v)
    differs = 0
    for length in range(1, 14):
        qd, kd, vd = q[:, :, length - 1:length], k[:, :, :length], v[:, :, :length]
        matched = pk.attention(qd, kd, vd)
        assert torch.equal(matched, full[:, :, length - 1:length]), length
        with pk.use_profile("engine-matmul"):
            assert torch.equal(pk.attention(qd, kd, vd), matched), length
        with pk.use_profile("engine-attention"):
            engine = pk.attention(qd, kd, vd)
            assert torch.equal(engine, pk.attention(qd, kd, vd))       # deterministic
        if length <= profiles.engine_config().attention_split_block:
            assert torch.equal(engine, matched), length                 # one chunk: the matched bits
        differs += not torch.equal(engine, matched)
    assert differs > 0
    with pk.use_profile("engine"):
        assert torch.equal(pk.attention(q, k, v), full)                 # a prefill is never split


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_split_output_is_attention_with_rounded_partials(dtype):
    q, k, v = _qkv(64, 2, 1, 16, 8, dtype, seed=1)
    ref = reference_attention(q, k, v)
    matched = pk.attention(q, k, v)
    with pk.use_profile("engine"):
        assert profiles.attention_splits_for(128, 1, 16) == (2, 8)
        engine = pk.attention(q, k, v)
    # each partial o_c is rounded (error <= u |o_c| <= u (P_c |V|)), then the merged output (<= u |out|): in all
    # <= 2u P|V| = eps P|V| (where V cancels, |out| alone would mislead), plus fp32 work far below it
    bound = 1.01 * torch.finfo(dtype).eps * reference_attention(q, k, v.abs())
    err_engine = (engine.double() - ref).abs()
    err_matched = (matched.double() - ref).abs()
    assert (err_engine <= bound).all()
    # the matched output is rounded once; the engine's partials are rounded before the merge
    assert err_engine.mean() > 1.2 * err_matched.mean()
    assert not torch.equal(engine, matched)


def test_masked_chunks_carry_no_weight_and_nan_values_stay_out():
    q, k, v = _qkv(2, 2, 1, 16, 8, torch.float16, seed=2)
    keep = torch.ones(2, 1, 1, 16, dtype=torch.bool, device=DEVICE)
    keep[0, ..., :8] = False                       # item 0: its first two chunks fully masked
    keep[1] = False                                # item 1: nothing to attend
    v = v.clone()
    v[0, :, :4] = float("nan")                     # a masked chunk's values
    with pk.use_profile("engine"):
        assert profiles.attention_splits_for(4, 1, 16)[0] == 4
        out = pk.attention(q, k, v, attn_mask=keep)
    ref = reference_attention(q, k, v.nan_to_num(), attn_mask=keep)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    bound = 1.01 * torch.finfo(torch.float16).eps * reference_attention(q, k, v.nan_to_num().abs(), attn_mask=keep)
    assert ((out[0].double() - ref[0]).abs() <= bound[0]).all()


def _tiny(precision="fp16"):
    cfg = ModelConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, max_seq_len=16, precision=precision)
    return TinyGPT(cfg, seed=0).to(DEVICE)


def test_tinygpt_layer_is_seven_launches_and_a_decode_token_sixteen():
    model = _tiny()
    prompts = torch.randint(0, 13, (4, 8), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        w = model.compute_weights()
        cache = model.new_cache(4)
        h = model.prefill(prompts, cache, w)
        tok, _ = pk.linear_sample(h, w["lm_head.weight"])
        with count_launches() as c:
            h = model.decode(tok, cache, w)
            pk.linear_sample(h, w["lm_head.weight"])
    assert c.by_kernel["attention_fwd_kernel"] == 2
    assert "softmax_fwd_kernel" not in c.by_kernel and "bmm_kernel" not in c.by_kernel
    assert c.launches == 2 * 7 + 2


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_tinygpt_engine_attention_decode_differs_from_the_full_pass(precision):
    model = _tiny(precision)
    seq = torch.randint(0, 13, (16, 14), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.no_grad():
        w = model.compute_weights()
        full = model.hidden_states(seq, w)
        steps = {}
        for profile in ("matched", "engine-attention"):
            with pk.use_profile(profile):
                cache = model.new_cache(16)
                model.prefill(seq[:, :6], cache, w)
                steps[profile] = torch.stack([model.decode(seq[:, t], cache, w) for t in range(6, 14)], 1)
    assert torch.equal(steps["matched"], full[:, 6:14])
    assert not torch.equal(steps["engine-attention"], steps["matched"])
