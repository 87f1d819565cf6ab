"""Twins of RMSNorm (kernels/norm.py): ``rms_norm_fwd_kernel``, ``rms_norm_bwd_kernel`` and the norms'
two-stage column sum ``col_sum_kernel``.

The interpreter form, per row: ss = sum of per-block ``tl.sum(x * x)`` in block order, rstd =
1 / sqrt(ss / n + eps), y = (x * rstd) * w; backward c = sum of per-block ``tl.sum((dy * w) * x)``,
dx = (dy * w) * rstd - x * (rstd^3 * c / n). The weight gradient is the backward's per-program
partial ``tl.sum((dy * x) * rstd, axis=0)`` over its BLOCK_ROWS rows (``Rows.column_partials``: the
kernel's own tiles), then ``col_sum_kernel``: per column block, chunks of BLOCK_ROWS partial rows,
each chunk's ``tl.sum(axis=0)`` added in chunk order. BLOCK_ROWS and BLOCK_COLS are followed.
"""

from __future__ import annotations

import numpy as np

from ..kernels.norm import col_sum_kernel, rms_norm_bwd_kernel, rms_norm_fwd_kernel
from . import _rows, twin
from ._rows import ONE, ZERO, Rows, elements, store_flat


@twin(rms_norm_fwd_kernel)
def rms_norm_fwd_twin(grid, x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, stride_x, eps, KIND, W_KIND,
                      BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    with np.errstate(all="ignore"):
        x = lay.blocks(x_ptr, KIND, stride_x)
        ss = lay.running_sum(np.sum(x * x, axis=-1))
        rstd = ONE / np.sqrt(ss / lay.constant(n_cols) + np.float32(eps))
        y = lay.op(np.multiply, x, lay.per_block(rstd), "tile", "row")
        y = lay.op(np.multiply, y, lay.columns(w_ptr, W_KIND), "tile", "col")
    lay.store(y_ptr, y, KIND)
    lay.store_vector(rstd_ptr, rstd)


@twin(rms_norm_bwd_kernel)
def rms_norm_bwd_twin(grid, x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_part_ptr, n_rows, n_cols, stride_x,
                      stride_dy, KIND, W_KIND, DY_KIND, BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    with np.errstate(all="ignore"):
        x = lay.blocks(x_ptr, KIND, stride_x)
        dy = lay.blocks(dy_ptr, DY_KIND, stride_dy)
        w = lay.columns(w_ptr, W_KIND)
        rstd = lay.vector(rstd_ptr, ZERO)
        g = lay.op(np.multiply, dy, w, "tile", "col")
        c = lay.running_sum(np.sum(lay.op(np.multiply, g, x, "tile", "tile"), axis=-1))
        cube = lay.op(np.multiply, rstd * rstd, rstd, "vec", "vec")
        coef = lay.op(np.multiply, cube, c / lay.constant(n_cols), "vec", "vec")
        per_row_rstd = lay.per_block(rstd)
        dx = lay.op(np.subtract, lay.op(np.multiply, g, per_row_rstd, "tile", "row"),
                    lay.op(np.multiply, x, lay.per_block(coef), "tile", "row"), "tile", "tile")
        dw = lay.op(np.multiply, lay.op(np.multiply, dy, x, "tile", "tile"), per_row_rstd, "tile", "row")
        lay.column_partials(dw, dw_part_ptr)
    lay.store(dx_ptr, dx, KIND)


@twin(col_sum_kernel)
def col_sum_twin(grid, part_ptr, out_ptr, n_parts, n_cols, OUT_KIND, BLOCK_ROWS, BLOCK_COLS, **_):
    parts = elements(part_ptr, (n_parts, n_cols), (n_cols, 1))
    total = np.empty(n_cols, np.float32)
    tile = np.zeros((BLOCK_ROWS, BLOCK_COLS), np.float32)
    with np.errstate(all="ignore"):
        for c0 in range(0, n_cols, BLOCK_COLS):
            width = min(BLOCK_COLS, n_cols - c0)
            acc = np.zeros(BLOCK_COLS, np.float32)
            for start in range(0, n_parts, BLOCK_ROWS):
                rows = min(BLOCK_ROWS, n_parts - start)
                tile[:] = ZERO       # masked lanes load 0.0
                tile[:rows, :width] = parts[start:start + rows, c0:c0 + width]
                acc = acc + np.sum(tile, axis=0)
            total[c0:c0 + width] = acc[:width]
    store_flat(out_ptr, total, OUT_KIND)


def warm() -> None:
    """Compile the rounding store (the rest is numpy). A twin module imports no ops module (ops/_common imports
    this package), so this warms the compiled piece directly."""
    _rows.compile_store()
