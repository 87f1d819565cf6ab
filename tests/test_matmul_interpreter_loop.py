"""The interpreter's matmul K loop computes exactly the documented sum, bit for bit.

kernels/matmul.py promises (DESIGN.md section 2, I6) that under the interpreter a C element is
built like this: both operands widened exactly to fp32; K cut into BLOCK_K blocks in index order;
each block's products multiplied in fp32 and added one after the other in K order; each block
sum added into one fp32 accumulator that starts at +0; lanes past K add nothing that changes a
bit; bias added in fp32; one round-to-nearest-even to the output format. The engine profile
(SPLITS > 1) cuts K into chunks of ceil(K / splits) rounded up to ENGINE_K_ALIGN, runs the same
block walk from each chunk's start (its blocks need not line up with BLOCK_K), rounds each chunk
sum to the output format and adds the rounded partials in chunk order.

``emulate`` below redoes that with plain torch fp32 elementwise operations, sharing no code with
the kernel, and the tests compare pk.matmul / pk.linear against it bitwise: forward, both
gradients and the bias gradient, 2-D and batched, in fp32, fp16 and bf16 (with subnormal inputs,
which the bf16 widening must get right, and sums that overflow fp16), for K a multiple of BLOCK_K,
with a partial last block, and below BLOCK_K, in the matched and the engine profile, on the
interpreter table and on the CUDA table's tiles. A rewrite of the interpreter loop that changed
any bit of any of these fails here. (The compiled kernels use ``tl.dot``, whose order is the
hardware's: interpreter only.)

A 16-bit output rounds away the low bits of its fp32 sum, so random operands pin the order of the
additions only in fp32. ``cancelling`` operands make every dtype's output the rounding error of
its fp32 sum (the exact sum is 0), and that test checks that another block order would change it.
"""

# precision_kernels first: it sets TRITON_INTERPRET before triton defines its own jit helpers (tl.cdiv, tl.sum).
import precision_kernels as pk  # noqa: I001
import contextlib
import math

import pytest
import torch

from precision_kernels import backend, profiles
from precision_kernels.ops.matmul import ENGINE_K_ALIGN

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the documented K order is the interpreter's")

# The Triton source's K loop, not its CPU twin (tests/test_cpu_executor_matmul.py holds the twin to it).
pytestmark = [pytestmark, pytest.mark.usefixtures("interpreter_executor")]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# (rows, columns, K): K a multiple of the interpreter's BLOCK_K (32), with a partial last block, below it
SHAPES = [(37, 21, 64), (9, 130, 100), (70, 3, 5)]
# engine profile, rows <= split_m: chunks of 32 (K=100, last one partial), chunks of 48 that end inside a
# BLOCK_K block (K=150), and chunks of 16 of which the last two start past K (K=20)
ENGINE_SHAPES = [(3, 21, 100), (1, 9, 150), (5, 7, 20)]


def operand(shape, dtype, seed):
    """Normal values, with every 7th a subnormal of its format and every 11th large (fp16 sums overflow)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    flat = x.view(-1)
    flat[::7] *= {torch.float32: 1e-40, torch.float16: 1e-6, torch.bfloat16: 1e-39}[dtype]
    flat[::11] *= 200.0
    return x.to(dtype).to(backend.device())


def cancelling(m, n, k, dtype, seed):
    """x (m, k), w (n, k) whose products sum to exactly 0 for every (row, column): the second half of
    K repeats the first one rotated by one place, with w negated. The fp32 sums leave rounding
    errors that depend on the order of every addition (the rotation keeps the two halves' block
    sums from cancelling exactly)."""
    half = k // 2
    x = operand((m, half), dtype, seed)
    w = operand((n, half), dtype, seed + 1)
    return torch.cat([x, x.roll(1, dims=1)], dim=1), torch.cat([w, -w.roll(1, dims=1)], dim=1)


def block_k_of(table, dtype):
    return profiles.matmul_block_k_for(table, {v: name for name, v in DTYPES.items()}[dtype])


def emulate(a, b, table, splits=1, bias=None, block_k=None):
    """a (M, K) @ b (K, N) (+ bias) as the documented interpreter K loop computes it, in a's dtype."""
    dtype = a.dtype
    a32, b32 = a.cpu().float(), b.cpu().float()  # exact widening (torch's bf16 -> fp32 is a shift)
    (m, k), n = a.shape, b.shape[1]
    block_k = block_k or block_k_of(table, dtype)
    chunk = max(k, 1) if splits == 1 else math.ceil(math.ceil(max(k, 1) / splits) / ENGINE_K_ALIGN) * ENGINE_K_ALIGN
    total = torch.zeros(m, n)
    for lo in range(0, splits * chunk, chunk):
        hi = min(lo + chunk, k)
        acc = torch.zeros(m, n)
        for block in range(lo, hi, block_k):
            block_sum = a32[:, block, None] * b32[None, block, :]
            for kk in range(block + 1, min(block + block_k, hi)):
                block_sum = block_sum + a32[:, kk, None] * b32[None, kk, :]
            acc = acc + block_sum
        total = acc if splits == 1 else total + acc.to(dtype).float()
    if bias is not None:
        total = total + bias.cpu().float()[None, :]
    return total.to(dtype)  # torch rounds to nearest even, as the project's helper does (I4)


def assert_bitwise(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    diff = got.detach().cpu().contiguous().view(INT_VIEW[got.dtype]) != want.contiguous().view(INT_VIEW[want.dtype])
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ, first at " \
                           f"{diff.nonzero()[0].tolist()}"


def tables():
    return ["interpreter", pytest.param("cuda", marks=pytest.mark.cuda_configs)]


def in_table(table):
    return profiles.config_backend("cuda") if table == "cuda" else contextlib.nullcontext()


@pytest.mark.parametrize("table", tables())
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_linear_forward_and_gradients_are_the_documented_sum(name, m, n, k, table):
    dtype = DTYPES[name]
    x = operand((m, k), dtype, seed=m * 1000 + k).requires_grad_()
    w = operand((n, k), dtype, seed=n * 1000 + k + 1).requires_grad_()
    bias = operand((n,), dtype, seed=k + 2).requires_grad_()
    with in_table(table):
        y = pk.linear(x, w, bias)
        grad = operand((m, n), dtype, seed=k + 3)
        y.backward(grad)
    assert_bitwise(y, emulate(x.detach(), w.detach().T, table, bias=bias.detach()), "forward")
    assert_bitwise(x.grad, emulate(grad, w.detach(), table), "grad x")
    assert_bitwise(w.grad, emulate(grad.T, x.detach(), table), "grad weight")
    assert_bitwise(bias.grad, emulate(torch.ones(1, m, dtype=dtype), grad, table).reshape(-1), "grad bias")


@pytest.mark.parametrize("table", tables())
@pytest.mark.parametrize("name", list(DTYPES))
def test_batched_matmul_and_gradients_are_the_documented_sum(name, table):
    dtype = DTYPES[name]
    nb, m, n, k = 3, 5, 6, 100
    a = operand((nb, m, k), dtype, seed=11).requires_grad_()
    b = operand((nb, k, n), dtype, seed=12).requires_grad_()
    with in_table(table):
        c = pk.matmul(a, b)
        grad = operand((nb, m, n), dtype, seed=13)
        c.backward(grad)
    for i in range(nb):
        assert_bitwise(c[i], emulate(a[i].detach(), b[i].detach(), table), f"item {i}")
        assert_bitwise(a.grad[i], emulate(grad[i], b[i].detach().T, table), f"grad a, item {i}")
        assert_bitwise(b.grad[i], emulate(a[i].detach().T, grad[i], table), f"grad b, item {i}")


@pytest.mark.parametrize("table", tables())
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("m,n,k", ENGINE_SHAPES)
def test_engine_split_k_is_the_documented_sum(name, m, n, k, table):
    dtype = DTYPES[name]
    splits = profiles.engine_config().splits
    assert m <= profiles.engine_config().split_m
    x = operand((m, k), dtype, seed=m * 1000 + k)
    w = operand((n, k), dtype, seed=n * 1000 + k + 1)
    bias = operand((n,), dtype, seed=k + 2)
    a3 = operand((2, m, k), dtype, seed=k + 4)
    b3 = operand((2, k, n), dtype, seed=k + 5)
    with in_table(table), profiles.use_profile("engine"):
        y = pk.linear(x, w, bias)
        c = pk.matmul(x, w.T)
        c3 = pk.matmul(a3, b3)
    assert_bitwise(y, emulate(x, w.T, table, splits, bias), "engine linear")
    assert_bitwise(c, emulate(x, w.T, table, splits), "engine matmul")
    for i in range(2):
        assert_bitwise(c3[i], emulate(a3[i], b3[i], table, splits), f"engine batched, item {i}")
    # and the split really is one: the matched sum differs somewhere (else this test proves nothing new)
    if dtype != torch.float32:
        assert not torch.equal(emulate(x, w.T, table, splits).view(torch.int16),
                               emulate(x, w.T, table).view(torch.int16))



@pytest.mark.parametrize("table", tables())
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("m,n,k", [(37, 21, 64), (9, 130, 100), (5, 7, 150)])
def test_cancelling_sums_pin_the_block_order_in_every_dtype(name, m, n, k, table):
    dtype = DTYPES[name]
    rows, w = cancelling(2 * m, n, k, dtype, seed=m + n + k)  # w depends on (n, k, seed) only
    x, a3, b3 = rows[:m], rows.reshape(2, m, k), w.T.expand(2, k, n).contiguous()
    with in_table(table):
        y = pk.linear(x, w)
        c3 = pk.matmul(a3, b3)
        with profiles.use_profile("engine"):
            y_engine = pk.linear(x[:3], w)
    want = emulate(x, w.T, table)
    assert_bitwise(y, want, "linear")
    for i in range(2):
        assert_bitwise(c3[i], emulate(a3[i], b3[i], table), f"batched, item {i}")
    assert_bitwise(y_engine, emulate(x[:3], w.T, table, profiles.engine_config().splits), "engine linear")
    # the operands do pin the order: blocks of half the size would give other bits
    other = emulate(x, w.T, table, block_k=block_k_of(table, dtype) // 2)
    assert (want.view(INT_VIEW[dtype]) != other.view(INT_VIEW[dtype])).any()
