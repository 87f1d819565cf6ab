"""Fused attention: out = softmax(q k^T * scale + mask) v, one pass over the keys, no (Tq x Tk) buffer.

Three kernels, each in two forms, one ``@triton.jit`` kernel per form: the interpreter form (the CPU
specification, which the CPU twins mirror) and the compiled form (``tl.dot``; its name ends in
``_compiled_kernel``). ``ops/attention.py`` picks the form per launch (``ops._common.kernel_form``). The
forward lives here, the two backward kernels in kernels/attention_backward.py, the steps both forms share
(positions, masks, the online-softmax step, the split-KV fold, the store) in kernels/attention_steps.py:

* ``attention_fwd_kernel``: the output, each row's log-sum-exp, and each row's score max and exponential
  sum, from which the backward recomputes P = exp(s - max) / sum;
* ``attention_bwd_dq_kernel``: delta = rowsum(P * dP) in fp32 (stored for the next kernel), then dq;
* ``attention_bwd_dkdv_kernel``: dk and dv, one program per block of keys, summing over the
  heads of the key's group (GQA) and, per head, over query blocks in index order.

Positions and masking (the same predicate ``live`` in all three kernels):

* An *item* is one (batch, query head); query head h reads key/value head ``h // GROUP``.
* ``ks`` is the item's batch row's first real key (0 without key_start). Key blocks are counted
  from it: block j holds keys ``ks + j * BLOCK_N + [0, BLOCK_N)``, and keys before ``ks`` are never
  loaded. A left-padded item therefore walks exactly the blocks of the same item unpadded.
* Causal masking is bottom-right: query t sits at key position ``Tk - Tq + t`` and sees the keys at
  positions up to it.
* A (row, key) pair is live when the key is in ``[ks, Tk)``, the causal rule and the bool mask allow
  it, and its score (after an additive mask) is not -inf. Every other pair contributes the identity
  through ``tl.where``: -inf to the scores, -0.0 to the sums (x + -0.0 == x for every x, -0.0 included,
  so a fully masked block leaves every accumulator bitwise unchanged), and nothing is ever multiplied
  by a masked value (a NaN or inf in V at a masked key does not reach the row).

Numerics (interpreter form; DESIGN.md sections 2-3):

* Scores are the sum over D, in index order, of exact products (operands widened exactly), times the
  fp32 scale, then the additive mask is added in fp32: fp16/bf16 products are exact in fp32 and summed
  there; fp32 operands are multiplied and summed in fp64 and the scaled sum rounded to fp32 once
  (``interp_scores``): a score's error, times the scale, reaches every P of its row.
* The online softmax walks the key blocks in index order: block max, new running max, rescale by
  ``exp(old - new)`` (exactly 1 when the max did not move; ``exp(-inf - -inf)`` is never formed), the
  block's exponentials summed over its keys in index order. P.V is the same ordered fp32 sum over the
  block's keys. The output is ``acc / sum`` (``div_rn``), rounded once by the project's RNE helper; a
  row with no live key gives +0 and log-sum-exp -inf.
* BLOCK_N (keys, forward and dq) and BLOCK_M_BWD (queries, dk/dv) are reduction orders and come from
  the profile table per dtype and backend; rows per program, items per program and keys per dk/dv
  program change no bit. Every product tile keeps its reduced axis outermost and at least two
  elements in the other axes (a (K, 1) tile would make numpy sum pairwise instead of in order),
  hence BLOCK_D >= 2 and BLOCK_M >= 2.
* No ``tl.dot`` under the interpreter (OpenBLAS gives an element different bits at different tile
  positions); the products are widened, multiplied elementwise and summed with ``tl.sum`` along the
  outermost axis, as in kernels/matmul.py.

Compiled form (``*_compiled_kernel``): one item per program, ``tl.dot`` for q k^T on native fp16/bf16
operands (fp64 for fp32 inputs, ``native_scores``) and IEEE fp32 ``tl.dot`` for every product with P, dS or
dO (so P is never rounded to 16 bits); D is padded to a power of two >= 16. A value-level ``tl.where`` cannot
reach inside a ``tl.dot``: keys outside ``[ks, Tk)`` and rows outside ``[0, Tq)`` load as 0, and in the
forward the V rows of keys that no row of the tile attends are zeroed, but a NaN or inf in a slot that is
masked for some (row, key) pairs of a tile and live for others (a V row some rows of the tile attend; in the
backward also q, k and dO) reaches the masked pairs' sums as NaN. The interpreter form has no such case.

Batch-varying arguments (item count, Tq, Tk, strides that contain them, the host-side bounds) are never
specialised (``kernels/specialization.py``).
"""

import triton.language as tl

from .attention_steps import (
    DOT_OPERANDS,
    FWD_BATCH_ARGS,
    causal,
    forward_store,
    head_dims,
    interp_pointer,
    interp_scores,
    key_end,
    key_start,
    masked_scores,
    native_pointer,
    native_scores,
    program_ids,
    query_heads,
    query_rows,
    softmax_step,
    split_fold,
    widen,
)
from .specialization import row_kernel

# ---- forward -----------------------------------------------------------------------------

# The split-KV numerics (``SPLIT``, engine profile only) are flash-decoding's: each item's relative keys are cut
# into chunks of ``split_keys`` (a multiple of BLOCK_N); each chunk's partial output is rounded to the compute
# dtype and the chunks are merged by their log-sum-exps, in chunk order, in fp32 (``split_fold``). Without it
# ``split_keys`` is unused.


@row_kernel(batch_args=FWD_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr,
                         n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                         stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                         stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                         KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                         HAS_KS: tl.constexpr, BLOCK_ITEMS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr = False):
    """Interpreter form: out (items, Tq, D) contiguous and lse, max, sum (items, Tq) fp32 for ``n_items`` = B * H
    items, BLOCK_ITEMS items x BLOCK_M query rows per program. Key-major tiles: scores are (BLOCK_N, items, rows),
    the score products (BLOCK_D, BLOCK_N, items, rows), the P.V products (BLOCK_N, items, rows, BLOCK_D): every
    sum runs along the outermost axis, in index order."""
    pid_i, pid_m = program_ids(Tq, BLOCK_M)
    items = pid_i.to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    item_ok = items < n_items
    b, h, hk = query_heads(items, H, GROUP)
    t, row_ok = query_rows(pid_m, Tq, BLOCK_M)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, item_ok, HAS_KS)
    # keys [ks, Tk) of each item, relative to ks (an item past the end has none)
    n_real = tl.where(item_ok, Tk - ks, 0)
    # load q, widened once: (BLOCK_D, 1, items, rows)
    q_ptrs = (interp_pointer(q_ptr, KIND) + (b * stride_qb + h * stride_qh)[None, None, :, None]
              + (t * stride_qt)[None, None, None, :] + (d * stride_qd)[:, None, None, None])
    q_ok = d_ok[:, None, None, None] & (item_ok[:, None] & row_ok[None, :])[None, None, :, :]
    q = widen(tl.load(q_ptrs, mask=q_ok, other=0), KIND)
    # k and v pointers at relative key 0: k (BLOCK_D, BLOCK_N, items, 1), v (BLOCK_N, items, 1, BLOCK_D)
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    k_rows = b * stride_kb + hk * stride_kh + ks * stride_kt
    k_ptrs = (interp_pointer(k_ptr, KIND) + k_rows[None, None, :, None] + (kr * stride_kt)[None, :, None, None]
              + (d * stride_kd)[:, None, None, None])
    v_rows = b * stride_vb + hk * stride_vh + ks * stride_vt
    v_ptrs = (interp_pointer(v_ptr, KIND) + v_rows[None, :, None, None] + (kr * stride_vt)[:, None, None, None]
              + (d * stride_vd)[None, None, None, :])
    # (relative key, item) limits in the three layouts: k, v, and the (BLOCK_N, items, rows) scores
    k_lim = tl.where(d_ok[:, None, None, None], n_real[None, None, :, None], 0)
    v_lim = tl.where(d_ok[None, None, None, :], n_real[None, :, None, None], 0)
    kr_s = kr[:, None, None]
    key_s = ks[None, :, None] + kr_s                   # absolute key positions of the block at r0 = 0
    if MASK != 0:
        m_ptrs = (mask_ptr + (b * stride_mb + h * stride_mh + ks * stride_mk)[:, None] + (t * stride_mt)[None, :])
        m_ptrs = m_ptrs[None, :, :] + (kr * stride_mk)[:, None, None]
    else:
        m_ptrs = mask_ptr
    m_row_ok = (item_ok[:, None] & row_ok[None, :])[None, :, :]
    run_max = tl.full((BLOCK_ITEMS, BLOCK_M), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_ITEMS, BLOCK_M), tl.float32)
    acc = tl.full((BLOCK_ITEMS, BLOCK_M, BLOCK_D), -0.0, tl.float32)
    if SPLIT:
        tot_max, tot_sum, tot_acc = run_max, run_sum, acc
    r_end = key_end(Tk, Tq, ks_min, pid_m, BLOCK_M, CAUSAL)
    for r0 in range(0, r_end, BLOCK_N):
        # scores of the block: the sum over D in index order, then the scale, then the masks
        k = widen(tl.load(k_ptrs, mask=kr[None, :, None, None] < k_lim - r0, other=0), KIND)
        s = interp_scores(q, k, scale, KIND)
        live = causal(kr_s < n_real[None, :, None] - r0, key_s + r0, ((Tk - Tq) + t)[None, None, :], CAUSAL)
        s, live = masked_scores(s, live, m_ptrs, live & m_row_ok, MASK, MASK_KIND)
        if MASK != 0:
            m_ptrs += BLOCK_N * stride_mk
        # online softmax, then P.V: masked pairs add -0.0, whatever V holds there
        run_max, alpha, e = softmax_step(s, run_max, 0)
        run_sum = run_sum * alpha + tl.sum(e, axis=0)
        v = widen(tl.load(v_ptrs, mask=kr[:, None, None, None] < v_lim - r0, other=0), KIND)
        acc = acc * alpha[:, :, None] + tl.sum(tl.where(live[:, :, :, None], e[:, :, :, None] * v, -0.0), axis=0)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt
        if SPLIT:
            tot_max, tot_sum, tot_acc, run_max, run_sum, acc = split_fold(
                r0 + BLOCK_N, r_end, split_keys, run_max, run_sum, acc, tot_max, tot_sum, tot_acc, KIND)
    if SPLIT:
        run_max, run_sum, acc = tot_max, tot_sum, tot_acc
    # store out, lse and the row statistics
    forward_store(o_ptr, lse_ptr, max_ptr, sum_ptr, items[:, None] * Tq + t[None, :],
                  item_ok[:, None] & row_ok[None, :], d, d_ok, acc, run_max, run_sum, D, KIND)


def check_block_offsets(strides: tuple, block_m: int, block_n: int, block_d: int) -> None:
    """ValueError unless the compiled forward's int32 offsets within a tile fit: ``strides`` are the launch's 16
    (q, k, v, mask; each b, h, t, d/key), the tile BLOCK_M rows x BLOCK_N keys x BLOCK_D dims."""
    k_t, k_d, v_t, v_d, m_t, m_k = (abs(strides[i]) for i in (6, 7, 10, 11, 14, 15))
    reach = {"k": (block_n - 1) * k_t + (block_d - 1) * k_d, "v": (block_n - 1) * v_t + (block_d - 1) * v_d,
             "attn_mask": (block_m - 1) * m_t + (block_n - 1) * m_k}
    too_far = {name: r for name, r in reach.items() if r >= 2**31}
    if too_far:
        raise ValueError(f"attention: the strides of {sorted(too_far)} reach {too_far} elements within one "
                         f"{block_m} x {block_n} x {block_d} tile, past the compiled kernel's int32 offsets "
                         f"(< 2**31); pass contiguous tensors")


@row_kernel(batch_args=FWD_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_fwd_compiled_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr,
                                  n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                                  stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt,
                                  stride_kd, stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh,
                                  stride_mt, stride_mk,
                                  KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr,
                                  CAUSAL: tl.constexpr, HAS_KS: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr = False):
    """Compiled form of ``attention_fwd_kernel``: one item x BLOCK_M query rows per program, (rows, keys) score
    tiles from tl.dot."""
    pid_i, pid_m = program_ids(Tq, BLOCK_M)
    item = pid_i.to(tl.int64)
    b, h, hk = query_heads(item, H, GROUP)
    t, row_ok = query_rows(pid_m, Tq, BLOCK_M)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, True, HAS_KS)
    n_real = Tk - ks
    # load q (rows, BLOCK_D)
    q_ptrs = (native_pointer(q_ptr, KIND) + b * stride_qb + h * stride_qh + t[:, None] * stride_qt
              + d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0)
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    # k^T (BLOCK_D, keys), v (keys, BLOCK_D) and mask (rows, keys) tiles: a 64-bit base per key block, stepped
    # along the keys, plus int32 offsets within the block (ops/attention.py checks that they fit). A tile of 64-bit
    # pointers would hold two registers an element, and at head dims 64 and 128 the kernel spilled.
    key_lane = tl.arange(0, BLOCK_N)
    dim_lane = tl.arange(0, BLOCK_D)
    k_base = native_pointer(k_ptr, KIND) + b * stride_kb + hk * stride_kh + ks * stride_kt
    v_base = native_pointer(v_ptr, KIND) + b * stride_vb + hk * stride_vh + ks * stride_vt
    kt_offs = key_lane[None, :] * stride_kt + dim_lane[:, None] * stride_kd
    v_offs = key_lane[:, None] * stride_vt + dim_lane[None, :] * stride_vd
    if MASK != 0:
        m_base = mask_ptr + b * stride_mb + h * stride_mh + (pid_m.to(tl.int64) * BLOCK_M) * stride_mt + ks * stride_mk
        m_offs = tl.arange(0, BLOCK_M)[:, None] * stride_mt + key_lane[None, :] * stride_mk
    else:
        m_base = mask_ptr
        m_offs = 0
    run_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.full((BLOCK_M, BLOCK_D), -0.0, tl.float32)
    if SPLIT:
        tot_max, tot_sum, tot_acc = run_max, run_sum, acc
    r_end = key_end(Tk, Tq, ks_min, pid_m, BLOCK_M, CAUSAL)
    for r0 in range(0, r_end, BLOCK_N):
        # scores of the block, then the masks
        key_ok = kr + r0 < n_real
        kt = tl.load(k_base + kt_offs, mask=d_ok[:, None] & key_ok[None, :], other=0)
        s = native_scores(q, kt, scale, KIND)
        live = causal(key_ok[None, :] & row_ok[:, None], (ks + kr + r0)[None, :], ((Tk - Tq) + t)[:, None], CAUSAL)
        s, live = masked_scores(s, live, m_base + m_offs, live, MASK, MASK_KIND)
        if MASK != 0:
            m_base += BLOCK_N * tl.cast(stride_mk, tl.int64)
        # online softmax, then P.V; V rows of keys no row of the tile attends are zeroed (0 * inf inside the
        # dot would be NaN)
        run_max, alpha, e = softmax_step(s, run_max, 1)
        e = tl.where(live, e, 0.0)
        run_sum = run_sum * alpha + tl.sum(e, axis=1)
        attended = tl.max(live.to(tl.int32), axis=0) > 0
        v = tl.load(v_base + v_offs, mask=key_ok[:, None] & d_ok[None, :], other=0).to(tl.float32)
        v = tl.where(attended[:, None], v, 0.0)
        acc = tl.dot(e, v, acc * alpha[:, None], input_precision="ieee")
        k_base += BLOCK_N * tl.cast(stride_kt, tl.int64)
        v_base += BLOCK_N * tl.cast(stride_vt, tl.int64)
        if SPLIT:
            tot_max, tot_sum, tot_acc, run_max, run_sum, acc = split_fold(
                r0 + BLOCK_N, r_end, split_keys, run_max, run_sum, acc, tot_max, tot_sum, tot_acc, KIND)
    if SPLIT:
        run_max, run_sum, acc = tot_max, tot_sum, tot_acc
    # store out, lse and the row statistics
    forward_store(o_ptr, lse_ptr, max_ptr, sum_ptr, item * Tq + t, row_ok, d, d_ok, acc, run_max, run_sum, D, KIND)
