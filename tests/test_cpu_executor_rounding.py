"""The rounding family's CPU twin (cpu_executor/rounding.py) gives the interpreter's bits: pk.round_to to fp16,
bf16, e4m3fn, e5m2 and saturating e5m2 on every 16-bit high pattern with the low halves that hold each format's
ties, NaN payloads, +-inf, -0 and overflow; pk.quantize_fp8 (tensor-wise and per row, every input dtype, NaN/inf,
zero rows) in both profiles; odd and strided shapes; 1 vs 2 threads. The fp8 helpers are also held against
torch's own casts and fp8 widening."""

import pytest
import torch
from executor_helpers import assert_twin_matches_interpreter, bits, run_under
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import backend

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
# (dtype, saturate) for every output code of round_fp32 the op launches
TARGETS = ((torch.float16, None), (torch.bfloat16, None), (torch.float8_e4m3fn, None), (torch.float8_e5m2, None),
           (torch.float8_e5m2, True))
# Low halves: 0 (every bf16 and fp8 tie sits in the high half), fp16's tie (bit 12) and its neighbours, bf16's
# tie's neighbours, and one arbitrary pattern.
LOW_HALVES = (0x0000, 0x1000, 0x0FFF, 0x1001, 0x8000, 0x7FFF, 0x5A3C)


def _every_high_pattern() -> torch.Tensor:
    """fp32 values whose high 16 bits take every pattern, each with every low half in LOW_HALVES."""
    high = torch.arange(2**16, dtype=torch.int64) << 16
    low = torch.tensor(LOW_HALVES, dtype=torch.int64)
    return (high[:, None] | low[None, :]).to(torch.int32).view(torch.float32).reshape(-1)


def _round(dtype, saturate):
    def fn(x):
        out = pk.round_to(x, dtype, saturate=saturate)
        return out.view(torch.uint8) if dtype in FP8 else out      # fp8 compared as its patterns
    return fn


@pytest.mark.parametrize("dtype,saturate", TARGETS)
def test_round_to_on_every_high_16_bit_pattern(dtype, saturate):
    """458752 values: every sign, exponent and high mantissa, NaN payloads, +-inf, -0, subnormals, every tie;
    large enough that the twin runs on two threads."""
    assert_twin_matches_interpreter(_round(dtype, saturate), _every_high_pattern())


def test_fp8_helpers_match_torch_casts_and_widening():
    """Independent of the interpreter: fp8_bits equals torch's casts on every non-NaN input here (NaN becomes
    0x7F | sign), and FP8_TO_FP32 equals torch's widening of every non-NaN pattern (NaN: 0x7FC00000 | sign)."""
    from precision_kernels.cpu_executor.rounding import FP8_TO_FP32, fp8_round_all

    x = _every_high_pattern()
    nan = torch.isnan(x)
    sign = (x.view(torch.int32) < 0).to(torch.uint8) << 7
    for dtype, kind in ((torch.float8_e4m3fn, 3), (torch.float8_e5m2, 4)):
        got = torch.from_numpy(fp8_round_all(x.numpy(), kind))
        assert torch.equal(got[~nan], x[~nan].to(dtype).view(torch.uint8))
        assert torch.equal(got[nan], 0x7F | sign[nan])
        patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8)
        wide = torch.from_numpy(FP8_TO_FP32[kind].copy())
        torch_wide = patterns.view(dtype).to(torch.float32)
        is_nan = torch.isnan(torch_wide)
        assert torch.equal(bits(wide[~is_nan]), bits(torch_wide[~is_nan]))
        assert torch.equal(bits(wide[is_nan]), ((patterns[is_nan].to(torch.int32) >> 7) << 31) | 0x7FC00000)
    # e5m2 saturating: everything past 57344 (inf included) is +-57344 (0x7B)
    sat = torch.from_numpy(fp8_round_all(torch.tensor([61440.0, -1e30, float("inf"), 57344.0]).numpy(), 5))
    assert sat.tolist() == [0x7B, 0xFB, 0x7B, 0x7B]


def test_overflow_saturation_nan_and_negative_zero():
    x = torch.tensor([448.0, 464.0, 480.0, -1e9, float("inf"), float("-inf"), 57344.0, 61439.0, 61440.0, -0.0, 0.0,
                      float("nan"), -float("nan"), 2.0**-10, 2.0**-17, 2.0**-18, 3 * 2.0**-18, 1e-45, 65520.0])
    for dtype, saturate in TARGETS:
        assert_twin_matches_interpreter(_round(dtype, saturate), x)


@settings(max_examples=8, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=3), target=st.sampled_from(TARGETS),
       transpose=st.booleans(), scale=st.sampled_from([1e-6, 1.0, 300.0, 7e4]), seed=st.integers(0, 2**16))
def test_round_to_odd_and_strided_shapes(shape, target, transpose, scale, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    if transpose and x.dim() >= 2:
        x = x.mT                                          # the op copies strided input once
    assert_twin_matches_interpreter(_round(*target), x)


def _quantize(dtype, axis):
    def fn(x):
        values, scales = pk.quantize_fp8(x, dtype, axis=axis)
        return values.view(torch.uint8), scales
    return fn


@pytest.mark.parametrize("in_dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_quantize_fp8_tensorwise_and_per_row(in_dtype, profile):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 3, 37, generator=g) * torch.logspace(-3, 3, 37)).to(in_dtype)
    x[1, 2] = 0.0                                         # an all-zero row: scale 1
    x[0, 0, 4] = -0.0
    with pk.use_profile(profile):
        for dtype in FP8:
            for axis in (None, -1):
                assert_twin_matches_interpreter(_quantize(dtype, axis), x)
            assert_twin_matches_interpreter(_quantize(dtype, -1), x[0, :1])      # one row


def test_quantize_fp8_non_finite_rows():
    x = torch.randn(4, 19, generator=torch.Generator().manual_seed(4))
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2, 7] = float("-inf")
    for dtype in FP8:
        for axis in (None, -1):
            assert_twin_matches_interpreter(_quantize(dtype, axis), x)


@pytest.mark.parametrize("dtype,saturate", [TARGETS[1], TARGETS[2]])
def test_one_and_two_threads_give_the_same_bits(dtype, saturate):
    x = _every_high_pattern()[: 1 << 17]
    runs = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, _, records = run_under("twins", _round(dtype, saturate), x)
            assert [r.executor for r in records] == ["twin"]
            runs.append(bits(out[0]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1])
