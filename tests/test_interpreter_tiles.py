"""Interpreter tile tables change no bit (issue 14): BLOCK_M / BLOCK_N / M buckets / batch items
per program are free under the interpreter, BLOCK_K is not.

Under the interpreter a matmul element is the ordered fp32 sum of its BLOCK_K products per K
block, whatever the tile around it, provided the tile keeps BLOCK_N >= 2: with one column the
reduced K axis becomes numpy's contiguous axis and numpy sums it pairwise (checked by hand:
a BLOCK_N=1 table changes pk.linear's bits). So tables are run against each other here.
"""

import contextlib

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.profiles import MatmulConfig, MBucket

pytestmark = pytest.mark.skipif(pk.active_backend() != "interpreter", reason="interpreter tile tables only")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The table before M buckets (one 256 x 128 tile), and small odd tiles with BLOCK_N = 2.
SINGLE = (MBucket(None, MatmulConfig(block_m=256, block_n=128, block_k=32)),)
NARROW = (MBucket(40, MatmulConfig(block_m=16, block_n=2, block_k=32)),
          MBucket(None, MatmulConfig(block_m=32, block_n=16, block_k=32)))
NARROW_BATCHED = MatmulConfig(block_m=16, block_n=8, block_k=32, block_batch=2)
# Calls of <= 64 rows (decode steps) in 64 x 256 tiles: ~15% less CPU per RL step than SINGLE. Not in
# profiles.py yet: tests/test_matmul.py asks the interpreter table for a config without m.
BUCKETED = (MBucket(64, MatmulConfig(block_m=64, block_n=256, block_k=32)), SINGLE[0])


@contextlib.contextmanager
def interpreter_matmul_table(buckets, batched=None):
    """Run the block with another interpreter matmul table (same BLOCK_K), then restore it."""
    saved = {name: profiles._MATMUL_TABLE[("interpreter", name)] for name in DTYPES}
    try:
        for name, (_, batched_cfg) in saved.items():
            profiles._MATMUL_TABLE[("interpreter", name)] = (buckets, batched or batched_cfg)
            profiles.matmul_buckets_for("interpreter", name)  # the bucket rules hold for the swapped table
        yield
    finally:
        profiles._MATMUL_TABLE.update({("interpreter", name): v for name, v in saved.items()})


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _matmul_family(dtype, m, n, k, seed):
    """linear forward and both gradients (their matmuls have M = m, n and k rows), and a batched matmul."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype).requires_grad_()
    w = torch.randn(n, k, generator=g).to(dtype).requires_grad_()
    y = pk.linear(x, w)
    dx, dw = torch.autograd.grad(y, [x, w], torch.randn(m, n, generator=g).to(dtype))
    a, b = torch.randn(5, m, k, generator=g).to(dtype), torch.randn(5, k, n, generator=g).to(dtype)
    return [y, dx, dw, pk.matmul(a, b)]


@settings(max_examples=4)
@given(dtype=st.sampled_from(sorted(DTYPES)), m=st.integers(1, 100), n=st.integers(1, 100), k=st.integers(1, 80),
       seed=st.integers(0, 2**16))
@example(dtype="fp32", m=30, n=24, k=70, seed=0)  # every product in NARROW's BLOCK_N = 2 bucket, many K terms
def test_interpreter_tables_agree_bitwise(dtype, m, n, k, seed):
    active = _matmul_family(DTYPES[dtype], m, n, k, seed)
    for buckets, batched in ((SINGLE, None), (BUCKETED, None), (NARROW, NARROW_BATCHED)):
        with interpreter_matmul_table(buckets, batched):
            other = _matmul_family(DTYPES[dtype], m, n, k, seed)
        for i, (a, b) in enumerate(zip(active, other)):
            assert torch.equal(_bits(a), _bits(b)), f"output {i} differs with table {buckets}"


@settings(max_examples=6)
@given(dtype=st.sampled_from(sorted(DTYPES)), m=st.integers(65, 300), n=st.integers(1, 300),
       k=st.integers(1, 80), data=st.data())
def test_rows_equal_in_every_interpreter_bucket(dtype, m, n, k, data):
    """Rows of a launch in the large bucket equal the same rows launched alone in the small one."""
    g = torch.Generator().manual_seed(m * n + k)
    x, w = torch.randn(m, k, generator=g).to(DTYPES[dtype]), torch.randn(n, k, generator=g).to(DTYPES[dtype])
    rows = data.draw(st.integers(1, BUCKETED[0].max_rows))
    start = data.draw(st.integers(0, m - rows))
    with interpreter_matmul_table(BUCKETED):
        whole = pk.linear(x, w)
        alone = pk.linear(x[start:start + rows], w)
    assert torch.equal(_bits(alone), _bits(whole[start:start + rows]))


def test_interpreter_tiles_keep_block_n_at_least_two():
    for name in DTYPES:
        configs = [b.config for b in profiles.matmul_buckets_for("interpreter", name)]
        configs.append(profiles.matmul_config_for("interpreter", name, batched=True))
        assert all(c.block_n >= 2 for c in configs), configs
        assert profiles.lm_head_config_for("interpreter", name).block_v >= 2


def test_narrow_table_really_differs_in_tiles():
    # the comparison above is only worth something if the tables tile differently
    with interpreter_matmul_table(NARROW, NARROW_BATCHED):
        assert profiles.matmul_config(torch.float32, m=5) == NARROW[0].config
        assert profiles.matmul_config(torch.float32, batched=True).block_batch == 2
    assert profiles.matmul_config(torch.float32, m=5) != NARROW[0].config
