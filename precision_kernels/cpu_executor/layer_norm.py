"""Twins of LayerNorm (kernels/layer_norm.py): ``layer_norm_fwd_kernel``, ``layer_norm_bwd_kernel``.

The interpreter form, per row, every sum a sum of per-block ``tl.sum``s in block order:
mean = sum(x) / n; var = sum(where(mask, x - mean, 0)^2) / n; rstd = 1 / sqrt(var + eps);
y = ((x - mean) * rstd) [* w] [+ b]. Backward with xhat = (x - mean) * rstd and g = dy [* w]:
c1 = sum(g), c2 = sum(where(mask, g * xhat, 0)), dx = (g - (xhat * (c2 / n) + c1 / n)) * rstd, and the
per-program partials of dw = where(mask, dy * xhat, 0) and db = dy over BLOCK_ROWS rows
(``Rows.column_partials``), which ``col_sum_kernel`` (norm.py) adds. HAS_W, HAS_B, WANT_DW, WANT_DB,
BLOCK_ROWS and BLOCK_COLS are followed.
"""

from __future__ import annotations

import numpy as np

from ..kernels.layer_norm import layer_norm_bwd_kernel, layer_norm_fwd_kernel
from . import _rows, twin
from ._rows import ONE, ZERO, Rows


@twin(layer_norm_fwd_kernel)
def layer_norm_fwd_twin(grid, x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, n_rows, n_cols, stride_x, eps,
                        KIND, W_KIND, B_KIND, HAS_W, HAS_B, BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    n = lay.constant(n_cols)
    with np.errstate(all="ignore"):
        x = lay.blocks(x_ptr, KIND, stride_x)
        mean = lay.running_sum(np.sum(x, axis=-1)) / n
        centred = lay.op(np.subtract, x, lay.per_block(mean), "tile", "row")
        d = np.where(lay.mask, centred, ZERO)
        ss = lay.running_sum(np.sum(d * d, axis=-1))
        rstd = ONE / np.sqrt(ss / n + np.float32(eps))
        y = lay.op(np.multiply, centred, lay.per_block(rstd), "tile", "row")
        if HAS_W:
            y = lay.op(np.multiply, y, lay.columns(w_ptr, W_KIND), "tile", "col")
        if HAS_B:
            y = lay.op(np.add, y, lay.columns(b_ptr, B_KIND), "tile", "col")
    lay.store(y_ptr, y, KIND)
    lay.store_vector(mean_ptr, mean)
    lay.store_vector(rstd_ptr, rstd)


@twin(layer_norm_bwd_kernel)
def layer_norm_bwd_twin(grid, x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                        n_rows, n_cols, stride_x, stride_dy, KIND, W_KIND, DY_KIND, HAS_W, WANT_DW, WANT_DB,
                        BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    n = lay.constant(n_cols)
    with np.errstate(all="ignore"):
        x = lay.blocks(x_ptr, KIND, stride_x)
        dy = lay.blocks(dy_ptr, DY_KIND, stride_dy)
        g = lay.op(np.multiply, dy, lay.columns(w_ptr, W_KIND), "tile", "col") if HAS_W else dy
        per_row_rstd = lay.per_block(lay.vector(rstd_ptr, ZERO))
        centred = lay.op(np.subtract, x, lay.per_block(lay.vector(mean_ptr, ZERO)), "tile", "row")
        xhat = lay.op(np.multiply, centred, per_row_rstd, "tile", "row")
        c1_mean = lay.running_sum(np.sum(g, axis=-1)) / n
        gx = lay.op(np.multiply, g, xhat, "tile", "tile")
        c2_mean = lay.running_sum(np.sum(np.where(lay.mask, gx, ZERO), axis=-1)) / n
        fit = lay.op(np.add, lay.op(np.multiply, xhat, lay.per_block(c2_mean), "tile", "row"),
                     lay.per_block(c1_mean), "tile", "row")
        dx = lay.op(np.multiply, lay.op(np.subtract, g, fit, "tile", "tile"), per_row_rstd, "tile", "row")
        if WANT_DW:
            dw = lay.op(np.multiply, dy, xhat, "tile", "tile")
            lay.column_partials(np.where(lay.mask, dw, ZERO), dw_part_ptr)
        if WANT_DB:
            lay.column_partials(dy, db_part_ptr)
    lay.store(dx_ptr, dx, KIND)


def warm() -> None:
    """Compile the rounding store (the rest is numpy). A twin module imports no ops module (ops/_common imports
    this package), so this warms the compiled piece directly."""
    _rows.compile_store()
