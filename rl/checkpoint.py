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

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .output_paths import open_output, output_target, temp_prefix

FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """The file is not a checkpoint this module can read: missing, empty, cut short, crafted, another format."""


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that saves of ``path`` killed half-way left in its directory; return them."""
    target, in_place = output_target(path)
    if in_place or not target.parent.is_dir():
        return []
    stale = sorted(target.parent.glob(f"{temp_prefix(target)}*.tmp"))
    for tmp in stale:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    return stale


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, then ``os.replace``
    (``rl.output_paths``' rule: a link's target is replaced, the link kept; a device is written in place)."""
    with open_output(path, "checkpoint") as f:
        torch.save(obj, f)
    return Path(path)


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


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict in ``path``, read with ``weights_only=True``; ``CheckpointError`` if it is not one.

    ``mmap``: map the tensors rather than read them (the step or the flags of a large checkpoint, cheaply).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (a save that never completed?)")
    _check_container(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


# torch.save writes a zip archive; torch before 1.6 wrote a bare pickle (its first byte is the PROTO opcode).
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", 0x80


def _check_container(path: Path) -> None:
    """Refuse a file that is neither of torch.save's containers, saying what it looks like instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO:
        return
    text = _as_text(head)
    if text is None:
        kind = f"it starts with {head[:8]!r}"
    elif text.lstrip()[:1] in ("{", "["):
        kind = "it is JSON text"
    else:
        kind = f"it is text ({text.strip()[:24]!r})"
    raise CheckpointError(f"{path}: not a checkpoint: {kind}; rl.train's checkpoint.pt is a torch.save zip archive")


def _as_text(head: bytes) -> str | None:
    """``head`` as text when it is printable UTF-8 (a character cut off at its end allowed), else None."""
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if all(c.isprintable() or c.isspace() for c in text) else None
    return None


def digest_json(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no whitespace): equal data, equal digest, however written."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_files(paths) -> str | None:
    """sha256 over the files' names and bytes, in name order (None for no files): a model's weights or tokenizer."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        return None
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def identity_conflicts(stored: dict | None, current: dict) -> list[str]:
    """The parts of a model's identity (name -> digest, ``rl.hf_config.model_identity``) that differ, by name.

    ``stored`` None (a checkpoint written before identities were stored) conflicts with nothing: the
    caller says the model could not be checked.
    """
    if stored is None:
        return []
    return [f"its {name} ({'none' if stored.get(name) is None else stored.get(name)[:12]} stored, "
            f"{'none' if current.get(name) is None else current.get(name)[:12]} now)"
            for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]


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
