"""pk.layer_norm's test data (ops/layer_norm.py): samples, row samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.layer_norm import layer_norm

from . import _tensors as S
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w, b = S.leaf((rows, n), dtype, g), S.leaf((n,), dtype, g), S.leaf((n,), dtype, g)
    return [Sample("layer_norm", layer_norm, (x, w, b))]


def row_samples(dtype, rows, n, seed):
    # x's gradient only: the weight and bias gradients sum over the rows of a program.
    g = torch.Generator().manual_seed(seed)
    x, w, b = S.leaf((rows, n), dtype, g, scale=3.0), S.leaf((n,), dtype, g), S.leaf((n,), dtype, g)
    y = layer_norm(x, w.detach(), b.detach())
    return [y, torch.autograd.grad(y, x, S.leaf((rows, n), dtype, g).detach())[0]]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    xn, wn, bn = r(3, 6), r(6, seed=1), r(6, seed=2)
    _, mean, rstd = S.no_grad(*ops.layer_norm(xn, wn, bn, 1e-5))
    return [
        OpcheckCase("layer_norm", ops.layer_norm,
                    (r(3, 6, grad=True), r(6, seed=1, grad=True), r(6, seed=2, grad=True), 1e-5)),
        OpcheckCase("layer_norm/no-affine/bf16", ops.layer_norm, (r(3, 6, dtype=S.BF16, grad=True), None, None, 1e-5)),
        OpcheckCase("layer_norm_backward", ops.layer_norm_backward,
                    (r(3, 6, seed=3), xn, wn, mean, rstd, torch.float32, True, True)),
    ]


def bad_inputs():
    r, X, F = S.rand, (lambda: S.rand(3, 4)), torch.nn.functional
    return [
        Raises("layer_norm/None x", lambda: layer_norm(None, r(4), r(4)), TypeError, "x must be a torch.Tensor"),
        Raises("layer_norm/int x", lambda: layer_norm(X().int(), None, None), TypeError, "x must be float32"),
        Raises("layer_norm/device", lambda: layer_norm(X(), r(4), S.meta(4)), ValueError, "bias is on meta"),
        Raises("layer_norm/weight shape", lambda: layer_norm(X(), r(5), None), ValueError, "weight has shape"),
        Raises("layer_norm/weight dtype", lambda: layer_norm(X(), r(4).long(), None), TypeError, "weight must be"),
        Raises("layer_norm/0-d", lambda: layer_norm(r(()), None, None), ValueError, "at least one dimension"),
        *[Raises(f"layer_norm/eps {eps}", lambda eps=eps: layer_norm(X(), None, None, eps=eps), ValueError,
                 "eps must be") for eps in (-1e-5, S.NAN, S.INF, 1e39)],
        Raises("pk::layer_norm/bias", lambda: torch.ops.pk.layer_norm(r(3, 4), None, r(3), 1e-5), ValueError,
               "pk::layer_norm"),
        MatchesTorch("layer_norm rows=0", lambda: layer_norm(r(0, 4), r(4), r(4)),
                     lambda: F.layer_norm(r(0, 4), (4,), r(4), r(4))),
        MatchesTorch("layer_norm n=0", lambda: layer_norm(r(3, 0), r(0), r(0)),
                     lambda: F.layer_norm(r(3, 0), (0,), r(0), r(0))),
        NonFinite("layer_norm", lambda x: layer_norm(x, r(6), r(6, seed=1)),
                  lambda x: F.layer_norm(x.double(), (6,), r(6).double(), r(6, seed=1).double(), 1e-5)),
    ]
