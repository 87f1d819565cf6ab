"""Tile configs, chosen only by backend, dtype and profile (never by shape or data).

Two profiles:

* ``matched`` (the default) keeps invariants I1-I6: every row of every launch
  goes through the same tile shapes and the same reduction order.
* ``engine`` mimics an inference engine's decode kernels: a matmul with
  ``M <= engine_split_m`` rows splits K into ``engine_splits`` partial sums, rounds
  each partial to the output dtype, and adds them in a fixed order. It is
  deterministic but deliberately breaks I2/I3 for small M.

The interpreter and CUDA tile tables differ (few large programs under the
interpreter; tensor-core shapes on GPU). Tests run the CUDA table under the
interpreter at small shapes through ``config_backend("cuda")``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import backend

PROFILES = ("matched", "engine")


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
class RowConfig:
    """Row reductions (softmax, log-softmax, RMSNorm, token log-probs)."""

    block_rows: int               # rows per program
    block_cols: int               # fixed reduction block along the row
    num_warps: int = 4


@dataclass(frozen=True)
class EngineConfig:
    split_m: int = 64             # calls with at most this many rows split K
    splits: int = 4               # number of partial sums, each rounded to the output dtype


# (backend table, dtype) -> (2-D config, batched config).  Only these keys decide a tile.
# The 2-D and batched configs of one backend and dtype share block_k, so K is cut into the
# same blocks and a batched product equals the 2-D product of each item, bitwise.
# Interpreter: few, large programs (each tile operation is a Python-level step).
# CUDA: tensor-core tiles (every tl.dot dimension >= 16, powers of two).
_INTERP_2D = MatmulConfig(block_m=256, block_n=128, block_k=32)
_INTERP_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=32, block_batch=64)
_CUDA16_2D = MatmulConfig(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=3)
_CUDA16_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=64, block_batch=2, num_warps=4, num_stages=2)
_CUDA32_2D = MatmulConfig(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)
_CUDA32_BATCHED = MatmulConfig(block_m=16, block_n=32, block_k=32, block_batch=2, num_warps=4, num_stages=2)
_MATMUL_TABLE = {
    ("interpreter", "fp32"): (_INTERP_2D, _INTERP_BATCHED),
    ("interpreter", "fp16"): (_INTERP_2D, _INTERP_BATCHED),
    ("interpreter", "bf16"): (_INTERP_2D, _INTERP_BATCHED),
    ("cuda", "fp32"): (_CUDA32_2D, _CUDA32_BATCHED),
    ("cuda", "fp16"): (_CUDA16_2D, _CUDA16_BATCHED),
    ("cuda", "bf16"): (_CUDA16_2D, _CUDA16_BATCHED),
}
_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_ROWS = {
    # 512 x 128: an interpreter program costs ~1 ms per nested jit call plus ~4 ms per 64K
    # elements of tile work per block, so short rows (attention, small vocabularies) want many
    # rows per program and long rows want few blocks; this balances the two.
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


def matmul_config_for(table: str, dtype_name: str, batched: bool = False) -> MatmulConfig:
    """The matmul tiles of one table ("interpreter" or "cuda") and dtype name ("fp32", "fp16", "bf16")."""
    two_d, batched_cfg = _MATMUL_TABLE[(table, dtype_name)]
    return batched_cfg if batched else two_d


def matmul_config(dtype: torch.dtype, batched: bool = False) -> MatmulConfig:
    return matmul_config_for(table_backend(), _DTYPE_NAME[dtype], batched)


def row_config_for(table: str) -> RowConfig:
    """The row-reduction tiles of one table ("interpreter" or "cuda"); the same for every dtype."""
    return _ROWS[table]


def row_config(dtype: torch.dtype) -> RowConfig:
    return row_config_for(table_backend())


def engine_config() -> EngineConfig:
    return _ENGINE


def engine_splits_for(m: int) -> int:
    """Number of rounded K partials the active profile uses for a call with ``m`` rows (1 = none)."""
    if active_profile() == "engine" and m <= _ENGINE.split_m:
        return _ENGINE.splits
    return 1


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


_LM_HEAD_BLOCK_M = {"interpreter": 256, "cuda": 64}
_LM_HEAD_BLOCK_V_CUDA = 128
# Vocab columns per backward chunk: the dlogits buffer is (rows x this) at most.
LM_HEAD_BWD_CHUNK = 8192


def lm_head_config_for(table: str, dtype_name: str) -> LMHeadConfig:
    two_d = matmul_config_for(table, dtype_name)
    block_v = _ROWS[table].block_cols if table == "interpreter" else _LM_HEAD_BLOCK_V_CUDA
    return LMHeadConfig(block_m=_LM_HEAD_BLOCK_M[table], block_v=block_v, block_k=two_d.block_k,
                        num_warps=4 if table == "interpreter" else 8)


def lm_head_config(dtype: torch.dtype) -> LMHeadConfig:
    return lm_head_config_for(table_backend(), _DTYPE_NAME[dtype])
