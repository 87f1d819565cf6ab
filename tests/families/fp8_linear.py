"""pk.fp8_linear's test data (ops/fp8_linear.py): samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.fp8 import quantize_fp8
from precision_kernels.ops.fp8_linear import fp8_linear

from ._cases import OpcheckCase, Raises, Sample
from ._tensors import BF16, DEV, F32, rand


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).to(dtype).to(DEV).requires_grad_()
    w = torch.randn(n, k, generator=g).to(dtype).to(DEV).requires_grad_()
    return [Sample("fp8_linear", fp8_linear, (x, w))]


def opcheck():
    ops, e4, e5 = torch.ops.pk, torch.float8_e4m3fn, torch.float8_e5m2
    x, w = rand(3, 20, dtype=BF16), rand(5, 20, dtype=BF16, seed=1)
    wq, sw = quantize_fp8(w, e5, axis=-1)
    xq, sx = quantize_fp8(x, e4, axis=-1)
    grad = rand(3, 5, dtype=BF16, seed=2)
    return [
        OpcheckCase("fp8_linear/e4m3 x e5m2", ops.fp8_linear, (x.requires_grad_(), w.requires_grad_(),
                                                                wq.view(torch.uint8), e5, sw, e4)),
        OpcheckCase("fp8_linear_backward", ops.fp8_linear_backward,
                    (grad, xq.view(torch.uint8), e4, sx, wq.view(torch.uint8), e5, sw, "interpreter", True, True)),
        OpcheckCase("fp8_linear_backward/x only", ops.fp8_linear_backward,
                    (grad, xq.view(torch.uint8), e4, sx, wq.view(torch.uint8), e5, sw, "interpreter", True, False)),
    ]


def bad_inputs():
    e4 = torch.float8_e4m3fn

    def w():
        return rand(5, 4, dtype=BF16)

    def fp8_pair(rows, scale_shape):  # torch's cast: a bad-input call may launch nothing
        return rand(rows, 4).to(e4), torch.ones(scale_shape, device=rand(1).device)

    return [
        Raises("fp8_linear/fp8 x", lambda: fp8_linear(rand(3, 4).to(e4), w()), TypeError, "x is torch.float8_e4m3fn"),
        Raises("fp8_linear/dtypes", lambda: fp8_linear(rand(3, 4, dtype=F32), w()), TypeError, "dtype mismatch"),
        Raises("fp8_linear/inner", lambda: fp8_linear(rand(3, 5, dtype=BF16), w()), ValueError, "inner dimensions"),
        Raises("fp8_linear/dtype", lambda: fp8_linear(rand(3, 4, dtype=BF16), w(), dtype=BF16), TypeError,
               "dtype must be"),
        Raises("fp8_linear/weight_fp8 pair", lambda: fp8_linear(rand(3, 4, dtype=BF16), w(), weight_fp8=w()),
               TypeError, "weight_fp8 must be"),
        Raises("fp8_linear/weight_fp8 tensor-wise",
               lambda: fp8_linear(rand(3, 4, dtype=BF16), w(), weight_fp8=fp8_pair(5, ())), ValueError,
               "weight_fp8 scales"),
        Raises("fp8_linear/weight_fp8 shape",
               lambda: fp8_linear(rand(3, 4, dtype=BF16), w(), weight_fp8=fp8_pair(4, (4, 1))),
               ValueError, "weight_fp8 values"),
    ]
