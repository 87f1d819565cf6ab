"""The audit's allowlist of exact or per-element ops, and ``classify``: an op pk does not serve is allowed or not.

The allowlist is explicit and the audit fails closed: an op that ran, is not served and is
not on a list here is *uncovered*. The lists: views and indexing, creation, copies and
casts, correctly rounded elementwise arithmetic, exact selections (max, topk, sort, ...),
and reductions that are exact on integer and bool tensors only (HF ``generate``'s
bookkeeping). Sampling ops are listed apart: they draw tokens but produce no scored number.

An op is judged by what it computes, not only by its inputs: integer or bool inputs are exact
only while the result is too. A float ``dtype=`` (``int_tensor.cumsum(0, dtype=torch.float32)``)
or a float result (``torch.logsumexp`` of an integer tensor, ``exp`` of one; read from the op run
on meta tensors) makes it a float op, classified as one. Every ``ELEMENTWISE`` entry gives the
same bits for an element alone and inside a large tensor, in each float dtype on CPU
(``tests/test_audit.py`` runs them all); the rounding divisions, which do not, take the vector
path (``vector_path.py``).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_map

from . import vector_path
from ._common import base_name, flat_tensors, has_float
from .vector_path import pow_is_exact

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
    "_has_same_storage_numel",
})
# Correctly rounded (one rounding, no FMA) or exact, elementwise; ``div`` without a rounding mode
# (with one, and ``floor_divide``, it is on the vector path).
ELEMENTWISE = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "sqrt", "reciprocal", "square", "maximum", "minimum",
    "fmax", "fmin", "clamp", "clamp_min", "clamp_max", "clip", "relu", "threshold", "threshold_backward",
    "hardtanh", "sign", "sgn", "signbit", "floor", "ceil", "round", "trunc", "frac", "remainder", "fmod",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift",
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
ATTENTION_HINT = ('this scaled-dot-product attention op is not served (pk serves SDPA\'s CPU flash op and the '
                  'CUDA flash, efficient and cudnn ops, each with its backward); or load Hugging Face models '
                  'with attn_implementation="eager" (matmul + softmax + matmul, served, but its left-padding '
                  'dependence stays)')


def _arg(func, args: tuple, kwargs: dict, name: str, default):
    """Argument ``name`` of the call, given by keyword or by position (``aten.add.Scalar(x, 2, 3)``: alpha 3)."""
    if name in kwargs:
        return kwargs[name]
    for i, a in enumerate(func._schema.arguments):
        if a.name == name:
            return args[i] if (not a.kwarg_only and i < len(args)) else default
    return default


def _meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


def float_result(func, args: tuple, kwargs: dict) -> bool:
    """Whether the op computes a float result: a float ``dtype=``, else its output run on meta tensors.

    An op without a meta kernel (a data-dependent shape) is taken to keep its inputs' kind.
    """
    dtype = _arg(func, args, kwargs, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point or dtype.is_complex
    try:
        with _disable_current_modes():
            out = func(*tree_map(_meta, list(args)), **tree_map(_meta, dict(kwargs)))
    except Exception:  # noqa: BLE001 - no meta kernel, or arguments torch itself refuses
        return False
    return has_float(flat_tensors(out if isinstance(out, (list, tuple)) else [out]))


def scatter_add_is_exact(func, args: tuple, kwargs: dict) -> bool:
    """Whether a ``scatter_add`` puts each source value alone into a zero slot, as ``gather``'s backward does.

    Each result is then ``0 + x``: exact, whatever the order. Read from the index and the slots' values
    (no two indices of a line alike, every slot written zero), so a scatter that sums does not pass.
    """
    base, dim, index = _arg(func, args, kwargs, "self", None), _arg(func, args, kwargs, "dim", 0), \
        _arg(func, args, kwargs, "index", None)
    if not isinstance(base, torch.Tensor) or not isinstance(index, torch.Tensor) or index.numel() == 0:
        return False
    if index.dim() == 0 or base.dim() == 0:
        return bool(base.reshape(-1)[index.reshape(-1)] == 0)
    d = dim % index.dim()
    with _disable_current_modes():
        n = index.shape[d]
        ordered = index.sort(dim=d).values
        alike = n > 1 and bool((ordered.narrow(d, 1, n - 1) == ordered.narrow(d, 0, n - 1)).any())
        return not alike and bool((base.gather(d, index) == 0).all())


def classify(func, args: tuple, kwargs: dict) -> tuple[str, str]:
    """("allowed" | "sampling" | "uncovered", reason) for an op that pk does not serve.

    Decided from the op, its inputs and its result's dtype (``float_result``, on meta tensors),
    never from running it, so strict mode can refuse before the op runs.
    """
    name = base_name(func)
    inputs = flat_tensors(list(args) + list(kwargs.values()))
    if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "uncovered", ATTENTION_HINT
    if name in SAMPLING:
        return "sampling", "draws random numbers"
    if name in VIEWS_AND_INDEXING:
        if name in ("index_put", "_index_put_impl") and (kwargs.get("accumulate") or
                                                         (len(args) > 3 and args[3])) and has_float(inputs):
            return "uncovered", "float accumulation (index_put accumulate=True)"
        if name == "scatter" and "reduce" in func._schema.overload_name and has_float(inputs):
            return "uncovered", "float scatter reduction"
        return "allowed", "view/indexing"
    if name in CREATION or name in COPIES_AND_CASTS:
        return "allowed", "creation/copy/cast"
    if vector_path.listed(func, kwargs):
        if pow_is_exact(func, args):
            return "allowed", "elementwise (x * x)"
        if not has_float(inputs):
            if not float_result(func, args, kwargs):
                return "allowed", "integer/bool (exact)"
            return "uncovered", (f"{name} of integer/bool inputs has a float result: computed by torch's CPU "
                                 f"kernel, not on the vector path (pass a float tensor to have it served)")
        if all(t.device.type != "cpu" for t in inputs):
            return "allowed", "elementwise (per element on this device)"
        if "out" in func._schema.overload_name:
            return "uncovered", "out= variant of an elementwise op (the vector path serves the functional and " \
                                "in-place forms)"
        return "uncovered", "elementwise op outside the vector path (tensors on several devices)"
    if name in ELEMENTWISE:
        alpha = _arg(func, args, kwargs, "alpha", 1)
        if name in ("add", "sub", "rsub") and alpha != 1 and has_float(inputs):
            return "uncovered", f"{name} with alpha={alpha} (a multiply-add: FMA in one torch path, not the other)"
        return "allowed", "elementwise"
    if name in SELECTIONS:
        return "allowed", "exact selection"
    if name == "scatter_add" and scatter_add_is_exact(func, args, kwargs):
        return "allowed", "scatter_add of one value into each zero slot (gather's backward, exact)"
    if not inputs:
        return "allowed", "no tensor inputs (creation)"
    integer_inputs = not has_float(inputs)
    if integer_inputs and not float_result(func, args, kwargs):
        return "allowed", "integer/bool (exact)"
    of_integers = " of integer/bool inputs (a float dtype or result)" if integer_inputs else ""
    if name in INTEGER_REDUCTIONS or name in ("nansum", "logsumexp", "logcumsumexp"):
        return "uncovered", f"float reduction{of_integers} not served by pk"
    return "uncovered", f"not served by pk and not on the allowlist{of_integers}"
