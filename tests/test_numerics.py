from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rne_oracle import rne_bits

from precision_kernels import numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ulp_distance_basics(dtype):
    info = torch.finfo(dtype)
    tiny = torch.tensor([0.0], dtype=dtype).view(torch.int16 if dtype != torch.float32 else torch.int32)
    tiny = (tiny + 1).view(dtype)  # smallest positive subnormal
    a = torch.cat([torch.tensor([0.0, 1.0, info.max, 1.0, 0.0], dtype=dtype), tiny, -tiny])
    b = torch.cat([torch.tensor([-0.0, 1.0 + info.eps, float("inf"), float("nan"), 0.0], dtype=dtype),
                   -tiny, tiny])
    d = numerics.ulp_distance(a, b)
    assert d[:3].tolist() == [0.0, 1.0, 1.0]
    assert torch.isnan(d[3])
    assert d[4] == 0 and d[5] == 2 and d[6] == 2
    assert torch.isnan(numerics.ulp_distance(b[3:4], a[3:4]))


def test_ulp_distance_is_symmetric_and_counts_steps():
    x = torch.randn(100, dtype=torch.float32)
    y = torch.nextafter(torch.nextafter(x, torch.tensor(np.inf)), torch.tensor(np.inf))
    assert torch.equal(numerics.ulp_distance(x, y), torch.full((100,), 2.0, dtype=torch.float64))
    assert torch.equal(numerics.ulp_distance(y, x), numerics.ulp_distance(x, y))


def test_ulp_distance_rejects_mixed_dtypes():
    with pytest.raises(TypeError):
        numerics.ulp_distance(torch.ones(2), torch.ones(2, dtype=torch.float16))


def test_correct_rounding_avoids_double_rounding():
    ref = torch.tensor([1 + 2**-11 + 2**-40, 1 + 2**-8 + 2**-40], dtype=torch.float64)
    assert ref[:1].to(torch.float16).item() == 1.0  # torch rounds through fp32: wrong
    assert numerics.correctly_rounded(ref[:1], torch.float16).item() == 1 + 2**-10
    assert numerics.correctly_rounded(ref[1:], torch.bfloat16).item() == 1 + 2**-7


f64 = st.floats(allow_nan=False, width=64, min_value=-1e39, max_value=1e39)


@given(st.lists(f64, min_size=1, max_size=64))
def test_bf16_and_fp16_rounding_of_float64_match_rational_oracle(values):
    ref = torch.tensor(values, dtype=torch.float64)
    for fmt, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        got = [v & 0xFFFF for v in numerics.correctly_rounded(ref, dtype).view(torch.int16).tolist()]
        assert got == [rne_bits(v, fmt) for v in values]


def test_error_summary():
    ref = torch.tensor([1.0, 1 + 2**-12, 3.0, -2.0], dtype=torch.float64)
    out = torch.tensor([1.0, 1.0, 3.0 + 2**-9, -2.0], dtype=torch.float16)
    s = numerics.error_summary(out, ref)
    assert s["n"] == 4
    assert s["frac_correctly_rounded"] == 0.75
    assert s["max_ulp"] == 1.0 and s["mean_ulp"] == 0.25
    assert s["max_abs_err"] == 2**-9
    assert s["max_rel_err"] == pytest.approx(float(Fraction(2**-9) / 3))
    with pytest.raises(TypeError):
        numerics.error_summary(out, ref.float())
