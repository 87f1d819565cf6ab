"""pk.fp8_linear: a W8A8 FP8 linear layer whose gradient is straight-through.

``y = scaled_mm(quantize_fp8(x, per token), quantize_fp8(weight, per output row))``, rounded once
to x's dtype: what an FP8 rollout engine runs for each linear layer (the LM head aside). Row-wise
scales on both sides keep it batch-invariant (I2): a token's output depends only on that token
and the weight, so a decode step equals its row of the full pass.

A quantised product has no true gradient. The backward treats quantisation as the identity on
the values the forward used (straight-through): ``dX = dY @ dequant(W)`` and
``dW = dY^T @ dequant(X)``, with ``dequant(q) = round(q * scale)`` to the compute precision and
both products on ``pk.matmul``'s kernels in the matched profile. So a learner that runs the
same quantised forward as its FP8 sampler (the FP8 matched variant of ``rl``) trains its
full-precision master weights through it.

Custom ops (ops/_custom.py): ``pk::fp8_linear(x, weight, w_bits, w_dtype, w_scales, act_dtype) ->
(y, x_bits, x_scales)`` (``weight`` only carries the gradient; the forward reads its fp8 form,
``w_bits``) and ``pk::fp8_linear_backward``. fp8 tensors travel as uint8 bit patterns with their
dtypes, as in ops/fp8.py.
"""

from __future__ import annotations

import torch

from .. import profiles
from ._custom import op_name, require
from .fp8 import quantize_fp8
from .matmul import check_linear_operands, merge_rows
from .registry import OpFamily, register_family
from .rounding import FP8_DTYPES, round_to

# ---- custom ops (pattern: ops/_custom.py) ----------------------------------------------------


@torch.library.custom_op(op_name("fp8_linear"), mutates_args=())
def _fp8_linear_op(x: torch.Tensor, weight: torch.Tensor, w_bits: torch.Tensor, w_dtype: torch.dtype,
                   w_scales: torch.Tensor, act_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (y (M, N) in x.dtype, x's fp8 bits (M, K) uint8, x's row scales (M, 1) fp32).
    ``w_bits`` (N, K) uint8 holds the weight's fp8 values of dtype ``w_dtype``, ``w_scales`` (N, 1) their
    row scales; ``weight`` (N, K) is the tensor the weight gradient is for."""
    require(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1] and x.dtype == weight.dtype,
            "fp8_linear", f"x {tuple(x.shape)} {x.dtype} and weight {tuple(weight.shape)} {weight.dtype} do not "
            f"multiply")
    require(w_bits.dtype == torch.uint8 and tuple(w_bits.shape) == tuple(weight.shape), "fp8_linear",
            f"w_bits must be the ({weight.shape[0]}, {weight.shape[1]}) uint8 view of the fp8 weight")
    require(w_scales.dtype == torch.float32 and tuple(w_scales.shape) == (weight.shape[0], 1), "fp8_linear",
            f"w_scales must be ({weight.shape[0]}, 1) float32")
    require(w_dtype in FP8_DTYPES and act_dtype in FP8_DTYPES, "fp8_linear",
            f"w_dtype and act_dtype must be float8_e4m3fn or float8_e5m2, got {w_dtype} and {act_dtype}")
    # quantise: one scale per token (row), so no row depends on another
    x_values, x_scales = torch.ops.pk.quantize_fp8(x, act_dtype, True)
    x_bits = x_values.view(torch.uint8)
    # the product: exact widening, fp32 sums in the matmul's K order, scaled, one rounding to x's dtype
    y = torch.ops.pk.scaled_mm(x_bits, act_dtype, w_bits.mT, w_dtype, x_scales, w_scales.mT, None, x.dtype)
    return y, x_bits, x_scales


@_fp8_linear_op.register_fake
def _(x, weight, w_bits, w_dtype, w_scales, act_dtype):
    return (x.new_empty((x.shape[0], weight.shape[0])), x.new_empty(x.shape, dtype=torch.uint8),
            x.new_empty((x.shape[0], 1), dtype=torch.float32))


def dequantize(bits: torch.Tensor, fp8_dtype: torch.dtype, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``round(value * scale)`` in ``dtype``: the fp8 values (as uint8 ``bits``) widened exactly to fp32, times
    their fp32 row scales (one IEEE rounding), then one RNE rounding to fp16/bf16 (none for fp32)."""
    wide = bits.view(fp8_dtype).to(torch.float32) * scales
    return wide if dtype == torch.float32 else round_to(wide, dtype)


@torch.library.custom_op(op_name("fp8_linear_backward"), mutates_args=())
def _fp8_linear_backward_op(grad: torch.Tensor, x_bits: torch.Tensor, x_dtype: torch.dtype, x_scales: torch.Tensor,
                            w_bits: torch.Tensor, w_dtype: torch.dtype, w_scales: torch.Tensor, table: str,
                            need_x: bool, need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through (grad @ dequant(W), grad^T @ dequant(X)) in grad's dtype, matched profile on ``table``;
    an unneeded one comes back empty."""
    require(grad.dim() == 2 and grad.shape == (x_bits.shape[0], w_bits.shape[0]), "fp8_linear_backward",
            f"grad must be ({x_bits.shape[0]}, {w_bits.shape[0]}), got {tuple(grad.shape)}")
    with profiles.use_profile("matched"), profiles.config_backend(table):
        grad_x = grad.new_empty(0)
        if need_x:
            grad_x = torch.ops.pk.matmul(grad, dequantize(w_bits, w_dtype, w_scales, grad.dtype))  # (M,N)@(N,K)
        grad_w = grad.new_empty(0)
        if need_weight:
            grad_w = torch.ops.pk.matmul(grad.mT, dequantize(x_bits, x_dtype, x_scales, grad.dtype))  # (N,M)@(M,K)
    return grad_x, grad_w


@_fp8_linear_backward_op.register_fake
def _(grad, x_bits, x_dtype, x_scales, w_bits, w_dtype, w_scales, table, need_x, need_weight):
    return (grad.new_empty(x_bits.shape if need_x else 0), grad.new_empty(w_bits.shape if need_weight else 0))


def _fp8_linear_setup_context(ctx, inputs, output):
    _, _, w_bits, w_dtype, w_scales, act_dtype = inputs
    _, x_bits, x_scales = output
    ctx.save_for_backward(x_bits, x_scales, w_bits, w_scales)
    ctx.mark_non_differentiable(x_bits, x_scales)
    ctx.w_dtype, ctx.act_dtype, ctx.table = w_dtype, act_dtype, profiles.table_backend()


def _fp8_linear_backward(ctx, grad, _grad_bits, _grad_scales):
    x_bits, x_scales, w_bits, w_scales = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    grad_x, grad_w = torch.ops.pk.fp8_linear_backward(grad.contiguous(), x_bits, ctx.act_dtype, x_scales, w_bits,
                                                      ctx.w_dtype, w_scales, ctx.table, need_x, need_w)
    return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None, None


_fp8_linear_op.register_autograd(_fp8_linear_backward, setup_context=_fp8_linear_setup_context)


# ---- public function ----------------------------------------------------------------------------


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, *, weight_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
               dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """W8A8 ``x @ weight^T`` in fp8, rounded once to x's dtype, with a straight-through gradient (module doc).

    * ``x`` (..., K) and ``weight`` (N, K): float32/float16/bfloat16, one dtype (the compute precision).
    * ``weight_fp8``: the weight's fp8 form, ``pk.quantize_fp8(w, fp8_dtype, axis=-1)`` of any w, e.g. the
      fp32 master the compute-precision ``weight`` was rounded from (quantise once per step and pass it
      to every call). Default: ``weight`` quantised here to ``dtype``, per row.
    * ``dtype``: the activations' fp8 format (float8_e4m3fn, the default, or float8_e5m2). Activations
      are quantised per token (``quantize_fp8(x, dtype, axis=-1)``).
    * Forward: ``pk.scaled_mm`` with the row scales of both; gradients (to ``x`` and ``weight``):
      ``dX = dY @ dequant(W)``, ``dW = dY^T @ dequant(X)`` on ``pk.matmul`` in x's dtype.
    """
    check_linear_operands(x, weight)
    if dtype not in FP8_DTYPES:
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    if weight_fp8 is None:
        values, scales = quantize_fp8(weight.detach(), dtype, axis=-1)
    else:
        values, scales = _check_weight_fp8(weight_fp8, weight)
    out = torch.ops.pk.fp8_linear(merge_rows(x), weight, values.view(torch.uint8), values.dtype, scales, dtype)[0]
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _check_weight_fp8(weight_fp8, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(weight_fp8, (tuple, list)) or len(weight_fp8) != 2:
        raise TypeError(f"weight_fp8 must be the (values, scales) pair of pk.quantize_fp8(w, dtype, axis=-1), "
                        f"got {type(weight_fp8).__name__}")
    values, scales = weight_fp8
    if not isinstance(values, torch.Tensor) or values.dtype not in FP8_DTYPES:
        raise TypeError(f"weight_fp8 values must be a float8_e4m3fn or float8_e5m2 tensor, got "
                        f"{getattr(values, 'dtype', type(values).__name__)}")
    if tuple(values.shape) != tuple(weight.shape):
        raise ValueError(f"weight_fp8 values must have weight's shape {tuple(weight.shape)}, got {tuple(values.shape)}")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or \
            tuple(scales.shape) != (weight.shape[0], 1):
        raise ValueError(f"weight_fp8 scales must be ({weight.shape[0]}, 1) float32 (per-row scales, axis=-1), got "
                         f"{getattr(scales, 'dtype', None)} {tuple(getattr(scales, 'shape', ()))}")
    if values.device != weight.device or scales.device != weight.device:
        raise ValueError(f"weight_fp8 must be on weight's device {weight.device}, got {values.device} and "
                         f"{scales.device}")
    return values, scales


# ---- registration (ops/registry.py) ----------------------------------------------------------


def reference_fp8_linear(x: torch.Tensor, weight: torch.Tensor, *, weight_fp8=None,
                         dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """FP64 oracle of the forward on the quantised operands: dequant(X) @ dequant(W)^T, unrounded (float64).
    The quantisation itself is ``pk.quantize_fp8`` (checked against its own oracle in tests/test_fp8.py)."""
    xq, sx = quantize_fp8(x.detach().reshape(-1, x.shape[-1]), dtype, axis=-1)
    wq, sw = weight_fp8 if weight_fp8 is not None else quantize_fp8(weight.detach(), dtype, axis=-1)
    out = (xq.double() * sx.double()) @ (wq.double() * sw.double()).T
    return out.reshape(*x.shape[:-1], weight.shape[0])


register_family(OpFamily(
    name="fp8_linear",
    public=("fp8_linear",),
    custom_ops=("pk::fp8_linear", "pk::fp8_linear_backward"),
    reference={"fp8_linear": reference_fp8_linear},
))
