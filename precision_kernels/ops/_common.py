"""Shared argument checks and dtype plumbing for the public ops."""

from __future__ import annotations

import torch

from .. import backend

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Constexpr codes the kernels use for a tensor's storage format (kernels/rounding.py).
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def kind(dtype: torch.dtype) -> int:
    return KIND[dtype]


def kernel_view(t: torch.Tensor) -> torch.Tensor:
    """What a kernel is handed: 16-bit floats travel as their int16 bit patterns.

    Kernels widen them exactly and store rounded bits, so no interpreter bf16
    arithmetic is ever involved.
    """
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


def check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    check_device(name, t)
    return t


def check_device(name: str, t: torch.Tensor) -> None:
    want = backend.device()
    if t.device.type != want.type:
        raise ValueError(f"{name} is on {t.device}, but the active backend ({backend.BACKEND}) "
                         f"runs on {want.type} tensors")


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        listed = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"dtype mismatch: {listed}; all must share one dtype")
    return next(iter(dtypes.values()))


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not t > 0.0:  # also rejects NaN
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return t


def check_tokens(name: str, tokens: torch.Tensor, vocab_size: int, leading_shape: torch.Size) -> torch.Tensor:
    """Token ids must be integers in [0, vocab_size), checked before any kernel reads memory."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got {tokens.dtype}")
    check_device(name, tokens)
    if tokens.shape != leading_shape:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}, expected {tuple(leading_shape)}")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
    return tokens.to(torch.int64)
