"""An independent round-to-nearest-even oracle in exact rational arithmetic (no torch casts)."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

# (significand bits incl. implicit, smallest normal exponent, largest exponent)
FORMATS = {"fp16": (11, -14, 15), "bf16": (8, -126, 127)}


def f32_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def rne_bits(value: float, fmt: str) -> int:
    """16-bit pattern of ``value`` (a finite or infinite float) rounded to ``fmt``, ties to even."""
    p, emin, emax = FORMATS[fmt]
    sign = 0x8000 if math.copysign(1.0, value) < 0 else 0
    if math.isinf(value):
        return sign | (0x7C00 if fmt == "fp16" else 0x7F80)
    x = abs(Fraction(value))
    if x == 0:
        return sign
    e = max(math.floor(math.log2(x)), emin)
    # correct the float log2 estimate exactly
    while Fraction(2) ** e > x and e > emin:
        e -= 1
    while Fraction(2) ** (e + 1) <= x:
        e += 1
    quantum = Fraction(2) ** (e - (p - 1))
    q, rem = divmod(x, quantum)
    q = int(q)
    if rem > quantum / 2 or (rem == quantum / 2 and q % 2 == 1):
        q += 1
    rounded = q * quantum
    max_finite = (2 - Fraction(2) ** (1 - p)) * Fraction(2) ** emax
    if rounded > max_finite:
        return sign | (0x7C00 if fmt == "fp16" else 0x7F80)
    as_float = float(rounded) * (-1 if sign else 1)  # exact: representable in both formats
    if fmt == "fp16":
        return struct.unpack("<H", struct.pack("<e", as_float))[0]
    return struct.unpack("<I", struct.pack("<f", as_float))[0] >> 16


# fp8: (stored mantissa bits, exponent bias, largest finite value, whether the format has inf)
FP8_FORMATS = {"e4m3fn": (3, 7, Fraction(448), False), "e5m2": (2, 15, Fraction(57344), True)}


def _floor_log2(x: Fraction) -> int:
    """floor(log2(x)) of a positive Fraction, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    return e if Fraction(2) ** e <= x else e - 1


def fp8_bits(value: float | Fraction, fmt: str, saturate: bool | None = None) -> int:
    """8-bit pattern of ``value`` (a float, NaN and inf included, or an exact Fraction) rounded to ``fmt``.

    Rounds the exact value once, ties to even, on the format's grid (subnormal step
    2^(1 - bias - mantissa)); a result past the largest finite value saturates (e4m3fn always, e5m2 with
    ``saturate``) or becomes inf (e5m2), and so does an infinite input. NaN gives 0x7F | sign.
    """
    mant, bias, largest, has_inf = FP8_FORMATS[fmt]
    saturates = (not has_inf) or bool(saturate)
    if isinstance(value, float) and math.isnan(value):
        return 0x7F | (0x80 if math.copysign(1.0, value) < 0 else 0)
    negative = math.copysign(1.0, value) < 0 if isinstance(value, float) else value < 0
    sign = 0x80 if negative else 0
    overflow = sign | (0x7E if fmt == "e4m3fn" else (0x7B if saturates else 0x7C))
    if isinstance(value, float) and math.isinf(value):
        return overflow
    x = abs(Fraction(value))
    emin = 1 - bias
    # the quantum of x's binade (the subnormal step below 2^emin)
    e = max(_floor_log2(x), emin) if x else emin
    quantum = Fraction(2) ** (e - mant)
    q, rem = divmod(x, quantum)
    q = int(q)
    if rem > quantum / 2 or (rem == quantum / 2 and q % 2 == 1):
        q += 1
    rounded = q * quantum
    if rounded > largest:
        return overflow
    if rounded < Fraction(2) ** emin:                       # subnormal (or zero): exponent field 0
        return sign | int(rounded / Fraction(2) ** (emin - mant))
    e = _floor_log2(rounded)                                # a carry may have moved it up a binade
    field = e + bias
    significand = int(rounded / Fraction(2) ** (e - mant)) - (1 << mant)
    return sign | (field << mant) | significand


def fp8_value(bits: int, fmt: str) -> float:
    """The value of an fp8 pattern (NaN for NaN patterns), decoded from the format's definition."""
    mant, bias, _, has_inf = FP8_FORMATS[fmt]
    sign = -1.0 if bits & 0x80 else 1.0
    field, significand = (bits & 0x7F) >> mant, bits & ((1 << mant) - 1)
    top = (1 << (7 - mant)) - 1
    if (not has_inf and bits & 0x7F == 0x7F) or (has_inf and field == top and significand):
        return math.nan
    if has_inf and field == top:
        return sign * math.inf
    if field == 0:
        return sign * significand * 2.0 ** (1 - bias - mant)
    return sign * (1 + significand / (1 << mant)) * 2.0 ** (field - bias)
