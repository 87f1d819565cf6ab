"""The compiled (``tl.dot``) forms of attention, forward, backward and split-KV merge, under the interpreter.

As tests/test_compiled_form.py (its docstring states the two kinds of check): the CUDA tile table, one item
per program, masked loads without ``other`` reading NaN, bf16 dot operands widened exactly. fp32, fp16, bf16.

Exact-arithmetic attention: scale 1, q = (1, small integers...), k = (+-64, 0...), so every live score is +64
or -64 and exp(s - max) is exactly 1 or exactly 0 (e^-128 underflows fp32). The output is then the mean of V
over the row's live keys at its maximum: an exact sum over an exact count, one fp32 division and one
rounding, whatever the summation order. Every bitwise check below compares against that value, so a key that
enters or leaves a row by a mask error, or a row, head or key read at a wrong offset, changes bits.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_attention import check_rounded, grad_bounds, grads, make_mask, out_bound, qkv, randn

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.ops._common import compiled_forms, observe_launches
from precision_kernels.ops.attention import reference_attention

# On a GPU the same tests run the compiled forms with the hardware's tl.dot (tests/gpu_selection.txt).
pytestmark = pytest.mark.compiled_form

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HIGH = 64.0


@pytest.fixture(autouse=True)
def _compiled_on_cuda_tiles(masked_lanes_undefined, bf16_dot_widened):
    with profiles.config_backend("cuda"), compiled_forms():
        yield


def bits(t):
    t = t.detach().cpu()
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_bitwise(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ in their bits"


def framed(t: torch.Tensor) -> torch.Tensor:
    """``t`` (.., T, D) as a view whose memory past its last row and last column holds NaN."""
    frame = torch.full((*t.shape[:-2], t.shape[-2] + 1, t.shape[-1] + 5), float("nan"), dtype=t.dtype, device=t.device)
    frame[..., :t.shape[-2], :t.shape[-1]] = t
    return frame[..., :t.shape[-2], :t.shape[-1]]


def exact_qkv(b, h, hkv, tq, tk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-3, 4, (b, h, tq, d), generator=g).double()
    q[..., 0] = 1.0
    k = torch.zeros(b, hkv, tk, d, dtype=torch.float64)
    k[..., 0] = HIGH * (2 * torch.randint(0, 2, (b, hkv, tk), generator=g) - 1)
    v = torch.randint(-64, 65, (b, hkv, tk, d), generator=g).double() / 8
    return (framed(t.to(dtype).to(DEVICE)) for t in (q, k, v))


def exact_expected(q, k, v, causal, mask=None, key_start=None):
    """The mean of V over each row's live keys at its maximum score, fp32 division, rounded to q's dtype."""
    b, h, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    kk = k.double().repeat_interleave(h // hkv, 1)
    vv = v.double().repeat_interleave(h // hkv, 1)
    s = q.double() @ kk.transpose(-1, -2)
    keys = torch.arange(tk, device=q.device)
    live = torch.ones(b, h, tq, tk, dtype=torch.bool, device=q.device)
    if key_start is not None:
        live &= keys >= key_start.view(b, 1, 1, 1)
    if causal:
        live &= keys <= (tk - tq) + torch.arange(tq, device=q.device)[:, None]
    if mask is not None:
        live &= mask
    s = s.masked_fill(~live, float("-inf"))
    top = live & (s == s.amax(-1, keepdim=True))
    total = (top.double() @ vv).float()                         # exact: k/8 values, at most 2^10 keys
    count = top.sum(-1, keepdim=True).float()
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).to(q.dtype)


def test_every_launch_is_the_compiled_form_in_the_interpreter():
    """The op launches each kernel's compiled form here (``ops._common.kernel_form``), and the interpreter runs it.
    The accuracy and exact-input tests below pass on the interpreter forms too (exact in any case)."""
    q, k, v = qkv(1, 2, 1, 3, 5, 8, torch.float16, seed=9)
    with observe_launches() as records:
        grads(q, k, v, randn(1, 2, 3, 8, dtype=torch.float16, seed=10))
    assert [r.kernel for r in records] == ["attention_fwd_compiled_kernel", "attention_bwd_dq_compiled_kernel",
                                           "attention_bwd_dkdv_compiled_kernel"]
    assert all(r.executor == "interpreter" for r in records)


# ---- accuracy against FP64 (fp16, bf16; fp32 is tests/test_attention.py's compiled-form case) ---------


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_forward_backward_accuracy_against_fp64(fmt):
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d = 2, 4, 2, 21, 40, 24
    q, k, v = qkv(b, h, hkv, tq, tk, d, dtype, seed=201)
    dout = randn(b, h, tq, d, dtype=dtype, seed=204)
    mask = make_mask("bool", b, h, tq, tk, dtype, seed=8)
    starts = torch.tensor([0, 11], dtype=torch.int64, device=DEVICE)
    keep = mask & (torch.arange(tk, device=DEVICE) >= starts[:, None, None, None])
    out, (dq, dk, dv) = grads(q, k, v, dout, attn_mask=mask, key_start=starts)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*leaves, attn_mask=keep)
    ref.backward(dout.double())
    check_rounded(out, ref.detach(), out_bound(q, k, v, 1 / math.sqrt(d), True, keep), f"{fmt} compiled out")
    for name, got, leaf, bound in zip("qkv", (dq, dk, dv), leaves, grad_bounds(q, k, v, dout, 1 / math.sqrt(d), True,
                                                                                keep)):
        check_rounded(got, leaf.grad, bound, f"{fmt} compiled d{name}")


# ---- logic invariants on exact inputs, bitwise ----------------------------------------------------


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_exact_forward_masks_decode_prefill_and_left_padding(fmt):
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d = 2, 4, 2, 21, 40, 24
    q, k, v = exact_qkv(b, h, hkv, tq, tk, d, dtype, seed=301)
    mask = make_mask("bool", b, h, tq, tk, dtype, seed=9)
    starts = torch.tensor([0, 11], dtype=torch.int64, device=DEVICE)
    full = pk.attention(q, k, v, scale=1.0, attn_mask=mask, key_start=starts)
    assert_bitwise(full, exact_expected(q, k, v, True, mask, starts), "causal, mask, key_start")
    plain = pk.attention(q, k, v, scale=1.0)
    assert_bitwise(plain, exact_expected(q, k, v, True), "causal")
    assert_bitwise(pk.attention(q, k, v, scale=1.0, causal=False), exact_expected(q, k, v, False), "not causal")
    # decode (one query against the whole cache) and a chunk of queries equal their rows of the prefill
    assert_bitwise(pk.attention(q[:, :, -1:], k, v, scale=1.0), plain[:, :, -1:], "decode")
    assert_bitwise(pk.attention(q[:, :, 5:12], k[:, :, :tk - tq + 12], v[:, :, :tk - tq + 12], scale=1.0),
                   plain[:, :, 5:12], "chunk")
    # left padding with NaN and inf in the pad K and V slots: the item unpadded, bitwise
    pad = 7
    kp = torch.cat([torch.full_like(k[:, :, :pad], float("nan")), k], 2)
    vp = torch.cat([torch.full_like(v[:, :, :pad], float("inf")), v], 2)
    vp[:, :, 0] = float("nan")
    padded = pk.attention(q, framed(kp), framed(vp), scale=1.0,
                          key_start=torch.full((b,), pad, dtype=torch.int64, device=DEVICE))
    assert_bitwise(padded, plain, "left-padded")


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_exact_nan_in_v_slots_masked_for_every_row_changes_nothing(fmt):
    """A key masked for every row (a bool-mask column) holds NaN and inf in V: the output is the exact value."""
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d = 1, 2, 1, 9, 40, 24
    q, k, v = exact_qkv(b, h, hkv, tq, tk, d, dtype, seed=311)
    mask = torch.ones(b, h, tq, tk, dtype=torch.bool, device=DEVICE)
    mask[..., [3, 17, 30]] = False
    want = exact_expected(q, k, v, False, mask)
    v = v.clone()
    v[:, :, 3], v[:, :, 17], v[:, :, 30] = float("nan"), float("inf"), float("-inf")
    assert_bitwise(pk.attention(q, k, framed(v), scale=1.0, causal=False, attn_mask=mask), want, "NaN at masked keys")


@pytest.mark.xfail(strict=True, reason="known limitation of the compiled form (DESIGN.md section 8): a NaN in V at a "
                   "key masked for one row of a tile but live for another reaches the masked row through tl.dot",
                   raises=AssertionError)
def test_nan_in_v_slot_masked_for_one_row_but_live_for_another():
    dtype = torch.float32
    q, k, v = exact_qkv(1, 1, 1, 8, 8, 16, dtype, seed=321)
    v = v.clone()
    v[:, :, 7] = float("nan")                    # causal: only the last row attends key 7
    out = pk.attention(q, k, v, scale=1.0)
    assert not out[:, :, :7].isnan().any()


def _merge_candidate(v_top: torch.Tensor, boundary_keys: list[int], dtype) -> torch.Tensor:
    """Split-KV's value for keys at the row maximum ``v_top`` (key -> V row) and chunk boundaries: each chunk's
    mean rounded to dtype, merged by weights l_c (exp of the chunk log-sum-exps less the maximum's), in fp64."""
    edges = [0, *boundary_keys, 10**9]
    parts = []
    for lo, hi in zip(edges, edges[1:]):
        rows = [row for key, row in v_top.items() if lo <= key < hi]
        if rows:
            total = torch.stack(rows).double().sum(0).float()
            parts.append((len(rows), (total / len(rows)).to(dtype).double()))
    weight = sum(n for n, _ in parts)
    return (sum(n * o for n, o in parts) / weight).to(dtype)


def test_exact_split_kv_chunk_boundary_is_where_it_should_be():
    """fp16 engine decode whose only maximum-score keys straddle the first chunk boundary c (keys c - 1, c, c + 1),
    with V values whose chunk means do not fit fp16: the output is the merge of chunks split at c, and not of
    chunks split at c - 1 or c + 1, or of no split (the inputs tell them apart: checked)."""
    dtype, b, tk, d = torch.float16, 2, 64, 16
    block = max(profiles.engine_config().attention_split_block,
                profiles.attention_orders_for("cuda", "fp16")[0])
    with pk.use_profile("engine"):
        chunks, c = profiles.attention_splits_for(b, 1, tk, block)
    assert chunks > 1
    q = torch.zeros(b, 1, 1, d, dtype=dtype, device=DEVICE)
    q[..., 0] = 1
    k = torch.zeros(b, 1, tk, d, dtype=dtype, device=DEVICE)
    k[..., 0] = -HIGH
    k[:, :, c - 1:c + 2, 0] = HIGH
    v = torch.full((b, 1, tk, d), 3.0, dtype=dtype, device=DEVICE)
    v[:, :, c - 1], v[:, :, c], v[:, :, c + 1] = 0.0, 2048.0, 1.0
    with pk.use_profile("engine"):
        got = pk.attention(q, framed(k), framed(v), scale=1.0)
    top = {key: v[0, 0, key] for key in (c - 1, c, c + 1)}
    want = _merge_candidate(top, [c], dtype)
    assert torch.equal(got, want.expand_as(got)), f"split at {c}: got {got[0, 0, 0, 0]}, want {want[0]}"
    for other_edges in ([c - 1], [c + 1], []):         # a key off either way, or no split at all
        assert not torch.equal(_merge_candidate(top, other_edges, dtype), want), "the inputs cannot tell"


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_backward_left_padding_and_dv_exact(fmt):
    """Backward with random inputs: the left-padded item (NaN and inf in the pad slots) gives the unpadded item's
    dq, dk and dv bitwise (its key blocks count from key_start, its query blocks from the origin, so every
    tl.dot sees the same operands in the same place). On exact inputs with one maximum key a row (P one-hot),
    dv = P^T dO exactly."""
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d, pad = 2, 4, 2, 13, 30, 24, 5
    q, k, v = qkv(b, h, hkv, tq, tk, d, dtype, seed=331)
    dout = randn(b, h, tq, d, dtype=dtype, seed=332)
    _, plain = grads(q, k, v, dout)
    kp = torch.cat([torch.full_like(k[:, :, :pad], float("nan")), k], 2)
    vp = torch.cat([torch.full_like(v[:, :, :pad], float("inf")), v], 2)
    _, padded = grads(q, kp, vp, dout, key_start=torch.full((b,), pad, dtype=torch.int64, device=DEVICE))
    for name, got, want in zip("qkv", padded, plain):
        if name != "q":
            got = got[:, :, pad:]
        assert_bitwise(got, want, f"d{name} left-padded")
    # one-hot P: only key 0 scores high, and every row sees it (causal, bottom-right, Tq <= Tk)
    q = torch.zeros(b, h, tq, d, dtype=dtype, device=DEVICE)
    q[..., 0] = 1
    k = torch.zeros(b, hkv, tk, d, dtype=dtype, device=DEVICE)
    k[..., 0] = -HIGH
    k[:, :, 0, 0] = HIGH
    v = (torch.randint(-64, 65, (b, hkv, tk, d), generator=torch.Generator().manual_seed(333)) / 8).to(dtype)
    dout = (torch.randint(-64, 65, (b, h, tq, d), generator=torch.Generator().manual_seed(334)) / 8).to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    pk.attention(*leaves, scale=1.0).backward(dout)
    want = torch.zeros(b, hkv, tk, d, dtype=torch.float64)
    want[:, :, 0] = dout.double().reshape(b, hkv, h // hkv, tq, d).sum((2, 3))
    assert_bitwise(leaves[2].grad, want.to(dtype), "dv of one-hot P")
