"""pk.attention's gradients do not depend on padding (I2/I3 in the backward): an item alone and the same item
padded with masked keys and masked query rows give the same dq, dk and dv, bit for bit.

Padding: leading keys through ``key_start``, trailing keys masked by ``attn_mask``, leading and trailing query
rows that the mask leaves with no key. NaN fills every padded q/k/v/dO slot. Causal attention aligns
bottom-right, so there the trailing key and query paddings are equal (the real rows keep their key positions).

The sums over query blocks (dk, dv) and key blocks (dq) are where padding could move a block boundary. At the
interpreter table's real blocks (64 rows) a small item fits in one block, so the hypothesis test also runs
with 4-row and 4-key blocks, where a few rows of padding span several blocks.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import attention_tiles, profiles

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(INT_VIEW[t.dtype]).cpu()


def assert_bitwise(got, want, what):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ"


def grads(q, k, v, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = pk.attention(*leaves, **kw)
    return (out, *torch.autograd.grad(out, leaves, dout))


def pad_rows(x, lead, tail):
    """x (B, H, T, D) with ``lead`` NaN rows before and ``tail`` after, along T."""
    b, h, _, d = x.shape
    nan = torch.full((b, h, lead + tail, d), float("nan"), dtype=x.dtype, device=x.device)
    return torch.cat([nan[:, :, :lead], x, nan[:, :, lead:]], 2)


def check_padded_equals_alone(c, small_blocks=False):
    dtype = DTYPES[c["fmt"]]
    tq, tk, d, h, hkv = c["tq"], c["tk"], c["d"], c["h"], c["hkv"]
    causal = c["causal"]
    lead_k, tail_k, lead_q = c["lead_k"], c["tail_k"], c["lead_q"]
    tail_q = tail_k if causal else c["tail_q"]        # bottom-right causal: the real rows keep their positions
    g = torch.Generator().manual_seed(c["seed"])
    q, k, v, dout = (torch.randn(1, n, t, d, generator=g).to(dtype).to(DEVICE)
                     for n, t in ((h, tq), (hkv, tk), (hkv, tk), (h, tq)))
    # the item's own mask: some (row, key) pairs masked, now and then a whole row
    keep = torch.rand(1, 1, tq, tk, generator=g) > c["masked"]
    mask = keep.to(DEVICE) if c["masked"] > 0 else None
    alone = grads(q, k, v, dout, causal=causal, attn_mask=mask)
    full = torch.zeros(1, 1, lead_q + tq + tail_q, lead_k + tk + tail_k, dtype=torch.bool)
    full[:, :, lead_q:lead_q + tq, lead_k:lead_k + tk] = keep
    starts = torch.tensor([lead_k], dtype=torch.int64, device=DEVICE)
    padded = grads(pad_rows(q, lead_q, tail_q), pad_rows(k, lead_k, tail_k), pad_rows(v, lead_k, tail_k),
                   pad_rows(dout, lead_q, tail_q), causal=causal, attn_mask=full.to(DEVICE), key_start=starts)
    rows, keys = slice(lead_q, lead_q + tq), slice(lead_k, lead_k + tk)
    for name, got, want in zip(("out", "dq", "dk", "dv"), padded, alone):
        real = got[:, :, rows] if name in ("out", "dq") else got[:, :, keys]
        assert_bitwise(real, want, f"{name} {c} small_blocks={small_blocks}")


@st.composite
def cases(draw, max_t=12, max_pad=9):
    hkv = draw(st.integers(1, 2))
    return dict(tq=draw(st.integers(1, max_t)), tk=draw(st.integers(1, max_t)), d=draw(st.sampled_from([1, 4, 8])),
                hkv=hkv, h=hkv * draw(st.integers(1, 2)), causal=draw(st.booleans()),
                lead_k=draw(st.integers(0, max_pad)), tail_k=draw(st.integers(0, max_pad)),
                lead_q=draw(st.integers(0, max_pad)), tail_q=draw(st.integers(0, max_pad)),
                masked=draw(st.sampled_from([0.0, 0.0, 0.3])), fmt=draw(st.sampled_from(list(DTYPES))),
                seed=draw(st.integers(0, 999)))


@pytest.mark.skipif(profiles.table_backend() != "interpreter", reason="the small blocks override the interpreter table")
@settings(max_examples=25)
@given(c=cases())
def test_padded_item_equals_itself_alone_small_blocks(c):
    # 4-key blocks for the forward/dq sums and 4-row blocks for the dk/dv sums
    small = attention_tiles.FittedAttentionTiles(block_n=4, block_m_bwd=4)
    with mock.patch.dict(attention_tiles._ATTENTION_TABLE, {("interpreter", f): small for f in DTYPES}):
        assert profiles.attention_orders_for("interpreter", "fp32") == (4, 4)
        check_padded_equals_alone(c, small_blocks=True)


@settings(max_examples=6)
@given(c=cases())
def test_padded_item_equals_itself_alone(c):
    check_padded_equals_alone(c)


# The case and its neighbours, at the real blocks: more query rows than real keys, non-causal.
FIXED = [
    dict(tq=3, tk=1, lead_k=0, tail_k=1, lead_q=0, tail_q=0, causal=False),
    dict(tq=70, tk=5, lead_k=0, tail_k=3, lead_q=0, tail_q=0, causal=False),
    dict(tq=70, tk=5, lead_k=6, tail_k=0, lead_q=0, tail_q=0, causal=False),
    dict(tq=66, tk=66, lead_k=7, tail_k=0, lead_q=7, tail_q=0, causal=False),     # left-padded self-attention
    dict(tq=66, tk=66, lead_k=7, tail_k=5, lead_q=7, tail_q=5, causal=True),
    dict(tq=70, tk=9, lead_k=3, tail_k=2, lead_q=4, tail_q=2, causal=True),
]


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("i", range(len(FIXED)))
def test_padded_item_equals_itself_alone_fixed(fmt, i):
    check_padded_equals_alone(dict(FIXED[i], d=8, h=2, hkv=1, masked=0.0, fmt=fmt, seed=i))


def test_sdpa_key_padding_mask_in_matched_mode():
    """Through F.scaled_dot_product_attention in pk.matched_mode() with a (B, 1, 1, Tk) key-padding mask: item 1
    padded with masked keys (leading and trailing) has the gradients of the item alone, with more queries than keys."""
    F = torch.nn.functional
    g = torch.Generator().manual_seed(5)
    h, tq, tk, d, lead, tail = 2, 9, 3, 8, 2, 4
    total = lead + tk + tail
    q = torch.randn(2, h, tq, d, generator=g)
    k, v = torch.randn(2, h, total, d, generator=g), torch.randn(2, h, total, d, generator=g)
    dout = torch.randn(2, h, tq, d, generator=g)
    keep = torch.ones(2, 1, 1, total, dtype=torch.bool)
    keep[1, ..., :lead] = False
    keep[1, ..., lead + tk:] = False

    def sdpa_grads(q, k, v, dout, mask):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with pk.matched_mode(strict=True):
            out = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
            return torch.autograd.grad(out, leaves, dout)

    dq, dk, dv = sdpa_grads(q, k, v, dout, keep)
    real = slice(lead, lead + tk)
    wq, wk, wv = sdpa_grads(q[1:], k[1:, :, real], v[1:, :, real], dout[1:], None)
    assert_bitwise(dq[1:], wq, "dq")
    assert_bitwise(dk[1:, :, real], wk, "dk")
    assert_bitwise(dv[1:, :, real], wv, "dv")
    assert bool((dk[1, :, :lead] == 0).all() and (dv[1, :, lead + tk:] == 0).all())
