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

Loading: a checkpoint is read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain data (dicts, lists, numbers, strings) only, so a crafted file cannot run code; everything a
checkpoint holds is such data. A file that is not a readable checkpoint (empty, cut short, crafted,
an older format) is a ``CheckpointError`` (a ``ValueError``) naming the file.

A checkpoint gets the mode of any file the process creates (0666 less the umask), not
``mkstemp``'s 0600. ``remove_stale_temps`` deletes what a save killed half-way left behind.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """The file is not a checkpoint this module can read: missing, empty, cut short, crafted, another format."""


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that saves of ``path`` killed half-way left in its directory; return them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp"))
    for tmp in stale:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    return stale


def _creation_mode() -> int:
    """0666 less the umask: the mode ``open()`` would give a new file (reading the umask sets it back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _creation_mode())
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
    (module doc); ``extra`` is tensors and plain data (dicts, lists, numbers, strings, None), what
    ``load_checkpoint``'s ``weights_only=True`` reads back.
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


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict in ``path``, read with ``weights_only=True``; ``CheckpointError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (a save that never completed?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message: a "re-run with weights_only=False" hint, then the offending global on its own line.
        found = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain data, which a "
                              f"checkpoint never does, and unpickling them could run code"
                              f"{' (' + found[0].strip() + ')' if found else ''}") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (cut short or damaged?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this rl.checkpoint reads "
                              f"format {FORMAT_VERSION} only")
    return ckpt


def load_checkpoint(path: str | os.PathLike, *, model=None, optimizer=None, scaler=None,
                    generators: dict[str, torch.Generator] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; restore into whatever objects are given (named ``generators`` included), return the dict.

    Read with ``weights_only=True`` (module doc); a file that is not a readable checkpoint raises
    ``CheckpointError`` naming it, and nothing in the file runs.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
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
