"""pk.softmax / pk.log_softmax: accuracy vs FP64, invariants I1-I3, masking, dim handling, backward, errors.

The small helpers at the top, and ``check_batch_invariance`` with its ``batches`` strategy, are shared with
test_norm.py, test_layer_norm.py and test_token_logprobs.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import numerics, profiles, reference

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIGNIFICAND = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
MIN_NORMAL_EXP = {torch.float32: -126, torch.float16: -14, torch.bfloat16: -126}


# ---- shared helpers ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def on_backend_device():
    """Tensors the tests make live on the active backend's device (CPU under the interpreter)."""
    if DEVICE.type == "cpu":
        yield
    else:
        with torch.device(DEVICE):
            yield


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view, so that bitwise comparisons see -0 and NaN payloads."""
    view = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.detach().contiguous().view(view[t.dtype])


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    same = bits(a) == bits(b)
    assert bool(same.all()), f"{int((~same).sum())} of {same.numel()} elements differ"


def ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at |ref| (float64), subnormal spacing included."""
    p, emin = SIGNIFICAND[dtype], MIN_NORMAL_EXP[dtype]
    mag = ref.abs().clamp_min(2.0 ** emin)
    return torch.exp2(torch.floor(torch.log2(mag)) - (p - 1))


def assert_within(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """|out - ref| <= bound elementwise (inf and -inf must match exactly)."""
    out64 = out.detach().double()
    inf = torch.isinf(ref)
    assert torch.equal(out64[inf], ref[inf]), f"{what}: infinities differ"
    err = (out64 - ref).abs()[~inf]
    b = bound.expand_as(ref)[~inf]
    bad = ~(err <= b)
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} elements out of bound; worst err/bound "
                                 f"{float((err / b).max()):.3g}, max err {float(err.max()):.3g}")


def assert_correctly_rounded_mostly(out: torch.Tensor, ref: torch.Tensor, frac: float, max_ulp: float, what: str):
    s = numerics.error_summary(out, ref)
    assert s["frac_correctly_rounded"] >= frac and s["max_ulp"] <= max_ulp, f"{what}: {s}"
    return s


def check_rounded_output(y: torch.Tensor, ref: torch.Tensor, fp32_bound: torch.Tensor, what: str) -> None:
    """An fp32 result within ``fp32_bound`` of exact, rounded once to y's dtype: within
    fp32_bound + 1 ulp of the dtype, and (fp16/bf16) almost always the correctly rounded value.
    (Not always within 1 ulp: near 0, log_softmax's fp32 error floor of ~2^-24 absolute is
    several fp16 ulps.)"""
    if y.dtype == torch.float32:
        assert_within(y, ref, fp32_bound, what)
    else:
        assert_within(y, ref, fp32_bound + ulp(ref, y.dtype), what)
        assert_correctly_rounded_mostly(y, ref, 0.99, math.inf, what)


def randn(shape, dtype, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64, device="cpu") * scale).to(DEVICE, dtype)


def fp32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


OPS = {"softmax": (pk.softmax, reference.softmax), "log_softmax": (pk.log_softmax, reference.log_softmax)}


# ---- accuracy ---------------------------------------------------------------------------

def p_rel_bound(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Relative error bound of the kernel's fp32 p = softmax(x * scale), from its operations."""
    exact_scale = math.frexp(fp32(scale))[0] == 0.5
    return p_rel_bound_z(x.double() * fp32(scale), exact_scale)


def p_rel_bound_z(z: torch.Tensor, exact_z: bool) -> torch.Tensor:
    """Relative error bound of the fp32 p = softmax(z) computed as exp(z - m) / sum.

    z rounds to fp32 when it is a product or quotient (unless exact_z): 2^-24 |z| absolute in z
    and 2^-24 |m| in the max m; the shift z - m rounds (2^-24 |z - m|), the exp argument may
    round again on GPU (ex2 of x log2 e: another 2^-24 |z - m|); exp, the division, the rescaling
    and an in-block tree sum add a few ulps (2^-20), and the sum over blocks one rounding per block:
    <= 2^-24 (|z| + |m|) + 2^-23 |z - m| + 2^-20 + n_blocks 2^-24 (blocks of the active config).
    """
    n_blocks = math.ceil(z.shape[-1] / profiles.row_config(torch.float32).block_cols)
    m = z.max(dim=-1, keepdim=True).values
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    finite_z = torch.where(torch.isinf(z), torch.zeros_like(z), z)  # -inf entries: p = 0 exactly
    products = 0.0 if exact_z else 2.0**-24 * (finite_z.abs() + m.abs())
    shift = (finite_z - m).abs()
    return products + 2.0**-23 * shift + 2.0**-20 + n_blocks * 2.0**-24


def _fp32_bound(op: str, x: torch.Tensor, ref: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax: relative p_rel_bound; log_softmax: y = (z - m) - log(s), with the same z, m and
    shift errors, plus the log and the subtraction: <= p_rel_bound + 2^-22 |y| absolute."""
    if op == "softmax":
        return ref.abs() * p_rel_bound(x, scale)
    return p_rel_bound(x, scale) + 2.0**-22 * ref.abs()


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("n,scale", [(1, 1.0), (127, 0.125), (300, 1.0), (2051, 3.0)])
def test_accuracy_against_fp64(op, fmt, n, scale):
    dtype = DTYPES[fmt]
    x = randn((37, n), dtype, 2.0, seed=n)
    fn, oracle = OPS[op]
    y = fn(x, scale=scale)
    ref = oracle(x, scale=scale)
    assert y.dtype == dtype and y.shape == x.shape
    check_rounded_output(y, ref, _fp32_bound(op, x, ref, scale), f"{op} {fmt}")


@pytest.mark.parametrize("op", list(OPS))
def test_rows_longer_than_100k(op):
    # The CUDA table (1024-wide blocks) keeps this cheap under the interpreter; the loop is the same.
    x = randn((2, 100_003), torch.float32, 3.0, seed=1)
    fn, oracle = OPS[op]
    ref = oracle(x)
    with profiles.config_backend("cuda"):
        y = fn(x)
        assert_within(y, ref, _fp32_bound(op, x, ref, 1.0), op)
    if op == "softmax":
        assert abs(float(y.double().sum(-1).max()) - 1.0) < 1e-5


# ---- I1, I2 -----------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OPS))
def test_deterministic(op):
    x = randn((600, 300), torch.bfloat16, 3.0, seed=2)
    fn, _ = OPS[op]
    assert_bitwise(fn(x, scale=0.3), fn(x, scale=0.3))


def check_batch_invariance(fn, x, idx, other, backward):
    """I2 for a row op ``fn``: rows ``idx`` of x alone, and after the unrelated rows ``other``, give the bits
    they have in the full batch; with ``backward``, so does a row's gradient."""
    full = fn(x)
    alone = fn(x[idx])
    assert_bitwise(alone, full[idx])
    # the same rows placed after unrelated rows, in a batch of a different size
    mixed = torch.cat([other, x[idx]])
    assert_bitwise(fn(mixed)[other.shape[0]:], full[idx])
    if backward:
        dy = randn(x.shape, x.dtype, seed=5)
        xg = x.clone().requires_grad_()
        fn(xg).backward(dy)
        xs = x[idx].clone().requires_grad_()
        fn(xs).backward(dy[idx])
        assert_bitwise(xs.grad, xg.grad[idx])


@st.composite
def batches(draw, max_rows, max_cols):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    fmt = draw(st.sampled_from(list(DTYPES)))
    seed = draw(st.integers(0, 2**16))
    idx = draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=min(rows, 9)))
    n_other = draw(st.integers(0, 5))
    return rows, cols, DTYPES[fmt], seed, torch.tensor(idx), n_other


@settings(max_examples=15)
@given(case=batches(max_rows=700, max_cols=300), op=st.sampled_from(list(OPS)), backward=st.booleans())
def test_batch_invariance_interpreter_table(case, op, backward):
    rows, cols, dtype, seed, idx, n_other = case
    x = randn((rows, cols), dtype, 4.0, seed)
    check_batch_invariance(OPS[op][0], x, idx, randn((n_other, cols), dtype, 4.0, seed + 1), backward)


@pytest.mark.parametrize("op", list(OPS))
def test_rows_across_program_boundaries(op):
    """Rows at the edges of the 512-row interpreter tiles, alone and in other positions, fwd and bwd."""
    x = randn((1100, 150), torch.float16, 4.0, seed=13)
    idx = torch.tensor([0, 511, 512, 1023, 1024, 1099])
    check_batch_invariance(OPS[op][0], x, idx, randn((300, 150), torch.float16, 4.0, seed=14), backward=True)


@pytest.mark.cuda_configs
@settings(max_examples=10)
@given(case=batches(max_rows=11, max_cols=1100), op=st.sampled_from(list(OPS)), backward=st.booleans())
def test_batch_invariance_cuda_table(case, op, backward):
    rows, cols, dtype, seed, idx, n_other = case
    x = randn((rows, cols), dtype, 4.0, seed)
    with profiles.config_backend("cuda"):
        check_batch_invariance(OPS[op][0], x, idx, randn((n_other, cols), dtype, 4.0, seed + 1), backward)


# ---- I3: -inf padding, fully masked blocks and rows ----------------------------------------

def _check_padding(fn, x, lead_blocks, tail, block_cols):
    rows, n = x.shape
    ninf = torch.full((rows, 1), float("-inf"), dtype=x.dtype)
    padded = torch.cat([ninf.expand(rows, lead_blocks * block_cols), x, ninf.expand(rows, tail)], dim=1)
    y, yp = fn(x), fn(padded)
    start = lead_blocks * block_cols
    assert_bitwise(yp[:, start:start + n], y)
    masked = torch.cat([yp[:, :start], yp[:, start + n:]], dim=1)
    fill = 0.0 if fn is pk.softmax else float("-inf")
    assert bool((masked == fill).all())


@settings(max_examples=15)
@given(n=st.integers(1, 300), lead_blocks=st.integers(0, 2), tail=st.integers(0, 400),
       fmt=st.sampled_from(list(DTYPES)), op=st.sampled_from(list(OPS)), seed=st.integers(0, 999))
def test_minus_inf_padding_is_invisible(n, lead_blocks, tail, fmt, op, seed):
    x = randn((5, n), DTYPES[fmt], 5.0, seed)
    _check_padding(OPS[op][0], x, lead_blocks, tail, profiles.row_config(x.dtype).block_cols)


@pytest.mark.cuda_configs
@pytest.mark.parametrize("op", list(OPS))
def test_minus_inf_padding_cuda_table(op):
    x = randn((6, 700), torch.bfloat16, 5.0, seed=3)
    with profiles.config_backend("cuda"):
        for lead, tail in ((0, 1), (0, 700), (1, 3), (2, 0)):
            _check_padding(OPS[op][0], x, lead, tail, profiles.row_config(x.dtype).block_cols)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n,tail", [(3, 13), (16, 5), (100, 12), (1000, 24)])
def test_padding_to_aligned_row_lengths(op, n, tail):
    """On GPU, Triton would specialize row strides divisible by 16 (wider loads, another reduction
    layout); the kernels turn that off, so padding to such a length changes no bits."""
    x = randn((4, n), torch.float32, 5.0, seed=n)
    _check_padding(OPS[op][0], x, 0, tail, profiles.row_config(x.dtype).block_cols)


@pytest.mark.parametrize("op", list(OPS))
def test_misaligned_views_equal_aligned_copies(op):
    x = randn((9, 65), torch.bfloat16, 5.0, seed=15)
    for view in (x[:, 1:], x[1:, 1:33], x[:, 3:]):
        assert_bitwise(OPS[op][0](view), OPS[op][0](view.contiguous()))


def test_causal_row_equals_decode_step():
    """Row i of a causal (masked_fill -inf) score matrix equals the softmax of its first i+1 entries."""
    scores = randn((40, 40), torch.float16, 3.0, seed=4)
    causal = scores.masked_fill(torch.triu(torch.ones(40, 40, dtype=torch.bool), 1), float("-inf"))
    full = pk.softmax(causal, scale=0.125)
    for i in (0, 1, 17, 39):
        assert_bitwise(pk.softmax(scores[i:i + 1, :i + 1], scale=0.125), full[i:i + 1, :i + 1])


def test_fully_masked_row():
    x = randn((4, 200), torch.float32, 2.0, seed=6)
    x[1] = float("-inf")
    x[2, :150] = float("-inf")  # a fully masked leading block, then live entries
    sm, lsm = pk.softmax(x), pk.log_softmax(x)
    assert bool((sm[1] == 0).all()) and not bool(torch.signbit(sm[1]).any())
    assert bool((lsm[1] == float("-inf")).all())
    assert_bitwise(sm[[0, 2, 3]], pk.softmax(x[[0, 2, 3]]))
    assert torch.isfinite(sm).all() and not torch.isnan(lsm).any()
    # gradients: 0 for softmax, the p = 0 formula (scale * dy) for log_softmax
    dy = randn(x.shape, torch.float32, seed=7)
    for fn, expect in ((pk.softmax, torch.zeros(200)), (pk.log_softmax, dy[1] * fp32(0.5))):
        xg = x.clone().requires_grad_()
        fn(xg, scale=0.5).backward(dy)
        assert torch.equal(xg.grad[1], expect)
        assert torch.isfinite(xg.grad).all()


def test_all_rows_masked_and_empty_shapes():
    x = torch.full((3, 5), float("-inf"), dtype=torch.bfloat16)
    assert bool((pk.softmax(x) == 0).all())
    assert pk.softmax(torch.empty(0, 7)).shape == (0, 7)
    assert pk.log_softmax(torch.empty(4, 0, dtype=torch.float16)).shape == (4, 0)
    one = pk.softmax(torch.tensor(3.0))
    assert one.shape == () and one.item() == 1.0


# ---- dim, layout --------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dim", [0, 1, -2, 2])
def test_dim_is_moved_and_results_match_last_dim(op, dim):
    x = randn((6, 7, 9), torch.float16, 3.0, seed=8)
    fn, oracle = OPS[op]
    y = fn(x, dim=dim)
    assert y.shape == x.shape
    want = fn(x.movedim(dim, -1).contiguous()).movedim(-1, dim)
    assert_bitwise(y.contiguous(), want.contiguous())
    ref = oracle(x, dim=dim).movedim(dim, -1)
    check_rounded_output(y.movedim(dim, -1), ref, _fp32_bound(op, x.movedim(dim, -1), ref, 1.0), f"{op} dim={dim}")


def test_strided_input_equals_contiguous():
    x = randn((50, 64), torch.bfloat16, 3.0, seed=9)
    view = x.t()  # last-dim stride 50: copied once
    assert_bitwise(pk.softmax(view), pk.softmax(view.contiguous()))
    rows = x[::2]  # row stride 128, unit column stride: read in place
    assert_bitwise(pk.log_softmax(rows), pk.log_softmax(rows.contiguous()))


# ---- backward ------------------------------------------------------------------------------

def _fp64_grad(op, x, dy, scale):
    x64 = x.detach().double().requires_grad_()
    fn = torch.softmax if op == "softmax" else torch.log_softmax
    fn(x64 * fp32(scale), -1).backward(dy.double())
    return x64.grad


def _grad_bound(op, x, dy, scale, dtype):
    """fp32 error of the backward, before its final rounding, from the error of the recomputed p
    (p_rel_bound), the fp32 row sums (2^-20 of their absolute sums) and the last few roundings."""
    p = torch.softmax(x.double() * fp32(scale), -1)
    eps_p = p_rel_bound(x, scale)
    dy = dy.double()
    s = abs(fp32(scale))
    if op == "softmax":
        acc = (dy * p).sum(-1, keepdim=True)
        acc_err = (dy.abs() * p * eps_p).sum(-1, keepdim=True) + 2.0**-20 * (dy * p).abs().sum(-1, keepdim=True)
        diff = (dy - acc).abs()
        return s * p * (eps_p * diff + acc_err + 2.0**-22 * (diff + acc_err))
    g = dy.sum(-1, keepdim=True)
    g_err = 2.0**-20 * dy.abs().sum(-1, keepdim=True)
    return s * (p * g.abs() * (eps_p + 2.0**-22) + p * g_err + 2.0**-22 * (dy.abs() + p * g.abs()))


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("fmt", list(DTYPES))
def test_backward_against_fp64(op, fmt):
    dtype = DTYPES[fmt]
    x = randn((33, 523), dtype, 3.0, seed=10)
    x[3, 100:] = float("-inf")
    dy = randn(x.shape, dtype, seed=11)
    xg = x.clone().requires_grad_()
    OPS[op][0](xg, scale=0.7).backward(dy)
    assert xg.grad.dtype == dtype
    ref = _fp64_grad(op, x, dy, 0.7)
    assert_within(xg.grad, ref, _grad_bound(op, x, dy, 0.7, dtype) + ulp(ref, dtype), f"{op} grad {fmt}")
    if dtype != torch.float32:
        assert_correctly_rounded_mostly(xg.grad, ref, 0.97, math.inf, f"{op} grad {fmt}")
    # deterministic
    xg2 = x.clone().requires_grad_()
    OPS[op][0](xg2, scale=0.7).backward(dy)
    assert_bitwise(xg.grad, xg2.grad)


def test_backward_through_dim_and_fp32_grad_of_16_bit_output():
    x = randn((5, 8, 3), torch.bfloat16, 2.0, seed=12).requires_grad_()
    y = pk.log_softmax(x, dim=1)
    (y.float() * torch.arange(3.0)).sum().backward()
    x_rows = x.detach().movedim(1, -1)
    dy_rows = (torch.ones(5, 8, 3) * torch.arange(3.0)).movedim(1, -1).to(torch.bfloat16)
    ref = _fp64_grad("log_softmax", x_rows, dy_rows, 1.0)
    bound = _grad_bound("log_softmax", x_rows, dy_rows, 1.0, torch.bfloat16) + ulp(ref, torch.bfloat16)
    assert_within(x.grad.movedim(1, -1), ref, bound, "dim=1 grad")


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [pk.softmax, pk.log_softmax])
def test_bad_inputs(fn):
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn([[1.0, 2.0]])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        fn(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        fn(x.double())
    with pytest.raises(ValueError, match="active backend"):
        fn(torch.randn(3, 4, device="meta"))
    with pytest.raises(IndexError, match="out of range"):
        fn(x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        fn(x, dim=1.0)
    with pytest.raises(ValueError, match="finite"):
        fn(x, scale=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        fn(x, scale=float("inf"))
    with pytest.raises(TypeError, match="scale"):
        fn(x, scale="big")
