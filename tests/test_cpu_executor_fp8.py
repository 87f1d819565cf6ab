"""The fp8 family's CPU twin (cpu_executor/fp8.py) gives the interpreter's bits: pk.scaled_mm in every out dtype,
with and without a bias of each dtype, tensor-wise and row-wise scales, every operand format mix, K past and not a
multiple of BLOCK_K, N past a panel, strided operands, every fp8 pattern, NaN/inf/-0, both profiles; direct
launches with other BLOCK_K; pk.fp8_linear forward and gradients; 1 vs 2 threads."""

import pytest
import torch
import triton
from executor_helpers import assert_twin_matches_interpreter, bits, run_under
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.kernels.fp8_matmul import scaled_mm_kernel
from precision_kernels.ops._common import launch, observe_launches

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
OUT = (torch.float32, torch.float16, torch.bfloat16)
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float8_e4m3fn: 3, torch.float8_e5m2: 4}


def _q(shape, dtype, seed, scale=1.0, spread=0):
    """fp8 values and per-row scales of a random (rows, K) tensor; ``spread``: elements scaled by 2^U(-spread,
    spread), so that fp32 sums of their products round (at spread 0 many sums of fp8 products are exact, and
    then no order shows)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale * torch.exp2((torch.rand(shape, generator=g) * 2 - 1) * spread)
    return pk.quantize_fp8(x, dtype, axis=-1)


def _mm(scale_a, scale_b, bias, out_dtype):
    return lambda a, b: pk.scaled_mm(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype)


@pytest.mark.parametrize("out_dtype", OUT)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_every_out_dtype_with_and_without_bias(out_dtype, profile):
    """K = 1001 (31 full blocks of 32 and a partial one), N = 70 (past a 64-column panel), row-wise and
    tensor-wise scales, b as the transposed weight (strides (1, K)); biases of every dtype."""
    a, sa = _q((9, 1001), torch.float8_e4m3fn, 1)
    w, sw = _q((70, 1001), torch.float8_e5m2, 2)
    biases = [None, *(torch.randn(70, generator=torch.Generator().manual_seed(3)).to(d) for d in OUT)]
    tensor_a, tensor_b = sa.amax().reshape(()), sw.amin().reshape(1, 1)
    with pk.use_profile(profile):
        for bias in biases:
            assert_twin_matches_interpreter(_mm(sa, sw.t(), bias, out_dtype), a, w.t())
        assert_twin_matches_interpreter(_mm(tensor_a, tensor_b, biases[1], out_dtype), a, w.t())


@pytest.mark.parametrize("a_dtype", FP8)
@pytest.mark.parametrize("b_dtype", FP8)
def test_every_fp8_pattern_of_each_operand(a_dtype, b_dtype):
    """K = 1: out = widen(a) * widen(b) exactly, so every one of A's 256 patterns (NaN, +-inf, -0, subnormals)
    meets one of B's, and each of B's meets one of A's."""
    patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    one = torch.ones(1, 1, dtype=torch.float32)
    a = patterns.reshape(256, 1).view(a_dtype)
    b = patterns.reshape(1, 256).view(b_dtype)
    pair = (torch.tensor([[1.5]]).to(b_dtype), torch.tensor([[-0.75]]).to(a_dtype))
    assert_twin_matches_interpreter(_mm(one, one, None, torch.float32), a, pair[0])
    assert_twin_matches_interpreter(_mm(one, one, None, torch.float32), pair[1], b)


def test_nan_inf_negative_zero_and_overflow():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 40, generator=g).to(torch.float8_e4m3fn)
    b = torch.randn(40, 9, generator=g).to(torch.float8_e5m2)
    a.view(torch.uint8)[0, 3] = 0x7F                       # e4m3fn NaN
    b.view(torch.uint8)[5, 2] = 0x7C                       # e5m2 +inf
    b.view(torch.uint8)[7, 4] = 0xFC                       # e5m2 -inf
    one = torch.ones(1, dtype=torch.float32)
    for out_dtype in OUT:
        assert_twin_matches_interpreter(_mm(one, one, torch.randn(9, generator=g), out_dtype), a, b)
    # every product -0: the block sums start at +0, so the result is +0; a -0 bias then stays +0
    neg = torch.full((3, 37), -0.0).to(torch.float8_e4m3fn)
    pos = torch.ones(37, 5).to(torch.float8_e4m3fn)
    assert_twin_matches_interpreter(_mm(one, one, torch.full((5,), -0.0), torch.bfloat16), neg, pos)
    # overflow of the fp16/bf16 rounding, and of the scaling itself in fp32
    big = torch.full((2, 300), 448.0).to(torch.float8_e4m3fn)
    for scale in (1.0, 1e35):
        s = torch.full((1,), scale)
        for out_dtype in OUT:
            assert_twin_matches_interpreter(_mm(s, s, None, out_dtype), big, big.t())


def test_k_zero_and_one_row():
    """K = 0: the sum is +0, then scaled, and a -0 bias added to it stays +0; M = 1."""
    one = torch.ones(1)
    a, b = torch.zeros(3, 0).to(torch.float8_e4m3fn), torch.zeros(0, 5).to(torch.float8_e5m2)
    for out_dtype in OUT:
        assert_twin_matches_interpreter(_mm(one, one, torch.full((5,), -0.0), out_dtype), a, b)
    x, sx = _q((1, 77), torch.float8_e4m3fn, 12, spread=6)
    w, sw = _q((66, 77), torch.float8_e4m3fn, 13, spread=6)
    assert_twin_matches_interpreter(_mm(sx, sw.t(), None, torch.float32), x, w.t())


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 80), n=st.integers(1, 70), a_dtype=st.sampled_from(FP8),
       b_dtype=st.sampled_from(FP8), out_dtype=st.sampled_from(OUT), rows=st.booleans(), bias=st.booleans(),
       b_major=st.booleans(), engine=st.booleans(), seed=st.integers(0, 2**16))
def test_scaled_mm_shapes(m, k, n, a_dtype, b_dtype, out_dtype, rows, bias, b_major, engine, seed):
    a, sa = _q((m, k), a_dtype, seed, scale=10.0, spread=8)
    w, sw = _q((n, k), b_dtype, seed + 1, spread=8)
    b, sb = (w.t(), sw.t()) if b_major else (w.t().contiguous(), sw.t())
    if not rows:
        sa, sb = sa.amax().reshape(1), sb.amax().reshape(1)
    bv = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2)).to(out_dtype) if bias else None
    with pk.use_profile("engine" if engine else "matched"):
        assert_twin_matches_interpreter(_mm(sa, sb, bv, out_dtype), a, b)


@pytest.mark.parametrize("block_k", [1, 4, 16, 64])
def test_direct_launch_follows_block_k(block_k):
    """BLOCK_K beyond the one the op passes: the K blocks, not the tiles, define the order (fp32 output: no
    rounding to 16 bits hides a changed sum)."""
    a, sa = _q((7, 75), torch.float8_e5m2, 6, spread=12)
    w, sw = _q((19, 75), torch.float8_e4m3fn, 7, spread=12)
    b = w.view(torch.uint8).t()
    bias = torch.randn(19, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16).view(torch.int16)
    outs = []
    for executor in ("interpreter", "twins"):
        out = torch.full((7, 19), 3.0)
        with use_cpu_executor(executor), observe_launches() as records:
            launch(scaled_mm_kernel, (triton.cdiv(7, 16) * triton.cdiv(19, 16),), a.view(torch.uint8), b,
                   sa.reshape(-1), sw.reshape(-1), bias, out, 7, 19, 75, *a.stride(), *b.stride(), *out.stride(),
                   A_KIND=KIND[a.dtype], B_KIND=KIND[w.dtype], ROW_SCALES=True, HAS_BIAS=True, BIAS_KIND=2,
                   OUT_KIND=0, BLOCK_M=16, BLOCK_N=16, BLOCK_K=block_k, GROUP_M=1)
        assert [r.executor for r in records] == ["twin" if executor == "twins" else "interpreter"]
        outs.append(out)
    assert torch.equal(bits(outs[0]), bits(outs[1]))


@pytest.mark.parametrize("dtype", OUT)
@pytest.mark.parametrize("act", FP8)
def test_fp8_linear_forward_and_gradients(dtype, act):
    """quantize_fp8 (round_to), scaled_mm, and the straight-through backward's dequantisation (round_to) and
    matmuls: every launch a twin."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 45, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(33, 45, generator=g) * 0.2).to(dtype).requires_grad_()
    for profile in ("matched", "engine"):
        with pk.use_profile(profile):
            assert_twin_matches_interpreter(lambda x, w: pk.fp8_linear(x, w, dtype=act), x, w)


def test_one_and_two_threads_give_the_same_bits():
    a, sa = _q((70, 100), torch.float8_e4m3fn, 10)
    w, sw = _q((130, 100), torch.float8_e4m3fn, 11)
    runs = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, _, records = run_under("twins", _mm(sa, sw.t(), None, torch.bfloat16), a, w.t())
            assert [r.executor for r in records] == ["twin"]
            runs.append(bits(out[0]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1])
