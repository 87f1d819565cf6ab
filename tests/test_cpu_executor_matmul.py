"""The matmul family's CPU twins (cpu_executor/matmul.py) give the interpreter's bits: pk.matmul, batched
pk.matmul and pk.linear (bias), forward and both gradients, both profiles (engine split-K), every dtype,
odd shapes, NaN/inf/-0; and direct launches with any BLOCK_K, SPLITS and chunk size."""

import pytest
import torch
import triton
from executor_helpers import assert_twin_matches_interpreter, bits
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.kernels.matmul import bmm_kernel, matmul_kernel
from precision_kernels.ops._common import kernel_view, launch, observe_launches

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _t(shape, dtype, seed, grad=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).requires_grad_(grad)


def _specials(t: torch.Tensor, seed: int) -> torch.Tensor:
    """t with a few NaN, +-inf and -0 entries."""
    t = t.detach().clone()
    flat = t.view(-1)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(flat.numel(), generator=g)[:4]
    for i, v in zip(picks.tolist(), (float("nan"), float("inf"), float("-inf"), -0.0)):
        flat[i] = v
    return t


@settings(max_examples=12)
@given(m=st.integers(1, 9), k=st.integers(0, 70), n=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       op=st.sampled_from(["matmul", "linear", "linear_nobias", "batched"]), engine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_public_ops_forward_and_gradients(m, k, n, dtype, op, engine, seed):
    a = _t((m, k), dtype, seed, grad=True)
    if op == "matmul":
        fn, args = pk.matmul, (a, _t((k, n), dtype, seed + 1, grad=True))
    elif op == "batched":
        fn, args = pk.matmul, (_t((3, m, k), dtype, seed, grad=True), _t((3, k, n), dtype, seed + 1, grad=True))
    else:
        w = _t((n, k), dtype, seed + 1, grad=True)
        fn, args = pk.linear, (a, w, _t((n,), dtype, seed + 2, grad=True) if op == "linear" else None)
    with pk.use_profile("engine" if engine else "matched"):
        assert_twin_matches_interpreter(fn, *args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_larger_shapes_reach_every_block_and_split(dtype, profile):
    """K = 1001: 31 full BLOCK_K blocks and a partial one; in the engine profile (8 rows) four chunks of 256
    (each 8 blocks) and a last one of 233; the backward reduces over 70 rows; N spans several panels."""
    x = _t((8, 1001), dtype, 1, grad=True)
    w = _t((150, 1001), dtype, 2, grad=True)
    b = _t((150,), dtype, 3, grad=True)
    with pk.use_profile(profile):
        assert_twin_matches_interpreter(pk.linear, x, w, b)
    a = _t((70, 65), dtype, 4, grad=True)
    with pk.use_profile(profile):
        assert_twin_matches_interpreter(pk.matmul, a, _t((65, 130), dtype, 5, grad=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_and_negative_zero(dtype):
    a = _specials(_t((6, 40), dtype, 7), 1).requires_grad_()
    b = _specials(_t((40, 9), dtype, 8), 2).requires_grad_()
    assert_twin_matches_interpreter(pk.matmul, a, b)
    # all products -0: the interpreter's sums start at +0, so the result is +0 (and -0 bias stays -0 + +0 = +0)
    neg = torch.full((3, 37), -0.0, dtype=dtype)
    assert_twin_matches_interpreter(pk.linear, neg, torch.ones(5, 37, dtype=dtype), torch.full((5,), -0.0, dtype=dtype))
    # overflow to inf in the 16-bit rounding, and in the engine's rounded partials
    big = _t((2, 300), dtype, 9, scale=3e4 if dtype == torch.float16 else 1e37)
    with pk.use_profile("engine"):
        assert_twin_matches_interpreter(pk.matmul, big, _t((300, 3), dtype, 10, scale=30.0))


def test_strided_operands_and_a_stride_0_operand():
    a = _t((40, 9), torch.bfloat16, 11).t()            # (9, 40) with strides (1, 9)
    b = _t((5, 40), torch.bfloat16, 12).t()            # (40, 5) with strides (1, 40)
    assert_twin_matches_interpreter(pk.matmul, a, b)
    ones = torch.ones((), dtype=torch.float16).expand(1, 33)   # the bias gradient's stride-0 ones
    assert_twin_matches_interpreter(pk.matmul, ones, _t((33, 7), torch.float16, 13))


def _direct(kernel_args, executor):
    kernel, grid, args, constexprs = kernel_args()
    with use_cpu_executor(executor), observe_launches() as records:
        launch(kernel, grid, *args, **constexprs)
    assert [r.executor for r in records] == ["twin" if executor == "twins" else "interpreter"]
    return args


@settings(max_examples=15)
@given(m=st.integers(1, 20), k=st.integers(0, 90), n=st.integers(1, 20), dtype=st.sampled_from(DTYPES),
       block_k=st.sampled_from([1, 4, 8, 16, 32, 64]), splits=st.integers(1, 4), k_chunk=st.integers(1, 50),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_direct_launch_follows_block_k_splits_and_chunk(m, k, n, dtype, block_k, splits, k_chunk, bias, seed):
    """The order-defining constexprs, beyond what the ops pass: any BLOCK_K, SPLITS and k_chunk (chunks past K
    run no block; a chunk need not be a multiple of BLOCK_K)."""
    a, b, bv = _t((m, k), dtype, seed), _t((k, n), dtype, seed + 1), _t((n,), dtype, seed + 2)

    def kernel_args():
        out = torch.full((m, n), 7.0, dtype=dtype)
        views = [kernel_view(t) for t in (a, b, bv, out)]
        grid = (triton.cdiv(m, 16) * triton.cdiv(n, 16),)
        return matmul_kernel, grid, (*views, m, n, k, k_chunk, *views[0].stride(), *views[1].stride(),
                                     *views[3].stride()), dict(
            KIND=KIND[dtype], HAS_BIAS=bias, SPLITS=splits, BLOCK_M=16, BLOCK_N=16,
            BLOCK_K=block_k, GROUP_M=1)

    want = _direct(kernel_args, "interpreter")[3]
    got = _direct(kernel_args, "twins")[3]
    assert torch.equal(got, want)


@pytest.mark.parametrize("splits", [1, 3])
def test_direct_bmm_launch_follows_splits(splits):
    nb, m, k, n, dtype = 5, 3, 77, 6, torch.float16
    a, b = _t((nb, k, m), dtype, 1).transpose(1, 2), _t((nb, k, n), dtype, 2)

    def kernel_args():
        out = torch.zeros((nb, m, n), dtype=dtype)
        av, bv, cv = kernel_view(a), kernel_view(b), kernel_view(out)
        return bmm_kernel, (triton.cdiv(nb, 2) * 1 * 1,), (av, bv, cv, nb, m, n, k, 32, *av.stride(), *bv.stride(),
                                                          *cv.stride()), dict(
            KIND=1, SPLITS=splits, BLOCK_BATCH=2, BLOCK_M=4, BLOCK_N=8, BLOCK_K=16)

    assert torch.equal(_direct(kernel_args, "twins")[2], _direct(kernel_args, "interpreter")[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_thread_and_two_threads_give_the_same_bits(dtype):
    x, w, b = _t((70, 130), dtype, 1), _t((200, 130), dtype, 2), _t((200,), dtype, 3)
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with pk.use_profile("engine"):
                outs.append((pk.linear(x, w, b), pk.linear(x[:3], w, b)))
    finally:
        torch.set_num_threads(saved)
    for one, two in zip(*outs):
        assert torch.equal(bits(one), bits(two))
