"""The online log-sum-exp of kernels/lse.py over a whole launch (softmax and token log-probs twins).

Each function is the jit helper of the same name in ``kernels/lse.py``, on blocks laid out by
``_rows.Rows``: per-row values are (rows,) vectors, per-block row values (n_blocks, rows) arrays,
tiles (n_blocks, rows, block_cols). The operations, their order and their operands are the
helpers' own; ``Rows.op`` gives an operation of two possibly-NaN operands the interpreter's NaN.
Operations with an operand that is never NaN (the running max and its reference point, the
count, eps, scale, temperature) are plain numpy.
"""

from __future__ import annotations

import numpy as np

from ._rows import NEG_INF, ONE, ZERO, Rows


def exp_ref(run_max: np.ndarray) -> np.ndarray:
    return np.where(run_max == NEG_INF, ZERO, run_max)


def online_lse(lay: Rows, z: np.ndarray, with_dot: bool):
    """lse_block_update over every block in index order, from lse_init -> (run_max, run_sum, run_dot)."""
    z = np.where(lay.mask, z, NEG_INF)
    maxima = lay.running_max(np.fmax.reduce(z, axis=-1))     # tl.max = np.nanmax = np.fmax.reduce
    old_max, new_max = maxima[:-1], maxima[1:]
    ref = exp_ref(new_max)
    alpha = np.exp(old_max - ref)
    shifted = z - ref[:, :, None]
    e = np.exp(shifted)
    block_sum = np.sum(e, axis=-1)
    old_shift = block_dot = None
    if with_dot:
        old_shift = np.where(old_max == NEG_INF, ZERO, old_max - ref)
        block_dot = np.sum(e * np.where(e > ZERO, shifted, ZERO), axis=-1)   # a NaN e meets 0
    run_sum, run_dot = _fold(_plain, lay.rows, alpha, block_sum, old_shift, block_dot)
    if np.isnan(run_sum).any() or np.isnan(run_dot).any():
        # a NaN anywhere in the fold reaches its result: only then can two NaNs have met
        run_sum, run_dot = _fold(lay.op, lay.rows, alpha, block_sum, old_shift, block_dot)
    return maxima[-1], run_sum, run_dot


def _plain(ufunc, a, b, kind_a, kind_b):
    return ufunc(a, b)


def _fold(op, rows, alpha, block_sum, old_shift, block_dot):
    """The running sums over the blocks: sum = sum * alpha + block sum; dot likewise (lse_block_update)."""
    run_sum = np.zeros(rows, np.float32)
    run_dot = np.zeros(rows, np.float32)
    for b in range(alpha.shape[0]):
        new_sum = op(np.add, op(np.multiply, run_sum, alpha[b], "vec", "vec"), block_sum[b], "vec", "vec")
        if old_shift is not None:
            moved = op(np.add, run_dot, op(np.multiply, old_shift[b], run_sum, "vec", "vec"), "vec", "vec")
            run_dot = op(np.add, op(np.multiply, moved, alpha[b], "vec", "vec"), block_dot[b], "vec", "vec")
        run_sum = new_sum
    return run_sum, run_dot


def lse_finish(lay: Rows, run_sum: np.ndarray, run_dot: np.ndarray, with_dot: bool):
    """-> (log_sum, entropy)."""
    empty = run_sum == ZERO
    safe_sum = np.where(empty, ONE, run_sum)
    log_sum = np.log(safe_sum)
    if not with_dot:
        return log_sum, np.zeros_like(run_sum)
    mean_shift = lay.op(np.divide, run_dot, safe_sum, "vec", "vec")
    return log_sum, np.where(empty, ZERO, lay.op(np.subtract, log_sum, mean_shift, "vec", "vec"))


def probs(lay: Rows, z: np.ndarray, run_max: np.ndarray, run_sum: np.ndarray) -> np.ndarray:
    """kernels/softmax.py ``_probs``: exp(z - ref) / sum, 0 in masked lanes and empty rows."""
    e = np.exp(np.where(lay.mask, z, NEG_INF) - lay.per_block(exp_ref(run_max)))
    return lay.op(np.divide, e, lay.per_block(np.where(run_sum == ZERO, ONE, run_sum)), "tile", "row")
