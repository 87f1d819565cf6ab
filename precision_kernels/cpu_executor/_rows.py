"""What the row-kernel twins share (softmax.py, norm.py, layer_norm.py, token_logprobs.py).

The row kernels' bits come from numpy under the interpreter: every reduction is ``tl.sum`` or
``tl.max`` of a (BLOCK_ROWS, BLOCK_COLS) tile, and the rest is ``np.exp`` / ``np.log`` and
elementwise fp32 arithmetic on tiles and per-row vectors. So these twins are numpy programs that
make the same numpy calls on arrays laid out so that each call sees what the interpreter's call
sees (EXECUTOR_API.md section 3), but for all rows and all blocks at once:

* A launch's row operand becomes **blocks**: a C-contiguous (n_blocks, rows, BLOCK_COLS) fp32
  array, block b holding columns [b * BLOCK_COLS, (b + 1) * BLOCK_COLS) of every row, masked lanes
  holding what the kernel's ``tl.load(..., other=0)`` gives them. ``np.sum`` / ``np.fmax.reduce``
  along its last axis then run numpy's pairwise sum / SIMD max over runs of exactly BLOCK_COLS
  elements, the tile's rows; per-block row values are (n_blocks, rows) arrays.
* The row count is padded to a multiple of ``LANES``, and a per-row value broadcast over a tile
  is a materialised (n_blocks, rows, 1) array. numpy's elementwise loops are exact, but which
  operand's NaN an ``a + b`` or ``a * b`` of two NaNs keeps, and which zero ``np.fmax(-0, +0)``
  keeps, depend on where the element falls in numpy's vector loop (the body keeps the first, a
  tail the second). The interpreter's loops run over power-of-two tiles (no tail) or over the
  BLOCK_COLS lanes of one row (a broadcast operand); these layouts give every loop the same length.
  (A precaution: no output of these kernels was seen to depend on it, since np.exp and np.log
  return one NaN and a subtraction keeps its first operand's.)
* ``tl.maximum`` of the running row max is the one place where the row itself is not enough:
  ``np.fmax`` on -0 and +0 keeps a zero that depends on the row's lane in its program's
  (BLOCK_ROWS,) vector, so ``running_max`` replays those calls program by program when a block
  max is a zero.
* Column sums (the norm backward's partials, ``col_sum_kernel``) are ``np.sum(tile, axis=0)`` on
  the very (BLOCK_ROWS, BLOCK_COLS) tiles of the kernel, padding rows included.

Rounding to fp16/bf16 is ``_numba.rounded`` (compiled; the exact ``round_fp32``).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from ._numba import FP16, FP32, rounded

LANES = 16
NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)
ONE = np.float32(1.0)


def elements(t: torch.Tensor, shape: tuple, strides: tuple, writeable: bool = False) -> np.ndarray:
    """The elements a kernel reads at ``ptr + sum(index * stride)`` as a numpy view (strides in elements).
    (``_numba.flat`` does the same for twins that index with the strides themselves; this one is cheaper.)"""
    a = t.detach().numpy()
    return np.lib.stride_tricks.as_strided(a, shape, tuple(s * a.itemsize for s in strides), writeable=writeable)


def widened(raw: np.ndarray, kind: int) -> np.ndarray:
    """to_fp32 of raw elements (fp32 values, or int16 bits of fp16/bf16), as the interpreter computes it
    (fp32: ``raw`` itself, so pass a fresh array)."""
    if kind == FP32:
        return raw.astype(np.float32, copy=False)
    if kind == FP16:
        return raw.view(np.float16).astype(np.float32)
    return (raw.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


class Rows:
    """One row launch's shape: n_rows rows of n_cols, in blocks of ``block_cols``, programs of ``block_rows``."""

    def __init__(self, n_rows: int, n_cols: int, block_rows: int, block_cols: int):
        self.n_rows, self.n_cols = int(n_rows), int(n_cols)
        self.block_rows, self.block_cols = int(block_rows), int(block_cols)
        self.n_blocks = -(-self.n_cols // self.block_cols)
        self.rows = -(-self.n_rows // LANES) * LANES
        self.n_programs = -(-self.n_rows // self.block_rows)

    @property
    def cols(self) -> np.ndarray:
        """Each block's column indices, (n_blocks, 1, block_cols)."""
        return np.arange(self.n_blocks * self.block_cols).reshape(self.n_blocks, 1, self.block_cols)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """The kernel's tile mask, row < n_rows and col < n_cols: (n_blocks, rows, block_cols)."""
        return (np.arange(self.rows) < self.n_rows)[None, :, None] & (self.cols < self.n_cols)

    def blocks(self, t: torch.Tensor, kind: int, stride: int) -> np.ndarray:
        """to_fp32(tl.load(row operand, mask, other=0)) of every tile, as blocks (n_blocks, rows, block_cols)."""
        raw = elements(t, (self.n_rows, self.n_cols), (stride, 1))
        bc, full = self.block_cols, self.n_cols // self.block_cols
        tiles = np.zeros((self.n_blocks, self.rows, bc), raw.dtype)
        by_row = tiles.transpose(1, 0, 2)
        by_row[:self.n_rows, :full] = raw[:, :full * bc].reshape(self.n_rows, full, bc)
        if full < self.n_blocks:
            by_row[:self.n_rows, full, :self.n_cols - full * bc] = raw[:, full * bc:]
        return widened(tiles, kind)

    def columns(self, t: torch.Tensor, kind: int) -> np.ndarray:
        """to_fp32(tl.load(w_ptr + cols, mask=cols < n_cols, other=0)) of every block, as (n_blocks, 1, block_cols)."""
        given = elements(t, (self.n_cols,), (1,))
        raw = np.zeros(self.n_blocks * self.block_cols, given.dtype)
        raw[:self.n_cols] = given
        return widened(raw, kind).reshape(self.n_blocks, 1, self.block_cols)

    def vector(self, t: torch.Tensor, other, dtype=np.float32) -> np.ndarray:
        """tl.load(ptr + rows, mask=row_mask, other=other), padded rows included."""
        out = np.full(self.rows, other, dtype)
        out[:self.n_rows] = elements(t, (self.n_rows,), (1,))
        return out

    def constant(self, value) -> np.ndarray:
        """tl.full((BLOCK_ROWS,), value, tl.float32)."""
        return np.full(self.rows, value, np.float32)

    def per_block(self, v: np.ndarray) -> np.ndarray:
        """v[:, None] of a per-row vector, once per block: (n_blocks, rows, 1), a real array so that numpy's loop
        over a tile row stays block_cols long (a stride-0 broadcast over blocks would merge them)."""
        return np.ascontiguousarray(np.broadcast_to(v, (self.n_blocks, self.rows)))[:, :, None]

    def op(self, ufunc, a: np.ndarray, b: np.ndarray, kind_a: str, kind_b: str) -> np.ndarray:
        """ufunc(a, b) (add, subtract, multiply, divide) with the interpreter's NaN where both are NaN.

        numpy returns one operand's NaN (quieted), and which one depends on the lane's place in numpy's
        vector loop, hence on how the interpreter shapes the operands: ``kind_a`` / ``kind_b`` say how,
        "tile" (a (BLOCK_ROWS, BLOCK_COLS) array), "row" (a per-row vector broadcast along the tile),
        "col" (a per-column vector broadcast down it) or "vec" (a (BLOCK_ROWS,) vector). Lanes where both
        are NaN get the operand that the same numpy call on NaN-filled operands of those shapes returns.
        """
        out = ufunc(a, b)
        if not np.isnan(out).any():
            return out
        both = np.isnan(a) & np.isnan(b)
        if not both.any():
            return out
        second = _takes_second(ufunc, kind_a, kind_b, self.block_rows, self.block_cols)
        second = second[np.arange(self.rows) % self.block_rows]      # the row's lane in its program
        return np.where(both, np.where(second, _quiet(b), _quiet(a)), out)

    def store(self, t: torch.Tensor, values: np.ndarray, kind: int) -> None:
        """tl.store(out_ptr + row * n_cols + col, round_fp32(values, kind), mask) for blocks ``values``."""
        out = elements(t, (self.n_rows * self.n_cols,), (1,), writeable=True)
        _store_blocks(np.ascontiguousarray(values, np.float32), out, self.n_rows, self.n_cols, kind)

    def store_vector(self, t: torch.Tensor, v: np.ndarray) -> None:
        elements(t, (self.n_rows,), (1,), writeable=True)[:] = v[:self.n_rows]

    def running_max(self, block_max: np.ndarray) -> np.ndarray:
        """The running row max after each block: (n_blocks + 1, rows), row 0 = -inf (lse_init), row b + 1 =
        tl.maximum(row b, block b's tl.max) = np.fmax on each program's (BLOCK_ROWS,) vectors."""
        out = np.empty((self.n_blocks + 1, self.rows), np.float32)
        out[0] = NEG_INF
        if self.n_blocks == 0:
            return out
        if not (block_max == ZERO).any():
            # no -0/+0 tie can arise and the running max is never NaN: every lane's fmax is unambiguous
            np.fmax.accumulate(np.concatenate([out[:1], block_max]), axis=0, out=out)
            return out
        br = self.block_rows
        for p in range(self.n_programs):
            lo, hi = p * br, min((p + 1) * br, self.n_rows)
            run = np.full(br, NEG_INF, np.float32)
            for b in range(self.n_blocks):
                this = np.full(br, NEG_INF, np.float32)   # masked rows: the max of -inf lanes
                this[:hi - lo] = block_max[b, lo:hi]
                run = np.fmax(run, this)
                out[b + 1, lo:hi] = run[:hi - lo]
        return out

    def column_partials(self, values: np.ndarray, t: torch.Tensor) -> None:
        """Each program's tl.sum(values, axis=0) over its BLOCK_ROWS rows (masked rows +0), stored at
        part[program * n_cols + col]: the norm backward's weight-gradient partials."""
        part = elements(t, (self.n_programs * self.n_cols,), (1,), writeable=True)
        br, bc = self.block_rows, self.block_cols
        tile = np.zeros((br, bc), np.float32)
        for p in range(self.n_programs):
            lo, hi = p * br, min((p + 1) * br, self.n_rows)
            for b in range(self.n_blocks):
                width = min(bc, self.n_cols - b * bc)
                tile[:hi - lo] = values[b, lo:hi]
                tile[hi - lo:] = ZERO
                start = p * self.n_cols + b * bc
                part[start:start + width] = np.sum(tile, axis=0)[:width]


    def running_sum(self, block_sums: np.ndarray) -> np.ndarray:
        """acc = zeros; acc += block_sums[b] for each block in order (block_sums: (n_blocks, rows))."""
        acc = np.zeros(self.rows, np.float32)
        for b in range(block_sums.shape[0]):
            acc = acc + block_sums[b]
        if np.isnan(acc).any():     # a NaN reaches the total: only then can two NaNs have met
            acc = np.zeros(self.rows, np.float32)
            for b in range(block_sums.shape[0]):
                acc = self.op(np.add, acc, block_sums[b], "vec", "vec")
        return acc


_NAN_A, _NAN_B = np.uint32(0x7FC00001), np.uint32(0xFFC00002)


def _quiet(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32).view(np.uint32) | np.uint32(0x00400000)).view(np.float32)


@functools.cache
def _takes_second(ufunc, kind_a: str, kind_b: str, block_rows: int, block_cols: int) -> np.ndarray:
    """Where numpy's ufunc(a, b) on two NaNs, called as the interpreter calls it (operands built the way
    the interpreter builds them: a splat is a full array, ``v[:, None]`` a stride-0 broadcast), returns b's
    NaN: a (BLOCK_ROWS, BLOCK_COLS) or (BLOCK_ROWS,) boolean array."""
    def operand(kind, bits):
        nan = np.full(1, bits, np.uint32).view(np.float32)[0]
        if kind == "vec":
            return np.full(block_rows, nan, np.float32)
        if kind == "tile":
            return np.full((block_rows, block_cols), nan, np.float32)
        if kind == "row":
            return np.broadcast_to(np.full((block_rows, 1), nan, np.float32), (block_rows, block_cols))
        return np.broadcast_to(np.full((1, block_cols), nan, np.float32), (block_rows, block_cols))

    with np.errstate(all="ignore"):
        out = ufunc(operand(kind_a, _NAN_A), operand(kind_b, _NAN_B))
    return out.view(np.uint32) == (_NAN_B | np.uint32(0x00400000))


def store_flat(t: torch.Tensor, values: np.ndarray, kind: int) -> None:
    """t[i] = round_fp32(values[i], kind) for every i of ``values`` (1-D fp32; t contiguous from its first element)."""
    out = elements(t, values.shape, (1,), writeable=True)
    _store_blocks(np.ascontiguousarray(values, np.float32).reshape(1, 1, -1), out, 1, values.shape[0], kind)


@numba.njit(cache=True, nogil=True)
def _store_blocks(values, out, n_rows, n_cols, kind):
    bc = values.shape[2]
    for b in range(values.shape[0]):
        c0 = b * bc
        width = min(bc, n_cols - c0)
        for r in range(n_rows):
            at = r * n_cols + c0
            for c in range(width):
                out[at + c] = rounded(values[b, r, c], kind, out[0])


def compile_store() -> None:
    """Compile the one compiled piece of the row twins, the rounding store, for fp32 and int16 outputs
    (each row family's ``warm`` calls this; the rest of a row twin is numpy)."""
    for dtype in (np.float32, np.int16):
        _store_blocks(np.zeros((1, 1, 2), np.float32), np.zeros(2, dtype), 1, 2, int(dtype == np.int16))
