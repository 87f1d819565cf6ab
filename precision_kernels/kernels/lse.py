"""The online log-sum-exp shared by softmax, log-softmax, token log-probs and the fused LM head.

The online log-sum-exp contract (invariants I2, I3, I5)
-------------------------------------------------------
Every log-probability in the project, here and in the fused LM-head kernel
(``kernels/lm_head.py``), is computed by the jit helpers below and nothing else:

* ``lse_init(BLOCK_ROWS)`` gives the per-row running state ``(run_max, run_sum, run_dot)``
  = (-inf, 0, 0) and ``target_init`` the running target value (-inf).
* The row is consumed in **consecutive blocks of width ``BLOCK_COLS`` =
  ``profiles.row_config(dtype).block_cols``, starting at column 0, in index order**.
  Each block arrives as an fp32 tile ``z`` of shape (rows, BLOCK_COLS) with a mask
  (``cols < V``, and the row mask); masked lanes may hold any finite value.
  For log-probs, ``z = scale_logits(to_fp32(raw, KIND), temperature)``, i.e.
  ``float32(logit) / float32(T)``.
* ``lse_block_update(run_max, run_sum, run_dot, z, mask, WITH_DOT)`` folds a block in:
  block max, new running max, rescale of the old sums by ``exp(old_max - new_max)``,
  then the block sums (in that order, fp32, no FMA contraction; every division is
  IEEE round-to-nearest ``tl.div_rn``, because plain ``/`` compiles to the approximate
  ``div.full.f32`` on NVIDIA GPUs).
  ``run_sum = sum exp(z - ref)`` and ``run_dot = sum exp(z - ref) * (z - ref)``
  relative to ``ref = exp_ref(run_max)`` (the running max, or 0 while that is still -inf).
  ``run_dot`` (for the entropy) is only formed when ``WITH_DOT``; it never feeds
  ``run_max`` or ``run_sum``, so log-probs are the same bits with or without entropy.
* ``pick_target(run_target, z, cols, target)`` picks the target's ``z`` out of a block (exact).
* ``lse_finish`` / ``token_logprob_finish`` turn the state into log(sum), entropy and
  the log-prob; ``logprob_grad_block`` gives d(logprob, entropy)/d(logit) for one block.

A kernel that feeds tiles of the same width, with the same values, through these
helpers gets the same bits: under the interpreter a row's result depends only on the
row's values and the block width (every reduction is along the contiguous last axis of
the tile, so the number of rows in a tile does not matter); on GPU the tiles must also
have the same layout, which the compile check's TTGIR audit enforces.

Masking: a masked lane is -inf. A fully masked block leaves the state unchanged
(exp(-inf - -inf) is never formed), so padding a row with -inf, or leading whole
blocks of -inf, changes nothing (I3). A row with no finite entry ends with
``run_max = -inf, run_sum = 0``: softmax gives zeros, log-softmax and the log-prob -inf,
entropy 0, gradients 0 (softmax, token log-probs) or ``scale * dy`` (log-softmax).
+inf or NaN inputs give NaN.
"""

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------
# Shared online log-sum-exp helpers (the contract above).
# ----------------------------------------------------------------------------------------


@triton.jit
def lse_init(BLOCK_ROWS: tl.constexpr):
    """Empty running state: max -inf, sum 0, dot 0."""
    run_max = tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_ROWS,), tl.float32)
    run_dot = tl.zeros((BLOCK_ROWS,), tl.float32)
    return run_max, run_sum, run_dot


@triton.jit
def target_init(BLOCK_ROWS: tl.constexpr):
    return tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)


@triton.jit
def scale_logits(x, temperature):
    """The one temperature rule: float32(logit) / float32(T), IEEE-rounded (div_rn, also on GPU)."""
    return tl.div_rn(x, temperature)


@triton.jit
def exp_ref(run_max):
    """Reference point of the exponentials: the running max, or 0 while it is -inf (no -inf - -inf)."""
    return tl.where(run_max == float("-inf"), 0.0, run_max)


@triton.jit
def lse_block_update(run_max, run_sum, run_dot, z, mask, WITH_DOT: tl.constexpr):
    """Fold one (rows, BLOCK_COLS) fp32 block ``z`` into the running state."""
    z = tl.where(mask, z, float("-inf"))
    # max: the block's, then the running one
    new_max = tl.maximum(run_max, tl.max(z, axis=1))
    ref = tl.where(new_max == float("-inf"), 0.0, new_max)  # exp_ref, inlined (interpreter call cost)
    # rescale the old sums (alpha is exactly 1 when the max did not move, 0 from an empty state)
    alpha = tl.exp(run_max - ref)
    shifted = z - ref[:, None]
    e = tl.exp(shifted)  # masked lanes: exp(-inf) = 0
    new_sum = run_sum * alpha + tl.sum(e, axis=1)
    if WITH_DOT:
        # sum e*(z - ref): the old terms move from the old reference to the new one
        old_shift = tl.where(run_max == float("-inf"), 0.0, run_max - ref)
        block_dot = tl.sum(e * tl.where(e > 0.0, shifted, 0.0), axis=1)  # no 0 * -inf
        run_dot = (run_dot + old_shift * run_sum) * alpha + block_dot
    return new_max, new_sum, run_dot


@triton.jit
def pick_target(run_target, z, cols, target):
    """Running value of z at column ``target`` (exact selection, no arithmetic)."""
    hit = cols[None, :] == target[:, None]
    return tl.maximum(run_target, tl.max(tl.where(hit, z, float("-inf")), axis=1))


@triton.jit
def lse_finish(run_max, run_sum, run_dot, WITH_DOT: tl.constexpr):
    """-> (log_sum, entropy): log sum exp(z - ref) and H of softmax(z).

    For an empty row (run_sum == 0) log_sum is 0, not -inf, so no -inf - -inf is ever
    formed downstream; callers tell empty rows by run_sum == 0. A row with a NaN or +inf
    entry has run_sum = NaN (exp(NaN - ref), exp(inf - inf)), and NaN flows on into every result.
    """
    empty = run_sum == 0.0
    log_sum = tl.log(tl.where(empty, 1.0, run_sum))
    if WITH_DOT:
        # H = log(sum) - sum(e * (z - ref)) / sum; both terms are >= 0
        entropy = tl.where(empty, 0.0, log_sum - tl.div_rn(run_dot, tl.where(empty, 1.0, run_sum)))
    else:
        entropy = tl.zeros_like(run_sum)
    return log_sum, entropy


@triton.jit
def token_logprob_finish(run_target, run_max, run_sum, log_sum):
    """log softmax(z)[target] = (z_t - ref) - log_sum; -inf for an empty row, NaN for a NaN one (log_sum NaN)."""
    return tl.where(run_sum == 0.0, float("-inf"), (run_target - exp_ref(run_max)) - log_sum)


@triton.jit
def logprob_grad_block(z, mask, cols, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                       temperature, HAS_G_ENTROPY: tl.constexpr):
    """d/d(logit) of g_logprob * logprob + g_entropy * entropy for one block, fp32.

    dlogprob/dz = onehot - p; dH/dz = -p (log p + H); d/dlogit = d/dz / T.
    """
    empty = run_sum == 0.0
    ref = tl.where(run_max == float("-inf"), 0.0, run_max)  # exp_ref, inlined
    shifted = tl.where(mask, z, float("-inf")) - ref[:, None]
    p = tl.div_rn(tl.exp(shifted), tl.where(empty, 1.0, run_sum)[:, None])  # NaN row: NaN
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    grad = (onehot - p) * g_logprob[:, None]
    if HAS_G_ENTROPY:
        log_p = shifted - log_sum[:, None]
        d_entropy = -p * tl.where(p > 0.0, log_p + entropy[:, None], 0.0)  # no 0 * -inf
        grad = grad + d_entropy * g_entropy[:, None]
    grad = tl.where(empty[:, None], 0.0, grad)
    return tl.div_rn(grad, temperature)


@triton.jit
def load_grad_state(rows, row_mask, tokens_ptr, max_ptr, sum_ptr, entropy_ptr, g_logprob_ptr, g_entropy_ptr,
                    HAS_G_ENTROPY: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """The forward's per-row state and the incoming gradients, for ``logprob_grad_block``."""
    target = tl.load(tokens_ptr + rows, mask=row_mask, other=0)
    run_max = tl.load(max_ptr + rows, mask=row_mask, other=float("-inf"))
    run_sum = tl.load(sum_ptr + rows, mask=row_mask, other=0.0)
    g_logprob = tl.load(g_logprob_ptr + rows, mask=row_mask, other=0.0)
    if HAS_G_ENTROPY:
        g_entropy = tl.load(g_entropy_ptr + rows, mask=row_mask, other=0.0)
        entropy = tl.load(entropy_ptr + rows, mask=row_mask, other=0.0)
    else:
        g_entropy = tl.zeros((BLOCK_ROWS,), tl.float32)
        entropy = tl.zeros((BLOCK_ROWS,), tl.float32)
    log_sum, _ = lse_finish(run_max, run_sum, run_max, False)
    return target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy
