"""Atomic checkpoints: model, optimizer, loss scaler, the run's named generators and the step.

A checkpoint is written to a temporary file in the destination's directory, flushed
and fsync'ed, then moved over the destination with ``os.replace`` (atomic on POSIX
within one filesystem). A crash or an exception mid-write leaves the previous
checkpoint intact and no temporary file behind.

Randomness: only the named ``torch.Generator`` states passed in are saved and restored. The
global torch, NumPy and Python RNGs are not: a run here draws every random number from its own
seeded generators (initialisation, warm-up batches, the data order; sampling is keyed by
counter-based seeds), so the global states play no part in it, and torch seeds its default
generator at random per process, so saving them would only record noise that differs between
identical runs. ``rl.train``'s tests check that a run's bits do not depend on the global seeds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 2


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every platform/filesystem allows this
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def generator_states(generators: dict[str, torch.Generator] | None) -> dict[str, torch.Tensor]:
    """Each named generator's state (a CPU byte tensor, whatever the generator's device)."""
    return {name: g.get_state() for name, g in (generators or {}).items()}


def set_generator_states(saved: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None) -> None:
    """Restore ``generators`` in place from ``generator_states``' output; a name missing from it is an error.

    A checkpoint loaded with ``map_location="cuda"`` holds the states on the GPU; they are moved back first.
    """
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"checkpoint holds no state for generator {name!r} (has {sorted(saved)})")
        g.set_state(saved[name].cpu())


def _state_dict(obj):
    if obj is None:
        return None
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def save_checkpoint(path: str | os.PathLike, *, model, step: int, optimizer=None, scaler=None,
                    generators: dict[str, torch.Generator] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically and return its path.

    ``model``, ``optimizer`` and ``scaler`` may be objects with ``state_dict()`` or
    state dicts already. ``generators`` are named torch Generators whose states are saved
    (module doc); ``extra`` is any picklable data (config, metrics history, ...).
    """
    ckpt = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model": _state_dict(model),
        "optimizer": _state_dict(optimizer),
        "scaler": _state_dict(scaler),
        "generators": generator_states(generators),
        "extra": extra or {},
    }
    return atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, *, model=None, optimizer=None, scaler=None,
                    generators: dict[str, torch.Generator] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; restore into whatever objects are given (named ``generators`` included), return the dict.

    The file is unpickled with ``weights_only=False`` (``extra`` may hold any picklable data):
    load only checkpoints you wrote yourself.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format_version')!r}, this rl.checkpoint reads "
                         f"format {FORMAT_VERSION} only")
    if model is not None:
        model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None:
        if ckpt["scaler"] is None:
            raise ValueError(f"{path} holds no scaler state")
        scaler.load_state_dict(ckpt["scaler"])
    set_generator_states(ckpt["generators"], generators)
    return ckpt
