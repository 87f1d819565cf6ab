"""pk.matched_mode(): routing of aten ops to pk, scope (per thread, nesting, exit), fallbacks, audit, strict."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
import torch.nn.functional as F

import precision_kernels as pk
from precision_kernels.matched import HANDLERS, UncoveredOpError, handlers, mode
from precision_kernels.ops.registry import all_families

DEVICE = pk.backend.device()
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def randn(shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    same = bits(a) == bits(b)
    assert bool(same.all()), f"{int((~same).sum())} of {same.numel()} elements differ"


def uncovered_ops(report) -> set[str]:
    return {r.op for r in report.uncovered.values()}


# --- scope: inside, after exit, nested, per thread -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_inside_is_pk_and_after_exit_is_torch(dtype):
    a, b = randn((37, 53), dtype, 1), randn((53, 29), dtype, 2)
    torch_before = torch.mm(a, b)
    with pk.matched_mode() as report:
        inside = torch.mm(a, b)
        via_matmul = a @ b                       # torch.matmul decomposes into aten.mm
    assert_bitwise(inside, pk.matmul(a, b))
    assert_bitwise(via_matmul, pk.matmul(a, b))
    assert report.served["mm.default"] == 2
    assert_bitwise(torch.mm(a, b), torch_before)


def test_modes_nest_and_unwind():
    a, b = randn((9, 40), torch.float32, 3), randn((40, 7), torch.float32, 4)
    with pk.matched_mode() as outer:
        with pk.matched_mode() as inner:
            assert_bitwise(torch.mm(a, b), pk.matmul(a, b))
        assert_bitwise(torch.mm(a, b), pk.matmul(a, b))     # the outer mode still serves
    assert inner.served["mm.default"] == 1 and outer.served["mm.default"] == 1
    assert not outer.uncovered and not inner.uncovered


def test_mode_is_per_thread():
    a, b = randn((9, 40), torch.float32, 3), randn((40, 7), torch.float32, 4)
    seen = {}
    with pk.matched_mode() as report:
        t = threading.Thread(target=lambda: seen.setdefault("mm", torch.mm(a, b)))
        t.start()
        t.join()
    assert report.served["mm.default"] == 0
    assert_bitwise(seen["mm"], torch.mm(a, b))


def test_pk_ops_called_directly_count_as_served():
    x, w = randn((8, 16), torch.float32, 1), randn((4, 16), torch.float32, 2)
    with pk.matched_mode(strict=True) as report:
        y = pk.softmax(pk.linear(x, w))
    assert_bitwise(y, pk.softmax(pk.linear(x, w)))
    assert not report.uncovered and sum(report.served.values()) >= 2


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="audit"):
        with pk.matched_mode(audit="yes"):
            pass
    with pytest.raises(TypeError, match="strict"):
        with pk.matched_mode(strict=1):
            pass


# --- served ops and their fallbacks -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bmm_and_addmm(dtype):
    a, b = randn((3, 10, 24), dtype, 1), randn((3, 24, 12), dtype, 2)
    x, w, bias = randn((10, 24), dtype, 3), randn((24, 12), dtype, 4), randn((12,), dtype, 5)
    with pk.matched_mode() as report:
        batched = torch.bmm(a, b)
        conv1d = torch.addmm(bias, x, w)                      # GPT-2's Conv1D
        scaled = torch.addmm(bias, x, w, beta=0.5)            # not served: falls back, recorded
    assert_bitwise(batched, pk.matmul(a, b))
    assert_bitwise(conv1d, pk.linear(x, w.mT, bias))
    assert_bitwise(scaled, torch.addmm(bias, x, w, beta=0.5))
    assert report.served["addmm.default"] == 1
    (rec,) = report.uncovered.values()
    assert rec.op == "addmm.default" and "beta=0.5" in rec.reason and rec.count == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_and_in_place_products_write_the_functional_forms_bits(dtype):
    """mm/bmm/mv/dot/addmm with out=, and addmm_: the functional form's bits, in the caller's tensor."""
    a, b, c = randn((13, 40), dtype, 1), randn((40, 9), dtype, 2), randn((13, 9), dtype, 3)
    a3, b3, v = randn((2, 13, 40), dtype, 4), randn((2, 40, 9), dtype, 5), randn((40,), dtype, 6)
    bias = randn((9,), dtype, 7)
    with pk.matched_mode() as report:
        want = {"mm": torch.mm(a, b), "bmm": torch.bmm(a3, b3), "mv": torch.mv(a, v), "dot": torch.dot(v, v),
                "addmm": torch.addmm(c, a, b), "bias": torch.addmm(bias, a, b), "add": c + torch.mm(a, b)}
        # TRL's fused LM head: a tile of a larger buffer (strided) as out=, then acc.addmm_(...)
        buffer = torch.full((16, 12), 7.0, dtype=dtype)
        tile = buffer[:13, :9]
        assert torch.mm(a, b, out=tile) is tile
        got = {"bmm": torch.bmm(a3, b3, out=torch.empty(0, dtype=dtype)),
               "mv": torch.mv(a, v, out=torch.empty(13, dtype=dtype)),
               "dot": torch.dot(v, v, out=torch.empty((), dtype=dtype)),
               "addmm": torch.addmm(c, a, b, out=torch.empty(13, 9, dtype=dtype)),
               "bias": torch.addmm(bias, a, b, out=torch.empty(0, dtype=dtype))}
        acc = c.clone()
        assert acc.addmm_(a, b) is acc
    assert_bitwise(tile, want["mm"])
    assert bool((buffer[13:] == 7).all()) and bool((buffer[:, 9:] == 7).all())       # nothing written outside
    for name, value in got.items():
        assert_bitwise(value, want[name])
    assert_bitwise(acc, want["addmm"])
    assert_bitwise(want["addmm"], want["add"])          # a full input: add(c, mm(a, b)) bit for bit
    assert_bitwise(want["mm"], pk.matmul(a, b))
    assert not report.uncovered
    for op in ("mm.out", "bmm.out", "mv.out", "dot.out", "addmm.out", "addmm_.default"):
        assert report.served[op] >= 1, op


def test_out_products_that_alias_an_input_or_need_a_resize():
    a, b = randn((8, 8), torch.float32, 1), randn((8, 8), torch.float32, 2)
    with pk.matched_mode() as report:
        want = torch.addmm(a, a, b)
        aliased = a.clone()
        aliased.addmm_(aliased, b)                      # the input is read before it is written
        wrong = torch.empty(3, 3)
        with pytest.warns(UserWarning, match="resized"):
            torch.mm(a, b, out=wrong)                   # torch resizes a non-empty out: left to torch, recorded
        scaled = a.clone().addmm_(a, b, beta=2.0)       # beta != 1: torch, recorded
    assert_bitwise(aliased, want)
    assert wrong.shape == (8, 8)
    torch.testing.assert_close(scaled, torch.addmm(a, a, b, beta=2.0))
    reasons = {r.op: r.reason for r in report.uncovered.values()}
    assert set(reasons) == {"mm.out", "addmm_.default"}, reasons
    assert "out= tensor of shape (3, 3)" in reasons["mm.out"] and "beta=2.0" in reasons["addmm_.default"]


def test_arguments_pk_refuses_go_to_torch():
    a, b = randn((3, 4), torch.float32, 1), randn((4, 5), torch.float16, 2)
    with pk.matched_mode() as report:
        with pytest.raises(RuntimeError, match="same dtype"):      # torch's own error, not pk's TypeError
            torch.mm(a, b)
    (rec,) = report.uncovered.values()
    assert rec.op == "mm.default" and "dtypes differ" in rec.reason


def test_matrix_vector_and_dot_products():
    a, v = randn((11, 37), torch.float32, 1), randn((37,), torch.float32, 2)
    with pk.matched_mode() as report:
        mv, dot = a @ v, torch.dot(v, v)
    assert report.served["mv.default"] == 1 and report.served["dot.default"] == 1
    assert_bitwise(mv, pk.matmul(a, v[:, None])[:, 0])
    assert_bitwise(dot, pk.matmul(v[None], v[:, None]).reshape(()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_last_dim_served_other_dims_fall_back(dtype):
    x = randn((6, 5, 33), dtype, 7, scale=3.0)
    with pk.matched_mode() as report:
        sm = torch.softmax(x, -1)
        lsm = torch.log_softmax(x, dim=2)
        dim0 = torch.softmax(x, 0)
    assert_bitwise(sm, pk.softmax(x))
    assert_bitwise(lsm, pk.log_softmax(x))
    assert_bitwise(dim0, torch.softmax(x, 0))
    assert {r.op for r in report.uncovered.values()} == {"_softmax.default"}
    if dtype != torch.float32:
        # HF attention: softmax(x, dtype=float32) reaches _softmax with half_to_float.
        with pk.matched_mode():
            widened = F.softmax(x, dim=-1, dtype=torch.float32)
        assert_bitwise(widened, pk.softmax(x.float()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_and_sum_are_batch_invariant_and_accurate(dtype):
    x = randn((41, 72), dtype, 11, scale=2.0)
    with pk.matched_mode() as report:
        mean = x.pow(2).mean(-1, keepdim=True)               # HF RMSNorm's statistic
        mean_row = x[17:18].pow(2).mean(-1, keepdim=True)
        col_sum = x.sum(0)
    assert report.served["mean.dim"] == 2 and report.served["sum.dim_IntList"] == 1
    assert_bitwise(mean[17:18], mean_row)
    sq = x.pow(2).double()
    ref_mean, ref_sum = sq.mean(-1, keepdim=True), x.double().sum(0)
    # An fp32 sum of k terms (error <= k u sum|terms|, u = 2^-24), then one rounding to dtype.
    half_eps = torch.finfo(dtype).eps / 2
    assert mean.dtype == dtype and mean.shape == (41, 1)
    assert bool(((mean.double() - ref_mean).abs() <= (72 * 2.0**-24 + half_eps) * ref_mean).all())
    bound = (41 * 2.0**-24) * x.double().abs().sum(0) + half_eps * ref_sum.abs()
    assert bool(((col_sum.double() - ref_sum).abs() <= bound).all())


@pytest.mark.parametrize("op", ["silu", "gelu", "sigmoid", "rsqrt", "exp", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_path_elementwise_is_shape_independent(op, dtype):
    """An element's value does not depend on the tensor it sits in (no scalar-tail bits)."""
    fn = {"silu": F.silu, "gelu": F.gelu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
          "rsqrt": lambda t: torch.rsqrt(t.abs() + 0.5), "exp": torch.exp}[op]
    x = randn((2000,), dtype, 5, scale=3.0)
    with pk.matched_mode() as report:
        whole = fn(x)
        alone = torch.cat([fn(x[i:i + 1]) for i in range(0, 2000, 7)])
    assert_bitwise(whole[::7], alone)
    assert any(k.startswith(op) and "vector path" in k for k in report.served)


def test_vector_path_in_place_and_odd_rows():
    x = randn((5, 200), torch.float32, 9)
    expected = F.silu(x.clone())
    with pk.matched_mode():
        inplace = F.silu(x.clone(), inplace=True)
        row = F.silu(x[3:4])
    assert_bitwise(inplace[3:4], row)
    torch.testing.assert_close(inplace, expected, rtol=2e-7, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_is_batch_invariant(dtype):
    x = randn((9, 70), dtype, 13, scale=2.0)
    dy = randn((9, 70), dtype, 14)
    grads = {}
    for name, fn in (("softmax", lambda t: torch.softmax(t, -1)), ("log_softmax", lambda t: torch.log_softmax(t, -1))):
        for rows in (slice(0, 9), slice(4, 5)):
            xr = x[rows].clone().requires_grad_(True)
            with pk.matched_mode() as report:
                fn(xr).backward(dy[rows])
            assert not report.uncovered
            grads[name, rows.start] = xr.grad
        assert_bitwise(grads[name, 0][4:5], grads[name, 4])
        xt = x.clone().requires_grad_(True)
        fn(xt).backward(dy)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(grads[name, 0].float(), xt.grad.float(), rtol=tol, atol=tol)


def test_fused_rms_norm_and_layer_norm():
    x, w, b = randn((6, 48), torch.float32, 1), randn((48,), torch.float32, 2), randn((48,), torch.float32, 3)
    if hasattr(torch.ops.aten, "_fused_rms_norm"):
        with pk.matched_mode(audit=True) as report:
            torch.ops.aten._fused_rms_norm(x, [48], w, 1e-6)
        # A device kernel (CUDA) is served whole; on CPU the op decomposes into pow/mean/rsqrt first.
        assert report.served["_fused_rms_norm.default"] == 1 or report.served["mean.dim"] == 1
        assert not report.uncovered
        out, rstd = HANDLERS["aten._fused_rms_norm.default"](x, [48], w, 1e-6)     # the handler itself
        assert_bitwise(out, pk.rms_norm(x, w, 1e-6))
        torch.testing.assert_close(rstd, torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    with pk.matched_mode(audit=True) as report:
        ln = F.layer_norm(x, (48,), w, b, 1e-5)
    if hasattr(pk, "layer_norm"):
        assert_bitwise(ln, pk.layer_norm(x, w, b, 1e-5))
        assert not report.uncovered
        # The saved statistics come back in torch's shapes and dtypes (16-bit x, with 16-bit or fp32 weights).
        for xd, wd in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)):
            args = (x.to(xd), [48], w.to(wd), b.to(wd), 1e-5)
            with pk.matched_mode() as report:
                ours = torch.ops.aten.native_layer_norm(*args)
            assert report.served["native_layer_norm.default"] == 1
            theirs = torch.ops.aten.native_layer_norm(*args)
            assert [(t.dtype, t.shape) for t in ours] == [(t.dtype, t.shape) for t in theirs]
    else:
        assert_bitwise(ln, F.layer_norm(x, (48,), w, b, 1e-5))
        assert uncovered_ops(report) == {"native_layer_norm.default"}


def test_a_norms_eps_pk_refuses_runs_on_torch_and_is_reported():
    """torch takes an eps of 1e39 (inf in float32) or below 0; pk refuses it: inside the mode it runs on torch."""
    x, w = randn((4, 16), torch.float32, 1), randn((16,), torch.float32, 2)
    for eps in (1e39, -1.0):
        want = torch.ops.aten.native_layer_norm(x, [16], w, None, eps)
        with pk.matched_mode(audit=True) as report:
            got = torch.ops.aten.native_layer_norm(x, [16], w, None, eps)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, equal_nan=True)
        (rec,) = report.uncovered.values()
        assert rec.op == "native_layer_norm.default" and "fell back to torch: eps must be" in rec.reason
        with pk.matched_mode(strict=True), pytest.raises(UncoveredOpError, match="eps must be"):
            torch.ops.aten.native_layer_norm(x, [16], w, None, eps)
    if hasattr(torch.ops.aten, "_fused_rms_norm"):
        with pytest.raises(mode.Decline, match="eps must be finite in float32"):
            HANDLERS["aten._fused_rms_norm.default"](x, [16], w, 1e39)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_backward_is_batch_invariant(dtype):
    x, dy = randn((9, 70), dtype, 21, scale=2.0), randn((9, 70), dtype, 22)
    w, b = randn((70,), dtype, 23), randn((70,), dtype, 24)
    grads = {}
    for rows in (slice(0, 9), slice(4, 5)):
        leaves = [x[rows].clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)]
        with pk.matched_mode() as report:
            F.layer_norm(leaves[0], (70,), leaves[1], leaves[2], 1e-5).backward(dy[rows])
        assert report.served["native_layer_norm_backward.default"] == 1
        grads[rows.start] = [t.grad for t in leaves]
    assert_bitwise(grads[0][0][4:5], grads[4][0])
    leaves = [x.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    F.layer_norm(leaves[0], (70,), leaves[1], leaves[2], 1e-5).backward(dy)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for ours, theirs in zip(grads[0], (t.grad for t in leaves)):
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=tol, atol=tol)


# --- the backward handlers run pk's backward ops ---------------------------------------------


def _grads(fn, *leaves, dy):
    """Gradients of ``(fn(*leaves) * dy).sum()`` with respect to fresh copies of the leaves."""
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    fn(*leaves).backward(dy)
    return [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_is_pk_softmax_autograd(dtype):
    """The gradient of a served softmax is pk.softmax's own autograd gradient, bit for bit."""
    x, dy = randn((7, 3, 45), dtype, 31, scale=3.0), randn((7, 3, 45), dtype, 32)
    with pk.matched_mode() as report:
        (ours,) = _grads(lambda t: torch.softmax(t, -1), x, dy=dy)
    assert report.served["_softmax_backward_data.default"] == 1 and not report.uncovered
    (theirs,) = _grads(lambda t: pk.softmax(t, -1), x, dy=dy)
    assert_bitwise(ours, theirs)
    if dtype != torch.float32:
        # An fp32 softmax of 16-bit input (HF attention: softmax(x, dtype=float32)), as a widening copy and
        # softmax, or as aten's half_to_float, where the kernel widens x itself and rounds dx once to its dtype.
        dy32 = dy.float()
        (theirs,) = _grads(lambda t: pk.softmax(t.float(), -1), x, dy=dy32)
        for widened in (lambda t: F.softmax(t, dim=-1, dtype=torch.float32),
                        lambda t: torch.ops.aten._softmax(t, -1, True)):
            with pk.matched_mode() as report:
                (ours,) = _grads(widened, x, dy=dy32)
            assert report.served["_softmax_backward_data.default"] == 1 and not report.uncovered
            assert_bitwise(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_backward_is_dy_minus_exp_y_times_rowsum(dtype):
    """dx = dy - exp(y) * rowsum(dy) from the output y, as aten defines it: checked in FP64 from the same y."""
    x, dy = randn((9, 70), dtype, 33, scale=3.0), randn((9, 70), dtype, 34)
    xr = x.clone().requires_grad_(True)
    with pk.matched_mode() as report:
        y = torch.log_softmax(xr, -1)
        y.backward(dy)
    assert report.served["_log_softmax_backward_data.default"] == 1 and not report.uncovered
    y64, dy64 = y.detach().double(), dy.double()
    want = dy64 - y64.exp() * dy64.sum(-1, keepdim=True)
    # fp32 work (a few roundings of terms up to |dy| + exp(y) * rowsum|dy|), then one rounding to dtype.
    scale = dy64.abs() + y64.exp() * dy64.abs().sum(-1, keepdim=True)
    bound = 8 * 2.0**-24 * scale + torch.finfo(dtype).eps / 2 * want.abs()
    assert bool(((xr.grad.double() - want).abs() <= bound).all())
    (theirs,) = _grads(lambda t: torch.log_softmax(t, -1), x, dy=dy)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(xr.grad.float(), theirs.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("xd, wd", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                    (torch.bfloat16, torch.float32), (torch.float16, torch.float16),
                                    (torch.bfloat16, torch.bfloat16)])
def test_layer_norm_backward_is_pk_layer_norm_backward(xd, wd):
    """Where torch keeps the statistics in fp32 (fp32 x, or an fp32 weight), x, weight and bias gradients
    are pk.layer_norm's autograd gradients bit for bit; with 16-bit statistics (CPU, 16-bit weight) they are
    pk's backward kernel on those statistics, and checked against FP64."""
    x, dy = randn((11, 5, 40), xd, 41, scale=2.0), randn((11, 5, 40), xd, 42)
    w, b = randn((40,), wd, 43), randn((40,), wd, 44)
    with pk.matched_mode() as report:
        ours = _grads(lambda t, w_, b_: F.layer_norm(t, (40,), w_, b_, 1e-5), x, w, b, dy=dy)
    assert report.served["native_layer_norm_backward.default"] == 1 and not report.uncovered
    theirs = _grads(lambda t, w_, b_: pk.layer_norm(t, w_, b_, 1e-5), x, w, b, dy=dy)
    if xd == torch.float32 or wd == torch.float32 or DEVICE.type != "cpu":
        for a, e in zip(ours, theirs):
            assert_bitwise(a, e)
    oracle = _grads(lambda t, w_, b_: F.layer_norm(t, (40,), w_, b_, 1e-5), x.double(), w.double(), b.double(),
                    dy=dy.double())
    plain = _grads(lambda t, w_, b_: F.layer_norm(t, (40,), w_, b_, 1e-5), x, w, b, dy=dy)
    for a, t, o in zip(ours, plain, oracle):
        err, torch_err = (a.double() - o).norm() / o.norm(), (t.double() - o).norm() / o.norm()
        assert err <= 1.5 * torch_err + 2.0**-22, (err, torch_err)


def test_softmax_backward_without_a_pk_forward_falls_back_and_says_why():
    x, dy = randn((6, 30), torch.float32, 51), randn((6, 30), torch.float32, 52)
    xr = x.clone().requires_grad_(True)
    y = torch.softmax(xr, -1)                              # outside the mode: nothing kept for the backward
    with pk.matched_mode() as report:
        y.backward(dy)
    (rec,) = report.uncovered.values()
    assert rec.op == "_softmax_backward_data.default" and "did not run on pk" in rec.reason
    (theirs,) = _grads(lambda t: torch.softmax(t, -1), x, dy=dy)
    assert_bitwise(xr.grad, theirs)


def test_softmax_input_modified_in_place_falls_back():
    x, dy = randn((6, 30), torch.float32, 53), randn((6, 30), torch.float32, 54)
    xr = x.clone().requires_grad_(True)
    with pk.matched_mode() as report:
        scores = xr * 1.0
        y = torch.softmax(scores, -1)
        scores.mul_(2.0)                                   # autograd does not mind: softmax saved only y
        y.backward(dy)
    (rec,) = report.uncovered.values()
    assert "modified in place" in rec.reason
    (theirs,) = _grads(lambda t: torch.softmax(t, -1), x, dy=dy)
    torch.testing.assert_close(xr.grad, theirs, rtol=1e-5, atol=1e-6)


def test_softmax_state_lives_as_long_as_the_output():
    """A served softmax's kept input goes when its output's storage does (freed with the graph, or dropped)."""
    # The Triton interpreter's launcher leaves reference cycles that hold its argument buffers until gc runs.
    x, dy = randn((6, 30), torch.float32, 55), randn((6, 30), torch.float32, 56)
    gc.collect()
    assert not handlers._SOFTMAX_SAVED
    with pk.matched_mode():
        y = torch.softmax(x.clone().requires_grad_(True), -1)
        assert len(handlers._SOFTMAX_SAVED) == 1
        y.backward(dy)
        assert len(handlers._SOFTMAX_SAVED) == 1            # y still holds its storage
        del y
    gc.collect()
    assert not handlers._SOFTMAX_SAVED                      # freed with the graph
    with pk.matched_mode():
        y = torch.softmax(x.clone().requires_grad_(True), -1)
    del y                                                   # a graph dropped without a backward
    gc.collect()
    assert not handlers._SOFTMAX_SAVED
    leaf = x.clone().requires_grad_(True)
    with torch.no_grad(), pk.matched_mode():
        torch.softmax(leaf * 2.0, -1)                       # no grad (generate): nothing kept
        assert not handlers._SOFTMAX_SAVED


def test_sdpa_state_lives_as_long_as_the_output():
    """The SDPA forward's kept lse uses the same memo as the softmax's: gone with the output's storage."""
    from precision_kernels.matched import attention

    q, k, v = (randn((1, 2, 5, 8), torch.float32, s) for s in (60, 61, 62))
    leaf = q.clone().requires_grad_(True)
    gc.collect()
    assert not attention._SERVED_FORWARDS
    with pk.matched_mode():
        out = F.scaled_dot_product_attention(leaf, k, v, is_causal=True)
        assert len(attention._SERVED_FORWARDS) == 1
        out.sum().backward()
        del out
    gc.collect()
    assert not attention._SERVED_FORWARDS
    with torch.no_grad(), pk.matched_mode():
        F.scaled_dot_product_attention(leaf * 1.0, k, v, is_causal=True)   # no grad (generate): nothing kept
        assert not attention._SERVED_FORWARDS


# --- the served table comes from the op registry ---------------------------------------------


def test_every_handler_is_claimed_by_exactly_one_family():
    claims = [(name, family.name) for family in all_families().values() for name in family.aten]
    claimed = [name for name, _ in claims]
    assert sorted(set(HANDLERS)) == sorted(claimed), "HANDLERS and the families' aten names differ"
    twice = {name for name in claimed if claimed.count(name) > 1}
    assert not twice, f"claimed by more than one family: {[c for c in claims if c[0] in twice]}"
    assert {str(op) for op in mode.SERVED} == set(HANDLERS)
    assert all(mode.SERVED[op] is HANDLERS[str(op)] for op in mode.SERVED)


# --- audit and strict -------------------------------------------------------------------------


def test_audit_reports_float_reductions_and_lists_sampling_apart():
    x = randn((4, 30), torch.float32, 1)
    with pk.matched_mode(audit=True) as report:
        y = torch.cumsum(x, -1)
        torch.cumsum(x, 0)
        torch.var(x, -1)
        torch.pow(x, 3, out=torch.empty_like(x))              # out= escapes the vector path: reported
        ids = torch.multinomial(torch.softmax(x, -1), 1)
        # exact ops HF's generate uses on integer/bool tensors, and exact selections: allowed
        torch.cumsum(ids, 0), (ids > 3).any(), (ids > 3).sum(), x.max(-1), torch.topk(x, 3)
        (x * 2.0 + 1.0).to(torch.float16)[:, 1:].reshape(-1)
    assert_bitwise(y, torch.cumsum(x, -1))                   # falls back to torch
    rec = report.uncovered[("cumsum.default", "torch.float32", "float reduction not served by pk")]
    assert (rec.count, rec.dtype, rec.example_shape) == (2, "float32", (4, 30))
    assert uncovered_ops(report) == {"cumsum.default", "var.correction", "pow.Tensor_Scalar_out"}
    assert {r.op for r in report.sampling.values()} == {"multinomial.default"}
    assert "cumsum.default" in report.summary()


def test_strict_refuses_float_cumsum_and_names_it():
    x = randn((4, 30), torch.float32, 1)
    with pk.matched_mode(strict=True):
        torch.cumsum(torch.arange(5, device=DEVICE), 0)          # integer: exact, allowed
        torch.mm(x, x.mT)
        with pytest.raises(UncoveredOpError, match="cumsum"):
            torch.cumsum(x, -1)


def test_strict_serves_sdpa_and_refuses_a_sliding_window_mask():
    q = randn((1, 2, 5, 8), torch.float32, 1)
    with pk.matched_mode(strict=True) as report:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert report.served["_scaled_dot_product_flash_attention_for_cpu.default"] == 1
    t = torch.arange(5)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - 2)
    with pk.matched_mode(strict=True):
        with pytest.raises(UncoveredOpError, match="sliding window"):
            F.scaled_dot_product_attention(q, q, q, attn_mask=band)
