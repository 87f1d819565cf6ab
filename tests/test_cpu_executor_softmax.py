"""The softmax twins (cpu_executor/softmax.py) give the interpreter's bits: pk.softmax and pk.log_softmax,
forward and gradient, every dtype, both profiles, odd widths over several blocks, one row, NaN/inf/-0,
empty (all -inf) rows, -0/+0 ties of the running max; direct launches with any BLOCK_ROWS and BLOCK_COLS."""

import pytest
import torch
from executor_helpers import assert_twin_matches_interpreter, bits, run_under
from hypothesis import given, settings
from hypothesis import strategies as st
from row_twin_helpers import (
    DTYPES,
    KIND,
    assert_direct_launch_matches,
    out,
    rand,
    row_grid,
    signed_nans,
    specials,
    views,
    zero_ties,
)

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.kernels.softmax import softmax_bwd_kernel, softmax_fwd_kernel
from precision_kernels.ops._common import launch

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

OPS = {"softmax": pk.softmax, "log_softmax": pk.log_softmax}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_public_ops_forward_and_gradient(dtype, profile, op):
    """One row; 3 rows of exactly one block; 7 rows of 300 (two full blocks of 128 and a partial one);
    a softmax over dim 0 with a scale (the op moves the dim last and copies)."""
    fn = OPS[op]
    with pk.use_profile(profile):
        assert_twin_matches_interpreter(lambda x: fn(x, dim=-1), rand((1, 5), dtype, 1).requires_grad_())
        assert_twin_matches_interpreter(lambda x: fn(x, dim=-1), rand((3, 128), dtype, 2, 4.0).requires_grad_())
        x = rand((7, 300), dtype, 3, 3.0).requires_grad_()
        assert_twin_matches_interpreter(lambda x: fn(x, dim=-1, scale=0.3), x)
        assert_twin_matches_interpreter(lambda x: fn(x, dim=0, scale=1.7), rand((133, 5), dtype, 4).requires_grad_())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_nan_inf_negative_zero_empty_rows_and_zero_ties(dtype, op):
    fn = OPS[op]
    x = specials(rand((9, 270), dtype, 5), 6, count=12)
    x[3] = float("-inf")                                   # an empty row: zeros / -inf, gradient 0 / dy
    x[4, :200] = float("-inf")                             # leading empty blocks
    x[5, 140] = float("inf")                               # +inf only in the second block
    assert_twin_matches_interpreter(lambda x: fn(x, dim=-1), x.requires_grad_())
    for rows in (1, 3, 21):      # one program of 1, 4 and 32 rows: np.fmax keeps another zero in each
        assert_twin_matches_interpreter(lambda x: fn(x, dim=-1), zero_ties(rows, 300, dtype).requires_grad_())
    assert_twin_matches_interpreter(lambda x: fn(x, dim=-1), torch.full((3, 129), -0.0, dtype=dtype).requires_grad_())


@settings(max_examples=10)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), dtype=st.sampled_from(DTYPES), op=st.sampled_from(sorted(OPS)),
       scale=st.sampled_from([1.0, 0.125, 3.0]), special=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_small_shapes(rows, cols, dtype, op, scale, special, seed):
    x = rand((rows, cols), dtype, seed, 5.0)
    if special:
        x = specials(x, seed)
    assert_twin_matches_interpreter(lambda x: OPS[op](x, dim=-1, scale=scale), x.requires_grad_())


def _launches(x, dy, log, scale, block_rows, block_cols):
    """(forward launch maker, backward launch maker) on x (rows, n) with the given tiles."""
    rows, n = x.shape
    dtype = x.dtype
    blocks = dict(KIND=KIND[dtype], LOG=log, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
    row_max, row_sum = out((rows,)), out((rows,))

    def forward():
        y, m, s = out((rows, n), dtype), out((rows,)), out((rows,))
        xv, yv = views(x, y)
        return softmax_fwd_kernel, row_grid(rows, block_rows), (xv, yv, m, s, rows, n, x.stride(0), scale), blocks

    def backward():
        dx = out((rows, n), dtype)
        xv, dyv, dxv = views(x, dy, dx)
        args = (xv, dyv, dxv, row_max, row_sum, rows, n, x.stride(0), dy.stride(0), scale)
        return softmax_bwd_kernel, row_grid(rows, block_rows), args, dict(blocks, DY_KIND=KIND[dy.dtype])

    kernel, grid, args, constexprs = forward()          # the state the backward reads
    launch(kernel, grid, *args, **constexprs)
    row_max.copy_(args[2])
    row_sum.copy_(args[3])
    return forward, backward


@settings(max_examples=12)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), dtype=st.sampled_from(DTYPES), log=st.booleans(),
       block_rows=st.sampled_from([1, 2, 4, 16, 32]), block_cols=st.sampled_from([1, 2, 4, 8, 32]),
       data=st.sampled_from(["plain", "specials", "ties"]), seed=st.integers(0, 2**16))
def test_direct_launch_follows_block_rows_and_block_cols(rows, cols, dtype, log, block_rows, block_cols, data, seed):
    if data == "ties":
        x = zero_ties(rows, cols, dtype, block_cols)
    else:
        x = rand((rows, cols), dtype, seed, 3.0)
        x = specials(x, seed) if data == "specials" else x
    dy = rand((rows, cols), dtype, seed + 1)
    forward, backward = _launches(x, dy, log, 0.5, block_rows, block_cols)
    assert_direct_launch_matches(forward, outputs=(1, 2, 3))
    assert_direct_launch_matches(backward, outputs=(2,))


@pytest.mark.parametrize("block_rows", [1, 4, 32])
def test_direct_launch_zero_ties_of_the_running_max(block_rows):
    """The running max's -0/+0 ties: the zero np.fmax keeps depends on the row's lane in its program."""
    x = zero_ties(20, 40, torch.float32, 32)
    forward, backward = _launches(x, rand((20, 40), torch.float32, 1), True, 0.5, block_rows, 32)
    assert_direct_launch_matches(forward, outputs=(1, 2, 3))
    assert_direct_launch_matches(backward, outputs=(2,))


@pytest.mark.parametrize("block_rows", [1, 4])
@pytest.mark.parametrize("log", [False, True])
def test_nans_of_both_signs(block_rows, log):
    """Which NaN an add or multiply of two keeps depends on the interpreter's operand shapes (BLOCK_ROWS 1:
    a 1-D loop over a broadcast scalar); one row through the public op is such a launch."""
    x = signed_nans(rand((5, 190), torch.float16, 21), 22, count=20)
    dy = signed_nans(rand((5, 190), torch.float16, 23), 24, count=20)
    forward, backward = _launches(x, dy, log, 0.5, block_rows, 128)
    assert_direct_launch_matches(forward, outputs=(1, 2, 3))
    assert_direct_launch_matches(backward, outputs=(2,))
    assert_twin_matches_interpreter(lambda x: OPS["log_softmax" if log else "softmax"](x, dim=-1),
                                    x[:1].clone().requires_grad_())


def test_strided_rows_and_a_dy_of_another_dtype():
    """Row strides beyond the width (a column slice) and an fp32 dy for a bf16 x (DY_KIND differs)."""
    x = rand((6, 200), torch.bfloat16, 8)[:, 10:150]
    dy = rand((6, 140), torch.float32, 9)
    forward, backward = _launches(x, dy, False, 1.0, 8, 64)
    assert_direct_launch_matches(forward, outputs=(1, 2, 3))
    assert_direct_launch_matches(backward, outputs=(2,))


def test_one_thread_and_two_threads_give_the_same_bits():
    x = specials(rand((37, 400), torch.float16, 10), 11).requires_grad_()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_under("twins", lambda x: pk.log_softmax(x, dim=-1), x)
        torch.set_num_threads(2)
        two = run_under("twins", lambda x: pk.log_softmax(x, dim=-1), x)
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(one[0] + one[1], two[0] + two[1]))
