"""pk.round_to: owned round-to-nearest-even downcast (invariant I4); custom op ``pk::round_to(x, dtype)``."""

from __future__ import annotations

import torch
import triton

from .. import backend
from ..kernels.rounding import round_to_kernel
from ._common import check_device, kind, launch
from ._custom import op_name, require
from .registry import OpFamily, register_family

# Elements per program: one tile op is one numpy call under the interpreter, so its
# programs are made large; on GPU a 1024-wide block keeps every SM busy.
_BLOCK = 1 << 16 if backend.INTERPRETED else 1024


# ---- custom op (pattern: ops/_custom.py) ----------------------------------------------------


@torch.library.custom_op(op_name("round_to"), mutates_args=())
def _round_to_op(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 x -> dtype (fp16 or bf16), round to nearest even; a new contiguous tensor of x's shape."""
    require(x.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16), "round_to",
            f"rounds float32 to float16 or bfloat16, got {x.dtype} -> {dtype}")
    # The kernel walks a flat buffer, so strided input is copied once here.
    flat = x.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = flat.numel()
    if n:
        launch(round_to_kernel, (triton.cdiv(n, _BLOCK),), flat, out.view(torch.int16), n,
               OUT_KIND=kind(dtype), BLOCK=_BLOCK)
    return out


@_round_to_op.register_fake
def _(x, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def _backward(ctx, grad):
    # Straight-through: rounding is treated as the identity, gradient kept in fp32 (no kernel).
    return grad.to(torch.float32), None


_round_to_op.register_autograd(_backward)


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
    return torch.ops.pk.round_to(x, dtype)


# ---- registration (ops/registry.py) ----------------------------------------------------------

register_family(OpFamily(
    name="rounding",
    public=("round_to",),
    custom_ops=("pk::round_to",),
))
