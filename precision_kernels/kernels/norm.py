"""RMSNorm forward and backward: fixed-block row reductions in fp32, no atomics.

Forward, per row: ``ss = sum x^2`` over blocks of BLOCK_COLS in index order,
``rstd = 1 / sqrt(ss / n + eps)`` (IEEE sqrt and divisions), ``y = (x * rstd) * w`` rounded once to x's dtype.

Backward, per row (``c = sum dy * w * x``):
``dx = (dy * w) * rstd - x * (rstd^3 * c / n)``. The weight gradient
``dw = sum_rows dy * x * rstd`` is reduced deterministically in two stages: each
program writes the sum over its own BLOCK_ROWS rows to a partials buffer
(program-private row, written once), then ``col_sum_kernel`` adds the partials in
index order (chunks of BLOCK_ROWS partial rows, chunks in order).
"""

import triton.language as tl

from .rounding import round_fp32, to_fp32
from .specialization import row_kernel


@row_kernel(batch_args=("n_rows",))
def rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, stride_x, eps,
                        KIND: tl.constexpr, W_KIND: tl.constexpr,
                        BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    y_rows = y_ptr + rows * n_cols
    # pass 1: sum of squares, blocks in index order
    ss = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        ss += tl.sum(x * x, axis=1)
    # rsqrt as two IEEE roundings (sqrt_rn, div_rn): the interpreter's own rsqrt is 1/np.sqrt,
    # and the GPU's tl.rsqrt is an approximation (rsqrt.approx.ftz)
    n = tl.full((BLOCK_ROWS,), n_cols, tl.float32)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(ss, n) + eps))
    # pass 2: scale, weight, round, store
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
        y = (x * rstd[:, None]) * w[None, :]
        tl.store(y_rows[:, None] + cols[None, :], round_fp32(y, KIND), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@row_kernel(batch_args=("n_rows",))
def rms_norm_bwd_kernel(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_part_ptr, n_rows, n_cols, stride_x, stride_dy,
                        KIND: tl.constexpr, W_KIND: tl.constexpr, DY_KIND: tl.constexpr,
                        BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """dx for BLOCK_ROWS rows, and this program's partial weight gradient (one row of dw_part)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    dy_rows = dy_ptr + rows * stride_dy
    dx_rows = dx_ptr + rows * n_cols
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    # pass 1: c = sum(dy * w * x), blocks in index order
    c = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        dy = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
        c += tl.sum((dy * w[None, :]) * x, axis=1)
    coef = ((rstd * rstd) * rstd) * tl.div_rn(c, tl.full((BLOCK_ROWS,), n_cols, tl.float32))
    # pass 2: dx, and the weight-gradient partial over this program's rows
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        dy = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
        dx = (dy * w[None, :]) * rstd[:, None] - x * coef[:, None]
        tl.store(dx_rows[:, None] + cols[None, :], round_fp32(dx, KIND), mask=mask)
        dw = tl.sum((dy * x) * rstd[:, None], axis=0)
        tl.store(dw_part_ptr + pid * n_cols + cols, dw, mask=col_mask)


@row_kernel(batch_args=("n_parts",))  # one partial row per row block
def col_sum_kernel(part_ptr, out_ptr, n_parts, n_cols, OUT_KIND: tl.constexpr,
                   BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """out[c] = sum over p of part[p, c], in index order (chunks of BLOCK_ROWS rows, chunks in order)."""
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_mask = cols < n_cols
    acc = tl.zeros((BLOCK_COLS,), tl.float32)
    for start in range(0, n_parts, BLOCK_ROWS):
        parts = start + tl.arange(0, BLOCK_ROWS).to(tl.int64)
        mask = (parts < n_parts)[:, None] & col_mask[None, :]
        acc += tl.sum(tl.load(part_ptr + parts[:, None] * n_cols + cols[None, :], mask=mask, other=0.0), axis=0)
    tl.store(out_ptr + cols, round_fp32(acc, OUT_KIND), mask=col_mask)
