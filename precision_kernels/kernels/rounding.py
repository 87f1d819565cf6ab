"""Round-to-nearest-even from fp32 to fp16/bf16 bits, with integer operations only.

Triton's own downcasts cannot be trusted under the interpreter (its bf16 cast
truncates), so every kernel in the project rounds through these helpers. They use
uint32 arithmetic with shift amounts clamped to [0, 31] (numpy defines over-wide
shifts, LLVM makes them poison), so the interpreter and the compiled kernel agree.
"""

import triton
import triton.language as tl

from ..registry import register

OUT_FP32: tl.constexpr = tl.constexpr(0)
OUT_FP16: tl.constexpr = tl.constexpr(1)
OUT_BF16: tl.constexpr = tl.constexpr(2)


@triton.jit
def fp32_to_bf16_bits(x):
    """fp32 -> bf16 bit pattern (uint32 holding 16 bits), round-to-nearest-even."""
    bits = x.to(tl.uint32, bitcast=True)
    # Adding 0x7FFF plus the kept lsb rounds half to even; a carry out of the
    # mantissa bumps the exponent, and from 0x7F7F8000 up it lands exactly on inf.
    keep_lsb = (bits >> 16) & 1
    rounded = (bits + 0x7FFF + keep_lsb) >> 16
    # NaN becomes a quiet NaN with its sign kept.
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    quiet_nan = ((bits >> 16) & 0x8000) | 0x7FC0
    return tl.where(is_nan, quiet_nan, rounded)


@triton.jit
def fp32_to_fp16_bits(x):
    """fp32 -> fp16 bit pattern (uint32 holding 16 bits), round-to-nearest-even."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = (bits >> 16) & 0x8000
    mag = bits & 0x7FFFFFFF
    exp32 = mag >> 23
    # Normal range (|x| >= 2^-14): rebias the exponent, then drop 13 mantissa bits
    # with ties to even. The carry may bump the exponent; at 65520 it reaches inf.
    rebased = mag - (112 << 23)
    normal = (rebased + 0xFFF + ((rebased >> 13) & 1)) >> 13
    normal = tl.minimum(normal, 0x7C00)
    # Subnormal range: shift the full significand right by (126 - exp); a shift of
    # 25 or more leaves nothing, and clamping at 31 keeps the shift defined.
    significand = (mag & 0x7FFFFF) | 0x800000
    shift = tl.minimum(tl.maximum(126 - exp32.to(tl.int32), 1), 31).to(tl.uint32)
    kept = significand >> shift
    remainder = significand & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    round_up = (remainder > half) | ((remainder == half) & ((kept & 1) == 1))
    subnormal = kept + round_up.to(tl.uint32)
    out = tl.where(exp32 >= 113, normal, subnormal)
    # inf stays inf; NaN becomes a quiet NaN with its sign kept.
    out = tl.where(mag >= 0x7F800000, 0x7C00, out)
    out = tl.where(mag > 0x7F800000, 0x7E00, out)
    return out | sign


@triton.jit
def round_fp32(x, OUT_KIND: tl.constexpr):
    """Round fp32 values to the output format; returns what to store.

    For fp16/bf16 outputs this is the bit pattern as int16: kernels store it
    through an int16 view of the output, which avoids every interpreter bf16 defect.
    """
    if OUT_KIND == 1:
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


@triton.jit
def to_dot_operand(raw, KIND: tl.constexpr, NATIVE_DOT: tl.constexpr):
    """Operand for tl.dot: native fp16/bf16 on GPU (tensor cores), exact fp32 under the interpreter.

    The interpreter's bf16 tl.dot multiplies raw bit patterns, so it gets fp32.
    """
    if NATIVE_DOT and KIND == 1:
        return raw.to(tl.float16, bitcast=True)
    elif NATIVE_DOT and KIND == 2:
        return raw.to(tl.bfloat16, bitcast=True)
    else:
        return to_fp32(raw, KIND)


@triton.jit
def round_to_kernel(x_ptr, out_ptr, n_elements, OUT_KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise fp32 -> fp16/bf16 bits over a flat contiguous buffer."""
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    # load
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    # round, store
    tl.store(out_ptr + offsets, round_fp32(x, OUT_KIND), mask=mask)


register(
    "round_to", round_to_kernel,
    signature={"x_ptr": "*fp32", "out_ptr": "*i16", "n_elements": "i64"},
    configs=[{"OUT_KIND": 1, "BLOCK": 1024}, {"OUT_KIND": 2, "BLOCK": 1024}],
)
