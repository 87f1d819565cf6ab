"""Facts about the three floating-point formats the library computes in."""

from __future__ import annotations

import enum

import torch


class Precision(enum.Enum):
    """FP32, FP16 or BF16, with the facts that decide how each one rounds."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @classmethod
    def parse(cls, value: str | torch.dtype | Precision) -> Precision:
        """Accept "fp16"/"float16"/"half", "bf16"/"bfloat16", "fp32"/"float32" or a torch dtype."""
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
    def max_finite(self) -> float:
        emax = 2 ** (self.exponent_bits - 1) - 1
        return (2.0 - 2.0 ** (1 - self.significand_bits)) * 2.0**emax

    @property
    def bits(self) -> int:
        return 32 if self is Precision.FP32 else 16

    def __str__(self) -> str:
        return self.value


_FACTS = {
    Precision.FP32: (torch.float32, 24, 8),
    Precision.FP16: (torch.float16, 11, 5),
    Precision.BF16: (torch.bfloat16, 8, 8),
}
_ALIASES = {
    "fp32": Precision.FP32, "float32": Precision.FP32, "float": Precision.FP32,
    "fp16": Precision.FP16, "float16": Precision.FP16, "half": Precision.FP16,
    "bf16": Precision.BF16, "bfloat16": Precision.BF16,
}
