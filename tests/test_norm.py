"""pk.rms_norm: accuracy vs FP64, I1/I2, deterministic backward for x and weight, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from test_softmax import (
    DTYPES,
    assert_bitwise,
    assert_correctly_rounded_mostly,
    assert_within,
    batches,
    check_batch_invariance,
    check_rounded_output,
    on_backend_device,  # noqa: F401  (autouse fixture)
    randn,
    ulp,
)

import precision_kernels as pk
from precision_kernels import profiles, reference

U = 2.0**-24


def _weight(n, dtype, seed=0):
    return (1.0 + 0.2 * randn((n,), torch.float64, seed=seed + 1000)).to(dtype)


def _rstd_rel_bound(n: int) -> float:
    """Relative error of rstd: the fp32 sum of squares (sequential over blocks, a tree of depth
    log2(block_cols) inside one) is within (n_blocks + log2(block_cols)) u; the mean, + eps, sqrt
    (which halves it) and 1/ add 1.5 u more."""
    block = profiles.row_config(torch.float32).block_cols
    return 0.5 * (math.ceil(n / block) + math.log2(block) + 2) * U + 1.5 * U


# ---- forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("shape", [(4, 47, 131), (3, 1000), (9, 2051), (5, 1)])
def test_accuracy_against_fp64(fmt, shape):
    dtype = DTYPES[fmt]
    x = randn(shape, dtype, 3.0, seed=shape[-1])
    w = _weight(shape[-1], dtype)
    y = pk.rms_norm(x, w)
    assert y.dtype == dtype and y.shape == x.shape
    ref = reference.rms_norm(x, w)
    # y = (x * rstd) * w: two more roundings after rstd
    check_rounded_output(y, ref, ref.abs() * (_rstd_rel_bound(shape[-1]) + 2 * U), f"rms_norm {fmt}")


def test_weight_in_another_dtype_and_custom_eps():
    x = randn((6, 300), torch.bfloat16, 0.01, seed=1)
    w = _weight(300, torch.float32)
    y = pk.rms_norm(x, w, eps=1e-3)
    assert y.dtype == torch.bfloat16
    ref = reference.rms_norm(x, w, eps=1e-3)
    check_rounded_output(y, ref, ref.abs() * (_rstd_rel_bound(300) + 2 * U), "mixed dtypes")


def test_misaligned_and_padded_rows():
    x = randn((9, 67), torch.float16, 2.0, seed=10)
    w = _weight(64, torch.float16)
    for view in (x[:, 1:65], x[:, 3:67], x[2:, 2:66]):
        assert_bitwise(pk.rms_norm(view, w), pk.rms_norm(view.contiguous(), w))


def test_deterministic_and_strided():
    x = randn((700, 96), torch.float16, 2.0, seed=2)
    w = _weight(96, torch.float16)
    assert_bitwise(pk.rms_norm(x, w), pk.rms_norm(x, w))
    assert_bitwise(pk.rms_norm(x[::3], w), pk.rms_norm(x[::3].contiguous(), w))
    assert_bitwise(pk.rms_norm(x.t().contiguous().t(), w), pk.rms_norm(x, w))


# ---- I2 ---------------------------------------------------------------------------------------

def _check_rows(x, w, idx, other):
    # dx of a row depends only on that row (dw sums over the batch, by definition)
    check_batch_invariance(lambda t: pk.rms_norm(t, w), x, idx, other, backward=True)


@settings(max_examples=15)
@given(case=batches(max_rows=700, max_cols=300))
def test_batch_invariance_interpreter_table(case):
    rows, cols, dtype, seed, idx, n_other = case
    _check_rows(randn((rows, cols), dtype, 2.0, seed), _weight(cols, dtype, seed), idx,
                randn((n_other, cols), dtype, 2.0, seed + 1))


def test_rows_across_program_boundaries():
    x = randn((1100, 150), torch.float16, 2.0, seed=8)
    _check_rows(x, _weight(150, torch.float16), torch.tensor([0, 511, 512, 1023, 1024, 1099]),
                randn((300, 150), torch.float16, 2.0, seed=9))


@pytest.mark.cuda_configs
@settings(max_examples=10)
@given(case=batches(max_rows=11, max_cols=1100))
def test_batch_invariance_cuda_table(case):
    rows, cols, dtype, seed, idx, n_other = case
    with profiles.config_backend("cuda"):
        _check_rows(randn((rows, cols), dtype, 2.0, seed), _weight(cols, dtype, seed), idx,
                    randn((n_other, cols), dtype, 2.0, seed + 1))


# ---- backward ----------------------------------------------------------------------------------

def _fp64_grads(x, w, dy, eps=1e-6):
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64).backward(dy.double())
    return x64.grad, w64.grad


def _grad_bounds(x, w, dy, eps=1e-6):
    """fp32 error budgets of dx and dw before their final rounding (u = 2^-24).

    dx = (dy w) r - x coef, coef = r^3 c / n, c = sum(dy w x): each term carries r's error
    (eps_r, three times in coef) and a few roundings; c's fp32 sum adds (n_blocks + depth + 2) u
    of sum|dy w x|. dw = sum_rows (dy x) r: eps_r + 2u per term, plus the two-stage fp32 sum
    (a tree over a program's rows and over a chunk of partials, and two sequential loops).
    """
    cfg = profiles.row_config(x.dtype)
    rows, n = x.reshape(-1, x.shape[-1]).shape
    x64, w64, dy64 = x.double().reshape(rows, n), w.double(), dy.double().reshape(rows, n)
    r = torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    eps_r = _rstd_rel_bound(n)
    c_abs = (dy64 * w64 * x64).abs().sum(-1, keepdim=True)
    c = (dy64 * w64 * x64).sum(-1, keepdim=True)
    t1 = (dy64 * w64 * r).abs()
    t2 = (x64 * r**3 * c / n).abs()
    c_err = (math.ceil(n / cfg.block_cols) + math.log2(cfg.block_cols) + 2) * U * c_abs
    dx_b = (t1 + t2) * (3 * eps_r + 8 * U) + x64.abs() * r**3 * c_err / n
    n_parts = math.ceil(rows / cfg.block_rows)
    depth = 2 * math.log2(cfg.block_rows) + 2 * math.ceil(n_parts / cfg.block_rows) + 4
    dw_b = (dy64 * x64 * r).abs().sum(0) * (eps_r + depth * U)
    return dx_b.reshape(x.shape), dw_b


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("shape", [(3, 5, 131), (700, 96)])
def test_backward_against_fp64(fmt, shape):
    dtype = DTYPES[fmt]
    x = randn(shape, dtype, 2.0, seed=4)
    w = _weight(shape[-1], dtype)
    dy = randn(shape, dtype, seed=5)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    pk.rms_norm(xg, wg).backward(dy)
    assert xg.grad.dtype == dtype and wg.grad.dtype == dtype
    ref_x, ref_w = _fp64_grads(x, w, dy)
    bx, bw = _grad_bounds(x, w, dy)
    assert_within(xg.grad, ref_x, bx + ulp(ref_x, dtype), f"dx {fmt}")
    assert_within(wg.grad, ref_w, bw + ulp(ref_w, dtype), f"dw {fmt}")
    if dtype != torch.float32:
        assert_correctly_rounded_mostly(xg.grad, ref_x, 0.97, math.inf, f"dx {fmt}")
    # deterministic, weight gradient included
    xg2, wg2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    pk.rms_norm(xg2, wg2).backward(dy)
    assert_bitwise(xg.grad, xg2.grad)
    assert_bitwise(wg.grad, wg2.grad)


@pytest.mark.cuda_configs
def test_backward_cuda_table_many_partials():
    """4-row programs: 40 weight-gradient partials, summed in index order."""
    x = randn((160, 40), torch.bfloat16, 2.0, seed=6)
    w = _weight(40, torch.bfloat16)
    dy = randn(x.shape, torch.bfloat16, seed=7)
    with profiles.config_backend("cuda"):
        grads = []
        for _ in range(2):
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            pk.rms_norm(xg, wg).backward(dy)
            grads.append((xg.grad, wg.grad))
        bx, bw = _grad_bounds(x, w, dy)
    ref_x, ref_w = _fp64_grads(x, w, dy)
    assert_within(grads[0][1], ref_w, bw + ulp(ref_w, torch.bfloat16), "dw cuda table")
    assert_within(grads[0][0], ref_x, bx + ulp(ref_x, torch.bfloat16), "dx cuda table")
    assert_bitwise(grads[0][1], grads[1][1])
    assert_bitwise(grads[0][0], grads[1][0])


# ---- errors ---------------------------------------------------------------------------------------

def test_bad_inputs():
    x, w = torch.randn(3, 4), torch.ones(4)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        pk.rms_norm(x, torch.ones(5))
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        pk.rms_norm(x, torch.ones(1, 4))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        pk.rms_norm(x, torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        pk.rms_norm(x.double(), w)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pk.rms_norm(x, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="active backend"):
        pk.rms_norm(x, torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="at least one dimension"):
        pk.rms_norm(torch.tensor(1.0), torch.ones(1))
    for eps in (-1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            pk.rms_norm(x, w, eps=eps)
    assert pk.rms_norm(torch.empty(0, 4), w).shape == (0, 4)
