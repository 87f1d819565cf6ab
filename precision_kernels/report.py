"""A short precision report: the facts of fp32/fp16/bf16 and how telling values round.

    python -m precision_kernels.report
"""

from __future__ import annotations

import torch

from . import backend
from .ops import round_to
from .precision import Precision

TELLING_VALUES = [
    ("1 + 2^-11 (fp16 tie)", 1 + 2**-11),
    ("1 + 3*2^-11 (fp16 tie, to even)", 1 + 3 * 2**-11),
    ("1 + 2^-8 (bf16 tie)", 1 + 2**-8),
    ("0.1", 0.1),
    ("pi", 3.14159265358979),
    ("65519 (fp16 max-ish)", 65519.0),
    ("65520 (fp16 overflow)", 65520.0),
    ("1e-7 (fp16 subnormal)", 1e-7),
    ("1e-8 (fp16 underflow)", 1e-8),
    ("3.4e38", 3.4e38),
    ("log-prob -3.1416", -3.14159265),
]


def precision_facts() -> str:
    lines = [f"{'format':<6} {'bits':>4} {'signif.':>7} {'eps':>12} {'smallest normal':>16} {'max finite':>12}"]
    for p in Precision:
        lines.append(f"{p.value:<6} {p.bits:>4} {p.significand_bits:>7} {p.eps:>12.4g} "
                     f"{p.smallest_normal:>16.4g} {p.max_finite:>12.4g}")
    return "\n".join(lines)


def rounding_table() -> str:
    x = torch.tensor([v for _, v in TELLING_VALUES], dtype=torch.float32, device=backend.device())
    fp16 = round_to(x, torch.float16).float().tolist()
    bf16 = round_to(x, torch.bfloat16).float().tolist()
    lines = [f"{'value':<34} {'fp32':>16} {'fp16 (RNE)':>16} {'bf16 (RNE)':>16}"]
    for (name, _), a, b, c in zip(TELLING_VALUES, x.tolist(), fp16, bf16):
        lines.append(f"{name:<34} {a:>16.9g} {b:>16.9g} {c:>16.9g}")
    return "\n".join(lines)


def main() -> None:
    print(f"backend: {backend.active_backend()}  (FP fusion {'on' if backend.FP_FUSION else 'off'})\n")
    print(precision_facts())
    print("\nRounded by pk.round_to (the library's own round-to-nearest-even):")
    print(rounding_table())


if __name__ == "__main__":
    main()
