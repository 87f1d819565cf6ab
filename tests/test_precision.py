import pytest
import torch

from precision_kernels import Precision


@pytest.mark.parametrize("name,expected", [
    ("fp16", Precision.FP16), ("float16", Precision.FP16), ("half", Precision.FP16), ("FP16", Precision.FP16),
    ("bf16", Precision.BF16), ("bfloat16", Precision.BF16),
    ("fp32", Precision.FP32), ("float32", Precision.FP32),
    (torch.float16, Precision.FP16), (torch.bfloat16, Precision.BF16), (torch.float32, Precision.FP32),
])
def test_parse(name, expected):
    assert Precision.parse(name) is expected


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="bf16.*fp16") as err:
        Precision.parse("fp8")
    assert "fp8" in str(err.value)
    with pytest.raises(ValueError):
        Precision.parse(torch.float64)


@pytest.mark.parametrize("p", list(Precision))
def test_facts_match_torch_finfo(p):
    info = torch.finfo(p.dtype)
    assert p.eps == info.eps
    assert p.smallest_normal == info.smallest_normal
    assert p.max_finite == info.max
    assert p.significand_bits == {"fp32": 24, "fp16": 11, "bf16": 8, "fp8_e4m3": 4, "fp8_e5m2": 3}[p.value]
    assert p.bits == info.bits
    assert p.smallest_subnormal == info.smallest_normal * info.eps
    assert p.has_inf == (p is not Precision.FP8_E4M3)
    assert p.is_fp8 == (info.bits == 8)


@pytest.mark.parametrize("name,expected", [
    ("fp8_e4m3", Precision.FP8_E4M3), ("float8_e4m3fn", Precision.FP8_E4M3), ("e4m3", Precision.FP8_E4M3),
    ("fp8_e5m2", Precision.FP8_E5M2), ("e5m2", Precision.FP8_E5M2),
    (torch.float8_e4m3fn, Precision.FP8_E4M3), (torch.float8_e5m2, Precision.FP8_E5M2),
])
def test_parse_fp8(name, expected):
    assert Precision.parse(name) is expected


def test_fp8_facts():
    # e4m3fn: no inf, 0x7F is NaN, so its top binade stops at 448 (not 480); e5m2 is IEEE-style
    e4, e5 = Precision.FP8_E4M3, Precision.FP8_E5M2
    assert (e4.max_finite, e4.smallest_normal, e4.smallest_subnormal, e4.eps) == (448.0, 2.0**-6, 2.0**-9, 0.125)
    assert (e5.max_finite, e5.smallest_normal, e5.smallest_subnormal, e5.eps) == (57344.0, 2.0**-14, 2.0**-16, 0.25)
