"""pk.attention: accuracy against FP64 (I6), determinism (I1), batch and head invariance (I2), decode/chunk and
trailing-mask invariance (I3), left padding (with a negative control), masking and non-finite values, gradients.

Bitwise comparisons use integer views. Shapes are small: the interpreter runs every tile operation in Python.
The key block B of the I3 tests is the real one, read from the profile table.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import numerics, profiles
from precision_kernels.ops.attention import reference_attention

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
SIGNIFICAND = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
MIN_NORMAL_EXP = {torch.float32: -126, torch.float16: -14, torch.bfloat16: -126}
U = 2.0**-24
SLOW = pytest.mark.skipif(not os.environ.get("PK_SLOW"), reason="long hypothesis sweep: PK_SLOW=1 runs it")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(INT_VIEW[t.dtype]).cpu()


def assert_bitwise(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ"


def randn(*shape, dtype, seed, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def qkv(b, h, hkv, tq, tk, d, dtype, seed, scale=1.0):
    return (randn(b, h, tq, d, dtype=dtype, seed=seed, scale=scale), randn(b, hkv, tk, d, dtype=dtype, seed=seed + 1,
            scale=scale), randn(b, hkv, tk, d, dtype=dtype, seed=seed + 2))


def key_block(dtype) -> int:
    return profiles.attention_orders_for(profiles.table_backend(), {torch.float32: "fp32", torch.float16: "fp16",
                                                                    torch.bfloat16: "bf16"}[dtype])[0]


def fp32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def grads(q, k, v, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = pk.attention(*leaves, **kw)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


# ---- I6: accuracy against FP64 on the same rounded inputs ------------------------------------------


def ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    p, emin = SIGNIFICAND[dtype], MIN_NORMAL_EXP[dtype]
    return torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2.0**emin))) - (p - 1))


def _expand_kv(t, h):
    return t.double().repeat_interleave(h // t.shape[1], dim=1)


def _scores64(q, k, scale, causal, attn_mask):
    """FP64 scores (-inf where masked) and the live pairs, from the same rounded inputs."""
    kk = _expand_kv(k, q.shape[1])
    s = q.double() @ kk.transpose(-1, -2) * fp32(scale)
    tq, tk = q.shape[2], k.shape[2]
    live = torch.ones(s.shape, dtype=torch.bool)
    if causal:
        live &= torch.arange(tk)[None, :] <= (tk - tq) + torch.arange(tq)[:, None]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            live &= attn_mask.cpu()
        else:
            s = s + attn_mask.cpu().double()
    s = torch.where(live, s, float("-inf"))
    return s, live & (s != float("-inf"))


def p_rel_bound(q, k, scale, causal, attn_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact P, a bound on the relative error of the kernel's fp32 P), from its operations.

    The score of a pair is an ordered fp32 sum of D exact products (<= D 2^-24 sum|q k| absolute), scaled
    (2^-24 |s|) and masked (2^-24 |s| more when a mask is added). P = exp(s - m) / l has the errors of its own
    score and, through the normaliser, of every other score of the row (<= max over the row); the
    shift s - m rounds (2^-24 |s - m|, the normaliser's terms alike); exp, the rescalings by exp(old - new)
    (one per key block) and the normaliser's sum (one rounding per key) add a few ulps each."""
    d, tk = q.shape[-1], k.shape[2]
    s, live = _scores64(q, k, scale, causal, attn_mask)
    abs_prod = q.double().abs() @ _expand_kv(k, q.shape[1]).abs().transpose(-1, -2) * abs(fp32(scale))
    finite_s = torch.where(live, s, torch.zeros_like(s))
    adds = 2 if attn_mask is not None and attn_mask.dtype != torch.bool else 1
    ds = (d + 1) * U * abs_prod + adds * U * finite_s.abs()
    ds = torch.where(live, ds, torch.zeros_like(ds))
    m = torch.where(live, s, torch.full_like(s, float("-inf"))).amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    shift = torch.where(live, (finite_s - m).abs(), torch.zeros_like(s))
    blocks = math.ceil(max(tk, 1) / key_block(q.dtype))
    rel = (ds + ds.amax(-1, keepdim=True) + 2 * U * (shift + shift.amax(-1, keepdim=True))
           + (tk + 4 * blocks + 12) * U)
    p = torch.softmax(torch.where(live, s, torch.full_like(s, float("-inf"))), -1).nan_to_num(0.0)
    return p, torch.where(live, rel, torch.zeros_like(rel))


def out_bound(q, k, v, scale, causal, attn_mask) -> torch.Tensor:
    """fp32 error bound of the output before its rounding: sum_j P |v| (P's error + the P.V sum's: one
    rounding per product and per key, one per block rescaling) + the final division."""
    p, rel = p_rel_bound(q, k, scale, causal, attn_mask)
    vv = _expand_kv(v, q.shape[1]).abs()
    blocks = math.ceil(max(k.shape[2], 1) / key_block(q.dtype))
    out = reference_attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask).cpu()
    return (p * (rel + (k.shape[2] + blocks + 4) * U)) @ vv + U * out.abs()


def check_rounded(out, ref, bound, what, frac=0.99):
    out64, ref = out.detach().double().cpu(), ref.cpu()
    tol = bound if out.dtype == torch.float32 else bound + ulp(ref, out.dtype)
    bad = ~((out64 - ref).abs() <= tol)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} out of bound, worst err/bound "
                           f"{float(((out64 - ref).abs() / tol).max()):.3g}")
    if out.dtype != torch.float32:
        s = numerics.error_summary(out, ref)
        assert s["frac_correctly_rounded"] >= frac, f"{what}: {s}"


ACCURACY_CASES = {
    "gqa-causal-chunk": dict(shape=(2, 4, 2, 33, 150, 8), causal=True, mask=None),
    "decode-bool-mask-D80": dict(shape=(2, 2, 1, 1, 70, 80), causal=False, mask="bool"),
    "additive-mask-D48": dict(shape=(1, 3, 3, 20, 20, 48), causal=True, mask="add"),
    "D1": dict(shape=(2, 1, 1, 7, 30, 1), causal=True, mask=None),
    "D256": dict(shape=(1, 2, 1, 6, 70, 256), causal=False, mask=None),
}


def make_mask(kind, b, h, tq, tk, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    keep = torch.rand(b, 1, tq, tk, generator=g) > 0.3
    keep[..., -1] = True
    if kind == "bool":
        return keep.to(DEVICE)
    add = torch.randn(b, 1, tq, tk, generator=g).masked_fill(~keep, float("-inf"))
    return add.to(dtype).to(DEVICE)


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("case", list(ACCURACY_CASES))
def test_accuracy_against_fp64(fmt, case):
    dtype, c = DTYPES[fmt], ACCURACY_CASES[case]
    b, h, hkv, tq, tk, d = c["shape"]
    q, k, v = qkv(b, h, hkv, tq, tk, d, dtype, seed=tq + tk, scale=1.5)
    mask = make_mask(c["mask"], b, h, tq, tk, dtype, seed=3)
    out = pk.attention(q, k, v, causal=c["causal"], attn_mask=mask)
    assert out.shape == q.shape and out.dtype == dtype
    ref = reference_attention(q, k, v, causal=c["causal"], attn_mask=mask)
    check_rounded(out, ref, out_bound(q, k, v, 1 / math.sqrt(d), c["causal"], mask), f"{case} {fmt}")


def grad_bounds(q, k, v, dout, scale, causal, attn_mask):
    """fp32 error bounds of dq, dk, dv before rounding, from the same quantities as ``out_bound``:
    P with its relative error, dP = dO.v (D products and sums), delta = sum P dP and the products
    and sums of dq = scale (sum P dP k - delta sum P k), dk = scale sum dS q, dv = sum P dO."""
    p, rel = p_rel_bound(q, k, scale, causal, attn_mask)
    do, qq = dout.double().cpu(), q.double().cpu()
    kk, vv = _expand_kv(k, q.shape[1]).cpu(), _expand_kv(v, q.shape[1]).cpu()
    d, tq, tk = q.shape[-1], q.shape[2], k.shape[2]
    dp = do @ vv.transpose(-1, -2)
    dp_abs = do.abs() @ vv.abs().transpose(-1, -2)
    delta_abs = (p * dp_abs).sum(-1, keepdim=True)
    mag = p * (dp_abs + delta_abs)                          # |P| (|dP| + |delta|), with dP's own size
    err_p = rel + (tk + tq + 2 * d + 16) * U                 # P's error and every later rounding
    s = abs(fp32(scale))
    group = q.shape[1] // k.shape[1]

    def fold(t):  # query heads -> their kv head, summed
        return t.reshape(t.shape[0], k.shape[1], group, *t.shape[2:]).sum(2)

    dq_b = s * ((mag * err_p) @ kk.abs())
    dk_b = s * fold((mag * err_p).transpose(-1, -2) @ qq.abs())
    dv_b = fold((p * err_p).transpose(-1, -2) @ do.abs())
    del dp
    return dq_b, dk_b, dv_b


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_gradients_against_fp64_autograd(fmt):
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d = 2, 4, 2, 40, 90, 16
    q, k, v = qkv(b, h, hkv, tq, tk, d, dtype, seed=21)
    dout = randn(b, h, tq, d, dtype=dtype, seed=24)
    mask = make_mask("bool", b, h, tq, tk, dtype, seed=5)
    _, (dq, dk, dv) = grads(q, k, v, dout, attn_mask=mask)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    reference_attention(*leaves, causal=True, attn_mask=mask).backward(dout.double().cpu())
    bounds = grad_bounds(q, k, v, dout, 1 / math.sqrt(d), True, mask)
    for name, got, leaf, bound in zip("qkv", (dq, dk, dv), leaves, bounds):
        assert got.dtype == dtype and got.shape == leaf.shape
        check_rounded(got, leaf.grad, bound, f"d{name} {fmt}", frac=0.97)


# ---- I1, I2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_deterministic(fmt):
    dtype = DTYPES[fmt]
    q, k, v = qkv(2, 2, 1, 30, 75, 8, dtype, seed=1)
    dout = randn(2, 2, 30, 8, dtype=dtype, seed=4)
    out1, g1 = grads(q, k, v, dout)
    out2, g2 = grads(q, k, v, dout)
    assert_bitwise(out1, out2, "out")
    for a, b in zip(g1, g2):
        assert_bitwise(a, b, "grad")


HEAD_DIMS = [1, 3, 8, 16, 48, 80, 96, 255]


@st.composite
def shapes(draw, max_t=140):
    hkv = draw(st.integers(1, 2))
    return dict(b=draw(st.integers(1, 3)), hkv=hkv, h=hkv * draw(st.integers(1, 2)),
                tq=draw(st.integers(1, max_t)), extra=draw(st.integers(0, max_t)), d=draw(st.sampled_from(HEAD_DIMS)),
                fmt=draw(st.sampled_from(list(DTYPES))), causal=draw(st.booleans()), seed=draw(st.integers(0, 999)),
                backward=draw(st.booleans()))


def _check_invariance_and_accuracy(c):
    """I2 (an item and a head alone equal themselves in the batch, whatever the other items hold) and I6."""
    dtype = DTYPES[c["fmt"]]
    b, h, hkv, tq, d = c["b"], c["h"], c["hkv"], c["tq"], c["d"]
    tk = tq + c["extra"]
    q, k, v = qkv(b, h, hkv, tq, tk, d, dtype, seed=c["seed"])
    dout = randn(b, h, tq, d, dtype=dtype, seed=c["seed"] + 7)
    kw = dict(causal=c["causal"])
    if c["backward"]:
        full, (dq, dk, dv) = grads(q, k, v, dout, **kw)
    else:
        full = pk.attention(q, k, v, **kw)
    check_rounded(full, reference_attention(q, k, v, **kw), out_bound(q, k, v, 1 / math.sqrt(d), c["causal"], None),
                  f"{c}")
    i = b - 1
    alone = pk.attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], **kw)
    assert_bitwise(alone, full[i:i + 1], "item alone")
    # the same item after other items with other contents, in a bigger batch
    others = [t * 3 for t in qkv(2, h, hkv, tq, tk, d, dtype, seed=c["seed"] + 11)]
    mixed = pk.attention(*(torch.cat([o, t[i:i + 1]]) for o, t in zip(others, (q, k, v))), **kw)
    assert_bitwise(mixed[2:], full[i:i + 1], "item behind other items")
    hq = h - 1
    g = hq // (h // hkv)
    head = pk.attention(q[:, hq:hq + 1], k[:, g:g + 1], v[:, g:g + 1], **kw)
    assert_bitwise(head, full[:, hq:hq + 1], "head alone")
    if c["backward"]:
        _, (dqi, dki, dvi) = grads(q[i:i + 1], k[i:i + 1], v[i:i + 1], dout[i:i + 1], **kw)
        for got, want, name in ((dqi, dq, "dq"), (dki, dk, "dk"), (dvi, dv, "dv")):
            assert_bitwise(got, want[i:i + 1], f"{name} of the item alone")


@settings(max_examples=4)
@given(c=shapes(max_t=100))
def test_batch_and_head_invariance(c):
    _check_invariance_and_accuracy(c)


@pytest.mark.slow
@SLOW
@settings(max_examples=80)
@given(c=shapes(max_t=300))
def test_batch_and_head_invariance_sweep(c):
    _check_invariance_and_accuracy(c)


# ---- I3: decode steps, chunks, trailing masked keys ---------------------------------------------------


@pytest.mark.parametrize("table", ["active", pytest.param("cuda", marks=pytest.mark.cuda_configs)])
@pytest.mark.parametrize("fmt", list(DTYPES))
def test_decode_step_and_chunk_equal_rows_of_the_full_pass(fmt, table):
    """A decode step with L cached keys is row L-1 of the full causal pass, for L around the key block B."""
    dtype = DTYPES[fmt]
    with profiles.config_backend(profiles.table_backend() if table == "active" else "cuda"):
        bk = key_block(dtype)
        t = 2 * bk + 3
        q, k, v = qkv(1, 2, 1, t, t, 8, dtype, seed=31)
        dout = randn(1, 2, t, 8, dtype=dtype, seed=32)
        full, (dq, _, _) = grads(q, k, v, dout)
        for length in (1, bk - 1, bk, bk + 1, 2 * bk + 1):
            step = pk.attention(q[:, :, length - 1:length], k[:, :, :length], v[:, :, :length])
            assert_bitwise(step, full[:, :, length - 1:length], f"decode L={length}")
        # a chunk of queries against the cache so far: its rows of the full pass (dq too: rows are independent)
        for lo, hi in ((bk - 2, bk + 5), (3, 2 * bk + 1)):
            out, (dqc, _, _) = grads(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], dout[:, :, lo:hi])
            assert_bitwise(out, full[:, :, lo:hi], f"chunk {lo}:{hi}")
            assert_bitwise(dqc, dq[:, :, lo:hi], f"dq of chunk {lo}:{hi}")


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("mask_kind", ["bool", "add"])
def test_trailing_masked_keys_change_nothing(fmt, mask_kind):
    """Keys appended after the real ones and masked out (a preallocated cache), holding NaN and inf, change no bit
    of the output or of the real keys' gradients, and get a zero gradient."""
    dtype = DTYPES[fmt]
    b, h, tq, tk, extra, d = 2, 2, 5, 70, 61, 8
    q, k, v = qkv(b, h, h, tq, tk, d, dtype, seed=41)
    dout = randn(b, h, tq, d, dtype=dtype, seed=44)
    junk = torch.full((b, h, extra, d), float("nan"), dtype=dtype, device=DEVICE)
    junk[:, :, ::2] = float("inf")
    kp, vp = torch.cat([k, junk], 2), torch.cat([v, -junk], 2)
    keep = torch.zeros(1, 1, 1, tk + extra, dtype=torch.bool, device=DEVICE)
    keep[..., :tk] = True
    mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=dtype, device=DEVICE).masked_fill(
        ~keep, float("-inf"))
    want, (dq, dk, dv) = grads(q, k, v, dout, causal=False)
    got, (dqp, dkp, dvp) = grads(q, kp, vp, dout, causal=False, attn_mask=mask)
    assert_bitwise(got, want, "output")
    assert_bitwise(dqp, dq, "dq")
    assert_bitwise(dkp[:, :, :tk], dk, "dk")
    assert_bitwise(dvp[:, :, :tk], dv, "dv")
    assert bool((dkp[:, :, tk:] == 0).all() and (dvp[:, :, tk:] == 0).all())


# ---- left padding -----------------------------------------------------------------------------------


def _left_padded_batch(dtype, lengths, seed):
    """Items of the given lengths, left-padded to one length T with NaN in every padded q/k/v/dO slot."""
    t = max(lengths) + 9
    h, d = 2, 8
    items = [qkv(1, h, h, n, n, d, dtype, seed=seed + 10 * i) for i, n in enumerate(lengths)]
    douts = [randn(1, h, n, d, dtype=dtype, seed=seed + 10 * i + 5) for i, n in enumerate(lengths)]

    def pad(x, n):
        return torch.cat([torch.full((1, h, t - n, d), float("nan"), dtype=dtype, device=DEVICE), x], 2)

    batch = [torch.cat([pad(it[j], n) for it, n in zip(items, lengths)]) for j in range(3)]
    dout = torch.cat([pad(g, n) for g, n in zip(douts, lengths)])
    starts = torch.tensor([t - n for n in lengths], dtype=torch.int64, device=DEVICE)
    return items, douts, batch, dout, starts


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_left_padded_item_equals_itself_unpadded(fmt):
    """Prefill and a decode step of left-padded items (>= 3 key blocks, pads not multiples of the block) have the
    bits of the same items run alone, forward and backward; padded rows give 0 and padded slots get no gradient."""
    dtype = DTYPES[fmt]
    bk = key_block(dtype)
    lengths = (2 * bk + 12, 3 * bk + 5, 2 * bk + 3)
    items, douts, (q, k, v), dout, starts = _left_padded_batch(dtype, lengths, seed=50)
    pads = [int(s) for s in starts]
    assert all(p % bk for p in pads) and all(n > 2 * bk for n in lengths)
    out, (dq, dk, dv) = grads(q, k, v, dout, key_start=starts)
    for i, p in enumerate(pads):
        want, (wq, wk, wv) = grads(*items[i], douts[i])
        assert_bitwise(out[i:i + 1, :, p:], want, f"item {i} (pad {p})")
        assert bool((out[i, :, :p] == 0).all()), "padded rows must give 0"
        for name, got, w in (("dq", dq, wq), ("dk", dk, wk), ("dv", dv, wv)):
            assert_bitwise(got[i:i + 1, :, p:], w, f"{name} of item {i}")
            assert bool((got[i, :, :p] == 0).all()), f"{name}: padded slots must get 0"
        # the item's last row as a decode step against the padded cache
        step = pk.attention(q[i:i + 1, :, -1:], k[i:i + 1], v[i:i + 1], key_start=starts[i:i + 1])
        assert_bitwise(step, want[:, :, -1:], f"decode step of item {i}")


def test_left_padding_negative_control():
    """The same batch with the offset disabled (pads masked by a bool mask instead) gives other bits: without
    item-relative key blocks the pads shift how the real keys group into reduction blocks."""
    dtype = torch.float32
    bk = key_block(dtype)
    lengths = (2 * bk + 12, 3 * bk + 5, 2 * bk + 3)
    items, _, (q, k, v), _, starts = _left_padded_batch(dtype, lengths, seed=50)
    t = q.shape[2]
    real = torch.arange(t, device=DEVICE)[None, :] >= starts[:, None]
    masked = pk.attention(q, k, v, attn_mask=real[:, None, None, :])
    differ = 0
    for i, p in enumerate(int(s) for s in starts):
        want = pk.attention(*items[i])
        got = masked[i:i + 1, :, p:]
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)  # the same attention, other summation blocks
        differ += int((bits(got) != bits(want)).sum())
    assert differ > 0, "masking the pads without key_start should change the bits (the control is not a control)"


# ---- masking, non-finite values, empty rows ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_nan_and_inf_in_v_at_masked_keys_poison_nothing(fmt):
    """A NaN/inf in K and V at a key that some rows mask and others attend: the masking rows (and their dq) are the
    bits of the same call with those slots zeroed; the attending rows are NaN."""
    dtype = DTYPES[fmt]
    b, h, tq, tk, d = 1, 2, 6, 90, 8
    q, k, v = qkv(b, h, h, tq, tk, d, dtype, seed=61)
    dout = randn(b, h, tq, d, dtype=dtype, seed=64)
    bad = [3, 40, 77]
    mask = torch.ones(b, 1, tq, tk, dtype=torch.bool, device=DEVICE)
    mask[:, :, :4, bad] = False           # rows 0-3 mask the bad keys, rows 4-5 attend them
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, bad] = float("nan")
    v_bad[:, :, bad] = float("inf")
    v_bad[:, :, bad[0]] = float("nan")
    k0, v0 = k.clone(), v.clone()
    k0[:, :, bad] = 0
    v0[:, :, bad] = 0
    got, (dq, _, _) = grads(q, k_bad, v_bad, dout, causal=False, attn_mask=mask)
    want, (dq0, _, _) = grads(q, k0, v0, dout, causal=False, attn_mask=mask)
    assert_bitwise(got[:, :, :4], want[:, :, :4], "masking rows")
    assert_bitwise(dq[:, :, :4], dq0[:, :, :4], "dq of masking rows")
    assert bool(torch.isnan(got[:, :, 4:]).all())


def test_rows_with_no_key_give_zero_like_sdpa():
    q, k, v = qkv(1, 2, 2, 5, 12, 8, torch.float32, seed=71)
    mask = torch.ones(1, 1, 5, 12, dtype=torch.bool, device=DEVICE)
    mask[:, :, 2] = False
    out = pk.attention(q, k, v, causal=False, attn_mask=mask)
    assert not bool(torch.signbit(out[:, :, 2]).any()) and bool((out[:, :, 2] == 0).all())
    if DEVICE.type == "cpu":
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert bool((sdpa[:, :, 2] == 0).all()), "torch's SDPA gives 0 for a row with no key (checked on CPU)"
        assert torch.allclose(out, sdpa, rtol=1e-5, atol=1e-6)
    # causal with fewer keys than queries: query t sits at key position Tk - Tq + t, the first rows see nothing
    few = pk.attention(q, k[:, :, :3], v[:, :, :3])
    assert bool((few[:, :, :2] == 0).all()) and bool((few[:, :, 2:] != 0).any())
    # no keys at all, and key_start == Tk
    assert bool((pk.attention(q, k[:, :, :0], v[:, :, :0], causal=False) == 0).all())
    ks = torch.tensor([12], dtype=torch.int64, device=DEVICE)
    assert bool((pk.attention(q, k, v, causal=False, key_start=ks) == 0).all())
    # their gradients are 0
    _, (dq, dk, dv) = grads(q, k, v, randn(1, 2, 5, 8, dtype=torch.float32, seed=72), causal=False, attn_mask=mask)
    assert bool((dq[:, :, 2] == 0).all())


def test_causal_is_bottom_right_and_matches_sdpa_when_square():
    q, k, v = qkv(2, 2, 2, 9, 9, 16, torch.float32, seed=81)
    out = pk.attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Tq < Tk: row t sees keys up to Tk - Tq + t (SDPA's is_causal would stop at t)
    rows = pk.attention(q[:, :, 6:], k, v)
    explicit = torch.ones(3, 9, dtype=torch.bool).tril(6).to(DEVICE)
    assert torch.allclose(rows, torch.nn.functional.scaled_dot_product_attention(q[:, :, 6:], k, v,
                                                                                  attn_mask=explicit),
                          rtol=1e-5, atol=1e-6)


def test_strided_views_equal_contiguous_copies():
    """q, k, v as (B, T, H, D) projections viewed as (B, H, T, D) (no copy) give the bits of contiguous copies."""
    b, t, h, d = 2, 37, 4, 8
    packed = randn(b, t, 3 * h, d, dtype=torch.bfloat16, seed=111)
    q, k, v = (packed[:, :, i * h:(i + 1) * h].transpose(1, 2) for i in range(3))
    dout = randn(b, h, t, d, dtype=torch.bfloat16, seed=112)
    out, g = grads(q, k, v, dout)
    out_c, g_c = grads(q.contiguous(), k.contiguous(), v.contiguous(), dout)
    assert_bitwise(out, out_c, "strided output")
    for a, c in zip(g, g_c):
        assert_bitwise(a, c, "strided grad")


def test_bad_inputs():
    from families import Raises
    from families.attention import bad_inputs

    rows = bad_inputs()
    assert len(rows) >= 15
    for row in rows:
        if isinstance(row, Raises):
            with pytest.raises(row.error, match=row.match):
                row.call()


# ---- custom op ---------------------------------------------------------------------------------------


def test_opcheck():
    from families.attention import opcheck

    # the forward with every optional argument and the backward (tests/test_custom_ops.py runs all the cases)
    cases = {case.id: case for case in opcheck()}
    for name in ("attention/mask+key_start", "attention_backward"):
        torch.library.opcheck(cases[name].op, cases[name].args)


def test_torch_compile_fullgraph_is_bitwise_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    q, k, v = qkv(2, 4, 2, 12, 30, 8, torch.bfloat16, seed=91)
    dout = randn(2, 4, 12, 8, dtype=torch.bfloat16, seed=92)
    starts = torch.tensor([0, 5], dtype=torch.int64, device=DEVICE)

    def fn(q, k, v, starts):
        return pk.attention(q, k, v, key_start=starts) * 2

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = f(*leaves, starts)
        out.backward(dout)
        results.append((out.detach(), [t.grad for t in leaves]))
    assert counter.frame_count == 1
    assert_bitwise(results[1][0], results[0][0], "compiled output")
    for a, b in zip(results[1][1], results[0][1]):
        assert_bitwise(a, b, "compiled grad")


@pytest.mark.compiled_form
@pytest.mark.skipif(not pk.backend.INTERPRETED, reason="on a GPU the compiled form is what every test runs")
def test_compiled_form_runs_under_the_interpreter_and_matches_fp64():
    """The tl.dot form (one item per program, the CUDA table's tiles) on fp32 inputs, whose interpreted tl.dot is
    numpy's: not batch-invariant there (BLAS), but every mask, offset, GQA and loop bound of the GPU kernels is
    exercised, forward and backward, within the same error bounds (they hold for any summation order)."""
    from precision_kernels.ops._common import compiled_forms

    b, h, hkv, tq, tk, d = 2, 4, 2, 21, 40, 24
    q, k, v = qkv(b, h, hkv, tq, tk, d, torch.float32, seed=101)
    dout = randn(b, h, tq, d, dtype=torch.float32, seed=104)
    mask = make_mask("bool", b, h, tq, tk, torch.float32, seed=7)
    starts = torch.tensor([0, 11], dtype=torch.int64, device=DEVICE)
    keep = mask & (torch.arange(tk, device=DEVICE) >= starts[:, None, None, None])
    with profiles.config_backend("cuda"), compiled_forms():
        out, (dq, dk, dv) = grads(q, k, v, dout, attn_mask=mask, key_start=starts)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*leaves, attn_mask=keep)
    ref.backward(dout.double())
    with profiles.config_backend("cuda"):
        check_rounded(out, ref.detach(), out_bound(q, k, v, 1 / math.sqrt(d), True, keep), "compiled form out")
        bounds = grad_bounds(q, k, v, dout, 1 / math.sqrt(d), True, keep)
    for name, got, leaf, bound in zip("qkv", (dq, dk, dv), leaves, bounds):
        check_rounded(got, leaf.grad, bound, f"compiled form d{name}")
