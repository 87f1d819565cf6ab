"""What every twin module shares: numba's set-up, the operand plumbing and the exact format helpers.

Imported only by the family modules (so only on the CPU backend's first launch).

* **Cache**: ``cache=True`` everywhere, in a folder named by this module's hash (``_cache_dir``).
* **Threading layer**: "threadsafe" (OpenMP, else TBB). numba's default may pick ``workqueue``,
  which aborts the process when two Python threads call a parallel function at once.
* **Threads**: ``threads()`` is ``torch.get_num_threads()`` (capped at numba's pool); a twin runs
  its serial entry point at 1 thread and its parallel one above. The serial entry never touches
  the OpenMP pool; a process forked after parallel twins ran is held to 1 thread (GNU OpenMP
  terminates a forked child that enters its parent's pool).
* ``flat(t)``: a tensor as a 1-D numpy view starting at its first element; twins index it with
  the launch's own element strides (stride 0, transposes and offsets all work, no copy, and
  numba compiles one layout per dtype instead of one per C/F/strided combination).
* ``widen(raw, kind)`` / ``rounded(x, kind, like)``: the exact fp32 value of a stored element and
  the bits ``round_fp32`` stores, by the same integer operations as ``kernels/rounding.py``
  (fp16 widening as numpy's ``astype``, which keeps NaN payloads). Overloaded on the array's
  dtype, so one twin body serves fp32 arrays and int16 bit patterns.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

numba.config.THREADING_LAYER = "threadsafe"


def _cache_dir() -> str:
    """numba's cache folder, named by this module's source: numba invalidates a cached function when its own
    file changes, but not when a helper it calls from here does, so an edit here must start a new cache."""
    digest = hashlib.sha256(Path(__file__).read_bytes() + numba.__version__.encode()).hexdigest()[:16]
    return str(Path(__file__).parent / "__pycache__" / f"numba-{digest}")


# Before any function here is decorated: the cache locator is chosen at decoration.
numba.config.CACHE_DIR = _cache_dir()

FP32, FP16, BF16 = 0, 1, 2


_pool_started = False   # this process has run a parallel twin (GNU OpenMP's pool exists)
_pool_forbidden = False  # forked from such a process: GNU OpenMP would terminate it on a parallel call


def _after_fork_in_child() -> None:
    global _pool_forbidden
    _pool_forbidden = _pool_started


os.register_at_fork(after_in_child=_after_fork_in_child)


def threads() -> int:
    """Threads a twin may use: torch's intra-op count, capped at numba's pool; sets numba's (per thread).

    1 in a process forked after parallel twins ran: GNU OpenMP terminates a forked child that enters
    the pool its parent started, so such a child runs the serial entry points (same bits).
    """
    global _pool_started
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n > 1 and not _pool_forbidden:
        _pool_started = True
        numba.set_num_threads(n)
        return n
    return 1


def flat(t: torch.Tensor) -> np.ndarray:
    """The elements ``t`` spans, from its first, as a 1-D numpy array (a view; element strides unchanged)."""
    if t.numel() == 0:
        return t.detach().new_empty(0).numpy()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return torch.as_strided(t.detach(), (span,), (1,), t.storage_offset()).numpy()


# numpy's fp16 -> fp32 widening (the interpreter's) of every pattern, indexed by the uint16 bits: the hot
# loops look fp16 up here (``widen16``), exact by construction, NaN payloads included.
FP16_TO_FP32 = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def widen(raw, kind):
    raise NotImplementedError


def widen16(raw, kind, table):
    raise NotImplementedError


def rounded(x, kind, like):
    raise NotImplementedError


@numba.njit(cache=True)
def _fp16_to_fp32(h: np.uint32) -> np.float32:
    # numpy's npy_halfbits_to_floatbits: exact, NaN payloads kept (a signalling NaN stays signalling)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exp = h & np.uint32(0x7C00)
    man = h & np.uint32(0x03FF)
    if exp == 0:
        if man == 0:
            bits = sign
        else:
            # subnormal: normalise the mantissa
            e = np.uint32(0)
            man = man << np.uint32(1)
            while (man & np.uint32(0x0400)) == 0:
                man = man << np.uint32(1)
                e += np.uint32(1)
            bits = sign | (((np.uint32(112) - e) << np.uint32(23)) & np.uint32(0x7FFFFFFF)) \
                | ((man & np.uint32(0x03FF)) << np.uint32(13))
    elif exp == np.uint32(0x7C00):
        bits = sign | np.uint32(0x7F800000) | (man << np.uint32(13))
    else:
        bits = sign | (((exp >> np.uint32(10)) + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13))
    return _bits_to_fp32(bits)


@intrinsic
def _u32_as_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _f32_as_u32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@numba.njit(cache=True)
def _bits_to_fp32(bits) -> np.float32:
    return _u32_as_f32(np.uint32(bits))


@numba.njit(cache=True)
def _fp32_bits(x) -> np.uint32:
    return _f32_as_u32(np.float32(x))


@numba.njit(cache=True)
def _fp32_to_bf16_bits(x: np.float32) -> np.uint32:
    bits = _fp32_bits(x)
    high = bits >> np.uint32(16)
    out = ((bits + np.uint32(0x7FFF) + (high & np.uint32(1))) & np.uint32(0xFFFFFFFF)) >> np.uint32(16)
    if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        out = (high & np.uint32(0x8000)) | np.uint32(0x7FC0)
    return out


@numba.njit(cache=True)
def _fp32_to_fp16_bits(x: np.float32) -> np.uint32:
    bits = _fp32_bits(x)
    mag = bits & np.uint32(0x7FFFFFFF)
    if mag > np.uint32(0x7F800000):
        out = np.uint32(0x7E00)
    elif mag < np.uint32(113 << 23):
        # 0.5 + |x| in fp32 rounds |x| to the fp16 subnormal step, to nearest even
        out = _fp32_bits(_bits_to_fp32(mag) + np.float32(0.5)) - np.uint32(0x3F000000)
    else:
        normal = ((mag - np.uint32(112 << 23) + np.uint32(0xFFF) + ((mag >> np.uint32(13)) & np.uint32(1)))
                  & np.uint32(0xFFFFFFFF)) >> np.uint32(13)
        out = min(normal, np.uint32(0x7C00))
    return out | ((bits >> np.uint32(16)) & np.uint32(0x8000))


@overload(widen)
def _widen(raw, kind):
    if isinstance(raw, types.Float):
        return lambda raw, kind: raw

    def impl(raw, kind):
        h = np.uint32(np.uint16(raw))
        if kind == BF16:
            return _bits_to_fp32(h << np.uint32(16))
        return _fp16_to_fp32(h)

    return impl


@overload(widen16)
def _widen16(raw, kind, table):
    """``widen`` with fp16 looked up in ``table`` (pass ``FP16_TO_FP32``)."""
    if isinstance(raw, types.Float):
        return lambda raw, kind, table: raw

    def impl(raw, kind, table):
        h = np.uint32(np.uint16(raw))
        if kind == BF16:
            return _bits_to_fp32(h << np.uint32(16))
        return table[h]

    return impl


@intrinsic
def stack_f32(typingctx, n):
    """Pointer to ``n`` (a compile-time constant) float32s on the caller's stack. Use as
    ``numba.carray(stack_f32(64), (64,))`` directly in the function that uses the array (an intrinsic is
    expanded in place; a helper returning the array would return its own dead stack frame). LLVM keeps a
    small stack array in registers, where an ``np.empty`` accumulator is reloaded and stored every step."""
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        buffer = cgutils.alloca_once(builder, ir.ArrayType(ir.FloatType(), n.literal_value))
        return builder.bitcast(buffer, ir.PointerType(ir.FloatType()))

    return types.CPointer(types.float32)(n), codegen


@overload(rounded)
def _rounded(x, kind, like):
    """The value round_fp32 stores, typed as the output array's elements (``like``: one of them)."""
    if isinstance(like, types.Float):
        return lambda x, kind, like: x

    def impl(x, kind, like):
        if kind == BF16:
            return np.int16(np.uint16(_fp32_to_bf16_bits(x)))
        return np.int16(np.uint16(_fp32_to_fp16_bits(x)))

    return impl


@numba.njit(cache=True)
def round_to_fp32(x: np.float32, kind: np.int64) -> np.float32:
    """to_fp32(round_fp32(x, kind), kind): x rounded to the storage format and widened back exactly."""
    if kind == BF16:
        return _bits_to_fp32(_fp32_to_bf16_bits(x) << np.uint32(16))
    if kind == FP16:
        return _fp16_to_fp32(_fp32_to_fp16_bits(x))
    return x


@numba.njit(cache=True)
def widen_all(raw, kind):
    """``widen`` over a 1-D array (tests hold the helpers against numpy and torch on every pattern)."""
    out = np.empty(raw.shape[0], np.float32)
    for i in range(raw.shape[0]):
        out[i] = widen(raw[i], kind)
    return out


@numba.njit(cache=True)
def round_all(x, kind):
    """``rounded`` to 16-bit bits over a 1-D fp32 array (kind 1 or 2), and ``round_to_fp32`` of it."""
    bits = np.empty(x.shape[0], np.int16)
    back = np.empty(x.shape[0], np.float32)
    for i in range(x.shape[0]):
        bits[i] = rounded(x[i], kind, bits[0])
        back[i] = round_to_fp32(x[i], kind)
    return bits, back
