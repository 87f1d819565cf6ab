"""pk.fp8_linear: W8A8 forward against FP64 on the quantised operands, batch invariance, and the
straight-through gradient against products built here from torch's own casts."""

from __future__ import annotations

import pytest
import torch

import precision_kernels as pk

DEV = pk.backend.device()
E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2


def _data(dtype, m=12, n=24, k=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype).to(DEV)
    w = (torch.randn(n, k, generator=g) / 5).to(dtype).to(DEV)
    return x, w


def _torch_quantize(t: torch.Tensor, fp8: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row quantisation with torch's ops alone (torch 2.13's saturating cast equals pk's rounding on finite
    input): scale = amax / max_finite, values = cast(t / scale)."""
    t32 = t.float()
    scales = t32.abs().amax(dim=-1, keepdim=True) / torch.finfo(fp8).max
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    return (t32 / scales).clamp(-torch.finfo(fp8).max, torch.finfo(fp8).max).to(fp8), scales


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_is_correctly_rounded_against_fp64_on_the_quantised_operands(dtype):
    x, w = _data(dtype)
    y = pk.fp8_linear(x, w)
    assert y.dtype == dtype and y.shape == (12, 24)
    xq, sx = _torch_quantize(x, E4)
    wq, sw = _torch_quantize(w, E4)
    exact = (xq.double() * sx.double()) @ (wq.double() * sw.double()).T
    correctly_rounded = (y == exact.to(dtype)).float().mean().item()  # fp64 -> 16-bit: one rounding of the exact sum
    assert correctly_rounded >= 0.99, correctly_rounded
    # it is a quantised product: the unquantised pk.linear differs
    assert not torch.equal(y, pk.linear(x, w))


def test_a_row_alone_equals_its_row_in_the_batch_and_leading_dims_are_rows():
    x, w = _data(torch.bfloat16, m=10)
    y = pk.fp8_linear(x, w)
    for r in (0, 3, 9):
        assert torch.equal(pk.fp8_linear(x[r:r + 1], w), y[r:r + 1])
    assert torch.equal(pk.fp8_linear(x.view(2, 5, -1), w), y.view(2, 5, -1))


def test_weight_fp8_is_the_weight_the_forward_reads():
    x, w = _data(torch.bfloat16)
    master = w.float() * 1.001  # not w's value: the forward must read weight_fp8, never weight
    from_master = pk.fp8_linear(x, w, weight_fp8=pk.quantize_fp8(master, E4, axis=-1))
    wq, sw = _torch_quantize(master, E4)
    xq, sx = _torch_quantize(x, E4)
    exact = (xq.double() * sx.double()) @ (wq.double() * sw.double()).T
    assert (from_master == exact.to(torch.bfloat16)).float().mean().item() >= 0.99
    assert not torch.equal(from_master, pk.fp8_linear(x, w))
    # e5m2 weights with e4m3 activations, as some recipes use
    assert not torch.equal(pk.fp8_linear(x, w, weight_fp8=pk.quantize_fp8(w, E5, axis=-1)), pk.fp8_linear(x, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_gradient_is_straight_through_on_the_dequantised_operands(dtype):
    x, w = _data(dtype, m=6, n=10, k=16, seed=1)
    x.requires_grad_()
    w.requires_grad_()
    dy = torch.randn(6, 10, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEV)
    pk.fp8_linear(x, w).backward(dy)
    xq, sx = _torch_quantize(x.detach(), E4)
    wq, sw = _torch_quantize(w.detach(), E4)
    # dequant: exact widening, one fp32 multiply, one rounding (torch's cast rounds to nearest even, as pk does)
    dx_want = pk.matmul(dy, (wq.float() * sw).to(dtype))
    dw_want = pk.matmul(dy.T.contiguous(), (xq.float() * sx).to(dtype))
    assert x.grad.dtype == dtype and torch.equal(x.grad, dx_want)
    assert w.grad.dtype == dtype and torch.equal(w.grad, dw_want)
    # and not the gradient of the unquantised product, which would use x and w themselves
    assert not torch.equal(x.grad, pk.matmul(dy, w.detach()))


def test_the_gradient_reaches_fp32_masters_through_round_to():
    """The learner's layout: fp32 master -> pk.round_to (compute weight, carries the gradient) and
    pk.quantize_fp8 (the forward's fp8 weight) from the same master."""
    _, w = _data(torch.bfloat16, n=10, k=16)
    x = _data(torch.bfloat16, m=6, n=10, k=16, seed=3)[0]
    master = w.float().clone().requires_grad_()
    compute = pk.round_to(master, torch.bfloat16)
    y = pk.fp8_linear(x, compute, weight_fp8=pk.quantize_fp8(master.detach(), E4, axis=-1))
    dy = torch.ones_like(y)
    y.backward(dy)
    xq, sx = _torch_quantize(x, E4)
    assert master.grad.dtype == torch.float32
    assert torch.equal(master.grad, pk.matmul(dy.T.contiguous(), (xq.float() * sx).to(torch.bfloat16)).float())
