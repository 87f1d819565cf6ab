"""LayerNorm forward and backward: fixed-block, two-pass row statistics in fp32, no atomics.

Forward, per row of n elements (blocks of BLOCK_COLS, always in index order):

* pass 1: ``mean = sum(x) / n``;
* pass 2: ``var = sum((x - mean)^2) / n`` (two-pass: the centred sum keeps its accuracy
  when |mean| >> std, unlike ``E[x^2] - mean^2``), ``rstd = 1 / sqrt(var + eps)`` as two
  IEEE roundings (``sqrt_rn``, ``div_rn``);
* pass 3: ``y = ((x - mean) * rstd) * w + b``, rounded once to x's dtype.

``mean`` and ``rstd`` are stored (fp32) for the backward. Weight and bias are optional
(``HAS_W`` / ``HAS_B``): without them the kernel neither loads nor applies them. The
backward writes weight/bias-gradient partials only when asked (``WANT_DW`` / ``WANT_DB``).

Backward, per row, with ``xhat = (x - mean) * rstd`` recomputed exactly as in the forward
and ``g = dy * w``: ``c1 = sum g``, ``c2 = sum g * xhat`` (pass 1), then
``dx = (g - (xhat * (c2 / n) + c1 / n)) * rstd`` (pass 2). The weight and bias gradients
``dw = sum_rows dy * xhat`` and ``db = sum_rows dy`` are reduced in two fixed-order
stages: each program writes the sum over its own BLOCK_ROWS rows to a partials buffer
(a program-private row, written once), then ``norm.col_sum_kernel`` adds the partials in
index order.

Masked lanes contribute exact zeros (``tl.where`` after the arithmetic, so a 0 * inf from a
zero-variance row with eps = 0 never reaches a sum).
"""

import triton.language as tl

from .rounding import round_fp32, to_fp32
from .specialization import row_kernel


@row_kernel
def layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, n_rows, n_cols, stride_x, eps,
                          KIND: tl.constexpr, W_KIND: tl.constexpr, B_KIND: tl.constexpr,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    y_rows = y_ptr + rows * n_cols
    n = tl.full((BLOCK_ROWS,), n_cols, tl.float32)
    # pass 1: mean, blocks in index order (masked lanes load 0)
    total = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        total += tl.sum(x, axis=1)
    mean = tl.div_rn(total, n)
    # pass 2: centred sum of squares, blocks in index order (masked lanes contribute 0, not mean^2)
    ss = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        d = tl.where(mask, x - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    # rsqrt as two IEEE roundings: the interpreter's rsqrt is 1/np.sqrt, the GPU's tl.rsqrt
    # an approximation (rsqrt.approx.ftz)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(ss, n) + eps))
    # pass 3: normalise, scale, shift, round, store
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        y = (x - mean[:, None]) * rstd[:, None]
        if HAS_W:
            w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
            y = y * w[None, :]
        if HAS_B:
            b = to_fp32(tl.load(b_ptr + cols, mask=col_mask, other=0), B_KIND)
            y = y + b[None, :]
        tl.store(y_rows[:, None] + cols[None, :], round_fp32(y, KIND), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@row_kernel
def layer_norm_bwd_kernel(x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                          n_rows, n_cols, stride_x, stride_dy,
                          KIND: tl.constexpr, W_KIND: tl.constexpr, DY_KIND: tl.constexpr,
                          HAS_W: tl.constexpr, WANT_DW: tl.constexpr, WANT_DB: tl.constexpr,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """dx for BLOCK_ROWS rows, and this program's partial weight and bias gradients
    (one row of dw_part when WANT_DW, which needs HAS_W; one row of db_part when WANT_DB)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows * stride_x
    dy_rows = dy_ptr + rows * stride_dy
    dx_rows = dx_ptr + rows * n_cols
    mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    n = tl.full((BLOCK_ROWS,), n_cols, tl.float32)
    # pass 1: c1 = sum(g), c2 = sum(g * xhat) with g = dy * w, blocks in index order
    c1 = tl.zeros((BLOCK_ROWS,), tl.float32)
    c2 = tl.zeros((BLOCK_ROWS,), tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        g = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        if HAS_W:
            w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
            g = g * w[None, :]
        xhat = (x - mean[:, None]) * rstd[:, None]
        c1 += tl.sum(g, axis=1)
        c2 += tl.sum(tl.where(mask, g * xhat, 0.0), axis=1)
    c1_mean = tl.div_rn(c1, n)
    c2_mean = tl.div_rn(c2, n)
    # pass 2: dx, and the weight/bias-gradient partials over this program's rows
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = to_fp32(tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0), KIND)
        dy = to_fp32(tl.load(dy_rows[:, None] + cols[None, :], mask=mask, other=0), DY_KIND)
        g = dy
        if HAS_W:
            w = to_fp32(tl.load(w_ptr + cols, mask=col_mask, other=0), W_KIND)
            g = dy * w[None, :]
        xhat = (x - mean[:, None]) * rstd[:, None]
        dx = (g - (xhat * c2_mean[:, None] + c1_mean[:, None])) * rstd[:, None]
        tl.store(dx_rows[:, None] + cols[None, :], round_fp32(dx, KIND), mask=mask)
        if WANT_DW:
            dw = tl.sum(tl.where(mask, dy * xhat, 0.0), axis=0)
            tl.store(dw_part_ptr + pid * n_cols + cols, dw, mask=col_mask)
        if WANT_DB:
            db = tl.sum(dy, axis=0)
            tl.store(db_part_ptr + pid * n_cols + cols, db, mask=col_mask)
