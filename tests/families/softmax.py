"""pk.softmax and pk.log_softmax's test data (ops/softmax.py): samples, row samples, opcheck cases,
bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.softmax import log_softmax, softmax

from . import _tensors as S
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    x = S.leaf((rows, n), dtype, torch.Generator().manual_seed(seed), scale=4.0)
    return [Sample("softmax", lambda x: softmax(x, scale=0.7), (x,)), Sample("log_softmax", log_softmax, (x,))]


def row_samples(dtype, rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    x, dy = S.leaf((rows, n), dtype, g, scale=3.0), S.leaf((rows, n), dtype, g).detach()
    return [t for y in (softmax(x), log_softmax(x)) for t in (y, torch.autograd.grad(y, x, dy)[0])]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    s = r(3, 5)
    _, smax, ssum = S.no_grad(*ops.softmax(s, 0.5))
    return [OpcheckCase("softmax", ops.softmax, (r(3, 5, grad=True), 0.5)),
            OpcheckCase("log_softmax/bf16", ops.log_softmax, (r(3, 5, dtype=S.BF16, grad=True), 1.0)),
            OpcheckCase("softmax_backward", ops.softmax_backward, (r(3, 5, seed=3), s, smax, ssum, 0.5, False))]


def bad_inputs():
    r, X = S.rand, (lambda: S.rand(3, 4))
    rows = [Raises("pk::softmax/rank", lambda: torch.ops.pk.softmax(r(2, 3, 4), 1.0), ValueError, "pk::softmax")]
    finite, real = "scale must be a finite number", "scale must be a real number"
    bad_scales = [("nan", S.NAN, ValueError, finite), ("inf", S.INF, ValueError, finite),
                  ("1e39", 1e39, ValueError, "scale must be finite in float32"), ("True", True, TypeError, real),
                  ("'2'", "2", TypeError, real), ("None", None, TypeError, real)]
    for op in (softmax, log_softmax):
        name = op.__name__
        rows += [
            Raises(f"{name}/None", lambda op=op: op(None), TypeError, "x must be a torch.Tensor"),
            Raises(f"{name}/int", lambda op=op: op(X().int()), TypeError, "x must be float32"),
            Raises(f"{name}/device", lambda op=op: op(S.meta(3, 4)), ValueError, "x is on meta"),
            Raises(f"{name}/dim range", lambda op=op: op(X(), dim=2), IndexError, "dim 2 is out of range"),
            Raises(f"{name}/dim type", lambda op=op: op(X(), dim=1.0), TypeError, "dim must be an int"),
        ]
        rows += [Raises(f"{name}/scale {label}", lambda op=op, v=v: op(X(), scale=v), error, match)
                 for label, v, error, match in bad_scales]
    return rows + [
        MatchesTorch("softmax rows=0", lambda: softmax(r(0, 3)), lambda: torch.softmax(r(0, 3), -1)),
        MatchesTorch("softmax n=0", lambda: softmax(r(3, 0)), lambda: torch.softmax(r(3, 0), -1)),
        MatchesTorch("log_softmax n=0", lambda: log_softmax(r(3, 0)), lambda: torch.log_softmax(r(3, 0), -1)),
        NonFinite("softmax", softmax, lambda x: torch.softmax(x.double(), -1)),
        NonFinite("log_softmax", log_softmax, lambda x: torch.log_softmax(x.double(), -1)),
    ]
