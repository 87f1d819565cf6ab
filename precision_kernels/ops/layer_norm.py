"""pk.layer_norm: LayerNorm over the last dimension, fp32 statistics, output in x's dtype.

Custom ops (ops/_custom.py): ``pk::layer_norm(x2, weight, bias, eps) -> (y, mean, rstd)`` on
rows and ``pk::layer_norm_backward``.
"""

from __future__ import annotations

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.layer_norm import layer_norm_bwd_kernel, layer_norm_fwd_kernel
from ..reference import f64, fp32_scalar
from ._common import check_eps, check_float, kernel_view, kind, launch
from ._custom import fp32_value, op_name, require
from .norm import col_sum
from .registry import OpFamily, register_family
from .softmax import as_rows


def _launch_fwd(x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
    rows, n = x2.shape
    y = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x2.device)
    if rows and n:
        cfg = profiles.row_config(x2.dtype, rows=rows)  # rows are independent: block_rows may fit them
        xv = kernel_view(x2)
        # An absent weight or bias is never read (HAS_W / HAS_B); x stands in for its pointer.
        launch(layer_norm_fwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
               xv, xv if weight is None else kernel_view(weight), xv if bias is None else kernel_view(bias),
               kernel_view(y), mean, rstd, rows, n, x2.stride(0), eps,
               config=cfg, KIND=kind(x2.dtype), W_KIND=kind(x2.dtype if weight is None else weight.dtype),
               B_KIND=kind(x2.dtype if bias is None else bias.dtype),
               HAS_W=weight is not None, HAS_B=bias is not None,
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return y, mean, rstd


def _launch_bwd(x2, weight, dy2, mean, rstd, want_dw: bool, want_db: bool, bias_dtype):
    rows, n = x2.shape
    dx = torch.empty((rows, n), dtype=x2.dtype, device=x2.device)
    dw = torch.zeros(n, dtype=weight.dtype, device=x2.device) if want_dw else None
    db = torch.zeros(n, dtype=bias_dtype, device=x2.device) if want_db else None
    if rows and n:
        cfg = profiles.row_config(x2.dtype)
        n_parts = triton.cdiv(rows, cfg.block_rows)
        # One partial weight/bias gradient per program, summed in index order by col_sum_kernel.
        dw_part = torch.empty((n_parts, n) if want_dw else (1,), dtype=torch.float32, device=x2.device)
        db_part = torch.empty((n_parts, n) if want_db else (1,), dtype=torch.float32, device=x2.device)
        xv = kernel_view(x2)
        launch(layer_norm_bwd_kernel, (n_parts,),
               xv, xv if weight is None else kernel_view(weight), kernel_view(dy2), mean, rstd, kernel_view(dx),
               dw_part, db_part, rows, n, x2.stride(0), dy2.stride(0),
               config=cfg, KIND=kind(x2.dtype), W_KIND=kind(x2.dtype if weight is None else weight.dtype),
               DY_KIND=kind(dy2.dtype), HAS_W=weight is not None, WANT_DW=want_dw, WANT_DB=want_db,
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
        if want_dw:
            col_sum(dw_part, dw, cfg)
        if want_db:
            col_sum(db_part, db, cfg)
    return dx, dw, db


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


@torch.library.custom_op(op_name("layer_norm"), mutates_args=())
def _layer_norm_op(x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm of the rows of x2 (rows, n) -> (y, mean, rstd); mean and rstd (fp32, per row) feed the backward."""
    require(x2.dim() == 2 and all(t is None or tuple(t.shape) == (x2.shape[1],) for t in (weight, bias)),
            "layer_norm", f"x2 must be (rows, n) and weight, bias (n,) or None, got {tuple(x2.shape)}")
    weight, bias = (None if t is None else t.contiguous() for t in (weight, bias))
    return _launch_fwd(as_rows(x2), weight, bias, fp32_value(check_eps(eps)))


@_layer_norm_op.register_fake
def _(x2, weight, bias, eps):
    rows = x2.shape[0]
    return x2.new_empty(x2.shape), x2.new_empty(rows, dtype=torch.float32), x2.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op(op_name("layer_norm_backward"), mutates_args=())
def _layer_norm_backward_op(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                            rstd: torch.Tensor, bias_dtype: torch.dtype | None, need_weight: bool,
                            need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); dweight/dbias are empty when not needed (or absent), else in weight's / bias_dtype."""
    want_dw = weight is not None and need_weight
    want_db = bias_dtype is not None and need_bias
    weight = None if weight is None else weight.contiguous()
    dx, dw, db = _launch_bwd(as_rows(x2), weight, as_rows(dy2), mean, rstd, want_dw, want_db, bias_dtype)
    return (dx, dw if want_dw else x2.new_empty(0), db if want_db else x2.new_empty(0))


@_layer_norm_backward_op.register_fake
def _(dy2, x2, weight, mean, rstd, bias_dtype, need_weight, need_bias):
    n = x2.shape[1]
    dw = weight.new_empty(n) if weight is not None and need_weight else x2.new_empty(0)
    db = x2.new_empty(n, dtype=bias_dtype) if bias_dtype is not None and need_bias else x2.new_empty(0)
    return x2.new_empty(x2.shape), dw, db


def _setup_context(ctx, inputs, output):
    x2, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x2, weight, mean, rstd)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy, _d_mean, _d_rstd):
    x2, weight, mean, rstd = ctx.saved_tensors
    if dy.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dy = dy.to(torch.float32)
    want_dw = weight is not None and ctx.needs_input_grad[1]
    want_db = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
    dx, dw, db = torch.ops.pk.layer_norm_backward(as_rows(dy), x2, weight, mean, rstd, ctx.bias_dtype,
                                                  want_dw, want_db)
    return dx, (dw if want_dw else None), (db if want_db else None), None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


def _check_affine(name: str, t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    check_float(name, t)
    n = x.shape[-1]
    if t.shape != (n,):
        raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected ({n},) "
                         f"to match the last dimension of x {tuple(x.shape)}")
    return t if t.is_contiguous() else t.contiguous()


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    ``F.layer_norm(x, (n,), weight, bias, eps)`` semantics (biased variance). x is fp32, fp16
    or bf16 with last dimension n; weight and bias are float tensors of shape (n,) (any of
    the three dtypes) or None. Mean and variance are fp32, each a sum over fixed blocks in
    index order (two passes: the variance sums squared deviations from the mean); eps is
    used as its fp32 value; rsqrt runs in the kernel; the output is x's dtype, rounded once.
    Differentiable in x, weight and bias; the weight and bias gradients (in their own dtypes)
    are summed over rows in a fixed order (per-program partials, then an index-order sum).
    """
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension")
    w = _check_affine("weight", weight, x)
    b = _check_affine("bias", bias, x)
    e = check_eps(eps)
    y2 = torch.ops.pk.layer_norm(as_rows(x), w, b, e)[0]
    return y2.reshape(x.shape)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    blocks = compile_registry.row_blocks()
    for suffix, ptr, kinds in compile_registry.ROW_FORMAT_GROUPS:
        compile_registry.register(
            table, f"layer_norm_fwd{suffix}", layer_norm_fwd_kernel,
            signature={"x_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr, "y_ptr": ptr, "mean_ptr": "*fp32",
                       "rstd_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "eps": "fp32"},
            configs=[{"KIND": k, "W_KIND": k, "B_KIND": k, "HAS_W": has, "HAS_B": has, **blocks}
                     for k in kinds for has in (True, False)])
        compile_registry.register(
            table, f"layer_norm_bwd{suffix}", layer_norm_bwd_kernel,
            signature={"x_ptr": ptr, "w_ptr": ptr, "dy_ptr": ptr, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                       "dx_ptr": ptr, "dw_part_ptr": "*fp32", "db_part_ptr": "*fp32", "n_rows": "i32",
                       "n_cols": "i32", "stride_x": "i32", "stride_dy": "i32"},
            configs=[{"KIND": k, "W_KIND": k, "DY_KIND": k, "HAS_W": has, "WANT_DW": has, "WANT_DB": has,
                      **blocks} for k in kinds for has in (True, False)])


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5) -> torch.Tensor:
    """FP64 LayerNorm (biased variance); eps is first rounded to fp32, as the kernel uses it."""
    x64 = f64(x)
    mean = x64.mean(dim=-1, keepdim=True)
    var = (x64 - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x64 - mean) * torch.rsqrt(var + fp32_scalar(eps))
    if weight is not None:
        y = y * f64(weight)
    return y if bias is None else y + f64(bias)


register_family(OpFamily(
    name="layer_norm",
    public=("layer_norm",),
    custom_ops=("pk::layer_norm", "pk::layer_norm_backward"),
    aten=(
        "aten.native_layer_norm.default",
        "aten.native_layer_norm_backward.default",
    ),
    kernels=(layer_norm_fwd_kernel, layer_norm_bwd_kernel),
    compile_kernels=_compile_kernels,
    reference={"layer_norm": reference_layer_norm},
))
