"""Twin of ``scaled_mm_kernel`` (kernels/fp8_matmul.py), the interpreter form.

Per output element (m, n), what the interpreter computes:

* A[m, k] and B[k, n] are fp8 patterns widened exactly to fp32 (``FP8_TO_FP32``: the kernel's
  ``to_fp32``), A in A_KIND's format and B in B_KIND's; every product is exact.
* K is walked in BLOCK_K blocks in index order; each block's sum starts at +0 and adds the block's
  products one K slice at a time (``tl.sum`` over the product tile's outer K axis), and is added into
  an accumulator that started at +0. Masked lanes past K read the pattern 0 on both operands and add
  0 * 0 = +0 to a sum that started at +0, which changes no bit, so they are skipped.
* Epilogue, each step rounded to fp32: ``acc * scale_a``, then ``* scale_b`` (tensor-wise: element 0;
  ROW_SCALES: scale_a[m], scale_b[n]), then ``+ bias[n]`` widened from BIAS_KIND, then one rounding to
  OUT_KIND (fp32, or fp16/bf16 int16 patterns).

The tile walk is the matmul twin's (ROWS x PANEL output tiles, each by one thread; the inner loop over
a panel's columns is the only vectorised one, never a sum). matmul.py's loops are not imported: numba
caches a function without noticing that a helper in another module changed, so an edit there could
leave this module's cache stale.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..kernels.fp8_matmul import scaled_mm_kernel
from . import twin
from ._numba import BF16, FP16, FP16_TO_FP32, flat, rounded, stack_f32, threads
from .rounding import FP8_TO_FP32

ROWS = 32
PANEL = 64


@numba.njit(cache=True, nogil=True)
def _tiles(first, last, a, b, scale_a, scale_b, bias, c, M, N, K, sam, sak, sbk, sbn, scm, scn,
           a_table, b_table, row_scales, has_bias, out_kind, block_k):
    """Tiles [first, last) of the launch, in tile order (row block, column panel)."""
    n_panels = (N + PANEL - 1) // PANEL
    # columns past N stay 0 in the panel: the block sums run over the full PANEL width (a fixed trip count
    # the compiler vectorises) and the extra lanes are never stored
    panel = np.zeros((block_k, PANEL), np.float32)
    a_row = np.empty(block_k, np.float32)
    block_sum = numba.carray(stack_f32(PANEL), (PANEL,))
    acc = np.empty((ROWS, PANEL), np.float32)
    for tile in range(first, last):
        m0 = (tile // n_panels) * ROWS
        n0 = (tile % n_panels) * PANEL
        rows = min(ROWS, M - m0)
        cols = min(PANEL, N - n0)
        panel[:, cols:] = np.float32(0.0)
        acc[:rows, :cols] = np.float32(0.0)
        for k0 in range(0, K, block_k):
            width = min(block_k, K - k0)
            for j in range(width):
                at = (k0 + j) * sbk + n0 * sbn
                for n in range(cols):
                    panel[j, n] = b_table[b[at + n * sbn]]
            for m in range(rows):
                a_at = (m0 + m) * sam + k0 * sak
                for j in range(width):
                    a_row[j] = a_table[a[a_at + j * sak]]
                for n in range(PANEL):
                    block_sum[n] = np.float32(0.0)
                for j in range(width):
                    a_k = a_row[j]
                    for n in range(PANEL):
                        block_sum[n] += a_k * panel[j, n]
                for n in range(cols):
                    acc[m, n] += block_sum[n]
        for m in range(rows):
            sa = scale_a[m0 + m] if row_scales else scale_a[0]
            c_at = (m0 + m) * scm + n0 * scn
            for n in range(cols):
                value = acc[m, n] * sa
                value = value * (scale_b[n0 + n] if row_scales else scale_b[0])
                if has_bias:
                    value += bias[n0 + n]
                c[c_at + n * scn] = rounded(value, out_kind, c[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def _tiles_parallel(n_threads, tiles, a, b, scale_a, scale_b, bias, c, M, N, K, sam, sak, sbk, sbn, scm, scn,
                    a_table, b_table, row_scales, has_bias, out_kind, block_k):
    """Every tile, in n_threads contiguous runs of tiles (one run per thread; each tile by one thread)."""
    for t in prange(n_threads):
        _tiles(tiles * t // n_threads, tiles * (t + 1) // n_threads, a, b, scale_a, scale_b, bias, c, M, N, K,
               sam, sak, sbk, sbn, scm, scn, a_table, b_table, row_scales, has_bias, out_kind, block_k)


def _widened_bias(bias, kind: int) -> np.ndarray:
    """to_fp32(bias, BIAS_KIND) as an fp32 array (exact; one compiled layout for every bias dtype)."""
    raw = flat(bias)
    if kind == BF16:
        return (raw.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    if kind == FP16:
        return FP16_TO_FP32[raw.view(np.uint16)]
    return raw


@twin(scaled_mm_kernel)
def scaled_mm_twin(grid, a_ptr, b_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, M, N, K, stride_am, stride_ak,
                   stride_bk, stride_bn, stride_cm, stride_cn, A_KIND, B_KIND, ROW_SCALES, HAS_BIAS, BIAS_KIND,
                   OUT_KIND, BLOCK_K, **_):
    tiles = -(-M // ROWS) * -(-N // PANEL)
    bias = _widened_bias(bias_ptr, BIAS_KIND) if HAS_BIAS else np.zeros(0, np.float32)
    args = (flat(a_ptr), flat(b_ptr), flat(scale_a_ptr), flat(scale_b_ptr), bias, flat(c_ptr), M, N, K,
            stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, FP8_TO_FP32[A_KIND],
            FP8_TO_FP32[B_KIND], bool(ROW_SCALES), bool(HAS_BIAS), OUT_KIND, BLOCK_K)
    n_threads = min(threads(), tiles)
    if n_threads == 1:
        _tiles(0, tiles, *args)
    else:
        _tiles_parallel(n_threads, tiles, *args)


def warm() -> None:
    """Compile both output layouts (fp32 values, int16 patterns), serial and parallel."""
    m, n, k = 2, PANEL + 1, 3                    # two column panels: two tiles
    a, b = np.zeros(m * k, np.uint8), np.zeros(k * n, np.uint8)
    scale, bias = np.ones(1, np.float32), np.zeros(n, np.float32)
    for c, out_kind in ((np.zeros(m * n, np.float32), 0), (np.zeros(m * n, np.int16), BF16)):
        args = (a, b, scale, scale, bias, c, m, n, k, k, 1, n, 1, n, 1, FP8_TO_FP32[3], FP8_TO_FP32[4], False, True,
                out_kind, 32)
        _tiles(0, 2, *args)
        if numba.config.NUMBA_NUM_THREADS > 1:
            _tiles_parallel(2, 2, *args)
