"""Owned rounding (I4): pk.round_to against torch's cast and an exact rational oracle.

pk.round_to runs the integer helpers every kernel rounds with (kernels/rounding.py); all 2^32
fp32 patterns were checked once by hand (benchmarks/exhaustive_rounding.py).
"""

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rne_oracle import f32_from_bits, rne_bits

import precision_kernels as pk

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
QUIET_NAN = {"fp16": 0x7E00, "bf16": 0x7FC0}


def _bits_tensor(bits: list[int]) -> torch.Tensor:
    return torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32).view(torch.float32)


def _u16(t: torch.Tensor) -> list[int]:
    return [v & 0xFFFF for v in t.view(torch.int16).tolist()]


def check_against_torch(x: torch.Tensor, fmt: str) -> None:
    dtype = DTYPES[fmt]
    got = pk.round_to(x, dtype)
    assert got.dtype == dtype and got.shape == x.shape
    nan = torch.isnan(x)
    want = x.to(dtype)
    mismatch = (got.view(torch.int16) != want.view(torch.int16)) & ~nan
    assert not mismatch.any(), f"first mismatch at input bits {x[mismatch][:4].view(torch.int32).tolist()}"
    # NaN: a quiet NaN with the input's sign.
    sign = (x[nan].view(torch.int32) < 0).to(torch.int32) * 0x8000
    expected_nan = (sign | QUIET_NAN[fmt]).tolist()
    assert [b for b in _u16(got[nan])] == expected_nan


u32 = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
@given(bits=st.lists(u32, min_size=1, max_size=512))
def test_arbitrary_bit_patterns_match_torch(fmt, bits):
    check_against_torch(_bits_tensor(bits), fmt)


def _near_ties(fmt: str):
    """fp32 patterns at and next to a tie of the target format, anywhere in the range."""
    drop = 16 if fmt == "bf16" else 13
    kept = st.integers(0, 2**32 - 1).map(lambda b: b & ~((1 << drop) - 1))
    delta = st.sampled_from([0, 1, -1, 2, -2])
    return st.builds(lambda k, d: (k | (1 << (drop - 1))) + d & 0xFFFFFFFF, kept, delta)


def _binade_edges():
    exponent = st.integers(0, 255)
    low_mantissa = st.sampled_from([0, 1, 2, 0x7FFFFF, 0x7FFFFE, 0x7FF000, 0x7FEFFF, 0x7FF001, 0x7F8000, 0x7F7FFF])
    sign = st.sampled_from([0, 1 << 31])
    return st.builds(lambda s, e, m: s | (e << 23) | m, sign, exponent, low_mantissa)


def _fp16_subnormal_range():
    # |x| from below 2^-25 (rounds to 0) up to 2^-14 (smallest normal): biased exponents 100..113.
    return st.builds(lambda s, e, m: s | (e << 23) | m, st.sampled_from([0, 1 << 31]), st.integers(100, 113),
                     st.integers(0, 0x7FFFFF))


def _overflow_thresholds():
    centres = [struct.unpack("<I", struct.pack("<f", 65520.0))[0], 0x7F7F8000, 0x7F800000, 0x477FE000]
    return st.builds(lambda c, d, s: (c + d) | s, st.sampled_from(centres), st.integers(-4096, 4096),
                     st.sampled_from([0, 1 << 31]))


def _all_edges(fmt: str):
    return st.one_of(_near_ties(fmt), _binade_edges(), _fp16_subnormal_range(), _overflow_thresholds())


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
@given(data=st.data())
def test_targeted_edges_match_torch(fmt, data):
    bits = data.draw(st.lists(_all_edges(fmt), min_size=1, max_size=256))
    check_against_torch(_bits_tensor(bits), fmt)


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
@given(data=st.data())
def test_matches_exact_rational_oracle(fmt, data):
    strategy = st.one_of(u32, _all_edges(fmt))
    bits = data.draw(st.lists(strategy.filter(lambda b: (b & 0x7FFFFFFF) <= 0x7F800000), min_size=1, max_size=64))
    got = _u16(pk.round_to(_bits_tensor(bits), DTYPES[fmt]))
    want = [rne_bits(f32_from_bits(b), fmt) for b in bits]
    assert got == want


EDGES = [
    0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"),
    1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8,       # ties to even (fp16, bf16)
    2 - 2**-12, 2 - 2**-9,                                      # carry into the exponent
    65504.0, 65519.99, 65520.0, 1e6,                            # fp16 max, just below/at overflow
    f32_from_bits(0x7F7F7FFF), f32_from_bits(0x7F7F8000), 3.4e38,  # bf16 overflow threshold
    2**-14, 2**-24, 2**-25, 1.5 * 2**-25, 2**-26, 3 * 2**-25,    # fp16 subnormals and underflow
    -(2**-25), -(2**-26), f32_from_bits(1), f32_from_bits(0x80000001),  # -0 from underflow, fp32 subnormals
]


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_edge_table(fmt):
    x = torch.tensor(EDGES, dtype=torch.float32)
    check_against_torch(x, fmt)
    assert _u16(pk.round_to(x, DTYPES[fmt])) == [rne_bits(float(v), fmt) for v in x.tolist()]


def _fp16_subnormal_ties() -> list[int]:
    """fp32 patterns at, and one fp32 ulp either side of, every kind of fp16-subnormal tie:
    (k + 1/2) * 2^-24 for even and odd k across the subnormal range, both signs, plus the
    largest values that round up to the smallest normal 2^-14."""
    bits = []
    for k in (0, 1, 2, 3, 4, 5, 255, 256, 511, 512, 1021, 1022, 1023):
        centre = struct.unpack("<I", struct.pack("<f", (k + 0.5) * 2**-24))[0]
        for d in (-1, 0, 1):
            bits += [centre + d, (centre + d) | (1 << 31)]
    below_normal = struct.unpack("<I", struct.pack("<f", 2**-14))[0]
    return bits + [below_normal - d for d in range(1, 5)]


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_fp16_subnormal_ties_round_to_even(fmt):
    # the fp16 helper rounds its subnormal range with an fp32 addition; ties there sit at other bits
    bits = _fp16_subnormal_ties()
    check_against_torch(_bits_tensor(bits), fmt)
    assert _u16(pk.round_to(_bits_tensor(bits), DTYPES[fmt])) == [rne_bits(f32_from_bits(b), fmt) for b in bits]


# signalling and quiet NaNs, both signs, payloads in the bits fp16 keeps (22..13) and drops (12..0)
NANS = [0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0xFFFFFFFF, 0x7FBFFFFF, 0x7F802000, 0xFFA00000,
        0x7F801FFF, 0xFF9FE000]


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_nan_becomes_quiet_nan_with_sign(fmt):
    got = _u16(pk.round_to(_bits_tensor(NANS), DTYPES[fmt]))
    q = QUIET_NAN[fmt]
    assert got == [q | 0x8000 if b >> 31 else q for b in NANS]


def test_any_shape_and_strides():
    x = torch.randn(6, 10, 4, generator=torch.Generator().manual_seed(0)).transpose(0, 2)[:, ::3]
    assert not x.is_contiguous()
    for dtype in DTYPES.values():
        assert torch.equal(pk.round_to(x, dtype).view(torch.int16), x.to(dtype).view(torch.int16))
    assert pk.round_to(torch.empty(0, 3), torch.float16).shape == (0, 3)


def test_gradient_passes_straight_through_as_fp32():
    x = torch.randn(5, 3, requires_grad=True)
    y = pk.round_to(x, torch.bfloat16)
    g = torch.randn(5, 3).to(torch.bfloat16)
    (grad,) = torch.autograd.grad(y, x, g)
    assert grad.dtype == torch.float32
    assert torch.equal(grad, g.float())


def test_rejects_non_fp32_input():
    with pytest.raises(TypeError, match="float32"):
        pk.round_to(torch.ones(3, dtype=torch.float16), torch.bfloat16)
    with pytest.raises(TypeError, match="dtype"):
        pk.round_to(torch.ones(3), torch.int8)
