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
    "hardswish_backward", "hardsigmoid_backward",
})


def pow_is_exact(func, args) -> bool:
    """pow(x, 2) is one multiplication in every torch path (correctly rounded): no vector path needed."""
    return func is aten.pow.Tensor_Scalar and isinstance(args[1], numbers.Number) and args[1] == 2


def applies(func, args) -> bool:
    """Whether ``func(*args)`` runs on the vector path: a listed op, not an out= variant, on CPU float tensors."""
    if base_name(func) not in VECTOR_PATH_OPS or pow_is_exact(func, args):
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
    return result
