"""Round-to-nearest-even from fp32 to fp16/bf16 bits, with integer operations and one fp32 addition.

Triton's own downcasts cannot be trusted under the interpreter (its bf16 cast
truncates), so every kernel in the project rounds through these helpers. They use
uint32 arithmetic with constant shift amounts (numpy defines over-wide shifts, LLVM
makes them poison) and one IEEE fp32 addition, so the interpreter and the compiled
kernel agree. Every helper call runs on whole tiles, and each tile operation is a
Python-level step under the interpreter, so they use as few operations as they can;
they were checked against ``torch.Tensor.to`` by hand over fp32 bit patterns (issue 14's
note says which), and ``make test`` keeps hypothesis and edge tables (tests/test_rounding.py).

Under the interpreter only, fp16 is rounded by numpy instead (``NUMPY_FP16_CAST``): Triton
lowers ``x.to(tl.float16)`` there to numpy's ``astype(float16)``, which rounds to nearest
even, subnormals and overflow included, so ``numpy_fp16_bits`` needs 10 tile operations
instead of ~22. Compiled kernels (GPU, and the compile-only check) keep the integer helper.
Both give the same bits for all 2^32 fp32 patterns (benchmarks/exhaustive_rounding.py), and
tests/test_rounding.py compares them on every run. The cost moves with the data: numpy
spends ~65 ns on each lane whose fp16 result is an inexact subnormal or zero (0 < |x| <
2^-14, off the 2^-24 grid: it raises the underflow flag lane by lane), ~25x an ordinary
lane, so tiles full of such values (fp16 probabilities over a large vocabulary) round ~3x
slower than with the integer helper, while the RL step's tiles (few such lanes) round ~30%
faster.
"""

import triton
import triton.language as tl

from ..backend import INTERPRETED
from .specialization import tile_kernel

# A constexpr, so compiled kernels never see the numpy path (only the taken branch is compiled).
NUMPY_FP16_CAST = tl.constexpr(INTERPRETED)


@triton.jit
def fp32_to_bf16_bits(x):
    """fp32 -> bf16 bit pattern (uint32 holding 16 bits), round-to-nearest-even."""
    bits = x.to(tl.uint32, bitcast=True)
    high = bits >> 16
    # Adding 0x7FFF plus the kept lsb rounds half to even; a carry out of the
    # mantissa bumps the exponent, and from 0x7F7F8000 up it lands exactly on inf.
    rounded = (bits + 0x7FFF + (high & 1)) >> 16
    # NaN becomes a quiet NaN with its sign kept.
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return tl.where(is_nan, (high & 0x8000) | 0x7FC0, rounded)


@triton.jit
def fp32_to_fp16_bits(x):
    """fp32 -> fp16 bit pattern (uint32 holding 16 bits), round-to-nearest-even.

    ~20 tile operations (each one is a Python-level step under the interpreter).
    """
    bits = x.to(tl.uint32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    # Normal range (|x| >= 2^-14): rebias the exponent, then drop 13 mantissa bits with
    # ties to even. The carry may bump the exponent: from 65520 up the result reaches
    # inf (0x7C00), and clamping there also sends every larger value and inf to inf.
    # (Below 2^-14 the subtraction wraps around; that lane takes the subnormal value.)
    normal = tl.minimum((mag - (112 << 23) + 0xFFF + ((mag >> 13) & 1)) >> 13, 0x7C00)
    # Subnormal range (|x| < 2^-14): 0.5 + |x| in fp32 has an ulp of 2^-24, the fp16
    # subnormal step, so the fp32 addition itself rounds |x| to a multiple of 2^-24,
    # to nearest even; subtracting 0.5's bits leaves that multiple, the fp16 bits.
    # Exact on every backend: one IEEE fp32 add, and fp32 subnormal inputs (< 2^-126)
    # round to 0 whether or not the hardware flushes them.
    subnormal = (mag.to(tl.float32, bitcast=True) + 0.5).to(tl.uint32, bitcast=True) - 0x3F000000
    out = tl.where(mag < (113 << 23), subnormal, normal)
    # NaN becomes a quiet NaN; the sign is put back last.
    out = tl.where(mag > 0x7F800000, 0x7E00, out)
    return out | ((bits >> 16) & 0x8000)


@triton.jit
def numpy_fp16_bits(x):
    """fp32 -> fp16 bit pattern as int16, the same bits as ``fp32_to_fp16_bits``; interpreter only.

    There ``x.to(tl.float16)`` is numpy's cast, which rounds every finite value and inf to
    nearest even. Two things are fixed around it (10 tile operations in all).
    """
    # numpy warns "overflow encountered in cast" (and spends ~40 ns a lane) when it rounds a
    # finite value to inf, so the lanes that round to +-inf are made inf before the cast:
    # |x| >= 65520, halfway between 65504 and 2^16, where ties-to-even goes up. NaN fails both
    # comparisons and passes through.
    x = tl.where(x >= 65520.0, float("inf"), x)
    x = tl.where(x <= -65520.0, float("-inf"), x)
    bits = x.to(tl.float16).to(tl.int16, bitcast=True)
    # numpy keeps a NaN's payload bits; the integer helper gives the quiet NaN 0x7E00 with the
    # input's sign. The int16 constants stay int16 (a Python int scalar does not widen an
    # integer tensor), and (sign | 0x7FFF) ^ 0x01FF == sign | 0x7E00 for either sign.
    return tl.where(x != x, (bits | 0x7FFF) ^ 0x01FF, bits)


@triton.jit
def round_fp32(x, OUT_KIND: tl.constexpr):
    """Round fp32 values to the output format; returns what to store.

    For fp16/bf16 outputs this is the bit pattern as int16: kernels store it
    through an int16 view of the output, which avoids every interpreter bf16 defect.
    """
    if OUT_KIND == 1:
        if NUMPY_FP16_CAST:
            return numpy_fp16_bits(x)
        else:
            return fp32_to_fp16_bits(x).to(tl.uint16).to(tl.int16, bitcast=True)
    elif OUT_KIND == 2:
        return fp32_to_bf16_bits(x).to(tl.uint16).to(tl.int16, bitcast=True)
    else:
        return x


@triton.jit
def to_fp32(raw, KIND: tl.constexpr):
    """Exact fp32 value of a loaded element. 16-bit formats arrive as int16 bit patterns.

    bf16 is widened by shifting its bits (the interpreter's own bf16 -> fp32
    conversion is wrong for subnormals).
    """
    if KIND == 1:
        return raw.to(tl.float16, bitcast=True).to(tl.float32)
    elif KIND == 2:
        return (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return raw


# Elementwise, so no summation tree can change; n_elements still varies with the batch and is
# left unspecialised like every other kernel's batch-varying argument.
@tile_kernel(batch_args=("n_elements",))
def round_to_kernel(x_ptr, out_ptr, n_elements, OUT_KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise fp32 -> fp16/bf16 bits over a flat contiguous buffer."""
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    # load
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    # round, store
    tl.store(out_ptr + offsets, round_fp32(x, OUT_KIND), mask=mask)

