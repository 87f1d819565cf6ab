"""The aten handlers: each takes an aten overload's arguments and returns its result computed by pk.

``HANDLERS`` maps an overload's name (``str(aten.mm.default)``, ``"aten.mm.default"``) to its
handler. Which overloads are served is the op registry's (``ops/registry.py``: each family's
``aten`` names); the mode builds its table from both. A handler raises ``Decline`` when the
arguments fall outside what pk serves (torch then runs the op, and its own errors stay its
own); any other exception is a bug and propagates.

What is served:

* the products (``mm``, ``bmm``, ``mv``, ``dot``, ``addmm``, their ``out=`` and in-place forms): ``products.py``;
* ``_softmax`` / ``_log_softmax`` over the last dim (``half_to_float`` included: the 16-bit
  input is widened exactly and reduced in fp32; a 0-d input is one row of one) ->
  ``pk::softmax`` / ``pk::log_softmax``. A fully masked row (every input -inf) is NaN, and so is
  its gradient, as in torch (pk's kernel alone gives 0 and -inf).
  Their backward ops run ``pk::softmax_backward``, pk's own backward kernel:

  - ``_softmax_backward_data`` receives only the output, and pk's kernel recomputes the
    probabilities from the input and the forward's row max and sum. So a served softmax
    whose input requires grad keeps (input, its version, row max, row sum) for its backward,
    keyed by the output's storage and dropped when that storage is freed: as long as the
    output lives (its graph, or the caller, holds it) this holds the softmax's input, which
    torch's own softmax does not keep. The gradient is bit for bit that of ``pk.softmax``'s
    autograd. A backward whose forward did not run on pk (outside the mode, or a fallback),
    or whose input was modified in place since, falls back to torch and is recorded.
  - ``_log_softmax_backward_data`` is ``dy - exp(y) * rowsum(dy)`` from the output y, which
    is the kernel's log-softmax backward with y standing in for the input and row max 0,
    row sum 1 (its probabilities are then ``exp(y)``). Nothing is kept from the forward
    (for a language model's loss the input is the whole logits tensor).
* ``mean.dim`` / ``sum.dim_IntList`` (and full ``mean``/``sum``) on float tensors, any dims:
  the reduced dims are moved last and summed by ``pk.matmul`` against a ones column (the
  matmul's K loop: fp32, fixed block order, batch-invariant). The served ``mean`` is that
  fp32 sum divided by the count in fp32 and rounded once to the output dtype: torch's own
  CPU definition of ``mean`` (widen to fp32, sum, divide, round) with a fixed summation
  order. HF's RMSNorm (``x.pow(2).mean(-1, keepdim=True)``) goes here.
* ``native_layer_norm`` over one trailing dim -> ``pk::layer_norm``, whose fp32 row mean and
  rstd are returned as the saved statistics (in torch's dtype for them, see
  ``_native_layer_norm``). ``native_layer_norm_backward`` -> ``pk::layer_norm_backward`` from
  those statistics: with fp32 statistics it is ``pk.layer_norm``'s autograd gradient bit for
  bit; the weight and bias gradients are summed over rows in a fixed order.
* ``_fused_rms_norm`` (where torch has it) -> ``pk.rms_norm``; its saved rstd (read only by
  its backward, which torch runs) is computed with the row sums above.
* ``embedding_dense_backward`` (an embedding's weight gradient: a float sum over the positions
  that hold the same token) -> ``pk.matmul`` of a 0/1 occurrence matrix with the gradient
  rows in fp32: each token's rows are added in the matmul's fixed K-block order over the
  positions, then rounded once to the gradient's dtype (``_embedding_dense_backward``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import profiles
from ..ops import matmul, rms_norm
from ..ops._common import FLOAT_DTYPES
from ..ops.softmax import as_rows
from ._common import Decline, ForwardMemo, check_tensors, fp32_scalar
from .products import PRODUCT_HANDLERS

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the handlers.


def _last_dim(x: torch.Tensor, dim: int) -> None:
    if x.dim() == 0 or not -x.dim() <= dim < x.dim() or dim % x.dim() != x.dim() - 1:
        raise Decline(f"dim {dim} is not the last dim of a {x.dim()}-d tensor")


def _softmax_dim(x: torch.Tensor, dim: int) -> None:
    """A softmax's dim: the last one, or dim 0 / -1 of a 0-d tensor (torch treats it as one row of one)."""
    if x.dim() == 0:
        if dim not in (0, -1):
            raise Decline(f"dim {dim} for a 0-d tensor")
        return
    _last_dim(x, dim)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, 1) if t.dim() == 0 else as_rows(t)


def _one_norm_dim(x: torch.Tensor, normalized_shape, what: str) -> None:
    if len(normalized_shape) != 1:
        raise Decline(f"{what} over {len(normalized_shape)} dims (pk serves the last one)")
    if x.dim() == 0 or normalized_shape[0] != x.shape[-1]:
        raise Decline(f"{what} over shape {list(normalized_shape)} for an input of shape {list(x.shape)}")


def _row_sums(x2: torch.Tensor) -> torch.Tensor:
    """Sums of the rows of x2 (rows, K) as fp32 (rows,): pk.matmul against a ones column.

    The matmul kernel widens exactly, multiplies by 1 (exact) and adds in its fixed K-block
    order with fp32 accumulation: a row's sum depends only on that row.
    """
    x32 = x2.to(torch.float32)
    ones = torch.ones((), dtype=torch.float32, device=x2.device).expand(x2.shape[1], 1)
    with profiles.use_profile("matched"):     # a row reduction, never the engine's split-K
        return matmul(x32, ones).reshape(x2.shape[0])


# ---------------------------------------------------------------------------------------------
# Softmax and log-softmax, forward and backward.

# Served softmaxes whose input requires grad: output -> (input, its version, row max, row sum).
_SOFTMAX_SAVED = ForwardMemo()


def _keep_for_backward(y: torch.Tensor, x: torch.Tensor, row_max, row_sum) -> None:
    # x itself, not a view made here: a view made below autograd does not share x's version counter.
    _SOFTMAX_SAVED.keep(y, (x, x._version, row_max, row_sum))


def _softmax_forward(x, dim, half_to_float, log: bool):
    """A fully masked row (every input -inf) gives NaN, as torch's softmax and log-softmax do (pk's kernel: 0, -inf)."""
    check_tensors(x)
    _softmax_dim(x, dim)
    if half_to_float and x.dtype == torch.float32:
        raise Decline("half_to_float on a float32 input")
    x_in = x
    if half_to_float:
        x = x.to(torch.float32)          # exact widening; the fp32 softmax of the same values
    op = torch.ops.pk.log_softmax if log else torch.ops.pk.softmax
    y2, row_max, row_sum = op(_rows(x), 1.0)
    masked = row_max == float("-inf")
    if y2.shape[1] and bool(masked.any()):
        y2 = y2.masked_fill(masked[:, None], float("nan"))
    y = y2.reshape(x.shape)
    if not log and x_in.requires_grad and y.numel():
        # The 16-bit input itself: the kernel widens it exactly and rounds dx to its dtype, the input_dtype.
        _keep_for_backward(y, x_in, row_max, row_sum)
    return y


def _softmax(x, dim, half_to_float):
    return _softmax_forward(x, dim, half_to_float, log=False)


def _log_softmax(x, dim, half_to_float):
    return _softmax_forward(x, dim, half_to_float, log=True)


def _check_softmax_grad(grad, out, dim, input_dtype) -> None:
    check_tensors(grad, out)
    _softmax_dim(out, dim)
    if input_dtype not in FLOAT_DTYPES:
        raise Decline(f"input_dtype {input_dtype} is not served")


def _softmax_backward_data(grad, out, dim, input_dtype):
    _check_softmax_grad(grad, out, dim, input_dtype)
    if out.numel() == 0:
        return torch.empty(out.shape, dtype=input_dtype, device=out.device)
    saved = _SOFTMAX_SAVED.get(out)
    if saved is None:
        raise Decline("the forward softmax did not run on pk, so its input and row statistics are not kept")
    x, x_version, row_max, row_sum = saved
    if x._version != x_version:
        raise Decline("the softmax's input was modified in place after the forward")
    if x.dtype != input_dtype:
        raise Decline(f"input_dtype {input_dtype} is not the forward input's {x.dtype}")
    dx2 = torch.ops.pk.softmax_backward(_rows(grad), _rows(x), row_max, row_sum, 1.0, False)
    masked = row_max == float("-inf")  # torch's gradient of a fully masked row, whose output is NaN: NaN
    if dx2.shape[1] and bool(masked.any()):
        dx2 = dx2.masked_fill(masked[:, None], float("nan"))
    return dx2.reshape(out.shape)


def _log_softmax_backward_data(grad, out, dim, input_dtype):
    _check_softmax_grad(grad, out, dim, input_dtype)
    y2 = _rows(out)
    rows = y2.shape[0]
    zero_max = torch.zeros(rows, dtype=torch.float32, device=out.device)
    unit_sum = torch.ones(rows, dtype=torch.float32, device=out.device)
    dx2 = torch.ops.pk.softmax_backward(_rows(grad), y2, zero_max, unit_sum, 1.0, True)
    # dx is rounded once, to y's dtype: input_dtype, or fp32 under half_to_float (then rounded to input_dtype).
    return dx2.reshape(out.shape).to(input_dtype)


# ---------------------------------------------------------------------------------------------
# Sums and means.


def _reduce(x, dims, keepdim, dtype, mean: bool):
    """sum/mean of x over ``dims`` (None or [] = all): fp32 row sums on pk, / count in fp32, one rounding.

    ``dtype=`` as torch's CPU ops read it: ``sum`` casts x to it first (``x_fp32.sum(dtype=torch.float16)``
    rounds each element to fp16, then sums), ``mean`` does not (fp32 sum, divided, rounded once to
    it). Integer and bool inputs with a float ``dtype`` are summed as those floats (fp32 for mean).
    """
    out_dtype = x.dtype if dtype is None else dtype
    if out_dtype not in FLOAT_DTYPES:
        raise Decline(f"output dtype {out_dtype} is not served")
    if not mean and x.dtype != out_dtype:
        x = x.to(out_dtype)
    elif not x.is_floating_point():
        x = x.to(torch.float32)
    check_tensors(x)
    nd = x.dim()
    if dims and nd and (any(not -nd <= d < nd for d in dims) or len({d % nd for d in dims}) != len(dims)):
        raise Decline(f"dims {list(dims)} for a {nd}-d tensor")     # torch raises its own error
    reduced = sorted({d % nd for d in dims}) if (dims and nd) else list(range(nd))
    kept = [d for d in range(nd) if d not in reduced]
    k = math.prod(x.shape[d] for d in reduced)
    rows = math.prod(x.shape[d] for d in kept)
    x2 = x.permute(*kept, *reduced).reshape(rows, k) if nd else x.reshape(1, 1)
    s = _row_sums(x2)
    if mean:
        s = s / k                         # fp32 division, as torch's sum(...).div_(count)
    shape = [1 if d in reduced else x.shape[d] for d in range(nd)] if keepdim else [x.shape[d] for d in kept]
    return s.reshape(shape).to(out_dtype)


def _mean_dim(x, dim, keepdim=False, *, dtype=None):
    return _reduce(x, dim, keepdim, dtype, mean=True)


def _sum_dim(x, dim, keepdim=False, *, dtype=None):
    return _reduce(x, dim, keepdim, dtype, mean=False)


def _mean_all(x, *, dtype=None):
    return _reduce(x, None, False, dtype, mean=True)


def _sum_all(x, *, dtype=None):
    return _reduce(x, None, False, dtype, mean=False)


# ---------------------------------------------------------------------------------------------
# Norms.


def _check_affine(x: torch.Tensor, *params: torch.Tensor | None) -> None:
    for t in params:
        if t is not None and tuple(t.shape) != (x.shape[-1],):
            raise Decline(f"weight or bias of shape {tuple(t.shape)} for an input of shape {tuple(x.shape)}")


def _native_layer_norm(x, normalized_shape, weight, bias, eps):
    _one_norm_dim(x, normalized_shape, "layer norm")
    fp32_scalar("eps", eps, nonnegative=True)
    check_tensors(x, weight, bias)
    _check_affine(x, weight, bias)
    y2, mean, rstd = torch.ops.pk.layer_norm(as_rows(x), weight, bias, eps)
    # torch's dtype for the saved statistics: fp32 on GPU (its accumulation type) and on CPU
    # when 16-bit x meets an fp32 weight ("mixed type"), x's dtype otherwise.
    mixed = weight is not None and weight.dtype == torch.float32
    stat_dtype = torch.float32 if (x.device.type != "cpu" or mixed) else x.dtype
    shape = (*x.shape[:-1], 1)
    return y2.reshape(x.shape), mean.reshape(shape).to(stat_dtype), rstd.reshape(shape).to(stat_dtype)


def _native_layer_norm_backward(grad, x, normalized_shape, mean, rstd, weight, bias, output_mask):
    _one_norm_dim(x, normalized_shape, "layer norm")
    check_tensors(grad, x, mean, rstd, weight, bias)
    _check_affine(x, weight, bias)
    stats = [t.reshape(-1).to(torch.float32).contiguous() for t in (mean, rstd)]
    want_dw, want_db = bool(output_mask[1]) and weight is not None, bool(output_mask[2]) and bias is not None
    dx, dw, db = torch.ops.pk.layer_norm_backward(as_rows(grad), as_rows(x), weight, *stats,
                                                  None if bias is None else bias.dtype, want_dw, want_db)
    return (dx.reshape(x.shape) if output_mask[0] else None, dw if want_dw else None, db if want_db else None)


def _rms_rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rstd of each row over the last dim, fp32, shape (..., 1): only the backward reads it."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).to(torch.float32)
    var = _row_sums(x2 * x2) / n
    rstd = torch.reciprocal(torch.sqrt(var + eps))  # correctly rounded sqrt and division
    return rstd.reshape(*x.shape[:-1], 1)


def _fused_rms_norm(x, normalized_shape, weight, eps):
    _one_norm_dim(x, normalized_shape, "rms norm")
    check_tensors(x, weight)
    e = torch.finfo(x.dtype).eps if eps is None else fp32_scalar("eps", eps, nonnegative=True)
    w = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device) if weight is None else weight
    return rms_norm(x, w, e), _rms_rstd(x, e)


# ---------------------------------------------------------------------------------------------
# Embedding backward.

_EMBEDDING_TOKENS_PER_PRODUCT = 1024  # occurrence-matrix rows per pk.matmul: bounds its memory, changes no bit


def _embedding_dense_backward(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    """dW (num_weights, d): row v is the fp32 sum of ``grad``'s rows at the positions holding token v.

    The sum is ``occurrence (U, N) @ grad rows (N, d)`` on ``pk.matmul`` in fp32 (exact products by
    0 or 1, the K loop's fixed order over positions), U the distinct tokens; rows are independent,
    so splitting the U tokens over several products changes no bit. Positions holding
    ``padding_idx`` get no gradient, as in torch; ``scale_grad_by_freq`` is declined.
    """
    check_tensors(grad)
    if scale_grad_by_freq:
        raise Decline("scale_grad_by_freq=True is not served")
    if indices.dtype not in (torch.int32, torch.int64) or indices.device != grad.device:
        raise Decline(f"indices of dtype {indices.dtype} on {indices.device}")
    d = grad.shape[-1]
    if grad.numel() // max(d, 1) != indices.numel():
        raise Decline(f"grad of shape {tuple(grad.shape)} for indices of shape {tuple(indices.shape)}")
    idx = indices.reshape(-1).long()
    keep = idx != padding_idx
    rows = grad.reshape(-1, d)[keep].to(torch.float32)
    tokens, where = torch.unique(idx[keep], sorted=True, return_inverse=True)
    out = torch.zeros(num_weights, d, dtype=torch.float32, device=grad.device)
    positions = torch.arange(rows.shape[0], device=grad.device)
    for lo in range(0, tokens.numel(), _EMBEDDING_TOKENS_PER_PRODUCT):
        hi = min(lo + _EMBEDDING_TOKENS_PER_PRODUCT, tokens.numel())
        chunk = (where >= lo) & (where < hi)
        occurrence = torch.zeros(hi - lo, rows.shape[0], dtype=torch.float32, device=grad.device)
        occurrence[where[chunk] - lo, positions[chunk]] = 1.0
        with profiles.use_profile("matched"):  # a fixed-order sum, never the engine's split-K
            out[tokens[lo:hi]] = matmul(occurrence, rows)
    return out.to(grad.dtype)


HANDLERS: dict[str, Callable] = {
    **PRODUCT_HANDLERS,
    "aten._softmax.default": _softmax,
    "aten._log_softmax.default": _log_softmax,
    "aten._softmax_backward_data.default": _softmax_backward_data,
    "aten._log_softmax_backward_data.default": _log_softmax_backward_data,
    "aten.mean.dim": _mean_dim,
    "aten.mean.default": _mean_all,
    "aten.sum.dim_IntList": _sum_dim,
    "aten.sum.default": _sum_all,
    "aten.native_layer_norm.default": _native_layer_norm,
    "aten.native_layer_norm_backward.default": _native_layer_norm_backward,
}
if hasattr(aten, "_fused_rms_norm"):
    HANDLERS["aten._fused_rms_norm.default"] = _fused_rms_norm
HANDLERS["aten.embedding_dense_backward.default"] = _embedding_dense_backward

# Scaled-dot-product attention, forward and backward together (matched/attention.py).
from .attention import SDPA_BACKWARDS, SDPA_HANDLERS  # noqa: E402

HANDLERS.update(SDPA_HANDLERS)

# Handlers that run pk's matched kernels whatever profile is active: the row sums (sum, mean, the embedding
# backward) pin it, and so does the SDPA backward. The report states them as matched, and strict lets them run.
MATCHED_ONLY = frozenset({"aten.mean.dim", "aten.mean.default", "aten.sum.dim_IntList", "aten.sum.default",
                          "aten.embedding_dense_backward.default", *SDPA_BACKWARDS})
