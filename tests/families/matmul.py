"""pk.matmul and pk.linear's test data (ops/matmul.py): samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.matmul import linear, matmul

from . import _tensors as S
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w, b = S.leaf((rows, k), dtype, g), S.leaf((n, k), dtype, g), S.leaf((n,), dtype, g)
    a3, b3, b2 = S.leaf((3, rows, k), dtype, g), S.leaf((3, k, n), dtype, g), S.leaf((k, n), dtype, g)
    return [Sample("linear", linear, (x, w, b)), Sample("batched_matmul", matmul, (a3, b3)),
            Sample("matmul", matmul, (x, b2))]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    a, b = r(3, 4), r(4, 5, seed=1)
    x, w = r(3, 4), r(5, 4, seed=1)
    return [
        OpcheckCase("matmul", ops.matmul, (r(3, 4, grad=True), r(4, 5, seed=1, grad=True))),
        OpcheckCase("matmul/batched/bf16", ops.matmul,
                    (r(2, 3, 4, dtype=S.BF16, grad=True), r(2, 4, 5, dtype=S.BF16, seed=1, grad=True))),
        OpcheckCase("linear", ops.linear, (r(3, 4, grad=True), r(5, 4, seed=1, grad=True), r(5, seed=2, grad=True))),
        OpcheckCase("linear/no-bias/fp16", ops.linear,
                    (r(3, 4, dtype=S.F16, grad=True), r(5, 4, dtype=S.F16, seed=1, grad=True), None)),
        OpcheckCase("matmul_backward", ops.matmul_backward, (r(3, 5, seed=3), a, b, "interpreter", True, True)),
        OpcheckCase("matmul_backward/only-b", ops.matmul_backward, (r(3, 5, seed=3), a, b, "interpreter", False, True)),
        OpcheckCase("linear_backward", ops.linear_backward, (r(3, 5, seed=3), x, w, "interpreter", True, True, True)),
    ]


def bad_inputs():
    r, meta, ops = S.rand, S.meta, torch.ops.pk
    X, W = (lambda: r(3, 4)), (lambda: r(5, 4, seed=1))
    return [
        Raises("matmul/None a", lambda: matmul(None, X()), TypeError, "a must be a torch.Tensor"),
        Raises("matmul/None b", lambda: matmul(X(), None), TypeError, "b must be a torch.Tensor"),
        Raises("matmul/int", lambda: matmul(X().long(), X().t().long()), TypeError, "a must be float32"),
        Raises("matmul/float64", lambda: matmul(X(), X().t().double()), TypeError, "b must be float32"),
        Raises("matmul/mixed", lambda: matmul(X(), X().t().half()), TypeError, "dtype mismatch: a=.*b="),
        Raises("matmul/device", lambda: matmul(X(), meta(4, 2)), ValueError, "b is on meta"),
        Raises("matmul/rank a", lambda: matmul(r(4), X().t()), ValueError, "a must have shape"),
        Raises("matmul/rank b", lambda: matmul(X(), r(4)), ValueError, "b must have shape"),
        Raises("matmul/inner", lambda: matmul(X(), X()), ValueError, "inner dimensions"),
        Raises("matmul/batch", lambda: matmul(r(2, 3, 4), r(3, 4, 2)), ValueError, "batch sizes differ"),
        Raises("matmul/batched b", lambda: matmul(X(), r(2, 4, 2)), ValueError, "batched b"),
        Raises("linear/None x", lambda: linear(None, W()), TypeError, "x must be a torch.Tensor"),
        Raises("linear/None weight", lambda: linear(X(), None), TypeError, "weight must be a torch.Tensor"),
        Raises("linear/weight rank", lambda: linear(X(), r(5, 4, 1)), ValueError, "weight must have shape"),
        Raises("linear/inner", lambda: linear(X(), r(5, 3)), ValueError, "inner dimensions"),
        Raises("linear/bias shape", lambda: linear(X(), W(), r(4)), ValueError, "bias must have shape"),
        Raises("linear/bias dtype", lambda: linear(X(), W(), r(5).half()), TypeError, "dtype mismatch"),
        Raises("linear/bias device", lambda: linear(X(), W(), meta(5)), ValueError, "bias is on meta"),
        Raises("linear/0-d x", lambda: linear(r(()), W()), ValueError, "x must have shape"),
        # torch.ops.pk callers skip the wrappers: each implementation checks what its kernels rely on
        Raises("pk::matmul/K", lambda: ops.matmul(r(3, 4), r(5, 2)), ValueError, "pk::matmul"),
        Raises("pk::matmul/ranks", lambda: ops.matmul(r(2, 3, 4), r(4, 2)), ValueError, "pk::matmul"),
        Raises("pk::matmul/dtypes", lambda: ops.matmul(r(3, 4), r(4, 2, dtype=S.F16)), ValueError, "pk::matmul"),
        Raises("pk::linear/K", lambda: ops.linear(r(3, 4), r(5, 3), None), ValueError, "pk::linear"),
        Raises("pk::linear/bias", lambda: ops.linear(r(3, 4), r(5, 4), r(4)), ValueError, "pk::linear"),
        MatchesTorch("matmul M=0", lambda: matmul(r(0, 4), r(4, 2)), lambda: r(0, 4) @ r(4, 2)),
        MatchesTorch("matmul N=0", lambda: matmul(r(3, 4), r(4, 0)), lambda: r(3, 4) @ r(4, 0)),
        MatchesTorch("matmul K=0", lambda: matmul(r(3, 0), r(0, 2)), lambda: r(3, 0) @ r(0, 2)),
        MatchesTorch("matmul B=0", lambda: matmul(r(0, 3, 4), r(0, 4, 2)), lambda: r(0, 3, 4) @ r(0, 4, 2)),
        MatchesTorch("linear K=0 bias", lambda: linear(r(3, 0), r(2, 0), r(2)),
                     lambda: torch.nn.functional.linear(r(3, 0), r(2, 0), r(2))),
        NonFinite("matmul", lambda x: matmul(x, r(6, 3)), lambda x: x.double() @ r(6, 3).double()),
        NonFinite("linear", lambda x: linear(x, r(3, 6)),
                  lambda x: torch.nn.functional.linear(x.double(), r(3, 6).double())),
    ]
