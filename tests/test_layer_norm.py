"""pk.layer_norm: accuracy vs FP64 with derived bounds, I1/I2, backward (dx, dweight, dbias) vs FP64,
optional weight/bias, errors.

I3 (length invariance) does not apply: a norm has no padding semantics. Padding a row with
any value changes its mean and variance, so no masked-entry identity exists to test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from test_softmax import (
    DTYPES,
    assert_bitwise,
    assert_correctly_rounded_mostly,
    assert_within,
    batches,
    check_batch_invariance,
    check_rounded_output,
    fp32,
    on_backend_device,  # noqa: F401  (autouse fixture)
    randn,
    ulp,
)

import precision_kernels as pk
from precision_kernels import profiles, reference

U = 2.0**-24
EPS = 1e-5


def _affine(n, dtype, seed=0):
    w = (1.0 + 0.2 * randn((n,), torch.float64, seed=seed + 1000)).to(dtype)
    b = (0.5 * randn((n,), torch.float64, seed=seed + 2000)).to(dtype)
    return w, b


# ---- error budgets (first order in u = 2^-24) ------------------------------------------------

def _sum_depth(n: int) -> float:
    """Roundings on the path of one element through a fixed-block fp32 row sum: a tree of depth
    log2(block_cols) inside a block, then one addition per block into the running sum."""
    block = profiles.row_config(torch.float32).block_cols
    return math.ceil(n / block) + math.log2(block)


def _stats(x: torch.Tensor, eps: float):
    """Exact (FP64) per-row mean deviation d, rstd r, and the kernel's error budgets:
    dm bounds |mean_fp32 - mean| and eps_r bounds the relative error of rstd.

    mean = fl(sum x) / n: the sum is within k u sum|x| (k = _sum_depth), the division adds u |mean|.
    var: each d_hat = fl(x - mean_fp32) is d - dm' (|dm'| <= dm) within u |d|; the shift dm' enters
    sum d_hat^2 only as n dm'^2 (sum d = 0 exactly), the squares and the sum add (k + 3) u ss,
    the division by n and + eps one u each. sqrt halves that and adds u; 1 / adds u.
    """
    n = x.shape[-1]
    x64 = x.double()
    k = _sum_depth(n)
    mean = x64.mean(-1, keepdim=True)
    d = x64 - mean
    var = d.pow(2).mean(-1, keepdim=True)
    e = fp32(eps)
    v = var + e
    r = torch.rsqrt(v)
    dm = (k + 1) * U * x64.abs().mean(-1, keepdim=True)
    eps_v = ((k + 4) * U * var + dm**2 + U * v) / v
    eps_r = 0.5 * eps_v + 2 * U
    return d, r, dm, eps_r


def _y_bound(x, w, b, eps=EPS):
    """y = fl(fl(fl(d_hat * r_hat) * w) + b): |d_hat - d| <= dm + u|d|, r_hat within eps_r, two products
    and the bias addition one u each: |err| <= |w| (|d| r (eps_r + 3u) + dm r) + u |y|."""
    d, r, dm, eps_r = _stats(x, eps)
    w64 = torch.ones((), dtype=torch.float64) if w is None else w.double()
    y = reference.layer_norm(x, w, b, eps)
    return w64.abs() * (d.abs() * r * (eps_r + 3 * U) + dm * r) + U * y.abs(), y


# ---- forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("shape", [(4, 47, 131), (3, 1000), (9, 2051), (5, 1)])
def test_accuracy_against_fp64(fmt, shape):
    dtype = DTYPES[fmt]
    x = randn(shape, dtype, 3.0, seed=shape[-1])
    w, b = _affine(shape[-1], dtype)
    y = pk.layer_norm(x, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    bound, ref = _y_bound(x, w, b)
    check_rounded_output(y, ref, bound, f"layer_norm {fmt}")


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_large_mean_two_pass(fmt):
    """|mean| >> std: E[x^2] - mean^2 would cancel catastrophically (fp32, mean 1000, std 1: every
    digit of the variance lost); the two-pass variance keeps the derived bound. Not mostly
    correctly rounded in fp16/bf16: the fp32 mean's own error (~1e-4 here) shifts every y."""
    dtype = DTYPES[fmt]
    x = (1000.0 + randn((6, 777), torch.float64, 1.0, seed=3)).to(dtype)
    w, b = _affine(777, dtype, seed=1)
    bound, ref = _y_bound(x, w, b)
    assert_within(pk.layer_norm(x, w, b), ref, bound + ulp(ref, dtype), f"large mean {fmt}")


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True)])
def test_weight_and_bias_optional(has_w, has_b):
    x = randn((7, 300), torch.float16, 2.0, seed=5)
    w, b = _affine(300, torch.float16, seed=5)
    w, b = (w if has_w else None), (b if has_b else None)
    y = pk.layer_norm(x, w, b)
    bound, ref = _y_bound(x, w, b)
    check_rounded_output(y, ref, bound, f"weight={has_w} bias={has_b}")
    # An absent weight is a weight of ones, an absent bias a bias of zeros, value for value
    # (x * 1 and x + 0 are exact; equal, not bitwise: -0 + 0 is +0).
    ones, zeros = torch.ones(300, dtype=torch.float16), torch.zeros(300, dtype=torch.float16)
    assert torch.equal(y, pk.layer_norm(x, ones if w is None else w, zeros if b is None else b))


def test_mixed_dtypes_and_custom_eps():
    x = randn((6, 300), torch.bfloat16, 0.01, seed=1)
    w, b = _affine(300, torch.float32)
    y = pk.layer_norm(x, w, b.half(), eps=1e-3)
    assert y.dtype == torch.bfloat16
    bound, ref = _y_bound(x, w, b.half(), eps=1e-3)
    check_rounded_output(y, ref, bound, "mixed dtypes")


def test_matches_torch_closely():
    """Cross-check of the semantics against F.layer_norm (biased variance, eps inside the sqrt):
    |pk - torch| <= |pk - exact| + |torch - exact|, and torch's fp32 LayerNorm carries the same
    first-order budget as ours (a fixed-order fp32 mean and variance), so twice ours plus an ulp."""
    x = randn((16, 200), torch.float32, 2.0, seed=7)
    w, b = _affine(200, torch.float32, seed=7)
    ours, theirs = pk.layer_norm(x, w, b), F.layer_norm(x, (200,), w, b, EPS)
    bound, _ = _y_bound(x, w, b)
    assert_within(ours, theirs.double(), 2 * bound + ulp(theirs.double(), torch.float32), "vs torch")


def test_misaligned_and_padded_rows():
    x = randn((9, 67), torch.float16, 2.0, seed=10)
    w, b = _affine(64, torch.float16)
    for view in (x[:, 1:65], x[:, 3:67], x[2:, 2:66]):
        assert_bitwise(pk.layer_norm(view, w, b), pk.layer_norm(view.contiguous(), w, b))


def test_deterministic_and_strided():
    x = randn((700, 96), torch.bfloat16, 2.0, seed=2)
    w, b = _affine(96, torch.bfloat16)
    assert_bitwise(pk.layer_norm(x, w, b), pk.layer_norm(x, w, b))
    assert_bitwise(pk.layer_norm(x[::3], w, b), pk.layer_norm(x[::3].contiguous(), w, b))
    assert_bitwise(pk.layer_norm(x.t().contiguous().t(), w, b), pk.layer_norm(x, w, b))


# ---- I2 ---------------------------------------------------------------------------------------

def _check_rows(x, w, b, idx, other):
    # dx of a row depends only on that row (dw and db sum over the batch, by definition)
    check_batch_invariance(lambda t: pk.layer_norm(t, w, b), x, idx, other, backward=True)


@settings(max_examples=15)
@given(case=batches(max_rows=700, max_cols=300))
def test_batch_invariance_interpreter_table(case):
    rows, cols, dtype, seed, idx, n_other = case
    w, b = _affine(cols, dtype, seed)
    _check_rows(randn((rows, cols), dtype, 2.0, seed), w, b, idx, randn((n_other, cols), dtype, 2.0, seed + 1))


def test_rows_across_program_boundaries():
    x = randn((1100, 150), torch.float16, 2.0, seed=8)
    w, b = _affine(150, torch.float16)
    _check_rows(x, w, b, torch.tensor([0, 511, 512, 1023, 1024, 1099]),
                randn((300, 150), torch.float16, 2.0, seed=9))


@pytest.mark.cuda_configs
@settings(max_examples=10)
@given(case=batches(max_rows=11, max_cols=1100))
def test_batch_invariance_cuda_table(case):
    rows, cols, dtype, seed, idx, n_other = case
    w, b = _affine(cols, dtype, seed)
    with profiles.config_backend("cuda"):
        _check_rows(randn((rows, cols), dtype, 2.0, seed), w, b, idx, randn((n_other, cols), dtype, 2.0, seed + 1))


# ---- backward ----------------------------------------------------------------------------------

def _fp64_grads(x, w, b, dy, eps=EPS):
    x64 = x.detach().double().requires_grad_()
    w64 = None if w is None else w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    F.layer_norm(x64, (x.shape[-1],), w64, b64, fp32(eps)).backward(dy.double())
    return x64.grad, None if w is None else w64.grad, None if b is None else b64.grad


def _grad_bounds(x, w, dy, eps=EPS):
    """fp32 error budgets of dx, dw and db before their final rounding (u = 2^-24).

    With xhat = d r and g = dy w: xhat_hat is within E_x = |xhat| (eps_r + 2u) + dm r (see _stats);
    c1 = sum g within (k + 1) u sum|g|; c2 = sum g xhat within (eps_r + (k + 4) u) sum|g xhat| +
    dm r sum|g|; each mean adds u. dx = (g - (xhat c2/n + c1/n)) r: the inner product, the two
    subtractions and the final product add one u of each term's magnitude, r adds eps_r.
    dw = sum_rows dy xhat, db = sum_rows dy: per term eps_r + 3u and dm r |dy|, plus the two-stage
    fp32 sum (a tree over a program's rows, then per chunk of partials a tree and one addition).
    """
    cfg = profiles.row_config(x.dtype)
    rows, n = x.reshape(-1, x.shape[-1]).shape
    d, r, dm, eps_r = _stats(x.reshape(rows, n), eps)
    dy64 = dy.double().reshape(rows, n)
    g = dy64 if w is None else dy64 * w.double()
    xhat = d * r
    k = _sum_depth(n)
    e_x = xhat.abs() * (eps_r + 2 * U) + dm * r
    c1m = g.sum(-1, keepdim=True) / n
    c2m = (g * xhat).sum(-1, keepdim=True) / n
    e_c1m = ((k + 1) * U * g.abs().sum(-1, keepdim=True)) / n + U * c1m.abs()
    e_c2m = ((eps_r + (k + 4) * U) * (g * xhat).abs().sum(-1, keepdim=True)
             + dm * r * g.abs().sum(-1, keepdim=True)) / n + U * c2m.abs()
    inner = xhat * c2m + c1m
    h = g - inner
    e_h = (U * g.abs() + xhat.abs() * e_c2m + c2m.abs() * e_x + U * (xhat * c2m).abs() + e_c1m
           + U * inner.abs() + U * h.abs())
    dx_b = r * e_h + h.abs() * r * (eps_r + U)
    n_parts = math.ceil(rows / cfg.block_rows)
    depth = 2 * math.log2(cfg.block_rows) + math.ceil(n_parts / cfg.block_rows) + 1
    dw_b = ((dy64 * xhat).abs() * (eps_r + 3 * U) + dy64.abs() * dm * r).sum(0) \
        + depth * U * (dy64 * xhat).abs().sum(0)
    db_b = depth * U * dy64.abs().sum(0)
    return dx_b.reshape(x.shape), dw_b, db_b


def _run_backward(x, w, b, dy):
    xg = x.clone().requires_grad_()
    wg = None if w is None else w.clone().requires_grad_()
    bg = None if b is None else b.clone().requires_grad_()
    pk.layer_norm(xg, wg, bg).backward(dy)
    return xg.grad, None if w is None else wg.grad, None if b is None else bg.grad


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("shape", [(3, 5, 131), (700, 96)])
def test_backward_against_fp64(fmt, shape):
    dtype = DTYPES[fmt]
    x = randn(shape, dtype, 2.0, seed=4)
    w, b = _affine(shape[-1], dtype)
    dy = randn(shape, dtype, seed=5)
    dx, dw, db = _run_backward(x, w, b, dy)
    assert dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    ref_x, ref_w, ref_b = _fp64_grads(x, w, b, dy)
    bx, bw, bb = _grad_bounds(x, w, dy)
    assert_within(dx, ref_x, bx + ulp(ref_x, dtype), f"dx {fmt}")
    assert_within(dw, ref_w, bw + ulp(ref_w, dtype), f"dw {fmt}")
    assert_within(db, ref_b, bb + ulp(ref_b, dtype), f"db {fmt}")
    if dtype != torch.float32:
        assert_correctly_rounded_mostly(dx, ref_x, 0.97, math.inf, f"dx {fmt}")
    # deterministic, weight and bias gradients included
    for a, c in zip((dx, dw, db), _run_backward(x, w, b, dy)):
        assert_bitwise(a, c)


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True)])
def test_backward_without_weight_or_bias(has_w, has_b):
    x = randn((9, 77), torch.float32, 2.0, seed=11)
    w, b = _affine(77, torch.float32, seed=11)
    w, b = (w if has_w else None), (b if has_b else None)
    dy = randn(x.shape, torch.float32, seed=12)
    dx, dw, db = _run_backward(x, w, b, dy)
    ref_x, ref_w, ref_b = _fp64_grads(x, w, b, dy)
    bx, bw, bb = _grad_bounds(x, w, dy)
    assert_within(dx, ref_x, bx + ulp(ref_x, torch.float32), "dx")
    if has_w:
        assert_within(dw, ref_w, bw + ulp(ref_w, torch.float32), "dw")
    if has_b:
        assert_within(db, ref_b, bb + ulp(ref_b, torch.float32), "db")


def test_backward_only_requested_grads():
    """A frozen weight still scales dx; its gradient is neither computed nor returned."""
    x = randn((5, 40), torch.float16, 2.0, seed=13)
    w, b = _affine(40, torch.float16, seed=13)
    dy = randn(x.shape, torch.float16, seed=14)
    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    pk.layer_norm(xg, w, bg).backward(dy)
    dx, _, db = _run_backward(x, w, b, dy)
    assert_bitwise(xg.grad, dx)
    assert_bitwise(bg.grad, db)


@pytest.mark.cuda_configs
def test_backward_cuda_table_many_partials():
    """4-row programs: 40 weight- and bias-gradient partials, summed in index order."""
    x = randn((160, 40), torch.bfloat16, 2.0, seed=6)
    w, b = _affine(40, torch.bfloat16)
    dy = randn(x.shape, torch.bfloat16, seed=7)
    with profiles.config_backend("cuda"):
        grads = [_run_backward(x, w, b, dy) for _ in range(2)]
        bx, bw, bb = _grad_bounds(x, w, dy)
    ref_x, ref_w, ref_b = _fp64_grads(x, w, b, dy)
    assert_within(grads[0][0], ref_x, bx + ulp(ref_x, torch.bfloat16), "dx cuda table")
    assert_within(grads[0][1], ref_w, bw + ulp(ref_w, torch.bfloat16), "dw cuda table")
    assert_within(grads[0][2], ref_b, bb + ulp(ref_b, torch.bfloat16), "db cuda table")
    for a, c in zip(grads[0], grads[1]):
        assert_bitwise(a, c)


# ---- errors ---------------------------------------------------------------------------------------

def test_bad_inputs():
    x, w, b = torch.randn(3, 4), torch.ones(4), torch.zeros(4)
    with pytest.raises(ValueError, match=r"weight has shape \(5,\), expected \(4,\)"):
        pk.layer_norm(x, torch.ones(5), b)
    with pytest.raises(ValueError, match=r"bias has shape \(1, 4\), expected \(4,\)"):
        pk.layer_norm(x, w, torch.zeros(1, 4))
    with pytest.raises(TypeError, match="weight must be float32, float16 or bfloat16"):
        pk.layer_norm(x, torch.ones(4, dtype=torch.int64), b)
    with pytest.raises(TypeError, match="bias must be float32, float16 or bfloat16"):
        pk.layer_norm(x, w, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        pk.layer_norm(x.double(), w, b)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pk.layer_norm(None, w, b)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        pk.layer_norm(x, [1.0, 1.0, 1.0, 1.0], b)
    with pytest.raises(ValueError, match="bias is on meta.*active backend"):
        pk.layer_norm(x, w, torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="at least one dimension"):
        pk.layer_norm(torch.tensor(1.0), None, None)
    for eps in (-1e-6, float("nan"), float("inf"), 1e39):
        with pytest.raises(ValueError, match="eps"):
            pk.layer_norm(x, w, b, eps=eps)
    for eps in (None, "1e-5", True):
        with pytest.raises(TypeError, match="eps must be a real number"):
            pk.layer_norm(x, w, b, eps=eps)
    assert pk.layer_norm(torch.empty(0, 4), w, b).shape == (0, 4)
    assert pk.layer_norm(torch.empty(2, 0), torch.ones(0), None).shape == (2, 0)
