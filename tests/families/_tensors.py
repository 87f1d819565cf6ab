"""Tensor builders of the families' test data (samples, opcheck cases, bad inputs).

Values are drawn on the CPU from a seeded generator and then moved, so every backend sees the
same numbers.
"""

from __future__ import annotations

import torch

from precision_kernels import backend

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NAN, INF = float("nan"), float("inf")
DEV = backend.device()


def rand(*shape, dtype=F32, seed: int = 0, grad: bool = False, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values times ``scale``, in ``dtype`` on the backend's device."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
    return x.to(dtype).to(DEV).requires_grad_(grad)


def leaf(shape, dtype, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """The next draw of ``g`` as a leaf that requires grad (a sample's differentiable input)."""
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(DEV).requires_grad_()


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=DEV)


def random_ids(high: int, shape, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=g).to(DEV)


def meta(*shape, dtype=F32) -> torch.Tensor:
    """A tensor on a device no backend runs on."""
    return torch.empty(*shape, dtype=dtype, device="meta")


def no_grad(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The values of an op's outputs, detached (a forward's saved statistics for a backward's opcheck)."""
    with torch.no_grad():
        return [t.detach() for t in tensors]
