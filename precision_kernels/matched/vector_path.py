"""The CPU vector path: elementwise ops whose every element takes torch's SIMD body, whatever the shape.

Why it exists: torch's CPU kernels compute transcendental and multi-rounding elementwise
ops (``VECTOR_PATH_OPS``: silu, exp, rsqrt, tanh, gelu, sin, cos, ...) with different bits
in the SIMD body and in the scalar tail of a loop, and which elements fall in the tail
depends on the tensor's size (measured on this machine: silu fp32 75 of 2,000 elements,
gelu fp32 696, rsqrt fp16/bf16 503-519). So a row's activations could depend on the
batch. Here the inputs are flattened, padded to a multiple of ``LANE_PAD`` elements and
run in chunks of ``CHUNK`` elements (below torch's parallel grain, so one thread runs each
whole chunk): every element goes through the SIMD body, whose lanes are independent, and
the result is torch's vectorised value whatever the shape. On CUDA torch's elementwise
kernels are per-element already and pass through.

Rounding divisions take this path too: ``div`` with ``rounding_mode="trunc"`` or ``"floor"``
and ``floor_divide`` in fp16/bf16 give different results in torch's SIMD body and scalar
tail (measured: 66 of 3,000 fp16 elements for trunc, 18 for floor; bf16 147 and 61),
while plain ``div`` is one correctly rounded division everywhere and stays on torch.

The result keeps the memory layout torch would give it (a transposed or channels-last
input gives a transposed or channels-last output): torch's own output strides, read from the
op run on meta tensors, then filled with the values computed here.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._common import Decline, base_name

aten = torch.ops.aten

# Pad the flattened input to a multiple of this many elements (a multiple of every CPU SIMD
# loop's step: 2 vectors of up to 64 bytes of 16-bit lanes)...
LANE_PAD = 128
# ...and run it in chunks of this many (a multiple of LANE_PAD, below ATen's parallel grain
# of 32768, so no thread boundary cuts a chunk and leaves a scalar tail).
CHUNK = 16384

# Transcendental or multi-rounding elementwise ops whose CPU result can differ between
# torch's SIMD body and its scalar tail (and, for several roundings, FMA contraction in
# the scalar code). In-place forms ("exp_") are covered by the same names.
VECTOR_PATH_OPS = frozenset({
    "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "tanh", "sinh", "cosh",
    "asin", "acos", "atan", "asinh", "acosh", "atanh", "atan2", "sigmoid", "silu", "gelu", "erf", "erfc",
    "erfinv", "softplus", "mish", "elu", "selu", "celu", "logit", "hardswish", "hardsigmoid", "rsqrt",
    "pow", "xlogy", "lerp", "addcmul", "addcdiv", "tanh_backward", "sigmoid_backward", "silu_backward",
    "gelu_backward", "softplus_backward", "elu_backward", "logit_backward", "mish_backward",
    "hardswish_backward", "hardsigmoid_backward", "floor_divide",
})
# Ops that take the vector path only with some arguments: div with a rounding mode.
ROUNDING_DIV = "div"


def listed(func, kwargs: dict | None = None) -> bool:
    """Whether ``func`` with ``kwargs`` is an op of the vector path (``VECTOR_PATH_OPS``, or a rounding ``div``)."""
    name = base_name(func)
    return name in VECTOR_PATH_OPS or (name == ROUNDING_DIV and (kwargs or {}).get("rounding_mode") is not None)


def pow_is_exact(func, args) -> bool:
    """pow(x, 2) is one multiplication in every torch path (correctly rounded): no vector path needed."""
    return func is aten.pow.Tensor_Scalar and isinstance(args[1], numbers.Number) and args[1] == 2


def applies(func, args, kwargs: dict | None = None) -> bool:
    """Whether ``func(*args, **kwargs)`` runs on the vector path: a listed op, not out=, on CPU float tensors."""
    if not listed(func, kwargs) or pow_is_exact(func, args):
        return False
    if "out" in func._schema.overload_name:
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors) and \
        any(t.is_floating_point() for t in tensors)


def run(func, args: tuple, kwargs: dict):
    """Run an elementwise op so that every element takes torch's SIMD body, whatever the shape."""
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        raise Decline("tensor keyword arguments")
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
        raise Decline("in-place op whose output broadcasts")

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
    return _in_torchs_layout(func, args, kwargs, result)


def _in_torchs_layout(func, args: tuple, kwargs: dict, result: torch.Tensor) -> torch.Tensor:
    """``result`` (contiguous) laid out with the strides torch's own op gives its output (elementwise: same values)."""
    if all(a.is_contiguous() for a in args if isinstance(a, torch.Tensor) and a.dim() > 0):
        return result  # torch's output is contiguous too
    meta_args = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
                 if isinstance(a, torch.Tensor) else a for a in args]
    try:
        like = func(*meta_args, **kwargs)
    except (NotImplementedError, RuntimeError):  # no meta kernel: the first full-size input's layout, if dense
        first = next((a for a in args if isinstance(a, torch.Tensor) and a.shape == result.shape), None)
        return result if first is None else torch.empty_like(first, dtype=result.dtype).copy_(result)
    if not isinstance(like, torch.Tensor) or like.shape != result.shape or like.dtype != result.dtype:
        return result
    out = torch.empty_strided(like.shape, like.stride(), dtype=result.dtype, device=result.device)
    return out.copy_(result)
