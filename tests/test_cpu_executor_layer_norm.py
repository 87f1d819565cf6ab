"""The LayerNorm twins (cpu_executor/layer_norm.py) give the interpreter's bits: pk.layer_norm forward and every
gradient, with and without weight and bias, every dtype, both profiles, odd widths over several blocks, one row,
more than 512 rows (two backward programs), NaN/inf/-0, a constant row (variance 0); direct launches with any
BLOCK_ROWS and BLOCK_COLS and each of HAS_W, WANT_DW, WANT_DB."""

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
from precision_kernels.kernels.layer_norm import layer_norm_bwd_kernel, layer_norm_fwd_kernel

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")


def _check(x, w=None, b=None, eps=1e-5):
    args = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def fn(*ts):
        ts = list(ts)
        return pk.layer_norm(ts.pop(0), ts.pop(0) if w is not None else None, ts.pop(0) if b is not None else None, eps)

    assert_twin_matches_interpreter(fn, *args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_public_op_forward_and_gradients(dtype, profile):
    with pk.use_profile(profile):
        _check(rand((1, 5), dtype, 1), rand((5,), dtype, 2), rand((5,), dtype, 3))
        _check(rand((3, 128), dtype, 4, 10.0) + 50, rand((128,), dtype, 5))              # |mean| >> std, no bias
        _check(rand((2, 7, 300), dtype, 6), None, rand((300,), dtype, 7), eps=1e-3)      # bias only
        _check(rand((5, 131), dtype, 8))                                                 # neither


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_than_512_rows_give_two_partials(dtype):
    _check(rand((600, 40), dtype, 9), rand((40,), dtype, 10), rand((40,), dtype, 11))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_negative_zero_and_constant_rows(dtype):
    x = specials(rand((9, 150), dtype, 12), 13, count=10)
    x[4] = -0.0
    x[5] = 3.0                                        # variance 0: rstd = 1/sqrt(eps)
    _check(x, specials(rand((150,), dtype, 14), 15, count=3), rand((150,), dtype, 16))
    _check(torch.full((3, 129), 2.0, dtype=dtype), rand((129,), dtype, 17), None, eps=0.0)   # rstd = inf


@settings(max_examples=10)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       affine=st.sampled_from(["wb", "w", "b", ""]), special=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_small_shapes(rows, cols, dtype, affine, special, seed):
    x = rand((rows, cols), dtype, seed, 3.0)
    w = rand((cols,), dtype, seed + 1) if "w" in affine else None
    b = rand((cols,), dtype, seed + 2) if "b" in affine else None
    _check(specials(x, seed) if special else x, w, b)


@settings(max_examples=10)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       block_rows=st.sampled_from([1, 2, 4, 16]), block_cols=st.sampled_from([1, 2, 8, 32]),
       has_w=st.booleans(), has_b=st.booleans(), want_db=st.booleans(), special=st.booleans(),
       seed=st.integers(0, 2**16))
def test_direct_launches_follow_block_rows_and_block_cols(rows, cols, dtype, block_rows, block_cols, has_w, has_b,
                                                          want_db, special, seed):
    x = rand((rows, cols), dtype, seed, 2.0)
    x = specials(x, seed) if special else x
    w, b, dy = rand((cols,), dtype, seed + 1), rand((cols,), dtype, seed + 2), rand((rows, cols), dtype, seed + 3)
    blocks = dict(BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, KIND=KIND[dtype], W_KIND=KIND[dtype])
    grid = row_grid(rows, block_rows)
    mean = x.float().mean(-1)
    rstd = torch.rsqrt(x.float().var(-1, unbiased=False) + 1e-5)     # any per-row state will do
    parts = grid[0]

    def forward():
        y = out((rows, cols), dtype)
        return layer_norm_fwd_kernel, grid, (*views(x, w, b, y), out((rows,)), out((rows,)), rows, cols,
                                             x.stride(0), 1e-5), dict(blocks, B_KIND=KIND[dtype], HAS_W=has_w,
                                                                      HAS_B=has_b)

    def backward():
        dx, dw_part, db_part = out((rows, cols), dtype), out((parts, cols)), out((parts, cols))
        return layer_norm_bwd_kernel, grid, (*views(x, w, dy), mean, rstd, *views(dx), dw_part, db_part, rows, cols,
                                             x.stride(0), dy.stride(0)), dict(
            blocks, DY_KIND=KIND[dtype], HAS_W=has_w, WANT_DW=has_w, WANT_DB=want_db)

    assert_direct_launch_matches(forward, outputs=(3, 4, 5))
    assert_direct_launch_matches(backward, outputs=(5,) + ((6,) if has_w else ()) + ((7,) if want_db else ()))


@pytest.mark.parametrize("block_rows", [1, 4])
def test_nans_of_both_signs(block_rows):
    """Which NaN an add or multiply of two keeps depends on the interpreter's operand shapes (``Rows.op``)."""
    x = signed_nans(rand((5, 190), torch.bfloat16, 21), 22, count=20)
    w, b = signed_nans(rand((190,), torch.bfloat16, 23), 24), signed_nans(rand((190,), torch.bfloat16, 25), 26)
    dy = signed_nans(rand((5, 190), torch.bfloat16, 27), 28)
    mean, rstd = signed_nans(rand((5,), torch.float32, 29), 30, 2), signed_nans(rand((5,), torch.float32, 31), 32, 2)
    grid = row_grid(5, block_rows)
    blocks = dict(BLOCK_ROWS=block_rows, BLOCK_COLS=128, KIND=2, W_KIND=2)

    def forward():
        return layer_norm_fwd_kernel, grid, (*views(x, w, b, out((5, 190), torch.bfloat16)), out((5,)), out((5,)), 5,
                                             190, 190, 1e-5), dict(blocks, B_KIND=2, HAS_W=True, HAS_B=True)

    def backward():
        return layer_norm_bwd_kernel, grid, (*views(x, w, dy), mean, rstd, *views(out((5, 190), torch.bfloat16)),
                                             out((grid[0], 190)), out((grid[0], 190)), 5, 190, 190, 190), dict(
            blocks, DY_KIND=2, HAS_W=True, WANT_DW=True, WANT_DB=True)

    assert_direct_launch_matches(forward, outputs=(3, 4, 5))
    assert_direct_launch_matches(backward, outputs=(5, 6, 7))
    _check(x[:1].clone(), w.clone(), b.clone())


def test_strided_rows_and_mixed_dtypes():
    x = rand((6, 200), torch.bfloat16, 18)[:, 20:170].requires_grad_()
    w, b = rand((150,), torch.float32, 19).requires_grad_(), rand((150,), torch.float16, 20).requires_grad_()
    assert_twin_matches_interpreter(lambda x, w, b: pk.layer_norm(x, w, b).float() * 3, x, w, b)


def test_one_thread_and_two_threads_give_the_same_bits():
    x, w = rand((37, 400), torch.float16, 21).requires_grad_(), rand((400,), torch.float16, 22).requires_grad_()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_under("twins", lambda x, w: pk.layer_norm(x, w, None), x, w)
        torch.set_num_threads(2)
        two = run_under("twins", lambda x, w: pk.layer_norm(x, w, None), x, w)
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(one[0] + one[1], two[0] + two[1]))
