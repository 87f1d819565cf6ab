"""The fused LM-head kernel: logits tiles -> online log-sum-exp -> log-prob, in SCORE or SAMPLE mode.

One kernel source serves the learner and the sampler (invariant I5):

* SCORE (``MODE=SCORE``, ``pk.linear_logprobs``): the log-prob (and optionally the
  entropy) of given tokens;
* SAMPLE (``MODE=SAMPLE``, ``pk.linear_sample``): a token drawn by Gumbel-max over
  ``z = logit / T``, and its log-prob.

Per program, BLOCK_M rows walk the vocabulary in BLOCK_V-wide blocks in index order:

1. ``linear_tile`` (kernels/matmul.py; ``linear_tile_compiled`` in the compiled forms) produces the
   block's logits, rounded to the compute format exactly as ``pk.linear`` stores them (engine
   split-K included);
2. ``scale_logits`` divides by T in fp32; ``lse_block_update`` folds the block into the
   running max / sum (/ entropy dot) -- the same helpers ``pk.token_logprobs`` uses, over
   blocks of the same width, so under the interpreter the two paths give the same bits;
3. SCORE picks the target's z with ``pick_target``; SAMPLE keeps the running best
   ``z + gumbel`` (ties go to the lowest index) and picks the winner's z with the
   same ``pick_target``. Both finish with ``token_logprob_finish``.

Seeded noise (SAMPLE). The Gumbel noise of (row r, vocab column v) is a pure function of
(seeds[r], v), so a row draws the same token whatever else shares the launch (I2):

* ``philox_bits``: Triton's counter-based ``tl.randint``, i.e. word 0 of Philox4x32-10
  with counter (v, 0, 0, 0) and key (low 32 bits of the seed, high 32 bits) -- the
  published generator (Salmon et al. 2011; Random123's known answers hold,
  tests/test_philox.py);
* ``open_uniform``: its top 23 bits k give u = (2k + 1) / 2^24, every step exact in fp32
  (k < 2^23 converts exactly; *2 + 1 and * 2^-24 are exact), so u lies in
  [2^-24, 1 - 2^-24]: never 0 or 1, and ``-log(-log(u))`` is finite (in [-2.82, 16.64]).
  (``tl.rand`` is not used: it rounds a 31-bit integer to fp32 and can return exactly 0.)

The integers and u are the same bits on every backend (tests/test_philox.py); the noise
``-log(-log(u))`` uses ``tl.log``, approximate on NVIDIA GPUs, so the drawn tokens, like
every result, are reproducible within a backend (DESIGN.md section 3). Only word 0 of each
Philox block is used: one 10-round block per (row, column), no state, no rows x V buffer.

SAMPLE always writes an id in [0, V): a row whose logits are all -inf (no mass) gets
token 0 with log-prob -inf, a row with a NaN or +inf logit gets token 0 with log-prob NaN.

The (rows x V) logits are never materialised. The backward (``lm_head_dlogits_kernel``)
recomputes the logits tiles the same way and writes d(loss)/d(logits) for one vocab
chunk, which the op multiplies out with the matmul kernels.

Each kernel has two forms (DESIGN.md section 3.6): ``lm_head_kernel`` and ``lm_head_dlogits_kernel``
(interpreter forms: logits by ``linear_tile``) and ``lm_head_compiled_kernel`` and
``lm_head_dlogits_compiled_kernel`` (logits by ``linear_tile_compiled``, ``tl.dot``). Everything
after the logits tile is one shared helper per step (``_head_start``, ``_head_block``,
``_head_finish``; ``_dlogits_start``, ``_dlogits_store``), so SCORE, SAMPLE and the backward
follow the same code in both forms; ``ops._common.kernel_form`` picks the form.
"""

import triton
import triton.language as tl

from .formats import SAMPLE, SCORE
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
from .matmul import linear_tile
from .matmul_compiled import linear_tile_compiled
from .rounding import round_fp32
from .specialization import row_kernel

# The hidden/weight pointers and strides keep their alignment facts: they only feed tl.dot, whose
# accumulation order is fixed by the MMA shape. Everything else (per-row buffers, row and vocab
# counts) reaches a reduction and carries none, and the row count M is not specialised at all (a
# batch-1 decode step runs the kernel the batched pass runs; kernels/specialization.py).
MATMUL_OPERANDS = ("h_ptr", "w_ptr", "K", "k_chunk", "stride_hm", "stride_hk", "stride_wv", "stride_wk",
                   "temperature")


# Above every column index: the lowest index among a block's tied best keys wins.
NO_COLUMN = tl.constexpr(2147483647)


@triton.jit
def philox_bits(seeds, cols):
    """(rows, cols) uint32: Philox4x32-10 word 0 for counter (col, 0, 0, 0), key (seed & 0xffffffff, seed >> 32)."""
    return tl.randint(seeds[:, None], cols[None, :])


@triton.jit
def open_uniform(bits):
    """uint32 -> fp32 u = (2 * (bits >> 9) + 1) * 2^-24 in [2^-24, 1 - 2^-24]: exact, never 0 or 1."""
    k = (bits >> 9).to(tl.int32).to(tl.float32)  # < 2^23: exact
    return (k * 2.0 + 1.0) * 5.9604644775390625e-08  # 2^-24; exact with or without FMA contraction


@triton.jit
def _head_start(pid_m, tokens_ptr, seeds_ptr, M, MODE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program pid_m's rows and the starting state of its walk over the vocabulary:
    (rows, row_mask, run_max, run_sum, run_dot, run_target, target, best_key, seeds).

    SCORE: ``target`` is the given token (``seeds`` and ``best_key`` unused). SAMPLE: ``target`` is the best
    column so far, ``best_key`` its Gumbel key, ``seeds`` the rows' seeds.
    """
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    run_max, run_sum, run_dot = lse_init(BLOCK_M)
    run_target = target_init(BLOCK_M)
    best_key = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    if MODE == SCORE:
        target = tl.load(tokens_ptr + rows, mask=row_mask, other=0)
        seeds = tl.zeros((BLOCK_M,), tl.int64)
    else:
        target = tl.zeros((BLOCK_M,), tl.int64)
        seeds = tl.load(seeds_ptr + rows, mask=row_mask, other=0)
    # (the loop-carried values in the order the compiled loop carries them)
    return rows, row_mask, run_max, run_sum, run_dot, run_target, target, best_key, seeds


@triton.jit
def _head_block(logits, pid_v, row_mask, seeds, target, best_key, run_max, run_sum, run_dot, run_target, V,
                temperature, MODE: tl.constexpr, WITH_ENTROPY: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_V: tl.constexpr):
    """Fold vocabulary block pid_v's rounded logits into the state: (run_max, run_sum, run_dot, best_key, target,
    run_target) after the block."""
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = row_mask[:, None] & (cols < V)[None, :]
    z = scale_logits(logits, temperature)
    # the shared online log-sum-exp
    run_max, run_sum, run_dot = lse_block_update(run_max, run_sum, run_dot, z, mask, WITH_ENTROPY)
    if MODE == SAMPLE:
        # Gumbel-max on the same fp32 z: key = z - log(-log(u)), u a function of (seed of the row, column)
        u = open_uniform(philox_bits(seeds, cols))
        key = tl.where(mask, z - tl.log(-tl.log(u)), float("-inf"))
        block_best = tl.max(key, axis=1)
        block_arg = tl.min(tl.where(key == block_best[:, None], cols[None, :], NO_COLUMN), axis=1)
        better = block_best > best_key  # strict: an earlier block keeps a tie
        best_key = tl.where(better, block_best, best_key)
        target = tl.where(better, block_arg.to(tl.int64), target)
        # the winner's z, picked exactly as SCORE picks a given token's
        run_target = tl.where(better, pick_target(target_init(BLOCK_M), z, cols, block_arg), run_target)
    else:
        run_target = pick_target(run_target, z, cols, target)
    return run_max, run_sum, run_dot, best_key, target, run_target


@triton.jit
def _head_finish(rows, row_mask, target, run_max, run_sum, run_dot, run_target, tokens_ptr, logprob_ptr, entropy_ptr,
                 max_ptr, sum_ptr, MODE: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    """Log-prob (and entropy) from the final state, stored with the row max and sum; SAMPLE also stores the token."""
    log_sum, entropy = lse_finish(run_max, run_sum, run_dot, WITH_ENTROPY)
    tl.store(logprob_ptr + rows, token_logprob_finish(run_target, run_max, run_sum, log_sum), mask=row_mask)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + rows, entropy, mask=row_mask)
    tl.store(max_ptr + rows, run_max, mask=row_mask)
    tl.store(sum_ptr + rows, run_sum, mask=row_mask)
    if MODE == SAMPLE:
        # a row with a NaN or +inf logit has no distribution (run_sum is NaN): token 0, log-prob NaN
        target = tl.where(run_sum == run_sum, target, 0)
        tl.store(tokens_ptr + rows, target, mask=row_mask)


@row_kernel(batch_args=("M",), keep_alignment=MATMUL_OPERANDS)
def lm_head_kernel(h_ptr, w_ptr, tokens_ptr, seeds_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr,
                   M, V, K, k_chunk, stride_hm, stride_hk, stride_wv, stride_wk, temperature,
                   MODE: tl.constexpr, KIND: tl.constexpr, SPLITS: tl.constexpr,
                   WITH_ENTROPY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Per row: log softmax(h W^T / T)[token] (and entropy); SAMPLE also draws the token (written to tokens_ptr).
    Interpreter form."""
    pid_m = tl.program_id(0)
    rows, row_mask, run_max, run_sum, run_dot, run_target, target, best_key, seeds = _head_start(
        pid_m, tokens_ptr, seeds_ptr, M, MODE, BLOCK_M)
    for block in range(0, tl.cdiv(V, BLOCK_V)):
        pid_v = pid_m * 0 + block  # a tensor on both backends (the interpreter's loop index is a Python int)
        # logits tile, rounded as pk.linear rounds it (the weight (V, K) is read transposed)
        # (no bias: HAS_BIAS=False, so the third pointer is never read)
        logits = linear_tile(h_ptr, w_ptr, h_ptr, pid_m, pid_v, M, V, K, k_chunk,
                             stride_hm, stride_hk, stride_wk, stride_wv,
                             KIND, False, SPLITS, BLOCK_M, BLOCK_V, BLOCK_K)
        # fold it into the online log-sum-exp and the SCORE pick / SAMPLE draw
        run_max, run_sum, run_dot, best_key, target, run_target = _head_block(
            logits, pid_v, row_mask, seeds, target, best_key, run_max, run_sum, run_dot, run_target, V,
            temperature, MODE, WITH_ENTROPY, BLOCK_M, BLOCK_V)
    # finish: log-prob (and entropy) from the running state
    _head_finish(rows, row_mask, target, run_max, run_sum, run_dot, run_target, tokens_ptr, logprob_ptr, entropy_ptr,
                 max_ptr, sum_ptr, MODE, WITH_ENTROPY)


@row_kernel(batch_args=("M",), keep_alignment=MATMUL_OPERANDS)
def lm_head_compiled_kernel(h_ptr, w_ptr, tokens_ptr, seeds_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr,
                            M, V, K, k_chunk, stride_hm, stride_hk, stride_wv, stride_wk, temperature,
                            MODE: tl.constexpr, KIND: tl.constexpr, SPLITS: tl.constexpr,
                            WITH_ENTROPY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """Compiled form of ``lm_head_kernel``: its logits tiles by ``linear_tile_compiled`` (``tl.dot``)."""
    pid_m = tl.program_id(0)
    rows, row_mask, run_max, run_sum, run_dot, run_target, target, best_key, seeds = _head_start(
        pid_m, tokens_ptr, seeds_ptr, M, MODE, BLOCK_M)
    for block in range(0, tl.cdiv(V, BLOCK_V)):
        pid_v = pid_m * 0 + block  # a tensor on both backends (the interpreter's loop index is a Python int)
        # logits tile, rounded as pk.linear rounds it (no bias: the third pointer is never read)
        logits = linear_tile_compiled(h_ptr, w_ptr, h_ptr, pid_m, pid_v, M, V, K, k_chunk,
                                      stride_hm, stride_hk, stride_wk, stride_wv,
                                      KIND, False, SPLITS, BLOCK_M, BLOCK_V, BLOCK_K)
        # fold it into the online log-sum-exp and the SCORE pick / SAMPLE draw
        run_max, run_sum, run_dot, best_key, target, run_target = _head_block(
            logits, pid_v, row_mask, seeds, target, best_key, run_max, run_sum, run_dot, run_target, V,
            temperature, MODE, WITH_ENTROPY, BLOCK_M, BLOCK_V)
    # finish: log-prob (and entropy) from the running state
    _head_finish(rows, row_mask, target, run_max, run_sum, run_dot, run_target, tokens_ptr, logprob_ptr, entropy_ptr,
                 max_ptr, sum_ptr, MODE, WITH_ENTROPY)


@triton.jit
def _dlogits_start(tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr, sum_ptr, M, v_start,
                   HAS_G_ENTROPY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """Program (pid_m, pid_c)'s tile: (pid_m, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy,
    g_logprob, g_entropy), the forward's per-row state loaded. pid_v counts BLOCK_V blocks from column 0
    (v_start is a multiple of BLOCK_V)."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy = load_grad_state(
        rows, row_mask, tokens_ptr, max_ptr, sum_ptr, entropy_ptr, g_logprob_ptr, g_entropy_ptr,
        HAS_G_ENTROPY, BLOCK_M)
    pid_v = v_start // BLOCK_V + pid_c
    return pid_m, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy


@triton.jit
def _dlogits_store(logits, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                   dlogits_ptr, V, v_start, n_chunk, temperature, KIND: tl.constexpr, HAS_G_ENTROPY: tl.constexpr,
                   BLOCK_V: tl.constexpr):
    """d(loss)/d(logits) of one tile from its rounded logits, rounded to the compute format, stored into the
    chunk buffer (M, n_chunk)."""
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = row_mask[:, None] & (cols < V)[None, :]
    z = scale_logits(logits, temperature)
    grad = logprob_grad_block(z, mask, cols, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                              temperature, HAS_G_ENTROPY)
    local = cols - v_start
    out_mask = mask & (local < n_chunk)[None, :]
    tl.store(dlogits_ptr + rows[:, None] * n_chunk + local[None, :], round_fp32(grad, KIND), mask=out_mask)


@row_kernel(batch_args=("M",), keep_alignment=MATMUL_OPERANDS)
def lm_head_dlogits_kernel(h_ptr, w_ptr, tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr, sum_ptr,
                           dlogits_ptr, M, V, K, v_start, n_chunk, stride_hm, stride_hk, stride_wv, stride_wk,
                           temperature,
                           KIND: tl.constexpr, HAS_G_ENTROPY: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """d(loss)/d(logits) for vocab columns [v_start, v_start + n_chunk), recomputing the logits tiles.

    Writes a (M, n_chunk) buffer in the compute format; one (BLOCK_M, BLOCK_V) tile per program. Interpreter form.
    """
    # load the forward's per-row state
    pid_m, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy = _dlogits_start(
        tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr, sum_ptr, M, v_start, HAS_G_ENTROPY,
        BLOCK_M, BLOCK_V)
    # recompute this tile of logits: the backward runs the matched profile, no bias (HAS_BIAS=False), one K
    # chunk (SPLITS=1, k_chunk=K)
    logits = linear_tile(h_ptr, w_ptr, h_ptr, pid_m, pid_v, M, V, K, K,
                         stride_hm, stride_hk, stride_wk, stride_wv,
                         KIND, False, 1, BLOCK_M, BLOCK_V, BLOCK_K)
    # gradient, rounded to the compute format, stored into the chunk buffer
    _dlogits_store(logits, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                   dlogits_ptr, V, v_start, n_chunk, temperature, KIND, HAS_G_ENTROPY, BLOCK_V)


@row_kernel(batch_args=("M",), keep_alignment=MATMUL_OPERANDS)
def lm_head_dlogits_compiled_kernel(h_ptr, w_ptr, tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr,
                                    sum_ptr, dlogits_ptr, M, V, K, v_start, n_chunk, stride_hm, stride_hk, stride_wv,
                                    stride_wk, temperature,
                                    KIND: tl.constexpr, HAS_G_ENTROPY: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``lm_head_dlogits_kernel``: its logits tiles by ``linear_tile_compiled`` (``tl.dot``)."""
    # load the forward's per-row state
    pid_m, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy = _dlogits_start(
        tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr, sum_ptr, M, v_start, HAS_G_ENTROPY,
        BLOCK_M, BLOCK_V)
    # recompute this tile of logits (matched profile: no bias, SPLITS=1, k_chunk=K)
    logits = linear_tile_compiled(h_ptr, w_ptr, h_ptr, pid_m, pid_v, M, V, K, K,
                                  stride_hm, stride_hk, stride_wk, stride_wv,
                                  KIND, False, 1, BLOCK_M, BLOCK_V, BLOCK_K)
    # gradient, rounded to the compute format, stored into the chunk buffer
    _dlogits_store(logits, pid_v, rows, row_mask, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                   dlogits_ptr, V, v_start, n_chunk, temperature, KIND, HAS_G_ENTROPY, BLOCK_V)
