"""Twins of the fused LM head (kernels/lm_head.py): ``lm_head_kernel`` (SCORE with and without entropy,
SAMPLE with keyed Philox4x32-10 Gumbel-max) and ``lm_head_dlogits_kernel`` (one backward vocab chunk; the
op multiplies it out with the matmul kernels, whose twins are cpu_executor/matmul.py's).

The interpreter form, per row, and where each bit comes from here:

* **Logits**: ``linear_tile``'s K-block order (BLOCK_K, SPLITS, k_chunk), computed by the matmul twin's own
  compiled tiles (``matmul._tiles``) into an fp32 buffer, then rounded to the compute format and widened
  back (``round_to_fp32``) and divided by T in fp32 (``div_rn``: IEEE, so compiled division gives numpy's
  bits). Lanes past V become -inf, as ``lse_block_update`` masks them.
* **Online log-sum-exp** over BLOCK_V-wide blocks in index order. Everything numpy owns under the
  interpreter is numpy here, on C-contiguous arrays whose last axis is one block (a (rows, blocks, BLOCK_V)
  view of a chunk of columns): the block maxima (``tl.max`` = ``np.nanmax`` = ``np.fmax.reduce``, called
  directly so an all-NaN block does not warn), ``np.exp``, the pairwise block sums (``np.sum`` along the
  block) and ``np.log``. ``tl.maximum`` is ``np.fmax``, whose choice between +0 and -0 depends on where
  the element sits in a SIMD loop, so the running max is folded block by block on row vectors of the
  kernel's own length (the rows padded to a multiple of BLOCK_M). The rescaling recurrences
  (``run_sum * alpha + block_sum``, the entropy's dot) are plain fp32 arithmetic, compiled.
* **SCORE** picks z at the token (exact); **SAMPLE** draws u = open_uniform(Philox4x32-10 word 0 at
  counter (column, 0, 0, 0), key (seed low, seed high)) in compiled uint32 arithmetic (masked to 32 bits),
  the noise ``log(-log(u))`` with numpy, and keeps the first column of the strictly best ``z - noise``.
* **Backward**: the chunk's logits as above (matched profile: SPLITS = 1), ``np.exp`` of the shifted
  logits, then ``logprob_grad_block``'s elementwise fp32 arithmetic compiled, rounded and stored.

Only a chunk of columns is ever held: at most about ``CHUNK_ELEMENTS`` per buffer (a few buffers), never
(rows x V). BLOCK_V, BLOCK_K, SPLITS, k_chunk, MODE, WITH_ENTROPY, HAS_G_ENTROPY and KIND are followed;
BLOCK_M only sets the row vectors' padding; the grid is ignored.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..kernels.lm_head import lm_head_dlogits_kernel, lm_head_kernel
from . import twin
from ._numba import FP16_TO_FP32, flat, round_to_fp32, rounded, threads
from .matmul import PANEL, ROWS, _tiles, _tiles_parallel

SCORE, SAMPLE = 0, 1
# Elements of one chunk buffer: about 1 MB of fp32 (cache-sized), at least one vocab block per row.
CHUNK_ELEMENTS = 1 << 18
NEG_INF = np.float32(-np.inf)
PHILOX_ROUND_A, PHILOX_ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_KEY_A, PHILOX_KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
LOW_32 = np.uint64(0xFFFFFFFF)


# ---- compiled pieces ----------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _scale_chunk(z, rows, width, c0, V, kind, temperature, score, tokens, target_z):
    """In place: the logit sums of columns [c0, c0 + width) -> z = round_to_fp32(logit) / T, -inf past V.
    SCORE: target_z[r] = z at the row's token when it lies in the chunk (-inf for a NaN: nanmax skips it)."""
    for r in range(rows):
        at = r * width
        for j in range(width):
            if c0 + j < V:
                z[at + j] = round_to_fp32(z[at + j], kind) / temperature
            else:
                z[at + j] = NEG_INF
        if score:
            t = tokens[r] - c0
            if 0 <= t < width:
                value = z[at + t]
                target_z[r] = value if value == value else NEG_INF


@numba.njit(cache=True, nogil=True)
def _fold(run_sum, run_dot, alpha, old_shift, block_sum, block_dot, rows, with_dot):
    """The chunk's blocks into the running sums, in block order: sum*alpha + block sum, and the entropy's dot
    (moved to the new reference: (dot + old_shift * old sum) * alpha + block dot). alpha, old_shift: (blocks,
    padded rows); block_sum, block_dot: (rows, blocks)."""
    for r in range(rows):
        for b in range(alpha.shape[0]):
            if with_dot:
                run_dot[r] = (run_dot[r] + old_shift[b, r] * run_sum[r]) * alpha[b, r] + block_dot[r, b]
            run_sum[r] = run_sum[r] * alpha[b, r] + block_sum[r, b]


@numba.njit(cache=True, nogil=True)
def _philox_word0(col, k0, k1):
    """Word 0 of Philox4x32-10 for counter (col, 0, 0, 0) and key (k0, k1); 64-bit products, masked to 32."""
    c0, c1, c2, c3 = np.uint64(col) & LOW_32, np.uint64(0), np.uint64(0), np.uint64(0)
    for _ in range(10):
        p0 = PHILOX_ROUND_A * c0
        p1 = PHILOX_ROUND_B * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & LOW_32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & LOW_32
        k0 = (k0 + PHILOX_KEY_A) & LOW_32
        k1 = (k1 + PHILOX_KEY_B) & LOW_32
    return c0


@numba.njit(cache=True, nogil=True)
def _uniforms(first, last, u, seeds, width, c0, V):
    """u of rows [first, last): open_uniform of the row's Philox word at each column (0.5 past V: masked)."""
    for r in range(first, last):
        k0 = seeds[r] & LOW_32
        k1 = seeds[r] >> np.uint64(32)
        for j in range(width):
            if c0 + j < V:
                k = np.float32(np.int32(_philox_word0(c0 + j, k0, k1) >> np.uint64(9)))
                u[r * width + j] = (k * np.float32(2.0) + np.float32(1.0)) * np.float32(5.9604644775390625e-08)
            else:
                u[r * width + j] = np.float32(0.5)


@numba.njit(cache=True, nogil=True, parallel=True)
def _uniforms_parallel(n_threads, rows, u, seeds, width, c0, V):
    for t in prange(n_threads):
        _uniforms(rows * t // n_threads, rows * (t + 1) // n_threads, u, seeds, width, c0, V)


@numba.njit(cache=True, nogil=True)
def _gumbel_max(z, noise, rows, width, block_v, c0, best_key, target, target_z):
    """Per block in order: the block's best key z - noise (NaN skipped, as nanmax) and its first column; a
    strictly better block replaces the row's best (an earlier block keeps a tie), token and z."""
    for r in range(rows):
        at = r * width
        for b0 in range(0, width, block_v):
            best = np.float32(np.nan)
            for j in range(b0, b0 + block_v):
                key = z[at + j] - noise[at + j]
                if key == key and (best != best or key > best):
                    best = key
            if best > best_key[r]:
                for j in range(b0, b0 + block_v):
                    if z[at + j] - noise[at + j] == best:
                        best_key[r] = best
                        target[r] = c0 + j
                        target_z[r] = z[at + j]
                        break


@numba.njit(cache=True, nogil=True)
def _shift_chunk(z, rows, width, kind, temperature, ref):
    """In place: logit sums -> z - ref, z = round_to_fp32(logit) / T (every column of a backward chunk is < V)."""
    for r in range(rows):
        for j in range(width):
            z[r * width + j] = round_to_fp32(z[r * width + j], kind) / temperature - ref[r]


@numba.njit(cache=True, nogil=True)
def _dlogits(out, stride_out, shifted, e, rows, width, v_start, kind, temperature, tokens, run_sum, log_sum, entropy,
             g_logprob, g_entropy, has_g_entropy):
    """logprob_grad_block, element by element in its fp32 order, rounded into out (rows, width)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for r in range(rows):
        empty = run_sum[r] == zero
        total = one if empty else run_sum[r]
        for j in range(width):
            p = e[r * width + j] / total
            onehot = one if v_start + j == tokens[r] else zero
            grad = (onehot - p) * g_logprob[r]
            if has_g_entropy:
                log_p = shifted[r * width + j] - log_sum[r]
                d_entropy = -p * ((log_p + entropy[r]) if p > zero else zero)
                grad = grad + d_entropy * g_entropy[r]
            if empty:
                grad = zero
            out[r * stride_out + j] = rounded(grad / temperature, kind, out[0])


# ---- the chunk walk -----------------------------------------------------------------------------


def _logit_sums(z, h, w, c0, rows, width, V, K, k_chunk, strides, kind, splits, block_k, n_threads):
    """fp32 sums (not yet rounded) of the logits of columns [c0, min(c0 + width, V)) into z (rows, width)."""
    stride_hm, stride_hk, stride_wv, stride_wk = strides
    cols = min(width, V - c0)
    tiles = -(-rows // ROWS) * -(-cols // PANEL)
    args = (h, w[c0 * stride_wv:], h, z, rows, cols, K, k_chunk, 0, stride_hm, stride_hk, 0, stride_wk, stride_wv,
            0, width, 1, kind, False, splits, block_k, FP16_TO_FP32)
    n = min(n_threads, tiles)
    if n == 1:
        _tiles(0, tiles, *args)
    else:
        _tiles_parallel(n, tiles, *args)


def _chunk_width(rows: int, V: int, block_v: int) -> int:
    """Columns per chunk: whole vocab blocks, about CHUNK_ELEMENTS per (rows x width) buffer, at most V's blocks."""
    blocks = max(1, CHUNK_ELEMENTS // (rows * block_v))
    return min(blocks, -(-V // block_v)) * block_v


def _fold_chunk(z3, state, padded, with_entropy):
    """Fold a chunk's (rows, blocks, BLOCK_V) z into the running (max, sum, dot) with the kernel's numpy ops."""
    run_max, run_sum, run_dot = state
    rows, blocks, _ = z3.shape
    block_max = np.full((blocks, padded), NEG_INF, np.float32)
    block_max[:, :rows] = np.fmax.reduce(z3, axis=2).T
    maxes = np.empty((blocks + 1, padded), np.float32)
    maxes[0] = run_max
    for b in range(blocks):   # tl.maximum(run_max, tl.max(z)), one block at a time on BLOCK_M-long rows
        np.fmax(maxes[b], block_max[b], out=maxes[b + 1])
    old, new = maxes[:-1], maxes[1:]
    ref = np.where(new == NEG_INF, np.float32(0.0), new)
    alpha = np.exp(old - ref)
    shifted = z3 - ref.T[:rows, :, None]
    e = np.exp(shifted)
    block_sum = np.sum(e, axis=2)
    if with_entropy:
        old_shift = np.where(old == NEG_INF, np.float32(0.0), old - ref)
        block_dot = np.sum(e * np.where(e > np.float32(0.0), shifted, np.float32(0.0)), axis=2)
    else:
        old_shift, block_dot = alpha, block_sum
    _fold(run_sum, run_dot, alpha, old_shift, block_sum, block_dot, rows, with_entropy)
    run_max[:] = maxes[-1]


def _finish(run_max, run_sum, run_dot, target_z, with_entropy):
    """lse_finish and token_logprob_finish on the padded row vectors -> (logprob, entropy or None)."""
    empty = run_sum == np.float32(0.0)
    total = np.where(empty, np.float32(1.0), run_sum)
    log_sum = np.log(total)
    entropy = np.where(empty, np.float32(0.0), log_sum - run_dot / total) if with_entropy else None
    ref = np.where(run_max == NEG_INF, np.float32(0.0), run_max)
    return np.where(empty, NEG_INF, (target_z - ref) - log_sum), entropy


@twin(lm_head_kernel)
def lm_head_twin(grid, h_ptr, w_ptr, tokens_ptr, seeds_ptr, logprob_ptr, entropy_ptr, max_ptr, sum_ptr, M, V, K,
                 k_chunk, stride_hm, stride_hk, stride_wv, stride_wk, temperature, MODE, KIND, SPLITS, WITH_ENTROPY,
                 BLOCK_M, BLOCK_V, BLOCK_K, **_):
    sample, with_entropy = MODE == SAMPLE, bool(WITH_ENTROPY)
    padded = -(-M // BLOCK_M) * BLOCK_M
    state = (np.full(padded, NEG_INF, np.float32), np.zeros(padded, np.float32), np.zeros(padded, np.float32))
    target_z = np.full(padded, NEG_INF, np.float32)
    h, w, t32 = flat(h_ptr), flat(w_ptr), np.float32(temperature)
    strides = (stride_hm, stride_hk, stride_wv, stride_wk)
    width = _chunk_width(M, V, BLOCK_V)
    buffer = np.empty(M * width, np.float32)
    if sample:
        seeds = flat(seeds_ptr)[:M].view(np.uint64)
        tokens = np.zeros(M, np.int64)
        best_key = np.full(M, NEG_INF, np.float32)
        uniforms = np.empty(M * width, np.float32)
    else:
        tokens = flat(tokens_ptr)[:M]
    n_threads = threads()
    with np.errstate(all="ignore"):
        for c0 in range(0, V, width):
            cols = min(width, -(-(V - c0) // BLOCK_V) * BLOCK_V)
            z = buffer[:M * cols]
            _logit_sums(z, h, w, c0, M, cols, V, K, k_chunk, strides, KIND, SPLITS, BLOCK_K, n_threads)
            _scale_chunk(z, M, cols, c0, V, KIND, t32, not sample, tokens, target_z)
            _fold_chunk(z.reshape(M, cols // BLOCK_V, BLOCK_V), state, padded, with_entropy)
            if sample:
                u = uniforms[:M * cols]
                n = min(n_threads, M)
                if n == 1:
                    _uniforms(0, M, u, seeds, cols, c0, V)
                else:
                    _uniforms_parallel(n, M, u, seeds, cols, c0, V)
                noise = np.log(u, out=u)             # log(-log(u)) in place (elementwise: the same bits)
                np.log(np.negative(noise, out=noise), out=noise)
                _gumbel_max(z, noise, M, cols, BLOCK_V, c0, best_key, tokens, target_z)
        logprob, entropy = _finish(*state, target_z, with_entropy)
    run_max, run_sum, _ = state
    flat(logprob_ptr)[:M] = logprob[:M]
    if with_entropy:
        flat(entropy_ptr)[:M] = entropy[:M]
    flat(max_ptr)[:M] = run_max[:M]
    flat(sum_ptr)[:M] = run_sum[:M]
    if sample:
        # a row with a NaN or +inf logit (run_sum NaN) has no distribution: token 0
        flat(tokens_ptr)[:M] = np.where(run_sum[:M] == run_sum[:M], tokens, 0)


@twin(lm_head_dlogits_kernel)
def lm_head_dlogits_twin(grid, h_ptr, w_ptr, tokens_ptr, g_logprob_ptr, g_entropy_ptr, entropy_ptr, max_ptr, sum_ptr,
                         dlogits_ptr, M, V, K, v_start, n_chunk, stride_hm, stride_hk, stride_wv, stride_wk,
                         temperature, KIND, HAS_G_ENTROPY, BLOCK_V, BLOCK_K, **_):
    if v_start % BLOCK_V:
        raise ValueError(f"v_start must be a multiple of BLOCK_V = {BLOCK_V}, got {v_start}")
    has_g_entropy = bool(HAS_G_ENTROPY)
    cols = min(n_chunk, V - v_start)       # the kernel's mask: columns < V of the chunk
    if cols <= 0:
        return
    h, w, out, t32 = flat(h_ptr), flat(w_ptr), flat(dlogits_ptr), np.float32(temperature)
    tokens = flat(tokens_ptr)[:M]
    run_max, run_sum = flat(max_ptr)[:M], flat(sum_ptr)[:M]
    g_logprob = flat(g_logprob_ptr)[:M]
    g_entropy = flat(g_entropy_ptr)[:M] if has_g_entropy else g_logprob
    entropy = flat(entropy_ptr)[:M] if has_g_entropy else g_logprob
    # at most one chunk of the (rows x cols) output at a time in fp32, like the forward's
    width = min(cols, max(BLOCK_V, CHUNK_ELEMENTS // M // BLOCK_V * BLOCK_V))
    buffer = np.empty(M * width, np.float32)
    n_threads = threads()
    with np.errstate(all="ignore"):
        log_sum = np.log(np.where(run_sum == np.float32(0.0), np.float32(1.0), run_sum))
        ref = np.where(run_max == NEG_INF, np.float32(0.0), run_max)
        for c0 in range(0, cols, width):
            n = min(width, cols - c0)
            shifted = buffer[:M * n]
            _logit_sums(shifted, h, w, v_start + c0, M, n, V, K, K, (stride_hm, stride_hk, stride_wv, stride_wk),
                        KIND, 1, BLOCK_K, n_threads)
            _shift_chunk(shifted, M, n, KIND, t32, ref)
            e = np.exp(shifted)
            _dlogits(out[c0:], n_chunk, shifted, e, M, n, v_start + c0, KIND, t32, tokens, run_sum, log_sum, entropy,
                     g_logprob, g_entropy, has_g_entropy)


def warm() -> None:
    """Compile every variant the family launches: fp32 and int16 (fp16/bf16) operands; SCORE with and without
    entropy, SAMPLE, the backward with and without an entropy gradient; serial and parallel entry points.

    Calls the twins on tiny torch tensors (a twin module imports no ops module)."""
    import torch

    m, k, v = 2, 3, 130                          # two vocab blocks of 128, the second partial
    saved = torch.get_num_threads()
    try:
        for n_threads in (1, 2) if numba.config.NUMBA_NUM_THREADS > 1 else (1,):
            torch.set_num_threads(n_threads)
            for dtype in (torch.float32, torch.int16):
                kind = int(dtype == torch.int16)
                h, w = torch.zeros(m, k, dtype=dtype), torch.zeros(v, k, dtype=dtype)
                ids, seeds = torch.zeros(m, dtype=torch.int64), torch.arange(m, dtype=torch.int64)
                logprob, entropy, row_max, row_sum = (torch.empty(m) for _ in range(4))
                common = dict(M=m, V=v, K=k, k_chunk=k, stride_hm=k, stride_hk=1, stride_wv=k, stride_wk=1,
                              temperature=0.5, KIND=kind, SPLITS=1, BLOCK_M=256, BLOCK_V=128, BLOCK_K=32)
                for mode, ent in ((SCORE, True), (SCORE, False), (SAMPLE, False)):
                    lm_head_twin((1,), h, w, ids.clone(), seeds, logprob, entropy, row_max, row_sum, MODE=mode,
                                 WITH_ENTROPY=ent, **common)
                for g_ent in (False, True):
                    lm_head_dlogits_twin((1, 2), h, w, ids, logprob, logprob, entropy, row_max, row_sum,
                                         torch.empty(m, v, dtype=dtype), v_start=0, n_chunk=v, HAS_G_ENTROPY=g_ent,
                                         **{n: a for n, a in common.items() if n != "k_chunk"})
    finally:
        torch.set_num_threads(saved)
