"""Scaled FP8 matmul tiles: C = round((A @ B) * scale_a * scale_b + bias), fp32 accumulation over K in index order.

``scaled_mm_kernel`` computes one (BLOCK_M, BLOCK_N) output tile per program:

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

``DOT`` picks how a K block's products are summed:

* 0, the interpreter: no ``tl.dot`` (OpenBLAS's value for an element depends on its position
  in the tile). Both operands are widened to fp32, multiplied elementwise and each element's
  BLOCK_K products added in K order by ``tl.sum`` over the leading K axis.
* 1, compiled (every CUDA target): the operands are widened to fp16 (exact: every e4m3 and
  e5m2 value is an fp16 value) and summed by an fp16 ``tl.dot`` with an fp32 accumulator;
  on sm_90 Triton 3.9 lowers it to fp16 ``wgmma``. No fp8 dot: Triton uses fp8 ``wgmma`` only
  with ``max_num_imprecise_acc >= 32`` (its default on sm_90 is 2^30), and then sums the 32
  products of each instruction at the tensor core's reduced precision before promoting to
  fp32, which breaks I6; with ``max_num_imprecise_acc=0`` it falls back to fp16 ``mma.sync``
  on upcast operands, slower than this path's ``wgmma`` (compiled offline for sm_90).

The row count M is never specialised (``tile_kernel``), so a one-row launch runs the same
compiled kernel as the batch.
"""

import triton
import triton.language as tl

from .matmul import _block_products_split_n, grouped_tile
from .rounding import round_fp32, to_fp32
from .specialization import tile_kernel


@triton.jit
def _interpreted_fp8_block(acc, a_ptrs, b_ptrs, a_mask, b_mask, A_KIND: tl.constexpr, B_KIND: tl.constexpr):
    """Interpreter only: acc + the K-ordered sum of one K block's products; A read as (BK, BM, 1), B as (BK, 1, BN)."""
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
def _fp8_sum_over_k(acc, a_base, b_base, a_ok, b_ok, stride_ak, stride_bk, K,
                    A_KIND: tl.constexpr, B_KIND: tl.constexpr, DOT: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + sum over k of A[rows, k] * B[k, cols], one BLOCK_K block at a time, in index order.

    ``a_base`` (BM, 1) and ``b_base`` (1, BN) point at the tile's rows/columns at k = 0;
    ``a_ok`` / ``b_ok`` mask them.
    """
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    if DOT == 0:
        # K-major tiles (as kernels/matmul.py's interpreter path): the product tile's K axis is the
        # outermost, so numpy adds whole (BM, BN) planes one K slice at a time, in index order.
        k_offs = tl.reshape(offs_k, (BLOCK_K, 1, 1))
        a_ptrs = tl.expand_dims(a_base, 0) + k_offs * stride_ak
        b_ptrs = tl.expand_dims(b_base, 0) + k_offs * stride_bk
        a_ok3 = tl.expand_dims(a_ok, 0)
        b_ok3 = tl.expand_dims(b_ok, 0)
        for k0 in range(0, K, BLOCK_K):
            k_in = k_offs < K - k0
            acc = _interpreted_fp8_block(acc, a_ptrs, b_ptrs, a_ok3 & k_in, b_ok3 & k_in, A_KIND, B_KIND)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    else:
        a_ptrs = a_base + offs_k[None, :] * stride_ak
        b_ptrs = b_base + offs_k[:, None] * stride_bk
        for k0 in range(0, K, BLOCK_K):
            # load: lanes past K (and masked rows/columns) read the pattern 0 (+0.0) on both operands
            a = tl.load(a_ptrs, mask=a_ok & (offs_k[None, :] < K - k0), other=0)
            b = tl.load(b_ptrs, mask=b_ok & (offs_k[:, None] < K - k0), other=0)
            # exact widening to fp16, then fp16 tensor cores with an fp32 accumulator
            a = to_fp32(a, A_KIND).to(tl.float16)
            b = to_fp32(b, B_KIND).to(tl.float16)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    return acc


@tile_kernel(batch_args=("M",))
def scaled_mm_kernel(a_ptr, b_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, M, N, K,
                     stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                     A_KIND: tl.constexpr, B_KIND: tl.constexpr, ROW_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BIAS_KIND: tl.constexpr, OUT_KIND: tl.constexpr, DOT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C (M, N) = round(A (M, K) @ B (K, N) * scale_a * scale_b + bias), one (BLOCK_M, BLOCK_N) tile per program."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    # compute: fp32 sum of exact products over K in index order
    acc = _fp8_sum_over_k(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32),
                          a_ptr + offs_m[:, None] * stride_am, b_ptr + offs_n[None, :] * stride_bn,
                          m_ok[:, None], n_ok[None, :], stride_ak, stride_bk, K, A_KIND, B_KIND, DOT, BLOCK_K)
    # scale: (acc * scale_a) * scale_b, each product rounded to fp32 on its own
    if ROW_SCALES:
        scale_a = tl.load(scale_a_ptr + offs_m, mask=m_ok, other=1.0)
        scale_b = tl.load(scale_b_ptr + offs_n, mask=n_ok, other=1.0)
        acc = acc * scale_a[:, None]
        acc = acc * scale_b[None, :]
    else:
        acc = acc * tl.load(scale_a_ptr)
        acc = acc * tl.load(scale_b_ptr)
    if HAS_BIAS:
        acc += to_fp32(tl.load(bias_ptr + offs_n, mask=n_ok, other=0), BIAS_KIND)[None, :]
    # round once and store
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, round_fp32(acc, OUT_KIND), mask=m_ok[:, None] & n_ok[None, :])
