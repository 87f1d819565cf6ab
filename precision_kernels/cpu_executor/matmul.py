"""Twins of the matmul family (kernels/matmul.py): ``matmul_kernel`` (2-D, linear with bias, both
gradients through strides, engine split-K) and ``bmm_kernel`` (batched).

The interpreter form's arithmetic, per output element (b, m, n):

* a K range [lo, hi) is walked in blocks of BLOCK_K from lo, in index order; each block's sum
  starts at +0 and adds the block's products a[k] * b[k] (each rounded to fp32) one K slice at a
  time (numpy reduces the product tile's outer K axis slice by slice), and is then added into
  an accumulator that started at +0. Masked lanes past hi add 0 * 0 = +0, which changes no sum
  that started at +0, so they are skipped here.
* SPLITS == 1: the range is [0, K) and its accumulator is the total. SPLITS > 1 (engine): chunk s
  is [s * k_chunk, min((s + 1) * k_chunk, K)); the total starts at +0 and adds each chunk's
  accumulator rounded to the storage format and widened back, in chunk order.
* the bias (widened) is added in fp32; the total is rounded once and stored.

The twin computes (row block x column panel) tiles, each by one thread: every output element
gets exactly that sequence of fp32 operations. Vectorised only across the columns of a panel
(independent outputs), never across a sum. Free tiles (BLOCK_M, BLOCK_N, BLOCK_BATCH, GROUP_M)
and the grid change no bit and are ignored; BLOCK_K, SPLITS, k_chunk and KIND are followed.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..kernels.matmul import bmm_kernel, matmul_kernel
from . import twin
from ._numba import FP16_TO_FP32, flat, round_to_fp32, rounded, stack_f32, threads, widen16

# A tile: ROWS output rows by PANEL output columns; a K block of the panel's B columns is widened
# once into a (BLOCK_K, PANEL) buffer and reused by every row of the tile.
ROWS = 32
PANEL = 64


@numba.njit(cache=True, nogil=True)
def _pack_panel(panel, b, at, sbk, sbn, width, cols, kind, table):
    """panel[j, n] = widened B[k0 + j, n0 + n] (``at``: where B[k0, n0] is), read along B's unit stride."""
    if sbn == 1:
        for j in range(width):
            row = at + j * sbk
            for n in range(cols):
                panel[j, n] = widen16(b[row + n], kind, table)
    else:
        for j in range(width):
            for n in range(cols):
                panel[j, n] = widen16(b[at + j * sbk + n * sbn], kind, table)


@numba.njit(cache=True, nogil=True)
def _tiles(first, last, a, b, bias, c, M, N, K, k_chunk, sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
           kind, has_bias, splits, block_k, table):
    """Tiles [first, last) of the launch, in tile order (batch item, row block, column panel)."""
    m_blocks = (M + ROWS - 1) // ROWS
    n_panels = (N + PANEL - 1) // PANEL
    # columns past N stay 0 in the panel: the block sums run over the whole PANEL width (a fixed trip
    # count the compiler vectorises) and the extra lanes are never stored
    panel = np.zeros((block_k, PANEL), np.float32)
    a_row = np.empty(block_k, np.float32)
    block_sum = numba.carray(stack_f32(PANEL), (PANEL,))
    acc = np.empty((ROWS, PANEL), np.float32)
    total = np.empty((ROWS, PANEL), np.float32)
    for tile in range(first, last):
        item = tile // (m_blocks * n_panels)
        m0 = ((tile // n_panels) % m_blocks) * ROWS
        n0 = (tile % n_panels) * PANEL
        rows = min(ROWS, M - m0)
        cols = min(PANEL, N - n0)
        panel[:, cols:] = np.float32(0.0)
        total[:rows, :cols] = np.float32(0.0)
        for split in range(splits):
            lo = split * k_chunk if splits > 1 else 0
            hi = min(lo + k_chunk, K) if splits > 1 else K
            acc[:rows, :cols] = np.float32(0.0)
            for k0 in range(lo, hi, block_k):
                width = min(block_k, hi - k0)
                _pack_panel(panel, b, item * sbb + k0 * sbk + n0 * sbn, sbk, sbn, width, cols, kind, table)
                for m in range(rows):
                    a_at = item * sab + (m0 + m) * sam + k0 * sak
                    for j in range(width):
                        a_row[j] = widen16(a[a_at + j * sak], kind, table)
                    for n in range(PANEL):
                        block_sum[n] = np.float32(0.0)
                    for j in range(width):
                        a_k = a_row[j]
                        for n in range(PANEL):
                            block_sum[n] += a_k * panel[j, n]
                    for n in range(cols):
                        acc[m, n] += block_sum[n]
            if splits == 1:
                total[:rows, :cols] = acc[:rows, :cols]
            else:
                for m in range(rows):
                    for n in range(cols):
                        total[m, n] += round_to_fp32(acc[m, n], kind)
        for m in range(rows):
            c_at = item * scb + (m0 + m) * scm + n0 * scn
            for n in range(cols):
                value = total[m, n]
                if has_bias:
                    value += widen16(bias[n0 + n], kind, table)
                c[c_at + n * scn] = rounded(value, kind, c[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def _tiles_parallel(n_threads, tiles, a, b, bias, c, M, N, K, k_chunk, sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
                    kind, has_bias, splits, block_k, table):
    """Every tile, in n_threads contiguous runs of tiles (one run per thread; each tile by one thread)."""
    for t in prange(n_threads):
        _tiles(tiles * t // n_threads, tiles * (t + 1) // n_threads, a, b, bias, c, M, N, K, k_chunk,
               sab, sam, sak, sbb, sbk, sbn, scb, scm, scn, kind, has_bias, splits, block_k, table)


def _run(batch, a, b, bias, c, M, N, K, k_chunk, strides, kind, has_bias, splits, block_k):
    tiles = batch * -(-M // ROWS) * -(-N // PANEL)
    args = (flat(a), flat(b), flat(bias), flat(c), M, N, K, k_chunk, *strides, kind, has_bias, splits, block_k,
            FP16_TO_FP32)
    n_threads = min(threads(), tiles)
    if n_threads == 1:
        _tiles(0, tiles, *args)
    else:
        _tiles_parallel(n_threads, tiles, *args)


@twin(matmul_kernel)
def matmul_twin(grid, a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, k_chunk, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, KIND, HAS_BIAS, SPLITS, BLOCK_K, **_):
    strides = (0, stride_am, stride_ak, 0, stride_bk, stride_bn, 0, stride_cm, stride_cn)
    _run(1, a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, k_chunk, strides, KIND, bool(HAS_BIAS), SPLITS, BLOCK_K)


@twin(bmm_kernel)
def bmm_twin(grid, a_ptr, b_ptr, c_ptr, BATCH, M, N, K, k_chunk, stride_ab, stride_am, stride_ak, stride_bb,
             stride_bk, stride_bn, stride_cb, stride_cm, stride_cn, KIND, SPLITS, BLOCK_K, **_):
    strides = (stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_cb, stride_cm, stride_cn)
    _run(BATCH, a_ptr, b_ptr, c_ptr, c_ptr, M, N, K, k_chunk, strides, KIND, False, SPLITS, BLOCK_K)


def warm() -> None:
    """Compile every variant the family launches: fp32 and int16 (fp16/bf16) operands, serial and parallel.

    Calls the entry points directly (a twin module imports no ops module: ops/_common imports this package).
    """
    m, n, k = 2, PANEL + 1, 3                    # two column panels: two tiles
    for dtype in (np.float32, np.int16):
        a, b, bias, c = np.zeros(m * k, dtype), np.zeros(k * n, dtype), np.zeros(n, dtype), np.zeros(m * n, dtype)
        strides = (0, k, 1, 0, n, 1, 0, n, 1)
        args = (a, b, bias, c, m, n, k, k, *strides, int(dtype == np.int16), True, 1, 32, FP16_TO_FP32)
        _tiles(0, 2, *args)
        if numba.config.NUMBA_NUM_THREADS > 1:
            _tiles_parallel(2, 2, *args)
