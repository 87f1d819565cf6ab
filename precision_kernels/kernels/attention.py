"""Fused attention: out = softmax(q k^T * scale + mask) v, one pass over the keys, no (Tq x Tk) buffer.

Three kernels, each with an interpreter form and a compiled (``NATIVE_DOT``) form; the forward, the
loading, masking and score helpers, and the backward's per-block P and dP live here, the two backward
kernels in kernels/attention_backward.py:

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
  (``_scores``): a score's error, times the scale, reaches every P of its row.
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

Compiled form: one item per program, ``tl.dot`` for q k^T on native fp16/bf16 operands (fp64 for fp32
inputs, ``_native_scores``) and IEEE fp32 ``tl.dot`` for every product with P, dS or dO (so P is never rounded to 16
bits); D is padded to a power of two >= 16. A value-level ``tl.where`` cannot reach inside a ``tl.dot``:
keys outside ``[ks, Tk)`` and rows outside ``[0, Tq)`` load as 0, and in the forward the V rows of keys
that no row of the tile attends are zeroed, but a NaN or inf in a slot that is masked for some (row, key)
pairs of a tile and live for others (a V row some rows of the tile attend; in the backward also q, k and
dO) reaches the masked pairs' sums as NaN. The interpreter form has no such case.

Batch-varying arguments (item count, Tq, Tk, strides that contain them, the host-side bounds) are never
specialised (``kernels/specialization.py``).
"""

import triton
import triton.language as tl

from .rounding import round_fp32, to_fp32
from .specialization import row_kernel

# Operands that only feed tl.dot keep their alignment facts; everything else carries none (the masks,
# the per-row statistics and dO reach reductions and selections over loaded tiles).
DOT_OPERANDS = ("q_ptr", "k_ptr", "v_ptr", "D", "stride_qt", "stride_qd", "stride_kt", "stride_kd",
                "stride_vt", "stride_vd")
# Every argument whose value changes with the batch, the sequence lengths or the padding.
_STRIDES = ("stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_vb", "stride_vh",
            "stride_mb", "stride_mh", "stride_mt", "stride_mk")
DQ_BATCH_ARGS = ("n_items", "Tq", "Tk", "ks_min") + _STRIDES + ("stride_dob", "stride_doh")
FWD_BATCH_ARGS = ("n_items", "Tq", "Tk", "ks_min", "split_keys") + _STRIDES
DKDV_BATCH_ARGS = ("n_kv_items", "Tq", "Tk", "ks_min", "qb_hi", "shift_min") + _STRIDES + (
    "stride_dob", "stride_doh")

# ---- loading -------------------------------------------------------------------------------


@triton.jit
def _interp_pointer(p, KIND: tl.constexpr):
    """Interpreter: 16-bit data is read through fp16 pointers (numpy widens them exactly) or, for bf16,
    uint16 pointers (widened by a shift; the interpreter's bf16 conversions are wrong)."""
    if KIND == 1:
        return p.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == 2:
        return p.to(tl.pointer_type(tl.uint16), bitcast=True)
    else:
        return p


@triton.jit
def _native_pointer(p, KIND: tl.constexpr):
    """Compiled: int16 pointers of 16-bit data as fp16/bf16 pointers (loads feed tl.dot directly)."""
    if KIND == 1:
        return p.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == 2:
        return p.to(tl.pointer_type(tl.bfloat16), bitcast=True)
    else:
        return p


@triton.jit
def _widen(x, KIND: tl.constexpr, NATIVE_DOT: tl.constexpr):
    """Exact fp32 value of a tile loaded through ``_interp_pointer`` / ``_native_pointer``."""
    if KIND == 2 and not NATIVE_DOT:
        return (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def _mask_values(mask_ptrs, ok, s, MASK: tl.constexpr, MASK_KIND: tl.constexpr):
    """Apply the user mask to fp32 scores ``s``: bool (MASK=1, True attends) -> -inf where False;
    additive (MASK=2, fp32/fp16/bf16 widened exactly) -> s + mask, -inf where the mask is -inf."""
    if MASK == 1:
        allowed = tl.load(mask_ptrs, mask=ok, other=0) != 0
        s = tl.where(allowed, s, float("-inf"))
    elif MASK == 2:
        raw = tl.load(mask_ptrs, mask=ok, other=0)
        if MASK_KIND == 1:
            add = raw.to(tl.float16, bitcast=True).to(tl.float32)
        elif MASK_KIND == 2:
            add = (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            add = raw
        # -inf masks the pair whatever its score (a NaN score of a masked pair must not leak)
        s = tl.where(add == float("-inf"), float("-inf"), s + add)
    return s


@triton.jit
def _scores(q, k, scale, KIND: tl.constexpr):
    """Interpreter: scaled scores of widened (BLOCK_D, ...) tiles, summed along axis 0 in index order. fp32
    operands multiply exactly in fp64 (their fp32 product would round) and are summed in fp64, then the sum
    times the scale is rounded to fp32 once; fp16/bf16 products are exact in fp32 and are summed there."""
    if KIND == 0:
        return (tl.sum(q.to(tl.float64) * k.to(tl.float64), axis=0) * scale).to(tl.float32)
    else:
        return tl.sum(q * k, axis=0) * scale


@triton.jit
def _native_scores(q, kt, scale, KIND: tl.constexpr):
    """Compiled: (rows, keys) scaled scores of q (rows, BLOCK_D) and k^T (BLOCK_D, keys) by tl.dot: fp64 for fp32
    operands, rounded to fp32 once with the scale, as ``_scores``; fp16/bf16 operands as they are, fp32 sums."""
    if KIND == 0:
        return (tl.dot(q.to(tl.float64), kt.to(tl.float64)) * scale).to(tl.float32)
    else:
        return tl.dot(q, kt, input_precision="ieee") * scale


# ---- the backward's P, dP and delta terms ---------------------------------------------------


@triton.jit
def _delta_terms(p, dp, live, KIND: tl.constexpr):
    """P dP of the live pairs (-0.0 elsewhere). For fp32 inputs in fp64 (exact products, summed in fp64 and
    rounded once): delta's error enters every dS of its row, and an fp32 sum over the keys would dominate dq's."""
    if KIND == 0:
        return tl.where(live, p.to(tl.float64) * dp.to(tl.float64), -0.0)
    else:
        return tl.where(live, p * dp, -0.0)


@triton.jit
def _dq_tile_interpreted(q, do, k_ptrs, v_ptrs, m_ptrs, kv_ok, live, ok2, row_max, row_sum, scale,
                         KIND: tl.constexpr, DO_KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr):
    """(live, P, dP) of one key block as (BLOCK_N, items, rows) tiles: ``live`` enters with the key range and the
    causal rule, the mask is applied here; P = exp(s - max) / sum from the forward's row statistics (0 where not
    live)."""
    k = _widen(tl.load(k_ptrs, mask=kv_ok, other=0), KIND, False)
    s = _scores(q, k, scale, KIND)
    if MASK != 0:
        s = _mask_values(m_ptrs, live & ok2[None, :, :], s, MASK, MASK_KIND)
    s = tl.where(live, s, float("-inf"))
    live = s != float("-inf")
    p = tl.where(live, tl.div_rn(tl.exp(s - row_max), row_sum), 0.0)
    v = _widen(tl.load(v_ptrs, mask=kv_ok, other=0), KIND, False)
    return live, p, tl.sum(do * v, axis=0)


@triton.jit
def _dq_tile_native(q, do, kt_ptrs, vt_ptrs, m_ptrs, key_ok, live, d_ok, row_max, row_sum, scale,
                    KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr):
    """Compiled: (live, P, dP) of one key block as (rows, keys) tiles, as ``_dq_tile_interpreted``."""
    kt = tl.load(kt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0)
    s = _native_scores(q, kt, scale, KIND)
    if MASK != 0:
        s = _mask_values(m_ptrs, live, s, MASK, MASK_KIND)
    s = tl.where(live, s, float("-inf"))
    live = s != float("-inf")
    p = tl.where(live, tl.div_rn(tl.exp(s - row_max[:, None]), row_sum[:, None]), 0.0)
    vt = tl.load(vt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0).to(tl.float32)
    return live, p, tl.dot(do, vt, input_precision="ieee")


# ---- forward -------------------------------------------------------------------------------


@triton.jit
def _fwd_interpreted(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr, pid_i, pid_m,
                     n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                     stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                     stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                     KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                     HAS_KS: tl.constexpr, BLOCK_ITEMS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
    """Interpreter forward of BLOCK_ITEMS items x BLOCK_M query rows. Key-major tiles: scores are
    (BLOCK_N, items, rows), the score products (BLOCK_D, BLOCK_N, items, rows), the P.V products
    (BLOCK_N, items, rows, BLOCK_D): every sum runs along the outermost axis, in index order."""
    items = pid_i.to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    item_ok = items < n_items
    b = items // H
    h = items % H
    hk = h // GROUP
    t = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = t < Tq
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = d < D
    if HAS_KS:
        ks = tl.load(ks_ptr + b, mask=item_ok, other=0)
    else:
        ks = tl.zeros((BLOCK_ITEMS,), tl.int64)
    # keys [ks, Tk) of each item, relative to ks (an item past the end has none)
    n_real = tl.where(item_ok, Tk - ks, 0)
    # q, widened once: (BLOCK_D, 1, items, rows)
    q_base = _interp_pointer(q_ptr, KIND)
    q_ptrs = (q_base + (b * stride_qb + h * stride_qh)[None, None, :, None] + (t * stride_qt)[None, None, None, :]
              + (d * stride_qd)[:, None, None, None])
    q_ok = d_ok[:, None, None, None] & (item_ok[:, None] & row_ok[None, :])[None, None, :, :]
    q = _widen(tl.load(q_ptrs, mask=q_ok, other=0), KIND, False)
    # k and v pointers at relative key 0: k (BLOCK_D, BLOCK_N, items, 1), v (BLOCK_N, items, 1, BLOCK_D)
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    k_rows = b * stride_kb + hk * stride_kh + ks * stride_kt
    k_ptrs = (_interp_pointer(k_ptr, KIND) + k_rows[None, None, :, None] + (kr * stride_kt)[None, :, None, None]
              + (d * stride_kd)[:, None, None, None])
    v_rows = b * stride_vb + hk * stride_vh + ks * stride_vt
    v_ptrs = (_interp_pointer(v_ptr, KIND) + v_rows[None, :, None, None] + (kr * stride_vt)[:, None, None, None]
              + (d * stride_vd)[None, None, None, :])
    # (relative key, item) limits in the three layouts: k, v, and the (BLOCK_N, items, rows) scores
    k_lim = tl.where(d_ok[:, None, None, None], n_real[None, None, :, None], 0)
    v_lim = tl.where(d_ok[None, None, None, :], n_real[None, :, None, None], 0)
    kr_k = kr[None, :, None, None]
    kr_v = kr[:, None, None, None]
    kr_s = kr[:, None, None]
    lim_s = n_real[None, :, None]
    if CAUSAL:
        # relative key r is visible from row t when ks + r <= Tk - Tq + t
        c_lim = ((Tk - Tq) + t)[None, :] - ks[:, None]
    if MASK != 0:
        m_ptrs = (mask_ptr + (b * stride_mb + h * stride_mh + ks * stride_mk)[:, None] + (t * stride_mt)[None, :])
        m_ptrs = m_ptrs[None, :, :] + (kr * stride_mk)[:, None, None]
        m_row_ok = (item_ok[:, None] & row_ok[None, :])[None, :, :]
    run_max = tl.full((BLOCK_ITEMS, BLOCK_M), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_ITEMS, BLOCK_M), tl.float32)
    acc = tl.full((BLOCK_ITEMS, BLOCK_M, BLOCK_D), -0.0, tl.float32)
    if SPLIT:
        tot_max, tot_sum, tot_acc = run_max, run_sum, acc
    # relative keys past the last one any row of the tile can see hold no live pair: not visited
    r_end = Tk - ks_min
    if CAUSAL:
        r_end = tl.minimum(r_end, (Tk - Tq) + (pid_m + 1) * BLOCK_M - ks_min)
    for r0 in range(0, r_end, BLOCK_N):
        # scores: fp32 sum over D in index order, then the scale, then the mask
        k = _widen(tl.load(k_ptrs, mask=kr_k < k_lim - r0, other=0), KIND, False)
        s = _scores(q, k, scale, KIND)
        live = kr_s < lim_s - r0
        if CAUSAL:
            live = live & (kr_s <= c_lim[None, :, :] - r0)
        if MASK != 0:
            s = _mask_values(m_ptrs, live & m_row_ok, s, MASK, MASK_KIND)
            m_ptrs += BLOCK_N * stride_mk
        s = tl.where(live, s, float("-inf"))
        live = s != float("-inf")
        # online softmax over this block
        new_max = tl.maximum(run_max, tl.max(s, axis=0))
        ref = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp(run_max - ref)
        e = tl.exp(s - ref[None, :, :])
        run_sum = run_sum * alpha + tl.sum(e, axis=0)
        run_max = new_max
        # P.V: masked pairs add -0.0, whatever V holds there
        v = _widen(tl.load(v_ptrs, mask=kr_v < v_lim - r0, other=0), KIND, False)
        pv = tl.where(live[:, :, :, None], e[:, :, :, None] * v, -0.0)
        acc = acc * alpha[:, :, None] + tl.sum(pv, axis=0)
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt
        if SPLIT:
            last = ((r0 + BLOCK_N) % split_keys == 0) | (r0 + BLOCK_N >= r_end)
            tot_max, tot_sum, tot_acc, run_max, run_sum, acc = _split_fold(
                run_max, run_sum, acc, tot_max, tot_sum, tot_acc, last, KIND)
    if SPLIT:
        run_max, run_sum, acc = tot_max, tot_sum, tot_acc
    _fwd_store(o_ptr, lse_ptr, max_ptr, sum_ptr, items[:, None] * Tq + t[None, :],
               item_ok[:, None] & row_ok[None, :], d, d_ok, acc, run_max, run_sum, D, KIND)


@triton.jit
def _split_fold(run_max, run_sum, acc, tot_max, tot_sum, tot_acc, last, KIND: tl.constexpr):
    """Engine split-KV (flash-decoding): where ``last`` (the chunk's last key block), the chunk's partial
    output acc / sum is rounded to the compute dtype, as an engine stores it between its split and combine
    kernels, and merged into the totals by its log-sum-exp; the chunk's accumulators restart. Returns
    (total max, total sum, total acc, chunk max, chunk sum, chunk acc). A chunk with no live key has weight 0."""
    empty = run_sum == 0.0
    part = tl.where(tl.expand_dims(empty, -1), 0.0,
                    tl.div_rn(acc, tl.expand_dims(tl.where(empty, 1.0, run_sum), -1)))
    part = to_fp32(round_fp32(part, KIND), KIND)
    lse = tl.where(empty, float("-inf"), run_max + tl.log(tl.where(empty, 1.0, run_sum)))
    new_max = tl.maximum(tot_max, lse)
    ref = tl.where(new_max == float("-inf"), 0.0, new_max)
    w_old = tl.exp(tot_max - ref)
    w_new = tl.exp(lse - ref)
    new_sum = tot_sum * w_old + w_new
    new_acc = tot_acc * tl.expand_dims(w_old, -1) + tl.expand_dims(w_new, -1) * part
    return (tl.where(last, new_max, tot_max), tl.where(last, new_sum, tot_sum),
            tl.where(last, new_acc, tot_acc), tl.where(last, float("-inf"), run_max),
            tl.where(last, 0.0, run_sum), tl.where(last, -0.0, acc))


@triton.jit
def _fwd_store(o_ptr, lse_ptr, max_ptr, sum_ptr, rows, ok, d, d_ok, acc, run_max, run_sum, D, KIND: tl.constexpr):
    """out = acc / sum rounded once (+0 for a row with no live key); lse = max + log(sum) (-inf there); the
    max and the sum themselves, from which the backward recomputes P = exp(s - max) / sum (-inf and 0 there).
    ``rows`` (any shape, that of ``run_sum``) are the rows' indices in the (items * Tq) output rows."""
    empty = run_sum == 0.0
    out = tl.where(tl.expand_dims(empty, -1), 0.0,
                   tl.div_rn(acc, tl.expand_dims(tl.where(empty, 1.0, run_sum), -1)))
    lse = tl.where(empty, float("-inf"), run_max + tl.log(tl.where(empty, 1.0, run_sum)))
    tl.store(lse_ptr + rows, lse, mask=ok)
    tl.store(max_ptr + rows, run_max, mask=ok)
    tl.store(sum_ptr + rows, run_sum, mask=ok)
    tl.store(o_ptr + tl.expand_dims(rows, -1) * D + d, round_fp32(out, KIND), mask=tl.expand_dims(ok, -1) & d_ok)


@triton.jit
def _fwd_native(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr, pid_i, pid_m,
                n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                SPLIT: tl.constexpr):
    """Compiled forward of one item x BLOCK_M query rows: (rows, keys) score tiles from tl.dot."""
    item = pid_i.to(tl.int64)
    b = item // H
    h = item % H
    hk = h // GROUP
    t = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = t < Tq
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = d < D
    if HAS_KS:
        ks = tl.load(ks_ptr + b)
    else:
        ks = b * 0
    n_real = Tk - ks
    q_ptrs = (_native_pointer(q_ptr, KIND) + b * stride_qb + h * stride_qh + t[:, None] * stride_qt
              + d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0)
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    kt_ptrs = (_native_pointer(k_ptr, KIND) + b * stride_kb + hk * stride_kh + (ks + kr)[None, :] * stride_kt
               + d[:, None] * stride_kd)
    v_ptrs = (_native_pointer(v_ptr, KIND) + b * stride_vb + hk * stride_vh + (ks + kr)[:, None] * stride_vt
              + d[None, :] * stride_vd)
    if MASK != 0:
        m_ptrs = (mask_ptr + b * stride_mb + h * stride_mh + t[:, None] * stride_mt
                  + (ks + kr)[None, :] * stride_mk)
    run_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.full((BLOCK_M, BLOCK_D), -0.0, tl.float32)
    if SPLIT:
        tot_max, tot_sum, tot_acc = run_max, run_sum, acc
    r_end = Tk - ks_min
    if CAUSAL:
        r_end = tl.minimum(r_end, (Tk - Tq) + (pid_m + 1) * BLOCK_M - ks_min)
    for r0 in range(0, r_end, BLOCK_N):
        key_ok = kr + r0 < n_real
        kt = tl.load(kt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0)
        s = _native_scores(q, kt, scale, KIND)
        live = key_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            live = live & ((ks + kr + r0)[None, :] <= ((Tk - Tq) + t)[:, None])
        if MASK != 0:
            s = _mask_values(m_ptrs, live, s, MASK, MASK_KIND)
            m_ptrs += BLOCK_N * stride_mk
        s = tl.where(live, s, float("-inf"))
        live = s != float("-inf")
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        ref = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp(run_max - ref)
        e = tl.where(live, tl.exp(s - ref[:, None]), 0.0)
        run_sum = run_sum * alpha + tl.sum(e, axis=1)
        run_max = new_max
        # V rows of keys no row of the tile attends are zeroed (0 * inf inside the dot would be NaN)
        attended = tl.max(live.to(tl.int32), axis=0) > 0
        v = tl.load(v_ptrs, mask=key_ok[:, None] & d_ok[None, :], other=0).to(tl.float32)
        v = tl.where(attended[:, None], v, 0.0)
        acc = tl.dot(e, v, acc * alpha[:, None], input_precision="ieee")
        kt_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt
        if SPLIT:
            last = ((r0 + BLOCK_N) % split_keys == 0) | (r0 + BLOCK_N >= r_end)
            tot_max, tot_sum, tot_acc, run_max, run_sum, acc = _split_fold(
                run_max, run_sum, acc, tot_max, tot_sum, tot_acc, last, KIND)
    if SPLIT:
        run_max, run_sum, acc = tot_max, tot_sum, tot_acc
    _fwd_store(o_ptr, lse_ptr, max_ptr, sum_ptr, item * Tq + t, row_ok, d, d_ok, acc, run_max, run_sum, D, KIND)


@row_kernel(batch_args=FWD_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr,
                         n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                         stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                         stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                         KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                         HAS_KS: tl.constexpr, NATIVE_DOT: tl.constexpr, BLOCK_ITEMS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         SPLIT: tl.constexpr = False):
    """out (items, Tq, D) contiguous and lse (items, Tq) fp32 for ``n_items`` = B * H items.

    ``SPLIT`` (engine profile only): flash-decoding's split-KV numerics. Each item's relative keys are cut into
    chunks of ``split_keys`` (a multiple of BLOCK_N); each chunk's partial output is rounded to the compute
    dtype and the chunks are merged by their log-sum-exps, in chunk order, in fp32 (``_split_fold``). Without
    it ``split_keys`` is unused."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(Tq, BLOCK_M)
    pid_i = pid // n_m
    pid_m = pid % n_m
    if NATIVE_DOT:
        _fwd_native(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr, pid_i, pid_m,
                    n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                    stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                    stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                    KIND, MASK, MASK_KIND, CAUSAL, HAS_KS, BLOCK_M, BLOCK_N, BLOCK_D, SPLIT)
    else:
        _fwd_interpreted(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr, pid_i, pid_m,
                         n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                         stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                         stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                         KIND, MASK, MASK_KIND, CAUSAL, HAS_KS, BLOCK_ITEMS, BLOCK_M, BLOCK_N, BLOCK_D, SPLIT)
