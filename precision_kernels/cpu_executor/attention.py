"""Twins of fused attention's interpreter forms (kernels/attention.py, kernels/attention_backward.py, their shared
steps in kernels/attention_steps.py): ``attention_fwd_kernel`` (split-KV included), ``attention_bwd_dq_kernel``,
``attention_bwd_dkdv_kernel``.

The interpreter form sums every product tile along its outermost axis (D for the scores and dP, the key
block for the softmax sums and P.V, the query block for dk/dv), in index order, by numpy; its tiles keep
at least two elements in the other axes. The twins run the same numpy calls on C-contiguous tiles with the
reduced axis outermost, vectorised over all (batch, head) items at once: items and rows are independent
lanes of every tile, so only the reduced axis and the walk over blocks have to follow the kernel. The
walk follows it exactly: the forward and dq visit, per query block of BLOCK_M rows, the key blocks of
BLOCK_N keys from ``ks_min`` up to the same causal bound; dk/dv visit, per key block of BLOCK_N keys, the
heads of the group and the query blocks of BLOCK_M rows from each head's query origin. Masked pairs get
the kernel's identities (-inf scores, -0.0 terms, +0 loads). Everything but the final 16-bit rounding
(``_rows.store_flat``) and the split-KV chunk rounding (``_numba.round_all``) is numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from ..kernels.attention import attention_fwd_kernel
from ..kernels.attention_backward import attention_bwd_dkdv_kernel, attention_bwd_dq_kernel
from . import _rows, twin
from ._numba import flat, round_all
from ._rows import NEG_INF, ONE, ZERO, elements, store_flat, widened

NEG_ZERO = np.float32(-0.0)
_MASK_BOOL, _MASK_ADD = 1, 2


def _c(a: np.ndarray) -> np.ndarray:
    """C-contiguous: a ufunc's output follows its inputs' memory order, and a sum's order follows the layout."""
    return np.ascontiguousarray(a)


def _heads(t, kind, shape, strides, block_d):
    """(B * heads, T, BLOCK_D) fp32 of a (B, heads, T, D) operand read through its strides; lanes d >= D are +0."""
    bsz, heads, tlen, d = shape
    out = np.zeros((bsz * heads, tlen, block_d), np.float32)
    if out.size:
        out[:, :, :d] = widened(np.array(elements(t, shape, strides)), kind).reshape(bsz * heads, tlen, d)
    return out


def _relative_keys(kv, kv_item, ks, n_real, extent):
    """(items, extent, BLOCK_D): key ks + r of each item's key/value head at relative key r, +0 past its last key."""
    tk = kv.shape[1]
    r = np.arange(extent)
    absolute = np.minimum(ks[:, None] + r[None, :], max(tk - 1, 0))
    out = kv[kv_item[:, None], absolute] if tk else np.zeros((len(ks), extent, kv.shape[2]), np.float32)
    return np.where((r[None, :] < n_real[:, None])[:, :, None], out, ZERO).astype(np.float32)


def _scores(q, k, scale, kind):
    """``attention_steps.interp_scores``: fp32 operands multiplied and summed in fp64, times the fp32 scale,
    rounded once."""
    if kind == 0:
        return (np.sum(q.astype(np.float64) * k.astype(np.float64), axis=0) * np.float64(scale)).astype(np.float32)
    return np.sum(q * k, axis=0) * scale


class _Mask:
    """The user mask as the kernels read it: bool (uint8) or additive (fp32, or fp16/bf16 bits), any strides."""

    def __init__(self, mask_ptr, code, kind, strides):
        self.code, self.kind, self.strides = code, kind, strides
        self.data = flat(mask_ptr) if code else None

    def apply(self, s, ok, b, h, t, key):
        """``attention_steps.mask_values`` at the pairs (b, h, t, key) (broadcast to ``s``'s shape), loading only
        where ``ok``."""
        if not self.code:
            return s
        smb, smh, smt, smk = self.strides
        off = np.broadcast_to(b * smb + h * smh + t * smt + key * smk, s.shape)
        raw = np.where(ok, self.data[np.where(ok, off, 0)], 0).astype(self.data.dtype)
        if self.code == _MASK_BOOL:
            return np.where(raw != 0, s, NEG_INF)
        add = widened(raw, self.kind)
        return np.where(add == NEG_INF, NEG_INF, s + add)


def _round_trip(x, kind):
    """to_fp32(round_fp32(x, kind), kind)."""
    if kind == 0:
        return x
    return round_all(_c(x).reshape(-1), kind)[1].reshape(x.shape)


def _split_fold(run_max, run_sum, acc, tot_max, tot_sum, tot_acc, kind):
    """``attention_steps.split_fold`` where ``last`` holds: the chunk merged into the totals."""
    empty = run_sum == ZERO
    safe = np.where(empty, ONE, run_sum)
    part = _round_trip(np.where(empty[..., None], ZERO, acc / safe[..., None]), kind)
    lse = np.where(empty, NEG_INF, run_max + np.log(safe))
    new_max = np.fmax(tot_max, lse)
    ref = np.where(new_max == NEG_INF, ZERO, new_max)
    w_old = np.exp(tot_max - ref)
    w_new = np.exp(lse - ref)
    return new_max, tot_sum * w_old + w_new, tot_acc * w_old[..., None] + w_new[..., None] * part


class _Items:
    """The (batch, query head) items of a forward or dq launch and their key ranges."""

    def __init__(self, n_items, H, GROUP, Tk, ks_ptr, HAS_KS):
        self.n = n_items
        self.idx = np.arange(n_items)
        self.b, self.h = self.idx // H, self.idx % H
        self.kv = self.b * (H // GROUP) + self.h // GROUP
        self.ks = flat(ks_ptr)[self.b].astype(np.int64) if HAS_KS else np.zeros(n_items, np.int64)
        self.n_real = Tk - self.ks


def _row_block(pid_m, BLOCK_M, Tq, Tk, ks_min, CAUSAL):
    t = pid_m * BLOCK_M + np.arange(BLOCK_M)
    r_end = Tk - ks_min
    if CAUSAL:
        r_end = min(r_end, (Tk - Tq) + (pid_m + 1) * BLOCK_M - ks_min)
    return t, t < Tq, r_end


def _keys_held(r0, r_end, BLOCK_N):
    """Keys of block r0 the twin holds: those before the walk's bound. The others are dead for every row of the
    tile (-inf scores, +0 exponentials, -0.0 terms), so they change no sum over the block's keys, which is every
    tile's outermost axis: dropping them leaves the other axes, hence numpy's loops, as the kernel's. (They would
    turn an all-NaN block max into -inf; np.fmax with the running max, never NaN, gives the same either way.)"""
    return min(BLOCK_N, r_end - r0)


def _key_live(it, t, r0, BLOCK_N, Tq, Tk, CAUSAL):
    """(BLOCK_N, items, rows) pairs in the key range and the causal rule, relative keys r0 + [0, BLOCK_N)."""
    kr = np.arange(BLOCK_N)[:, None, None]
    live = np.broadcast_to(kr < (it.n_real - r0)[None, :, None], (BLOCK_N, it.n, len(t)))
    if CAUSAL:
        c_lim = ((Tk - Tq) + t)[None, :] - it.ks[:, None]
        live = live & (kr <= (c_lim - r0)[None])
    return _c(live)


@twin(attention_fwd_kernel)
def attention_fwd_twin(grid, q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, o_ptr, lse_ptr, max_ptr, sum_ptr,
                       n_items, H, GROUP, Tq, Tk, D, ks_min, scale, split_keys,
                       stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                       stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                       KIND, MASK, MASK_KIND, CAUSAL, HAS_KS, BLOCK_M, BLOCK_N, BLOCK_D, SPLIT=False, **_):
    it = _Items(n_items, H, GROUP, Tk, ks_ptr, HAS_KS)
    bsz, hkv = n_items // H, H // GROUP
    scale = np.float32(scale)
    mask = _Mask(mask_ptr, MASK, MASK_KIND, (stride_mb, stride_mh, stride_mt, stride_mk))
    extent = -(-(Tk - ks_min) // BLOCK_N) * BLOCK_N
    with np.errstate(all="ignore"):
        qs = _heads(q_ptr, KIND, (bsz, H, Tq, D), (stride_qb, stride_qh, stride_qt, stride_qd), BLOCK_D)
        ks_rel = _relative_keys(_heads(k_ptr, KIND, (bsz, hkv, Tk, D), (stride_kb, stride_kh, stride_kt, stride_kd),
                                       BLOCK_D), it.kv, it.ks, it.n_real, extent)
        vs_rel = _relative_keys(_heads(v_ptr, KIND, (bsz, hkv, Tk, D), (stride_vb, stride_vh, stride_vt, stride_vd),
                                       BLOCK_D), it.kv, it.ks, it.n_real, extent)
        out = np.zeros((n_items, Tq, D), np.float32)
        lse_all, max_all, sum_all = (np.zeros((n_items, Tq), np.float32) for _ in range(3))
        for pid_m in range(-(-Tq // BLOCK_M)):
            t, row_ok, r_end = _row_block(pid_m, BLOCK_M, Tq, Tk, ks_min, CAUSAL)
            rows = np.minimum(t, Tq - 1)
            q = _c(np.where(row_ok[None, :, None], qs[:, rows], ZERO).transpose(2, 0, 1)[:, None])
            run_max = np.full((n_items, BLOCK_M), NEG_INF, np.float32)
            run_sum = np.zeros((n_items, BLOCK_M), np.float32)
            acc = np.full((n_items, BLOCK_M, BLOCK_D), NEG_ZERO, np.float32)
            if SPLIT:
                tot_max, tot_sum, tot_acc = run_max, run_sum, acc
            m_ok = row_ok[None, None, :]
            for r0 in range(0, r_end, BLOCK_N):
                nk = _keys_held(r0, r_end, BLOCK_N)
                k = _c(ks_rel[:, r0:r0 + nk].transpose(2, 1, 0)[..., None])
                s = _scores(q, k, scale, KIND)
                live = _key_live(it, t, r0, nk, Tq, Tk, CAUSAL)
                key = (it.ks[None, :, None] + r0 + np.arange(nk)[:, None, None])
                s = mask.apply(s, live & m_ok, it.b[None, :, None], it.h[None, :, None], t[None, None, :], key)
                s = np.where(live, s, NEG_INF)
                live = s != NEG_INF
                new_max = np.fmax(run_max, np.nanmax(s, axis=0))
                ref = np.where(new_max == NEG_INF, ZERO, new_max)
                alpha = np.exp(run_max - ref)
                e = np.exp(s - ref[None])
                run_sum = run_sum * alpha + np.sum(e, axis=0)
                run_max = new_max
                v = _c(vs_rel[:, r0:r0 + nk].transpose(1, 0, 2)[:, :, None, :])
                pv = np.where(live[..., None], e[..., None] * v, NEG_ZERO)
                acc = acc * alpha[..., None] + np.sum(pv, axis=0)
                if SPLIT and ((r0 + BLOCK_N) % split_keys == 0 or r0 + BLOCK_N >= r_end):
                    tot_max, tot_sum, tot_acc = _split_fold(run_max, run_sum, acc, tot_max, tot_sum, tot_acc, KIND)
                    run_max = np.full_like(run_max, NEG_INF)
                    run_sum = np.zeros_like(run_sum)
                    acc = np.full_like(acc, NEG_ZERO)
            if SPLIT:
                run_max, run_sum, acc = tot_max, tot_sum, tot_acc
            empty = run_sum == ZERO
            safe = np.where(empty, ONE, run_sum)
            o = np.where(empty[..., None], ZERO, acc / safe[..., None])
            lse = np.where(empty, NEG_INF, run_max + np.log(safe))
            n_ok = int(row_ok.sum())
            out[:, t[:n_ok]] = o[:, :n_ok, :D]
            lse_all[:, t[:n_ok]] = lse[:, :n_ok]
            max_all[:, t[:n_ok]] = run_max[:, :n_ok]
            sum_all[:, t[:n_ok]] = run_sum[:, :n_ok]
    store_flat(o_ptr, out.reshape(-1), KIND)
    for ptr, values in ((lse_ptr, lse_all), (max_ptr, max_all), (sum_ptr, sum_all)):
        flat(ptr)[:values.size] = values.reshape(-1)


def _dq_tile(it, mask, q, do, k, v, live, ok, t, r0, BLOCK_N, row_max, row_sum, scale, KIND):
    """``attention_backward._dq_block_interpreted``: (live, P, dP) of one key block as (BLOCK_N, items, rows) tiles."""
    s = _scores(q, k, scale, KIND)
    key = it.ks[None, :, None] + r0 + np.arange(BLOCK_N)[:, None, None]
    s = mask.apply(s, live & ok, it.b[None, :, None], it.h[None, :, None], t[None, None, :], key)
    s = np.where(live, s, NEG_INF)
    live = s != NEG_INF
    p = np.where(live, np.exp(s - row_max) / row_sum, ZERO)
    return live, p, np.sum(do * v, axis=0)


def _delta_terms(p, dp, live, kind):
    if kind == 0:
        return np.where(live, p.astype(np.float64) * dp.astype(np.float64), np.float64(-0.0))
    return np.where(live, p * dp, NEG_ZERO)


@twin(attention_bwd_dq_kernel)
def attention_bwd_dq_twin(grid, q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, do_ptr, max_ptr, sum_ptr, delta_ptr, dq_ptr,
                          n_items, H, GROUP, Tq, Tk, D, ks_min, scale,
                          stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                          stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                          stride_dob, stride_doh, stride_dot, stride_dod,
                          KIND, DO_KIND, MASK, MASK_KIND, CAUSAL, HAS_KS, BLOCK_M, BLOCK_N, BLOCK_D, **_):
    it = _Items(n_items, H, GROUP, Tk, ks_ptr, HAS_KS)
    bsz, hkv = n_items // H, H // GROUP
    scale = np.float32(scale)
    mask = _Mask(mask_ptr, MASK, MASK_KIND, (stride_mb, stride_mh, stride_mt, stride_mk))
    extent = -(-(Tk - ks_min) // BLOCK_N) * BLOCK_N
    stats_max = flat(max_ptr)[:n_items * Tq].reshape(n_items, Tq)
    stats_sum = flat(sum_ptr)[:n_items * Tq].reshape(n_items, Tq)
    with np.errstate(all="ignore"):
        qs = _heads(q_ptr, KIND, (bsz, H, Tq, D), (stride_qb, stride_qh, stride_qt, stride_qd), BLOCK_D)
        dos = _heads(do_ptr, DO_KIND, (bsz, H, Tq, D), (stride_dob, stride_doh, stride_dot, stride_dod), BLOCK_D)
        ks_rel = _relative_keys(_heads(k_ptr, KIND, (bsz, hkv, Tk, D), (stride_kb, stride_kh, stride_kt, stride_kd),
                                       BLOCK_D), it.kv, it.ks, it.n_real, extent)
        vs_rel = _relative_keys(_heads(v_ptr, KIND, (bsz, hkv, Tk, D), (stride_vb, stride_vh, stride_vt, stride_vd),
                                       BLOCK_D), it.kv, it.ks, it.n_real, extent)
        dq = np.zeros((n_items, Tq, D), np.float32)
        delta_all = np.zeros((n_items, Tq), np.float32)
        for pid_m in range(-(-Tq // BLOCK_M)):
            t, row_ok, r_end = _row_block(pid_m, BLOCK_M, Tq, Tk, ks_min, CAUSAL)
            rows = np.minimum(t, Tq - 1)
            ok = row_ok[None, None, :]
            q = _c(np.where(row_ok[None, :, None], qs[:, rows], ZERO).transpose(2, 0, 1)[:, None])
            do = _c(np.where(row_ok[None, :, None], dos[:, rows], ZERO).transpose(2, 0, 1)[:, None])
            row_max = _c(np.where(row_ok[None, :], stats_max[:, rows], ZERO)[None])
            row_sum = _c(np.where(row_ok[None, :], stats_sum[:, rows], ONE)[None])
            blocks = []
            for r0 in range(0, r_end, BLOCK_N):
                nk = _keys_held(r0, r_end, BLOCK_N)
                k = _c(ks_rel[:, r0:r0 + nk].transpose(2, 1, 0)[..., None])
                v = _c(vs_rel[:, r0:r0 + nk].transpose(2, 1, 0)[..., None])
                live = _key_live(it, t, r0, nk, Tq, Tk, CAUSAL)
                blocks.append((r0, nk, *_dq_tile(it, mask, q, do, k, v, live, ok, t, r0, nk, row_max, row_sum,
                                                 scale, KIND)))
            delta_sum = np.full((n_items, BLOCK_M), -0.0, np.float64 if KIND == 0 else np.float32)
            for _r0, _nk, live, p, dp in blocks:
                delta_sum = delta_sum + np.sum(_delta_terms(p, dp, live, KIND), axis=0)
            delta = delta_sum.astype(np.float32)
            acc = np.full((n_items, BLOCK_M, BLOCK_D), NEG_ZERO, np.float32)
            for r0, nk, live, p, dp in blocks:
                ds = np.where(live, p * (dp - delta[None]), NEG_ZERO)
                k2 = _c(ks_rel[:, r0:r0 + nk].transpose(1, 0, 2)[:, :, None, :])
                acc = acc + np.sum(np.where(live[..., None], ds[..., None] * k2, NEG_ZERO), axis=0)
            n_ok = int(row_ok.sum())
            delta_all[:, t[:n_ok]] = (delta + ZERO)[:, :n_ok]
            dq[:, t[:n_ok]] = (acc * scale + ZERO)[:, :n_ok, :D]
    flat(delta_ptr)[:delta_all.size] = delta_all.reshape(-1)
    store_flat(dq_ptr, dq.reshape(-1), KIND)


@twin(attention_bwd_dkdv_kernel)
def attention_bwd_dkdv_twin(grid, q_ptr, k_ptr, v_ptr, mask_ptr, ks_ptr, org_ptr, do_ptr, max_ptr, sum_ptr, delta_ptr,
                            dk_ptr, dv_ptr, n_kv_items, H, HKV, GROUP, Tq, Tk, D, ks_min, scale, qb_hi, shift_min,
                            stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                            stride_vb, stride_vh, stride_vt, stride_vd, stride_mb, stride_mh, stride_mt, stride_mk,
                            stride_dob, stride_doh, stride_dot, stride_dod,
                            KIND, DO_KIND, MASK, MASK_KIND, CAUSAL, HAS_KS, BLOCK_M, BLOCK_N, BLOCK_D, **_):
    n = n_kv_items
    bsz = n // HKV
    b, hk = np.arange(n) // HKV, np.arange(n) % HKV
    ks = flat(ks_ptr)[b].astype(np.int64) if HAS_KS else np.zeros(n, np.int64)
    scale = np.float32(scale)
    mask = _Mask(mask_ptr, MASK, MASK_KIND, (stride_mb, stride_mh, stride_mt, stride_mk))
    origins = flat(org_ptr)[:bsz * H].astype(np.int64)
    stats = [flat(p)[:bsz * H * Tq].reshape(bsz * H, Tq) for p in (max_ptr, sum_ptr, delta_ptr)]
    fills = (ZERO, ONE, ZERO)
    n_n = -(-(Tk - ks_min) // BLOCK_N)
    with np.errstate(all="ignore"):
        qs = _heads(q_ptr, KIND, (bsz, H, Tq, D), (stride_qb, stride_qh, stride_qt, stride_qd), BLOCK_D)
        dos = _heads(do_ptr, DO_KIND, (bsz, H, Tq, D), (stride_dob, stride_doh, stride_dot, stride_dod), BLOCK_D)
        ks_rel = _relative_keys(_heads(k_ptr, KIND, (bsz, HKV, Tk, D), (stride_kb, stride_kh, stride_kt, stride_kd),
                                       BLOCK_D), np.arange(n), ks, Tk - ks, n_n * BLOCK_N)
        vs_rel = _relative_keys(_heads(v_ptr, KIND, (bsz, HKV, Tk, D), (stride_vb, stride_vh, stride_vt, stride_vd),
                                       BLOCK_D), np.arange(n), ks, Tk - ks, n_n * BLOCK_N)
        dk_all = np.zeros((n, n_n * BLOCK_N, D), np.float32)
        dv_all = np.zeros((n, n_n * BLOCK_N, D), np.float32)
        for pid_n in range(n_n):
            key = ks[:, None] + pid_n * BLOCK_N + np.arange(BLOCK_N)[None, :]          # (items, keys)
            key_ok = key < Tk
            k = _c(ks_rel[:, pid_n * BLOCK_N:(pid_n + 1) * BLOCK_N].transpose(2, 0, 1)[:, None])
            v = _c(vs_rel[:, pid_n * BLOCK_N:(pid_n + 1) * BLOCK_N].transpose(2, 0, 1)[:, None])
            qb_start = 0
            if CAUSAL:
                first = pid_n * BLOCK_N + shift_min
                qb_start = first // BLOCK_M if first > 0 else 0
            dk = np.full((n, BLOCK_N, BLOCK_D), NEG_ZERO, np.float32)
            dv = np.full((n, BLOCK_N, BLOCK_D), NEG_ZERO, np.float32)
            for g in range(GROUP):
                h = hk * GROUP + g
                qi = b * H + h
                q_org = origins[qi]
                for qb in range(qb_start, qb_hi):
                    # rows past Tq in every item add -0.0 to dk and dv; rows are every tile's outermost axis here,
                    # so those at the end are not held (the other axes, hence numpy's loops, stay the kernel's)
                    n_rows = min(BLOCK_M, int((Tq - q_org - qb * BLOCK_M).max()))
                    if n_rows <= 0:
                        continue
                    t = q_org[None, :] + qb * BLOCK_M + np.arange(n_rows)[:, None]      # (rows, items)
                    row_ok = (t >= 0) & (t < Tq)
                    tc = np.clip(t, 0, max(Tq - 1, 0))
                    q_rows = np.where(row_ok[..., None], qs[qi[None, :], tc], ZERO)      # (rows, items, BLOCK_D)
                    do_rows = np.where(row_ok[..., None], dos[qi[None, :], tc], ZERO)
                    q = _c(q_rows.transpose(2, 0, 1)[..., None])
                    s = _scores(q, k, scale, KIND)
                    live = row_ok[:, :, None] & key_ok[None]
                    if CAUSAL:
                        live = live & (key[None] <= ((Tk - Tq) + t)[:, :, None])
                    s = mask.apply(s, live, b[None, :, None], h[None, :, None], t[:, :, None], key[None])
                    s = np.where(live, s, NEG_INF)
                    live = s != NEG_INF
                    rows_st = [np.where(row_ok, st[qi[None, :], tc], f)[:, :, None] for st, f in zip(stats, fills)]
                    p = np.where(live, np.exp(s - rows_st[0]) / rows_st[1], ZERO)
                    live4 = live[..., None]
                    dv = dv + np.sum(np.where(live4, p[..., None] * _c(do_rows[:, :, None, :]), NEG_ZERO), axis=0)
                    dp = np.sum(_c(do_rows.transpose(2, 0, 1)[..., None]) * v, axis=0)
                    ds = np.where(live, p * (dp - rows_st[2]), ZERO)
                    dk = dk + np.sum(np.where(live4, ds[..., None] * _c(q_rows[:, :, None, :]), NEG_ZERO), axis=0)
            dk_all[:, pid_n * BLOCK_N:(pid_n + 1) * BLOCK_N] = (dk * scale + ZERO)[:, :, :D]
            dv_all[:, pid_n * BLOCK_N:(pid_n + 1) * BLOCK_N] = (dv + ZERO)[:, :, :D]
    _store_keys(dk_ptr, dk_all, ks, Tk, KIND)
    _store_keys(dv_ptr, dv_all, ks, Tk, KIND)


def _store_keys(ptr, values, ks, Tk, kind):
    """Rows ks + r (r < Tk - ks) of each (B * HKV, Tk, D) item from its relative rows; keys before ks stay as the
    host zeroed them."""
    n, _, d = values.shape
    out = np.zeros((n, Tk, d), np.float32)
    written = np.zeros((n, Tk), bool)
    for i in range(n):
        real = Tk - ks[i]
        out[i, ks[i]:] = values[i, :real]
        written[i, ks[i]:] = True
    if written.all():
        store_flat(ptr, out.reshape(-1), kind)
        return
    rounded = np.zeros(out.size, flat(ptr).dtype)
    store_flat(torch.from_numpy(rounded), out.reshape(-1), kind)
    target = flat(ptr)[:out.size].reshape(n, Tk, d)
    target[written] = rounded.reshape(n, Tk, d)[written]


def warm() -> None:
    """Compile the rounding store and the split-KV chunk rounding (the rest is numpy)."""
    _rows.compile_store()
    for kind in (1, 2):
        round_all(np.zeros(2, np.float32), kind)
