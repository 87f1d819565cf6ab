"""pk.quantize_fp8 and pk.scaled_mm: FP8 quantisation and a scaled FP8 matmul like ``torch._scaled_mm``.

Custom ops (ops/_custom.py): ``pk::quantize_fp8(x, dtype, per_row) -> (values, scales)`` and
``pk::scaled_mm(a_bits, a_dtype, b_bits, b_dtype, scale_a, scale_b, bias, out_dtype)``, whose fp8
operands travel as their uint8 bit patterns with their dtypes (torch.library.opcheck's schema
check compares inputs with ``allclose``, which fp8 tensors do not support). Neither has an autograd formula:
a quantised matmul has no true gradient, so a caller that trains through one supplies its own
(e.g. straight-through: dX = dY @ dequant(W), dW = dY^T @ dequant(X) with ``pk.matmul``).

Which ops make and take fp8 tensors, and which refuse them (``_common.check_float``): DESIGN.md
section 9.
"""

from __future__ import annotations

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.formats import FP8_E4M3FN, FP8_E5M2
from ..kernels.fp8_matmul import scaled_mm_compiled_kernel, scaled_mm_kernel
from ..precision import Precision
from ._common import check_device, check_float, kernel_form, kernel_view, kind, launch
from ._custom import op_name, require
from .registry import OpFamily, register_family
from .rounding import FP8_DTYPES, round_to

# Storage codes of the fp8 operands in the kernels (kernels/rounding.py's to_fp32).
FP8_KIND = {torch.float8_e4m3fn: FP8_E4M3FN.value, torch.float8_e5m2: FP8_E5M2.value}
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---- quantize_fp8 ---------------------------------------------------------------------------


@torch.library.custom_op(op_name("quantize_fp8"), mutates_args=())
def _quantize_fp8_op(x: torch.Tensor, dtype: torch.dtype, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float) -> (fp8 values of x's shape, fp32 scales): one scale for the tensor (shape ()) or, with
    ``per_row``, one per row of the last dim (shape (..., 1))."""
    require(x.dtype in (torch.float32, torch.float16, torch.bfloat16) and dtype in FP8_DTYPES, "quantize_fp8",
            f"quantises float32/float16/bfloat16 to float8_e4m3fn or float8_e5m2, got {x.dtype} -> {dtype}")
    require(not per_row or x.dim() >= 1, "quantize_fp8", "per-row scales need at least 1 dim")
    x32 = x.to(torch.float32)                           # exact
    scale_shape = (*x.shape[:-1], 1) if per_row else ()
    if x32.numel() == 0 or (per_row and x.shape[-1] == 0):
        return torch.empty(x.shape, dtype=dtype, device=x.device), torch.ones(scale_shape, device=x.device)
    # amax is exact in any order (a max; NaN propagates), the division is IEEE (one rounding).
    amax = x32.abs().amax(dim=-1, keepdim=True) if per_row else x32.abs().amax()
    scales = amax / Precision.parse(dtype).max_finite
    # An all-zero row (or one so small that amax / max_finite underflows) gets scale 1.0: its values are 0.
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    # x / scale may land a hair past max_finite (the scale is rounded): clamp, as scaled-FP8 recipes do.
    values = round_to(x32 / scales, dtype, saturate=True)
    return values, scales.reshape(scale_shape).contiguous()


@_quantize_fp8_op.register_fake
def _(x, dtype, per_row):
    scale_shape = (*x.shape[:-1], 1) if per_row else ()
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(scale_shape, dtype=torch.float32)


def quantize_fp8(x: torch.Tensor, dtype: torch.dtype, *, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` to ``dtype`` (float8_e4m3fn or float8_e5m2): returns ``(values, scales)`` with
    ``values.float() * scales ~= x``.

    * ``axis=None``: one fp32 scale for the whole tensor, shape ``()`` (a ``torch._scaled_mm``
      tensor-wise scale). ``axis=-1``: one scale per row of the last dim, shape ``(..., 1)``
      (for a 2-D (M, K) ``x``, the (M, 1) row-wise ``scale_a`` of ``scaled_mm``; quantise a weight
      (N, K) the same way and pass ``values.t()``, ``scales.t()`` as ``b``, ``scale_b``).
    * ``scale = amax / max_finite`` in fp32 (448 for e4m3fn, 57344 for e5m2), amax = max |x| over
      the tensor or row; ``values = round_to(x / scale, dtype, saturate=True)`` (IEEE division, our
      RNE, clamped to +-max_finite).
    * A tensor or row whose scale would be 0 (all zeros, or an amax so small that amax / max_finite
      underflows to 0 in fp32) gets ``scale = 1.0``, and its values are its rounded self (zeros).
    * Non-finite input: a NaN makes its row's scale NaN (and every value there NaN); an inf (no NaN)
      makes the scale inf, the inf's value NaN (inf / inf, with the sign the platform's division
      gives it: x86 -NaN, CUDA +NaN) and the other values 0. Quantise finite data.

    A row-wise scale depends only on its own row, so per-row quantisation is batch-invariant; a
    tensor-wise scale makes every row depend on the whole batch.
    """
    check_float("x", x)
    if dtype not in FP8_DTYPES:
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    if axis is not None:
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"axis must be None or -1, got {type(axis).__name__}")
        if x.dim() == 0 or axis not in (-1, x.dim() - 1):
            raise ValueError(f"axis must be None (tensor-wise) or -1 (per row of the last dim) for x of shape "
                             f"{tuple(x.shape)}, got {axis}")
    return torch.ops.pk.quantize_fp8(x, dtype, axis is not None)


# ---- scaled_mm ------------------------------------------------------------------------------


def _row_scales(a_rows: int, b_cols: int, scale_a: torch.Tensor, scale_b: torch.Tensor) -> bool | None:
    """True for row-wise (scale_a (M, 1), scale_b (1, N)), False for tensor-wise (one value each), else None."""
    if scale_a.numel() == 1 and scale_b.numel() == 1:
        return False
    if tuple(scale_a.shape) == (a_rows, 1) and tuple(scale_b.shape) == (1, b_cols):
        return True
    return None


@torch.library.custom_op(op_name("scaled_mm"), mutates_args=())
def _scaled_mm_op(a: torch.Tensor, a_dtype: torch.dtype, b: torch.Tensor, b_dtype: torch.dtype,
                  scale_a: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """round((a (M, K) @ b (K, N)) * scale_a * scale_b + bias) in out_dtype. a and b are the uint8 bit patterns
    (any strides) of fp8 tensors of dtypes a_dtype and b_dtype (``t.view(torch.uint8)``)."""
    require(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0], "scaled_mm",
            f"a (M, K) and b (K, N) do not multiply: {tuple(a.shape)} and {tuple(b.shape)}")
    require(a.dtype == torch.uint8 and b.dtype == torch.uint8, "scaled_mm",
            f"a and b must be uint8 views of fp8 tensors, got {a.dtype} and {b.dtype}")
    require(a_dtype in FP8_DTYPES and b_dtype in FP8_DTYPES, "scaled_mm",
            f"a_dtype and b_dtype must be float8_e4m3fn or float8_e5m2, got {a_dtype} and {b_dtype}")
    require(scale_a.dtype == torch.float32 and scale_b.dtype == torch.float32, "scaled_mm", "scales must be float32")
    (m, k), n = a.shape, b.shape[1]
    row_scales = _row_scales(m, n, scale_a, scale_b)
    require(row_scales is not None, "scaled_mm", f"scales must be tensor-wise (one value each) or row-wise "
            f"(({m}, 1) and (1, {n})), got {tuple(scale_a.shape)} and {tuple(scale_b.shape)}")
    require(out_dtype in OUT_DTYPES, "scaled_mm", f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    require(bias is None or (tuple(bias.shape) == (n,) and bias.dtype in OUT_DTYPES), "scaled_mm",
            f"bias must be ({n},) float32, float16 or bfloat16")
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    # K order and tiles: the fp16 matmul's (one table entry; BLOCK_K is the K order).
    cfg = profiles.matmul_config(torch.float16, m=m, n=n, k=k)
    cv = kernel_view(out)
    bias_v = cv if bias is None else kernel_view(bias.contiguous())
    # the interpreter form sums K blocks by elementwise products, the compiled one by an fp16 tl.dot of the
    # exactly widened operands (kernels/fp8_matmul.py); both keep I6
    launch(
        kernel_form(scaled_mm_kernel, scaled_mm_compiled_kernel),
        (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),),
        a, b, scale_a.reshape(-1).contiguous(), scale_b.reshape(-1).contiguous(),
        bias_v, cv, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), cv.stride(0), cv.stride(1),
        config=cfg, A_KIND=FP8_KIND[a_dtype], B_KIND=FP8_KIND[b_dtype], ROW_SCALES=row_scales,
        HAS_BIAS=bias is not None, BIAS_KIND=kind(out_dtype if bias is None else bias.dtype), OUT_KIND=kind(out_dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
    )
    return out


@_scaled_mm_op.register_fake
def _(a, a_dtype, b, b_dtype, scale_a, scale_b, bias, out_dtype):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def _check_fp8(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FP8_DTYPES:
        raise TypeError(f"{name} must be float8_e4m3fn or float8_e5m2, got {t.dtype}")
    check_device(name, t)


def _check_scale(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    check_device(name, t)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, *,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``(a @ b) * scale_a * scale_b + bias`` on fp8 operands, rounded once to ``out_dtype``: ``torch._scaled_mm``'s
    semantics on our kernels.

    * ``a`` (M, K) and ``b`` (K, N): float8_e4m3fn or float8_e5m2, any mix. ``scale_a``/``scale_b``:
      fp32, tensor-wise (one value each) or row-wise (``scale_a`` (M, 1) per row of a, ``scale_b``
      (1, N) per column of b). ``bias``: (N,) float32/float16/bfloat16. ``out_dtype``: float32,
      float16 or bfloat16.
    * Numerics: the operands are widened exactly to fp32, the (exact) products summed in the
      matmul's fixed K order with fp32 accumulation (I6), then ``t = (acc * scale_a) * scale_b``
      (two fp32 roundings, no FMA), ``t + bias`` in fp32, and one rounding to ``out_dtype`` (I4).
      A row's result depends only on that row, its scale and b (I2 with row-wise scales; with a
      tensor-wise ``scale_a`` computed from the batch, the batch leaks in through the scale).
    * No autograd formula (a quantised matmul has no true gradient).

    Where it differs from ``torch._scaled_mm``: ``out_dtype`` defaults to bfloat16 (torch: a's fp8
    dtype) and fp8 outputs, ``scale_result`` and ``use_fast_accum`` are not offered; any strides are
    accepted for a and b (torch on CUDA wants a row-major and b column-major, and K and N multiples
    of 16), e5m2 x e5m2 is accepted (torch on CUDA refuses it), and row-wise scales work with every
    ``out_dtype`` (torch on CUDA: bfloat16 only).
    """
    _check_fp8("a", a)
    _check_fp8("b", b)
    _check_scale("scale_a", scale_a)
    _check_scale("scale_b", scale_b)
    if a.dim() != 2:
        raise ValueError(f"a must have shape (M, K), got {tuple(a.shape)}")
    if b.dim() != 2:
        raise ValueError(f"b must have shape (K, N), got {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)} (K={a.shape[1]}), "
                         f"b is {tuple(b.shape)} (K={b.shape[0]})")
    (m, _), n = a.shape, b.shape[1]
    if _row_scales(m, n, scale_a, scale_b) is None:
        raise ValueError(f"scale_a and scale_b must both be tensor-wise (one value each) or row-wise "
                         f"(scale_a ({m}, 1), scale_b (1, {n})), got {tuple(scale_a.shape)} and {tuple(scale_b.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.float32, torch.float16 or torch.bfloat16, got {out_dtype}")
    if bias is not None:
        check_float("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    return torch.ops.pk.scaled_mm(a.view(torch.uint8), a.dtype, b.view(torch.uint8), b.dtype, scale_a, scale_b, bias,
                                  out_dtype)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    """The scaled-mm kernel's compiled form (exact widening to fp16, fp16 tensor cores: the path every CUDA target
    runs) in the CUDA fp16 matmul tiles (the ones it runs with), bf16 output, fp8 operands as uint8 patterns; generic
    and as the JIT specialises contiguous calls (b row-major or, as torch._scaled_mm takes it, column-major)."""
    # every M bucket's tiles (the compile check audits that they share one instruction family)
    bucket_cfgs = list(dict.fromkeys(b.config for b in profiles.matmul_buckets_for("cuda", "fp16")))
    e4, e5, bf16 = FP8_KIND[torch.float8_e4m3fn], FP8_KIND[torch.float8_e5m2], kind(torch.bfloat16)
    signature = {"a_ptr": "*u8", "b_ptr": "*u8", "scale_a_ptr": "*fp32", "scale_b_ptr": "*fp32",
                 "bias_ptr": "*i16", "c_ptr": "*i16", "M": "i32", "N": "i32", "K": "i32",
                 "stride_am": "i64", "stride_ak": "i64", "stride_bk": "i64", "stride_bn": "i64",
                 "stride_cm": "i64", "stride_cn": "i64"}
    compile_registry.register(
        table, "scaled_mm_bf16", scaled_mm_compiled_kernel, signature=signature,
        configs=[{"A_KIND": a_kind, "B_KIND": b_kind, "ROW_SCALES": row, "HAS_BIAS": bias, "BIAS_KIND": bf16,
                  "OUT_KIND": bf16, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "BLOCK_K": c.block_k,
                  "GROUP_M": c.group_m, "num_warps": c.num_warps, "num_stages": c.num_stages}
                 for c in bucket_cfgs for a_kind, b_kind, row, bias in ((e4, e4, True, False), (e4, e5, False, True))],
        expects_mma=True, calls=compile_registry.matmul_calls(signature),
    )


def reference_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, *,
                        bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """FP64 oracle on the dequantised operands: (a @ b) * scale_a * scale_b + bias, unrounded (float64)."""
    out = (a.double() @ b.double()) * scale_a.double() * scale_b.double()
    return out if bias is None else out + bias.double()


register_family(OpFamily(
    name="fp8",
    public=("quantize_fp8", "scaled_mm"),
    custom_ops=("pk::quantize_fp8", "pk::scaled_mm"),
    kernels=(scaled_mm_kernel, scaled_mm_compiled_kernel),
    forms=((scaled_mm_kernel, scaled_mm_compiled_kernel),),
    compile_kernels=_compile_kernels,
    reference={"scaled_mm": reference_scaled_mm},
))
