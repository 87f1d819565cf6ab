"""Attention twins (cpu_executor/attention.py) = the interpreter form, bit for bit: the forward (output, lse, row
max and sum; split-KV in the engine profile), dq (with delta) and dk/dv, in fp32/fp16/bf16.

The interpreter's key block (BLOCK_N) and dk/dv query block (BLOCK_M_BWD) are 64: the fixed cases with Tk or Tq
above 64 reach several of each; hypothesis covers small shapes."""

from __future__ import annotations

import pytest
import torch
from executor_helpers import assert_twin_matches_interpreter, run_under
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.ops._common import observe_launches

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _qkv(b, h, hkv, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype).requires_grad_()
            for shape in ((b, h, tq, d), (b, hkv, tk, d), (b, hkv, tk, d))]


def _call(causal=True, attn_mask=None, key_start=None, scale=None, stats=False):
    def run(q, k, v):
        if stats:
            return torch.ops.pk.attention(q, k, v, attn_mask, key_start, causal,
                                          scale if scale is not None else q.shape[-1] ** -0.5)
        return pk.attention(q, k, v, causal=causal, attn_mask=attn_mask, key_start=key_start, scale=scale)
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_several_key_and_query_blocks(dtype, causal):
    # Tk = 70 > 64: two key blocks in the forward and dq; Tq = 67 > 64: two query blocks in dk/dv; GQA 2:1
    q, k, v = _qkv(1, 2, 1, 67, 70, 3, dtype)
    assert_twin_matches_interpreter(_call(causal, stats=True), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_key_start_mask_and_scale(dtype):
    # left padding (two different key starts, one past every key of a causal row), a broadcast bool mask
    q, k, v = _qkv(2, 2, 2, 5, 70, 4, dtype, seed=1)
    key_start = torch.tensor([3, 66])
    mask = torch.rand(1, 1, 5, 70, generator=torch.Generator().manual_seed(2)) > 0.3
    assert_twin_matches_interpreter(_call(True, mask, key_start, scale=0.7), q, k, v)
    assert_twin_matches_interpreter(_call(False, mask, key_start), q, k, v)


@pytest.mark.parametrize("mask_dtype", DTYPES)
def test_additive_mask(mask_dtype):
    q, k, v = _qkv(2, 2, 1, 4, 9, 5, torch.float32, seed=3)
    g = torch.Generator().manual_seed(4)
    mask = torch.randn(2, 1, 4, 9, generator=g)
    mask[0, 0, 1] = float("-inf")                                    # a row with no key
    mask[1, 0, :, 2] = float("-inf")
    assert_twin_matches_interpreter(_call(False, mask.to(mask_dtype), stats=True), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_and_negative_zero(dtype):
    q, k, v = _qkv(1, 2, 2, 6, 8, 3, dtype, seed=5)
    with torch.no_grad():
        q[0, 0, 1, 0] = float("nan")
        k[0, 0, 3, 1] = float("inf")
        v[0, 1, 2, :] = float("nan")                                 # masked for the rows that cannot see it
        v[0, 1, 5, 0] = float("-inf")
        q[0, 1, :2] = -0.0
        k[0, 1, :, 2] = -0.0
        v[0, 0, :4] = -0.0
    assert_twin_matches_interpreter(_call(True, stats=True), q, k, v)
    assert_twin_matches_interpreter(_call(False), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_split_kv(dtype):
    # a decode step (Tq = 1) over 70 keys: the engine splits the keys into chunks merged by their lse
    q, k, v = _qkv(1, 2, 1, 1, 70, 4, dtype, seed=6)
    with pk.use_profile("engine"):
        assert profiles.attention_forward_split(2, 1, 70, 64, whole_tiles=False)[0] > 1
        records = assert_twin_matches_interpreter(_call(True, stats=True), q, k, v)
        ks = torch.tensor([5])
        assert_twin_matches_interpreter(_call(False, key_start=ks), q, k, v)
    fwd = [r for r in records if r.kernel == "attention_fwd_kernel"]
    assert fwd and all(r.executor == "twin" for r in fwd)


def test_one_and_two_threads_agree():
    q, k, v = _qkv(2, 2, 1, 9, 20, 4, torch.float32, seed=7)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, grads, _ = run_under("twins", _call(True), q, k, v)
            results.append([t.view(torch.int32) for t in (*out, *grads)])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_every_launch_is_a_twin():
    q, k, v = _qkv(1, 2, 1, 3, 4, 2, torch.float16, seed=8)
    with observe_launches() as records:
        pk.attention(q, k, v).sum().backward()
    assert {r.kernel for r in records} == {"attention_fwd_kernel", "attention_bwd_dq_kernel",
                                           "attention_bwd_dkdv_kernel"}
    assert all(r.executor == "twin" for r in records)


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 2), group=st.integers(1, 2), tq=st.integers(1, 7),
       tk=st.integers(1, 9), d=st.integers(1, 5), dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       padded=st.booleans(), mask=st.sampled_from(["none", "bool", "additive"]), seed=st.integers(0, 2**16))
def test_hypothesis_small_shapes(b, hkv, group, tq, tk, d, dtype, causal, padded, mask, seed):
    q, k, v = _qkv(b, hkv * group, hkv, tq, tk, d, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    key_start = torch.randint(0, tk + 1, (b,), generator=g) if padded else None
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(b, 1, tq, tk, generator=g) > 0.3
    elif mask == "additive":
        attn_mask = torch.where(torch.rand(1, hkv * group, tq, tk, generator=g) > 0.2,
                                torch.randn(1, hkv * group, tq, tk, generator=g), float("-inf")).to(dtype)
    assert_twin_matches_interpreter(_call(causal, attn_mask, key_start, stats=True), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_above_eight(dtype):
    # D = 20: numpy's pairwise sum would differ from the in-order sum over D (it is sequential up to 8)
    q, k, v = _qkv(1, 2, 2, 3, 5, 20, dtype, seed=9)
    assert_twin_matches_interpreter(_call(True, stats=True), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nans_of_both_signs_meet(dtype):
    # input NaNs (+ and -) meet the NaNs the kernels make (inf - inf, 0 * inf) in the same sums and products;
    # which operand's NaN numpy returns depends on how the operands are laid out
    cases = (("matched", (2, 4, 2, 13, 70, 5), False), ("matched", (2, 4, 2, 13, 70, 5), True),
             ("engine", (1, 1, 1, 1, 70, 20), True))
    for seed, (profile, shape, causal) in enumerate(cases):
        q, k, v = _qkv(*shape, dtype, seed)
        g = torch.Generator().manual_seed(seed + 10)
        with torch.no_grad():
            for t, value in ((q, float("nan")), (k, float("inf")), (v, float("nan")), (v, float("inf")),
                             (k, float("-inf")), (q, -float("nan"))):
                t.view(-1)[torch.randint(0, t.numel(), (max(1, t.numel() // 15),), generator=g)] = value
        with pk.use_profile(profile):
            assert_twin_matches_interpreter(_call(causal, stats=True), q, k, v)
