"""Row softmax, log-softmax and token log-probs, built on one online log-sum-exp.

The online log-sum-exp contract (invariants I2, I3, I5)
-------------------------------------------------------
Every log-probability in the project, here and in the fused LM-head kernel
(``kernels/logprob.py``), is computed by the jit helpers below and nothing else:

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

from ..registry import register
from .rounding import round_fp32, to_fp32


def row_kernel(fn):
    """``@triton.jit`` for the row-reduction kernels, with alignment specialization off for every
    runtime argument.

    Triton specializes pointers on 16-byte alignment and integers on divisibility by 16. On GPU
    that sets the vector width of the loads, hence the blocked layout the reductions run in,
    hence the fp32 summation tree: a row's bits would depend on whether its length (the row
    stride) is a multiple of 16 and on where its buffer starts. (Seen on an H100: padding a
    3-token vocabulary with 13 -inf columns changed a log-prob.) With no alignment facts every
    launch gets the same layout, so I2 and I3 hold on GPU too; the cost is scalar loads.
    """
    import inspect

    runtime = [name for name, p in inspect.signature(fn).parameters.items() if p.annotation is inspect.Parameter.empty]
    return triton.jit(do_not_specialize_on_alignment=runtime)(fn)

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
    formed downstream; callers tell empty rows by run_sum == 0.
    """
    has_mass = run_sum > 0.0
    log_sum = tl.log(tl.where(has_mass, run_sum, 1.0))
    if WITH_DOT:
        # H = log(sum) - sum(e * (z - ref)) / sum; both terms are >= 0
        entropy = tl.where(has_mass, log_sum - tl.div_rn(run_dot, tl.where(has_mass, run_sum, 1.0)), 0.0)
    else:
        entropy = tl.zeros_like(run_sum)
    return log_sum, entropy


@triton.jit
def token_logprob_finish(run_target, run_max, run_sum, log_sum):
    """log softmax(z)[target] = (z_t - ref) - log_sum; -inf for an empty row."""
    return tl.where(run_sum > 0.0, (run_target - exp_ref(run_max)) - log_sum, float("-inf"))


@triton.jit
def logprob_grad_block(z, mask, cols, target, run_max, run_sum, log_sum, entropy, g_logprob, g_entropy,
                       temperature, HAS_G_ENTROPY: tl.constexpr):
    """d/d(logit) of g_logprob * logprob + g_entropy * entropy for one block, fp32.

    dlogprob/dz = onehot - p; dH/dz = -p (log p + H); d/dlogit = d/dz / T.
    """
    has_mass = run_sum > 0.0
    ref = tl.where(run_max == float("-inf"), 0.0, run_max)  # exp_ref, inlined
    shifted = tl.where(mask, z, float("-inf")) - ref[:, None]
    p = tl.div_rn(tl.exp(shifted), tl.where(has_mass, run_sum, 1.0)[:, None])
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    grad = (onehot - p) * g_logprob[:, None]
    if HAS_G_ENTROPY:
        log_p = shifted - log_sum[:, None]
        d_entropy = -p * tl.where(p > 0.0, log_p + entropy[:, None], 0.0)  # no 0 * -inf
        grad = grad + d_entropy * g_entropy[:, None]
    grad = tl.where(has_mass[:, None], grad, 0.0)
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


@triton.jit
def _probs(z, mask, run_max, run_sum):
    """softmax(z) in fp32 from the final state: exp(z - ref) / sum (0 for an empty row or masked lane)."""
    ref = tl.where(run_max == float("-inf"), 0.0, run_max)  # exp_ref, inlined
    e = tl.exp(tl.where(mask, z, float("-inf")) - ref[:, None])
    return tl.div_rn(e, tl.where(run_sum > 0.0, run_sum, 1.0)[:, None])


# ----------------------------------------------------------------------------------------
# softmax / log_softmax
# ----------------------------------------------------------------------------------------


@row_kernel
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


@row_kernel
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


# ----------------------------------------------------------------------------------------
# token log-probs (and entropy): the online log-sum-exp helpers over vocab blocks
# ----------------------------------------------------------------------------------------


@row_kernel
def token_logprobs_fwd_kernel(logits_ptr, tokens_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr,
                              n_rows, n_cols, stride_l, temperature,
                              KIND: tl.constexpr, WITH_ENTROPY: tl.constexpr,
                              BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """log softmax(logits / T)[token] (and entropy) per row, fp32. Written only with the helpers above."""
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


@row_kernel
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


# ----------------------------------------------------------------------------------------
# Ahead-of-time compile check, with the CUDA tile table. 16-bit formats travel as int16
# bit patterns, so each family is registered twice: bf16/fp16 ("*i16" pointers; make test
# compiles the first config, bf16) and fp32 ("*fp32" pointers).
# ----------------------------------------------------------------------------------------

# (name suffix, pointer type, storage kinds)
FORMAT_GROUPS = (("", "*i16", (2, 1)), ("_fp32", "*fp32", (0,)))


def cuda_row_config():
    """The CUDA table's row config (the one compiled for GPUs), whatever backend runs."""
    import torch

    from .. import profiles

    with profiles.config_backend("cuda"):
        return profiles.row_config(torch.bfloat16)


def _register() -> None:
    cfg = cuda_row_config()
    blocks = {"BLOCK_ROWS": cfg.block_rows, "BLOCK_COLS": cfg.block_cols}
    for suffix, ptr, kinds in FORMAT_GROUPS:
        register(f"softmax_fwd{suffix}", softmax_fwd_kernel,
                 signature={"x_ptr": ptr, "y_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_x": "i32", "scale": "fp32"},
                 configs=[{"KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])
        register(f"softmax_bwd{suffix}", softmax_bwd_kernel,
                 signature={"x_ptr": ptr, "dy_ptr": ptr, "dx_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32",
                            "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "stride_dy": "i32",
                            "scale": "fp32"},
                 configs=[{"KIND": k, "DY_KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])
        register(f"token_logprobs_fwd{suffix}", token_logprobs_fwd_kernel,
                 signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "logprob_ptr": "*fp32",
                            "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_l": "i32", "temperature": "fp32"},
                 configs=[{"KIND": k, "WITH_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])
        register(f"token_logprobs_bwd{suffix}", token_logprobs_bwd_kernel,
                 signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "g_logprob_ptr": "*fp32",
                            "g_entropy_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32",
                            "sum_ptr": "*fp32", "dlogits_ptr": ptr, "n_rows": "i32", "n_cols": "i32",
                            "stride_l": "i32", "temperature": "fp32"},
                 configs=[{"KIND": k, "HAS_G_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])


_register()
