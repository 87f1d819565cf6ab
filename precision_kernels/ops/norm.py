"""pk.rms_norm: RMSNorm over the last dimension, fp32 statistics, output in x's dtype.

Custom ops (ops/_custom.py): ``pk::rms_norm(x2, weight, eps) -> (y, rstd)`` on rows and
``pk::rms_norm_backward``.
"""

from __future__ import annotations

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.norm import col_sum_kernel, rms_norm_bwd_kernel, rms_norm_fwd_kernel
from ..reference import f64
from ._common import check_device, check_eps, check_float, kernel_view, kind, launch
from ._custom import fp32_value, op_name, require
from .registry import OpFamily, register_family
from .softmax import as_rows


def _launch_fwd(x2: torch.Tensor, weight: torch.Tensor, eps: float):
    rows, n = x2.shape
    y = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x2.device)
    if rows and n:
        cfg = profiles.row_config(x2.dtype, rows=rows)  # rows are independent: block_rows may fit them
        launch(rms_norm_fwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
               kernel_view(x2), kernel_view(weight), kernel_view(y), rstd, rows, n, x2.stride(0), eps,
               config=cfg, KIND=kind(x2.dtype), W_KIND=kind(weight.dtype),
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return y, rstd


def col_sum(partials: torch.Tensor, out: torch.Tensor, cfg) -> None:
    """out = sum of the partials' rows (one per program of a norm backward), in index order, rounded to out's dtype."""
    n_parts, n = partials.shape
    launch(col_sum_kernel, (triton.cdiv(n, cfg.block_cols),),
           partials, kernel_view(out), n_parts, n,
           config=cfg, OUT_KIND=kind(out.dtype), BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)


def _launch_bwd(x2, weight, dy2, rstd):
    rows, n = x2.shape
    dx = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    dw = torch.zeros(n, dtype=weight.dtype, device=x2.device)
    if rows and n:
        cfg = profiles.row_config(x2.dtype)
        n_parts = triton.cdiv(rows, cfg.block_rows)
        # One partial weight gradient per program, summed in index order by col_sum_kernel.
        partials = torch.empty((n_parts, n), dtype=torch.float32, device=x2.device)
        launch(rms_norm_bwd_kernel, (n_parts,),
               kernel_view(x2), kernel_view(weight), kernel_view(dy2), rstd, kernel_view(dx), partials,
               rows, n, x2.stride(0), dy2.stride(0),
               config=cfg, KIND=kind(x2.dtype), W_KIND=kind(weight.dtype), DY_KIND=kind(dy2.dtype),
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
        col_sum(partials, dw, cfg)
    return dx, dw


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


@torch.library.custom_op(op_name("rms_norm"), mutates_args=())
def _rms_norm_op(x2: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of the rows of x2 (rows, n) -> (y, rstd); rstd (fp32, one per row) feeds the backward."""
    require(x2.dim() == 2 and tuple(weight.shape) == (x2.shape[1],), "rms_norm",
            f"x2 must be (rows, n) and weight (n,), got {tuple(x2.shape)} and {tuple(weight.shape)}")
    eps = check_eps(eps)
    return _launch_fwd(as_rows(x2), weight.contiguous(), fp32_value(eps))


@_rms_norm_op.register_fake
def _(x2, weight, eps):
    return x2.new_empty(x2.shape), x2.new_empty(x2.shape[0], dtype=torch.float32)


@torch.library.custom_op(op_name("rms_norm_backward"), mutates_args=())
def _rms_norm_backward_op(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor,
                          rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in weight's dtype) from x, weight and the forward's rstd."""
    return _launch_bwd(as_rows(x2), weight.contiguous(), as_rows(dy2), rstd)


@_rms_norm_backward_op.register_fake
def _(dy2, x2, weight, rstd):
    return x2.new_empty(x2.shape), weight.new_empty(weight.shape[0])


def _setup_context(ctx, inputs, output):
    x2, weight, _ = inputs
    ctx.save_for_backward(x2, weight, output[1])


def _backward(ctx, dy, _d_rstd):
    x2, weight, rstd = ctx.saved_tensors
    if dy.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dy = dy.to(torch.float32)
    dx, dw = torch.ops.pk.rms_norm_backward(as_rows(dy), x2, weight, rstd)
    return dx, dw, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x * rsqrt(mean(x^2) + eps) * weight``.

    x is fp32, fp16 or bf16 with last dimension n; weight is a float tensor of shape
    (n,) (any of the three dtypes). The mean of squares is fp32 over fixed blocks in
    index order, rsqrt runs in the kernel, and the output is x's dtype, rounded once.
    Differentiable in x and weight; the weight gradient (in weight's dtype) is summed
    over rows in a fixed order (per-program partials, then an index-order sum).
    """
    check_float("x", x)
    check_float("weight", weight)
    check_device("weight", weight)
    if x.dim() == 0:
        raise ValueError("rms_norm: x must have at least one dimension")
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({n},) "
                         f"to match the last dimension of x {tuple(x.shape)}")
    e = check_eps(eps)   # comparisons only: traceable (see check_real)
    w = weight if weight.is_contiguous() else weight.contiguous()
    y2 = torch.ops.pk.rms_norm(as_rows(x), w, e)[0]
    return y2.reshape(x.shape)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    blocks = compile_registry.row_blocks()
    for suffix, ptr, kinds in compile_registry.ROW_FORMAT_GROUPS:
        compile_registry.register(
            table, f"rms_norm_fwd{suffix}", rms_norm_fwd_kernel,
            signature={"x_ptr": ptr, "w_ptr": ptr, "y_ptr": ptr, "rstd_ptr": "*fp32", "n_rows": "i32",
                       "n_cols": "i32", "stride_x": "i32", "eps": "fp32"},
            configs=[{"KIND": k, "W_KIND": k, **blocks} for k in kinds])
        compile_registry.register(
            table, f"rms_norm_bwd{suffix}", rms_norm_bwd_kernel,
            signature={"x_ptr": ptr, "w_ptr": ptr, "dy_ptr": ptr, "rstd_ptr": "*fp32", "dx_ptr": ptr,
                       "dw_part_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32",
                       "stride_dy": "i32"},
            configs=[{"KIND": k, "W_KIND": k, "DY_KIND": k, **blocks} for k in kinds])
        compile_registry.register(
            table, f"col_sum{suffix}", col_sum_kernel,
            signature={"part_ptr": "*fp32", "out_ptr": ptr, "n_parts": "i32", "n_cols": "i32"},
            configs=[{"OUT_KIND": k, **blocks} for k in kinds])


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x64 = f64(x)
    return x64 * torch.rsqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps) * f64(weight)


register_family(OpFamily(
    name="norm",
    public=("rms_norm",),
    custom_ops=("pk::rms_norm", "pk::rms_norm_backward"),
    # Only some torch versions have aten._fused_rms_norm; matched mode serves it where it exists.
    aten=("aten._fused_rms_norm.default",) if hasattr(torch.ops.aten, "_fused_rms_norm") else (),
    kernels=(rms_norm_fwd_kernel, rms_norm_bwd_kernel, col_sum_kernel),
    compile_kernels=_compile_kernels,
    reference={"rms_norm": reference_rms_norm},
))
