"""Scaled FP8 matmul tiles: C = round((A @ B) * scale_a * scale_b + bias), fp32 accumulation over K in index order.

``scaled_mm_kernel`` (interpreter form) and ``scaled_mm_compiled_kernel`` (compiled form) compute one
(BLOCK_M, BLOCK_N) output tile per program:

* A (M, K) and B (K, N) hold fp8 bit patterns (uint8 views; any strides). Their values are
  widened exactly to fp32 (``rounding.to_fp32``: integer operations, no hardware fp8 cast), and
  every product of two fp8 values is exact in fp32 (at most 8 significant bits, exponents well
  inside fp32's normal range).
* K is walked in BLOCK_K blocks in index order, each block added into one fp32 accumulator,
  as ``kernels/matmul.py`` does: BLOCK_K comes from the matmul's tile table, so the K order
  is the matmul's (I6), and a row's result never depends on M or the other rows (I2).
* Masked loads give the pattern 0 (+0.0) on *both* operands: padding adds 0 * 0 (I3).
* Epilogue, in fp32 with no fused multiply-add (launches pass ``enable_fp_fusion=False``):
  ``t = acc * scale_a``, then ``t = t * scale_b``, then ``t = t + bias``, then one rounding
  to the output format (``round_fp32``). Scales are tensor-wise (one fp32 value each) or
  row-wise for A (one per row, (M,)) and column-wise for B (one per column, (N,)).

The two forms share the program mapping and the tile's pointers and masks (kernels/matmul.py's
``grouped_tile`` and ``tile_operands``) and the epilogue (``_scale_bias_store``); they differ in how
a K block's products are summed:

* interpreter form (``_fp8_sum_over_k``): no ``tl.dot`` (OpenBLAS's value for an element depends on
  its position in the tile). Both operands are widened to fp32, multiplied elementwise and each
  element's BLOCK_K products added in K order by ``tl.sum`` over the leading K axis.
* compiled form (``_fp8_sum_over_k_compiled``, every CUDA target): the operands are widened to fp16
  (exact: every e4m3 and e5m2 value is an fp16 value) and summed by an fp16 ``tl.dot`` with an fp32
  accumulator; on sm_90 Triton 3.9 lowers it to fp16 ``wgmma``. No fp8 dot: Triton uses fp8 ``wgmma`` only
  with ``max_num_imprecise_acc >= 32`` (its default on sm_90 is 2^30), and then sums the 32
  products of each instruction at the tensor core's reduced precision before promoting to
  fp32, which breaks I6; with ``max_num_imprecise_acc=0`` it falls back to fp16 ``mma.sync``
  on upcast operands, slower than this path's ``wgmma`` (compiled offline for sm_90).

``ops._common.kernel_form`` picks the form an op launches.

The row count M is never specialised (``tile_kernel``), so a one-row launch runs the same
compiled kernel as the batch.
"""

import triton
import triton.language as tl

from .matmul import _block_products_split_n, grouped_tile, store_tile, tile_operands, with_bias
from .rounding import to_fp32
from .specialization import tile_kernel


@triton.jit
def _interpreted_fp8_block(acc, a_ptrs, b_ptrs, a_mask, b_mask, A_KIND: tl.constexpr, B_KIND: tl.constexpr):
    """Interpreter form only: acc + the K-ordered sum of one K block's products; A read as (BK, BM, 1), B as
    (BK, 1, BN)."""
    # load: masked lanes read the pattern 0 (+0.0) on both operands; widen exactly to fp32
    a = to_fp32(tl.load(a_ptrs, mask=a_mask, other=0), A_KIND)
    b = to_fp32(tl.load(b_ptrs, mask=b_mask, other=0), B_KIND)
    # multiply (exact) and add the BLOCK_K products of each element in K order
    if a.numel * b.shape[-1] <= tl.TRITON_MAX_TENSOR_NUMEL:
        acc += tl.sum(a * b, axis=0)
    else:
        acc += _block_products_split_n(a, b)
    return acc


@triton.jit
def _fp8_sum_over_k(acc, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, K,
                    A_KIND: tl.constexpr, B_KIND: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + sum over k of A[rows, k] * B[k, cols], one BLOCK_K block at a time, in index order (interpreter form).

    ``a_base`` (BM, 1) and ``b_base`` (1, BN) point at the tile's rows/columns at k = 0;
    ``a_ok`` / ``b_ok`` mask them; ``ka`` (1, BK) / ``kb`` (BK, 1) are int64 ``tl.arange(0, BLOCK_K)``
    (``tile_operands``).
    """
    # K-major tiles (as kernels/matmul.py's interpreter form): the product tile's K axis is the
    # outermost, so numpy adds whole (BM, BN) planes one K slice at a time, in index order.
    k_offs = tl.reshape(ka, (BLOCK_K, 1, 1))
    a_ptrs = tl.expand_dims(a_base, 0) + k_offs * stride_ak
    b_ptrs = tl.expand_dims(b_base, 0) + k_offs * stride_bk
    a_ok3 = tl.expand_dims(a_ok, 0)
    b_ok3 = tl.expand_dims(b_ok, 0)
    for k0 in range(0, K, BLOCK_K):
        k_in = k_offs < K - k0
        acc = _interpreted_fp8_block(acc, a_ptrs, b_ptrs, a_ok3 & k_in, b_ok3 & k_in, A_KIND, B_KIND)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def _fp8_sum_over_k_compiled(acc, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, K,
                             A_KIND: tl.constexpr, B_KIND: tl.constexpr, BLOCK_K: tl.constexpr):
    """Compiled form of ``_fp8_sum_over_k``: each K block widened exactly to fp16 and summed by an fp16 ``tl.dot``
    into the fp32 accumulator."""
    a_ptrs = a_base + ka * stride_ak
    b_ptrs = b_base + kb * stride_bk
    for k0 in range(0, K, BLOCK_K):
        # load: lanes past K (and masked rows/columns) read the pattern 0 (+0.0) on both operands
        a = tl.load(a_ptrs, mask=a_ok & (ka < K - k0), other=0)
        b = tl.load(b_ptrs, mask=b_ok & (kb < K - k0), other=0)
        # exact widening to fp16, then fp16 tensor cores with an fp32 accumulator
        a = to_fp32(a, A_KIND).to(tl.float16)
        b = to_fp32(b, B_KIND).to(tl.float16)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def _scale_bias_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, pid_m, pid_n, M, N, stride_cm, stride_cn,
                      ROW_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_KIND: tl.constexpr,
                      OUT_KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The epilogue of tile (pid_m, pid_n): (acc * scale_a) * scale_b (+ bias), each step rounded to fp32 on its
    own, then one rounding to OUT_KIND, stored."""
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    if ROW_SCALES:
        scale_a = tl.load(scale_a_ptr + offs_m, mask=offs_m < M, other=1.0)
        scale_b = tl.load(scale_b_ptr + offs_n, mask=offs_n < N, other=1.0)
        acc = acc * scale_a[:, None]
        acc = acc * scale_b[None, :]
    else:
        acc = acc * tl.load(scale_a_ptr)
        acc = acc * tl.load(scale_b_ptr)
    acc = with_bias(acc, bias_ptr, pid_n, N, BIAS_KIND, HAS_BIAS, BLOCK_N)
    store_tile(c_ptr, acc, pid_m, pid_n, M, N, stride_cm, stride_cn, OUT_KIND, BLOCK_M, BLOCK_N)


@tile_kernel(batch_args=("M",))
def scaled_mm_kernel(a_ptr, b_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, M, N, K,
                     stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                     A_KIND: tl.constexpr, B_KIND: tl.constexpr, ROW_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BIAS_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C (M, N) = round(A (M, K) @ B (K, N) * scale_a * scale_b + bias), one (BLOCK_M, BLOCK_N) tile per program
    (interpreter form)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    a_base, b_base, a_ok, b_ok, ka, kb = tile_operands(a_ptr, b_ptr, pid_m, pid_n, M, N, stride_am, stride_bn,
                                                       BLOCK_M, BLOCK_N, BLOCK_K)
    # compute: fp32 sum of exact products over K in index order
    acc = _fp8_sum_over_k(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base, a_ok, b_ok, ka, kb,
                          stride_ak, stride_bk, K, A_KIND, B_KIND, BLOCK_K)
    # scale, add the bias, round once and store
    _scale_bias_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, pid_m, pid_n, M, N, stride_cm, stride_cn,
                      ROW_SCALES, HAS_BIAS, BIAS_KIND, OUT_KIND, BLOCK_M, BLOCK_N)


@tile_kernel(batch_args=("M",))
def scaled_mm_compiled_kernel(a_ptr, b_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, M, N, K,
                              stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                              A_KIND: tl.constexpr, B_KIND: tl.constexpr, ROW_SCALES: tl.constexpr,
                              HAS_BIAS: tl.constexpr, BIAS_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              GROUP_M: tl.constexpr):
    """Compiled form of ``scaled_mm_kernel`` (fp16 ``tl.dot`` on the exactly widened operands)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    a_base, b_base, a_ok, b_ok, ka, kb = tile_operands(a_ptr, b_ptr, pid_m, pid_n, M, N, stride_am, stride_bn,
                                                       BLOCK_M, BLOCK_N, BLOCK_K)
    # compute: fp32 sum of exact products over K in index order
    acc = _fp8_sum_over_k_compiled(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base, a_ok, b_ok,
                                   ka, kb, stride_ak, stride_bk, K, A_KIND, B_KIND, BLOCK_K)
    # scale, add the bias, round once and store
    _scale_bias_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, pid_m, pid_n, M, N, stride_cm, stride_cn,
                      ROW_SCALES, HAS_BIAS, BIAS_KIND, OUT_KIND, BLOCK_M, BLOCK_N)
