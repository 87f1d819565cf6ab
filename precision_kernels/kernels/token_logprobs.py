"""Token log-probs (and entropy) per row, fp32: ``log softmax(logits / T)[token]``.

Written only with the online log-sum-exp helpers of ``kernels/lse.py``, over vocab blocks of
the row config's width, so that under the interpreter the fused LM-head kernel
(``kernels/lm_head.py``) gives the same bits (I5).
"""

import triton.language as tl

from .lse import (
    load_grad_state,
    logprob_grad_block,
    lse_block_update,
    lse_finish,
    lse_init,
    pick_target,
    scale_logits,
    target_init,
    token_logprob_finish,
)
from .rounding import round_fp32, to_fp32
from .specialization import row_kernel

# ----------------------------------------------------------------------------------------
# token log-probs (and entropy): the online log-sum-exp helpers over vocab blocks
# ----------------------------------------------------------------------------------------


@row_kernel(batch_args=("n_rows",))
def token_logprobs_fwd_kernel(logits_ptr, tokens_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr,
                              n_rows, n_cols, stride_l, temperature,
                              KIND: tl.constexpr, WITH_ENTROPY: tl.constexpr,
                              BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """log softmax(logits / T)[token] (and entropy) per row, fp32. Written only with the lse.py helpers."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    l_rows = logits_ptr + rows * stride_l
    target = tl.load(tokens_ptr + rows, mask=row_mask, other=0)
    run_max, run_sum, run_dot = lse_init(BLOCK_ROWS)
    run_target = target_init(BLOCK_ROWS)
    # one pass over the vocab blocks, in index order
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        raw = tl.load(l_rows[:, None] + cols[None, :], mask=mask, other=0)
        z = scale_logits(to_fp32(raw, KIND), temperature)
        run_max, run_sum, run_dot = lse_block_update(run_max, run_sum, run_dot, z, mask, WITH_ENTROPY)
        run_target = pick_target(run_target, z, cols, target)
    log_sum, entropy = lse_finish(run_max, run_sum, run_dot, WITH_ENTROPY)
    tl.store(logprob_ptr + rows, token_logprob_finish(run_target, run_max, run_sum, log_sum), mask=row_mask)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + rows, entropy, mask=row_mask)
    tl.store(max_ptr + rows, run_max, mask=row_mask)
    tl.store(sum_ptr + rows, run_sum, mask=row_mask)


@row_kernel(batch_args=("n_rows",))
def token_logprobs_bwd_kernel(logits_ptr, tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr,
                              max_ptr, sum_ptr, dlogits_ptr, n_rows, n_cols, stride_l, temperature,
                              KIND: tl.constexpr, HAS_G_ENTROPY: tl.constexpr,
                              BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """dlogits = ((onehot - p) * g + g_H * (-p (log p + H))) / T, in the logits' dtype."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    l_rows = logits_ptr + rows * stride_l
    d_rows = dlogits_ptr + rows * n_cols
    target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy = load_grad_state(
        rows, row_mask, tokens_ptr, max_ptr, sum_ptr, entropy_ptr, g_logprob_ptr, g_entropy_ptr,
        HAS_G_ENTROPY, BLOCK_ROWS)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        raw = tl.load(l_rows[:, None] + cols[None, :], mask=mask, other=0)
        z = scale_logits(to_fp32(raw, KIND), temperature)
        grad = logprob_grad_block(z, mask, cols, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                                  temperature, HAS_G_ENTROPY)
        tl.store(d_rows[:, None] + cols[None, :], round_fp32(grad, KIND), mask=mask)
