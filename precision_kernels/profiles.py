"""Tile configs, chosen only by backend, dtype and profile (never by data; by shape only as below).

The tables themselves are in ``tiles`` (matmuls, row reductions, fused LM head) and
``attention_tiles``; this module picks the table in effect (``table_backend``), holds the
profiles and re-exports the tables' names, so ``profiles.matmul_config_for`` and the like keep working.

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

Tests run the CUDA table under the interpreter at small shapes through ``config_backend("cuda")``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import backend
from .attention_tiles import (
    ATTENTION_KERNELS,
    AttentionConfig,
    AttentionKernelTiles,
    FittedAttentionTiles,
    FixedAttentionTiles,
    HeadDimTiles,
    attention_config_for,
    attention_orders_for,
)
from .tiles import (
    _MATMUL_TABLE,  # noqa: F401  (tests swap entries of these dicts in place, through this module)
    _ROWS,  # noqa: F401
    LM_HEAD_BWD_CHUNK,
    FittedTiles,
    LMHeadConfig,
    LMHeadTiles,
    MatmulConfig,
    MBucket,
    RowConfig,
    check_m_buckets,
    checked_count,
    lm_head_config_for,
    matmul_block_k_for,
    matmul_buckets_for,
    matmul_config_for,
    matmul_entry_for,
    pick_m_bucket,
    row_config_for,
)

__all__ = [
    "ATTENTION_KERNELS", "AttentionConfig", "AttentionKernelTiles", "EngineConfig", "FittedAttentionTiles",
    "FittedTiles", "FixedAttentionTiles", "HeadDimTiles", "LMHeadConfig", "LMHeadTiles", "LM_HEAD_BWD_CHUNK", "MBucket",
    "MatmulConfig", "PROFILES", "RowConfig", "active_profile", "attention_config", "attention_config_for",
    "attention_forward_split", "attention_orders_for", "attention_splits_for", "check_m_buckets", "config_backend",
    "engine_config", "engine_splits_for", "lm_head_config", "lm_head_config_for", "matmul_block_k_for",
    "matmul_buckets_for", "matmul_config", "matmul_config_for", "matmul_entry_for", "num_splits_heuristic",
    "pick_m_bucket", "row_config", "row_config_for", "table_backend", "use_profile",
]

PROFILES = ("matched", "engine", "engine-matmul", "engine-attention")
_SPLIT_K_PROFILES = ("engine", "engine-matmul")
_SPLIT_KV_PROFILES = ("engine", "engine-attention")


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


_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
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


# The tiles of the table in effect, by torch dtype.

def matmul_config(dtype: torch.dtype, batched: bool = False, m: int | None = None, n: int | None = None,
                  k: int | None = None, items: int | None = None) -> MatmulConfig:
    return matmul_config_for(table_backend(), _DTYPE_NAME[dtype], batched, m, n, k, items)


def row_config(dtype: torch.dtype, rows: int | None = None) -> RowConfig:
    return row_config_for(table_backend(), rows)


def lm_head_config(dtype: torch.dtype) -> LMHeadConfig:
    return lm_head_config_for(table_backend(), _DTYPE_NAME[dtype])


def attention_config(dtype: torch.dtype, kernel: str, *, items: int, rows: int, keys: int,
                     head_dim: int) -> AttentionConfig:
    return attention_config_for(table_backend(), _DTYPE_NAME[dtype], kernel, items=items, rows=rows, keys=keys,
                                head_dim=head_dim)


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
    items, rows, keys = (checked_count(n, v) for n, v in (("items", items), ("rows", rows), ("keys", keys)))
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


def attention_forward_split(items: int, rows: int, keys: int, block_n: int, *,
                            whole_tiles: bool) -> tuple[int, int, int]:
    """(chunks, keys per chunk, key block) of an attention forward in the active profile; (1, 0, ``block_n``), the
    table's key block, when it does not split (``attention_splits_for`` says which calls split).

    A split call's chunks are whole key blocks: the engine's ``attention_split_block`` keys (at most ``block_n``),
    or, where the kernel's key tile must stay whole (``whole_tiles``: a ``tl.dot`` tile), ``block_n`` keys."""
    block = max(_ENGINE.attention_split_block, block_n) if whole_tiles else min(_ENGINE.attention_split_block, block_n)
    chunks, per_chunk = attention_splits_for(items, rows, keys, block)
    return chunks, per_chunk, block if chunks > 1 else block_n
