"""The dispatch mode behind ``pk.matched_mode()``, its served table and its report.

Mechanism: a ``TorchDispatchMode``. It is per thread (the mode stack is thread-local),
nests, sees every op below autograd (backward ops too), and falls back with
``func(*args, **kwargs)``. Outside the ``with`` block torch is untouched. For each op:

1. pk's own custom ops (``pk::linear`` ..., a model that calls ``pk.linear`` directly) run as
   they are and count as served;
2. an op with a float tensor input, or a float ``dtype=`` (``int_tensor.sum(dtype=torch.float32)``),
   that the served table holds runs its handler
   (``handlers.py``); the table is built from the op registry, each family's ``aten``
   names, with ``handlers.HANDLERS`` supplying the code;
3. on CPU, an elementwise op of ``vector_path.VECTOR_PATH_OPS`` runs on the vector path;
4. anything else runs on torch, classified by ``allowlist.classify`` when auditing.

Handlers run with every dispatch mode disabled and without autograd, so pk's own torch
calls (buffer allocation, int16 views) never re-enter a mode and pk never calls the aten op
it replaces (its matmul does not use aten ``mm``). A handler that declines (a softmax over
another dim, ``addmm`` with ``beta != 1``, a dtype pk lacks, a tensor on another device)
falls back to torch, and the fallback is always recorded as uncovered.

Profiles: pk's kernels run in the active profile (``pk.use_profile``). The report records the
profile that served each op (``report.served_profiles``): the active one, or "matched" for the
handlers that always run the matched kernels (``handlers.MATCHED_ONLY``: the row sums, the SDPA
backward), whatever is active. The engine profile's kernels are not
batch-invariant (split-K decode), so ``strict=True`` refuses to serve an op under it, unless
the caller asks for it by name with ``allow_engine=True`` (an engine sampler that wants the
audit's other guarantees); without ``strict`` the engine is served and reported.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from .. import profiles
from ..ops.registry import all_families
from . import vector_path
from ._common import Decline, flat_tensors, has_float
from .allowlist import classify
from .handlers import HANDLERS, MATCHED_ONLY


class UncoveredOpError(RuntimeError):
    """Raised by ``matched_mode(strict=True)`` on an op that pk does not serve and the allowlist does not hold."""


@dataclass
class OpRecord:
    """One kind of op call that was not served: op, dtype, why, how often, and one example shape."""

    op: str
    dtype: str
    reason: str
    count: int = 0
    example_shape: tuple = ()


@dataclass
class MatchedModeReport:
    """What a ``matched_mode`` block ran.

    ``served``: op name -> calls that ran on pk kernels (or on the vector path, named so);
    ``served_profiles``: op name -> calls per profile that served them ("matched", "engine"; the
    vector path runs no pk kernel and has none). ``uncovered``: ops that ran on
    torch and are neither served nor allowlisted (float reductions such as ``cumsum``,
    ``var``, SDPA; fallbacks of served ops). ``sampling``: sampling ops (``multinomial``,
    ``rand``...), which draw tokens but produce no scored number. ``uncovered`` is filled
    for every fallback of a served op; other ops are classified only with ``audit=True``.
    """

    served: collections.Counter = field(default_factory=collections.Counter)
    served_profiles: dict = field(default_factory=dict)
    uncovered: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)

    def _add(self, table: dict, op: str, dtype, reason: str, shape: tuple) -> None:
        key = (op, str(dtype), reason)
        rec = table.get(key)
        if rec is None:
            rec = table[key] = OpRecord(op, str(dtype).replace("torch.", ""), reason, 0, shape)
        rec.count += 1

    def _serve(self, op: str, profile: str | None) -> None:
        self.served[op] += 1
        if profile is not None:
            self.served_profiles.setdefault(op, collections.Counter())[profile] += 1

    def _served_text(self, op: str, calls: int) -> str:
        by = self.served_profiles.get(op)
        if not by or set(by) == {"matched"}:
            return f"{op} x{calls}"
        return f"{op} x{calls} [{', '.join(f'{p} x{n}' for p, n in sorted(by.items()))}]"

    def summary(self) -> str:
        profiles_used = sorted({p for by in self.served_profiles.values() for p in by})
        lines = [f"served on pk: {sum(self.served.values())} calls "
                 f"({', '.join(self._served_text(k, v) for k, v in sorted(self.served.items())) or 'none'})"
                 f"; profiles: {', '.join(profiles_used) or 'none'}"]
        for title, table in (("uncovered", self.uncovered), ("sampling (not scored)", self.sampling)):
            lines.append(f"{title}: {len(table) or 'none'}")
            for r in table.values():
                lines.append(f"  {r.op:<40} {r.dtype:<9} x{r.count:<5} e.g. {list(r.example_shape)}  {r.reason}")
        return "\n".join(lines)

    __str__ = summary


def _overload(name: str):
    """"aten.mm.default" -> torch.ops.aten.mm.default."""
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def served_table() -> dict[object, Callable]:
    """{aten overload: handler} for every overload an op family claims (``OpFamily.aten``)."""
    table: dict[object, Callable] = {}
    claimed_by: dict[str, str] = {}
    for family in all_families().values():
        for name in family.aten:
            if name in claimed_by:
                raise ValueError(f"aten overload {name} is claimed by op families {claimed_by[name]!r} "
                                 f"and {family.name!r}")
            if name not in HANDLERS:
                raise LookupError(f"op family {family.name!r} claims {name}, which matched mode has no handler for")
            claimed_by[name] = family.name
            table[_overload(name)] = HANDLERS[name]
    return table


SERVED = served_table()


def _example_shape(args: tuple) -> tuple:
    t = next(iter(flat_tensors(list(args))), None)
    return tuple(t.shape) if t is not None else ()


def _dtype_of(args: tuple, kwargs: dict):
    t = next(iter(flat_tensors(list(args) + list(kwargs.values()))), None)
    return t.dtype if t is not None else kwargs.get("dtype")


def _float_dtype(kwargs: dict) -> bool:
    dtype = kwargs.get("dtype")
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


class _MatchedDispatchMode(TorchDispatchMode):
    def __init__(self, report: MatchedModeReport, audit: bool, strict: bool, allow_engine: bool) -> None:
        super().__init__()
        self.report, self.audit, self.strict, self.allow_engine = report, audit, strict, allow_engine

    def _profile(self, func, args, kwargs) -> str:
        """The profile the op runs in, refused under ``strict`` unless it is "matched" or the engine was asked for.

        The active one, except for handlers that always run matched (``handlers.MATCHED_ONLY``).
        """
        profile = "matched" if str(func) in MATCHED_ONLY else profiles.active_profile()
        if profile != "matched" and self.strict and not self.allow_engine:
            name = str(func).removeprefix("aten.")
            raise UncoveredOpError(f"matched_mode(strict=True): {name} ({_dtype_of(args, kwargs)}, shape "
                                   f"{list(_example_shape(args))}) would run in the {profile!r} profile, whose "
                                   f"kernels are not batch-invariant; pass allow_engine=True to serve it there")
        return profile

    def _uncovered(self, func, args, kwargs, reason: str) -> None:
        name = str(func).removeprefix("aten.")
        dtype, shape = _dtype_of(args, kwargs), _example_shape(args)
        if self.strict:
            raise UncoveredOpError(f"matched_mode(strict=True): {name} ({dtype}, shape {list(shape)}) "
                                   f"is not covered by pk: {reason}")
        self.report._add(self.report.uncovered, name, dtype, reason, shape)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "pk":
            self.report._serve(str(func), self._profile(func, args, kwargs))
            return func(*args, **kwargs)
        # Ops on integer/bool tensors only (HF generate's bookkeeping: sum, mm of masks) are exact:
        # they are never served, only classified; a float dtype= makes the op a float one.
        handler = SERVED.get(func) if has_float(flat_tensors(list(args))) or _float_dtype(kwargs) else None
        on_vector_path = handler is None and vector_path.applies(func, args, kwargs)
        if on_vector_path:
            handler = lambda *a, **k: vector_path.run(func, a, k)  # noqa: E731
        if handler is not None:
            profile = None if on_vector_path else self._profile(func, args, kwargs)
            try:
                # pk's own torch calls must not re-enter this (or any) mode; no autograd graph here.
                with _disable_current_modes(), torch.no_grad():
                    out = handler(*args, **kwargs)
            except Decline as why:
                self._uncovered(func, args, kwargs, f"fell back to torch: {why}")
                return func(*args, **kwargs)
            name = str(func).removeprefix("aten.")
            self.report._serve(f"{name} (vector path)" if on_vector_path else name, profile)
            return out
        if self.audit or self.strict:
            verdict, reason = classify(func, args, kwargs)
            if verdict == "uncovered":
                self._uncovered(func, args, kwargs, reason)
            elif verdict == "sampling":
                self.report._add(self.report.sampling, str(func).removeprefix("aten."),
                                 _dtype_of(args, kwargs), reason, _example_shape(args))
        return func(*args, **kwargs)


@contextlib.contextmanager
def matched_mode(audit: bool = False, strict: bool = False, allow_engine: bool = False) -> Iterator[MatchedModeReport]:
    """Run the enclosed PyTorch code's matmuls, softmaxes, means and norms on pk kernels.

    ``with pk.matched_mode(audit=True) as report: out = model.generate(...)``. Per thread
    and nestable; torch is untouched outside the block. ``audit=True`` classifies every
    other op and lists those neither served nor on the allowlist of exact/per-element ops
    in ``report.uncovered`` (sampling ops apart, in ``report.sampling``); ``strict=True``
    raises ``UncoveredOpError`` on the first one instead, and on the first op that would be
    served in the engine profile unless ``allow_engine=True`` asks for that profile by name
    (``with pk.use_profile("engine"), pk.matched_mode(strict=True, allow_engine=True):``). The
    report states the profile that served each op (``served_profiles``). The package docstring
    says what is served and why.
    """
    if not isinstance(audit, bool):
        raise TypeError(f"audit must be a bool, got {type(audit).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if not isinstance(allow_engine, bool):
        raise TypeError(f"allow_engine must be a bool, got {type(allow_engine).__name__}")
    report = MatchedModeReport()
    with _MatchedDispatchMode(report, audit=audit, strict=strict, allow_engine=allow_engine):
        yield report
