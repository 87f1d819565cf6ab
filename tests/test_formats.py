"""The kernels' named constexpr codes (kernels/formats.py) and the ints the ops pass for them agree."""

import pytest
import torch

from precision_kernels.kernels import formats
from precision_kernels.ops import _common
from precision_kernels.ops import lm_head as lm_head_op


def test_storage_format_codes_match_the_ops():
    want = {torch.float32: formats.FP32, torch.float16: formats.FP16, torch.bfloat16: formats.BF16}
    for dtype, code in want.items():
        assert _common.kind(dtype) == code.value, dtype
    assert len({c.value for c in want.values()}) == len(want)


def test_lm_head_mode_codes_match_the_op():
    assert lm_head_op.SCORE == formats.SCORE.value
    assert lm_head_op.SAMPLE == formats.SAMPLE.value
    assert formats.SCORE.value != formats.SAMPLE.value


def test_fp8_format_codes_match_the_op():
    fp8 = pytest.importorskip("precision_kernels.ops.fp8")
    assert fp8.FP8_KIND == {torch.float8_e4m3fn: formats.FP8_E4M3FN.value, torch.float8_e5m2: formats.FP8_E5M2.value}
    codes = [formats.FP32, formats.FP16, formats.BF16, formats.FP8_E4M3FN, formats.FP8_E5M2]
    assert len({c.value for c in codes}) == len(codes)
