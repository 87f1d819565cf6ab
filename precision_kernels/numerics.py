"""Error measurement: ulp distances, correct rounding of FP64 references, error summaries."""

from __future__ import annotations

import numpy as np
import torch

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# (significand bits incl. implicit, smallest normal exponent, max finite) of each format.
_FORMAT = {
    torch.float16: (11, -14, 65504.0),
    torch.bfloat16: (8, -126, float.fromhex("0x1.fep127")),
    torch.float32: (24, -126, float.fromhex("0x1.fffffep127")),
}


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose order and differences follow the float line; +0 and -0 both map to 0."""
    i = t.contiguous().view(_INT_VIEW[t.dtype]).to(torch.int64)
    sign_bit = 1 << (8 * t.element_size() - 1)
    negative = i < 0
    magnitude = torch.where(negative, i + sign_bit, i)  # clear the sign bit of a two's-complement view
    return torch.where(negative, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of representable values between ``a`` and ``b`` (same float dtype), as float64.

    +0 and -0 are 0 apart; NaN on either side gives NaN; inf is one step past max finite.
    """
    if a.dtype != b.dtype or a.dtype not in _INT_VIEW:
        raise TypeError(f"a and b must share a float32/float16/bfloat16 dtype, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dist = (_ordered(a) - _ordered(b)).abs().to(torch.float64)
    nan = torch.isnan(a) | torch.isnan(b)
    return torch.where(nan, torch.full_like(dist, float("nan")), dist)


def correctly_rounded(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round an FP64 tensor to ``dtype`` once, to nearest even.

    torch's cast from float64 rounds through fp32 (double rounding), so it is
    never used: fp16 uses numpy's direct cast, bf16/fp32 an exact scale-and-rint
    on the float64 values.
    """
    if ref.dtype != torch.float64:
        raise TypeError(f"ref must be float64, got {ref.dtype}")
    x = ref.detach().cpu().numpy()
    if dtype == torch.float16:
        with np.errstate(over="ignore"):  # overflow to inf is the correct rounding
            return torch.from_numpy(x.astype(np.float16))
    if dtype == torch.float64:
        return ref.detach().cpu()
    rounded = round_float64(x, dtype)
    if dtype == torch.float32:
        return torch.from_numpy(rounded.astype(np.float32))  # exact: already representable
    # bf16: every value is now exactly representable in bf16 (and in fp32), so these casts are exact.
    return torch.from_numpy(rounded.astype(np.float32)).to(torch.bfloat16)


def round_float64(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round float64 values to the grid of ``dtype`` (RNE, subnormals, overflow to inf), kept as float64."""
    bits, emin, max_finite = _FORMAT[dtype]
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    finite = np.isfinite(x) & (x != 0)
    _, e = np.frexp(np.where(finite, x, 1.0))  # x = m * 2^e, 0.5 <= |m| < 1
    exponent = np.maximum(e - 1, emin)  # subnormals share the smallest normal quantum
    quantum = np.ldexp(1.0, exponent - (bits - 1))
    rounded = np.rint(x / quantum) * quantum  # power-of-two scaling is exact; rint is ties-to-even
    rounded = np.where(np.abs(rounded) > max_finite, np.copysign(np.inf, x), rounded)
    # keep the sign of values that round to zero
    rounded = np.where(rounded == 0, np.copysign(0.0, x), rounded)
    return np.where(finite, rounded, out)


def error_summary(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Compare a kernel's output with an FP64 reference computed on the same rounded inputs.

    Returns the fraction of elements equal to the correctly rounded reference,
    max/mean ulp distance from it, and max absolute/relative error against FP64.
    """
    if ref.dtype != torch.float64:
        raise TypeError(f"ref must be the float64 oracle, got {ref.dtype}")
    if out.shape != ref.shape:
        raise ValueError(f"out {tuple(out.shape)} and ref {tuple(ref.shape)} differ in shape")
    out = out.detach().cpu()
    target = correctly_rounded(ref, out.dtype)
    if out.numel() == 0:
        return {"n": 0, "frac_correctly_rounded": 1.0, "max_ulp": 0.0, "mean_ulp": 0.0,
                "max_abs_err": 0.0, "max_rel_err": 0.0}
    ulps = ulp_distance(out, target)
    same = (ulps == 0) | (torch.isnan(out) & torch.isnan(target))
    err = (out.to(torch.float64) - ref.cpu()).abs()
    finite = torch.isfinite(err)
    rel = err / ref.cpu().abs().clamp_min(torch.finfo(torch.float64).tiny)
    return {
        "n": out.numel(),
        "frac_correctly_rounded": float(same.double().mean()),
        "max_ulp": float(ulps[~torch.isnan(ulps)].max()) if (~torch.isnan(ulps)).any() else float("nan"),
        "mean_ulp": float(ulps[~torch.isnan(ulps)].mean()) if (~torch.isnan(ulps)).any() else float("nan"),
        "max_abs_err": float(err[finite].max()) if finite.any() else float("inf"),
        "max_rel_err": float(rel[finite].max()) if finite.any() else float("inf"),
    }
