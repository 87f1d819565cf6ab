"""The token log-prob twins (cpu_executor/token_logprobs.py) give the interpreter's bits: pk.token_logprobs with
and without entropy and temperature, forward and gradient (through the log-prob, and the entropy), every dtype,
both profiles, vocabularies over several blocks, one row, NaN/inf/-0, empty rows, -0/+0 ties of the running max;
direct launches with any BLOCK_ROWS and BLOCK_COLS."""

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
from precision_kernels.kernels.token_logprobs import token_logprobs_bwd_kernel, token_logprobs_fwd_kernel
from precision_kernels.ops._common import launch

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")


def _tokens(shape, vocab, seed):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _check(logits, tokens, temperature=1.0, entropy=False):
    assert_twin_matches_interpreter(
        lambda x: pk.token_logprobs(x, tokens, temperature=temperature, return_entropy=entropy),
        logits.requires_grad_())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
@pytest.mark.parametrize("entropy", [False, True])
def test_public_op_forward_and_gradients(dtype, profile, entropy):
    with pk.use_profile(profile):
        _check(rand((1, 5), dtype, 1), _tokens((1,), 5, 1), entropy=entropy)
        _check(rand((3, 128), dtype, 2, 4.0), _tokens((3,), 128, 2), 0.7, entropy)
        _check(rand((2, 5, 300), dtype, 3, 3.0), _tokens((2, 5), 300, 3), 1.3, entropy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_negative_zero_empty_rows_and_zero_ties(dtype):
    x = specials(rand((9, 270), dtype, 4), 5, count=12)
    x[3] = float("-inf")                      # empty row: -inf, entropy 0, gradient 0
    x[4, :200] = float("-inf")                # leading empty blocks
    x[5, 7] = float("inf")                    # +inf in the first of three blocks: the entropy's NaN
    x[6, 140] = float("inf")
    tokens = _tokens((9,), 270, 6)
    tokens[4] = 7                             # a target in an empty block
    _check(x, tokens, entropy=True)
    _check(x, tokens, 0.5)
    for rows in (1, 3, 21):
        _check(zero_ties(rows, 300, dtype), _tokens((rows,), 300, rows), entropy=True)


@settings(max_examples=10)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), dtype=st.sampled_from(DTYPES), entropy=st.booleans(),
       temperature=st.sampled_from([1.0, 0.6, 2.5]), special=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_small_shapes(rows, cols, dtype, entropy, temperature, special, seed):
    x = rand((rows, cols), dtype, seed, 4.0)
    _check(specials(x, seed) if special else x, _tokens((rows,), cols, seed), temperature, entropy)


def _launches(x, tokens, temperature, entropy, block_rows, block_cols):
    rows, n = x.shape
    blocks = dict(KIND=KIND[x.dtype], BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
    grid = row_grid(rows, block_rows)

    def forward():
        return token_logprobs_fwd_kernel, grid, (views(x)[0], tokens, out((rows,)), out((rows,)), out((rows,)),
                                                 out((rows,)), rows, n, x.stride(0), temperature), dict(
            blocks, WITH_ENTROPY=entropy)

    state = forward()
    launch(state[0], state[1], *state[2], **state[3])          # the state the backward reads
    _, _, logprob, ent, row_max, row_sum = state[2][:6]
    g_logprob, g_entropy = rand((rows,), torch.float32, 7), rand((rows,), torch.float32, 8)

    def backward():
        return token_logprobs_bwd_kernel, grid, (views(x)[0], tokens, g_logprob, g_entropy, ent, row_max, row_sum,
                                                 *views(out((rows, n), x.dtype)), rows, n, x.stride(0),
                                                 temperature), dict(blocks, HAS_G_ENTROPY=entropy)

    return forward, backward


@settings(max_examples=12)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), dtype=st.sampled_from(DTYPES), entropy=st.booleans(),
       block_rows=st.sampled_from([1, 2, 4, 16, 32]), block_cols=st.sampled_from([1, 2, 4, 8, 32]),
       data=st.sampled_from(["plain", "specials", "ties"]), seed=st.integers(0, 2**16))
def test_direct_launch_follows_block_rows_and_block_cols(rows, cols, dtype, entropy, block_rows, block_cols, data,
                                                         seed):
    if data == "ties":
        x = zero_ties(rows, cols, dtype, block_cols)
    else:
        x = rand((rows, cols), dtype, seed, 3.0)
        x = specials(x, seed) if data == "specials" else x
    forward, backward = _launches(x, _tokens((rows,), cols, seed), 0.8, entropy, block_rows, block_cols)
    assert_direct_launch_matches(forward, outputs=(2, 3, 4, 5) if entropy else (2, 4, 5))
    assert_direct_launch_matches(backward, outputs=(7,))


@pytest.mark.parametrize("block_rows", [1, 4, 32])
def test_direct_launch_zero_ties_of_the_running_max(block_rows):
    x = zero_ties(20, 40, torch.float32, 32)
    forward, backward = _launches(x, _tokens((20,), 40, 9), 1.0, True, block_rows, 32)
    assert_direct_launch_matches(forward, outputs=(2, 3, 4, 5))
    assert_direct_launch_matches(backward, outputs=(7,))


@pytest.mark.parametrize("block_rows", [1, 4])
def test_nans_of_both_signs(block_rows):
    """Which NaN an add or multiply of two keeps depends on the interpreter's operand shapes (``Rows.op``)."""
    x = signed_nans(rand((5, 300), torch.bfloat16, 21), 22, count=20)
    forward, backward = _launches(x, _tokens((5,), 300, 23), 0.8, True, block_rows, 128)
    assert_direct_launch_matches(forward, outputs=(2, 3, 4, 5))
    assert_direct_launch_matches(backward, outputs=(7,))
    _check(x[:1].clone(), _tokens((1,), 300, 24), entropy=True)


def test_strided_rows():
    x = rand((6, 400), torch.float16, 10)[:, 30:330]
    _check(x.detach(), _tokens((6,), 300, 11), 0.9, True)


def test_one_thread_and_two_threads_give_the_same_bits():
    x, tokens = specials(rand((37, 400), torch.bfloat16, 12), 13).requires_grad_(), _tokens((37,), 400, 14)
    fn = lambda x: pk.token_logprobs(x, tokens, return_entropy=True)  # noqa: E731
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_under("twins", fn, x)
        torch.set_num_threads(2)
        two = run_under("twins", fn, x)
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(one[0] + one[1], two[0] + two[1]))
