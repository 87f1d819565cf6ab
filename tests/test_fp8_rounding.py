"""Owned fp8 rounding: pk.round_to to float8_e4m3fn / float8_e5m2 against an exact rational oracle and torch's cast.

The oracle (tests/rne_oracle.py, ``fp8_bits``) rounds the exact value once; it never goes through
torch's fp64 -> fp8 cast, which double-rounds. torch's fp32 -> fp8 cast is compared only where it
has our semantics (torch >= 2.12: e4m3fn saturates); all 2^32 fp32 patterns were checked against it
once by hand (``python -m benchmarks.exhaustive_rounding --dtype e4m3fn`` / ``--dtype e5m2``).
"""

import math
import struct
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rne_oracle import f32_from_bits, fp8_bits, fp8_value

import precision_kernels as pk

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
DTYPES = {"e4m3fn": E4M3, "e5m2": E5M2}
# (format, saturate) as pk.round_to takes it; None is the format's own overflow rule
MODES = [("e4m3fn", None), ("e5m2", None), ("e5m2", True)]
MODE_IDS = ["e4m3fn", "e5m2", "e5m2-saturate"]

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
needs_saturating_torch = pytest.mark.skipif(
    _TORCH_VERSION < (2, 12),
    reason="torch < 2.12 casts e4m3fn overflow to NaN (saturation came with pytorch#178817); pk saturates",
)


def _bits_tensor(bits: list[int]) -> torch.Tensor:
    signed = [b - (1 << 32) if b >= 1 << 31 else b for b in bits]
    return torch.tensor(signed, dtype=torch.int32).view(torch.float32).to(pk.backend.device())


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _u8(t: torch.Tensor) -> list[int]:
    return t.view(torch.uint8).cpu().tolist()


def _round(bits: list[int], fmt: str, saturate) -> list[int]:
    return _u8(pk.round_to(_bits_tensor(bits), DTYPES[fmt], saturate=saturate))


def _oracle(bits: list[int], fmt: str, saturate) -> list[int]:
    return [fp8_bits(f32_from_bits(b), fmt, saturate) for b in bits]


# ---- edge tables ------------------------------------------------------------------------------------


def _positive_values(fmt: str) -> list[float]:
    """Every finite non-negative fp8 value, in increasing order, decoded from the format's definition."""
    return sorted({fp8_value(b, fmt) for b in range(0x80) if math.isfinite(fp8_value(b, fmt))})


def _ties_at_every_binade(fmt: str) -> list[int]:
    """fp32 patterns at, and one fp32 ulp either side of, the midpoint of every pair of neighbouring fp8
    values (subnormal, normal and the step into each binade), both signs. Midpoints have at most 5
    significant bits, so they are exact in fp32."""
    values = _positive_values(fmt)
    out = []
    for lo, hi in zip(values, values[1:]):
        mid = _f32_bits((lo + hi) / 2)
        for d in (-1, 0, 1):
            out += [mid + d, (mid + d) | (1 << 31)]
    return out


def _overflow_edges(fmt: str) -> list[int]:
    """Around the largest finite value, the tie above it, the next fp8 step, and the fp32 top end."""
    largest = 448.0 if fmt == "e4m3fn" else 57344.0
    step = 32.0 if fmt == "e4m3fn" else 8192.0
    centres = [largest, largest + step / 2, largest + step, 2 * largest, 1e6, 3.4e38]
    out = [_f32_bits(c) + d for c in centres for d in (-2, -1, 0, 1, 2)]
    out += [0x7F7FFFFF, 0x7F800000]                              # fp32 max, +inf
    return out + [b | (1 << 31) for b in out]


def _subnormal_range(fmt: str) -> list[int]:
    """From below half the smallest subnormal (rounds to 0) up to the smallest normal, a dense sweep."""
    p = pk.Precision.parse(DTYPES[fmt])
    lo, hi = _f32_bits(p.smallest_subnormal / 4), _f32_bits(p.smallest_normal * 1.01)
    out = list(range(lo, hi, max(1, (hi - lo) // 997)))
    return out + [b | (1 << 31) for b in out]


SPECIALS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x3F800000, 0xBF800000]


def _edge_table(fmt: str) -> list[int]:
    return _ties_at_every_binade(fmt) + _overflow_edges(fmt) + _subnormal_range(fmt) + SPECIALS


@pytest.mark.parametrize("fmt,saturate", MODES, ids=MODE_IDS)
def test_edge_table_matches_exact_oracle(fmt, saturate):
    bits = _edge_table(fmt)
    assert _round(bits, fmt, saturate) == _oracle(bits, fmt, saturate)


@needs_saturating_torch
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
def test_edge_table_matches_torch_cast(fmt):
    x = _bits_tensor(_edge_table(fmt))
    got = pk.round_to(x, DTYPES[fmt])
    assert torch.equal(got.view(torch.uint8), x.to(DTYPES[fmt]).view(torch.uint8))


def test_measured_torch_facts():
    """The facts pk's semantics are defined by (torch 2.13 measured them the same way)."""
    e4 = _u8(pk.round_to(_bits_tensor([_f32_bits(v) for v in (464.0, 480.0, 1e6, math.inf, -math.inf,
                                                                 2.0**-10, 1.5 * 2.0**-10)]), E4M3))
    assert e4 == [0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0x00, 0x01]     # saturate; 2^-10 ties to even (0)
    e5 = _u8(pk.round_to(_bits_tensor([_f32_bits(v) for v in (61440.0, 57344.0, 61439.99)]), E5M2))
    assert e5 == [0x7C, 0x7B, 0x7B]                               # the tie above 57344 overflows to inf
    sat = _u8(pk.round_to(_bits_tensor([_f32_bits(v) for v in (61440.0, math.inf, -math.inf)]), E5M2,
                          saturate=True))
    assert sat == [0x7B, 0x7B, 0xFB]


def test_oracle_rounds_the_exact_value_once():
    # torch's fp64 -> fp8 cast rounds through fp32 and gets this wrong; the oracle must not.
    exact = Fraction(1) + Fraction(1, 16) + Fraction(1, 2**30)
    assert fp8_bits(exact, "e4m3fn") == 0x39                     # 1.125
    assert fp8_bits(float(exact), "e4m3fn") == 0x39
    # its fp32 value is the tie 1.0625 itself, which goes to the even 1.0
    assert _round([_f32_bits(float(exact))], "e4m3fn", None) == [0x38]


# signalling and quiet NaNs, both signs, assorted payloads
NANS = [0x7F800001, 0xFF800001, 0x7FC00000, 0xFFC00000, 0xFFFFFFFF, 0x7FBFFFFF, 0x7F802000, 0xFFA00000]


@pytest.mark.parametrize("fmt,saturate", MODES, ids=MODE_IDS)
def test_nan_becomes_7f_with_sign(fmt, saturate):
    assert _round(NANS, fmt, saturate) == [0xFF if b >> 31 else 0x7F for b in NANS]


# ---- hypothesis -------------------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=2**32 - 1)


def _near_fp8_ties(fmt: str):
    """fp32 patterns at and next to an fp8 tie in the format's normal range or beyond (any exponent)."""
    drop = 20 if fmt == "e4m3fn" else 21
    kept = u32.map(lambda b: b & ~((1 << drop) - 1))
    return st.builds(lambda k, d: ((k | (1 << (drop - 1))) + d) & 0xFFFFFFFF, kept, st.sampled_from([0, 1, -1]))


def _in_fp8_range(fmt: str):
    """Patterns whose magnitude is inside the format's range or just past it (exponents 2^-18 .. 2^17)."""
    return st.builds(lambda s, e, m: s | (e << 23) | m, st.sampled_from([0, 1 << 31]), st.integers(109, 144),
                     st.integers(0, 0x7FFFFF))


@pytest.mark.parametrize("fmt,saturate", MODES, ids=MODE_IDS)
@given(data=st.data())
def test_arbitrary_patterns_match_exact_oracle(fmt, saturate, data):
    strategy = st.one_of(u32, _near_fp8_ties(fmt), _in_fp8_range(fmt))
    bits = data.draw(st.lists(strategy, min_size=1, max_size=128))
    assert _round(bits, fmt, saturate) == _oracle(bits, fmt, saturate)


@needs_saturating_torch
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
@given(data=st.data())
def test_arbitrary_patterns_match_torch_cast(fmt, data):
    strategy = st.one_of(u32, _near_fp8_ties(fmt), _in_fp8_range(fmt))
    x = _bits_tensor(data.draw(st.lists(strategy, min_size=1, max_size=512)))
    got = pk.round_to(x, DTYPES[fmt]).view(torch.uint8)
    want = x.to(DTYPES[fmt]).view(torch.uint8)
    nan = torch.isnan(x)
    assert torch.equal(got[~nan], want[~nan])


# ---- API ------------------------------------------------------------------------------------------


def test_shapes_strides_and_empty():
    x = torch.randn(6, 10, 4, generator=torch.Generator().manual_seed(0)).to(pk.backend.device())
    x = x.transpose(0, 2)[:, ::3]
    for dtype in (E4M3, E5M2):
        got = pk.round_to(x, dtype)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(got.view(torch.uint8), pk.round_to(x.contiguous(), dtype).view(torch.uint8))
    assert pk.round_to(torch.empty(0, 3, device=x.device), E5M2).shape == (0, 3)


def test_saturate_option_is_checked():
    x = torch.ones(3, device=pk.backend.device())
    with pytest.raises(ValueError, match="saturate"):
        pk.round_to(x, E4M3, saturate=False)
    with pytest.raises(ValueError, match="saturate"):
        pk.round_to(x, torch.bfloat16, saturate=True)
    with pytest.raises(TypeError, match="saturate"):
        pk.round_to(x, E5M2, saturate=1)
    assert pk.round_to(x, E4M3, saturate=True).view(torch.uint8).tolist() == [0x38] * 3
    assert pk.round_to(x, torch.float16, saturate=False).dtype == torch.float16


def test_gradient_passes_straight_through():
    x = torch.randn(4, 3, device=pk.backend.device(), requires_grad=True)
    y = pk.round_to(x, E4M3)
    g = torch.randn(4, 3, device=x.device).to(E4M3)
    (grad,) = torch.autograd.grad(y, x, g)
    assert grad.dtype == torch.float32
    assert torch.equal(grad, g.float())


def test_fp8_input_is_refused():
    x = torch.ones(3, device=pk.backend.device()).to(E4M3)
    with pytest.raises(TypeError, match="float32"):
        pk.round_to(x, E5M2)
