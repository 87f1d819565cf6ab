"""pk.attention's test data (ops/attention.py): samples, row samples, opcheck cases, bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels import profiles
from precision_kernels.ops.attention import attention

from . import _tensors as S
from ._cases import MatchesTorch, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    t, d = max(rows, 1), max(min(n, 64), 1)
    q, kk, v = S.leaf((2, 4, t, d), dtype, g), S.leaf((2, 2, t, d), dtype, g), S.leaf((2, 2, t, d), dtype, g)
    return [Sample("attention", attention, (q, kk, v))]


def row_samples(dtype, rows, n, seed):
    # the output and dq: each query row's own (dk and dv sum over the query rows)
    g = torch.Generator().manual_seed(seed)
    d = max(min(n, 64), 1)
    q, k, v = S.leaf((1, 2, rows, d), dtype, g), S.leaf((1, 1, rows, d), dtype, g), S.leaf((1, 1, rows, d), dtype, g)
    out = attention(q, k.detach(), v.detach())
    return [out, torch.autograd.grad(out, q, S.leaf(out.shape, dtype, g).detach())[0]]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    q, k, v = r(2, 4, 5, 8, grad=True), r(2, 2, 9, 8, seed=1, grad=True), r(2, 2, 9, 8, seed=2, grad=True)
    qb = r(1, 2, 3, 16, dtype=S.BF16)
    kb, vb = r(1, 1, 7, 16, dtype=S.BF16, seed=1), r(1, 1, 7, 16, dtype=S.BF16, seed=2)
    starts, keep = S.ids(0, 3), torch.rand(2, 1, 5, 9, generator=torch.Generator().manual_seed(3)).to(S.DEV) > 0.3
    qn, kn, vn = S.no_grad(q, k, v)
    _, _, stats = S.no_grad(*ops.attention(qn, kn, vn, keep, starts, True, 0.35))
    table = profiles.table_backend()
    return [
        OpcheckCase("attention", ops.attention, (q, k, v, None, None, True, 0.35)),
        OpcheckCase("attention/mask+key_start", ops.attention, (q, k, v, keep, starts, False, 0.35)),
        OpcheckCase("attention/bf16 additive mask", ops.attention,
                    (qb, kb, vb, r(1, 1, 3, 7, dtype=S.BF16, seed=4), None, True, 0.25)),
        OpcheckCase("attention_backward", ops.attention_backward,
                    (r(2, 4, 5, 8, seed=5), qn, kn, vn, stats, keep, starts, True, 0.35, table)),
    ]


def bad_inputs():
    r, F = S.rand, torch.nn.functional

    def qkv(h=2, hkv=1, tq=3, tk=5, d=8, dtype=S.F32):
        return r(2, h, tq, d, dtype=dtype), r(2, hkv, tk, d, dtype=dtype, seed=1), r(2, hkv, tk, d, dtype=dtype, seed=2)

    q, k, v = qkv()
    return [
        Raises("attention/None q", lambda: attention(None, k, v), TypeError, "q must be a torch.Tensor"),
        Raises("attention/int k", lambda: attention(q, k.int(), v), TypeError, "k must be float32"),
        Raises("attention/dtype mix", lambda: attention(q, k.half(), v), TypeError, "dtype mismatch"),
        Raises("attention/device", lambda: attention(q, k, S.meta(2, 1, 5, 8)), ValueError, "v is on meta"),
        Raises("attention/3-D q", lambda: attention(q[0], k, v), ValueError, "q must be 4-D"),
        Raises("attention/k v shapes", lambda: attention(q, k, v[:, :, :4]), ValueError, "same shape"),
        Raises("attention/batch", lambda: attention(q[:1], k, v), ValueError, "batch sizes differ"),
        Raises("attention/head dim", lambda: attention(q[..., :4], k, v), ValueError, "head dims differ"),
        Raises("attention/H % Hkv", lambda: attention(*qkv(h=3, hkv=2)), ValueError, "multiple of"),
        Raises("attention/D=0", lambda: attention(*qkv(d=0)), ValueError, r"D must be in \[1, 256\]"),
        Raises("attention/D=257", lambda: attention(*qkv(d=257)), ValueError, r"D must be in \[1, 256\]"),
        Raises("attention/causal", lambda: attention(q, k, v, causal=1), TypeError, "causal must be a bool"),
        Raises("attention/scale nan", lambda: attention(q, k, v, scale=S.NAN), ValueError, "scale must be"),
        Raises("attention/scale str", lambda: attention(q, k, v, scale="x"), TypeError, "scale"),
        Raises("attention/mask type", lambda: attention(q, k, v, attn_mask=[1]), TypeError, "attn_mask must be"),
        Raises("attention/mask dtype", lambda: attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.int32)),
               TypeError, "attn_mask must be bool"),
        Raises("attention/mask shape", lambda: attention(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool)),
               ValueError, "does not broadcast"),
        Raises("attention/mask 5-D", lambda: attention(q, k, v, attn_mask=torch.ones(1, 2, 2, 3, 5).bool()),
               ValueError, "does not broadcast"),
        Raises("attention/mask grad", lambda: attention(q, k, v, attn_mask=r(3, 5, grad=True)), ValueError,
               "attn_mask must not require grad"),
        Raises("attention/key_start dtype", lambda: attention(q, k, v, key_start=S.ids(0, 1).int()), TypeError,
               "key_start must be int64"),
        Raises("attention/key_start shape", lambda: attention(q, k, v, key_start=S.ids(0)), ValueError,
               "key_start must have shape"),
        Raises("attention/key_start float", lambda: attention(q, k, v, key_start=r(2)), TypeError,
               "key_start must be int64"),
        Raises("attention/key_start < 0", lambda: attention(q, k, v, key_start=S.ids(0, -1)), ValueError,
               r"key_start holds -1, outside \[0, Tk\]"),
        Raises("attention/key_start > Tk", lambda: attention(q, k, v, key_start=S.ids(6, 0)), ValueError,
               r"key_start holds 6, outside \[0, Tk\]"),
        Raises("pk::attention/layout", lambda: torch.ops.pk.attention(q, k[:1], v[:1], None, None, True, 0.3),
               ValueError, "pk::attention"),
        MatchesTorch("attention Tq=0", lambda: attention(*qkv(tq=0)),
                     lambda: F.scaled_dot_product_attention(*qkv(tq=0, hkv=2))),
        MatchesTorch("attention B*H=0", lambda: attention(r(0, 2, 3, 8), r(0, 1, 5, 8), r(0, 1, 5, 8)),
                     lambda: F.scaled_dot_product_attention(r(0, 2, 3, 8), r(0, 2, 5, 8), r(0, 2, 5, 8))),
    ]
