"""Round-to-nearest-even from fp32 to fp16/bf16/fp8 bits, with integer operations and one fp32 addition.

Triton's own downcasts cannot be trusted under the interpreter (its bf16 cast
truncates), so every kernel in the project rounds through these helpers. They use
uint32 arithmetic with constant shift amounts (numpy defines over-wide shifts, LLVM
makes them poison) and one IEEE fp32 addition, so the interpreter and the compiled
kernel agree. Every helper call runs on whole tiles, and each tile operation is a
Python-level step under the interpreter, so they use as few operations as they can;
they were checked against ``torch.Tensor.to`` by hand over all 2^32 fp32 bit patterns
(benchmarks/exhaustive_rounding.py), and ``make test`` keeps hypothesis and edge tables
(tests/test_rounding.py). (numpy's own fp16 cast, 10 tile operations with the NaN and overflow
fix-ups, was tried under the interpreter: same bits, ~3% of an RL step faster, but ~30x slower per
lane on tiles of inexact fp16 subnormals, e.g. fp16 probabilities over a large vocabulary; not kept.)
"""

import triton
import triton.language as tl

from .formats import FP8_E4M3FN, FP8_E5M2
from .specialization import tile_kernel

# An output code only (rounding, not storage): e5m2 bits whose overflow saturates at +-57344.
FP8_E5M2_SATURATING = tl.constexpr(5)


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
def fp32_to_fp8_bits(x, MANTISSA: tl.constexpr, BIAS: tl.constexpr, LARGEST: tl.constexpr):
    """fp32 -> fp8 bit pattern (uint32 holding 8 bits), round-to-nearest-even, as the fp16 helper does it.

    ``MANTISSA`` stored mantissa bits and exponent ``BIAS`` (e4m3fn: 3, 7; e5m2: 2, 15). ``LARGEST`` is
    the pattern every value whose rounding lands above it becomes, inf included: 0x7E (448) makes
    e4m3fn saturate, 0x7C (inf) makes e5m2 overflow to inf, 0x7B (57344) makes it saturate.
    NaN becomes 0x7F with the sign kept.
    """
    bits = x.to(tl.uint32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    drop: tl.constexpr = 23 - MANTISSA
    rebias: tl.constexpr = (127 - BIAS) << 23
    # Normal range: rebias the exponent, drop the low mantissa bits with ties to even; a carry out of
    # the mantissa bumps the exponent. Clamping at LARGEST also catches inf and every larger value.
    # (Below the smallest normal the subtraction wraps around; those lanes take the subnormal value.)
    normal = tl.minimum((mag - rebias + ((1 << (drop - 1)) - 1) + ((mag >> drop) & 1)) >> drop, LARGEST)
    # Subnormal range: the fp32 sum |x| + 2^(23 + s), where 2^s is the format's subnormal step, has an
    # ulp of exactly 2^s, so the IEEE addition itself rounds |x| to a multiple k * 2^s, to nearest even,
    # and the sum's bits minus the constant's bits are k: the fp8 pattern (k = 2^MANTISSA, the smallest
    # normal, comes out right too). fp32 subnormal inputs round to 0 whether or not the hardware flushes.
    step_exp: tl.constexpr = 1 - BIAS - MANTISSA
    big: tl.constexpr = 2.0 ** (23 + step_exp)
    big_bits: tl.constexpr = (127 + 23 + step_exp) << 23
    subnormal = (mag.to(tl.float32, bitcast=True) + big).to(tl.uint32, bitcast=True) - big_bits
    out = tl.where(mag < ((128 - BIAS) << 23), subnormal, normal)
    out = tl.where(mag > 0x7F800000, 0x7F, out)
    return out | ((bits >> 24) & 0x80)


@triton.jit
def fp8_bits_to_fp32(raw, MANTISSA: tl.constexpr, BIAS: tl.constexpr, HAS_INF: tl.constexpr):
    """Exact fp32 value of fp8 bit patterns (any integer tile holding the byte), with integer operations.

    Normal patterns get their fp32 bits by rebiasing the exponent; subnormals are their mantissa
    times the subnormal step (an exact product of normal fp32 numbers, so no backend's flushing of
    subnormals can touch it). e5m2's exponent field 31 is inf (mantissa 0) or NaN; e4m3fn's 0x7F is NaN.
    """
    v = raw.to(tl.uint32) & 0xFF
    sign = (v & 0x80) << 24
    exp = (v >> MANTISSA) & ((1 << (7 - MANTISSA)) - 1)
    man = v & ((1 << MANTISSA) - 1)
    normal = ((exp + (127 - BIAS)) << 23) | (man << (23 - MANTISSA))
    step: tl.constexpr = 2.0 ** (1 - BIAS - MANTISSA)
    subnormal = (man.to(tl.float32) * step).to(tl.uint32, bitcast=True)
    mag = tl.where(exp == 0, subnormal, normal)
    if HAS_INF:
        special = exp == (1 << (7 - MANTISSA)) - 1
        mag = tl.where(special, tl.where(man == 0, 0x7F800000, 0x7FC00000), mag)
    else:
        mag = tl.where((v & 0x7F) == 0x7F, 0x7FC00000, mag)
    return (mag | sign).to(tl.float32, bitcast=True)


@triton.jit
def round_fp32(x, OUT_KIND: tl.constexpr):
    """Round fp32 values to the output format; returns what to store.

    For fp16/bf16 outputs this is the bit pattern as int16: kernels store it
    through an int16 view of the output, which avoids every interpreter bf16 defect.
    fp8 outputs (3: e4m3fn, saturating; 4: e5m2, overflow to inf; 5: e5m2, saturating)
    are uint8 patterns, stored through a uint8 view.
    """
    if OUT_KIND == 1:
        return fp32_to_fp16_bits(x).to(tl.uint16).to(tl.int16, bitcast=True)
    elif OUT_KIND == 2:
        return fp32_to_bf16_bits(x).to(tl.uint16).to(tl.int16, bitcast=True)
    elif OUT_KIND == FP8_E4M3FN:
        return fp32_to_fp8_bits(x, 3, 7, 0x7E).to(tl.uint8)
    elif OUT_KIND == FP8_E5M2:
        return fp32_to_fp8_bits(x, 2, 15, 0x7C).to(tl.uint8)
    elif OUT_KIND == FP8_E5M2_SATURATING:
        return fp32_to_fp8_bits(x, 2, 15, 0x7B).to(tl.uint8)
    else:
        return x


@triton.jit
def to_fp32(raw, KIND: tl.constexpr):
    """Exact fp32 value of a loaded element. 16-bit formats arrive as int16 bit patterns.

    bf16 is widened by shifting its bits (the interpreter's own bf16 -> fp32
    conversion is wrong for subnormals). fp8 (3: e4m3fn, 4 and 5: e5m2) arrives as uint8
    patterns and is widened by integer operations.
    """
    if KIND == 1:
        return raw.to(tl.float16, bitcast=True).to(tl.float32)
    elif KIND == 2:
        return (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif KIND == FP8_E4M3FN:
        return fp8_bits_to_fp32(raw, 3, 7, False)
    elif KIND == FP8_E5M2 or KIND == FP8_E5M2_SATURATING:
        return fp8_bits_to_fp32(raw, 2, 15, True)
    else:
        return raw


# Elementwise, so no summation tree can change; n_elements still varies with the batch and is
# left unspecialised like every other kernel's batch-varying argument.
@tile_kernel(batch_args=("n_elements",))
def round_to_kernel(x_ptr, out_ptr, n_elements, OUT_KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise fp32 -> fp16/bf16 bits (int16 output view) or fp8 bits (uint8 view) over a flat contiguous
    buffer; OUT_KIND as in ``round_fp32``."""
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    # load
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    # round, store
    tl.store(out_ptr + offsets, round_fp32(x, OUT_KIND), mask=mask)


