"""Tile tables (tiles.py): the M-bucket mechanism of the 2-D and batched matmuls (docs/DESIGN.md section 4.4).

A bucket table may pick BLOCK_M / BLOCK_N / batch items / warps from a call's row count, but never BLOCK_K
(the K order). ``check_m_buckets`` refuses a table that breaks that; the rows of a matrix
must have the same bits whichever bucket served their launch: by construction under the
interpreter (no tl.dot there), and only a GPU run can show it for the CUDA buckets.
"""

import pytest
import torch

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.ops._common import observe_launches
from precision_kernels.profiles import MatmulConfig, MBucket, check_m_buckets, pick_m_bucket

DEV = pk.backend.device()
ON_GPU = not pk.backend.INTERPRETED
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cfg(block_m, block_k=32, num_warps=4):
    return MatmulConfig(block_m=block_m, block_n=32, block_k=block_k, num_warps=num_warps)


THREE = (MBucket(16, _cfg(16, num_warps=1)), MBucket(256, _cfg(64, num_warps=2)), MBucket(None, _cfg(256)))


def test_check_m_buckets_refuses_buckets_that_differ_in_block_k():
    bad = (MBucket(16, _cfg(16, block_k=16)), MBucket(None, _cfg(256, block_k=32)))
    with pytest.raises(ValueError, match=r"bucket 1 \(max_rows=None\) has BLOCK_K=32, expected 16"):
        check_m_buckets(bad)
    with pytest.raises(ValueError, match="bucket 0 .* has BLOCK_K=32, expected 64"):
        check_m_buckets(THREE, block_k=64)  # the batched config's BLOCK_K differs
    assert check_m_buckets(THREE, block_k=32) is THREE


@pytest.mark.parametrize("bounds, message", [
    ((16, 8, None), "strictly increasing"),
    ((16, 16, None), "strictly increasing"),
    ((0, None), "ints >= 1"),
    ((16, 64), "only the last bucket may"),
    ((None, 64, None), "only the last bucket may"),
])
def test_check_m_buckets_refuses_malformed_bounds(bounds, message):
    with pytest.raises(ValueError, match=message):
        check_m_buckets(tuple(MBucket(b, _cfg(16)) for b in bounds))


def test_check_m_buckets_refuses_what_is_not_a_bucket_table():
    for bad in ((), [MBucket(None, _cfg(16))], (_cfg(16),)):
        with pytest.raises(TypeError, match="non-empty tuple of MBucket"):
            check_m_buckets(bad)


def test_pick_m_bucket_takes_the_first_bound_that_holds_m():
    picked = [pick_m_bucket(THREE, m).block_m for m in (0, 1, 16, 17, 256, 257, 10**6)]
    assert picked == [16, 16, 16, 64, 64, 256, 256]


def test_a_bad_table_is_refused_where_it_is_looked_up(monkeypatch):
    batched = profiles.matmul_entry_for("interpreter", "fp32", batched=True)
    block_k = profiles.matmul_block_k_for("interpreter", "fp32")
    bad = (MBucket(16, _cfg(16, block_k=16)), MBucket(None, _cfg(256, block_k=block_k)))
    monkeypatch.setitem(profiles._MATMUL_TABLE, ("interpreter", "fp32"), (bad, batched))
    with pytest.raises(ValueError, match="every bucket must keep one BLOCK_K"):
        profiles.matmul_config_for("interpreter", "fp32", m=4)


def test_a_batched_table_with_another_block_k_is_refused(monkeypatch):
    """A batched bucket whose BLOCK_K differs from the 2-D table's would give a batched item other bits than
    the 2-D product of that item: refused for either form's lookup."""
    two_d = profiles.matmul_entry_for("interpreter", "fp32")
    block_k = profiles.matmul_block_k_for("interpreter", "fp32")
    bad = (MBucket(1, MatmulConfig(block_m=1, block_n=32, block_k=2 * block_k, block_batch=128)),
           MBucket(None, MatmulConfig(block_m=16, block_n=32, block_k=block_k, block_batch=64)))
    monkeypatch.setitem(profiles._MATMUL_TABLE, ("interpreter", "fp32"), (two_d, bad))
    for batched in (True, False):
        with pytest.raises(ValueError, match=f"bucket 0 \\(max_rows=1\\) has BLOCK_K={2 * block_k}"):
            profiles.matmul_config_for("interpreter", "fp32", batched=batched, m=1)


def test_the_shipped_tables_have_one_block_k_per_dtype():
    for name in DTYPES:
        buckets = profiles.matmul_buckets_for("cuda", name)
        batched = profiles.matmul_buckets_for("cuda", name, batched=True)
        assert {b.config.block_k for b in buckets + batched} == {profiles.matmul_block_k_for("cuda", name)}
        # no m needed while a table has one bucket; with several, m is required
        for form, table_buckets in ((False, buckets), (True, batched)):
            if len(table_buckets) == 1:
                assert profiles.matmul_config_for("cuda", name, form) == table_buckets[0].config
        # interpreter: fitted tiles, both forms with the same BLOCK_K
        fitted = [profiles.matmul_entry_for("interpreter", name, form) for form in (False, True)]
        assert {f.block_k for f in fitted} == {profiles.matmul_block_k_for("interpreter", name)}
        with pytest.raises(TypeError, match="fitted to each call, not M buckets"):
            profiles.matmul_buckets_for("interpreter", name)


def test_reduction_orders_are_pinned():
    """The tiles that are summation orders, per table and dtype: BLOCK_K (matmuls, LM head, scaled_mm) and the
    attention key block (forward, dq) and query block (dk/dv). Changing one changes bits; the tiles chosen for
    speed or spills (rows, columns, items per program, warps, stages) are free and are not pinned here."""
    for name in DTYPES:
        assert profiles.matmul_block_k_for("interpreter", name) == 32
        assert profiles.attention_orders_for("interpreter", name) == (64, 64)
        assert profiles.lm_head_config_for("cuda", name).block_k == profiles.matmul_block_k_for("cuda", name)
    assert {n: profiles.matmul_block_k_for("cuda", n) for n in DTYPES} == {"fp32": 32, "fp16": 64, "bf16": 64}
    assert {n: profiles.attention_orders_for("cuda", n) for n in DTYPES} == {
        "fp32": (16, 16), "fp16": (32, 32), "bf16": (32, 32)}


@pytest.mark.parametrize("name", list(DTYPES))
def test_batched_tiles_interpreter_and_cuda(name):
    """Interpreter: batched tiles fitted to the call (a decode step's attention gets one row per item and all
    of its items in one program); CUDA: one batched config, the one the compile check compiles, looked up
    without m."""
    step = profiles.matmul_config_for("interpreter", name, batched=True, m=1, n=13, k=32, items=128)
    assert (step.block_m, step.block_n, step.block_batch) == (1, 16, 128)
    assert profiles.matmul_config_for("interpreter", name, batched=True, m=0, n=0, k=0, items=0).block_m == 1
    with pytest.raises(ValueError, match=f"items required: the interpreter {name} batched matmul fits its tiles"):
        profiles.matmul_config_for("interpreter", name, batched=True, m=1, n=13, k=32)
    with pytest.raises(ValueError, match=f"n, k required: the interpreter {name} matmul fits its tiles"):
        profiles.matmul_config_for("interpreter", name, m=1)
    with pytest.raises(ValueError, match="k must be a count"):
        profiles.matmul_config_for("interpreter", name, m=1, n=1, k=-1)
    cuda = profiles.matmul_buckets_for("cuda", name, batched=True)
    assert len(cuda) == 1
    assert profiles.matmul_config_for("cuda", name, batched=True) == cuda[0].config
    assert profiles.matmul_config_for("cuda", name, batched=True, m=1) == cuda[0].config


def test_m_is_required_once_a_table_has_several_buckets(monkeypatch):
    batched = profiles.matmul_entry_for("interpreter", "fp32", batched=True)
    monkeypatch.setitem(profiles._MATMUL_TABLE, ("interpreter", "fp32"), (THREE, batched))
    with pytest.raises(ValueError, match="m .* is required: the interpreter fp32 matmul has 3 M buckets"):
        profiles.matmul_config_for("interpreter", "fp32")
    with pytest.raises(ValueError, match="m must be a count"):
        profiles.matmul_config_for("interpreter", "fp32", m=-1)
    assert profiles.matmul_config_for("interpreter", "fp32", m=17).block_m == 64


def _bucket_sizes(buckets, extra=()):
    """Row counts that land in every bucket: 1, each bound, each bound + 1 (and ``extra``)."""
    sizes = {1, *extra}
    for b in buckets[:-1]:
        sizes |= {b.max_rows, b.max_rows + 1}
    return sorted(sizes)


def _rows_in_every_bucket(dtype, buckets, n, k, extra=()):
    """pk.linear of the first M rows of one matrix for M in every bucket; row r must have the same bits in all.
    Returns the num_warps each launch ran with (to see which buckets served)."""
    sizes = _bucket_sizes(buckets, extra)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(max(sizes), k, generator=g).to(dtype).to(DEV)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype).to(DEV)
    full = pk.linear(x, w)
    warps = []
    for m in sizes:
        with observe_launches() as launches:
            part = pk.linear(x[:m], w)
        warps.append(launches[0].options["num_warps"])
        view = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(part.view(view), full[:m].view(view)), f"rows of an M={m} launch differ"
    return sizes, warps


@pytest.mark.parametrize("name", list(DTYPES))
def test_rows_equal_in_every_m_bucket_interpreter(name, monkeypatch):
    """The mechanism end to end: a three-bucket table (same BLOCK_K) reaches pk.linear through the call's M,
    and the rows come out bitwise equal in launches of every bucket."""
    table = profiles.table_backend()
    batched = profiles.matmul_entry_for(table, name, batched=True)
    block_k = profiles.matmul_block_k_for(table, name)
    three = tuple(MBucket(b.max_rows, MatmulConfig(block_m=b.config.block_m, block_n=32, block_k=block_k,
                                                   num_warps=b.config.num_warps)) for b in THREE)
    monkeypatch.setitem(profiles._MATMUL_TABLE, (table, name), (three, batched))
    sizes, warps = _rows_in_every_bucket(DTYPES[name], three, n=40, k=70)
    assert dict(zip(sizes, warps, strict=True)) == {1: 1, 16: 1, 17: 2, 256: 2, 257: 4}


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="GPU-only: the interpreter never uses tl.dot, so its buckets agree by "
                                       "construction; whether wgmma/mma.sync tiles of different shapes sum a row "
                                       "the same way only a GPU can show")
@pytest.mark.parametrize("name", list(DTYPES))
def test_rows_equal_in_every_m_bucket_gpu(name):
    """The shipped CUDA buckets: the same rows computed in launches of every bucket have the same bits (with one
    bucket, still rows of launches of 1 to 2048 rows: M == 1 and M % 16 == 0 must not change a row either)."""
    buckets = profiles.matmul_buckets_for("cuda", name)
    _rows_in_every_bucket(DTYPES[name], buckets, n=4096, k=4096, extra=(2, 16, 17, 64, 256, 1024, 2048))


def test_engine_variants_split_matmuls_or_attention_or_both():
    """``engine`` splits K (small M) and KV (decode steps); ``engine-matmul`` and ``engine-attention`` one each."""
    splits = profiles.engine_config().splits
    expect = {"matched": (1, False), "engine": (splits, True), "engine-matmul": (splits, False),
              "engine-attention": (1, True)}
    assert set(expect) == set(profiles.PROFILES)
    for name, (k_splits, kv_split) in expect.items():
        with profiles.use_profile(name):
            assert profiles.engine_splits_for(1) == k_splits, name
            assert (profiles.attention_splits_for(2, 1, 16)[0] > 1) == kv_split, name
    with pytest.raises(ValueError, match="unknown profile"):
        with profiles.use_profile("engine-both"):
            pass


def test_attention_forward_split_chunks_whole_key_blocks():
    """Matched never splits; an engine decode step splits into chunks of whole key blocks: the engine's split
    block (at most the table's key block) in the interpreter form, the whole tl.dot key tile in the compiled one."""
    split_block = profiles.engine_config().attention_split_block
    assert split_block < 16
    assert profiles.attention_forward_split(2, 1, 64, 16, whole_tiles=False) == (1, 0, 16)
    with profiles.use_profile("engine"):
        assert profiles.attention_forward_split(2, 5, 64, 16, whole_tiles=True) == (1, 0, 16)  # not a decode step
        for whole_tiles, key_block in ((False, split_block), (True, 16)):
            chunks, per_chunk, block = profiles.attention_forward_split(2, 1, 64, 16, whole_tiles=whole_tiles)
            assert block == key_block and chunks > 1 and per_chunk % key_block == 0
            assert (chunks - 1) * per_chunk < 64 <= chunks * per_chunk
