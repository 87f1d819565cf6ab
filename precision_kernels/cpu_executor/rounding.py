"""Twin of ``round_to_kernel`` (kernels/rounding.py) and the exact fp8 format helpers the fp8 twins share.

``round_to_kernel`` rounds a flat contiguous fp32 buffer elementwise to the bits ``round_fp32`` stores
(OUT_KIND 1 fp16 / 2 bf16 as int16 patterns; 3 e4m3fn, 4 e5m2 overflowing to inf, 5 e5m2 saturating
as uint8 patterns). Elementwise, so no order matters: BLOCK and the grid are ignored, and the buffer is
cut into one contiguous run per thread.

* ``fp8_bits(x, kind)`` is ``fp32_to_fp8_bits`` operation for operation (uint32 arithmetic, the one fp32
  addition that rounds subnormals), with the lanes the kernel computes and then discards by ``tl.where``
  simply not computed here (their uint32 wrap-around never reaches a stored bit).
* ``FP8_TO_FP32[kind]``: ``fp8_bits_to_fp32`` of all 256 patterns, computed once at import by the
  kernel's own integer operations in numpy (what the interpreter runs), so NaN is the kernel's canonical
  0x7FC00000 | sign, never a payload. Twins look fp8 operands up in it.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..kernels.rounding import round_to_kernel
from . import twin
from ._numba import BF16, FP16, _bits_to_fp32, _fp32_bits, flat, rounded, threads

FP8_E4M3FN, FP8_E5M2, FP8_E5M2_SATURATING = 3, 4, 5
# A launch smaller than this runs on one thread: waking the pool costs more than it saves.
PARALLEL_MIN = 1 << 15


def _fp8_table(mantissa: int, bias: int, has_inf: bool) -> np.ndarray:
    """fp8_bits_to_fp32 of every pattern, by the kernel's integer operations in numpy."""
    v = np.arange(256, dtype=np.uint32)
    sign = (v & np.uint32(0x80)) << np.uint32(24)
    exp = (v >> np.uint32(mantissa)) & np.uint32((1 << (7 - mantissa)) - 1)
    man = v & np.uint32((1 << mantissa) - 1)
    normal = ((exp + np.uint32(127 - bias)) << np.uint32(23)) | (man << np.uint32(23 - mantissa))
    subnormal = (man.astype(np.float32) * np.float32(2.0 ** (1 - bias - mantissa))).view(np.uint32)
    mag = np.where(exp == 0, subnormal, normal)
    if has_inf:
        special = exp == (1 << (7 - mantissa)) - 1
        mag = np.where(special, np.where(man == 0, np.uint32(0x7F800000), np.uint32(0x7FC00000)), mag)
    else:
        mag = np.where((v & np.uint32(0x7F)) == 0x7F, np.uint32(0x7FC00000), mag)
    return (mag.astype(np.uint32) | sign).view(np.float32)


# Indexed by KIND (3 e4m3fn, 4 and 5 e5m2); rows 0-2 are unused (those formats are not fp8).
FP8_TO_FP32 = np.zeros((6, 256), np.float32)
FP8_TO_FP32[FP8_E4M3FN] = _fp8_table(3, 7, False)
FP8_TO_FP32[FP8_E5M2] = FP8_TO_FP32[FP8_E5M2_SATURATING] = _fp8_table(2, 15, True)


@numba.njit(cache=True)
def _fp8_bits(x, mantissa, bias, largest):
    """fp32_to_fp8_bits(x, MANTISSA, BIAS, LARGEST): the fp8 pattern (low 8 bits of a uint32)."""
    bits = _fp32_bits(x)
    mag = bits & np.uint32(0x7FFFFFFF)
    drop = np.uint32(23 - mantissa)
    if mag > np.uint32(0x7F800000):
        out = np.uint32(0x7F)
    elif mag < np.uint32((128 - bias) << 23):
        # |x| + 2^(23 + s) has an ulp of the subnormal step 2^s: the fp32 addition rounds |x| to it (RNE)
        step_exp = 1 - bias - mantissa
        big = _bits_to_fp32(np.uint32((127 + 23 + step_exp) << 23))
        out = _fp32_bits(_bits_to_fp32(mag) + big) - np.uint32((127 + 23 + step_exp) << 23)
    else:
        normal = ((mag - np.uint32((127 - bias) << 23) + ((np.uint32(1) << (drop - np.uint32(1))) - np.uint32(1))
                   + ((mag >> drop) & np.uint32(1))) & np.uint32(0xFFFFFFFF)) >> drop
        out = min(normal, np.uint32(largest))
    return out | ((bits >> np.uint32(24)) & np.uint32(0x80))


@numba.njit(cache=True)
def fp8_bits(x, kind):
    """round_fp32(x, kind) for the fp8 kinds (3, 4, 5), as a uint8."""
    if kind == FP8_E4M3FN:
        return np.uint8(_fp8_bits(x, 3, 7, 0x7E))
    if kind == FP8_E5M2:
        return np.uint8(_fp8_bits(x, 2, 15, 0x7C))
    return np.uint8(_fp8_bits(x, 2, 15, 0x7B))


@numba.njit(cache=True, nogil=True)
def _round_run(x, out, lo, hi, kind):
    """out[i] = round_fp32(x[i], kind) for i in [lo, hi); out is int16 (kinds 1, 2) or uint8 (fp8 kinds)."""
    # One loop per format over zero-based slices: each loop body is branch-free after if-conversion, and
    # LLVM vectorises it (indexing from ``lo`` kept the loops scalar, 6x slower).
    xs, outs = x[lo:hi], out[lo:hi]
    if kind == FP8_E4M3FN:
        for i in range(xs.shape[0]):
            outs[i] = np.uint8(_fp8_bits(xs[i], 3, 7, 0x7E))
    elif kind == FP8_E5M2:
        for i in range(xs.shape[0]):
            outs[i] = np.uint8(_fp8_bits(xs[i], 2, 15, 0x7C))
    elif kind == FP8_E5M2_SATURATING:
        for i in range(xs.shape[0]):
            outs[i] = np.uint8(_fp8_bits(xs[i], 2, 15, 0x7B))
    elif kind == BF16:
        for i in range(xs.shape[0]):
            outs[i] = rounded(xs[i], BF16, np.int16(0))
    else:
        for i in range(xs.shape[0]):
            outs[i] = rounded(xs[i], FP16, np.int16(0))


@numba.njit(cache=True, nogil=True, parallel=True)
def _round_parallel(n_threads, x, out, n, kind):
    for t in prange(n_threads):
        _round_run(x, out, n * t // n_threads, n * (t + 1) // n_threads, kind)


def round_flat(x: np.ndarray, out: np.ndarray, n: int, kind: int) -> None:
    """The whole launch: the first n elements of x rounded into out, serial or one run per thread."""
    n_threads = threads() if n >= PARALLEL_MIN else 1
    if n_threads == 1:
        _round_run(x, out, 0, n, kind)
    else:
        _round_parallel(n_threads, x, out, n, kind)


@twin(round_to_kernel)
def round_to_twin(grid, x_ptr, out_ptr, n_elements, OUT_KIND, **_):
    round_flat(flat(x_ptr), flat(out_ptr), n_elements, OUT_KIND)


@numba.njit(cache=True)
def fp8_round_all(x, kind):
    """``fp8_bits`` over a 1-D fp32 array (tests hold it against torch's casts on every pattern)."""
    out = np.empty(x.shape[0], np.uint8)
    for i in range(x.shape[0]):
        out[i] = fp8_bits(x[i], kind)
    return out


def warm() -> None:
    """Compile both output layouts (int16 and uint8 patterns), serial and parallel."""
    x = np.zeros(4, np.float32)
    for out, kind in ((np.zeros(4, np.int16), 1), (np.zeros(4, np.uint8), FP8_E4M3FN)):
        _round_run(x, out, 0, 4, kind)
        if numba.config.NUMBA_NUM_THREADS > 1:
            _round_parallel(2, x, out, 4, kind)
