"""pk.matmul and pk.linear: batch-invariant, deterministic, with autograd.

Forward picks its tile config from the profile table (backend, dtype, 2-D or
batched, and the call's shape as the table allows: M buckets on CUDA, tiles fitted to the
call under the interpreter) and, in the engine profile, the number of rounded K partials
from the call's row count. Backward always runs the matched profile:
grad_a = grad @ b^T and grad_b = a^T @ grad go through the same kernels with
transposed strides (no copies), and grad_b reduces over the rows in index order
inside the kernel's K loop, so gradients are deterministic and come back in the
input dtype.

Custom ops (ops/_custom.py): ``pk::matmul(a, b)`` (2-D rows or batched 3-D),
``pk::linear(x, weight, bias)`` (2-D rows) and their ``pk::matmul_backward`` /
``pk::linear_backward``; the public functions merge leading dims into rows.
"""

from __future__ import annotations

import math

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.matmul import bmm_kernel, matmul_kernel
from ..kernels.matmul_compiled import bmm_compiled_kernel, matmul_compiled_kernel
from ..reference import f64
from ._common import check_float, check_same_dtype, kernel_form, kernel_view, kind, launch
from ._custom import op_name, require
from .registry import OpFamily, register_family

# Engine split-K chunks are rounded up to a multiple of this many K elements.
ENGINE_K_ALIGN = 16


def _k_chunk(k: int, splits: int) -> int:
    """K elements per engine partial: ceil(K / splits), rounded up to ENGINE_K_ALIGN (K itself if no split)."""
    if splits == 1:
        return max(k, 1)
    return triton.cdiv(triton.cdiv(max(k, 1), splits), ENGINE_K_ALIGN) * ENGINE_K_ALIGN


def _mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, splits: int = 1) -> torch.Tensor:
    """a (M, K) @ b (K, N) (+ bias (N,)) with any strides; returns a contiguous (M, N) tensor of a's dtype."""
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    cfg = profiles.matmul_config(a.dtype, m=m, n=n, k=k)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    av, bv, cv = kernel_view(a), kernel_view(b), kernel_view(out)
    # The kernel reads the bias with unit stride: a strided bias (N elements) is copied here.
    bias_v = cv if bias is None else kernel_view(bias.contiguous())
    launch(
        kernel_form(matmul_kernel, matmul_compiled_kernel), grid,
        av, bv, bias_v, cv, m, n, k, _k_chunk(k, splits),
        av.stride(0), av.stride(1), bv.stride(0), bv.stride(1), cv.stride(0), cv.stride(1),
        config=cfg, KIND=kind(a.dtype), HAS_BIAS=bias is not None, SPLITS=splits, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
    )
    return out


def _bmm(a: torch.Tensor, b: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """a (B, M, K) @ b (B, K, N) with any strides; returns a contiguous (B, M, N) tensor of a's dtype."""
    (nb, m, k), n = a.shape, b.shape[2]
    out = torch.empty((nb, m, n), dtype=a.dtype, device=a.device)
    if nb == 0 or m == 0 or n == 0:
        return out
    cfg = profiles.matmul_config(a.dtype, batched=True, m=m, n=n, k=k, items=nb)
    grid = (triton.cdiv(nb, cfg.block_batch) * triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    av, bv, cv = kernel_view(a), kernel_view(b), kernel_view(out)
    launch(
        kernel_form(bmm_kernel, bmm_compiled_kernel), grid,
        av, bv, cv, nb, m, n, k, _k_chunk(k, splits),
        *av.stride(), *bv.stride(), *cv.stride(),
        config=cfg, KIND=kind(a.dtype), SPLITS=splits, BLOCK_BATCH=cfg.block_batch,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
    )
    return out


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, 2-D or batched, in the active profile's tiles and no split (the backward's products)."""
    return _bmm(a, b) if a.dim() == 3 else _mm(a, b)


@torch.library.custom_op(op_name("matmul"), mutates_args=())
def _matmul_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (K, N), or batched a (B, M, K) @ b (B, K, N), in the active profile (engine split-K at small M)."""
    require(a.dim() in (2, 3) and b.dim() == a.dim(), "matmul", f"a and b must be both 2-D or both 3-D, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}")
    require(a.shape[-1] == b.shape[-2] and a.shape[:-2] == b.shape[:-2] and a.dtype == b.dtype, "matmul",
            f"a {tuple(a.shape)} {a.dtype} and b {tuple(b.shape)} {b.dtype} do not multiply")
    if a.dim() == 3:
        return _bmm(a, b, splits=profiles.engine_splits_for(a.shape[1]))
    return _mm(a, b, None, splits=profiles.engine_splits_for(a.shape[0]))


@_matmul_op.register_fake
def _(a, b):
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


@torch.library.custom_op(op_name("matmul_backward"), mutates_args=())
def _matmul_backward_op(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, table: str,
                        need_a: bool, need_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad @ b^T, a^T @ grad) in the matched profile on tile table ``table``; an unneeded one is empty.

    The products read the transposes through their strides (no copies); a^T @ grad reduces over
    the rows in index order inside the kernel's K loop.
    """
    with profiles.use_profile("matched"), profiles.config_backend(table):
        grad_a = _product(grad, b.mT) if need_a else a.new_empty(0)
        grad_b = _product(a.mT, grad) if need_b else b.new_empty(0)
    return grad_a, grad_b


@_matmul_backward_op.register_fake
def _(grad, a, b, table, need_a, need_b):
    return a.new_empty(a.shape if need_a else 0), b.new_empty(b.shape if need_b else 0)


def _matmul_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.table = profiles.table_backend()


def _matmul_backward(ctx, grad):
    a, b = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad
    grad_a, grad_b = torch.ops.pk.matmul_backward(grad, a, b, ctx.table, need_a, need_b)
    return (grad_a if need_a else None), (grad_b if need_b else None)


_matmul_op.register_autograd(_matmul_backward, setup_context=_matmul_setup_context)


@torch.library.custom_op(op_name("linear"), mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias (N,), weight read transposed through its strides; active profile."""
    require(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1] and x.dtype == weight.dtype,
            "linear", f"x {tuple(x.shape)} {x.dtype} and weight {tuple(weight.shape)} {weight.dtype} do not multiply")
    require(bias is None or (tuple(bias.shape) == (weight.shape[0],) and bias.dtype == x.dtype), "linear",
            f"bias must be ({weight.shape[0]},) {x.dtype}")
    return _mm(x, weight.mT, bias, splits=profiles.engine_splits_for(x.shape[0]))


@_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op(op_name("linear_backward"), mutates_args=())
def _linear_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, table: str, need_x: bool,
                        need_weight: bool, need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad @ weight, grad^T @ x, column sums of grad) in the matched profile on ``table``; unneeded ones empty.

    The weight gradient comes back as (N, K) directly; the row reductions (weight and bias
    gradients) are the kernel's K loop: fp32, in row order.
    """
    with profiles.use_profile("matched"), profiles.config_backend(table):
        grad_x = _mm(grad, weight) if need_x else x.new_empty(0)                  # (M, N) @ (N, K)
        grad_w = _mm(grad.mT, x) if need_weight else weight.new_empty(0)          # (N, M) @ (M, K)
        grad_bias = grad.new_empty(0)
        if need_bias:
            # Column sums of grad through the same kernel: ones (1, M) @ grad (stride-0 ones, no copy).
            ones = torch.ones((), dtype=grad.dtype, device=grad.device).expand(1, grad.shape[0])
            grad_bias = _mm(ones, grad).reshape(-1)
    return grad_x, grad_w, grad_bias


@_linear_backward_op.register_fake
def _(grad, x, weight, table, need_x, need_weight, need_bias):
    return (x.new_empty(x.shape if need_x else 0), weight.new_empty(weight.shape if need_weight else 0),
            grad.new_empty(grad.shape[1] if need_bias else 0))


def _linear_setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.table = profiles.table_backend()


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_bias = ctx.needs_input_grad
    grad_x, grad_w, grad_bias = torch.ops.pk.linear_backward(grad, x, weight, ctx.table, need_x, need_w, need_bias)
    return (grad_x if need_x else None), (grad_w if need_w else None), (grad_bias if need_bias else None)


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def _check_pair(a_name: str, a, b_name: str, b) -> torch.dtype:
    check_float(a_name, a)
    check_float(b_name, b)
    return check_same_dtype(**{a_name: a, b_name: b})


def check_linear_operands(x, weight) -> None:
    """x (..., K) and weight (N, K) of one float dtype (``pk.linear``'s and ``pk.fp8_linear``'s operands)."""
    _check_pair("x", x, "weight", weight)
    if x.dim() < 1:
        raise ValueError(f"x must have shape (..., K) with at least 1 dim, got {tuple(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (N, K), got {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"inner dimensions differ: x is {tuple(x.shape)} (K={x.shape[-1]}), "
                         f"weight is {tuple(weight.shape)} (K={weight.shape[1]})")


def merge_rows(t: torch.Tensor) -> torch.Tensor:
    """Merge the leading dims of t (..., K) into rows: a view whenever the strides allow, else a copy."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = a @ b with fp32 accumulation and one rounding to the common dtype.

    Shapes: (M, K) @ (K, N), (..., M, K) @ (K, N) (leading dims are rows of one 2-D
    product), or batched (B, M, K) @ (B, K, N). Batch-invariant and deterministic in
    the matched profile; see ``pk.use_profile("engine")`` for split-K at small M.
    """
    _check_pair("a", a, "b", b)
    if a.dim() < 2:
        raise ValueError(f"a must have shape (..., M, K) with at least 2 dims, got {tuple(a.shape)}")
    if b.dim() not in (2, 3):
        raise ValueError(f"b must have shape (K, N) or (B, K, N), got {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)} (K={a.shape[-1]}), "
                         f"b is {tuple(b.shape)} (K={b.shape[-2]})")
    if b.dim() == 3:
        if a.dim() != 3:
            raise ValueError(f"a batched b (B, K, N) needs a of shape (B, M, K), got a {tuple(a.shape)}")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"batch sizes differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
        return torch.ops.pk.matmul(a, b)
    out = torch.ops.pk.matmul(merge_rows(a), b)
    return out.reshape(*a.shape[:-1], b.shape[1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ weight^T + bias with ``F.linear`` semantics: x (..., K), weight (N, K), bias (N,).

    The bias is added in fp32 before the single final rounding. The weight is read
    transposed through its strides (no copy).
    """
    check_linear_operands(x, weight)
    if bias is not None:
        check_float("bias", bias)
        check_same_dtype(x=x, bias=bias)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    out = torch.ops.pk.linear(merge_rows(x), weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    """2-D and batched matmul per dtype, SPLITS = 1 (matched) and the engine's splits, with/without bias;
    the 2-D kernel in the tiles of every M bucket (the compile check audits that they share one
    instruction family). The first config of each kernel is the matched one of the first bucket. Each is
    compiled generic and as the JIT specialises a contiguous ``linear`` and ``matmul`` call."""
    engine_splits = profiles.engine_config().splits
    for name, kind_, ptr in compile_registry.FORMATS:
        bucket_cfgs = list(dict.fromkeys(b.config for b in profiles.matmul_buckets_for("cuda", name)))
        cfg3 = profiles.matmul_config_for("cuda", name, batched=True)
        sig2 = {"a_ptr": ptr, "b_ptr": ptr, "bias_ptr": ptr, "c_ptr": ptr,
                "M": "i32", "N": "i32", "K": "i32", "k_chunk": "i32",
                "stride_am": "i64", "stride_ak": "i64", "stride_bk": "i64", "stride_bn": "i64",
                "stride_cm": "i64", "stride_cn": "i64"}
        compile_registry.register(
            table, f"matmul_{name}", matmul_compiled_kernel, signature=sig2,
            configs=[{"KIND": kind_, "HAS_BIAS": bias, "SPLITS": splits,
                      "BLOCK_M": cfg2.block_m, "BLOCK_N": cfg2.block_n, "BLOCK_K": cfg2.block_k,
                      "GROUP_M": cfg2.group_m, "num_warps": cfg2.num_warps, "num_stages": cfg2.num_stages}
                     for cfg2 in bucket_cfgs for splits in (1, engine_splits) for bias in (False, True)],
            expects_mma=kind_ != 0, calls=compile_registry.matmul_calls(sig2),
        )
        sig3 = {"a_ptr": ptr, "b_ptr": ptr, "c_ptr": ptr,
                "BATCH": "i32", "M": "i32", "N": "i32", "K": "i32", "k_chunk": "i32",
                "stride_ab": "i64", "stride_am": "i64", "stride_ak": "i64",
                "stride_bb": "i64", "stride_bk": "i64", "stride_bn": "i64",
                "stride_cb": "i64", "stride_cm": "i64", "stride_cn": "i64"}
        compile_registry.register(
            table, f"bmm_{name}", bmm_compiled_kernel, signature=sig3,
            configs=[{"KIND": kind_, "SPLITS": splits, "BLOCK_BATCH": cfg3.block_batch,
                      "BLOCK_M": cfg3.block_m, "BLOCK_N": cfg3.block_n, "BLOCK_K": cfg3.block_k,
                      "num_warps": cfg3.num_warps, "num_stages": cfg3.num_stages}
                     for splits in (1, engine_splits)],
            expects_mma=kind_ != 0, calls=compile_registry.matmul_calls(sig3),
        )


def reference_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(f64(a), f64(b))


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.matmul(f64(x), f64(weight).transpose(-1, -2))
    return out if bias is None else out + f64(bias)


register_family(OpFamily(
    name="matmul",
    public=("matmul", "linear"),
    custom_ops=("pk::matmul", "pk::matmul_backward", "pk::linear", "pk::linear_backward"),
    # mean and sum are row sums against a ones column: the matmul kernel's K loop; so is the
    # embedding backward's sum over a token's positions (an occurrence matrix times the gradient).
    aten=(
        "aten.mm.default",
        "aten.bmm.default",
        "aten.mv.default",
        "aten.dot.default",
        "aten.addmm.default",
        "aten.mm.out",
        "aten.bmm.out",
        "aten.mv.out",
        "aten.dot.out",
        "aten.addmm.out",
        "aten.addmm_.default",
        "aten.mean.dim",
        "aten.mean.default",
        "aten.sum.dim_IntList",
        "aten.sum.default",
        "aten.embedding_dense_backward.default",
    ),
    kernels=(matmul_kernel, matmul_compiled_kernel, bmm_kernel, bmm_compiled_kernel),
    forms=((matmul_kernel, matmul_compiled_kernel), (bmm_kernel, bmm_compiled_kernel)),
    compile_kernels=_compile_kernels,
    reference={"matmul": reference_matmul, "linear": reference_linear},
))
