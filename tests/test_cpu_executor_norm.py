"""The RMSNorm twins (cpu_executor/norm.py) give the interpreter's bits: pk.rms_norm forward and both gradients,
every dtype, both profiles, odd widths over several blocks, one row, more than 512 rows (two backward programs,
so two weight-gradient partials), NaN/inf/-0; direct launches of the backward and of col_sum_kernel with any
BLOCK_ROWS and BLOCK_COLS (several programs, several chunks of partials)."""

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
)

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.kernels.norm import col_sum_kernel, rms_norm_bwd_kernel, rms_norm_fwd_kernel

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")


def _check(x, w, eps=1e-6):
    assert_twin_matches_interpreter(lambda x, w: pk.rms_norm(x, w, eps), x.requires_grad_(), w.requires_grad_())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_public_op_forward_and_gradients(dtype, profile):
    with pk.use_profile(profile):
        _check(rand((1, 5), dtype, 1), rand((5,), dtype, 2))
        _check(rand((3, 128), dtype, 3, 10.0), rand((128,), dtype, 4))
        _check(rand((2, 7, 300), dtype, 5), rand((300,), dtype, 6), eps=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_than_512_rows_give_two_partials(dtype):
    """The backward's BLOCK_ROWS is 512 (not fitted to the rows: it orders the weight-gradient sum)."""
    _check(rand((600, 40), dtype, 7), rand((40,), dtype, 8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_and_negative_zero(dtype):
    x = specials(rand((9, 150), dtype, 9), 10, count=10)
    x[4] = -0.0                                     # ss = +0, rstd = 1/sqrt(eps)
    _check(x, specials(rand((150,), dtype, 11), 12, count=3))
    _check(torch.full((3, 129), -0.0, dtype=dtype), rand((129,), dtype, 13), eps=0.0)   # 0 * inf


@settings(max_examples=10)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       w_dtype=st.sampled_from(DTYPES), special=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_small_shapes(rows, cols, dtype, w_dtype, special, seed):
    x = rand((rows, cols), dtype, seed, 3.0)
    _check(specials(x, seed) if special else x, rand((cols,), w_dtype, seed + 1))


@settings(max_examples=10)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       block_rows=st.sampled_from([1, 2, 4, 16]), block_cols=st.sampled_from([1, 2, 8, 32]),
       special=st.booleans(), seed=st.integers(0, 2**16))
def test_direct_launches_follow_block_rows_and_block_cols(rows, cols, dtype, block_rows, block_cols, special, seed):
    """Forward, backward (one partial per program of BLOCK_ROWS rows) and col_sum over chunks of BLOCK_ROWS partials."""
    x = rand((rows, cols), dtype, seed, 2.0)
    x = specials(x, seed) if special else x
    w, dy = rand((cols,), dtype, seed + 1), rand((rows, cols), dtype, seed + 2)
    blocks = dict(BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
    grid = row_grid(rows, block_rows)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)          # any per-row state will do
    parts = row_grid(rows, block_rows)[0]

    def forward():
        y = out((rows, cols), dtype)
        return rms_norm_fwd_kernel, grid, (*views(x, w, y), out((rows,)), rows, cols, x.stride(0), 1e-6), dict(
            blocks, KIND=KIND[dtype], W_KIND=KIND[dtype])

    def backward():
        dx, dw_part = out((rows, cols), dtype), out((parts, cols))
        return rms_norm_bwd_kernel, grid, (*views(x, w, dy), rstd, *views(dx), dw_part, rows, cols, x.stride(0),
                                           dy.stride(0)), dict(blocks, KIND=KIND[dtype], W_KIND=KIND[dtype],
                                                               DY_KIND=KIND[dtype])

    partials = specials(rand((parts * 3, cols), torch.float32, seed + 3), seed, count=2 if special else 0)

    def col_sum():
        total = out((cols,), dtype)
        return col_sum_kernel, row_grid(cols, block_cols), (partials, views(total)[0], parts * 3, cols), dict(
            blocks, OUT_KIND=KIND[dtype])

    assert_direct_launch_matches(forward, outputs=(2, 3))
    assert_direct_launch_matches(backward, outputs=(4, 5))
    assert_direct_launch_matches(col_sum, outputs=(1,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_col_sum_adds_chunks_of_partials_in_order(dtype):
    """11 partial rows in chunks of 4 (the last one masked), 37 columns in blocks of 8; sums that cancel."""
    partials = rand((11, 37), torch.float32, 18) * torch.logspace(-6, 6, 11)[:, None]

    def col_sum():
        total = out((37,), dtype)
        return col_sum_kernel, row_grid(37, 8), (partials, views(total)[0], 11, 37), dict(
            BLOCK_ROWS=4, BLOCK_COLS=8, OUT_KIND=KIND[dtype])

    assert_direct_launch_matches(col_sum, outputs=(1,))


@pytest.mark.parametrize("block_rows", [1, 4])
def test_nans_of_both_signs(block_rows):
    """Which NaN an add or multiply of two keeps depends on the interpreter's operand shapes (BLOCK_ROWS 1:
    a 1-D loop over a broadcast scalar); one row through the public op is such a launch."""
    x = signed_nans(rand((5, 190), torch.float16, 21), 22, count=20)
    w, dy = signed_nans(rand((190,), torch.float16, 23), 24), signed_nans(rand((5, 190), torch.float16, 25), 26)
    rstd = signed_nans(rand((5,), torch.float32, 27), 28, count=2)
    blocks = dict(BLOCK_ROWS=block_rows, BLOCK_COLS=128, KIND=1, W_KIND=1)

    def forward():
        return rms_norm_fwd_kernel, row_grid(5, block_rows), (*views(x, w, out((5, 190), torch.float16)), out((5,)),
                                                              5, 190, 190, 1e-6), blocks

    def backward():
        dx, dw_part = out((5, 190), torch.float16), out((row_grid(5, block_rows)[0], 190))
        args = (*views(x, w, dy), rstd, *views(dx), dw_part, 5, 190, 190, 190)
        return rms_norm_bwd_kernel, row_grid(5, block_rows), args, dict(blocks, DY_KIND=1)

    assert_direct_launch_matches(forward, outputs=(2, 3))
    assert_direct_launch_matches(backward, outputs=(4, 5))
    _check(x[:1].clone(), w.clone())


def test_strided_rows_and_mixed_dtypes():
    """Row strides beyond the width; a bf16 weight for an fp16 x; an fp32 dy (DY_KIND differs)."""
    x = rand((6, 200), torch.float16, 14)[:, 20:170].requires_grad_()
    w = rand((150,), torch.bfloat16, 15).requires_grad_()
    assert_twin_matches_interpreter(lambda x, w: pk.rms_norm(x, w).float() * 3, x, w)


def test_one_thread_and_two_threads_give_the_same_bits():
    x, w = rand((37, 400), torch.bfloat16, 16).requires_grad_(), rand((400,), torch.bfloat16, 17).requires_grad_()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_under("twins", pk.rms_norm, x, w)
        torch.set_num_threads(2)
        two = run_under("twins", pk.rms_norm, x, w)
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(one[0] + one[1], two[0] + two[1]))
