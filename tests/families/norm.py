"""pk.rms_norm's test data (ops/norm.py): samples, row samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.norm import rms_norm

from . import _tensors as S
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return [Sample("rms_norm", rms_norm, (S.leaf((rows, n), dtype, g), S.leaf((n,), dtype, g)))]


def row_samples(dtype, rows, n, seed):
    # x's gradient only: the weight gradient sums over the rows of a program (block_rows is its order).
    g = torch.Generator().manual_seed(seed)
    x, w, dy = S.leaf((rows, n), dtype, g, scale=3.0), S.leaf((n,), dtype, g), S.leaf((rows, n), dtype, g)
    y = rms_norm(x, w.detach())
    return [y, torch.autograd.grad(y, x, dy.detach())[0]]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    xn, wn = r(3, 6), r(6, seed=1)
    _, rstd = S.no_grad(*ops.rms_norm(xn, wn, 1e-6))
    return [OpcheckCase("rms_norm", ops.rms_norm, (r(3, 6, grad=True), r(6, seed=1, grad=True), 1e-6)),
            OpcheckCase("rms_norm/fp16", ops.rms_norm,
                        (r(3, 6, dtype=S.F16, grad=True), r(6, dtype=S.F16, seed=1, grad=True), 1e-6)),
            OpcheckCase("rms_norm_backward", ops.rms_norm_backward, (r(3, 6, seed=3), xn, wn, rstd))]


def bad_inputs():
    r, X, F = S.rand, (lambda: S.rand(3, 4)), torch.nn.functional
    return [
        Raises("rms_norm/None x", lambda: rms_norm(None, r(4)), TypeError, "x must be a torch.Tensor"),
        Raises("rms_norm/None weight", lambda: rms_norm(X(), None), TypeError, "weight must be a torch.Tensor"),
        Raises("rms_norm/weight shape", lambda: rms_norm(X(), r(1, 4)), ValueError, "weight has shape"),
        Raises("rms_norm/weight dtype", lambda: rms_norm(X(), r(4).long()), TypeError, "weight must be float32"),
        Raises("rms_norm/weight device", lambda: rms_norm(X(), S.meta(4)), ValueError, "weight is on meta"),
        Raises("rms_norm/0-d", lambda: rms_norm(r(()), r(1)), ValueError, "at least one dimension"),
        *[Raises(f"rms_norm/eps {eps}", lambda eps=eps: rms_norm(X(), r(4), eps=eps), ValueError, "eps must be")
          for eps in (-1e-6, S.NAN, S.INF, 1e39)],
        Raises("rms_norm/eps None", lambda: rms_norm(X(), r(4), eps=None), TypeError, "eps must be a real number"),
        Raises("pk::rms_norm/weight", lambda: torch.ops.pk.rms_norm(r(3, 4), r(5), 1e-6), ValueError, "pk::rms_norm"),
        MatchesTorch("rms_norm rows=0", lambda: rms_norm(r(0, 4), r(4)), lambda: F.rms_norm(r(0, 4), (4,), r(4), 1e-6)),
        MatchesTorch("rms_norm n=0", lambda: rms_norm(r(3, 0), r(0)), lambda: F.rms_norm(r(3, 0), (0,), r(0), 1e-6)),
        NonFinite("rms_norm", lambda x: rms_norm(x, r(6)), lambda x: F.rms_norm(x.double(), (6,), r(6).double(), 1e-6)),
    ]
