"""What the matched-mode modules share: the decline signal, how an op and its inputs are read, and the memo a
served forward leaves for its backward."""

from __future__ import annotations

import weakref

import torch

from .. import backend
from ..ops._common import FLOAT_DTYPES, check_fp32_real


class Decline(Exception):
    """A served op's arguments fall outside what pk serves: fall back to torch and record why."""


def base_name(func) -> str:
    """The aten op's name without namespace, overload or in-place underscore: ``aten.exp_.default`` -> "exp"."""
    name = func._schema.name.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def flat_tensors(obj) -> list:
    """The tensors in ``obj`` and in its (nested) lists and tuples, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in flat_tensors(o)]
    return []


def has_float(values) -> bool:
    return any(isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) for v in values)


def check_tensors(*tensors: torch.Tensor | None) -> None:
    """Every tensor must be a pk float dtype on the active backend's device, else decline."""
    want = backend.device().type
    for t in tensors:
        if t is None:
            continue
        if t.dtype not in FLOAT_DTYPES:
            raise Decline(f"dtype {t.dtype} is not served (pk serves float32, float16, bfloat16)")
        if t.device.type != want:
            raise Decline(f"tensor on {t.device}, the active backend runs on {want}")


def fp32_scalar(name: str, value, *, nonnegative: bool = False) -> float:
    """A scalar pk's kernel uses as float32 (an SDPA scale, a norm's eps) -> float, or ``Decline``.

    Torch takes values pk refuses (a scale of 1e39 is inf in float32: torch returns NaN, pk.attention
    raises); inside the mode such a call runs on torch and is reported, it never raises where torch does not.
    """
    try:
        return check_fp32_real(name, value, nonnegative=nonnegative)
    except (TypeError, ValueError) as why:
        raise Decline(str(why)) from None


class ForwardMemo:
    """What served forwards keep for their backward ops, looked up by the forward's output.

    A backward op receives the forward's output, not the forward's call: softmax's backward gets the
    probabilities, SDPA's backward its ``out``. The memo is keyed by the output's place in its storage
    (what autograd saves for the backward shares the storage, not the tensor object), and an entry is
    dropped when that storage is freed: torch keeps a storage's Python object alive exactly as long as
    the storage, so an entry lives as long as the output does (its graph, or the caller, holds it).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, object] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)

    def keep(self, out: torch.Tensor, value) -> None:
        key = self._key(out)
        self._entries[key] = value
        weakref.finalize(out.untyped_storage(), self._entries.pop, key, None)

    def get(self, out: torch.Tensor):
        """What the forward that returned ``out`` kept, or None (it did not run on pk, or kept nothing)."""
        return self._entries.get(self._key(out))

    def __len__(self) -> int:
        return len(self._entries)
