"""Twins of the token log-probs (kernels/token_logprobs.py): ``token_logprobs_fwd_kernel`` (with and without
entropy) and ``token_logprobs_bwd_kernel`` (with and without an entropy gradient).

The interpreter form, per row: z = to_fp32(logit) / T; the online log-sum-exp of kernels/lse.py over
vocabulary blocks of BLOCK_COLS in index order (``_lse.online_lse``, the entropy's running dot
with WITH_ENTROPY); the target's z picked exactly (``pick_target``); ``lse_finish`` and
``token_logprob_finish``. The backward is ``logprob_grad_block`` per block, rounded once.
BLOCK_COLS, KIND, WITH_ENTROPY and HAS_G_ENTROPY are followed.
"""

from __future__ import annotations

import numpy as np

from ..kernels.token_logprobs import token_logprobs_bwd_kernel, token_logprobs_fwd_kernel
from . import _rows, twin
from ._lse import exp_ref, lse_finish, online_lse
from ._rows import NEG_INF, ONE, ZERO, Rows


def _picked_target(lay: Rows, z: np.ndarray, target: np.ndarray) -> np.ndarray:
    """pick_target over every block from target_init: the running tl.maximum of each block's
    tl.max(where(col == target, z, -inf)). Only the target's block has a lane that is not -inf, and
    tl.max ignores a NaN, so the result is z at the target's column (a masked lane's z included), or -inf."""
    width = lay.n_blocks * lay.block_cols
    hit = (target >= 0) & (target < width)
    at = np.where(hit, target, 0)
    rows = np.arange(lay.rows)
    picked = z[at // lay.block_cols, rows, at % lay.block_cols] if width else np.zeros(lay.rows, np.float32)
    return np.where(hit & ~np.isnan(picked), picked, NEG_INF)


@twin(token_logprobs_fwd_kernel)
def token_logprobs_fwd_twin(grid, logits_ptr, tokens_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr, n_rows,
                            n_cols, stride_l, temperature, KIND, WITH_ENTROPY, BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    with np.errstate(all="ignore"):
        z = lay.blocks(logits_ptr, KIND, stride_l) / np.float32(temperature)
        run_max, run_sum, run_dot = online_lse(lay, z, with_dot=WITH_ENTROPY)
        run_target = _picked_target(lay, z, lay.vector(tokens_ptr, 0, np.int64))
        log_sum, entropy = lse_finish(lay, run_sum, run_dot, with_dot=WITH_ENTROPY)
        picked = lay.op(np.subtract, run_target - exp_ref(run_max), log_sum, "vec", "vec")
        logprob = np.where(run_sum == ZERO, NEG_INF, picked)
    lay.store_vector(logprob_ptr, logprob)
    if WITH_ENTROPY:
        lay.store_vector(entropy_ptr, entropy)
    lay.store_vector(max_ptr, run_max)
    lay.store_vector(sum_ptr, run_sum)


@twin(token_logprobs_bwd_kernel)
def token_logprobs_bwd_twin(grid, logits_ptr, tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr,
                            sum_ptr, dlogits_ptr, n_rows, n_cols, stride_l, temperature, KIND, HAS_G_ENTROPY,
                            BLOCK_ROWS, BLOCK_COLS, **_):
    lay = Rows(n_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    temperature = np.float32(temperature)
    target = lay.vector(tokens_ptr, 0, np.int64)
    run_max = lay.vector(max_ptr, NEG_INF)
    run_sum = lay.vector(sum_ptr, ZERO)
    with np.errstate(all="ignore"):
        log_sum, _ = lse_finish(lay, run_sum, run_sum, with_dot=False)
        z = lay.blocks(logits_ptr, KIND, stride_l) / temperature
        # logprob_grad_block, every block at once
        empty = run_sum == ZERO
        shifted = np.where(lay.mask, z, NEG_INF) - lay.per_block(exp_ref(run_max))
        p = lay.op(np.divide, np.exp(shifted), lay.per_block(np.where(empty, ONE, run_sum)), "tile", "row")
        onehot = np.where(lay.cols == target[None, :, None], ONE, ZERO)
        grad = lay.op(np.multiply, lay.op(np.subtract, onehot, p, "tile", "tile"),
                      lay.per_block(lay.vector(g_logprob_ptr, ZERO)), "tile", "row")
        if HAS_G_ENTROPY:
            log_p = lay.op(np.subtract, shifted, lay.per_block(log_sum), "tile", "row")
            entropy = lay.per_block(lay.vector(entropy_ptr, ZERO))
            spread = np.where(p > ZERO, lay.op(np.add, log_p, entropy, "tile", "row"), ZERO)
            d_entropy = lay.op(np.multiply, -p, spread, "tile", "tile")
            weighted = lay.op(np.multiply, d_entropy, lay.per_block(lay.vector(g_entropy_ptr, ZERO)), "tile", "row")
            grad = lay.op(np.add, grad, weighted, "tile", "tile")
        grad = np.where(lay.per_block(empty), ZERO, grad) / temperature
    lay.store(dlogits_ptr, grad, KIND)


def warm() -> None:
    """Compile the rounding store (the rest is numpy). A twin module imports no ops module (ops/_common imports
    this package), so this warms the compiled piece directly."""
    _rows.compile_store()
