"""pk.round_to: owned round-to-nearest-even downcast (invariant I4); custom op ``pk::round_to(x, dtype, saturate)``.

fp8 semantics (ours, whatever the installed torch does): e4m3fn has no infinity and saturates
(every value that rounds past 448, and +-inf, become +-448); e5m2 overflows to +-inf unless
``saturate=True``, which clamps to +-57344 as scaled-FP8 recipes do; NaN becomes 0x7F with its
sign in both. That equals torch >= 2.12's casts bitwise on every non-NaN fp32 input (older torch
gives NaN on e4m3fn overflow).
"""

from __future__ import annotations

import torch
import triton

from .. import backend, compile_registry
from ..kernels.formats import FP8_E4M3FN, FP8_E5M2
from ..kernels.rounding import FP8_E5M2_SATURATING, round_to_kernel
from ._common import check_device, kind, launch
from ._custom import op_name, require
from .registry import OpFamily, register_family

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Output codes of kernels/rounding.py's round_fp32 for the fp8 formats: (dtype, saturate) -> OUT_KIND.
FP8_OUT_KIND = {(torch.float8_e4m3fn, True): FP8_E4M3FN.value, (torch.float8_e5m2, False): FP8_E5M2.value,
                (torch.float8_e5m2, True): FP8_E5M2_SATURATING.value}

# Elements per program: one tile op is one numpy call under the interpreter, so its
# programs are made large; on GPU a 1024-wide block keeps every SM busy.
_BLOCK = 1 << 16 if backend.INTERPRETED else 1024


# ---- custom op (pattern: ops/_custom.py) ----------------------------------------------------


@torch.library.custom_op(op_name("round_to"), mutates_args=())
def _round_to_op(x: torch.Tensor, dtype: torch.dtype, saturate: bool = False) -> torch.Tensor:
    """fp32 x -> dtype (fp16, bf16, float8_e4m3fn or float8_e5m2), round to nearest even; a new contiguous
    tensor of x's shape. ``saturate`` clamps e5m2 overflow to +-57344 (e4m3fn always saturates; fp16/bf16
    need False)."""
    require(x.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16, *FP8_DTYPES), "round_to",
            f"rounds float32 to float16, bfloat16, float8_e4m3fn or float8_e5m2, got {x.dtype} -> {dtype}")
    require(not saturate or dtype in FP8_DTYPES, "round_to", f"saturate=True is for the fp8 formats, not {dtype}")
    if dtype in FP8_DTYPES:
        out_kind = FP8_OUT_KIND[(dtype, saturate or dtype == torch.float8_e4m3fn)]
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        out_view = out.view(torch.uint8)
    else:
        out_kind = kind(dtype)
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        out_view = out.view(torch.int16)
    # The kernel walks a flat buffer, so strided input is copied once here.
    flat = x.contiguous()
    n = flat.numel()
    if n:
        launch(round_to_kernel, (triton.cdiv(n, _BLOCK),), flat, out_view, n, OUT_KIND=out_kind, BLOCK=_BLOCK)
    return out


@_round_to_op.register_fake
def _(x, dtype, saturate=False):
    return x.new_empty(x.shape, dtype=dtype)


def _backward(ctx, grad):
    # Straight-through: rounding is treated as the identity, gradient kept in fp32 (no kernel).
    return grad.to(torch.float32), None, None


_round_to_op.register_autograd(_backward)


def round_to(x: torch.Tensor, dtype: torch.dtype, *, saturate: bool | None = None) -> torch.Tensor:
    """Round an fp32 tensor to ``dtype`` (fp16, bf16, fp32, float8_e4m3fn or float8_e5m2), to nearest even.

    fp16/bf16: bitwise equal to ``x.to(dtype)`` for every non-NaN input; NaN becomes a quiet
    NaN with its sign kept (0x7E00 / 0x7FC0 | sign); overflow goes to +-inf.

    fp8: ``saturate=None`` (the default) keeps each format's own overflow rule: e4m3fn, which
    has no infinity, saturates (past 448 and +-inf give +-448); e5m2 overflows to +-inf (from
    61440, the tie above 57344, up). ``saturate=True`` makes e5m2 saturate too (+-57344, inf
    included), as scaled-FP8 recipes clamp before the cast; ``saturate=False`` with e4m3fn is
    refused (it has no inf to overflow to). NaN becomes 0x7F | sign in both. Both defaults equal
    torch >= 2.12's casts bitwise on every non-NaN input.

    The backward passes the gradient straight through, as fp32.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"round_to expects a float32 input x, got {x.dtype}")
    check_device("x", x)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, *FP8_DTYPES):
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn or "
                        f"torch.float8_e5m2, got {dtype}")
    if saturate is not None and not isinstance(saturate, bool):
        raise TypeError(f"saturate must be None or a bool, got {type(saturate).__name__}")
    if saturate and dtype not in FP8_DTYPES:
        raise ValueError(f"saturate=True is for the fp8 formats; {dtype} overflows to inf")
    if saturate is False and dtype == torch.float8_e4m3fn:
        raise ValueError("saturate=False is not available for float8_e4m3fn: it has no infinity, so it saturates")
    if dtype == torch.float32:
        return x
    return torch.ops.pk.round_to(x, dtype, bool(saturate))


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    compile_registry.register(table, "round_to", round_to_kernel,
                              signature={"x_ptr": "*fp32", "out_ptr": "*i16", "n_elements": "i64"},
                              configs=[{"OUT_KIND": 1, "BLOCK": 1024}, {"OUT_KIND": 2, "BLOCK": 1024}])
    # fp8 outputs are stored through a uint8 view: e4m3fn, e5m2 overflowing to inf, e5m2 saturating.
    compile_registry.register(table, "round_to_fp8", round_to_kernel,
                              signature={"x_ptr": "*fp32", "out_ptr": "*u8", "n_elements": "i64"},
                              configs=[{"OUT_KIND": k, "BLOCK": 1024} for k in dict.fromkeys(FP8_OUT_KIND.values())])


def reference_round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The exact value to be rounded: the FP64 copy of x (error_summary does the single rounding)."""
    return x.detach().to(torch.float64)


register_family(OpFamily(
    name="rounding",
    public=("round_to",),
    custom_ops=("pk::round_to",),
    kernels=(round_to_kernel,),
    compile_kernels=_compile_kernels,
    reference={"round_to": reference_round_to},
))
