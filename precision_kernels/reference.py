"""FP64 oracles: each op computed in float64 from the same (already rounded) inputs.

Each op family declares its oracles in its registry record (ops/registry.py); ``reference.<op>``
looks them up, so ``reference.layer_norm(x, w, b)`` is the FP64 LayerNorm. Results stay float64;
compare with ``numerics.error_summary``, which rounds them correctly.
"""

from __future__ import annotations

import torch


def f64(t: torch.Tensor) -> torch.Tensor:
    """The FP64 copy of an op's input, detached."""
    return t.detach().to(torch.float64)


def fp32_scalar(x: float) -> float:
    """A Python scalar as the float32 value a kernel uses (an eps, a scale, a temperature)."""
    return float(torch.tensor(x, dtype=torch.float32))


def __getattr__(name: str):
    if name.startswith("__"):          # import machinery probing (__path__, __wrapped__): never the registry
        raise AttributeError(name)
    from .ops.registry import references

    oracles = references()
    if name in oracles:
        return oracles[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (no registered op has that FP64 oracle)")


def __dir__() -> list[str]:
    from .ops.registry import references

    return sorted([*globals(), *references()])
