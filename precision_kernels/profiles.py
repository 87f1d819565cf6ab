"""Tile configs, chosen only by backend, dtype and profile (never by data; by shape only as below).

The shape-dependent choices, none of which changes a bit:

* A CUDA matmul entry (2-D or batched) may be a small fixed table of M buckets (``MBucket``)
  that picks BLOCK_M / BLOCK_N / batch items / warps from the call's row count. Every bucket
  keeps the same BLOCK_K, hence the same K order (``check_m_buckets``), and one instruction
  family (compile check), so a row's bits do not depend on its bucket.
* The interpreter's matmul entries are ``FittedTiles``: each call's tiles are fitted to its
  (items, M, N, K), because there an element is the ordered fp32 sum of its products whatever
  the tile around it (``FittedTiles`` says why, and tests/test_interpreter_tiles.py runs fixed
  tables against it bitwise).

Two profiles:

* ``matched`` (the default) keeps invariants I1-I6: every row of every launch
  goes through the same tile shapes and the same reduction order.
* ``engine`` mimics an inference engine's decode kernels: a matmul with
  ``M <= engine_split_m`` rows splits K into ``engine_splits`` partial sums, rounds
  each partial to the output dtype, and adds them in a fixed order; a decode step's
  attention splits its keys (flash-decoding, ``attention_splits_for``), rounds each
  chunk's partial output to the compute dtype and merges the chunks by their
  log-sum-exps. It is deterministic but deliberately breaks I2/I3 for small M and
  decode == prefill. ``engine-matmul`` and ``engine-attention`` each keep one of the
  two (the mismatch lab's attribution rows).

The interpreter and CUDA tile tables differ (few large programs under the
interpreter; tensor-core shapes on GPU). Tests run the CUDA table under the
interpreter at small shapes through ``config_backend("cuda")``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import backend

PROFILES = ("matched", "engine", "engine-matmul", "engine-attention")
_SPLIT_K_PROFILES = ("engine", "engine-matmul")
_SPLIT_KV_PROFILES = ("engine", "engine-attention")


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
class RowConfig:
    """Row reductions (softmax, log-softmax, RMSNorm, token log-probs)."""

    block_rows: int               # rows per program
    block_cols: int               # fixed reduction block along the row
    num_warps: int = 4


@dataclass(frozen=True)
class EngineConfig:
    split_m: int = 64             # calls with at most this many rows split K
    splits: int = 4               # number of partial sums, each rounded to the output dtype
    # Split-KV attention (flash-decoding) for calls of at most ``attention_split_rows`` queries per item: the
    # chunk count is FlashAttention-2's ``num_splits_heuristic`` over key blocks of ``attention_split_block``
    # keys, for ``attention_sm_slots`` concurrent programs (FA2 passes 2 x the SM count: an H100's 132 SMs).
    # FA2's key block is 64-256 keys; 4 scales it to TinyGPT's 16-position cache, so its decode steps split.
    attention_split_rows: int = 1
    attention_split_block: int = 4
    attention_sm_slots: int = 264
    attention_max_splits: int = 128


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
        block_k = min(self.block_k, _pow2_at_least(k))
        block_n = min(max(_pow2_at_least(n), self.min_block_n), self.max_block_n)
        per_k_lane = self.max_product // block_k
        block_m = min(_pow2_at_least(m), max(per_k_lane // block_n, 1))
        if items is None:
            return MatmulConfig(block_m=block_m, block_n=block_n, block_k=block_k)
        block_batch = min(_pow2_at_least(items), max(per_k_lane // (block_n * block_m), 1))
        return MatmulConfig(block_m=block_m, block_n=block_n, block_k=block_k, block_batch=block_batch)


def _pow2_at_least(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


# (backend table, dtype) -> (2-D entry, batched entry); an entry is a config, an M-bucket table or
# (interpreter) FittedTiles. Only these keys and the call's shape as the entry allows decide a tile.
# The 2-D and batched configs of one backend and dtype share block_k, so K is cut into the
# same blocks and a batched product equals the 2-D product of each item, bitwise.
# Interpreter: few, large programs (each tile operation is a Python-level step).
# CUDA: tensor-core tiles (every tl.dot dimension >= 16, powers of two).
# Interpreter: tiles fitted to each call (FittedTiles); BLOCK_K 32 is the K order of every dtype.
_INTERP_FITTED = FittedTiles(block_k=32)
_CUDA16_2D = MatmulConfig(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=3)
_CUDA16_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=64, block_batch=2, num_warps=4, num_stages=2)
_CUDA32_2D = MatmulConfig(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)
_CUDA32_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=32, block_batch=2, num_warps=4, num_stages=2)
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
_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_ROWS = {
    # 512 x 128: an interpreter program costs ~1 ms per nested jit call plus ~4 ms per 64K
    # elements of tile work per block, so short rows (attention, small vocabularies) want many
    # rows per program and long rows want few blocks; this balances the two. Calls with fewer rows
    # and independent rows get block_rows fitted down to them (row_config_for).
    "interpreter": RowConfig(block_rows=512, block_cols=128),
    "cuda": RowConfig(block_rows=4, block_cols=1024, num_warps=4),
}
_ENGINE = EngineConfig()

_profile: contextvars.ContextVar[str] = contextvars.ContextVar("pk_profile", default="matched")
_config_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("pk_config_backend", default=None)


def active_profile() -> str:
    """Name of the profile in effect in this context."""
    return _profile.get()


@contextlib.contextmanager
def use_profile(name: str) -> Iterator[None]:
    """Run the enclosed ops in profile ``name`` ("matched" or "engine")."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {PROFILES}")
    token = _profile.set(name)
    try:
        yield
    finally:
        _profile.reset(token)


@contextlib.contextmanager
def config_backend(name: str) -> Iterator[None]:
    """Use the tile table of backend ``name`` ("interpreter" or "cuda") whatever runs the kernels.

    Tests use this to exercise the CUDA configs under the interpreter.
    """
    if name not in ("interpreter", "cuda"):
        raise ValueError(f"unknown config backend {name!r}; expected 'interpreter' or 'cuda'")
    token = _config_backend.set(name)
    try:
        yield
    finally:
        _config_backend.reset(token)


def table_backend() -> str:
    forced = _config_backend.get()
    if forced is not None:
        return forced
    return "interpreter" if backend.INTERPRETED else "cuda"


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


def _count(name: str, value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a count (int >= 0), got {value!r}")
    return value


def matmul_config_for(table: str, dtype_name: str, batched: bool = False, m: int | None = None,
                      n: int | None = None, k: int | None = None, items: int | None = None) -> MatmulConfig:
    """The matmul tiles of one table ("interpreter" or "cuda") and dtype name ("fp32", "fp16", "bf16").

    A bucketed entry picks by ``m`` (rows per batch item); ``m`` may be left out only where it has a
    single bucket. Fitted tiles (interpreter) need the call's whole shape: ``m``, ``n``, ``k`` and,
    batched, ``items``.
    """
    entry = matmul_entry_for(table, dtype_name, batched)
    m, n, k, items = (_count(name, v) for name, v in (("m", m), ("n", n), ("k", k), ("items", items)))
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


def matmul_config(dtype: torch.dtype, batched: bool = False, m: int | None = None, n: int | None = None,
                  k: int | None = None, items: int | None = None) -> MatmulConfig:
    return matmul_config_for(table_backend(), _DTYPE_NAME[dtype], batched, m, n, k, items)


# A malformed table is refused at import, not at the first call whose M reaches it.
for _key in _MATMUL_TABLE:
    matmul_entry_for(*_key)


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
    return dataclasses.replace(cfg, block_rows=min(cfg.block_rows, _pow2_at_least(_count("rows", rows))))


def row_config(dtype: torch.dtype, rows: int | None = None) -> RowConfig:
    return row_config_for(table_backend(), rows)


def engine_config() -> EngineConfig:
    return _ENGINE


def engine_splits_for(m: int) -> int:
    """Number of rounded K partials the active profile uses for a call with ``m`` rows (1 = none)."""
    if active_profile() in _SPLIT_K_PROFILES and m <= _ENGINE.split_m:
        return _ENGINE.splits
    return 1


def num_splits_heuristic(programs: int, slots: int, key_blocks: int, max_splits: int) -> int:
    """FlashAttention-2's ``num_splits_heuristic``: 1 when ``programs`` (batch x heads x query blocks) almost
    fill the ``slots``; otherwise the fewest splits of ``key_blocks`` whose wave efficiency is within 85% of
    the best (a split count that leaves the blocks per split unchanged is not eligible)."""
    if programs >= 0.8 * slots:
        return 1
    max_splits = min(max_splits, slots, key_blocks)

    def eligible(n: int) -> bool:
        return n == 1 or -(-key_blocks // n) != -(-key_blocks // (n - 1))

    def efficiency(n: int) -> float:
        waves = programs * n / slots
        return waves / -(-waves // 1)

    effs = {n: efficiency(n) for n in range(1, max_splits + 1) if eligible(n)}
    if not effs:
        return 1
    best = max(effs.values())
    return next(n for n, e in effs.items() if e >= 0.85 * best)


def attention_splits_for(items: int, rows: int, keys: int, block: int | None = None) -> tuple[int, int]:
    """(chunks, keys per chunk) of an attention call's split-KV in the active profile; (1, 0) = no split.

    ``items`` (batch, query head) pairs, ``rows`` queries per item, ``keys`` keys per item (counted from the
    first real key). Only the engine profiles with split-KV split, and only calls of at most
    ``attention_split_rows`` queries (decode steps): the matched profile never splits by length. Chunks are
    whole blocks of ``block`` keys (default ``attention_split_block``; a kernel whose key tile is larger
    passes its tile), chunk count by ``num_splits_heuristic``.
    """
    items, rows, keys = (_count(n, v) for n, v in (("items", items), ("rows", rows), ("keys", keys)))
    if active_profile() not in _SPLIT_KV_PROFILES or rows > _ENGINE.attention_split_rows or items == 0:
        return 1, 0
    block = _ENGINE.attention_split_block if block is None else block
    key_blocks = -(-keys // block)
    splits = num_splits_heuristic(items * -(-rows // 64), _ENGINE.attention_sm_slots, key_blocks,
                                  _ENGINE.attention_max_splits)
    if splits <= 1:
        return 1, 0
    per_chunk = -(-key_blocks // splits) * block
    return -(-keys // per_chunk), per_chunk


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


_LM_HEAD_BLOCK_M = {"interpreter": 256}
# CUDA tiles per dtype: (block_m, block_v, num_warps, num_stages), one config for SCORE, SAMPLE
# and the backward (I5). Chosen so that every variant compiles without register spills on
# sm_80 and sm_90, generic and as the JIT specialises a contiguous call
# (``compile_check --all --only lm_head``; tests/test_compile_check.py). 64 x 128 tiles over
# 8 warps spilled 16-1080 bytes (SAMPLE keeps the Philox state and the Gumbel keys beside the
# logits tile; fp32's FMA dots spilled in SCORE too). Smaller tiles alone were not enough:
# ptxas lands on an occupancy step (64/80/128/168 registers) and spills 4-24 bytes for it when
# the demand is just above one, so these were searched variant by variant.
_LM_HEAD_CUDA = {"fp32": (16, 32, 4, 2), "fp16": (64, 64, 8, 3), "bf16": (64, 64, 8, 3)}
# Vocab columns per backward chunk: the dlogits buffer is (rows x this) at most.
LM_HEAD_BWD_CHUNK = 8192


def lm_head_config_for(table: str, dtype_name: str) -> LMHeadConfig:
    # the matmuls' K order (every bucket, or fitted tile of a K > BLOCK_K call, keeps it), so the logits
    # tiles equal pk.linear's for any M
    block_k = matmul_block_k_for(table, dtype_name)
    if table == "interpreter":
        return LMHeadConfig(block_m=_LM_HEAD_BLOCK_M[table], block_v=_ROWS[table].block_cols, block_k=block_k,
                            num_warps=4)
    block_m, block_v, num_warps, num_stages = _LM_HEAD_CUDA[dtype_name]
    return LMHeadConfig(block_m=block_m, block_v=block_v, block_k=block_k, num_warps=num_warps,
                        num_stages=num_stages)


def lm_head_config(dtype: torch.dtype) -> LMHeadConfig:
    return lm_head_config_for(table_backend(), _DTYPE_NAME[dtype])


# ---- attention (kernels/attention.py) ------------------------------------------------------

@dataclass(frozen=True)
class AttentionConfig:
    """Tiles of one attention launch.

    ``block_n`` (keys per block of the forward's and dq's sums) and ``block_m_bwd`` (query rows per block
    of the dk/dv sums) are reduction orders: one value per backend table and dtype, for every call,
    fitted or not. ``block_m`` (query rows per forward/dq program), ``block_n_bwd`` (keys per dk/dv
    program) and ``block_items`` ((batch, head) items per program) change no bit. ``block_d`` is the
    head dim padded to a power of two (>= 2 under the interpreter, >= 16 for ``tl.dot``).
    """

    block_n: int
    block_m_bwd: int
    block_m: int
    block_n_bwd: int
    block_d: int
    block_items: int = 1
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class FittedAttentionTiles:
    """Interpreter attention tiles: the two orders fixed, the free tiles fitted to each call.

    Each program's largest tile is a (BLOCK_D, keys, items, rows) product; rows (or, in dk/dv, keys)
    grow to the call's, within [2, ``max_rows``], then items as long as that product stays within
    ``max_product`` elements (few, full programs: each tile operation is a Python-level step).
    """

    block_n: int
    block_m_bwd: int
    max_rows: int = 128
    max_product: int = 1 << 18

    def fit(self, kernel: str, items: int, rows: int, keys: int, head_dim: int) -> AttentionConfig:
        block_d = max(2, _pow2_at_least(head_dim))
        if kernel == "dkdv":
            free = min(max(_pow2_at_least(keys), 2), self.max_rows)
            per_item = block_d * self.block_m_bwd * free
            block_m, block_n_bwd = self.block_m_bwd, free
        else:
            free = min(max(_pow2_at_least(rows), 2), self.max_rows)
            per_item = block_d * self.block_n * free
            block_m, block_n_bwd = free, self.block_n
        block_items = min(_pow2_at_least(items), max(self.max_product // per_item, 1))
        return AttentionConfig(block_n=self.block_n, block_m_bwd=self.block_m_bwd, block_m=block_m,
                               block_n_bwd=block_n_bwd, block_d=block_d, block_items=block_items)


_ATTENTION_INTERP = FittedAttentionTiles(block_n=64, block_m_bwd=64)
# CUDA: one item per program, tl.dot tiles (every dimension >= 16). Per dtype the two orders (block_n,
# block_m_bwd), then per kernel its free tile (query rows for fwd/dq, keys for dkdv) and warps. Every product
# but q k^T is an IEEE fp32 tl.dot (P is never rounded to 16 bits), which needs many registers. Measured with
# compile_check --all --kernel attention (sm_80 and sm_90): no spills at head dims <= 16 (TinyGPT's 8); at 64
# and 128 every kernel but the fp32 dq spills, 8-1144 bytes (fp32 dk/dv at 128: 2848). Untuned without a GPU.
_ATTENTION_CUDA = {
    "fp32": ((16, 16), {"fwd": (32, 4), "dq": (16, 4), "dkdv": (16, 4)}),
    "fp16": ((32, 32), {"fwd": (64, 4), "dq": (32, 8), "dkdv": (32, 8)}),
    "bf16": ((32, 32), {"fwd": (64, 4), "dq": (32, 8), "dkdv": (32, 8)}),
}
ATTENTION_KERNELS = ("fwd", "dq", "dkdv")


def attention_orders_for(table: str, dtype_name: str) -> tuple[int, int]:
    """(block_n, block_m_bwd): the key block of the forward/dq sums and the query block of the dk/dv sums."""
    if table == "interpreter":
        return _ATTENTION_INTERP.block_n, _ATTENTION_INTERP.block_m_bwd
    return _ATTENTION_CUDA[dtype_name][0]


def attention_config_for(table: str, dtype_name: str, kernel: str, *, items: int, rows: int, keys: int,
                         head_dim: int) -> AttentionConfig:
    """The tiles of one attention kernel launch ("fwd", "dq" or "dkdv") on ``items`` (batch, head) items
    (``(batch, kv head)`` for dkdv), ``rows`` queries and ``keys`` keys of head dim ``head_dim``."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {ATTENTION_KERNELS}")
    items, rows, keys, head_dim = (_count(n, v) for n, v in
                                   (("items", items), ("rows", rows), ("keys", keys), ("head_dim", head_dim)))
    if table == "interpreter":
        return _ATTENTION_INTERP.fit(kernel, items, rows, keys, head_dim)
    (block_n, block_m_bwd), per_kernel = _ATTENTION_CUDA[dtype_name]
    free, num_warps = per_kernel[kernel]
    block_m = block_m_bwd if kernel == "dkdv" else free
    block_n_bwd = free if kernel == "dkdv" else block_n
    return AttentionConfig(block_n=block_n, block_m_bwd=block_m_bwd, block_m=block_m, block_n_bwd=block_n_bwd,
                           block_d=max(16, _pow2_at_least(head_dim)), num_warps=num_warps, num_stages=2)


def attention_config(dtype: torch.dtype, kernel: str, *, items: int, rows: int, keys: int,
                     head_dim: int) -> AttentionConfig:
    return attention_config_for(table_backend(), _DTYPE_NAME[dtype], kernel, items=items, rows=rows, keys=keys,
                                head_dim=head_dim)
