"""pk.matched_mode(): any PyTorch model's matmuls, softmaxes and norms on pk kernels, with a fail-closed audit.

Inside ``with pk.matched_mode() as report:`` the aten ops that decide a transformer's
numerics run on pk kernels (batch-invariant, fixed-order, fp32-accumulating), so a
model's ``generate()`` with a KV cache and one teacher-forced forward over the same
tokens give the same bits, and a row does not depend on what else is in the batch.

Mechanism: a ``TorchDispatchMode``. It is per thread (the mode stack is thread-local),
nests, sees every op below autograd (backward ops too), and falls back with
``func(*args, **kwargs)``. Outside the ``with`` block torch is untouched. pk
implementations run with every dispatch mode disabled, so the pk code's own torch
calls (buffer allocation, int16 views) never re-enter a mode and pk never calls the
aten op it replaces (its matmul does not use aten ``mm``).

What is served (``report.served`` counts them):

* ``mm``, ``bmm``, ``mv``, ``dot`` -> ``pk.matmul``; ``addmm`` with ``beta == alpha == 1`` and a
  bias of shape (N,) or (1, N) -> ``pk.linear`` (bias added in fp32 before the one
  rounding). ``matmul``/``linear``/``einsum`` decompose into these before dispatch.
* ``_softmax`` / ``_log_softmax`` over the last dim (``half_to_float`` included: the
  16-bit input is widened exactly and reduced in fp32) -> ``pk.softmax`` /
  ``pk.log_softmax``. Their backward ops: ``_softmax_backward_data`` is
  ``y * (g - rowsum(g * y))`` and ``_log_softmax_backward_data`` is
  ``g - exp(y) * rowsum(g)``, torch's formulas, in fp32 with the row sums below.
* ``mean.dim`` / ``sum.dim_IntList`` (and full ``mean``/``sum``) on float tensors, any
  dims: the reduced dims are moved last and summed by ``pk.matmul`` against a ones
  column (the matmul's K loop: fp32, fixed block order, batch-invariant), then divided
  by the count in fp32 for a mean and rounded once to the output dtype. This is torch's
  own CPU definition of ``mean`` (widen to fp32, sum, divide, round) with a fixed
  summation order. HF's RMSNorm (``x.pow(2).mean(-1, keepdim=True)``) goes here.
* ``native_layer_norm`` over one trailing dim -> ``pk.layer_norm`` (when this version
  of pk has it; otherwise recorded as uncovered), ``_fused_rms_norm`` -> ``pk.rms_norm``.
  The saved statistics (mean, rstd) that only their backward reads are computed with
  the same row sums. ``native_layer_norm_backward`` is torch's formula in fp32 with the
  row sums above and the weight/bias gradients as pk column sums (rows in index order).
* CPU only, "vector path" elementwise ops (``VECTOR_PATH_OPS``: silu, exp, rsqrt, tanh,
  gelu, sin, cos, ...). torch's CPU kernels compute these with different bits in the
  SIMD body and in the scalar tail of a loop, and which elements fall in the tail
  depends on the tensor's size (measured on this machine: silu fp32 75 of 2,000
  elements, gelu fp32 696, rsqrt fp16/bf16 503-519). So a row's activations could
  depend on the batch. Here the inputs are flattened, padded to a multiple of
  ``LANE_PAD`` elements and run in chunks of ``CHUNK`` elements (below torch's parallel
  grain, so one thread runs each whole chunk): every element goes through the SIMD body,
  whose lanes are independent, and the result is torch's vectorised value whatever the
  shape. On CUDA torch's elementwise kernels are per-element already and pass through.
* pk's own custom ops (``pk::linear`` ..., a model that calls ``pk.linear`` directly) run
  as they are and count as served.

Everything else falls back to torch. With ``audit=True`` every op that ran is
classified (``classify``): served, on the allowlist of exact or per-element ops
(views and indexing, creation, copies and casts, correctly rounded elementwise
arithmetic, exact selections such as max/topk, ops on integer and bool tensors only),
sampling (listed apart, not scored), or *uncovered*: recorded in ``report.uncovered``
with op name, dtype, count and an example shape. The allowlist is explicit; an op not on
it is uncovered (fail closed). ``strict=True`` raises ``UncoveredOpError`` before the
first uncovered op runs. Fallbacks of served ops (a softmax over another dim, ``addmm``
with ``beta != 1``, a dtype pk lacks, a tensor on another device) are always recorded.

Not reached by this mode: ``torch.compile``d models (Inductor replaces aten ops with its
own kernels; call pk's ops, registered as ``pk::`` custom ops, directly there) and
scaled-dot-product attention (SDPA hides its reductions: load HF models with
``attn_implementation="eager"``).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from . import backend, profiles
from .ops import linear as pk_linear
from .ops import log_softmax, matmul, rms_norm, softmax
from .ops._common import FLOAT_DTYPES

aten = torch.ops.aten

# Vector-path elementwise: pad the flattened input to a multiple of this many elements
# (a multiple of every CPU SIMD loop's step: 2 vectors of up to 64 bytes of 16-bit lanes)...
LANE_PAD = 128
# ...and run it in chunks of this many (a multiple of LANE_PAD, below ATen's parallel grain
# of 32768, so no thread boundary cuts a chunk and leaves a scalar tail).
CHUNK = 16384


class UncoveredOpError(RuntimeError):
    """Raised by ``matched_mode(strict=True)`` on an op that pk does not serve and the allowlist does not hold."""


class _Decline(Exception):
    """A served op's arguments fall outside what pk serves: fall back to torch and record why."""


@dataclass
class OpRecord:
    """One kind of op call that was not served: op, dtype, why, how often, and one example shape."""

    op: str
    dtype: str
    reason: str
    count: int = 0
    example_shape: tuple = ()


@dataclass
class MatchedModeReport:
    """What a ``matched_mode`` block ran.

    ``served``: op name -> calls that ran on pk kernels. ``uncovered``: ops that ran on
    torch and are neither served nor allowlisted (float reductions such as ``cumsum``,
    ``var``, SDPA; fallbacks of served ops). ``sampling``: sampling ops (``multinomial``,
    ``rand``...), which draw tokens but produce no scored number. ``uncovered`` is filled
    for every fallback of a served op; other ops are classified only with ``audit=True``.
    """

    served: collections.Counter = field(default_factory=collections.Counter)
    uncovered: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)

    def _add(self, table: dict, op: str, dtype, reason: str, shape: tuple) -> None:
        key = (op, str(dtype), reason)
        rec = table.get(key)
        if rec is None:
            rec = table[key] = OpRecord(op, str(dtype).replace("torch.", ""), reason, 0, shape)
        rec.count += 1

    def summary(self) -> str:
        lines = [f"served on pk: {sum(self.served.values())} calls "
                 f"({', '.join(f'{k} x{v}' for k, v in sorted(self.served.items())) or 'none'})"]
        for title, table in (("uncovered", self.uncovered), ("sampling (not scored)", self.sampling)):
            lines.append(f"{title}: {len(table) or 'none'}")
            for r in table.values():
                lines.append(f"  {r.op:<40} {r.dtype:<9} x{r.count:<5} e.g. {list(r.example_shape)}  {r.reason}")
        return "\n".join(lines)

    __str__ = summary


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the served ops.


def _check_tensors(*tensors: torch.Tensor | None) -> None:
    """Every tensor must be a pk float dtype on the active backend's device, else decline."""
    want = backend.device().type
    for t in tensors:
        if t is None:
            continue
        if t.dtype not in FLOAT_DTYPES:
            raise _Decline(f"dtype {t.dtype} is not served (pk serves float32, float16, bfloat16)")
        if t.device.type != want:
            raise _Decline(f"tensor on {t.device}, the active backend runs on {want}")


def _last_dim(x: torch.Tensor, dim: int) -> None:
    if x.dim() == 0 or not -x.dim() <= dim < x.dim() or dim % x.dim() != x.dim() - 1:
        raise _Decline(f"dim {dim} is not the last dim of a {x.dim()}-d tensor")


def _one_norm_dim(normalized_shape, what: str) -> None:
    if len(normalized_shape) != 1:
        raise _Decline(f"{what} over {len(normalized_shape)} dims (pk serves the last one)")


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
# Served ops. Each takes the aten op's arguments and returns its result, or raises _Decline.


def _check_product(a: torch.Tensor, b: torch.Tensor, a_dims: int, b_dims: int) -> None:
    """Arguments torch would reject (or pk lacks) go back to torch, which raises its own error.

    Any other exception from a pk op is a bug and propagates: it is never turned into a fallback.
    """
    _check_tensors(a, b)
    if a.dtype != b.dtype:
        raise _Decline(f"dtypes differ: {a.dtype} and {b.dtype}")
    if a.dim() != a_dims or b.dim() != b_dims:
        raise _Decline(f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0 if b_dims == 1 else -2] or (a_dims == 3 and a.shape[0] != b.shape[0]):
        raise _Decline(f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")


def _mm(a, b):
    _check_product(a, b, 2, 2)
    return matmul(a, b)


def _bmm(a, b):
    _check_product(a, b, 3, 3)
    return matmul(a, b)


def _mv(a, v):
    _check_product(a, v, 2, 1)
    return matmul(a, v.reshape(-1, 1)).reshape(a.shape[0])


def _dot(a, b):
    _check_product(a, b, 1, 1)
    return matmul(a.reshape(1, -1), b.reshape(-1, 1)).reshape(())


def _addmm(bias, a, b, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise _Decline(f"addmm with beta={beta}, alpha={alpha} (pk serves beta == alpha == 1)")
    _check_product(a, b, 2, 2)
    _check_tensors(bias)
    n = b.shape[-1]
    if tuple(bias.shape) not in ((n,), (1, n)):
        raise _Decline(f"addmm input of shape {tuple(bias.shape)} is not a bias of shape ({n},) or (1, {n})")
    if not (bias.dtype == a.dtype == b.dtype):
        raise _Decline(f"addmm dtypes differ: {bias.dtype}, {a.dtype}, {b.dtype}")
    return pk_linear(a, b.mT, bias.reshape(n))


def _softmax_common(x, dim, half_to_float, log: bool):
    _check_tensors(x)
    _last_dim(x, dim)
    if half_to_float:
        if x.dtype == torch.float32:
            raise _Decline("half_to_float on a float32 input")
        x = x.to(torch.float32)          # exact widening; the fp32 softmax of the same values
    return (log_softmax if log else softmax)(x, dim=-1)


def _softmax(x, dim, half_to_float):
    return _softmax_common(x, dim, half_to_float, log=False)


def _log_softmax(x, dim, half_to_float):
    return _softmax_common(x, dim, half_to_float, log=True)


def _softmax_grad_inputs(grad, out, dim, input_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks of a softmax backward op; -> (grad, out) in fp32."""
    _check_tensors(grad, out)
    _last_dim(out, dim)
    if input_dtype not in FLOAT_DTYPES:
        raise _Decline(f"input_dtype {input_dtype} is not served")
    return grad.to(torch.float32), out.to(torch.float32)


def _softmax_backward_data(grad, out, dim, input_dtype):
    # torch's formula dx = y * (g - sum(g * y)), in fp32, with the row sum on pk.
    g, y = _softmax_grad_inputs(grad, out, dim, input_dtype)
    s = _row_sums((g * y).reshape(-1, y.shape[-1])).reshape(*y.shape[:-1], 1)
    return (y * (g - s)).to(input_dtype)


def _log_softmax_backward_data(grad, out, dim, input_dtype):
    # torch's formula dx = g - exp(y) * sum(g), in fp32; exp on the vector path, row sum on pk.
    g, y = _softmax_grad_inputs(grad, out, dim, input_dtype)
    s = _row_sums(g.reshape(-1, g.shape[-1])).reshape(*g.shape[:-1], 1)
    p = _vector_path(aten.exp.default, (y,), {}) if y.device.type == "cpu" else torch.exp(y)
    return (g - p * s).to(input_dtype)


def _reduce(x, dims, keepdim, dtype, mean: bool):
    """sum/mean of x over ``dims`` (None or [] = all): fp32 row sums on pk, / count in fp32, one rounding."""
    _check_tensors(x)
    out_dtype = x.dtype if dtype is None else dtype
    if out_dtype not in FLOAT_DTYPES:
        raise _Decline(f"output dtype {out_dtype} is not served")
    nd = x.dim()
    if dims and nd and (any(not -nd <= d < nd for d in dims) or len({d % nd for d in dims}) != len(dims)):
        raise _Decline(f"dims {list(dims)} for a {nd}-d tensor")     # torch raises its own error
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


def _norm_stats(x: torch.Tensor, centre: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) of each row over the last dim, fp32, shape (..., 1): only the backward reads them."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).to(torch.float32)
    mean = _row_sums(x2) / n
    d = x2 - mean[:, None] if centre else x2
    var = _row_sums(d * d) / n
    rstd = torch.reciprocal(torch.sqrt(var + eps))  # correctly rounded sqrt and division
    shape = (*x.shape[:-1], 1)
    return mean.reshape(shape), rstd.reshape(shape)


def _native_layer_norm(x, normalized_shape, weight, bias, eps):
    # Looked up at call time on the package: pk.layer_norm plugs in as soon as pk exports it.
    pk_layer_norm = getattr(importlib.import_module(__package__), "layer_norm", None)
    if pk_layer_norm is None:
        raise _Decline("pk.layer_norm is not available in this version of precision_kernels")
    _one_norm_dim(normalized_shape, "layer norm")
    _check_tensors(x, weight, bias)
    out = pk_layer_norm(x, weight, bias, eps)
    mean, rstd = _norm_stats(x, centre=True, eps=eps)
    # torch's dtype for the saved statistics: fp32 on GPU (its accumulation type) and on CPU
    # when 16-bit x meets an fp32 weight ("mixed type"), x's dtype otherwise.
    mixed = weight is not None and weight.dtype == torch.float32
    stat_dtype = torch.float32 if (x.device.type != "cpu" or mixed) else x.dtype
    return out, mean.to(stat_dtype), rstd.to(stat_dtype)


def _col_sums(t2: torch.Tensor) -> torch.Tensor:
    """Column sums of t2 (rows, n) as fp32 (n,): ones (1, rows) @ t2, the rows summed in index order."""
    ones = torch.ones((), dtype=torch.float32, device=t2.device).expand(1, t2.shape[0])
    with profiles.use_profile("matched"):
        return matmul(ones, t2.to(torch.float32)).reshape(t2.shape[1])


def _native_layer_norm_backward(grad, x, normalized_shape, mean, rstd, weight, bias, output_mask):
    # torch's formula in fp32 from the saved statistics, row and column sums on pk:
    # dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w; dw = sum(g * xhat); db = sum(g).
    _one_norm_dim(normalized_shape, "layer norm")
    _check_tensors(grad, x, mean, rstd, weight, bias)
    n = x.shape[-1]
    g = grad.reshape(-1, n).to(torch.float32)
    rstd32 = rstd.reshape(-1, 1).to(torch.float32)
    xhat = (x.reshape(-1, n).to(torch.float32) - mean.reshape(-1, 1).to(torch.float32)) * rstd32
    gw = g if weight is None else g * weight.to(torch.float32)
    dx = dw = db = None
    if output_mask[0]:
        mean_gw = (_row_sums(gw) / n)[:, None]
        mean_gw_xhat = (_row_sums(gw * xhat) / n)[:, None]
        dx = (rstd32 * (gw - mean_gw - xhat * mean_gw_xhat)).to(x.dtype)
        dx = dx.reshape(x.shape)
    if output_mask[1] and weight is not None:
        dw = _col_sums(g * xhat).to(weight.dtype)
    if output_mask[2] and bias is not None:
        db = _col_sums(g).to(bias.dtype)
    return dx, dw, db


def _fused_rms_norm(x, normalized_shape, weight, eps):
    _one_norm_dim(normalized_shape, "rms norm")
    _check_tensors(x, weight)
    e = torch.finfo(x.dtype).eps if eps is None else eps
    w = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device) if weight is None else weight
    out = rms_norm(x, w, e)
    _, rstd = _norm_stats(x, centre=False, eps=e)
    return out, rstd


SERVED: dict[object, Callable] = {
    aten.mm.default: _mm,
    aten.bmm.default: _bmm,
    aten.mv.default: _mv,
    aten.dot.default: _dot,
    aten.addmm.default: _addmm,
    aten._softmax.default: _softmax,
    aten._log_softmax.default: _log_softmax,
    aten._softmax_backward_data.default: _softmax_backward_data,
    aten._log_softmax_backward_data.default: _log_softmax_backward_data,
    aten.mean.dim: _mean_dim,
    aten.mean.default: _mean_all,
    aten.sum.dim_IntList: _sum_dim,
    aten.sum.default: _sum_all,
    aten.native_layer_norm.default: _native_layer_norm,
    aten.native_layer_norm_backward.default: _native_layer_norm_backward,
}
if hasattr(aten, "_fused_rms_norm"):
    SERVED[aten._fused_rms_norm.default] = _fused_rms_norm


# ---------------------------------------------------------------------------------------------
# Vector-path elementwise (CPU).

# Transcendental or multi-rounding elementwise ops whose CPU result can differ between
# torch's SIMD body and its scalar tail (and, for several roundings, FMA contraction in
# the scalar code). In-place forms ("exp_") are covered by the same names.
VECTOR_PATH_OPS = frozenset({
    "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "tanh", "sinh", "cosh",
    "asin", "acos", "atan", "asinh", "acosh", "atanh", "atan2", "sigmoid", "silu", "gelu", "erf", "erfc",
    "erfinv", "softplus", "mish", "elu", "selu", "celu", "logit", "hardswish", "hardsigmoid", "rsqrt",
    "pow", "xlogy", "lerp", "addcmul", "addcdiv", "tanh_backward", "sigmoid_backward", "silu_backward",
    "gelu_backward", "softplus_backward", "elu_backward", "logit_backward", "mish_backward",
    "hardswish_backward", "hardsigmoid_backward",
})


def _vector_path(func, args: tuple, kwargs: dict):
    """Run an elementwise op so that every element takes torch's SIMD body, whatever the shape."""
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        raise _Decline("tensor keyword arguments")
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    # 0-d tensors next to larger ones stay 0-d: they take part in type promotion as scalars.
    full = [a for a in tensors if a.dim() > 0] or tensors
    shape = torch.broadcast_shapes(*(a.shape for a in full))
    n = math.prod(shape)
    if n == 0:
        return func(*args, **kwargs)                      # no elements, no numerics
    padded_n = -(-n // LANE_PAD) * LANE_PAD
    in_place = func._schema.name.endswith("_") and not func._schema.name.endswith("__")
    if in_place and tuple(args[0].shape) != tuple(shape):
        raise _Decline("in-place op whose output broadcasts")

    def pad(a):
        if not any(a is f for f in full):
            return a
        flat = a.expand(shape).reshape(n)
        return torch.cat([flat, flat.new_zeros(padded_n - n)])

    padded = [pad(a) for a in args]
    is_padded = [any(a is f for f in full) for a in args]
    pieces = []
    for start in range(0, padded_n, CHUNK):
        chunk_args = [a[start:start + CHUNK] if p else a for a, p in zip(padded, is_padded)]
        pieces.append(func(*chunk_args, **kwargs))
    result = (padded[0] if in_place else torch.cat(pieces))[:n].reshape(shape)
    if in_place:
        return args[0].copy_(result)
    return result


def _pow_is_exact(func, args) -> bool:
    """pow(x, 2) is one multiplication in every torch path (correctly rounded): no vector path needed."""
    return func is aten.pow.Tensor_Scalar and isinstance(args[1], numbers.Number) and args[1] == 2


def _base_name(func) -> str:
    name = func._schema.name.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _vector_path_applies(func, args) -> bool:
    if _base_name(func) not in VECTOR_PATH_OPS or _pow_is_exact(func, args):
        return False
    if "out" in func._schema.overload_name:
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors) and \
        any(t.is_floating_point() for t in tensors)


# ---------------------------------------------------------------------------------------------
# The allowlist: ops that are exact or per element. Anything else that runs is uncovered.

VIEWS_AND_INDEXING = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "t", "transpose", "permute", "unsqueeze",
    "squeeze", "slice", "select", "split", "split_with_sizes", "chunk", "narrow", "as_strided", "unbind",
    "alias", "detach", "diagonal", "unfold", "view_as", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense",
    "index", "index_select", "gather", "embedding", "take", "masked_select", "nonzero", "flip", "roll",
    "repeat", "repeat_interleave", "tril", "triu", "slice_scatter", "select_scatter", "diagonal_scatter",
    "as_strided_scatter", "index_copy", "index_fill", "masked_scatter", "scatter", "contiguous",
    "_unsafe_index", "index_put", "_index_put_impl", "movedim", "_reshape_copy", "unflatten", "flatten",
    # backward of a view: the gradient copied into zeros (exact)
    "slice_backward", "select_backward", "diagonal_backward",
})
CREATION = frozenset({
    "empty", "empty_like", "empty_strided", "empty_permuted", "zeros", "zeros_like", "ones", "ones_like",
    "full", "full_like", "arange", "scalar_tensor", "new_empty", "new_empty_strided", "new_zeros", "new_ones",
    "new_full", "eye", "fill", "zero", "resize", "resize_as", "set", "tril_indices", "triu_indices",
})
COPIES_AND_CASTS = frozenset({
    "clone", "copy", "_to_copy", "to", "_copy_from", "_copy_from_and_resize", "cat", "stack",
    "constant_pad_nd", "masked_fill", "where", "_has_compatible_shallow_copy_type", "record_stream",
    # checks that compute nothing
    "_assert_async", "_assert_scalar", "_functional_assert_async", "equal", "is_same_size",
})
# Correctly rounded (one rounding, no FMA) or exact, elementwise.
ELEMENTWISE = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "sqrt", "reciprocal", "square", "maximum", "minimum",
    "fmax", "fmin", "clamp", "clamp_min", "clamp_max", "clip", "relu", "threshold", "threshold_backward",
    "hardtanh", "sign", "sgn", "signbit", "floor", "ceil", "round", "trunc", "frac", "remainder", "fmod",
    "floor_divide", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift",
    "bitwise_right_shift", "logical_and", "logical_or", "logical_xor", "logical_not", "eq", "ne", "lt",
    "le", "gt", "ge", "isnan", "isinf", "isfinite", "isneginf", "isposinf", "isin", "nan_to_num",
    "positive", "copysign",
})
# Exact on any dtype: they select values, never round.
SELECTIONS = frozenset({
    "max", "min", "amax", "amin", "argmax", "argmin", "topk", "sort", "argsort", "kthvalue", "aminmax",
    "_unique2", "unique_dim", "unique_consecutive", "searchsorted", "bucketize",
})
# Exact on integer and bool tensors (HF generate's bookkeeping); uncovered on float.
INTEGER_REDUCTIONS = frozenset({"sum", "cumsum", "cumprod", "prod", "any", "all", "count_nonzero", "mean"})
SAMPLING = frozenset({
    "multinomial", "bernoulli", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
    "randperm", "uniform", "normal", "exponential", "geometric", "cauchy", "log_normal", "random",
    "native_dropout",
})
ATTENTION_HINT = ('scaled-dot-product attention hides its reductions: load Hugging Face models with '
                  'attn_implementation="eager" (e.g. AutoModelForCausalLM.from_pretrained(..., '
                  'attn_implementation="eager"))')


def _has_float(values) -> bool:
    return any(isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) for v in values)


def _flat_tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _flat_tensors(o)]
    return []


def classify(func, args: tuple, kwargs: dict) -> tuple[str, str]:
    """("allowed" | "sampling" | "uncovered", reason) for an op that pk does not serve.

    Decided from the op and its inputs alone, so strict mode can refuse before the op runs.
    """
    name = _base_name(func)
    inputs = _flat_tensors(list(args) + list(kwargs.values()))
    if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "uncovered", ATTENTION_HINT
    if name in SAMPLING:
        return "sampling", "draws random numbers"
    if name in VIEWS_AND_INDEXING:
        if name in ("index_put", "_index_put_impl") and (kwargs.get("accumulate") or
                                                         (len(args) > 3 and args[3])) and _has_float(inputs):
            return "uncovered", "float accumulation (index_put accumulate=True)"
        if name == "scatter" and "reduce" in func._schema.overload_name and _has_float(inputs):
            return "uncovered", "float scatter reduction"
        return "allowed", "view/indexing"
    if name in CREATION or name in COPIES_AND_CASTS:
        return "allowed", "creation/copy/cast"
    if name in VECTOR_PATH_OPS:
        if _pow_is_exact(func, args):
            return "allowed", "elementwise (x * x)"
        if all(t.device.type != "cpu" for t in inputs):
            return "allowed", "elementwise (per element on this device)"
        return "uncovered", "elementwise op outside the vector path (out= variant or broadcast in place)"
    if name in ELEMENTWISE:
        alpha = kwargs.get("alpha", 1)
        if name in ("add", "sub", "rsub") and alpha != 1 and _has_float(inputs):
            return "uncovered", f"{name} with alpha={alpha} (a multiply-add: FMA in one torch path, not the other)"
        return "allowed", "elementwise"
    if name in SELECTIONS:
        return "allowed", "exact selection"
    if not inputs:
        return "allowed", "no tensor inputs (creation)"
    if not _has_float(inputs):
        return "allowed", "integer/bool (exact)"
    if name in INTEGER_REDUCTIONS:
        return "uncovered", "float reduction not served by pk"
    return "uncovered", "not served by pk and not on the allowlist"


# ---------------------------------------------------------------------------------------------
# The mode.


def _example_shape(args: tuple) -> tuple:
    t = next(iter(_flat_tensors(list(args))), None)
    return tuple(t.shape) if t is not None else ()


def _dtype_of(args: tuple, kwargs: dict):
    t = next(iter(_flat_tensors(list(args) + list(kwargs.values()))), None)
    return t.dtype if t is not None else kwargs.get("dtype")


class _MatchedDispatchMode(TorchDispatchMode):
    def __init__(self, report: MatchedModeReport, audit: bool, strict: bool) -> None:
        super().__init__()
        self.report, self.audit, self.strict = report, audit, strict

    def _uncovered(self, func, args, kwargs, reason: str) -> None:
        name = str(func).removeprefix("aten.")
        dtype, shape = _dtype_of(args, kwargs), _example_shape(args)
        if self.strict:
            raise UncoveredOpError(f"matched_mode(strict=True): {name} ({dtype}, shape {list(shape)}) "
                                   f"is not covered by pk: {reason}")
        self.report._add(self.report.uncovered, name, dtype, reason, shape)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "pk":
            # pk's own custom ops (a model that calls pk.linear directly): served as they are.
            self.report.served[str(func)] += 1
            return func(*args, **kwargs)
        # Ops on integer/bool tensors only (HF generate's bookkeeping: sum, mm of masks) are exact:
        # they are never served, only classified.
        handler = SERVED.get(func) if _has_float(_flat_tensors(list(args))) else None
        vector_path = handler is None and _vector_path_applies(func, args)
        if vector_path:
            handler = lambda *a, **k: _vector_path(func, a, k)  # noqa: E731
        if handler is not None:
            try:
                # pk's own torch calls must not re-enter this (or any) mode; no autograd graph here.
                with _disable_current_modes(), torch.no_grad():
                    out = handler(*args, **kwargs)
            except _Decline as why:
                self._uncovered(func, args, kwargs, f"fell back to torch: {why}")
                return func(*args, **kwargs)
            name = str(func).removeprefix("aten.")
            self.report.served[f"{name} (vector path)" if vector_path else name] += 1
            return out
        if self.audit or self.strict:
            verdict, reason = classify(func, args, kwargs)
            if verdict == "uncovered":
                self._uncovered(func, args, kwargs, reason)
            elif verdict == "sampling":
                self.report._add(self.report.sampling, str(func).removeprefix("aten."),
                                 _dtype_of(args, kwargs), reason, _example_shape(args))
        return func(*args, **kwargs)


@contextlib.contextmanager
def matched_mode(audit: bool = False, strict: bool = False) -> Iterator[MatchedModeReport]:
    """Run the enclosed PyTorch code's matmuls, softmaxes, means and norms on pk kernels.

    ``with pk.matched_mode(audit=True) as report: out = model.generate(...)``. Per thread
    and nestable; torch is untouched outside the block. ``audit=True`` classifies every
    other op and lists those neither served nor on the allowlist of exact/per-element ops
    in ``report.uncovered`` (sampling ops apart, in ``report.sampling``); ``strict=True``
    raises ``UncoveredOpError`` on the first one instead. See the module docstring for
    what is served and why.
    """
    if not isinstance(audit, bool):
        raise TypeError(f"audit must be a bool, got {type(audit).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    report = MatchedModeReport()
    with _MatchedDispatchMode(report, audit=audit, strict=strict):
        yield report
