"""pk.attention's accuracy against torch's own, by FlashAttention's acceptance rule.

For out, dq, dk and dv: pk's max error against FP64 (on the same rounded inputs) is at most twice the max error
of torch's own attention, ``F.scaled_dot_product_attention`` in the same dtype, plus ``ATOL_ULPS`` ulps of the
output dtype at the reference's largest magnitude. Fixed sweeps of seeds, scales up to 4 (a sharp softmax) and
shapes, not a search: a search finds the inputs on which torch's own error happens to be near 0.

The backward recomputes P as exp(s - max) / sum from the forward's row statistics; exp(s - lse) would scale every
P of a row by lse's rounding (an ulp of a large lse at a sharp softmax), and fp32 dq and dk then fail the rule in
about half the seeds at scale 2. dq's dS = P (dP - delta) needs delta first (two passes): the one-pass
sum P dP k - delta sum P k cancels. ``PK_SLOW=1`` runs the 20-seed sweep.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import precision_kernels as pk
from precision_kernels.ops.attention import reference_attention

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIGNIFICAND = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
ATOL_ULPS = 2
SCALES = (None, 1.0, 2.0, 4.0)
# (B, H, Hkv, Tq, Tk, D, causal): the causal 64 x 64 at D = 32, and a non-causal GQA chunk
SHAPES = {"causal-64x64-D32": (1, 2, 2, 64, 64, 32, True), "gqa-33x80-D16": (1, 4, 2, 33, 80, 16, False)}
SEEDS = range(20) if os.environ.get("PK_SLOW") else range(2)


def ulp(x: float, dtype: torch.dtype) -> float:
    return 2.0 ** (math.floor(math.log2(max(x, 2.0**-126))) - (SIGNIFICAND[dtype] - 1))


def gradients(fn, q, k, v, dout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout)]


def errors(q, k, v, dout, causal, scale):
    """{name: (pk's max error, torch's max error, the atol)} for out, dq, dk, dv against FP64."""
    h, hkv, tq, tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    keep = torch.arange(tk, device=DEVICE)[None, :] <= (tk - tq) + torch.arange(tq, device=DEVICE)[:, None]
    ours = gradients(lambda *a: pk.attention(*a, causal=causal, scale=scale), q, k, v, dout)
    theirs = gradients(lambda *a: torch.nn.functional.scaled_dot_product_attention(
        *a, attn_mask=keep if causal else None, scale=scale, enable_gqa=h != hkv), q, k, v, dout)
    exact = gradients(lambda *a: reference_attention(*a, causal=causal, scale=scale),
                      *(t.double() for t in (q, k, v)), dout.double())
    result = {}
    for name, a, b, ref in zip(("out", "dq", "dk", "dv"), ours, theirs, exact):
        err = [float((x.double() - ref).abs().max()) for x in (a, b)]
        result[name] = (*err, ATOL_ULPS * ulp(float(ref.abs().max()), q.dtype))
    return result


def failures(fmt, shape, scales, seeds) -> list[str]:
    dtype = DTYPES[fmt]
    b, h, hkv, tq, tk, d, causal = SHAPES[shape]
    bad = []
    for scale in scales:
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            q, k, v, dout = (torch.randn(b, n, t, d, generator=g).to(dtype).to(DEVICE)
                             for n, t in ((h, tq), (hkv, tk), (hkv, tk), (h, tq)))
            for name, (ours, theirs, atol) in errors(q, k, v, dout, causal, scale).items():
                if not ours <= 2 * theirs + atol:
                    bad.append(f"scale={scale} seed={seed} {name}: pk {ours:.3g} > 2 x torch {theirs:.3g} + {atol:.3g}")
    return bad


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("fmt", list(DTYPES))
def test_within_twice_torchs_error(fmt, shape):
    bad = failures(fmt, shape, SCALES, SEEDS)
    assert not bad, "\n".join(bad)


# Inputs of the 20-seed sweep on which a plainer fp32 arithmetic breaks the rule: scores summed in fp32 (out, 3.1x
# torch's), delta summed in fp32 (dq, 2.4x).
FP32_CASES = [("gqa-33x80-D16", 4.0, 6), ("gqa-33x80-D16", 1.0, 13)]


@pytest.mark.parametrize("shape, scale, seed", FP32_CASES)
def test_fp32_cases_within_twice_torchs_error(shape, scale, seed):
    bad = failures("fp32", shape, [scale], [seed])
    assert not bad, "\n".join(bad)
