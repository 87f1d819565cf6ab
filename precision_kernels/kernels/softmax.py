"""Row softmax and log-softmax of ``x * scale``, on the online log-sum-exp of ``kernels/lse.py``.

Masking and empty rows follow the contract in ``lse.py``: a fully masked row gives zeros
(softmax) or -inf (log-softmax); its gradient is 0 (softmax) or ``scale * dy`` (log-softmax).
"""

import triton
import triton.language as tl

from .lse import exp_ref, lse_block_update, lse_finish, lse_init
from .rounding import round_fp32, to_fp32
from .specialization import row_kernel


@triton.jit
def _probs(z, mask, run_max, run_sum):
    """softmax(z) in fp32 from the final state: exp(z - ref) / sum (0 for an empty row or masked lane; NaN for
    every lane of a row with a NaN or +inf entry, whose sum is NaN)."""
    ref = tl.where(run_max == float("-inf"), 0.0, run_max)  # exp_ref, inlined
    e = tl.exp(tl.where(mask, z, float("-inf")) - ref[:, None])
    return tl.div_rn(e, tl.where(run_sum == 0.0, 1.0, run_sum)[:, None])


# ----------------------------------------------------------------------------------------
# softmax / log_softmax
# ----------------------------------------------------------------------------------------


@row_kernel(batch_args=("n_rows",))
def softmax_fwd_kernel(x_ptr, y_ptr, max_ptr, sum_ptr, n_rows, n_cols, stride_x, scale,
                       KIND: tl.constexpr, LOG: tl.constexpr,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """softmax (LOG=False) or log_softmax (LOG=True) of ``x * scale`` along rows of length n_cols.

    Writes y (n_rows, n_cols) contiguous, and the row state (max, sum) for the backward.
    """
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    y_rows = y_ptr + rows * n_cols
    # pass 1: running max and sum over the blocks, in index order
    run_max, run_sum, run_dot = lse_init(BLOCK_ROWS)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        raw = tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0)
        z = to_fp32(raw, KIND) * scale
        run_max, run_sum, run_dot = lse_block_update(run_max, run_sum, run_dot, z, mask, False)
    log_sum, _ = lse_finish(run_max, run_sum, run_dot, False)
    ref = exp_ref(run_max)
    # pass 2: normalise, round, store
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        raw = tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0)
        z = to_fp32(raw, KIND) * scale
        if LOG:
            # an empty row has z = -inf, ref = 0, log_sum = 0: y = -inf
            y = (z - ref[:, None]) - log_sum[:, None]
        else:
            y = _probs(z, mask, run_max, run_sum)
        tl.store(y_rows[:, None] + cols[None, :], round_fp32(y, KIND), mask=mask)
    tl.store(max_ptr + rows, run_max, mask=row_mask)
    tl.store(sum_ptr + rows, run_sum, mask=row_mask)


@row_kernel(batch_args=("n_rows",))
def softmax_bwd_kernel(x_ptr, dy_ptr, dx_ptr, max_ptr, sum_ptr, n_rows, n_cols, stride_x, stride_dy, scale,
                       KIND: tl.constexpr, DY_KIND: tl.constexpr, LOG: tl.constexpr,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Gradient of softmax/log_softmax(x * scale), recomputing p in fp32 from x and the row state.

    softmax:     dx = scale * p * (dy - sum(dy * p))
    log_softmax: dx = scale * (dy - p * sum(dy))
    """
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    dy_rows = dy_ptr + rows * stride_dy
    dx_rows = dx_ptr + rows * n_cols
    run_max = tl.load(max_ptr + rows, mask=row_mask, other=float("-inf"))
    run_sum = tl.load(sum_ptr + rows, mask=row_mask, other=0.0)
    # pass 1: sum(dy * p) or sum(dy), blocks in index order
    acc = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        dy = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        if LOG:
            acc += tl.sum(dy, axis=1)
        else:
            z = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND) * scale
            acc += tl.sum(dy * _probs(z, mask, run_max, run_sum), axis=1)
    # pass 2: dx
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        dy = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        z = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND) * scale
        p = _probs(z, mask, run_max, run_sum)
        if LOG:
            dx = (dy - p * acc[:, None]) * scale
        else:
            dx = (p * (dy - acc[:, None])) * scale
        tl.store(dx_rows[:, None] + cols[None, :], round_fp32(dx, KIND), mask=mask)
