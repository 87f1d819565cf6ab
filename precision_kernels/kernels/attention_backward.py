"""Fused attention's backward, each kernel in its interpreter form and its compiled (``tl.dot``) form:
``attention_bwd_dq_kernel`` / ``attention_bwd_dq_compiled_kernel`` (delta = rowsum(P * dP) and dq) and
``attention_bwd_dkdv_kernel`` / ``attention_bwd_dkdv_compiled_kernel`` (dk and dv). Positions, masking,
numerics and the compiled form are those of the forward, described in kernels/attention.py; the steps all the
attention kernels share are in kernels/attention_steps.py.

delta and dq: two passes over the key blocks in index order (BLOCK_N is the order of every sum): the first sums
delta = sum_j P dP (in fp64 for fp32 inputs, ``_delta_terms``), the second dq = scale * sum_j dS_j k_j with
dS = P (dP - delta), the dk kernel's dS (no cancellation between two large sums). delta comes from the fp32 P
and dP, not from the rounded output.

dk and dv: one program per block of keys. Query blocks run ``0 <= qb < qb_hi`` from each (batch, query head)'s
query origin ``org_ptr[b * H + h]``, its first row that attends a key (rows before it attend none); ``qb_hi``
is a host bound over the batch, and ``shift_min`` bounds how far before a key its first seeing row lies.
"""

import triton
import triton.language as tl

from .attention_steps import (
    DKDV_BATCH_ARGS,
    DOT_OPERANDS,
    DQ_BATCH_ARGS,
    causal,
    first_query_block,
    head_dims,
    interp_pointer,
    interp_scores,
    key_end,
    key_start,
    masked_scores,
    native_pointer,
    native_scores,
    probabilities,
    program_ids,
    query_heads,
    query_rows,
    widen,
)
from .rounding import round_fp32
from .specialization import row_kernel

# ---- the backward's steps ------------------------------------------------------------------------


@triton.jit
def _delta_terms(p, dp, live, KIND: tl.constexpr):
    """P dP of the live pairs (-0.0 elsewhere). For fp32 inputs in fp64 (exact products, summed in fp64 and
    rounded once): delta's error enters every dS of its row, and an fp32 sum over the keys would dominate dq's."""
    if KIND == 0:
        return tl.where(live, p.to(tl.float64) * dp.to(tl.float64), -0.0)
    else:
        return tl.where(live, p * dp, -0.0)


@triton.jit
def _dq_block_interpreted(q, do, k_ptrs, v_ptrs, m_ptrs, kv_ok, key_live, key_pos, row_pos, ok2, row_max, row_sum,
                          scale, KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr,
                          CAUSAL: tl.constexpr):
    """Interpreter form: (live, P, dP) of one key block as (BLOCK_N, items, rows) tiles; ``key_live`` holds the
    pairs in the key range, ``kv_ok`` the k and v lanes to load."""
    live = causal(key_live, key_pos, row_pos, CAUSAL)
    s = interp_scores(q, widen(tl.load(k_ptrs, mask=kv_ok, other=0), KIND), scale, KIND)
    s, live = masked_scores(s, live, m_ptrs, live & ok2[None, :, :], MASK, MASK_KIND)
    p = probabilities(s, live, row_max, row_sum)
    v = widen(tl.load(v_ptrs, mask=kv_ok, other=0), KIND)
    return live, p, tl.sum(do * v, axis=0)


@triton.jit
def _dq_block_compiled(q, do, kt_ptrs, vt_ptrs, m_ptrs, key_ok, key_pos, row_ok, row_pos, d_ok, row_max, row_sum,
                       scale, KIND: tl.constexpr, MASK: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr):
    """Compiled form: (live, P, dP) of one key block as (rows, keys) tiles, as ``_dq_block_interpreted``."""
    live = causal(key_ok[None, :] & row_ok[:, None], key_pos[None, :], row_pos[:, None], CAUSAL)
    kt = tl.load(kt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0)
    s = native_scores(q, kt, scale, KIND)
    s, live = masked_scores(s, live, m_ptrs, live, MASK, MASK_KIND)
    p = probabilities(s, live, row_max[:, None], row_sum[:, None])
    vt = tl.load(vt_ptrs, mask=d_ok[:, None] & key_ok[None, :], other=0).to(tl.float32)
    return live, p, tl.dot(do, vt, input_precision="ieee")


@triton.jit
def _dkdv_store(dk_ptr, dv_ptr, offsets, ok, dk, dv, scale, KIND: tl.constexpr):
    """dk = scale * sum dS q and dv = sum P dO, each rounded once."""
    tl.store(dk_ptr + offsets, round_fp32(dk * scale + 0.0, KIND), mask=ok)
    tl.store(dv_ptr + offsets, round_fp32(dv + 0.0, KIND), mask=ok)


# ---- delta and dq ----------------------------------------------------------------------------------


@row_kernel(batch_args=DQ_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, do_ptr, max_ptr, sum_ptr, delta_ptr, dq_ptr,
                            n_items, H, GROUP, Tq, Tk, D, ks_min, scale,
                            stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                            stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                            stride_dob, stride_doh, stride_dot, stride_dod,
                            KIND: tl.constexpr, DO_KIND: tl.constexpr, MASK: tl.constexpr,
                            MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, HAS_KS: tl.constexpr,
                            BLOCK_ITEMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    """Interpreter form: delta (items, Tq) in fp32, for the dk/dv kernel, and dq (items, Tq, D) contiguous, of
    BLOCK_ITEMS items x BLOCK_M query rows per program, in the forward's key-major layout."""
    pid_i, pid_m = program_ids(Tq, BLOCK_M)
    items = pid_i.to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    item_ok = items < n_items
    b, h, hk = query_heads(items, H, GROUP)
    t, row_ok = query_rows(pid_m, Tq, BLOCK_M)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, item_ok, HAS_KS)
    n_real = tl.where(item_ok, Tk - ks, 0)
    ok2 = item_ok[:, None] & row_ok[None, :]
    rows = items[:, None] * Tq + t[None, :]
    # load q and dO (BLOCK_D, 1, items, rows) and the forward's row statistics
    q_ok = d_ok[:, None, None, None] & ok2[None, None, :, :]
    q_ptrs = (interp_pointer(q_ptr, KIND) + (b * stride_qb + h * stride_qh)[None, None, :, None]
              + (t * stride_qt)[None, None, None, :] + (d * stride_qd)[:, None, None, None])
    q = widen(tl.load(q_ptrs, mask=q_ok, other=0), KIND)
    do_ptrs = (interp_pointer(do_ptr, DO_KIND) + (b * stride_dob + h * stride_doh)[None, None, :, None]
               + (t * stride_dot)[None, None, None, :] + (d * stride_dod)[:, None, None, None])
    do = widen(tl.load(do_ptrs, mask=q_ok, other=0), DO_KIND)
    row_max = tl.load(max_ptr + rows[None, :, :], mask=ok2[None, :, :], other=0.0)
    row_sum = tl.load(sum_ptr + rows[None, :, :], mask=ok2[None, :, :], other=1.0)
    # k and v for the scores and dP (BLOCK_D, BLOCK_N, items, 1); k again for dq (BLOCK_N, items, 1, BLOCK_D)
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    k_rows = b * stride_kb + hk * stride_kh + ks * stride_kt
    k_ptrs = (interp_pointer(k_ptr, KIND) + k_rows[None, None, :, None] + (kr * stride_kt)[None, :, None, None]
              + (d * stride_kd)[:, None, None, None])
    v_rows = b * stride_vb + hk * stride_vh + ks * stride_vt
    v_ptrs = (interp_pointer(v_ptr, KIND) + v_rows[None, None, :, None] + (kr * stride_vt)[None, :, None, None]
              + (d * stride_vd)[:, None, None, None])
    k2_ptrs = (interp_pointer(k_ptr, KIND) + k_rows[None, :, None, None] + (kr * stride_kt)[:, None, None, None]
               + (d * stride_kd)[None, None, None, :])
    kv_lim = tl.where(d_ok[:, None, None, None], n_real[None, None, :, None], 0)
    k2_lim = tl.where(d_ok[None, None, None, :], n_real[None, :, None, None], 0)
    kr_k = kr[None, :, None, None]
    kr_s = kr[:, None, None]
    lim_s = n_real[None, :, None]
    key_s = ks[None, :, None] + kr_s                   # absolute key positions of the block at r0 = 0
    row_pos = ((Tk - Tq) + t)[None, None, :]
    if MASK != 0:
        m_ptrs = (mask_ptr + (b * stride_mb + h * stride_mh + ks * stride_mk)[:, None] + (t * stride_mt)[None, :])
        m_ptrs = m_ptrs[None, :, :] + (kr * stride_mk)[:, None, None]
    else:
        m_ptrs = mask_ptr
    r_end = key_end(Tk, Tq, ks_min, pid_m, BLOCK_M, CAUSAL)
    # pass 1: delta, whose value pass 2 needs in every block; store it
    if KIND == 0:
        delta_sum = tl.full((BLOCK_ITEMS, BLOCK_M), -0.0, tl.float64)
    else:
        delta_sum = tl.full((BLOCK_ITEMS, BLOCK_M), -0.0, tl.float32)
    for r0 in range(0, r_end, BLOCK_N):
        live, p, dp = _dq_block_interpreted(q, do, k_ptrs + r0 * stride_kt, v_ptrs + r0 * stride_vt,
                                            m_ptrs + r0 * stride_mk, kr_k < kv_lim - r0, kr_s < lim_s - r0,
                                            key_s + r0, row_pos, ok2, row_max, row_sum, scale, KIND, MASK, MASK_KIND,
                                            CAUSAL)
        delta_sum += tl.sum(_delta_terms(p, dp, live, KIND), axis=0)
    delta = delta_sum.to(tl.float32)
    tl.store(delta_ptr + rows, delta + 0.0, mask=ok2)
    # pass 2: dq = scale * sum_j dS_j k_j, dS = P (dP - delta); store it
    acc = tl.full((BLOCK_ITEMS, BLOCK_M, BLOCK_D), -0.0, tl.float32)
    for r0 in range(0, r_end, BLOCK_N):
        live, p, dp = _dq_block_interpreted(q, do, k_ptrs + r0 * stride_kt, v_ptrs + r0 * stride_vt,
                                            m_ptrs + r0 * stride_mk, kr_k < kv_lim - r0, kr_s < lim_s - r0,
                                            key_s + r0, row_pos, ok2, row_max, row_sum, scale, KIND, MASK, MASK_KIND,
                                            CAUSAL)
        ds = tl.where(live, p * (dp - delta[None, :, :]), -0.0)
        k2 = widen(tl.load(k2_ptrs + r0 * stride_kt, mask=kr[:, None, None, None] < k2_lim - r0, other=0), KIND)
        acc += tl.sum(tl.where(live[:, :, :, None], ds[:, :, :, None] * k2, -0.0), axis=0)
    tl.store(dq_ptr + rows[:, :, None] * D + d[None, None, :], round_fp32(acc * scale + 0.0, KIND),
             mask=ok2[:, :, None] & d_ok[None, None, :])


@row_kernel(batch_args=DQ_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_bwd_dq_compiled_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, do_ptr, max_ptr, sum_ptr, delta_ptr,
                                     dq_ptr, n_items, H, GROUP, Tq, Tk, D, ks_min, scale,
                                     stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt,
                                     stride_kd, stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh,
                                     stride_mt, stride_mk, stride_dob, stride_doh, stride_dot, stride_dod,
                                     KIND: tl.constexpr, DO_KIND: tl.constexpr, MASK: tl.constexpr,
                                     MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, HAS_KS: tl.constexpr,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Compiled form of ``attention_bwd_dq_kernel``: one item x BLOCK_M query rows per program, its sums by
    tl.dot."""
    pid_i, pid_m = program_ids(Tq, BLOCK_M)
    item = pid_i.to(tl.int64)
    b, h, hk = query_heads(item, H, GROUP)
    t, row_ok = query_rows(pid_m, Tq, BLOCK_M)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, True, HAS_KS)
    n_real = Tk - ks
    rows = item * Tq + t
    # load q and dO (rows, BLOCK_D) and the forward's row statistics
    q_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(native_pointer(q_ptr, KIND) + b * stride_qb + h * stride_qh + t[:, None] * stride_qt
                + d[None, :] * stride_qd, mask=q_ok, other=0)
    do = tl.load(native_pointer(do_ptr, DO_KIND) + b * stride_dob + h * stride_doh + t[:, None] * stride_dot
                 + d[None, :] * stride_dod, mask=q_ok, other=0).to(tl.float32)
    row_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
    row_sum = tl.load(sum_ptr + rows, mask=row_ok, other=1.0)
    # k^T and v^T (BLOCK_D, keys) for the scores and dP, k (keys, BLOCK_D) for dq, at relative key 0
    kr = tl.arange(0, BLOCK_N).to(tl.int64)
    k_base = native_pointer(k_ptr, KIND) + b * stride_kb + hk * stride_kh
    v_base = native_pointer(v_ptr, KIND) + b * stride_vb + hk * stride_vh
    kt_ptrs = k_base + (ks + kr)[None, :] * stride_kt + d[:, None] * stride_kd
    k_ptrs = k_base + (ks + kr)[:, None] * stride_kt + d[None, :] * stride_kd
    vt_ptrs = v_base + (ks + kr)[None, :] * stride_vt + d[:, None] * stride_vd
    if MASK != 0:
        m_ptrs = (mask_ptr + b * stride_mb + h * stride_mh + t[:, None] * stride_mt
                  + (ks + kr)[None, :] * stride_mk)
    else:
        m_ptrs = mask_ptr
    r_end = key_end(Tk, Tq, ks_min, pid_m, BLOCK_M, CAUSAL)
    # pass 1: delta; store it
    if KIND == 0:
        delta_sum = tl.full((BLOCK_M,), -0.0, tl.float64)
    else:
        delta_sum = tl.full((BLOCK_M,), -0.0, tl.float32)
    for r0 in range(0, r_end, BLOCK_N):
        key_ok = kr + r0 < n_real
        live, p, dp = _dq_block_compiled(q, do, kt_ptrs + r0 * stride_kt, vt_ptrs + r0 * stride_vt,
                                         m_ptrs + r0 * stride_mk, key_ok, ks + kr + r0, row_ok, (Tk - Tq) + t, d_ok,
                                         row_max, row_sum, scale, KIND, MASK, MASK_KIND, CAUSAL)
        delta_sum += tl.sum(_delta_terms(p, dp, live, KIND), axis=1)
    delta = delta_sum.to(tl.float32)
    tl.store(delta_ptr + rows, delta + 0.0, mask=row_ok)
    # pass 2: dq; store it
    acc = tl.full((BLOCK_M, BLOCK_D), -0.0, tl.float32)
    for r0 in range(0, r_end, BLOCK_N):
        key_ok = kr + r0 < n_real
        live, p, dp = _dq_block_compiled(q, do, kt_ptrs + r0 * stride_kt, vt_ptrs + r0 * stride_vt,
                                         m_ptrs + r0 * stride_mk, key_ok, ks + kr + r0, row_ok, (Tk - Tq) + t, d_ok,
                                         row_max, row_sum, scale, KIND, MASK, MASK_KIND, CAUSAL)
        ds = tl.where(live, p * (dp - delta[:, None]), 0.0)
        k = tl.load(k_ptrs + r0 * stride_kt, mask=key_ok[:, None] & d_ok[None, :], other=0).to(tl.float32)
        acc = tl.dot(ds, k, acc, input_precision="ieee")
    tl.store(dq_ptr + rows[:, None] * D + d[None, :], round_fp32(acc * scale + 0.0, KIND), mask=q_ok)


# ---- dk and dv -------------------------------------------------------------------------------------


@row_kernel(batch_args=DKDV_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, org_ptr, do_ptr, max_ptr, sum_ptr, delta_ptr,
                              dk_ptr, dv_ptr, n_kv_items, H, HKV, GROUP, Tq, Tk, D, ks_min, scale, qb_hi, shift_min,
                              stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                              stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                              stride_dob, stride_doh, stride_dot, stride_dod,
                              KIND: tl.constexpr, DO_KIND: tl.constexpr, MASK: tl.constexpr,
                              MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, HAS_KS: tl.constexpr,
                              BLOCK_ITEMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
    """Interpreter form: dk, dv (B * HKV, Tk, D) contiguous, of BLOCK_ITEMS (batch, kv head) items x BLOCK_N keys
    per program. Query-major tiles: scores (BLOCK_M, items, keys); the sums over a query block run along its
    outermost axis, in row order."""
    pid_i, pid_n = program_ids(Tk - ks_min, BLOCK_N)
    items = pid_i.to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    item_ok = items < n_kv_items
    b = items // HKV
    hk = items % HKV
    n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, item_ok, HAS_KS)
    key = ks[:, None] + n[None, :]                                   # (items, keys): absolute key positions
    key_ok = item_ok[:, None] & (key < Tk)
    # load k and v, widened once: (BLOCK_D, 1, items, keys)
    kv_ok = d_ok[:, None, None, None] & key_ok[None, None, :, :]
    k = widen(tl.load(interp_pointer(k_ptr, KIND) + (b * stride_kb + hk * stride_kh)[None, None, :, None]
                      + (key * stride_kt)[None, None, :, :] + (d * stride_kd)[:, None, None, None],
                      mask=kv_ok, other=0), KIND)
    v = widen(tl.load(interp_pointer(v_ptr, KIND) + (b * stride_vb + hk * stride_vh)[None, None, :, None]
                      + (key * stride_vt)[None, None, :, :] + (d * stride_vd)[:, None, None, None],
                      mask=kv_ok, other=0), KIND)
    i_rows = tl.arange(0, BLOCK_M).to(tl.int64)
    qb_start = first_query_block(pid_n, shift_min, BLOCK_N, BLOCK_M, CAUSAL)
    dk = tl.full((BLOCK_ITEMS, BLOCK_N, BLOCK_D), -0.0, tl.float32)
    dv = tl.full((BLOCK_ITEMS, BLOCK_N, BLOCK_D), -0.0, tl.float32)
    key_s = key[None, :, :]
    key_ok_s = key_ok[None, :, :]
    for g in range(GROUP):
        h = hk * GROUP + g
        # query blocks start at the head's query origin (ops/attention._query_origins): its first live row
        q_org = tl.load(org_ptr + b * H + h, mask=item_ok, other=0)
        q_rows = b * stride_qb + h * stride_qh
        do_rows = b * stride_dob + h * stride_doh
        for qb in range(qb_start, qb_hi):
            t = q_org[None, :] + qb * BLOCK_M + i_rows[:, None]        # (rows, items)
            row_ok = (t >= 0) & (t < Tq) & item_ok[None, :]
            t_ok4 = row_ok[None, :, :, None] & d_ok[:, None, None, None]
            t_ok4b = row_ok[:, :, None, None] & d_ok[None, None, None, :]
            # scores and P: q as (BLOCK_D, rows, items, 1); q and dO as (rows, items, 1, BLOCK_D) for dk and dv
            q_off = q_rows[None, :] + t * stride_qt
            do_off = do_rows[None, :] + t * stride_dot
            q = widen(tl.load(interp_pointer(q_ptr, KIND) + q_off[None, :, :, None]
                              + (d * stride_qd)[:, None, None, None], mask=t_ok4, other=0), KIND)
            s = interp_scores(q, k, scale, KIND)
            live = causal(row_ok[:, :, None] & key_ok_s, key_s, ((Tk - Tq) + t)[:, :, None], CAUSAL)
            if MASK != 0:
                m_ptrs = (mask_ptr + (b * stride_mb + h * stride_mh)[None, :, None] + (t * stride_mt)[:, :, None]
                          + key_s * stride_mk)
            else:
                m_ptrs = mask_ptr
            s, live = masked_scores(s, live, m_ptrs, live, MASK, MASK_KIND)
            rows = (b * H + h)[None, :] * Tq + t
            row_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)[:, :, None]
            row_sum = tl.load(sum_ptr + rows, mask=row_ok, other=1.0)[:, :, None]
            p = probabilities(s, live, row_max, row_sum)
            live4 = live[:, :, :, None]
            # dv += P^T dO; dS = P (dP - delta); dk += dS^T q
            do2 = widen(tl.load(interp_pointer(do_ptr, DO_KIND) + do_off[:, :, None, None]
                                + (d * stride_dod)[None, None, None, :], mask=t_ok4b, other=0), DO_KIND)
            dv += tl.sum(tl.where(live4, p[:, :, :, None] * do2, -0.0), axis=0)
            do = widen(tl.load(interp_pointer(do_ptr, DO_KIND) + do_off[None, :, :, None]
                               + (d * stride_dod)[:, None, None, None], mask=t_ok4, other=0), DO_KIND)
            dp = tl.sum(do * v, axis=0)
            delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)[:, :, None]
            ds = tl.where(live, p * (dp - delta), 0.0)
            q2 = widen(tl.load(interp_pointer(q_ptr, KIND) + q_off[:, :, None, None]
                               + (d * stride_qd)[None, None, None, :], mask=t_ok4b, other=0), KIND)
            dk += tl.sum(tl.where(live4, ds[:, :, :, None] * q2, -0.0), axis=0)
    _dkdv_store(dk_ptr, dv_ptr, (items[:, None] * Tk + key)[:, :, None] * D + d[None, None, :],
                key_ok[:, :, None] & d_ok[None, None, :], dk, dv, scale, KIND)


@row_kernel(batch_args=DKDV_BATCH_ARGS, keep_alignment=DOT_OPERANDS)
def attention_bwd_dkdv_compiled_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, org_ptr, do_ptr, max_ptr, sum_ptr,
                                       delta_ptr, dk_ptr, dv_ptr, n_kv_items, H, HKV, GROUP, Tq, Tk, D, ks_min,
                                       scale, qb_hi, shift_min,
                                       stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt,
                                       stride_kd, stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh,
                                       stride_mt, stride_mk, stride_dob, stride_doh, stride_dot, stride_dod,
                                       KIND: tl.constexpr, DO_KIND: tl.constexpr, MASK: tl.constexpr,
                                       MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, HAS_KS: tl.constexpr,
                                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Compiled form of ``attention_bwd_dkdv_kernel``: one (batch, kv head) item x BLOCK_N keys per program;
    (rows, keys) tiles from tl.dot."""
    pid_i, pid_n = program_ids(Tk - ks_min, BLOCK_N)
    item = pid_i.to(tl.int64)
    b = item // HKV
    hk = item % HKV
    n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    d, d_ok = head_dims(D, BLOCK_D)
    ks = key_start(ks_ptr, b, True, HAS_KS)
    key = ks + n
    key_ok = key < Tk
    # load k^T and v^T (BLOCK_D, keys)
    kv_ok = d_ok[:, None] & key_ok[None, :]
    kt = tl.load(native_pointer(k_ptr, KIND) + b * stride_kb + hk * stride_kh + key[None, :] * stride_kt
                 + d[:, None] * stride_kd, mask=kv_ok, other=0)
    vt = tl.load(native_pointer(v_ptr, KIND) + b * stride_vb + hk * stride_vh + key[None, :] * stride_vt
                 + d[:, None] * stride_vd, mask=kv_ok, other=0).to(tl.float32)
    i_rows = tl.arange(0, BLOCK_M).to(tl.int64)
    qb_start = first_query_block(pid_n, shift_min, BLOCK_N, BLOCK_M, CAUSAL)
    dk = tl.full((BLOCK_N, BLOCK_D), -0.0, tl.float32)
    dv = tl.full((BLOCK_N, BLOCK_D), -0.0, tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_org = tl.load(org_ptr + b * H + h)
        for qb in range(qb_start, qb_hi):
            t = q_org + qb * BLOCK_M + i_rows
            row_ok = (t >= 0) & (t < Tq)
            t_ok = row_ok[:, None] & d_ok[None, :]
            # scores and P (rows, keys)
            q = tl.load(native_pointer(q_ptr, KIND) + b * stride_qb + h * stride_qh + t[:, None] * stride_qt
                        + d[None, :] * stride_qd, mask=t_ok, other=0)
            s = native_scores(q, kt, scale, KIND)
            live = causal(row_ok[:, None] & key_ok[None, :], key[None, :], ((Tk - Tq) + t)[:, None], CAUSAL)
            if MASK != 0:
                m_ptrs = mask_ptr + b * stride_mb + h * stride_mh + t[:, None] * stride_mt + key[None, :] * stride_mk
            else:
                m_ptrs = mask_ptr
            s, live = masked_scores(s, live, m_ptrs, live, MASK, MASK_KIND)
            rows = (b * H + h) * Tq + t
            row_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
            row_sum = tl.load(sum_ptr + rows, mask=row_ok, other=1.0)
            p = probabilities(s, live, row_max[:, None], row_sum[:, None])
            # dv += P^T dO; dS = P (dP - delta); dk += dS^T q
            do = tl.load(native_pointer(do_ptr, DO_KIND) + b * stride_dob + h * stride_doh + t[:, None] * stride_dot
                         + d[None, :] * stride_dod, mask=t_ok, other=0).to(tl.float32)
            dv = tl.dot(tl.trans(p), do, dv, input_precision="ieee")
            dp = tl.dot(do, vt, input_precision="ieee")
            delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
            ds = tl.where(live, p * (dp - delta[:, None]), 0.0)
            dk = tl.dot(tl.trans(ds), q.to(tl.float32), dk, input_precision="ieee")
    _dkdv_store(dk_ptr, dv_ptr, (item * Tk + key)[:, None] * D + d[None, :], key_ok[:, None] & d_ok[None, :], dk, dv,
                scale, KIND)
