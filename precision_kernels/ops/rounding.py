"""pk.round_to: owned round-to-nearest-even downcast (invariant I4)."""

from __future__ import annotations

import torch
import triton

from .. import backend
from ..kernels.rounding import round_to_kernel
from ._common import check_device, kind, launch

# Elements per program: one tile op is one numpy call under the interpreter, so its
# programs are made large; on GPU a 1024-wide block keeps every SM busy.
_BLOCK = 1 << 16 if backend.INTERPRETED else 1024


class _RoundTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # The kernel walks a flat buffer, so strided input is copied once here.
        flat = x.contiguous()
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        n = flat.numel()
        if n:
            launch(round_to_kernel, (triton.cdiv(n, _BLOCK),), flat, out.view(torch.int16), n,
                   OUT_KIND=kind(dtype), BLOCK=_BLOCK)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Straight-through: rounding is treated as the identity, gradient kept in fp32.
        return grad.to(torch.float32), None


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round an fp32 tensor to ``dtype`` (fp16, bf16 or fp32) with round-to-nearest-even.

    Bitwise equal to ``x.to(dtype)`` for every non-NaN input; NaN becomes a quiet
    NaN with its sign kept. The backward passes the gradient straight through, as fp32.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"round_to expects a float32 input x, got {x.dtype}")
    check_device("x", x)
    if dtype == torch.float32:
        return x
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    return _RoundTo.apply(x, dtype)
