"""Batch-invariant matmul tiles: C = A @ B (+ bias), fp32 accumulation over K in index order.

One tile code serves every matmul in the project, in two forms per kernel (DESIGN.md section 3):
the interpreter forms here, the compiled forms in ``kernels/matmul_compiled.py``.

* ``matmul_kernel`` / ``matmul_compiled_kernel``: 2-D, C (M, N) = A (M, K) @ B (K, N) (+ bias
  over N). ``pk.matmul``, ``pk.linear`` and both gradients run through it with different
  strides (a transposed operand is a stride swap, never a copy).
* ``bmm_kernel`` / ``bmm_compiled_kernel``: batched, C[b] = A[b] @ B[b], ``BLOCK_BATCH`` batch
  items per program with 3-D tiles and a 3-D ``tl.dot`` (attention: many (batch, head) items
  per program, so few programs under the interpreter).
* ``linear_tile`` / ``linear_tile_compiled``: the fp32 value of one rounded (BLOCK_M, BLOCK_N)
  output tile, exactly as ``pk.linear`` stores it. The fused LM-head kernels compute their logits
  with it, so their log-probs see the very logits ``pk.linear`` returns.

The two forms differ only in how a K block's products are summed (``_k_range`` here,
``_k_range_compiled`` there); the program mapping (``grouped_tile``, ``bmm_tile``), the tile's
pointers and masks (``tile_operands``), the split-K chunks (``split_chunk``), the bias
(``with_bias``) and the store (``store_tile``, ``store_bmm_tile``) are shared helpers in this
module. ``ops._common.kernel_form`` picks the form an op launches.

* **Interpreter form** (the CPU specification; the CPU twins mirror it): no ``tl.dot`` at all.
  OpenBLAS (behind ``np.matmul``) gives an element different bits depending on its row/column
  position in the tile, which breaks batch invariance. Both operands are widened exactly to fp32
  and multiplied elementwise (exact for fp16/bf16), and each element's BLOCK_K products are added
  by ``tl.sum`` in K order.
* **Compiled form** (what a GPU runs): ``tl.dot`` on native fp16/bf16 operands (tensor cores,
  pipelined loads) or IEEE fp32.

Numerics (DESIGN.md section 2):

* Tiles are fixed constexprs from the profile table; a row's result never depends
  on M, on its position in the tile, or on the other rows (I2).
* K is walked in BLOCK_K blocks in index order, every block added into one fp32
  accumulator (I6). fp32 operands use ``input_precision="ieee"`` (never TF32).
* Masked loads give 0 on *both* operands, so a padded K lane adds 0 * 0 and a
  zero column of A meets whatever finite row of B: 0 * finite = 0 (I3).
* ``SPLITS > 1`` (engine profile, small M only): K is cut into SPLITS contiguous
  chunks of ``k_chunk`` elements; each chunk's fp32 sum is rounded to the output
  format, the rounded partials are added in chunk order in fp32, and the total is
  rounded once more, as inference engines' split-K decode kernels do.
* 16-bit inputs arrive as int16 bit patterns. The compiled form loads them as
  fp16/bf16 through a pointer bitcast; the interpreter form reads fp16 through fp16
  pointers (numpy widens it exactly) and bf16 through uint16 pointers, widened by a
  shift: it never touches a bf16 value. Outputs are rounded with the project's RNE
  helper (I4).
* Offsets are 64-bit: row/column/batch indices are int64 before they meet a stride.
* The row count M and batch size are never specialised (``tile_kernel``): a batch-1
  decode (M = 1) runs the same compiled kernel as the batched pass.
"""

import triton
import triton.language as tl

from .formats import BF16, FP16
from .rounding import round_fp32, to_fp32
from .specialization import tile_kernel


@triton.jit
def _block_products_split_n(a, b):
    """Interpreter form only: sum_k a[k, .., m, 0] * b[k, .., 0, n] when the (BK, .., BM, BN) product tensor would
    exceed Triton's block-size limit (the CUDA table's tiles run under the interpreter in tests).

    The even and odd columns of b are done separately and interleaved back, so every
    element still adds the same BK products in the same order: the bits do not change.
    """
    if len(b.shape) == 3:
        b_even, b_odd = tl.split(tl.reshape(b, (b.shape[0], 1, b.shape[2] // 2, 2)))
    else:
        b_even, b_odd = tl.split(tl.reshape(b, (b.shape[0], b.shape[1], 1, b.shape[3] // 2, 2)))
    c_even = tl.sum(a * b_even, axis=0)
    c_odd = tl.sum(a * b_odd, axis=0)
    both = tl.join(c_even, c_odd)  # (.., BM, BN / 2, 2): column 2j + p sits at [.., j, p]
    if len(b.shape) == 3:
        return tl.reshape(both, (a.shape[1], b.shape[2]))
    else:
        return tl.reshape(both, (a.shape[1], a.shape[2], b.shape[3]))


@triton.jit
def _interpreted_k_block(acc, a_ptrs, b_ptrs, a_mask, b_mask, a_zero, b_zero, KIND: tl.constexpr):
    """Interpreter form only: acc + the sum of one K block's products; ``_k_range`` prepared the pointers
    (fp32, fp16 or uint16 data) to read A's block as (BK, .., BM, 1) and B's as (BK, .., 1, BN).

    Both operands are widened exactly to fp32 and multiplied elementwise (exact for fp16/bf16);
    ``tl.sum`` over the leading K axis adds each element's BLOCK_K products in K order (numpy
    reduces a non-contiguous axis one slice at a time).
    """
    # load: masked lanes read 0 on both operands (0 * inf would be NaN)
    a = tl.load(a_ptrs, mask=a_mask, other=a_zero)
    b = tl.load(b_ptrs, mask=b_mask, other=b_zero)
    # widen: fp16 by numpy's exact conversion; bf16 by a shift (the interpreter's bf16 -> fp32 is wrong
    # for subnormals, DESIGN.md section 3)
    if KIND == FP16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    elif KIND == BF16:
        a = (a.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        b = (b.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    # multiply-accumulate: the loaded layouts broadcast to the (BK, .., BM, BN) product tile
    if a.numel * b.shape[-1] <= tl.TRITON_MAX_TENSOR_NUMEL:
        acc += tl.sum(a * b, axis=0)
    else:
        acc += _block_products_split_n(a, b)
    return acc


@triton.jit
def _k_range(acc, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, k_lo, k_hi,
             KIND: tl.constexpr, BLOCK_K: tl.constexpr):
    """Interpreter form: acc + sum over k in [k_lo, k_hi) of A[.., k] * B[k, ..], one BLOCK_K block at a time,
    in index order, by elementwise products and ordered sums (``_interpreted_k_block``): every element gets
    the same sequence of fp32 operations wherever it sits in the tile.

    ``a_base``/``b_base`` point at the tile's rows/columns at k = 0 and ``a_ok``/``b_ok``
    mask them; ``ka``/``kb`` are int64 ``tl.arange(0, BLOCK_K)`` shaped to broadcast along
    A's last and B's second-to-last axis, so the same code serves 2-D and 3-D tiles
    (``_k_range_compiled`` in kernels/matmul_compiled.py takes the same arguments).
    """
    # Each tile operation is a Python-level step, so whatever is the same for every K block is built
    # here once, and a full block costs 7 (fp32), 9 (fp16) or 13 (bf16) operations.
    # K-major tiles: A is read as (BK, .., BM, 1) and B as (BK, .., 1, BN), so the multiply broadcasts
    # them to a (BK, .., BM, BN) product whose K axis is the outermost, and numpy sums it slice by
    # slice over whole contiguous (.., BM, BN) planes (the same K-ordered sum as along an inner axis,
    # ~30% faster). The pointers are built in that shape (C-contiguous), not transposed; K-major,
    # one (BK, 1, ..) column of offsets serves both operands (ka and kb hold the same offsets).
    if len(ka.shape) == 2:
        k_offs = tl.reshape(ka, (BLOCK_K, 1, 1))
    else:
        k_offs = tl.reshape(ka, (BLOCK_K, 1, 1, 1))
    k_at = k_offs + k_lo
    a_ptrs = tl.expand_dims(a_base, 0) + k_at * stride_ak
    b_ptrs = tl.expand_dims(b_base, 0) + k_at * stride_bk
    # 16-bit data is read through fp16 pointers (widened by one exact conversion) or, for bf16,
    # uint16 pointers (widened by a shift): int16 would need one more bitcast per operand and block.
    if KIND == FP16:
        a_ptrs = a_ptrs.to(tl.pointer_type(tl.float16), bitcast=True)
        b_ptrs = b_ptrs.to(tl.pointer_type(tl.float16), bitcast=True)
    elif KIND == BF16:
        a_ptrs = a_ptrs.to(tl.pointer_type(tl.uint16), bitcast=True)
        b_ptrs = b_ptrs.to(tl.pointer_type(tl.uint16), bitcast=True)
    # The masks, the 0 of masked lanes and the pointer steps are whole tiles of the operands'
    # shapes, so no block op broadcasts or casts a scalar.
    a_zero = tl.zeros(a_ptrs.shape, a_ptrs.dtype.element_ty)
    b_zero = tl.zeros(b_ptrs.shape, b_ptrs.dtype.element_ty)
    a_step = tl.full(a_ptrs.shape, BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full(b_ptrs.shape, BLOCK_K, tl.int64) * stride_bk
    # Only the last block of the range can be partial (a split chunk's range need not be a multiple
    # of BLOCK_K): full blocks are masked by rows/columns alone. (k_full <= k_lo when k_hi <= k_lo:
    # an engine chunk past K runs no block.)
    k_full = k_hi - (k_hi - k_lo) % BLOCK_K
    k_in = k_offs < BLOCK_K
    a_mask = a_ok & k_in
    b_mask = b_ok & k_in
    for _ in range(k_lo, k_full, BLOCK_K):
        acc = _interpreted_k_block(acc, a_ptrs, b_ptrs, a_mask, b_mask, a_zero, b_zero, KIND)
        a_ptrs += a_step
        b_ptrs += b_step
    # the partial last block, if any: lanes past k_hi read 0 too
    for k0 in range(k_full, k_hi, BLOCK_K):
        k_in = k_offs < k_hi - k0
        acc = _interpreted_k_block(acc, a_ptrs, b_ptrs, a_ok & k_in, b_ok & k_in, a_zero, b_zero, KIND)
    return acc


@triton.jit
def split_chunk(s, k_chunk, K):
    """[k_lo, k_hi) of engine split-K chunk s: chunks of k_chunk elements from 0, the last one cut at K."""
    k_lo = s * k_chunk
    return k_lo, tl.minimum(k_lo + k_chunk, K)


@triton.jit
def _sum_over_k(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, K, k_chunk,
                KIND: tl.constexpr, SPLITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 tile of A @ B over the whole K (interpreter form; ``_sum_over_k_compiled`` is the same walk).

    SPLITS == 1: one accumulator over K in index order. SPLITS > 1 (engine): chunk s
    covers [s * k_chunk, (s + 1) * k_chunk); its sum is rounded to the output format,
    and the rounded partials are added in chunk order in fp32.
    """
    if SPLITS == 1:
        total = _k_range(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, 0, K, KIND, BLOCK_K)
    else:
        total = zero
        for s in range(SPLITS):
            k_lo, k_hi = split_chunk(s, k_chunk, K)
            part = _k_range(zero, a_base, b_base, a_ok, b_ok, ka, kb, stride_ak, stride_bk, k_lo, k_hi, KIND, BLOCK_K)
            total += to_fp32(round_fp32(part, KIND), KIND)
    return total


@triton.jit
def tile_operands(a_ptr, b_ptr, pid_m, pid_n, M, N, stride_am, stride_bn,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """What the K walk of 2-D tile (pid_m, pid_n) takes: (a_base, b_base, a_ok, b_ok, ka, kb) (see ``_k_range``)."""
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    a_base = a_ptr + offs_m[:, None] * stride_am
    b_base = b_ptr + offs_n[None, :] * stride_bn
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    return a_base, b_base, (offs_m < M)[:, None], (offs_n < N)[None, :], offs_k[None, :], offs_k[:, None]


@triton.jit
def with_bias(total, bias_ptr, pid_n, N, KIND: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    """total + the bias (N,) of the tile's columns, added in fp32 (columns >= N add 0); total without HAS_BIAS."""
    if HAS_BIAS:
        offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        bias = to_fp32(tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0), KIND)
        total += bias[None, :]
    return total


@triton.jit
def linear_tile_unrounded(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                          stride_am, stride_ak, stride_bk, stride_bn,
                          KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 (BLOCK_M, BLOCK_N) tile (pid_m, pid_n) of A @ B + bias, before the final rounding (interpreter form).

    A is (M, K) with strides (stride_am, stride_ak); B is (K, N) with strides
    (stride_bk, stride_bn) -- for ``linear`` B is the weight (N, K) read transposed.
    The bias (N,) is added in fp32. Rows >= M and columns >= N hold 0 (+ bias).
    """
    a_base, b_base, a_ok, b_ok, ka, kb = tile_operands(a_ptr, b_ptr, pid_m, pid_n, M, N, stride_am, stride_bn,
                                                        BLOCK_M, BLOCK_N, BLOCK_K)
    total = _sum_over_k(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base, a_ok, b_ok, ka, kb,
                        stride_ak, stride_bk, K, k_chunk, KIND, SPLITS, BLOCK_K)
    return with_bias(total, bias_ptr, pid_n, N, KIND, HAS_BIAS, BLOCK_N)


@triton.jit
def linear_tile(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                stride_am, stride_ak, stride_bk, stride_bn,
                KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 value of output tile (pid_m, pid_n) of ``linear``/``matmul``, rounded to the output format
    (interpreter form).

    Bitwise the value ``matmul_kernel`` stores for the same arguments and tile config
    (rounding is idempotent: round(to_fp32(round(x))) == round(x)). Rows >= M and
    columns >= N are not meaningful; callers mask them.
    """
    total = linear_tile_unrounded(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                                  stride_am, stride_ak, stride_bk, stride_bn,
                                  KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    return to_fp32(round_fp32(total, KIND), KIND)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` over a (M, N) output, GROUP_M row blocks at a time: consecutive programs
    share B's column blocks while they are in L2 on a GPU. Which program computes a tile changes no bit."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def store_tile(c_ptr, total, pid_m, pid_n, M, N, stride_cm, stride_cn, KIND: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Round the fp32 tile (pid_m, pid_n) once to format KIND and store its rows < M and columns < N."""
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, round_fp32(total, KIND), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@tile_kernel(batch_args=("M",))
def matmul_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, k_chunk,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  KIND: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """C (M, N) = A (M, K) @ B (K, N) (+ bias), one (BLOCK_M, BLOCK_N) tile per program (interpreter form)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # compute: fp32 tile, bias added, not yet rounded
    total = linear_tile_unrounded(a_ptr, b_ptr, bias_ptr, pid_m, pid_n, M, N, K, k_chunk,
                                  stride_am, stride_ak, stride_bk, stride_bn,
                                  KIND, HAS_BIAS, SPLITS, BLOCK_M, BLOCK_N, BLOCK_K)
    # round once and store
    store_tile(c_ptr, total, pid_m, pid_n, M, N, stride_cm, stride_cn, KIND, BLOCK_M, BLOCK_N)


@triton.jit
def bmm_tile(a_ptr, b_ptr, BATCH, M, N, stride_ab, stride_am, stride_bb, stride_bn,
              BLOCK_BATCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's (batch block, row block, column block): its offsets (offs_b, offs_m, offs_n) and the K walk's
    operands of its (BLOCK_BATCH, ., .) tiles (a_base, b_base, a_ok, b_ok, ka, kb; see ``_k_range``)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_b = pid // (num_m * num_n)
    pid_m = (pid % (num_m * num_n)) // num_n
    pid_n = pid % num_n
    offs_b = pid_b.to(tl.int64) * BLOCK_BATCH + tl.arange(0, BLOCK_BATCH)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    b_in = (offs_b < BATCH)[:, None, None]
    a_base = a_ptr + offs_b[:, None, None] * stride_ab + offs_m[None, :, None] * stride_am
    b_base = b_ptr + offs_b[:, None, None] * stride_bb + offs_n[None, None, :] * stride_bn
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    return (offs_b, offs_m, offs_n, a_base, b_base, b_in & (offs_m < M)[None, :, None],
            b_in & (offs_n < N)[None, None, :], offs_k[None, None, :], offs_k[None, :, None])


@triton.jit
def store_bmm_tile(c_ptr, total, offs_b, offs_m, offs_n, BATCH, M, N, stride_cb, stride_cm, stride_cn,
                    KIND: tl.constexpr):
    """Round the fp32 (BLOCK_BATCH, BLOCK_M, BLOCK_N) tile once to format KIND and store what lies inside C."""
    c_ptrs = (c_ptr + offs_b[:, None, None] * stride_cb + offs_m[None, :, None] * stride_cm
              + offs_n[None, None, :] * stride_cn)
    c_mask = (offs_b < BATCH)[:, None, None] & (offs_m < M)[None, :, None] & (offs_n < N)[None, None, :]
    tl.store(c_ptrs, round_fp32(total, KIND), mask=c_mask)


@tile_kernel(batch_args=("BATCH", "M"))
def bmm_kernel(a_ptr, b_ptr, c_ptr, BATCH, M, N, K, k_chunk,
               stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_cb, stride_cm, stride_cn,
               KIND: tl.constexpr, SPLITS: tl.constexpr, BLOCK_BATCH: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C[b] (M, N) = A[b] (M, K) @ B[b] (K, N) for BLOCK_BATCH batch items per program (3-D tiles; interpreter
    form)."""
    offs_b, offs_m, offs_n, a_base, b_base, a_ok, b_ok, ka, kb = bmm_tile(
        a_ptr, b_ptr, BATCH, M, N, stride_ab, stride_am, stride_bb, stride_bn, BLOCK_BATCH, BLOCK_M, BLOCK_N, BLOCK_K)
    # compute: the same K walk as the 2-D tile, on (BLOCK_BATCH, ., .) tiles
    total = _sum_over_k(tl.zeros((BLOCK_BATCH, BLOCK_M, BLOCK_N), dtype=tl.float32), a_base, b_base, a_ok, b_ok,
                        ka, kb, stride_ak, stride_bk, K, k_chunk, KIND, SPLITS, BLOCK_K)
    # round and store
    store_bmm_tile(c_ptr, total, offs_b, offs_m, offs_n, BATCH, M, N, stride_cb, stride_cm, stride_cn, KIND)
