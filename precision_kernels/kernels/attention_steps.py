"""The steps both forms of the attention kernels share (kernels/attention.py, kernels/attention_backward.py).

Each step works on tiles of any layout: the interpreter forms' key-major (keys, items, rows) tiles and the
compiled forms' (rows, keys) tiles pass their operands already broadcast to their layout. The positions,
masking and numerics these steps implement are described in kernels/attention.py.
"""

import triton
import triton.language as tl

from .rounding import round_fp32, to_fp32

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

# ---- loading and scores -------------------------------------------------------------------------


@triton.jit
def interp_pointer(p, KIND: tl.constexpr):
    """Interpreter form: 16-bit data is read through fp16 pointers (numpy widens them exactly) or, for bf16,
    uint16 pointers (widened by ``widen``; the interpreter's bf16 conversions are wrong)."""
    if KIND == 1:
        return p.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == 2:
        return p.to(tl.pointer_type(tl.uint16), bitcast=True)
    else:
        return p


@triton.jit
def widen(x, KIND: tl.constexpr):
    """Interpreter form: the exact fp32 value of a tile loaded through ``interp_pointer``."""
    if KIND == 2:
        return (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def native_pointer(p, KIND: tl.constexpr):
    """Compiled form: int16 pointers of 16-bit data as fp16/bf16 pointers (loads feed tl.dot directly)."""
    if KIND == 1:
        return p.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == 2:
        return p.to(tl.pointer_type(tl.bfloat16), bitcast=True)
    else:
        return p


@triton.jit
def interp_scores(q, k, scale, KIND: tl.constexpr):
    """Interpreter form: scaled scores of widened (BLOCK_D, ...) tiles, summed along axis 0 in index order. fp32
    operands multiply exactly in fp64 (their fp32 product would round) and are summed in fp64, then the sum
    times the scale is rounded to fp32 once; fp16/bf16 products are exact in fp32 and are summed there."""
    if KIND == 0:
        return (tl.sum(q.to(tl.float64) * k.to(tl.float64), axis=0) * scale).to(tl.float32)
    else:
        return tl.sum(q * k, axis=0) * scale


@triton.jit
def native_scores(q, kt, scale, KIND: tl.constexpr):
    """Compiled form: (rows, keys) scaled scores of q (rows, BLOCK_D) and k^T (BLOCK_D, keys) by tl.dot: fp64 for
    fp32 operands, rounded to fp32 once with the scale, as ``interp_scores``; fp16/bf16 operands as they are,
    fp32 sums."""
    if KIND == 0:
        return (tl.dot(q.to(tl.float64), kt.to(tl.float64)) * scale).to(tl.float32)
    else:
        return tl.dot(q, kt, input_precision="ieee") * scale


# ---- programs and positions ----------------------------------------------------------------


@triton.jit
def program_ids(extent, BLOCK: tl.constexpr):
    """(outer, inner) coordinates of this program in a 1-D grid of cdiv(extent, BLOCK) programs per outer index."""
    pid = tl.program_id(0)
    n_inner = tl.cdiv(extent, BLOCK)
    return pid // n_inner, pid % n_inner


@triton.jit
def query_heads(items, H, GROUP):
    """(batch, query head, key/value head) of (batch, query head) items; query head h reads kv head h // GROUP."""
    b = items // H
    h = items % H
    return b, h, h // GROUP


@triton.jit
def query_rows(pid_m, Tq, BLOCK_M: tl.constexpr):
    """The BLOCK_M query rows of row block ``pid_m`` and which of them exist."""
    t = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    return t, t < Tq


@triton.jit
def head_dims(D, BLOCK_D: tl.constexpr):
    """The BLOCK_D head-dim lanes and which of them are real (D is padded to a power of two)."""
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    return d, d < D


@triton.jit
def key_start(ks_ptr, b, item_ok, HAS_KS: tl.constexpr):
    """Each item's first real key: key_start[b], or 0 without key_start."""
    if HAS_KS:
        return tl.load(ks_ptr + b, mask=item_ok, other=0)
    else:
        return b * 0


@triton.jit
def key_end(Tk, Tq, ks_min, pid_m, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """The relative key past the last one any row of the row block can see: later key blocks hold no live pair
    and are not visited."""
    r_end = Tk - ks_min
    if CAUSAL:
        r_end = tl.minimum(r_end, (Tk - Tq) + (pid_m + 1) * BLOCK_M - ks_min)
    return r_end


@triton.jit
def first_query_block(pid_n, shift_min, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """dk/dv: the first query block that can see the key block ``pid_n``; rows before it contribute nothing."""
    qb_start = 0
    if CAUSAL:
        first = pid_n * BLOCK_N + shift_min
        qb_start = tl.where(first > 0, first // BLOCK_M, 0)
    return qb_start


# ---- masks ------------------------------------------------------------------------------------


@triton.jit
def causal(live, key_pos, row_pos, CAUSAL: tl.constexpr):
    """``live`` and, when causal, the bottom-right rule: the key at position ``key_pos`` is visible from the row
    at key position ``row_pos`` (query t sits at Tk - Tq + t) when key_pos <= row_pos."""
    if CAUSAL:
        live = live & (key_pos <= row_pos)
    return live


@triton.jit
def mask_values(mask_ptrs, ok, s, MASK: tl.constexpr, MASK_KIND: tl.constexpr):
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
def masked_scores(s, live, mask_ptrs, mask_ok, MASK: tl.constexpr, MASK_KIND: tl.constexpr):
    """(scores, live) after the user mask (read where ``mask_ok``) and the key range and causal rule (``live``):
    -inf at every pair that is not live, and a pair is live when its score is not -inf."""
    if MASK != 0:
        s = mask_values(mask_ptrs, mask_ok, s, MASK, MASK_KIND)
    s = tl.where(live, s, float("-inf"))
    return s, s != float("-inf")


# ---- softmax -----------------------------------------------------------------------------------


@triton.jit
def softmax_step(s, run_max, KEYS: tl.constexpr):
    """One key block of the online softmax, keys along axis ``KEYS``: (new running max, the factor ``alpha`` that
    rescales the old sum and accumulator, the block's exponentials exp(s - new max)). ``alpha`` is exactly 1
    where the max did not move; exp(-inf - -inf) is never formed."""
    new_max = tl.maximum(run_max, tl.max(s, axis=KEYS))
    ref = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, tl.exp(run_max - ref), tl.exp(s - tl.expand_dims(ref, KEYS))


@triton.jit
def probabilities(s, live, row_max, row_sum):
    """The backward's P = exp(s - max) / sum from the forward's row statistics (broadcast to ``s``), 0 where not
    live."""
    return tl.where(live, tl.div_rn(tl.exp(s - row_max), row_sum), 0.0)


@triton.jit
def split_fold(r_next, r_end, split_keys, run_max, run_sum, acc, tot_max, tot_sum, tot_acc, KIND: tl.constexpr):
    """Engine split-KV (flash-decoding), after the key block that ends at relative key ``r_next``: where it is
    its chunk's last (``r_next`` a multiple of ``split_keys``, or the walk's end), the chunk's partial output
    acc / sum is rounded to the compute dtype, as an engine stores it between its split and combine kernels,
    and merged into the totals by its log-sum-exp; the chunk's accumulators restart. Returns (total max,
    total sum, total acc, chunk max, chunk sum, chunk acc). A chunk with no live key has weight 0."""
    last = (r_next % split_keys == 0) | (r_next >= r_end)
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


# ---- store ------------------------------------------------------------------------------------


@triton.jit
def forward_store(o_ptr, lse_ptr, max_ptr, sum_ptr, rows, ok, d, d_ok, acc, run_max, run_sum, D,
                  KIND: tl.constexpr):
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
