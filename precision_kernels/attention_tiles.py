"""Tile tables of the fused attention kernels (kernels/attention.py), per backend table and dtype name.

Two tiles per table and dtype are reduction orders (``AttentionConfig`` says which); the others
change no bit. Under the interpreter they are fitted to each call (``FittedAttentionTiles``); the
CUDA table fixes them per kernel (``FixedAttentionTiles``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .tiles import checked_count, pow2_at_least


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
        block_d = max(2, pow2_at_least(head_dim))
        if kernel == "dkdv":
            free = min(max(pow2_at_least(keys), 2), self.max_rows)
            per_item = block_d * self.block_m_bwd * free
            block_m, block_n_bwd = self.block_m_bwd, free
        else:
            free = min(max(pow2_at_least(rows), 2), self.max_rows)
            per_item = block_d * self.block_n * free
            block_m, block_n_bwd = free, self.block_n
        block_items = min(pow2_at_least(items), max(self.max_product // per_item, 1))
        return AttentionConfig(block_n=self.block_n, block_m_bwd=self.block_m_bwd, block_m=block_m,
                               block_n_bwd=block_n_bwd, block_d=block_d, block_items=block_items)


@dataclass(frozen=True)
class AttentionKernelTiles:
    """One kernel's part of a fixed table: its free tile (query rows per program for fwd and dq, keys per
    program for dkdv) and its warps."""

    free: int
    num_warps: int


@dataclass(frozen=True)
class HeadDimTiles:
    """The free tiles of the three kernels for head dims padded (``block_d``) to at most ``max_block_d`` (None: any)."""

    max_block_d: int | None
    fwd: AttentionKernelTiles
    dq: AttentionKernelTiles
    dkdv: AttentionKernelTiles


@dataclass(frozen=True)
class FixedAttentionTiles:
    """Attention tiles fixed per dtype (CUDA): one item per program, ``tl.dot`` tiles (every dimension >= 16,
    ``block_d`` the head dim padded to a power of two >= 16); the two orders, then each kernel's free tile and
    warps by head dim (``by_head_dim``, increasing ``max_block_d``, the last None). A model has one head dim, so
    every launch of a model's layer has the same tiles; and these tiles change no bit anyway."""

    block_n: int
    block_m_bwd: int
    by_head_dim: tuple
    num_stages: int = 2

    def fit(self, kernel: str, items: int, rows: int, keys: int, head_dim: int) -> AttentionConfig:
        block_d = max(16, pow2_at_least(head_dim))
        tiles = next(t for t in self.by_head_dim if t.max_block_d is None or block_d <= t.max_block_d)
        own = getattr(tiles, kernel)
        block_m = self.block_m_bwd if kernel == "dkdv" else own.free
        block_n_bwd = own.free if kernel == "dkdv" else self.block_n
        return AttentionConfig(block_n=self.block_n, block_m_bwd=self.block_m_bwd, block_m=block_m,
                               block_n_bwd=block_n_bwd, block_d=block_d, num_warps=own.num_warps,
                               num_stages=self.num_stages)


def _tiles(max_block_d: int | None, fwd: tuple, dq: tuple, dkdv: tuple) -> HeadDimTiles:
    """One ``HeadDimTiles`` from (free tile, warps) pairs."""
    return HeadDimTiles(max_block_d, *(AttentionKernelTiles(*t) for t in (fwd, dq, dkdv)))


_ATTENTION_INTERP = FittedAttentionTiles(block_n=64, block_m_bwd=64)
# CUDA: per dtype the two orders (block_n, block_m_bwd), unchanged; then per head dim each kernel's free tile
# (query rows per forward/dq program, keys per dk/dv program) and warps, which are not orders. Every product but
# q k^T is an IEEE fp32 tl.dot (P is never rounded to 16 bits): FMA, not tensor cores, with its operands and
# 64-bit pointer tiles in registers. Chosen so that no variant spills (compile_check --all --only attention:
# sm_80 and sm_90, matched and split-KV forward, generic and contiguous calls) where that was reachable; the
# exceptions are compile_registry.SPILL_ALLOWANCES. Before: one tile set per dtype, spilling 8-2848 bytes at head
# dims 64 and 128. ptxas's spills do not shrink with the tile (it steps between occupancy levels), so these
# were searched variant by variant. Head dims above 128 take the 128 tiles, uncompiled by the check.
_ATTENTION_CUDA32 = FixedAttentionTiles(block_n=16, block_m_bwd=16, by_head_dim=(
    _tiles(16, fwd=(32, 4), dq=(16, 4), dkdv=(16, 8)),
    _tiles(64, fwd=(16, 8), dq=(16, 16), dkdv=(16, 8)),
    _tiles(None, fwd=(16, 8), dq=(32, 8), dkdv=(16, 8)),
))
_ATTENTION_CUDA16 = FixedAttentionTiles(block_n=32, block_m_bwd=32, by_head_dim=(
    _tiles(16, fwd=(64, 4), dq=(32, 4), dkdv=(32, 8)),
    _tiles(64, fwd=(32, 8), dq=(16, 8), dkdv=(16, 8)),
    _tiles(None, fwd=(16, 16), dq=(16, 16), dkdv=(16, 8)),
))
_ATTENTION_TABLE = {
    ("interpreter", "fp32"): _ATTENTION_INTERP,
    ("interpreter", "fp16"): _ATTENTION_INTERP,
    ("interpreter", "bf16"): _ATTENTION_INTERP,
    ("cuda", "fp32"): _ATTENTION_CUDA32,
    ("cuda", "fp16"): _ATTENTION_CUDA16,
    ("cuda", "bf16"): _ATTENTION_CUDA16,
}
ATTENTION_KERNELS = ("fwd", "dq", "dkdv")


def attention_orders_for(table: str, dtype_name: str) -> tuple[int, int]:
    """(block_n, block_m_bwd): the key block of the forward/dq sums and the query block of the dk/dv sums."""
    entry = _ATTENTION_TABLE[(table, dtype_name)]
    return entry.block_n, entry.block_m_bwd


def attention_config_for(table: str, dtype_name: str, kernel: str, *, items: int, rows: int, keys: int,
                         head_dim: int) -> AttentionConfig:
    """The tiles of one attention kernel launch ("fwd", "dq" or "dkdv") on ``items`` (batch, head) items
    (``(batch, kv head)`` for dkdv), ``rows`` queries and ``keys`` keys of head dim ``head_dim``."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {ATTENTION_KERNELS}")
    items, rows, keys, head_dim = (checked_count(n, v) for n, v in
                                   (("items", items), ("rows", rows), ("keys", keys), ("head_dim", head_dim)))
    return _ATTENTION_TABLE[(table, dtype_name)].fit(kernel, items, rows, keys, head_dim)
