"""Interpreter tile tables change no bit: BLOCK_M / BLOCK_N / M buckets / batch items
per program are free under the interpreter, BLOCK_K is not, except for a call whose K fits one
block. The shipped interpreter tables fit each call's tiles to its shape (``FittedTiles``); they are
run here against fixed tables (the 256 x 128 tile they replace, the M buckets before them, narrow
odd tiles). Both forms: the 2-D matmul and the batched one (a decode step's attention).

Under the interpreter a matmul element is the ordered fp32 sum of its BLOCK_K products per K
block, whatever the tile around it, provided the tile keeps BLOCK_N >= 2: a K slice of one element
makes K numpy's contiguous axis, which numpy sums pairwise (checked by hand on the earlier K-inner
layout, where a BLOCK_N=1 table changed pk.linear's bits). So tables are run against each other here.
"""

import contextlib
import dataclasses

import pytest
import torch
from families import row_samples
from hypothesis import example, given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.profiles import FittedTiles, MatmulConfig, MBucket

pytestmark = pytest.mark.skipif(pk.active_backend() != "interpreter", reason="interpreter tile tables only")

# Fitted tiles change the interpreter's programs; CPU twins ignore tiles, so these run the interpreter.
pytestmark = [pytestmark, pytest.mark.usefixtures("interpreter_executor")]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The table before M buckets (one 256 x 128 tile), and small odd tiles with BLOCK_N = 2.
SINGLE = (MBucket(None, MatmulConfig(block_m=256, block_n=128, block_k=32)),)
NARROW = (MBucket(40, MatmulConfig(block_m=16, block_n=2, block_k=32)),
          MBucket(None, MatmulConfig(block_m=32, block_n=16, block_k=32)))
# Batched: one row per item with BLOCK_N = 2 (two items a program), then small odd tiles.
NARROW_BATCHED = (MBucket(1, MatmulConfig(block_m=1, block_n=2, block_k=32, block_batch=2)),
                  MBucket(None, MatmulConfig(block_m=16, block_n=8, block_k=32, block_batch=2)))
# The batched table before its M buckets (16-row tiles for every M), and the 2-D table that
# tiles.py ships: calls of <= 64 rows (decode steps) in 64 x 256 tiles.
SINGLE_BATCHED = (MBucket(None, MatmulConfig(block_m=16, block_n=32, block_k=32, block_batch=64)),)
BUCKETED = (MBucket(64, MatmulConfig(block_m=64, block_n=256, block_k=32)), SINGLE[0])


@contextlib.contextmanager
def interpreter_matmul_table(buckets, batched=None):
    """Run the block with another interpreter matmul table (same BLOCK_K), then restore it.
    ``batched`` (a bucket table) replaces the batched form's table too."""
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


def _matmul_family(dtype, m, n, k, seed, nb=3):
    """linear forward and both gradients (their matmuls have M = m, n and k rows), and a batched matmul of
    nb items with both gradients (M = m, m and k rows per item)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype).requires_grad_()
    w = torch.randn(n, k, generator=g).to(dtype).requires_grad_()
    y = pk.linear(x, w)
    dx, dw = torch.autograd.grad(y, [x, w], torch.randn(m, n, generator=g).to(dtype))
    a = torch.randn(nb, m, k, generator=g).to(dtype).requires_grad_()
    b = torch.randn(nb, k, n, generator=g).to(dtype).requires_grad_()
    c = pk.matmul(a, b)
    da, db = torch.autograd.grad(c, [a, b], torch.randn(nb, m, n, generator=g).to(dtype))
    return [y, dx, dw, c, da, db]


# The active (fitted) tables against: the tables before M buckets (2-D and batched), the 2-D buckets
# alone, and narrow tiles (BLOCK_N = 2, two items a program) for both forms. All fixed tables walk K in
# blocks of 32, so a fitted call with K <= 32 (one shorter block) is checked against a full one too.
TABLES = ((SINGLE, SINGLE_BATCHED), (BUCKETED, SINGLE_BATCHED), (NARROW, NARROW_BATCHED))


@settings(max_examples=4)
@given(dtype=st.sampled_from(sorted(DTYPES)), m=st.integers(1, 100), n=st.integers(1, 100), k=st.integers(1, 80),
       seed=st.integers(0, 2**16))
@example(dtype="fp32", m=30, n=24, k=70, seed=0)  # every product in NARROW's BLOCK_N = 2 bucket, many K terms
@example(dtype="fp16", m=1, n=13, k=32, seed=1)   # a decode step's q @ k^T: the batched M = 1 bucket
@example(dtype="fp32", m=1, n=40, k=70, seed=0)   # probs @ v with more than one K block (fp32 sums show any
#                                                   change of summation order: a BLOCK_N = 1 table fails here)
@example(dtype="fp32", m=1, n=1, k=1, seed=3)     # one output column (BLOCK_N well above N) and K = 1
@example(dtype="fp32", m=3, n=2, k=13, seed=4)    # fitted: BLOCK_N = 2, BLOCK_K = 16 (one block, 3 padding lanes)
@example(dtype="fp16", m=70, n=5, k=32, seed=5)   # fitted: K exactly one block; BLOCK_N 8
@example(dtype="bf16", m=100, n=64, k=33, seed=6)  # fitted: K one past a block keeps BLOCK_K = 32
def test_interpreter_tables_agree_bitwise(dtype, m, n, k, seed):
    active = _matmul_family(DTYPES[dtype], m, n, k, seed)
    for buckets, batched in TABLES:
        with interpreter_matmul_table(buckets, batched):
            other = _matmul_family(DTYPES[dtype], m, n, k, seed)
        for i, (a, b) in enumerate(zip(active, other, strict=True)):
            assert torch.equal(_bits(a), _bits(b)), f"output {i} differs with tables {buckets} / {batched}"


@settings(max_examples=4)
@given(dtype=st.sampled_from(sorted(DTYPES)), nb=st.integers(1, 300), s=st.integers(1, 40),
       hd=st.sampled_from([8, 32, 48]), seed=st.integers(0, 2**16))
@example(dtype="fp16", nb=128, s=13, hd=32, seed=0)  # the demo's decode step: 64 sequences x 2 heads
@example(dtype="fp32", nb=129, s=40, hd=48, seed=1)  # items past one program of 128, keys past one K block
def test_decode_attention_equals_the_full_pass_rows(dtype, nb, s, hd, seed):
    """A decode step's attention products (one query row per item, M = 1 bucket) equal the last row of the
    full pass (s query rows, the 16-row bucket), bitwise, in the active and the narrow tables."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(nb, s, hd, generator=g).to(DTYPES[dtype]) for _ in range(3))
    probs = torch.rand(nb, s, s, generator=g).tril().to(DTYPES[dtype])
    # the narrow table runs two items a program: a few items keep it fast
    for buckets, batched, items in ((None, None, nb), (NARROW, NARROW_BATCHED, 3)):
        q, k, v, probs = q[:items], k[:items], v[:items], probs[:items]
        with interpreter_matmul_table(buckets, batched) if buckets else contextlib.nullcontext():
            step_cfg = profiles.matmul_config(q.dtype, batched=True, m=1, n=s, k=hd, items=len(q))
            assert s == 1 or step_cfg != profiles.matmul_config(q.dtype, batched=True, m=s, n=s, k=hd, items=len(q))
            scores_full, att_full = pk.matmul(q, k.mT), pk.matmul(probs, v)
            scores_step, att_step = pk.matmul(q[:, -1:], k.mT), pk.matmul(probs[:, -1:], v)
        assert torch.equal(_bits(scores_step), _bits(scores_full[:, -1:]))
        assert torch.equal(_bits(att_step), _bits(att_full[:, -1:]))


@settings(max_examples=6)
@given(dtype=st.sampled_from(sorted(DTYPES)), m=st.integers(65, 300), n=st.integers(1, 300),
       k=st.integers(1, 80), data=st.data())
def test_rows_equal_in_every_interpreter_bucket(dtype, m, n, k, data):
    """Rows of a launch in the large bucket equal the same rows launched alone in the small one."""
    g = torch.Generator().manual_seed(m * n + k)
    x, w = torch.randn(m, k, generator=g).to(DTYPES[dtype]), torch.randn(n, k, generator=g).to(DTYPES[dtype])
    rows = data.draw(st.integers(1, BUCKETED[0].max_rows))
    start = data.draw(st.integers(0, m - rows))
    with interpreter_matmul_table(BUCKETED, SINGLE_BATCHED):
        whole = pk.linear(x, w)
        alone = pk.linear(x[start:start + rows], w)
    assert torch.equal(_bits(alone), _bits(whole[start:start + rows]))


def test_engine_split_chunks_agree_with_fixed_tables():
    """Engine profile (K cut into rounded chunks at small M): a fitted call whose K fits one block (shorter
    BLOCK_K) and one with several blocks give the fixed table's bits."""
    g = torch.Generator().manual_seed(7)
    for k in (13, 32, 70):
        x, w = torch.randn(5, k, generator=g).half(), torch.randn(24, k, generator=g).half()
        with profiles.use_profile("engine"):
            assert profiles.engine_splits_for(5) > 1
            fitted = pk.linear(x, w)
            with interpreter_matmul_table(SINGLE, SINGLE_BATCHED):
                fixed = pk.linear(x, w)
        assert torch.equal(_bits(fitted), _bits(fixed)), f"K={k}"


def test_fitted_tiles_keep_block_n_at_least_two_and_block_k_for_long_k():
    for name in DTYPES:
        for batched in (False, True):
            entry = profiles.matmul_entry_for("interpreter", name, batched)
            assert isinstance(entry, FittedTiles) and entry.min_block_n >= 2
            items = 3 if batched else None
            for m, n, k in ((1, 1, 1), (832, 64, 256), (64, 64, 33), (7, 300, 13), (10**5, 3, 10**4)):
                cfg = profiles.matmul_config_for("interpreter", name, batched, m=m, n=n, k=k, items=items)
                assert cfg.block_n >= 2
                assert cfg.block_k == (entry.block_k if k > entry.block_k else max(1 << (k - 1).bit_length(), 1))
                tile = cfg.block_batch * cfg.block_m * cfg.block_k * cfg.block_n
                assert tile <= entry.max_product
                for size in (cfg.block_m, cfg.block_n, cfg.block_k, cfg.block_batch):
                    assert size & (size - 1) == 0  # tl.arange needs powers of two
        assert profiles.lm_head_config_for("interpreter", name).block_v >= 2
        assert profiles.lm_head_config_for("interpreter", name).block_k == profiles.matmul_block_k_for("interpreter",
                                                                                                      name)


def test_fitted_tiles_really_differ_from_the_fixed_tables():
    # the comparisons above are only worth something if the tables tile differently: the demo's learner
    # (832 rows, d_model 64, MLP 256) and a decode step (64 rows)
    fitted = profiles.matmul_config(torch.float16, m=832, n=64, k=256)
    assert (fitted.block_m, fitted.block_n) == (512, 64)
    assert profiles.matmul_config(torch.float16, m=64, n=64, k=256).block_n == 64
    assert profiles.matmul_config(torch.float16, m=13, n=32, k=13, batched=True, items=128).block_k == 16
    for table in (SINGLE, BUCKETED, NARROW):
        assert all(b.config.block_n != 64 for b in table)
    with interpreter_matmul_table(NARROW, NARROW_BATCHED):
        assert profiles.matmul_config(torch.float32, m=5) == NARROW[0].config
        assert profiles.matmul_config(torch.float32, batched=True, m=1) == NARROW_BATCHED[0].config
        assert profiles.matmul_config(torch.float32, batched=True, m=2) == NARROW_BATCHED[1].config
    with interpreter_matmul_table(SINGLE, SINGLE_BATCHED):
        assert profiles.matmul_config(torch.float32, batched=True, m=1) == SINGLE_BATCHED[0].config


# ---- row reductions: block_rows fitted to a call's rows ----------------------------------------


@contextlib.contextmanager
def interpreter_row_table(block_rows, fit=True):
    """Run the block with another interpreter row table (same block_cols, the reduction order); with
    ``fit=False`` every call gets the table's block_rows whatever its row count."""
    saved, saved_lookup = profiles._ROWS["interpreter"], profiles.row_config
    profiles._ROWS["interpreter"] = dataclasses.replace(saved, block_rows=block_rows)
    if not fit:
        profiles.row_config = lambda dtype, rows=None: saved_lookup(dtype)
    try:
        yield
    finally:
        profiles._ROWS["interpreter"], profiles.row_config = saved, saved_lookup


def _row_family(dtype, rows, n, seed):
    """Every family's row samples (tests/families): outputs and gradients of row kernels whose rows
    are independent, forward and backward (rms_norm and layer_norm give x's gradient only: their weight
    gradients sum over rows per program, so block_rows is their order), softmax, log_softmax, token_logprobs."""
    return row_samples(dtype, rows, n, seed)


@settings(max_examples=3)
@given(dtype=st.sampled_from(sorted(DTYPES)), rows=st.integers(1, 300), n=st.integers(1, 200),
       seed=st.integers(0, 2**16))
@example(dtype="fp16", rows=64, n=64, seed=0)    # a decode step's norms: fitted to 64 rows
@example(dtype="fp32", rows=513, n=130, seed=1)  # past one 512-row program, two column blocks
def test_fitted_block_rows_agree_bitwise(dtype, rows, n, seed):
    fitted = _row_family(DTYPES[dtype], rows, n, seed)
    assert profiles.row_config(DTYPES[dtype], rows=rows).block_rows == min(512, 1 << (rows - 1).bit_length())
    # the table unfitted (512-row programs for every call), and small programs (fitted: min(32, rows))
    for block_rows, fit in ((512, False), (32, True)):
        with interpreter_row_table(block_rows, fit):
            other = _row_family(DTYPES[dtype], rows, n, seed)
        for i, (a, b) in enumerate(zip(fitted, other, strict=True)):
            assert torch.equal(_bits(a), _bits(b)), f"output {i} differs with block_rows {block_rows}"


def test_unfitted_row_calls_keep_the_table():
    # the norm backward's weight gradient sums over the rows of a program: it asks without rows
    assert profiles.row_config(torch.float32) == profiles.row_config_for("interpreter")
    assert profiles.row_config(torch.float32, rows=3).block_rows == 4
    assert profiles.row_config_for("cuda", rows=3) == profiles.row_config_for("cuda")
    with pytest.raises(ValueError, match="rows must be a count"):
        profiles.row_config(torch.float32, rows=-1)
