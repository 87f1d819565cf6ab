"""The compiled (``tl.dot``) forms of the matmul tiles of ``kernels/matmul.py``: what a GPU runs.

``matmul_compiled_kernel``, ``bmm_compiled_kernel`` and ``linear_tile_compiled`` are their
interpreter forms with one step changed: a K block's products are summed by ``tl.dot`` on native
fp16/bf16 operands (tensor cores, pipelined loads) or IEEE fp32, into the fp32 accumulator
(``_k_range_compiled``). The program mapping, the tile's pointers and masks, the split-K chunks,
the bias and the store are kernels/matmul.py's shared helpers, so both forms follow one logic.
``ops._common.kernel_form`` launches these where ``native_dot()`` holds; under the interpreter
(tests, DESIGN.md section 3.6) their ``tl.dot`` is ``np.matmul``: accurate, not batch-invariant.
"""

import triton
import triton.language as tl

from .formats import BF16, FP16
from .matmul import bmm_tile, grouped_tile, split_chunk, store_bmm_tile, store_tile, tile_operands, with_bias
from .rounding import round_fp32, to_fp32
from .specialization import tile_kernel


@triton.jit
def _native_pointer(ptrs, KIND: tl.constexpr):
    """Compiled form only: int16 pointers of 16-bit data as fp16/bf16 pointers (fp32 ones unchanged)."""
    if KIND == FP16:
        return ptrs.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == BF16:
        return ptrs.to(tl.pointer_type(tl.bfloat16), bitcast=True)
    else:
        return ptrs


@triton.jit
def _k_range_compiled(acc, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, k_lo, k_hi,
                      KIND: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``_k_range``: ``tl.dot`` per K block on native fp16/bf16 operands (tensor cores) or IEEE
    fp32, into the fp32 accumulator. (Under the interpreter this ``tl.dot`` is ``np.matmul``: accurate, not
    batch-invariant; tests run it there for accuracy and logic only, DESIGN.md section 3.6.)"""
    a_ptrs = a_base + (ka + k_lo) * stride_ak
    b_ptrs = b_base + (kb + k_lo) * stride_bk
    # Load fp16/bf16 directly (a pointer bitcast, not a value bitcast after the load), so the
    # loads feed tl.dot straight from shared memory and the compiler can pipeline them.
    a_ptrs = _native_pointer(a_ptrs, KIND)
    b_ptrs = _native_pointer(b_ptrs, KIND)
    a_step = tl.cast(stride_ak, tl.int64) * BLOCK_K
    b_step = tl.cast(stride_bk, tl.int64) * BLOCK_K
    for k0 in range(k_lo, k_hi, BLOCK_K):
        # load: lanes past k_hi (and masked rows/columns) read 0 on both operands (0 * inf would be NaN)
        k_left = k_hi - k0
        a = tl.load(a_ptrs, mask=a_ok & (ka < k_left), other=0)
        b = tl.load(b_ptrs, mask=b_ok & (kb < k_left), other=0)
        # multiply-accumulate in fp32
        acc = tl.dot(a, b, acc, input_precision="ieee")
        a_ptrs += a_step
        b_ptrs += b_step
    return acc


@triton.jit
def _sum_over_k_compiled(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, K, k_chunk,
                         KIND: tl.constexpr, SPLITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``_sum_over_k``: the same chunks, each summed by ``_k_range_compiled``."""
    if SPLITS == 1:
        total = _k_range_compiled(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, 0, K,
                                  KIND, BLOCK_K)
    else:
        total = zero
        for s in range(SPLITS):
            k_lo, k_hi = split_chunk(s, k_chunk, K)
            part = _k_range_compiled(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, k_lo, k_hi,
                                     KIND, BLOCK_K)
            total += to_fp32(round_fp32(part, KIND), KIND)
    return total


@triton.jit
def linear_tile_unrounded_compiled(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                                   stride_am, stride_ak, stride_bk, stride_bn,
                                   KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``linear_tile_unrounded``."""
    a_base, b_base, a_ok, b_ok, ka, kb = tile_operands(a_ptr, b_ptr, pid_m, pid_n, M, N, stride_am, stride_bn,
                                                        BLOCK_M, BLOCK_N, BLOCK_K)
    total = _sum_over_k_compiled(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base, a_ok, b_ok,
                                 ka, kb, stride_ak, stride_bk, K, k_chunk, KIND, SPLITS, BLOCK_K)
    return with_bias(total, bias_ptr, pid_n, N, KIND, HAS_BIAS, BLOCK_N)


@triton.jit
def linear_tile_compiled(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                         stride_am, stride_ak, stride_bk, stride_bn,
                         KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``linear_tile``: the value ``matmul_compiled_kernel`` stores."""
    total = linear_tile_unrounded_compiled(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                                           stride_am, stride_ak, stride_bk, stride_bn,
                                           KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    return to_fp32(round_fp32(total, KIND), KIND)


@tile_kernel(batch_args=("M",))
def matmul_compiled_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, k_chunk,
                           stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                           KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr):
    """Compiled form of ``matmul_kernel`` (``tl.dot``)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # compute: fp32 tile, bias added, not yet rounded
    total = linear_tile_unrounded_compiled(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                                           stride_am, stride_ak, stride_bk, stride_bn,
                                           KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    # round once and store
    store_tile(c_ptr, total, pid_m, pid_n, M, N, stride_cm, stride_cn, KIND, BLOCK_M, BLOCK_N)


@tile_kernel(batch_args=("BATCH", "M"))
def bmm_compiled_kernel(a_ptr, b_ptr, c_ptr, BATCH, M, N, K, k_chunk,
                        stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                        stride_cb, stride_cm, stride_cn,
                        KIND: tl.constexpr, SPLITS: tl.constexpr, BLOCK_BATCH: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``bmm_kernel`` (a 3-D ``tl.dot``)."""
    offs_b, offs_m, offs_n, a_base, b_base, a_ok, b_ok, ka, kb = bmm_tile(
        a_ptr, b_ptr, BATCH, M, N, stride_ab, stride_am, stride_bb, stride_bn, BLOCK_BATCH, BLOCK_M, BLOCK_N, BLOCK_K)
    # compute: the same K walk as the 2-D tile, on (BLOCK_BATCH, ., .) tiles
    total = _sum_over_k_compiled(tl.zeros((BLOCK_BATCH, BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base,
                                 a_ok, b_ok, ka, kb, stride_ak, stride_bk, K, k_chunk, KIND, SPLITS, BLOCK_K)
    # round and store
    store_bmm_tile(c_ptr, total, offs_b, offs_m, offs_n, BATCH, M, N, stride_cb, stride_cm, stride_cn, KIND)

