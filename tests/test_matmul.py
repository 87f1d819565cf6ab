"""pk.matmul / pk.linear: determinism (I1), batch invariance (I2), K-padding invariance (I3),
accuracy against FP64 (I6), gradients, the engine profile, and argument errors.

Invariance tests run with the active backend's tile table and, marked ``cuda_configs``,
with the CUDA table's tiles under the interpreter at small shapes. Bitwise comparisons
use integer views.
"""

# precision_kernels first: it sets TRITON_INTERPRET before triton defines its own jit helpers (tl.cdiv, tl.sum).
import precision_kernels as pk  # noqa: I001
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from precision_kernels import backend, numerics, profiles, reference
from precision_kernels.kernels.matmul import linear_tile
from precision_kernels.kernels.matmul_compiled import linear_tile_compiled
from precision_kernels.ops._common import kernel_form, kernel_view, kind
from precision_kernels.ops.matmul import linear, matmul

DEVICE = backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
ALL = list(DTYPES)
HALF = ["fp16", "bf16"]
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
SETTINGS_SMALL = settings(max_examples=8, deadline=None, derandomize=True)


def randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(INT_VIEW[t.dtype]).cpu()


def assert_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{int(diff.sum())} of {diff.numel()} elements differ, first at {diff.nonzero()[0].tolist()}"


def assert_accurate(out: torch.Tensor, ref64: torch.Tensor, a_abs_b: torch.Tensor) -> None:
    """fp16/bf16: >= 99% correctly rounded; fp32: |err| <= 2e-6 * (|A| @ |B|)."""
    if out.dtype == torch.float32:
        err = (out.double().cpu() - ref64.cpu()).abs()
        bound = 2e-6 * a_abs_b.cpu()
        assert (err <= bound).all(), f"max err/bound {float((err / bound.clamp_min(1e-300)).max())}"
    else:
        summary = numerics.error_summary(out, ref64)
        assert summary["frac_correctly_rounded"] >= 0.99, summary


@pytest.fixture(params=["active", pytest.param("cuda", marks=pytest.mark.cuda_configs)])
def table(request):
    """Tile table to run: the active backend's, or the CUDA table's (under the interpreter, small shapes)."""
    if request.param == "active":
        yield "active"
    else:
        if backend.INTERPRETED:
            with profiles.config_backend("cuda"):
                yield "cuda"
        else:
            yield "cuda"


# ------------------------------------------------------------------------------------------ I1


@pytest.mark.parametrize("name", ALL)
def test_bitwise_deterministic(name):
    dtype = DTYPES[name]
    a, b = randn(70, 90, dtype=dtype, seed=1), randn(90, 33, dtype=dtype, seed=2)
    w, bias = randn(45, 90, dtype=dtype, seed=3), randn(45, dtype=dtype, seed=4)
    x3, y3 = randn(20, 9, 24, dtype=dtype, seed=5), randn(20, 24, 11, dtype=dtype, seed=6)
    assert_bitwise(matmul(a, b), matmul(a, b))
    assert_bitwise(linear(a, w, bias), linear(a, w, bias))
    assert_bitwise(matmul(x3, y3), matmul(x3, y3))


# ------------------------------------------------------------------------------------------ I2


@SETTINGS
@given(data=st.data(), name=st.sampled_from(ALL), m=st.integers(1, 300),
       n=st.integers(1, 81), k=st.integers(1, 161),
       seed=st.integers(0, 2**16))
def test_batch_invariance_rows(data, name, m, n, k, seed):
    """A row's output is the same whatever rows share the launch, their number, order and contents."""
    dtype = DTYPES[name]
    a, b = randn(m, k, dtype=dtype, seed=seed), randn(k, n, dtype=dtype, seed=seed + 1)
    full = matmul(a, b)
    # a shuffled subset of the rows
    rows = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=min(m, 40), unique=True))
    idx = torch.tensor(rows, device=DEVICE)
    assert_bitwise(matmul(a[idx], b), full[idx])
    # the same rows with every other row changed
    other = randn(m, k, dtype=dtype, seed=seed + 2, scale=100.0)
    keep = torch.zeros(m, dtype=torch.bool, device=DEVICE)
    keep[idx] = True
    changed = torch.where(keep[:, None], a, other)
    assert_bitwise(matmul(changed, b)[idx], full[idx])


@SETTINGS
@given(name=st.sampled_from(ALL), m=st.integers(1, 130), extra=st.integers(1, 300),
       n=st.integers(1, 61), k=st.integers(1, 101),
       seed=st.integers(0, 2**16))
def test_batch_invariance_linear_and_position(name, m, extra, n, k, seed):
    """linear: rows computed alone, inside a bigger batch, or behind other rows give the same bits."""
    dtype = DTYPES[name]
    x, w = randn(m, k, dtype=dtype, seed=seed), randn(n, k, dtype=dtype, seed=seed + 1)
    bias = randn(n, dtype=dtype, seed=seed + 2)
    alone = linear(x, w, bias)
    pad = randn(extra, k, dtype=dtype, seed=seed + 3)
    assert_bitwise(linear(torch.cat([pad, x]), w, bias)[extra:], alone)
    assert_bitwise(linear(torch.cat([x, pad]), w, bias)[:m], alone)
    # leading dims are rows too
    assert_bitwise(linear(x.reshape(1, m, k), w, bias).reshape(m, n), alone)


@SETTINGS
@given(data=st.data(), name=st.sampled_from(ALL), nb=st.integers(1, 150), m=st.integers(1, 20),
       n=st.integers(1, 25), k=st.integers(1, 49),
       seed=st.integers(0, 2**16))
def test_batch_invariance_batched(data, name, nb, m, n, k, seed):
    """A batch item's product does not depend on the other items, their number or order."""
    dtype = DTYPES[name]
    a, b = randn(nb, m, k, dtype=dtype, seed=seed), randn(nb, k, n, dtype=dtype, seed=seed + 1)
    full = matmul(a, b)
    items = data.draw(st.lists(st.integers(0, nb - 1), min_size=1, max_size=min(nb, 30), unique=True))
    idx = torch.tensor(items, device=DEVICE)
    assert_bitwise(matmul(a[idx], b[idx]), full[idx])
    # rows inside an item: a subset of an item's rows
    r = data.draw(st.integers(1, m))
    assert_bitwise(matmul(a[idx, :r], b[idx]), full[idx, :r])


@pytest.mark.cuda_configs
@SETTINGS_SMALL
@given(data=st.data(), name=st.sampled_from(ALL), m=st.integers(1, 300),
       n=st.integers(1, 41), k=st.integers(1, 101),
       nb=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_batch_invariance_cuda_table(data, name, m, n, k, nb, seed):
    """I2 with the CUDA table's tiles (run under the interpreter on CPU): rows, and batch items."""
    dtype = DTYPES[name]
    with profiles.config_backend("cuda"):
        a, b = randn(m, k, dtype=dtype, seed=seed), randn(k, n, dtype=dtype, seed=seed + 1)
        full = matmul(a, b)
        rows = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=min(m, 40), unique=True))
        idx = torch.tensor(rows, device=DEVICE)
        assert_bitwise(matmul(a[idx], b), full[idx])
        a3, b3 = randn(nb, 5, k, dtype=dtype, seed=seed + 2), randn(nb, k, n, dtype=dtype, seed=seed + 3)
        full3 = matmul(a3, b3)
        item = data.draw(st.integers(0, nb - 1))
        assert_bitwise(matmul(a3[item:item + 1], b3[item:item + 1]), full3[item:item + 1])
        assert_bitwise(matmul(a3[item], b3[item]), full3[item])


def test_batch_invariance_every_row_count(table):
    """Row 0..M-1 of an M-row call equals the same rows of a 300-row call, for every M (one dtype each)."""
    for name in ALL:
        dtype = DTYPES[name]
        a, b = randn(300, 37, dtype=dtype, seed=11), randn(37, 21, dtype=dtype, seed=12)
        full = matmul(a, b)
        for m in (1, 2, 3, 15, 16, 17, 63, 64, 65, 129, 255, 257):
            assert_bitwise(matmul(a[:m], b), full[:m])
            assert_bitwise(matmul(a[-m:], b), full[-m:])


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_2d(name, table):
    """Each item of a batched product equals the 2-D product of that item, bitwise."""
    dtype = DTYPES[name]
    for (nb, m, k, n) in [(6, 16, 32, 16), (5, 7, 45, 19), (3, 1, 70, 9)]:
        a, b = randn(nb, m, k, dtype=dtype, seed=21), randn(nb, k, n, dtype=dtype, seed=22)
        out = matmul(a, b)
        for i in range(nb):
            assert_bitwise(out[i], matmul(a[i], b[i]))


@pytest.mark.parametrize("name", ALL)
def test_column_invariance(name, table):
    """A column's values do not depend on N (attention scores over a growing key range need this)."""
    dtype = DTYPES[name]
    a, b = randn(40, 50, dtype=dtype, seed=31), randn(50, 150, dtype=dtype, seed=32)
    full = matmul(a, b)
    for n in (1, 5, 16, 33, 64, 129):
        assert_bitwise(matmul(a, b[:, :n]), full[:, :n])
        assert_bitwise(matmul(a, b[:, -n:]), full[:, -n:])
    a3, b3 = randn(9, 4, 16, dtype=dtype, seed=33), randn(9, 16, 70, dtype=dtype, seed=34)
    full3 = matmul(a3, b3)
    for n in (1, 17, 40):
        assert_bitwise(matmul(a3, b3[:, :, :n]), full3[:, :, :n])


def test_strides_do_not_matter(table):
    """Transposed, sliced and broadcast (stride-0) operands give the bits of their contiguous copies."""
    for name in ALL:
        dtype = DTYPES[name]
        a, b = randn(37, 29, dtype=dtype, seed=41), randn(29, 23, dtype=dtype, seed=42)
        want = matmul(a, b)
        assert_bitwise(matmul(a.t().contiguous().t(), b.t().contiguous().t()), want)
        wide = randn(37, 60, dtype=dtype, seed=43)
        assert_bitwise(matmul(wide[:, 1:58:2], b), matmul(wide[:, 1:58:2].contiguous(), b))
        row = randn(1, 29, dtype=dtype, seed=44)
        assert_bitwise(matmul(row.expand(5, 29), b), matmul(row, b).expand(5, 23))
        a3, b3 = randn(4, 6, 29, dtype=dtype, seed=45), randn(4, 23, 29, dtype=dtype, seed=46)
        assert_bitwise(matmul(a3, b3.mT), matmul(a3, b3.mT.contiguous()))
        w2, bias2 = randn(23, 29, dtype=dtype, seed=47), randn(23, 2, dtype=dtype, seed=48)
        assert_bitwise(linear(a, w2, bias2[:, 1]), linear(a, w2, bias2[:, 1].contiguous()))


# ------------------------------------------------------------------------------------------ I3


def _finite_rows(p, n, dtype, seed):
    """Arbitrary finite values, including the largest finite ones."""
    g = torch.Generator().manual_seed(seed)
    big = torch.finfo(dtype).max
    vals = torch.randn(p, n, generator=g) * 10.0 ** torch.randint(-3, 4, (p, n), generator=g).float()
    vals = vals.to(dtype)
    vals[torch.rand(p, n, generator=g) < 0.2] = big
    vals[torch.rand(p, n, generator=g) < 0.2] = -big
    return vals.to(DEVICE)


@SETTINGS
@given(name=st.sampled_from(ALL), m=st.integers(1, 70), n=st.integers(1, 40), k=st.integers(0, 100),
       pad=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_k_padding_invariance(name, m, n, k, pad, seed):
    """Zero columns appended to A, with arbitrary finite rows appended to B, leave C bitwise unchanged."""
    dtype = DTYPES[name]
    a, b = randn(m, k, dtype=dtype, seed=seed), randn(k, n, dtype=dtype, seed=seed + 1)
    a_pad = torch.cat([a, torch.zeros(m, pad, dtype=dtype, device=DEVICE)], dim=1)
    b_pad = torch.cat([b, _finite_rows(pad, n, dtype, seed + 2)], dim=0)
    assert_bitwise(matmul(a_pad, b_pad), matmul(a, b))
    # linear: the weight gains columns
    w = b.t()
    w_pad = b_pad.t()
    bias = randn(n, dtype=dtype, seed=seed + 3)
    assert_bitwise(linear(a_pad, w_pad, bias), linear(a, w, bias))


@pytest.mark.parametrize("name", ALL)
def test_k_padding_invariance_batched_and_cuda_table(name, table):
    """I3 for the batched form (a decode step's keys are a prefix of the full pass's) and for each table."""
    dtype = DTYPES[name]
    for (nb, m, k, n, pad) in [(5, 3, 13, 7, 19), (3, 16, 32, 16, 64), (2, 1, 0, 4, 5)]:
        a, b = randn(nb, m, k, dtype=dtype, seed=51), randn(nb, k, n, dtype=dtype, seed=52)
        a_pad = torch.cat([a, torch.zeros(nb, m, pad, dtype=dtype, device=DEVICE)], dim=2)
        b_pad = torch.cat([b, _finite_rows(nb * pad, n, dtype, 53).reshape(nb, pad, n)], dim=1)
        assert_bitwise(matmul(a_pad, b_pad), matmul(a, b))
    a, b = randn(20, 70, dtype=dtype, seed=54), randn(70, 30, dtype=dtype, seed=55)
    a_pad = torch.cat([a, torch.zeros(20, 90, dtype=dtype, device=DEVICE)], dim=1)
    b_pad = torch.cat([b, _finite_rows(90, 30, dtype, 56)], dim=0)
    assert_bitwise(matmul(a_pad, b_pad), matmul(a, b))


# ---------------------------------------------------------------------------------- accuracy (I6)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("k", [1, 17, 256, 1024])
def test_accuracy_against_fp64(name, k):
    dtype = DTYPES[name]
    a, b = randn(48, k, dtype=dtype, seed=61), randn(k, 40, dtype=dtype, seed=62)
    assert_accurate(matmul(a, b), reference.matmul(a, b), a.double().abs() @ b.double().abs())
    w, bias = b.t(), randn(40, dtype=dtype, seed=63)
    assert_accurate(linear(a, w, bias), reference.linear(a, w, bias),
                    a.double().abs() @ b.double().abs() + bias.double().abs())


@pytest.mark.parametrize("name", ALL)
def test_accuracy_batched(name):
    dtype = DTYPES[name]
    a, b = randn(96, 16, 32, dtype=dtype, seed=64), randn(96, 32, 16, dtype=dtype, seed=65)
    assert_accurate(matmul(a, b), reference.matmul(a, b), a.double().abs() @ b.double().abs())


def test_edge_shapes():
    for name in ALL:
        dtype = DTYPES[name]
        a = randn(5, 3, dtype=dtype, seed=71)
        assert matmul(a[:0], randn(3, 4, dtype=dtype, seed=72)).shape == (0, 4)
        assert matmul(a, randn(3, 0, dtype=dtype, seed=72)).shape == (5, 0)
        zero_k = matmul(torch.empty(5, 0, dtype=dtype, device=DEVICE), torch.empty(0, 4, dtype=dtype, device=DEVICE))
        assert zero_k.shape == (5, 4) and (bits(zero_k) == 0).all()
        bias = randn(4, dtype=dtype, seed=73)
        assert_bitwise(linear(torch.empty(5, 0, dtype=dtype, device=DEVICE),
                              torch.empty(4, 0, dtype=dtype, device=DEVICE), bias), bias.expand(5, 4))
        assert matmul(torch.empty(0, 2, 3, dtype=dtype, device=DEVICE),
                      torch.empty(0, 3, 4, dtype=dtype, device=DEVICE)).shape == (0, 2, 4)
        # (..., M, K) @ (K, N) and 1-D linear input
        x4 = randn(2, 3, 4, 3, dtype=dtype, seed=74)
        w = randn(6, 3, dtype=dtype, seed=75)
        assert_bitwise(matmul(x4, w.t()), matmul(x4.reshape(-1, 3), w.t()).reshape(2, 3, 4, 6))
        assert_bitwise(linear(x4[0, 0, 0], w), linear(x4[0, 0, :1], w)[0])
        assert linear(x4, w).shape == (2, 3, 4, 6)


# ------------------------------------------------------------------------------------- autograd


def _grad_case(name, shape_a, shape_b, seed, batched=False):
    dtype = DTYPES[name]
    a = randn(*shape_a, dtype=dtype, seed=seed).requires_grad_()
    b = randn(*shape_b, dtype=dtype, seed=seed + 1).requires_grad_()
    out = matmul(a, b)
    g = randn(*out.shape, dtype=dtype, seed=seed + 2)
    out.backward(g)
    return a, b, g


@pytest.mark.parametrize("name", ALL)
def test_gradients_against_fp64(name):
    a, b, g = _grad_case(name, (150, 70), (70, 33), seed=81)
    assert a.grad.dtype == a.dtype and b.grad.dtype == b.dtype
    a64, b64, g64 = a.detach().double(), b.detach().double(), g.double()
    assert_accurate(a.grad, g64 @ b64.t(), g64.abs() @ b64.abs().t())
    assert_accurate(b.grad, a64.t() @ g64, a64.abs().t() @ g64.abs())
    # batched
    a, b, g = _grad_case(name, (20, 12, 24), (20, 24, 10), seed=82)
    a64, b64, g64 = a.detach().double(), b.detach().double(), g.double()
    assert_accurate(a.grad, g64 @ b64.mT, g64.abs() @ b64.abs().mT)
    assert_accurate(b.grad, a64.mT @ g64, a64.abs().mT @ g64.abs())


@pytest.mark.parametrize("name", ALL)
def test_linear_gradients_against_fp64(name):
    dtype = DTYPES[name]
    x = randn(3, 40, 50, dtype=dtype, seed=91).requires_grad_()
    w = randn(27, 50, dtype=dtype, seed=92).requires_grad_()
    bias = randn(27, dtype=dtype, seed=93).requires_grad_()
    out = linear(x, w, bias)
    g = randn(*out.shape, dtype=dtype, seed=94)
    out.backward(g)
    x64, w64, g64 = x.detach().double().reshape(-1, 50), w.detach().double(), g.double().reshape(-1, 27)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and bias.grad.shape == bias.shape
    assert x.grad.dtype == w.grad.dtype == bias.grad.dtype == dtype
    assert_accurate(x.grad.reshape(-1, 50), g64 @ w64, g64.abs() @ w64.abs())
    assert_accurate(w.grad, g64.t() @ x64, g64.abs().t() @ x64.abs())
    assert_accurate(bias.grad, g64.sum(0), g64.abs().sum(0))


@pytest.mark.parametrize("name", ALL)
def test_gradients_deterministic_and_single_input(name):
    runs = [_grad_case(name, (90, 40), (40, 17), seed=101) for _ in range(2)]
    assert_bitwise(runs[0][0].grad, runs[1][0].grad)
    assert_bitwise(runs[0][1].grad, runs[1][1].grad)
    dtype = DTYPES[name]
    a, b, g = runs[0][0].detach(), runs[0][1].detach(), runs[0][2]
    # only a requires grad
    a1 = a.clone().requires_grad_()
    matmul(a1, b).backward(g)
    assert_bitwise(a1.grad, runs[0][0].grad)
    # only b requires grad
    b1 = b.clone().requires_grad_()
    matmul(a, b1).backward(g)
    assert_bitwise(b1.grad, runs[0][1].grad)
    # linear without bias, weight only
    w = b.t().contiguous().requires_grad_()
    linear(a, w).backward(g)
    assert_bitwise(w.grad, runs[0][1].grad.t())
    assert w.grad.dtype == dtype and w.grad.is_contiguous()


@pytest.mark.parametrize("name", HALF)
def test_backward_runs_matched_profile(name):
    """A forward in the engine profile backpropagates exactly as the matched one does."""
    want = _grad_case(name, (8, 256), (256, 24), seed=111)
    with pk.use_profile("engine"):
        got = _grad_case(name, (8, 256), (256, 24), seed=111)
    assert_bitwise(got[0].grad, want[0].grad)
    assert_bitwise(got[1].grad, want[1].grad)


# --------------------------------------------------------------------------------------- engine


def _engine_emulation(a: torch.Tensor, b: torch.Tensor, splits: int) -> torch.Tensor:
    """Engine split-K from matched pieces: each chunk's product rounded, partials added in fp32 in order, rounded."""
    from precision_kernels.ops.matmul import _k_chunk

    k = a.shape[1]
    chunk = _k_chunk(k, splits)
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    with pk.use_profile("matched"):
        for s in range(splits):
            lo, hi = min(s * chunk, k), min((s + 1) * chunk, k)
            total = total + matmul(a[:, lo:hi], b[lo:hi]).float()
    return total.to(a.dtype)


@pytest.mark.parametrize("name", ALL)
def test_engine_profile(name, table):
    dtype = DTYPES[name]
    split_m, splits = profiles.engine_config().split_m, profiles.engine_config().splits
    a, b = randn(split_m + 40, 256, dtype=dtype, seed=121), randn(256, 24, dtype=dtype, seed=122)
    matched = matmul(a, b)
    with pk.use_profile("engine"):
        small = matmul(a[:8], b)
        assert_bitwise(matmul(a[:8], b), small)                           # deterministic
        assert_bitwise(matmul(a, b), matched)                             # M > split_m: matched
        assert_bitwise(small, _engine_emulation(a[:8], b, splits))      # rounded partials, fixed order
        assert_bitwise(matmul(a[:split_m], b)[:8], small)               # invariant below split_m (fixed chunks)
    if dtype != torch.float32:
        assert not torch.equal(bits(small), bits(matched[:8])), "engine should differ from matched at small M"
    # outside the context, matched again
    assert_bitwise(matmul(a[:8], b), matched[:8])


@pytest.mark.parametrize("name", HALF)
def test_engine_batched_and_linear(name):
    dtype = DTYPES[name]
    a, b = randn(6, 4, 128, dtype=dtype, seed=131), randn(6, 128, 16, dtype=dtype, seed=132)
    x, w, bias = randn(4, 128, dtype=dtype, seed=133), randn(16, 128, dtype=dtype, seed=134), \
        randn(16, dtype=dtype, seed=135)
    with pk.use_profile("engine"):
        eb, el = matmul(a, b), linear(x, w, bias)
        assert_bitwise(matmul(a, b), eb)
        assert_bitwise(linear(x, w, bias), el)
        assert_bitwise(eb[2], _engine_emulation(a[2], b[2], profiles.engine_config().splits))
    assert not torch.equal(bits(eb), bits(matmul(a, b)))
    assert not torch.equal(bits(el), bits(linear(x, w, bias)))


# -------------------------------------------------------------------------------- linear_tile


@triton.jit
def _store_probe_tile(out_ptr, tile, pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], tile, mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def _linear_tile_probe(x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, k_chunk, stride_xm, stride_xk, stride_wn,
                       stride_wk, KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tile = linear_tile(x_ptr, w_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk, stride_xm, stride_xk,
                       stride_wk, stride_wn, KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    _store_probe_tile(out_ptr, tile, pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)


@triton.jit
def _linear_tile_compiled_probe(x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, k_chunk, stride_xm, stride_xk, stride_wn,
                                stride_wk, KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tile = linear_tile_compiled(x_ptr, w_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk, stride_xm, stride_xk,
                                stride_wk, stride_wn, KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    _store_probe_tile(out_ptr, tile, pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_linear_tile_is_what_linear_stores(name, profile):
    """The fused LM-head kernel's logits tile (linear_tile) is pk.linear's output, bitwise, as fp32."""
    from precision_kernels.ops.matmul import _k_chunk

    dtype = DTYPES[name]
    x, w, bias = randn(37, 100, dtype=dtype, seed=141), randn(21, 100, dtype=dtype, seed=142), \
        randn(21, dtype=dtype, seed=143)
    with pk.use_profile(profile):
        want = linear(x, w, bias)
        splits = profiles.engine_splits_for(37)
    cfg = profiles.matmul_config(dtype, m=37, n=21, k=100)
    out = torch.empty(37, 21, dtype=torch.float32, device=DEVICE)
    xv, wv = kernel_view(x), kernel_view(w)
    grid = (triton.cdiv(37, cfg.block_m), triton.cdiv(21, cfg.block_n))
    # the form pk.linear launches here (ops._common.kernel_form)
    probe = kernel_form(_linear_tile_probe, _linear_tile_compiled_probe)
    probe[grid](xv, wv, kernel_view(bias), out, 37, 21, 100, _k_chunk(100, splits),
                xv.stride(0), xv.stride(1), wv.stride(0), wv.stride(1),
                KIND=kind(dtype), HAS_BIAS=True, SPLITS=splits,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **backend.launch_options())
    assert_bitwise(out, want.float())


# --------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    a, b = randn(4, 3, dtype=torch.float32, seed=0), randn(3, 5, dtype=torch.float32, seed=1)
    with pytest.raises(TypeError, match="dtype mismatch"):
        matmul(a, b.half())
    with pytest.raises(TypeError, match="b must be float32, float16 or bfloat16"):
        matmul(a, b.to(torch.int32))
    with pytest.raises(TypeError, match="a must be float32"):
        matmul(a.double(), b.double())
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        matmul([[1.0]], b)
    with pytest.raises(ValueError, match="inner dimensions"):
        matmul(a, randn(4, 5, dtype=torch.float32, seed=2))
    with pytest.raises(ValueError, match="a must have shape"):
        matmul(a[0], b)
    with pytest.raises(ValueError, match="b must have shape"):
        matmul(a, b.reshape(1, 1, 3, 5))
    with pytest.raises(ValueError, match="batched b"):
        matmul(a.reshape(1, 1, 4, 3), b.reshape(1, 3, 5))
    with pytest.raises(ValueError, match="batch sizes differ"):
        matmul(a.reshape(1, 4, 3), b.reshape(1, 3, 5).expand(2, 3, 5))
    wrong = torch.empty(3, 5, device="meta")
    with pytest.raises(ValueError, match="b is on meta"):
        matmul(a, wrong)
    # linear
    w = randn(5, 3, dtype=torch.float32, seed=3)
    with pytest.raises(ValueError, match="weight must have shape"):
        linear(a, w[0])
    with pytest.raises(ValueError, match="inner dimensions"):
        linear(a, w.t())
    with pytest.raises(ValueError, match="bias must have shape"):
        linear(a, w, randn(4, dtype=torch.float32, seed=4))
    with pytest.raises(TypeError, match="dtype mismatch"):
        linear(a, w, randn(5, dtype=torch.float16, seed=4))
    with pytest.raises(TypeError, match="bias must be"):
        linear(a, w, torch.ones(5, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="x must have shape"):
        linear(torch.tensor(1.0, device=DEVICE), w)
    with pytest.raises(ValueError, match="weight is on meta"):
        linear(a, torch.empty(5, 3, device="meta"))
    with pytest.raises(ValueError, match="unknown profile"):
        with pk.use_profile("fast"):
            pass
