"""Round-to-nearest-even from fp32 to fp16/bf16 bits, with integer operations and one fp32 addition.

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

from .specialization import tile_kernel


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

