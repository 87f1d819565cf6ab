"""Facts about the floating-point formats the library computes in (fp32, fp16, bf16) and quantises to (fp8)."""

from __future__ import annotations

import enum

import torch


class Precision(enum.Enum):
    """FP32, FP16, BF16 or one of the two FP8 formats, with the facts that decide how each one rounds.

    The FP8 formats are storage formats only; which ops make and take them: DESIGN.md section 9.
    ``FP8_E4M3`` is ``torch.float8_e4m3fn``
    (no infinity; 0x7F/0xFF are its only NaNs, so its top binade stops at 448), ``FP8_E5M2``
    is ``torch.float8_e5m2`` (IEEE-style: infinities and several NaNs).
    """

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"

    @classmethod
    def parse(cls, value: str | torch.dtype | Precision) -> Precision:
        """Accept "fp16"/"float16"/"half", "bf16"/"bfloat16", "fp32"/"float32", "fp8_e4m3"/"float8_e4m3fn"/"e4m3",
        "fp8_e5m2"/"float8_e5m2"/"e5m2" or a torch dtype. A bare "fp8" is refused: it names no one format."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, torch.dtype):
            for p in cls:
                if p.dtype == value:
                    return p
            raise ValueError(f"dtype {value} is not a supported precision; expected one of "
                             f"{[str(p.dtype) for p in cls]}")
        if isinstance(value, str):
            key = value.strip().lower().removeprefix("torch.")
            if key in _ALIASES:
                return _ALIASES[key]
        raise ValueError(f"unknown precision {value!r}; valid names: {', '.join(sorted(_ALIASES))}")

    @property
    def dtype(self) -> torch.dtype:
        return _FACTS[self][0]

    @property
    def significand_bits(self) -> int:
        """Bits of precision, the implicit leading bit included (24, 11, 8)."""
        return _FACTS[self][1]

    @property
    def exponent_bits(self) -> int:
        return _FACTS[self][2]

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1.0 and the next representable value."""
        return 2.0 ** (1 - self.significand_bits)

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (2 - 2 ** (self.exponent_bits - 1))

    @property
    def smallest_subnormal(self) -> float:
        """The smallest positive value: one step of the subnormal grid, smallest_normal * eps."""
        return self.smallest_normal * self.eps

    @property
    def max_exponent(self) -> int:
        """The exponent of the top binade: 2^(exponent_bits - 1) - 1, and one more for e4m3fn, which spends
        its all-ones exponent field on numbers (bias 7, emax 8)."""
        return 2 ** (self.exponent_bits - 1) - (1 if self.has_inf else 0)

    @property
    def max_finite(self) -> float:
        emax = self.max_exponent
        top = (2.0 - 2.0 ** (1 - self.significand_bits)) * 2.0**emax
        if not self.has_inf:
            # e4m3fn keeps the all-ones pattern (0x7F) for NaN: its top binade stops one step short (448, not 480).
            top -= 2.0 ** (emax + 1 - self.significand_bits)
        return top

    @property
    def has_inf(self) -> bool:
        """Whether the format has infinities (every format but e4m3fn, which saturates instead)."""
        return self is not Precision.FP8_E4M3

    @property
    def is_fp8(self) -> bool:
        return self in (Precision.FP8_E4M3, Precision.FP8_E5M2)

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.significand_bits - 1

    def __str__(self) -> str:
        return self.value


_FACTS = {
    Precision.FP32: (torch.float32, 24, 8),
    Precision.FP16: (torch.float16, 11, 5),
    Precision.BF16: (torch.bfloat16, 8, 8),
    Precision.FP8_E4M3: (torch.float8_e4m3fn, 4, 4),
    Precision.FP8_E5M2: (torch.float8_e5m2, 3, 5),
}
_ALIASES = {
    "fp32": Precision.FP32, "float32": Precision.FP32, "float": Precision.FP32,
    "fp16": Precision.FP16, "float16": Precision.FP16, "half": Precision.FP16,
    "bf16": Precision.BF16, "bfloat16": Precision.BF16,
    "fp8_e4m3": Precision.FP8_E4M3, "fp8_e4m3fn": Precision.FP8_E4M3, "float8_e4m3fn": Precision.FP8_E4M3,
    "e4m3": Precision.FP8_E4M3, "e4m3fn": Precision.FP8_E4M3,
    "fp8_e5m2": Precision.FP8_E5M2, "float8_e5m2": Precision.FP8_E5M2, "e5m2": Precision.FP8_E5M2,
}
