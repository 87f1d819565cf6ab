"""pk.softmax and pk.log_softmax: fixed-block online reductions, output in the input's dtype.

``scale`` multiplies each loaded value in fp32 before anything else (attention passes
``1/sqrt(head_dim)`` here). Rows are reduced in blocks of ``row_config(dtype).block_cols``
columns, in index order, with max and sum in fp32 (kernels/softmax.py on kernels/lse.py).

Semantics worth knowing:

* A row whose entries are all -inf (fully masked) gives zeros (softmax) or -inf
  (log_softmax); torch gives NaN. Its gradient is 0 (softmax) or ``scale * dy``
  (log_softmax, the formula with p = 0).
* -inf marks a masked entry only when ``scale > 0`` (``-inf * scale`` is +inf for a
  negative scale and NaN for 0). +inf or NaN in a row makes the whole row NaN, as in torch.
* ``dim`` other than the last is moved to the end; when that leaves the reduced
  dimension strided, the input is copied once into a contiguous buffer. The output is
  returned as a view in the caller's dimension order (not necessarily contiguous).
* The backward recomputes the probabilities in fp32 from x and the saved per-row
  max and sum (it does not use the rounded output), and rounds the gradient to x's dtype.

Custom ops (ops/_custom.py): ``pk::softmax(x2, scale)`` and ``pk::log_softmax(x2, scale)`` on
rows, each ``-> (y, row_max, row_sum)``, and ``pk::softmax_backward``.
"""

from __future__ import annotations

import math

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.softmax import softmax_bwd_kernel, softmax_fwd_kernel
from ..reference import f64, fp32_scalar
from ._common import check_float, check_fp32_real, kernel_view, kind, launch
from ._custom import fp32_value, op_name, require
from .registry import OpFamily, register_family


def _check_scale(scale) -> float:
    """A real scale whose float32 value is finite -> float(scale); the op rounds it to float32 (the value
    the kernel multiplies by). Comparisons only, so a symbolic float from torch.compile passes."""
    return check_fp32_real("scale", scale)


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (rows, n) with unit column stride, copying only when needed."""
    n = t.shape[-1]
    t2 = t.reshape(math.prod(t.shape[:-1]), n)
    if n > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2


def _launch_fwd(x2: torch.Tensor, scale: float, log: bool):
    rows, n = x2.shape
    y = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    row_max = torch.empty(rows, dtype=torch.float32, device=x2.device)
    row_sum = torch.empty(rows, dtype=torch.float32, device=x2.device)
    if rows and n:
        cfg = profiles.row_config(x2.dtype, rows=rows)  # independent rows
        grid = (triton.cdiv(rows, cfg.block_rows),)
        launch(softmax_fwd_kernel, grid,
               kernel_view(x2), kernel_view(y), row_max, row_sum, rows, n, x2.stride(0), scale,
               config=cfg, KIND=kind(x2.dtype), LOG=log, BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return y, row_max, row_sum


def _launch_bwd(x2, dy2, row_max, row_sum, scale: float, log: bool):
    rows, n = x2.shape
    dx = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    if rows and n:
        cfg = profiles.row_config(x2.dtype, rows=rows)  # independent rows
        grid = (triton.cdiv(rows, cfg.block_rows),)
        launch(softmax_bwd_kernel, grid,
               kernel_view(x2), kernel_view(dy2), kernel_view(dx), row_max, row_sum, rows, n,
               x2.stride(0), dy2.stride(0), scale,
               config=cfg, KIND=kind(x2.dtype), DY_KIND=kind(dy2.dtype), LOG=log,
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return dx


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


def _softmax_impl(x2: torch.Tensor, scale: float, log: bool):
    require(x2.dim() == 2, "log_softmax" if log else "softmax", f"x2 must be (rows, n), got {tuple(x2.shape)}")
    scale = _check_scale(scale)
    x2 = as_rows(x2)
    # The kernel multiplies by the fp32 value of scale (rounded here, so eager and compiled agree).
    return _launch_fwd(x2, fp32_value(scale), log)


def _softmax_fake(x2: torch.Tensor, scale: float):
    rows = x2.shape[0]
    return (torch.empty_like(x2, memory_format=torch.contiguous_format),
            x2.new_empty(rows, dtype=torch.float32), x2.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op(op_name("softmax"), mutates_args=())
def _softmax_op(x2: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(x2 * scale) over the rows of x2 (rows, n) -> (y, row_max, row_sum); the statistics feed the backward."""
    return _softmax_impl(x2, scale, log=False)


@torch.library.custom_op(op_name("log_softmax"), mutates_args=())
def _log_softmax_op(x2: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_softmax(x2 * scale) over the rows of x2 (rows, n) -> (y, row_max, row_sum)."""
    return _softmax_impl(x2, scale, log=True)


@torch.library.custom_op(op_name("softmax_backward"), mutates_args=())
def _softmax_backward_op(dy2: torch.Tensor, x2: torch.Tensor, row_max: torch.Tensor, row_sum: torch.Tensor,
                         scale: float, log: bool) -> torch.Tensor:
    """dx of softmax (log=False) or log_softmax (log=True), from x and the forward's row max and sum."""
    return _launch_bwd(as_rows(x2), as_rows(dy2), row_max, row_sum, fp32_value(scale), log)


_softmax_op.register_fake(_softmax_fake)
_log_softmax_op.register_fake(_softmax_fake)


@_softmax_backward_op.register_fake
def _(dy2, x2, row_max, row_sum, scale, log):
    return torch.empty_like(x2, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x2, scale = inputs
    _, row_max, row_sum = output
    ctx.save_for_backward(x2, row_max, row_sum)
    ctx.scale = scale


def _backward(log: bool):
    def backward(ctx, dy, _d_row_max, _d_row_sum):
        x2, row_max, row_sum = ctx.saved_tensors
        if dy.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dy = dy.to(torch.float32)
        dx = torch.ops.pk.softmax_backward(as_rows(dy), x2, row_max, row_sum, ctx.scale, log)
        return dx, None
    return backward


_softmax_op.register_autograd(_backward(log=False), setup_context=_setup_context)
_log_softmax_op.register_autograd(_backward(log=True), setup_context=_setup_context)


def _apply(x: torch.Tensor, dim: int, scale, log: bool) -> torch.Tensor:
    name = "log_softmax" if log else "softmax"
    check_float("x", x)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"{name}: dim must be an int, got {type(dim).__name__}")
    ndim = max(x.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(f"{name}: dim {dim} is out of range for a tensor with {x.dim()} dimensions")
    s = _check_scale(scale)
    op = torch.ops.pk.log_softmax if log else torch.ops.pk.softmax
    if x.dim() == 0:
        return op(x.reshape(1, 1), s)[0].reshape(())
    dim = dim % x.dim()
    moved = x.movedim(dim, -1) if dim != x.dim() - 1 else x
    y2 = op(as_rows(moved), s)[0]
    y = y2.reshape(moved.shape)
    return y.movedim(-1, dim) if dim != x.dim() - 1 else y


def softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    """softmax(x * scale) along ``dim``, in x's dtype (fp32, fp16 or bf16).

    ``scale`` is applied in fp32 to each input; max and sum are fp32, over fixed
    blocks in index order; the result is rounded to nearest even. A fully masked
    (all -inf) row gives zeros. Differentiable.
    """
    return _apply(x, dim, scale, log=False)


def log_softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    """log_softmax(x * scale) along ``dim``, in x's dtype; a fully masked row gives -inf. Differentiable."""
    return _apply(x, dim, scale, log=True)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    blocks = compile_registry.row_blocks()
    for suffix, ptr, kinds in compile_registry.ROW_FORMAT_GROUPS:
        compile_registry.register(
            table, f"softmax_fwd{suffix}", softmax_fwd_kernel,
            signature={"x_ptr": ptr, "y_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32",
                       "n_cols": "i32", "stride_x": "i32", "scale": "fp32"},
            configs=[{"KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])
        compile_registry.register(
            table, f"softmax_bwd{suffix}", softmax_bwd_kernel,
            signature={"x_ptr": ptr, "dy_ptr": ptr, "dx_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32",
                       "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "stride_dy": "i32", "scale": "fp32"},
            configs=[{"KIND": k, "DY_KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])


def reference_softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    # scale is applied to each input after rounding it to fp32, as the kernel does.
    return torch.softmax(f64(x) * fp32_scalar(scale), dim=dim)


def reference_log_softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(f64(x) * fp32_scalar(scale), dim=dim)


register_family(OpFamily(
    name="softmax",
    public=("softmax", "log_softmax"),
    custom_ops=("pk::softmax", "pk::log_softmax", "pk::softmax_backward"),
    aten=(
        "aten._softmax.default",
        "aten._log_softmax.default",
        "aten._softmax_backward_data.default",
        "aten._log_softmax_backward_data.default",
    ),
    kernels=(softmax_fwd_kernel, softmax_bwd_kernel),
    compile_kernels=_compile_kernels,
    reference={"softmax": reference_softmax, "log_softmax": reference_log_softmax},
))
