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
    assert p.significand_bits == {"fp32": 24, "fp16": 11, "bf16": 8}[p.value]
