"""pk.round_to's test data (ops/rounding.py): samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.rounding import round_to

from ._cases import MatchesTorch, OpcheckCase, Raises, Sample
from ._tensors import BF16, DEV, F16, F32, meta, rand


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    # wide exponent range: subnormal results, ties, overflow to inf (fp32 input whatever dtype is)
    x = torch.randn(rows, n, generator=g) * torch.exp2(torch.randint(-30, 20, (rows, n), generator=g).float())
    return [Sample("round_to", lambda x: (round_to(x, torch.float16), round_to(x, torch.bfloat16)), (x.to(DEV),))]


def opcheck():
    ops = torch.ops.pk
    return [OpcheckCase("round_to/bf16", ops.round_to, (rand(3, 5, grad=True), BF16)),
            OpcheckCase("round_to/fp16", ops.round_to, (rand(2, 3, 5, grad=True), F16))]


def bad_inputs():
    X, ops = (lambda: rand(3, 4)), torch.ops.pk
    return [
        Raises("round_to/None", lambda: round_to(None, BF16), TypeError, "x must be a torch.Tensor"),
        Raises("round_to/dtype", lambda: round_to(X().half(), BF16), TypeError, "float32 input x"),
        Raises("round_to/target", lambda: round_to(X(), torch.int8), TypeError, "dtype must be"),
        Raises("round_to/device", lambda: round_to(meta(3, 4), BF16), ValueError, "x is on meta"),
        Raises("pk::round_to/dtype", lambda: ops.round_to(rand(3), F32), ValueError, "pk::round_to"),
        Raises("pk::round_to/input", lambda: ops.round_to(rand(3, dtype=F16), BF16), ValueError, "pk::round_to"),
        MatchesTorch("round_to", lambda: round_to(rand(0, 3), BF16), lambda: torch.empty(0, 3, dtype=BF16)),
    ]
