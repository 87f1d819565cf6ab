"""pk.quantize_fp8 and pk.scaled_mm: exact semantics, invariants I1-I3 and I6, torch._scaled_mm, custom ops, bad input.

Values are drawn on the CPU and moved, so every backend sees the same numbers. Expected values
come from independent computations: Python/numpy float arithmetic and the exact fp8 oracle
(tests/rne_oracle.py), the FP64 product of the dequantised operands, and torch's own op.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rne_oracle import fp8_bits, fp8_value

import precision_kernels as pk
from precision_kernels import backend, numerics, profiles
from precision_kernels.ops._custom import fp32_value

DEV = backend.device()
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
FMT = {E4M3: "e4m3fn", E5M2: "e5m2"}
MAX = {E4M3: 448.0, E5M2: 57344.0}
INT_VIEW = {F32: torch.int32, F16: torch.int16, BF16: torch.int16}


def rand(*shape, seed=0, scale=1.0, dtype=F32):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype).to(DEV)


def fp8(*shape, dtype=E4M3, seed=0, scale=1.0):
    """Random fp8 values (every pattern a rounded normal draw), on the backend's device."""
    return pk.round_to(rand(*shape, seed=seed, scale=scale), dtype)


def bits(t):
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(INT_VIEW[t.dtype])


def assert_bitwise(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{int(diff.sum())} of {diff.numel()} elements differ, first at {diff.nonzero()[0].tolist()}"


def row_scales(m, n, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(m, 1, generator=g) + 0.5).to(DEV), (torch.rand(1, n, generator=g) * 1e-2 + 1e-3).to(DEV)


# ---- quantize_fp8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=["e4m3fn", "e5m2"])
@pytest.mark.parametrize("axis", [None, -1])
def test_quantize_matches_definition(dtype, axis):
    x = rand(5, 33, seed=1, scale=3.0)
    x[2] = 0.0                                     # an all-zero row
    x[3] = 0.0
    x[3, 4] = -1e-3                                # a row whose amax is small
    values, scales = pk.quantize_fp8(x, dtype, axis=axis)
    assert values.dtype == dtype and values.shape == x.shape
    assert scales.dtype == F32 and scales.shape == ((5, 1) if axis == -1 else ())
    rows = x.cpu().tolist()
    groups = [[v for row in rows for v in row]] if axis is None else rows
    want_scales = []
    for group in groups:
        amax = max(abs(v) for v in group)
        # amax / max in double, rounded once to fp32 (exact: double has more than 2 * 24 + 2 bits)
        want_scales.append(fp32_value(amax / MAX[dtype]) if amax else 1.0)
    got_scales = scales.reshape(-1).cpu().tolist()
    assert got_scales == want_scales
    per_elem = [want_scales[0] if axis is None else want_scales[i] for i in range(5)]
    want = [[fp8_bits(fp32_value(v / per_elem[i]), FMT[dtype], saturate=True) for v in row]
            for i, row in enumerate(rows)]
    assert bits(values).cpu().tolist() == want
    assert bits(values[2]).cpu().tolist() == [0] * 33 and (axis is None or got_scales[2] == 1.0)


def test_quantize_saturates_and_reaches_max():
    # the largest |x| of a row becomes +-max_finite exactly; x / scale past max (scale rounded) saturates
    x = torch.tensor([[3.0, -7.0, 1.0], [0.1, 0.2, -0.3]], device=DEV)
    for dtype in (E4M3, E5M2):
        values, scales = pk.quantize_fp8(x, dtype, axis=-1)
        deq = values.float() * scales
        assert deq.abs().amax(dim=-1).tolist() == pytest.approx(x.abs().amax(dim=-1).tolist(), rel=2**-20)
        assert (values.float().abs().amax(dim=-1) == MAX[dtype]).all()


def test_quantize_divides_by_the_scale():
    """values = round(x / scale): with scale 7, x / scale is an exact fp8 tie that goes to the even value
    below, where x * fp32(1/7) lands one fp32 ulp above the tie and would round up."""
    x = torch.tensor([[7 * 448.0, 7 * 1.5625], [7 * 57344.0, 7 * 1.625]], device=DEV)
    v4, s4 = pk.quantize_fp8(x[:1], E4M3, axis=-1)
    v5, s5 = pk.quantize_fp8(x[1:], E5M2, axis=-1)
    assert s4.item() == 7.0 and s5.item() == 7.0
    assert v4.float().tolist() == [[448.0, 1.5]] and v5.float().tolist() == [[57344.0, 1.5]]
    recip = np.float32(1) / np.float32(7)
    assert np.float32(7 * 1.5625) * recip > 1.5625 and np.float32(7 * 1.625) * recip > 1.625


def test_quantize_per_row_is_batch_invariant_and_3d():
    x = rand(2, 6, 20, seed=3)
    values, scales = pk.quantize_fp8(x, E4M3, axis=-1)
    assert scales.shape == (2, 6, 1)
    alone_v, alone_s = pk.quantize_fp8(x[1, 4:5], E4M3, axis=-1)
    assert_bitwise(alone_v, values[1, 4:5])
    assert_bitwise(alone_s, scales[1, 4:5])


def test_quantize_non_finite_and_empty():
    x = torch.tensor([[1.0, float("nan"), 2.0], [1.0, float("inf"), 2.0]], device=DEV)
    values, scales = pk.quantize_fp8(x, E4M3, axis=-1)
    assert torch.isnan(scales[0]).all() and torch.isinf(scales[1]).all()
    # NaN, whatever sign the platform's division gives (x86's inf / inf is -NaN, CUDA's +NaN)
    assert [v & 0x7F for v in bits(values[0]).tolist()] == [0x7F] * 3
    assert [v & 0x7F for v in bits(values[1]).tolist()] == [0, 0x7F, 0]
    v, s = pk.quantize_fp8(torch.empty(0, 4, device=DEV), E5M2, axis=-1)
    assert v.shape == (0, 4) and s.shape == (0, 1)
    v, s = pk.quantize_fp8(torch.empty(3, 0, device=DEV), E5M2)
    assert v.shape == (3, 0) and s.tolist() == 1.0


# ---- scaled_mm: exact semantics ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=["e4m3fn", "e5m2"])
def test_widening_is_exact_for_every_pattern(dtype):
    """Each fp8 pattern times 1.0 with fp32 output is its value: the kernel's integer widening is exact.
    (-0 comes out +0: the accumulator starts at +0, as pk.matmul's does.)"""
    a = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).reshape(256, 1).to(DEV)
    one = pk.round_to(torch.ones(1, 1, device=DEV), dtype)
    s = torch.ones((), device=DEV)
    out = pk.scaled_mm(a, one, s, s, out_dtype=F32).reshape(-1).cpu().tolist()
    want = [fp8_value(p, FMT[dtype]) + 0.0 for p in range(256)]     # + 0.0: -0 -> +0
    for p, (got, exp) in enumerate(zip(out, want)):
        assert (got == exp and np.signbit(got) == np.signbit(exp)) or (np.isnan(got) and np.isnan(exp)), hex(p)


def test_scale_order_and_bias_in_fp32():
    """K = 1 makes the accumulator exact; then t = (acc * scale_a) * scale_b + bias, each step rounded to fp32."""
    m, n = 24, 40
    a, b = fp8(m, 1, seed=1), fp8(1, n, dtype=E5M2, seed=2)
    g = torch.Generator().manual_seed(9)
    sa = (torch.rand(m, 1, generator=g) * 3 + 0.1).to(DEV)
    sb = (torch.rand(1, n, generator=g) * 3 + 0.1).to(DEV)
    bias = torch.randn(n, generator=g).to(DEV)
    got = pk.scaled_mm(a, b, sa, sb, bias=bias, out_dtype=F32).cpu().numpy()
    acc = a.float().cpu().numpy() * b.float().cpu().numpy()          # exact products of fp8 values
    f32 = np.float32
    want = (acc.astype(f32) * sa.cpu().numpy().astype(f32)) * sb.cpu().numpy().astype(f32)
    want = want + bias.cpu().numpy().astype(f32)[None, :]
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    other_order = acc.astype(f32) * (sa.cpu().numpy() * sb.cpu().numpy()).astype(f32) + bias.cpu().numpy()[None, :]
    assert not np.array_equal(got, other_order.astype(f32))      # the test can tell the orders apart


@pytest.mark.skipif(not backend.INTERPRETED, reason="the interpreter's K-ordered sums; tensor cores sum otherwise")
@pytest.mark.parametrize("fa,fb", [(E4M3, E4M3), (E5M2, E4M3)], ids=["e4m3fn", "e5m2xe4m3fn"])
def test_unit_scales_equal_the_bf16_matmul_of_the_widened_operands(fa, fb):
    """Same K order, same fp32 accumulation as pk.matmul: with unit scales, the bits of pk.matmul on
    the (exactly) widened operands."""
    a, b = fp8(7, 70, dtype=fa, seed=1), fp8(70, 9, dtype=fb, seed=2)
    one = torch.ones((), device=DEV)
    assert_bitwise(pk.scaled_mm(a, b, one, one), pk.matmul(a.to(BF16), b.to(BF16)))
    assert_bitwise(pk.scaled_mm(a, b, one, one, out_dtype=F32), pk.matmul(a.float(), b.float()))


def _ref64(a, b, sa, sb, bias=None):
    out = (a.double().cpu() @ b.double().cpu()) * sa.double().cpu() * sb.double().cpu()
    return out if bias is None else out + bias.double().cpu()


@pytest.mark.parametrize("out_dtype", [BF16, F16, F32], ids=["bf16", "fp16", "fp32"])
def test_accurate_against_fp64_of_dequantised_operands(out_dtype):
    x, w = rand(48, 200, seed=1), rand(40, 200, seed=2)
    xq, sx = pk.quantize_fp8(x, E4M3, axis=-1)
    wq, sw = pk.quantize_fp8(w, E5M2, axis=-1)
    bias = rand(40, seed=3, dtype=BF16)
    out = pk.scaled_mm(xq, wq.t(), sx, sw.t(), bias=bias, out_dtype=out_dtype)
    ref = _ref64(xq, wq.t(), sx, sw.t(), bias)
    if out_dtype == F32:
        bound = 2e-6 * _ref64(xq.float().abs().to(E4M3), wq.t().float().abs().to(E5M2), sx, sw.t())
        err = (out.double().cpu() - ref).abs()
        assert (err <= bound).all()
    else:
        summary = numerics.error_summary(out, ref)
        assert summary["frac_correctly_rounded"] >= 0.99 and summary["max_ulp"] <= 1, summary


@pytest.mark.parametrize("rowwise", [False, True], ids=["tensorwise", "rowwise"])
@pytest.mark.parametrize("out_dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_close_to_torch_scaled_mm(rowwise, out_dtype):
    """torch._scaled_mm (here on the CPU) sums in another order: at most 1 ulp apart, nearly all equal.
    (Its fp32 output on the CPU is much less accurate than ours, so only 16-bit outputs are compared.)"""
    a, bt = fp8(32, 96, seed=1), fp8(48, 96, seed=2)
    b = bt.t()                                                     # column-major, as torch's CUDA op requires
    if rowwise:
        sa, sb = row_scales(32, 48)
    else:
        sa, sb = torch.tensor(0.75, device=DEV), torch.tensor(0.01, device=DEV)
    bias = rand(48, seed=4, dtype=out_dtype)
    ours = pk.scaled_mm(a, b, sa, sb, bias=bias, out_dtype=out_dtype)
    theirs = torch._scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias=bias.cpu(), out_dtype=out_dtype)
    ulps = numerics.ulp_distance(ours.cpu(), theirs)
    assert ulps.max() <= 1 and (ulps == 0).double().mean() >= 0.99


def test_any_layout_and_fp8_mix():
    a, b = fp8(10, 40, seed=1), fp8(40, 12, dtype=E5M2, seed=2)
    sa, sb = row_scales(10, 12)
    want = pk.scaled_mm(a, b, sa, sb)
    assert_bitwise(pk.scaled_mm(a.t().contiguous().t(), b.t().contiguous().t(), sa, sb), want)
    e5 = fp8(10, 40, dtype=E5M2, seed=1)
    ref = _ref64(e5, b, sa, sb)
    summary = numerics.error_summary(pk.scaled_mm(e5, b, sa, sb), ref)
    assert summary["frac_correctly_rounded"] >= 0.99, summary
    assert pk.scaled_mm(a[:0], b, sa[:0], sb).shape == (0, 12)


# ---- invariants ------------------------------------------------------------------------------------


# Tile tables: the active backend's, and the CUDA table's (run under the interpreter at small shapes).
TABLES = [profiles.table_backend(), "cuda"]


@pytest.mark.parametrize("table", TABLES)
@settings(max_examples=10)     # three launches per example; the make-test budget
@given(data=st.data())
def test_row_alone_equals_row_in_batch(table, data):
    """I1/I2 with row-wise scales: a row's bits do not depend on the batch size, its position or the others."""
    k, n = data.draw(st.sampled_from([(1, 3), (31, 17), (70, 9)]))
    m = data.draw(st.integers(2, 40))
    row = data.draw(st.integers(0, m - 1))
    a, b = fp8(m, k, seed=data.draw(st.integers(0, 99))), fp8(n, k, dtype=E5M2, seed=7).t()
    sa, sb = row_scales(m, n)
    with profiles.config_backend(table):
        batch = pk.scaled_mm(a, b, sa, sb)
        assert_bitwise(pk.scaled_mm(a, b, sa, sb), batch)
        alone = pk.scaled_mm(a[row:row + 1], b, sa[row:row + 1], sb)
    assert_bitwise(alone, batch[row:row + 1])


@pytest.mark.parametrize("table", TABLES)
def test_zero_padding_of_k_changes_nothing(table):
    """I3: zero columns of A against finite rows of B (any values) leave every bit unchanged."""
    a, b = fp8(9, 40, seed=1), fp8(40, 11, dtype=E5M2, seed=2)
    sa, sb = row_scales(9, 11)
    pad_a = torch.cat([a.float(), torch.zeros(9, 30, device=DEV)], dim=1).to(E4M3)
    pad_b = torch.cat([b, fp8(30, 11, dtype=E5M2, seed=3, scale=1e3)], dim=0)
    with profiles.config_backend(table):
        assert_bitwise(pk.scaled_mm(pad_a, pad_b, sa, sb), pk.scaled_mm(a, b, sa, sb))


@pytest.mark.skipif(DEV.type != "cpu", reason="benchmarks/precision_error runs on CPU tensors")
def test_precision_error_row_is_a_rowwise_e4m3_linear():
    """The scaled_mm precision_error row: pk and torch._scaled_mm on the same per-row e4m3fn operands (shape
    (rows, d) x (d, 4d), output in the input dtype), measured against the FP64 product of the dequantised ones."""
    from benchmarks.precision_error import ErrorSizes, error_cases

    (case,) = [c for c in error_cases(ErrorSizes(rows=8, width=16, vocab=16, d=64)) if c.kernel == "scaled_mm e4m3"]
    x, w = (t.to(BF16) for t in case.build(lambda shape, s, g: s * torch.randn(shape, generator=g), 1.0,
                                           torch.Generator().manual_seed(0)))
    ours, theirs, ref = case.pk_op(x, w), case.torch_op(x, w), case.oracle(x, w)
    assert ours.dtype == theirs.dtype == BF16 and ours.shape == theirs.shape == ref.shape == (8, 256)
    xq, sx = pk.quantize_fp8(x, E4M3, axis=-1)
    wq, sw = pk.quantize_fp8(w, E4M3, axis=-1)
    assert torch.equal(ref, _ref64(xq, wq.t(), sx, sw.t()))
    summary = numerics.error_summary(ours, ref)
    assert summary["frac_correctly_rounded"] >= 0.99 and summary["max_ulp"] <= 1, summary
    assert numerics.ulp_distance(ours, theirs).max() <= 1


# ---- custom ops ------------------------------------------------------------------------------------


def test_opcheck():
    a, b = fp8(3, 20, seed=1).view(torch.uint8), fp8(5, 20, dtype=E5M2, seed=2).t().view(torch.uint8)
    sa, sb = row_scales(3, 5)
    one = torch.ones((), device=DEV)
    torch.library.opcheck(torch.ops.pk.scaled_mm, (a, E4M3, b, E5M2, sa, sb, None, BF16))
    torch.library.opcheck(torch.ops.pk.scaled_mm, (a, E4M3, b, E5M2, one, one, rand(5, seed=3), F32))
    torch.library.opcheck(torch.ops.pk.quantize_fp8, (rand(3, 4), E4M3, True))
    torch.library.opcheck(torch.ops.pk.quantize_fp8, (rand(3, 4, dtype=BF16), E5M2, False))


# ---- bad input -----------------------------------------------------------------------------------


def _fp8_refusals():
    """Every tensor argument but scaled_mm's a, b and fp8_linear's weight_fp8 refuses fp8 (DESIGN.md section 9)."""
    x8, w8 = fp8(3, 4), fp8(5, 4, seed=1)
    x, w = rand(3, 4), rand(5, 4, seed=1)
    ids = torch.tensor([0, 1, 2], device=DEV)
    return [
        ("matmul a", lambda: pk.matmul(x8, w.t()), "a is torch.float8_e4m3fn"),
        ("matmul b", lambda: pk.matmul(x, w8.t()), "b is torch.float8_e4m3fn"),
        ("linear x", lambda: pk.linear(x8, w), "x is torch.float8_e4m3fn"),
        ("linear weight", lambda: pk.linear(x, w8), "weight is torch.float8_e4m3fn"),
        ("softmax", lambda: pk.softmax(x8.to(E5M2)), "x is torch.float8_e5m2"),
        ("log_softmax", lambda: pk.log_softmax(x8), "x is torch.float8_e4m3fn"),
        ("rms_norm", lambda: pk.rms_norm(x8, torch.ones(4, device=DEV)), "x is torch.float8_e4m3fn"),
        ("layer_norm", lambda: pk.layer_norm(x8, None, None), "x is torch.float8_e4m3fn"),
        ("token_logprobs", lambda: pk.token_logprobs(x8, ids), "logits is torch.float8_e4m3fn"),
        ("linear_logprobs", lambda: pk.linear_logprobs(x, w8, ids), "weight is torch.float8_e4m3fn"),
        ("linear_sample", lambda: pk.linear_sample(x8, w), "hidden is torch.float8_e4m3fn"),
        ("attention", lambda: pk.attention(*[x8.reshape(1, 1, 3, 4)] * 3), "q is torch.float8_e4m3fn"),
        ("scaled_mm bias", lambda: pk.scaled_mm(x8, w8.t(), torch.ones(()), torch.ones(()), bias=rand(5).to(E4M3)),
         "bias is torch.float8_e4m3fn"),
        ("quantize_fp8 x", lambda: pk.quantize_fp8(x8, E4M3), "x is torch.float8_e4m3fn"),
        ("fp8_linear x", lambda: pk.fp8_linear(x8, w), "x is torch.float8_e4m3fn"),
    ]


@pytest.mark.parametrize("case", range(len(_fp8_refusals())), ids=[c[0] for c in _fp8_refusals()])
def test_other_ops_refuse_fp8(case):
    _, call, match = _fp8_refusals()[case]
    refusal = r"taken only by pk.scaled_mm \(a, b\) and pk.fp8_linear's weight_fp8"
    with pytest.raises(TypeError, match=f"{match}.*{refusal}"):
        call()


def _bad_calls():
    a, b = fp8(3, 4), fp8(4, 5, seed=1)
    one = torch.ones((), device=DEV)
    ops = torch.ops.pk
    return [
        ("a float", lambda: pk.scaled_mm(a.float(), b, one, one), TypeError, "a must be float8"),
        ("b None", lambda: pk.scaled_mm(a, None, one, one), TypeError, "b must be a torch.Tensor"),
        ("scale dtype", lambda: pk.scaled_mm(a, b, one.half(), one), TypeError, "scale_a must be float32"),
        ("scale shape", lambda: pk.scaled_mm(a, b, torch.ones(3, 1), one), ValueError, "scale_a and scale_b"),
        ("scale transposed", lambda: pk.scaled_mm(a, b, torch.ones(1, 3), torch.ones(5, 1)), ValueError,
         "row-wise"),
        ("rank", lambda: pk.scaled_mm(a[0], b, one, one), ValueError, "a must have shape"),
        ("inner", lambda: pk.scaled_mm(a, b[:3], one, one), ValueError, "inner dimensions"),
        ("out_dtype fp8", lambda: pk.scaled_mm(a, b, one, one, out_dtype=E4M3), TypeError, "out_dtype"),
        ("bias shape", lambda: pk.scaled_mm(a, b, one, one, bias=torch.ones(4)), ValueError, "bias must have shape"),
        ("device", lambda: pk.scaled_mm(a, b, one, torch.ones((), device="meta")), ValueError, "scale_b is on meta"),
        ("pk::scaled_mm inner", lambda: ops.scaled_mm(a.view(torch.uint8), E4M3, a.view(torch.uint8), E4M3, one, one,
                                                       None, BF16), ValueError, "pk::scaled_mm"),
        ("pk::scaled_mm fp8", lambda: ops.scaled_mm(a, E4M3, b, E4M3, one, one, None, BF16), ValueError,
         "pk::scaled_mm: a and b must be uint8"),
        ("pk::scaled_mm dtype", lambda: ops.scaled_mm(a.view(torch.uint8), BF16, b.view(torch.uint8), E4M3, one, one,
                                                       None, BF16), ValueError, "pk::scaled_mm: a_dtype"),
        ("quantize dtype", lambda: pk.quantize_fp8(rand(3, 4), BF16), TypeError, "dtype must be"),
        ("quantize fp8 x", lambda: pk.quantize_fp8(a, E4M3), TypeError, "x is torch.float8_e4m3fn"),
        ("quantize axis", lambda: pk.quantize_fp8(rand(3, 4), E4M3, axis=0), ValueError, "axis must be"),
        ("quantize axis type", lambda: pk.quantize_fp8(rand(3, 4), E4M3, axis=True), TypeError, "axis must be"),
        ("quantize int", lambda: pk.quantize_fp8(torch.ones(3, dtype=torch.int32), E4M3), TypeError,
         "x must be float32"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())), ids=[c[0] for c in _bad_calls()])
def test_bad_input(case):
    _, call, error, match = _bad_calls()[case]
    with pytest.raises(error, match=match):
        call()


def test_no_autograd():
    a, b = fp8(3, 4), fp8(4, 5, seed=1)
    sa = torch.ones((), device=DEV, requires_grad=True)
    out = pk.scaled_mm(a, b, sa, torch.ones((), device=DEV))
    with pytest.raises(RuntimeError):
        out.float().sum().backward()
