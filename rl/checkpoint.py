"""Atomic checkpoints: model, optimizer, loss scaler, every RNG state and the step.

A checkpoint is written to a temporary file in the destination's directory, flushed
and fsync'ed, then moved over the destination with ``os.replace`` (atomic on POSIX
within one filesystem). A crash or an exception mid-write leaves the previous
checkpoint intact and no temporary file behind.

Saved RNG states: torch's default CPU generator, CUDA generators when CUDA is
initialised, Python's ``random``, NumPy's global ``np.random`` state, and any named
``torch.Generator`` passed in (e.g. the sampler's), so a resumed run can continue
bit for bit.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


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


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot of every RNG state this project uses (see module doc)."""
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore a ``rng_state`` snapshot; named ``generators`` are restored in place.

    RNG states are CPU byte tensors whatever the generator's device; a checkpoint loaded with
    ``map_location="cuda"`` has them on the GPU, so they are moved back first.
    """
    torch.set_rng_state(state["torch_cpu"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])
    saved = state.get("generators", {})
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
    state dicts already. ``generators`` are named torch Generators to save with the
    global RNG states; ``extra`` is any picklable data (config, metrics history, ...).
    """
    ckpt = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model": _state_dict(model),
        "optimizer": _state_dict(optimizer),
        "scaler": _state_dict(scaler),
        "rng": rng_state(generators),
        "extra": extra or {},
    }
    return atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, *, model=None, optimizer=None, scaler=None,
                    generators: dict[str, torch.Generator] | None = None, restore_rng: bool = True,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; restore into whatever objects are given, and return the raw dict.

    With ``restore_rng`` the global RNG states and the named ``generators`` are set to
    the saved ones. The file is unpickled with ``weights_only=False`` (it holds Python
    and NumPy RNG states): load only checkpoints you wrote yourself.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown checkpoint format {ckpt.get('format_version')!r}")
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
    if restore_rng:
        set_rng_state(ckpt["rng"], generators)
    return ckpt
