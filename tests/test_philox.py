"""The sampler's counter-based noise (kernels/lm_head.py ``philox_bits`` / ``open_uniform``) against an
independent numpy Philox4x32-10 (tests/philox_reference.py), bit for bit."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given
from hypothesis import strategies as st
from philox_reference import open_uniform, philox4x32_10, sample_bits

import precision_kernels as pk
from precision_kernels.kernels.lm_head import open_uniform as kernel_open_uniform
from precision_kernels.kernels.lm_head import philox_bits
from precision_kernels.ops._common import launch

DEV = pk.backend.device()
INT64_EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 0x243F6A8885A308D3]

# Random123's known answers for Philox4x32-10 (tests/kat_vectors): counter, key, result.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@triton.jit
def _stream_kernel(seeds_ptr, bits_ptr, u_ptr, n_rows, n_cols, col0, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """bits[r, j] and u[r, j] of the sampler's noise for seed r and column col0 + j."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    local = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (local < n_cols)[None, :]
    seeds = tl.load(seeds_ptr + rows, mask=rows < n_rows, other=0)
    bits = philox_bits(seeds, col0 + local)
    offsets = rows[:, None] * n_cols + local[None, :]
    tl.store(bits_ptr + offsets, bits.to(tl.int32, bitcast=True), mask=mask)
    tl.store(u_ptr + offsets, kernel_open_uniform(bits), mask=mask)


def _kernel_stream(seeds: list[int], n_cols: int, col0: int = 0):
    s = torch.tensor(seeds, dtype=torch.int64, device=DEV)
    bits = torch.empty((len(seeds), n_cols), dtype=torch.int32, device=DEV)
    u = torch.empty((len(seeds), n_cols), dtype=torch.float32, device=DEV)
    grid = (triton.cdiv(len(seeds), 16), triton.cdiv(n_cols, 32))
    launch(_stream_kernel, grid, s, bits, u, len(seeds), n_cols, col0, BLOCK_R=16, BLOCK_C=32)
    return bits.cpu().numpy().view(np.uint32), u.cpu().numpy()


def _assert_stream_equals_numpy(seeds: list[int], n_cols: int, col0: int = 0):
    bits, u = _kernel_stream(seeds, n_cols, col0)
    ref = sample_bits(np.array(seeds, dtype=np.int64), np.arange(col0, col0 + n_cols))
    np.testing.assert_array_equal(bits, ref)
    ref_u = open_uniform(ref)
    np.testing.assert_array_equal(u.view(np.uint32), ref_u.view(np.uint32))
    assert np.all((u > 0) & (u < 1))


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_numpy_reference_gives_random123_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_open_uniform_is_exact_and_never_reaches_0_or_1():
    edges = np.array([0, 1, 511, 512, 2**31, 2**32 - 512, 2**32 - 1], dtype=np.uint32)
    u = open_uniform(edges).astype(np.float64)
    k = (edges.astype(np.int64) >> 9).astype(np.float64)
    np.testing.assert_array_equal(u, (2 * k + 1) / 2.0**24)  # no rounding anywhere
    assert u.min() == 2.0**-24 and u.max() == 1 - 2.0**-24
    gumbel = -np.log(-np.log(open_uniform(edges)))
    assert np.all(np.isfinite(gumbel))


@pytest.mark.skipif(not pk.backend.INTERPRETED, reason="the interpreter's stream; the GPU's is the test below")
@given(seeds=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20),
       n_cols=st.integers(1, 70), col0=st.sampled_from([0, 1, 4095, 2**31 - 71]))
def test_interpreter_stream_equals_numpy_philox(seeds, n_cols, col0):
    _assert_stream_equals_numpy(seeds, n_cols, col0)


@pytest.mark.skipif(not pk.backend.INTERPRETED, reason="the interpreter's stream; the GPU's is the test below")
def test_interpreter_stream_edge_seeds():
    _assert_stream_equals_numpy(INT64_EDGES, 300)


@pytest.mark.gpu
@pytest.mark.skipif(pk.backend.INTERPRETED,
                    reason="needs a CUDA device: checks that the compiled kernel gives the same integers as numpy "
                           "(and so as the interpreter)")
def test_gpu_stream_equals_numpy_philox():
    rng = np.random.default_rng(0)
    seeds = INT64_EDGES + [int(s) for s in rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)]
    _assert_stream_equals_numpy(seeds, 1000)
    _assert_stream_equals_numpy(seeds[:20], 100, col0=2**31 - 101)
