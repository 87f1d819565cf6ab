"""Twins of softmax and log-softmax (kernels/softmax.py): ``softmax_fwd_kernel``, ``softmax_bwd_kernel``.

Per row, the interpreter form: z = to_fp32(x) * scale; the online log-sum-exp of kernels/lse.py
over blocks of BLOCK_COLS in index order (``_lse.online_lse``); then y per block, rounded once.
The backward's row sum (sum(dy * p) or sum(dy)) is a sum of per-block ``tl.sum``s in block order.
BLOCK_COLS, KIND, DY_KIND and LOG are followed; BLOCK_ROWS only where it can show (``_rows``).
"""

from __future__ import annotations

import numpy as np

from ..kernels.softmax import softmax_bwd_kernel, softmax_fwd_kernel
from . import _rows, twin
from ._lse import exp_ref, lse_finish, online_lse, probs
from ._rows import NEG_INF, ZERO, Rows


@twin(softmax_fwd_kernel)
def softmax_fwd_twin(grid, x_ptr, y_ptr, max_ptr, sum_ptr, n_rows, n_cols, stride_x, scale, KIND, LOG,
                     BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    with np.errstate(all="ignore"):
        z = lay.blocks(x_ptr, KIND, stride_x) * np.float32(scale)
        run_max, run_sum, run_dot = online_lse(lay, z, with_dot=False)
        if LOG:
            log_sum, _ = lse_finish(lay, run_sum, run_dot, with_dot=False)
            y = lay.op(np.subtract, z - lay.per_block(exp_ref(run_max)), lay.per_block(log_sum), "tile", "row")
        else:
            y = probs(lay, z, run_max, run_sum)
    lay.store(y_ptr, y, KIND)
    lay.store_vector(max_ptr, run_max)
    lay.store_vector(sum_ptr, run_sum)


@twin(softmax_bwd_kernel)
def softmax_bwd_twin(grid, x_ptr, dy_ptr, dx_ptr, max_ptr, sum_ptr, n_rows, n_cols, stride_x, stride_dy, scale,
                     KIND, DY_KIND, LOG, BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    scale = np.float32(scale)
    with np.errstate(all="ignore"):
        dy = lay.blocks(dy_ptr, DY_KIND, stride_dy)
        z = lay.blocks(x_ptr, KIND, stride_x) * scale
        p = probs(lay, z, lay.vector(max_ptr, NEG_INF), lay.vector(sum_ptr, ZERO))
        summed = dy if LOG else lay.op(np.multiply, dy, p, "tile", "tile")
        acc = lay.per_block(lay.running_sum(np.sum(summed, axis=-1)))
        if LOG:
            dx = lay.op(np.subtract, dy, lay.op(np.multiply, p, acc, "tile", "row"), "tile", "tile")
        else:
            dx = lay.op(np.multiply, p, lay.op(np.subtract, dy, acc, "tile", "row"), "tile", "tile")
        dx = dx * scale
    lay.store(dx_ptr, dx, KIND)


def warm() -> None:
    """Compile the rounding store (the rest is numpy). A twin module imports no ops module (ops/_common imports
    this package), so this warms the compiled piece directly."""
    _rows.compile_store()
