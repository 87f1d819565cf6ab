"""Tile tables of the matmuls, row reductions and fused LM head, per backend table and dtype name.

Pure lookups: a table name ("interpreter" or "cuda") and a dtype name ("fp32", "fp16", "bf16") in,
tiles out. Which table is in effect, and the profiles, are ``profiles``'s. The shape-dependent
choices, none of which changes a bit:

* A CUDA matmul entry (2-D or batched) may be a small fixed table of M buckets (``MBucket``)
  that picks BLOCK_M / BLOCK_N / batch items / warps from the call's row count. Every bucket
  keeps the same BLOCK_K, hence the same K order (``check_m_buckets``), and one instruction
  family (compile check), so a row's bits do not depend on its bucket.
* The interpreter's matmul entries are ``FittedTiles``: each call's tiles are fitted to its
  (items, M, N, K), because there an element is the ordered fp32 sum of its products whatever
  the tile around it (``FittedTiles`` says why, and tests/test_interpreter_tiles.py runs fixed
  tables against it bitwise).

The interpreter and CUDA tile tables differ (few large programs under the
interpreter; tensor-core shapes on GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    block_batch: int = 1          # batch items per program in the batched (3-D tile) form
    group_m: int = 8              # row blocks per program group (2-D launch order; L2 reuse only)
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class MBucket:
    """One row of an M-bucket table: a matmul call (2-D, or batched with M rows per item) with
    ``M <= max_rows`` rows (any M when ``max_rows`` is None, the last bucket) is tiled with ``config``."""

    max_rows: int | None
    config: MatmulConfig


@dataclass(frozen=True)
class FittedTiles:
    """Interpreter matmul tiles fitted to each call's shape: as few, as full programs as the product tile allows.

    Under the interpreter there is no ``tl.dot``: a C element is the sum of its BLOCK_K products per
    K block, added by numpy along the product tile's outer K axis one slice at a time, in index
    order, then into an fp32 accumulator that starts at +0 (kernels/matmul.py). Hence:

    * BLOCK_M, BLOCK_N and the items per program change no bit, as long as BLOCK_N >= 2 (a K slice
      of one element would make K numpy's contiguous axis, which it sums pairwise);
    * BLOCK_K is the K order and stays ``block_k`` for every call with K > ``block_k``. A call whose K
      fits one block may use any power of two >= K: its one block sums the same products in the
      same order, the padding lanes only add +0 (exact; a -0 sum turns +0, as the +0 accumulator
      makes it anyway), and the engine's split chunks (<= K) each still fit one block.

    So a call gets BLOCK_K = min(``block_k``, pow2 >= K), BLOCK_N = pow2 >= N within
    [``min_block_n``, ``max_block_n``], then as many rows, then items, as keep the
    (items, BLOCK_M, BLOCK_K, BLOCK_N) product tile within ``max_product`` elements: numeric work
    grows with padding, Python work with programs.
    """

    block_k: int
    max_block_n: int = 256
    min_block_n: int = 2
    max_product: int = 1 << 20   # Triton's largest tile (TRITON_MAX_TENSOR_NUMEL)

    def fit(self, m: int, n: int, k: int, items: int | None = None) -> MatmulConfig:
        """The tiles of a call with ``m`` rows, ``n`` columns and depth ``k`` (``items`` batch items when batched)."""
        block_k = min(self.block_k, pow2_at_least(k))
        block_n = min(max(pow2_at_least(n), self.min_block_n), self.max_block_n)
        per_k_lane = self.max_product // block_k
        block_m = min(pow2_at_least(m), max(per_k_lane // block_n, 1))
        if items is None:
            return MatmulConfig(block_m=block_m, block_n=block_n, block_k=block_k)
        block_batch = min(pow2_at_least(items), max(per_k_lane // (block_n * block_m), 1))
        return MatmulConfig(block_m=block_m, block_n=block_n, block_k=block_k, block_batch=block_batch)


def pow2_at_least(x: int) -> int:
    """The least power of two >= x (1 for x <= 1): a tile that covers x lanes."""
    return 1 << max(int(x) - 1, 0).bit_length()


def checked_count(name: str, value) -> int | None:
    """``value`` (a call's row, column or item count, or None when not given), or ValueError naming ``name``."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a count (int >= 0), got {value!r}")
    return value


# (backend table, dtype) -> (2-D entry, batched entry); an entry is a config, an M-bucket table or
# (interpreter) FittedTiles. Only these keys and the call's shape as the entry allows decide a tile.
# The 2-D and batched configs of one backend and dtype share block_k, so K is cut into the
# same blocks and a batched product equals the 2-D product of each item, bitwise.
# Interpreter: few, large programs (each tile operation is a Python-level step).
# CUDA: tensor-core tiles (every tl.dot dimension >= 16, powers of two).
# Interpreter: tiles fitted to each call (FittedTiles); BLOCK_K 32 is the K order of every dtype.
_INTERP_FITTED = FittedTiles(block_k=32)
# 128 x 128 over 8 warps: 128 x 256 spilled 8-2088 bytes (its fp32 accumulator alone is 128 registers a thread, and
# the engine's split-K keeps a second one; compile_check). BLOCK_N is output columns, not a K order: no bit moves.
_CUDA16_2D = MatmulConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
# One batch item per program: with two, the engine's split-K variants spilled 8-24 bytes (sm_80/sm_90, contiguous
# calls; compile_check). Items per program are not a K order.
_CUDA16_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=64, block_batch=1, num_warps=4, num_stages=2)
_CUDA32_2D = MatmulConfig(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)
_CUDA32_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=32, block_batch=1, num_warps=4, num_stages=2)
# M buckets of the CUDA matmuls (``check_m_buckets`` states the rules). One bucket (and one batched
# config, whose tiles the compile check compiles) until a GPU
# run shows, in fp16, bf16 and fp32, that a row's bits are the same in a launch of every bucket
# (tests/test_profiles.py::test_rows_equal_in_every_m_bucket_gpu).
_CUDA16_BUCKETS = (MBucket(None, _CUDA16_2D),)
_CUDA32_BUCKETS = (MBucket(None, _CUDA32_2D),)
_MATMUL_TABLE = {
    ("interpreter", "fp32"): (_INTERP_FITTED, _INTERP_FITTED),
    ("interpreter", "fp16"): (_INTERP_FITTED, _INTERP_FITTED),
    ("interpreter", "bf16"): (_INTERP_FITTED, _INTERP_FITTED),
    ("cuda", "fp32"): (_CUDA32_BUCKETS, _CUDA32_BATCHED),
    ("cuda", "fp16"): (_CUDA16_BUCKETS, _CUDA16_BATCHED),
    ("cuda", "bf16"): (_CUDA16_BUCKETS, _CUDA16_BATCHED),
}


def check_m_buckets(buckets: tuple, block_k: int | None = None) -> tuple[MBucket, ...]:
    """Validate an M-bucket table of a matmul (2-D or batched) and return it; ValueError/TypeError otherwise.

    A row's bits may not depend on which bucket served its launch, so every bucket keeps
    the same BLOCK_K (the kernel walks K in BLOCK_K blocks in index order: one BLOCK_K is
    one K order); only BLOCK_M, BLOCK_N, BLOCK_BATCH, GROUP_M, warps and stages may differ.
    ``block_k``, when given, is the BLOCK_K they must all have (the other form's: a batched
    product equals the 2-D product of each item). Bounds are ints >= 1, strictly increasing; the
    last bucket, and only it, has ``max_rows=None`` (every larger M). That the buckets also
    compile to one tensor-core instruction family is the compile check's audit
    (``compile_check.instruction_family``), and that a row's bits are equal in every bucket
    is a GPU test.
    """
    if not isinstance(buckets, tuple) or not buckets or not all(isinstance(b, MBucket) for b in buckets):
        raise TypeError(f"buckets must be a non-empty tuple of MBucket, got {buckets!r}")
    bounds = [b.max_rows for b in buckets]
    if bounds[-1] is not None or any(m is None for m in bounds[:-1]):
        raise ValueError(f"buckets: only the last bucket may (and must) have max_rows=None, got bounds {bounds}")
    finite = bounds[:-1]
    if any(not isinstance(m, int) or m < 1 for m in finite) or finite != sorted(set(finite)):
        raise ValueError(f"buckets: max_rows must be ints >= 1 in strictly increasing order, got {finite}")
    want = buckets[0].config.block_k if block_k is None else block_k
    for i, b in enumerate(buckets):
        if b.config.block_k != want:
            raise ValueError(f"buckets: bucket {i} (max_rows={b.max_rows}) has BLOCK_K={b.config.block_k}, "
                             f"expected {want}: every bucket must keep one BLOCK_K (one K order)")
    return buckets


def pick_m_bucket(buckets: tuple[MBucket, ...], m: int) -> MatmulConfig:
    """The config of the first bucket whose bound holds ``m`` rows."""
    for b in buckets:
        if b.max_rows is None or m <= b.max_rows:
            return b.config
    raise AssertionError("unreachable: the last bucket has no bound")


def _as_buckets(entry) -> tuple:
    return (MBucket(None, entry),) if isinstance(entry, MatmulConfig) else entry


def _checked_entry(entry, block_k: int | None = None):
    """An entry as a bucket table or FittedTiles, checked (bucket rules; one BLOCK_K, ``block_k`` when given)."""
    if isinstance(entry, FittedTiles):
        if block_k is not None and entry.block_k != block_k:
            raise ValueError(f"fitted tiles have BLOCK_K={entry.block_k}, expected {block_k}: both matmul forms "
                             f"must keep one BLOCK_K (one K order)")
        return entry
    return check_m_buckets(_as_buckets(entry), block_k)


def _entry_block_k(entry) -> int:
    return entry.block_k if isinstance(entry, FittedTiles) else entry[0].config.block_k


def matmul_entry_for(table: str, dtype_name: str, batched: bool = False):
    """The 2-D (or, with ``batched``, the batched) matmul entry of one backend table and dtype name: an
    M-bucket table (one bucket for a plain config) or ``FittedTiles``. Both forms keep one BLOCK_K."""
    two_d, batched_entry = _MATMUL_TABLE[(table, dtype_name)]
    two_d = _checked_entry(two_d)
    batched_entry = _checked_entry(batched_entry, block_k=_entry_block_k(two_d))
    return batched_entry if batched else two_d


def matmul_buckets_for(table: str, dtype_name: str, batched: bool = False) -> tuple[MBucket, ...]:
    """The M-bucket table of the 2-D (or batched) matmul of a bucketed table (TypeError for fitted tiles)."""
    entry = matmul_entry_for(table, dtype_name, batched)
    if isinstance(entry, FittedTiles):
        raise TypeError(f"the {table} {dtype_name} matmul tiles are fitted to each call, not M buckets")
    return entry


def matmul_block_k_for(table: str, dtype_name: str) -> int:
    """The BLOCK_K (the K order) of one table and dtype, shared by both matmul forms and the fused LM head."""
    return _entry_block_k(matmul_entry_for(table, dtype_name))


def matmul_config_for(table: str, dtype_name: str, batched: bool = False, m: int | None = None,
                      n: int | None = None, k: int | None = None, items: int | None = None) -> MatmulConfig:
    """The matmul tiles of one table ("interpreter" or "cuda") and dtype name ("fp32", "fp16", "bf16").

    A bucketed entry picks by ``m`` (rows per batch item); ``m`` may be left out only where it has a
    single bucket. Fitted tiles (interpreter) need the call's whole shape: ``m``, ``n``, ``k`` and,
    batched, ``items``.
    """
    entry = matmul_entry_for(table, dtype_name, batched)
    m, n, k, items = (checked_count(name, v) for name, v in (("m", m), ("n", n), ("k", k), ("items", items)))
    form = "batched " if batched else ""
    if isinstance(entry, FittedTiles):
        missing = [name for name, v in (("m", m), ("n", n), ("k", k)) + ((("items", items),) if batched else ())
                   if v is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required: the {table} {dtype_name} {form}matmul fits its tiles "
                             f"to each call's shape")
        return entry.fit(m, n, k, items if batched else None)
    if m is None:
        if len(entry) > 1:
            raise ValueError(f"m (the call's row count) is required: the {table} {dtype_name} {form}matmul has "
                             f"{len(entry)} M buckets")
        return entry[0].config
    return pick_m_bucket(entry, m)


# A malformed table is refused at import, not at the first call whose M reaches it.
for _key in _MATMUL_TABLE:
    matmul_entry_for(*_key)


# ---- row reductions (softmax, log-softmax, norms, token log-probs) ----------------------------

@dataclass(frozen=True)
class RowConfig:
    """Row reductions (softmax, log-softmax, RMSNorm, token log-probs)."""

    block_rows: int               # rows per program
    block_cols: int               # fixed reduction block along the row
    num_warps: int = 4


_ROWS = {
    # 512 x 128: an interpreter program costs ~1 ms per nested jit call plus ~4 ms per 64K
    # elements of tile work per block, so short rows (attention, small vocabularies) want many
    # rows per program and long rows want few blocks; this balances the two. Calls with fewer rows
    # and independent rows get block_rows fitted down to them (row_config_for).
    "interpreter": RowConfig(block_rows=512, block_cols=128),
    "cuda": RowConfig(block_rows=4, block_cols=1024, num_warps=4),
}


def row_config_for(table: str, rows: int | None = None) -> RowConfig:
    """The row-reduction tiles of one table ("interpreter" or "cuda"); the same for every dtype.

    ``rows``: the call's row count, given only by kernels whose rows are independent (forward
    passes, softmax and log-prob backward; not the norm backward, whose per-program partial sums
    over rows make ``block_rows`` part of its summation order). Under the interpreter such a call's
    ``block_rows`` is fitted down to ``rows`` (a power of two): a row's reductions run along its own
    ``block_cols`` blocks, so no bit changes (tests/test_interpreter_tiles.py), and a decode step's
    64 rows no longer pay for 512-row tiles of numpy work.
    """
    cfg = _ROWS[table]
    if rows is None or table != "interpreter":
        return cfg
    return dataclasses.replace(cfg, block_rows=min(cfg.block_rows, pow2_at_least(checked_count("rows", rows))))


# ---- fused LM head (kernels/lm_head.py) --------------------------------------------------

@dataclass(frozen=True)
class LMHeadConfig:
    """Tiles of the fused linear -> log-prob kernel.

    ``block_k`` is the 2-D matmul's, so the logits tiles equal ``pk.linear``'s. Under the
    interpreter ``block_v`` is the row reductions' ``block_cols``, so the log-sum-exp
    walks the same blocks as ``pk.token_logprobs`` (I5); on GPU it is a tensor-core width.
    """

    block_m: int
    block_v: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class LMHeadTiles:
    """One LM-head table entry: the tiles the matmuls' K order leaves free. ``block_v`` None is the row
    kernels' ``block_cols`` of the same table, read at each call (the interpreter: I5 with token_logprobs)."""

    block_m: int
    block_v: int | None
    num_warps: int = 4
    num_stages: int = 2


_LM_HEAD_INTERP = LMHeadTiles(block_m=256, block_v=None)
# CUDA: one entry per dtype for SCORE, SAMPLE and the backward (I5). Chosen so that every variant
# compiles without register spills on sm_80 and sm_90, generic and as the JIT specialises a contiguous call
# (``compile_check --all --only lm_head``; tests/test_compile_check.py). 64 x 128 tiles over
# 8 warps spilled 16-1080 bytes (SAMPLE keeps the Philox state and the Gumbel keys beside the
# logits tile; fp32's FMA dots spilled in SCORE too). Smaller tiles alone were not enough:
# ptxas lands on an occupancy step (64/80/128/168 registers) and spills 4-24 bytes for it when
# the demand is just above one, so these were searched variant by variant.
_LM_HEAD_TABLE = {
    ("interpreter", "fp32"): _LM_HEAD_INTERP,
    ("interpreter", "fp16"): _LM_HEAD_INTERP,
    ("interpreter", "bf16"): _LM_HEAD_INTERP,
    ("cuda", "fp32"): LMHeadTiles(block_m=16, block_v=32, num_warps=4, num_stages=2),
    ("cuda", "fp16"): LMHeadTiles(block_m=64, block_v=64, num_warps=8, num_stages=3),
    ("cuda", "bf16"): LMHeadTiles(block_m=64, block_v=64, num_warps=8, num_stages=3),
}
# Vocab columns per backward chunk: the dlogits buffer is (rows x this) at most.
LM_HEAD_BWD_CHUNK = 8192


def lm_head_config_for(table: str, dtype_name: str) -> LMHeadConfig:
    # the matmuls' K order (every bucket, or fitted tile of a K > BLOCK_K call, keeps it), so the logits
    # tiles equal pk.linear's for any M
    block_k = matmul_block_k_for(table, dtype_name)
    tiles = _LM_HEAD_TABLE[(table, dtype_name)]
    block_v = _ROWS[table].block_cols if tiles.block_v is None else tiles.block_v
    return LMHeadConfig(block_m=tiles.block_m, block_v=block_v, block_k=block_k, num_warps=tiles.num_warps,
                        num_stages=tiles.num_stages)
