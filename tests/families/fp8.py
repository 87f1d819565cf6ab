"""pk.quantize_fp8 and pk.scaled_mm's test data (ops/fp8.py): samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.fp8 import quantize_fp8, scaled_mm
from precision_kernels.ops.rounding import round_to

from ._cases import OpcheckCase, Raises, Sample
from ._tensors import BF16, DEV, F32, meta, rand


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, k, generator=g).to(dtype).to(DEV), torch.randn(n, k, generator=g).to(dtype).to(DEV)

    def quantized_linear(x, w):
        xq, sx = quantize_fp8(x, torch.float8_e4m3fn, axis=-1)
        wq, sw = quantize_fp8(w, torch.float8_e5m2, axis=-1)
        out = scaled_mm(xq, wq.t(), sx, sw.t(), out_dtype=dtype)
        # fp8 values as their bits, widened to int16: the generic tests compare 16- and 32-bit views
        return xq.view(torch.uint8).to(torch.int16), sx, wq.view(torch.uint8).to(torch.int16), sw, out

    return [Sample("scaled_mm", quantized_linear, (x, w))]


def _fp8_rand(*shape, dtype, seed):
    return round_to(rand(*shape, seed=seed), dtype)


def opcheck():
    ops, e4, e5 = torch.ops.pk, torch.float8_e4m3fn, torch.float8_e5m2
    a, b = _fp8_rand(3, 20, dtype=e4, seed=1), _fp8_rand(5, 20, dtype=e5, seed=2).t()
    one = torch.ones((), device=a.device)
    return [
        OpcheckCase("scaled_mm/rowwise", ops.scaled_mm,
                    (a.view(torch.uint8), e4, b.view(torch.uint8), e5, rand(3, 1).abs(), rand(1, 5, seed=1).abs(), None,
                     BF16)),
        OpcheckCase("scaled_mm/tensorwise/bias/fp32", ops.scaled_mm,
                    (a.view(torch.uint8), e4, b.view(torch.uint8), e5, one, one, rand(5, seed=3), F32)),
        OpcheckCase("quantize_fp8/rowwise", ops.quantize_fp8, (rand(3, 4), e4, True)),
        OpcheckCase("quantize_fp8/tensorwise/bf16", ops.quantize_fp8, (rand(3, 4, dtype=BF16), e5, False)),
    ]


def bad_inputs():
    e4, ops = torch.float8_e4m3fn, torch.ops.pk

    # torch's cast builds the fp8 operands: a bad-input call may launch nothing, and the values do not matter
    def a():
        return rand(3, 4).to(e4)

    def b():
        return rand(4, 5, seed=1).to(e4)

    def one():
        return torch.ones((), device=rand(1).device)

    return [
        Raises("scaled_mm/a float", lambda: scaled_mm(rand(3, 4), b(), one(), one()), TypeError, "a must be float8"),
        Raises("scaled_mm/None b", lambda: scaled_mm(a(), None, one(), one()), TypeError, "b must be a torch.Tensor"),
        Raises("scaled_mm/scale dtype", lambda: scaled_mm(a(), b(), one().half(), one()), TypeError,
               "scale_a must be float32"),
        Raises("scaled_mm/scale shape", lambda: scaled_mm(a(), b(), rand(3, 1)[:, :1].expand(3, 2), one()), ValueError,
               "scale_a and scale_b"),
        Raises("scaled_mm/inner", lambda: scaled_mm(a(), b()[:3], one(), one()), ValueError, "inner dimensions"),
        Raises("scaled_mm/out_dtype", lambda: scaled_mm(a(), b(), one(), one(), out_dtype=e4), TypeError, "out_dtype"),
        Raises("scaled_mm/bias", lambda: scaled_mm(a(), b(), one(), one(), bias=rand(4)), ValueError,
               "bias must have shape"),
        Raises("scaled_mm/device", lambda: scaled_mm(a(), b(), one(), meta(1)), ValueError, "scale_b is on meta"),
        Raises("pk::scaled_mm/inner", lambda: ops.scaled_mm(a().view(torch.uint8), e4, a().view(torch.uint8), e4,
                                                             one(), one(), None, BF16), ValueError, "pk::scaled_mm"),
        Raises("pk::scaled_mm/fp8", lambda: ops.scaled_mm(a(), e4, b(), e4, one(), one(), None, BF16), ValueError,
               "pk::scaled_mm"),
        Raises("quantize_fp8/dtype", lambda: quantize_fp8(rand(3, 4), BF16), TypeError, "dtype must be"),
        Raises("quantize_fp8/axis", lambda: quantize_fp8(rand(3, 4), e4, axis=0), ValueError, "axis must be"),
        Raises("quantize_fp8/fp8 x", lambda: quantize_fp8(a(), e4), TypeError, "x is torch.float8_e4m3fn"),
        Raises("pk::quantize_fp8/dtype", lambda: ops.quantize_fp8(rand(3, 4), BF16, True), ValueError,
               "pk::quantize_fp8"),
    ]
