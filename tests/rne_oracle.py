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
