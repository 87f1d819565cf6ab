"""The kinds of test data a family module gives (tests/families/__init__.py says which function gives which)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Sample(NamedTuple):
    """One public call for the generic tests: ``fn(*args)`` returns a tensor or a tuple of tensors.

    Float tensors in ``args`` that require grad are the inputs whose gradients are checked; ``fn``
    builds anything else it needs (a seeded generator, token ids) itself, so calling it twice gives
    the same bits."""

    id: str
    fn: Callable
    args: tuple


class OpcheckCase(NamedTuple):
    """``torch.library.opcheck(op, args)`` on a custom op (forward or backward) with these arguments."""

    id: str
    op: object
    args: tuple


class Raises(NamedTuple):
    """``call()`` raises ``error`` with a message matching ``match`` (naming the argument), before any launch."""

    id: str
    call: Callable
    error: type
    match: str


class MatchesTorch(NamedTuple):
    """``ours()`` equals ``theirs()`` exactly: shape, dtype and values (empty inputs)."""

    id: str
    ours: Callable
    theirs: Callable


class NonFinite(NamedTuple):
    """``ours(x)`` on rows holding NaN, +inf and -inf has torch's NaN/inf pattern (``theirs(x)``, FP64)."""

    id: str
    ours: Callable
    theirs: Callable
