"""Fast paths for the Triton interpreter: same bits, about half the time.

Under the interpreter every tile operation of every program is a Python-level step,
and most of that time goes to work whose result is already known: re-patching
``triton.language`` on each nested helper call, integer-overflow assertions, and the
frontend's type work redone per operation. Each fast path skips one such piece of work
and runs the same numpy operations on the same data, so every bit a kernel computes is
unchanged (tests/test_interpreter_fast.py compares every kernel family with and without
them; tests/test_interpreter_installers.py each installer on its own).

The fast paths read and replace internals of Triton's interpreter and frontend, so they
are written for one Triton version (``PATCHED_TRITON``). On any other version nothing is
installed and the plain interpreter runs, with a warning; ``make test`` fails there (the
Makefile pins that version on CPU-only machines).

Each fast path is a named installer in ``INSTALLERS``, applied in that order:

* ``PK_INTERPRETER_FAST=0`` installs none of them;
* ``PK_INTERPRETER_FAST_SKIP=name,name`` installs all but the named ones;
* ``install(skip=...)`` and ``remove()`` do the same at run time.

The backend installs them when it chooses the interpreter, before any kernel module is
imported. Nothing here imports Triton at module level, since that happens before the
backend sets ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable

from . import language, type_work
from .patches import Patches

FAST_ENV = "PK_INTERPRETER_FAST"
SKIP_ENV = "PK_INTERPRETER_FAST_SKIP"
PATCHED_TRITON = "3.9."

INSTALLERS: dict[str, Callable[[Patches], None]] = {
    "language_patch_per_launch": language.patch_language_once_per_launch,
    "builtin_lists": language.list_builtins_once,
    "no_overflow_checks": language.skip_integer_overflow_checks,
    "interned_block_types": type_work.intern_block_types,
    "shared_tensor_shapes": type_work.share_tensor_shapes,
    "broadcast_plans": type_work.remember_broadcasts,
    "common_types": type_work.remember_common_types,
    "numpy_dtypes": type_work.remember_numpy_dtypes,
    "constexpr_unwrap": type_work.unwrap_constexpr_fast,
}

_installed: dict[str, Patches] = {}  # name -> what it replaced, in install order


def _check_names(names: Iterable[str], source: str) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - INSTALLERS.keys())
    if unknown:
        raise ValueError(f"{source}: unknown interpreter fast path(s) {unknown}; known: {list(INSTALLERS)}")
    return names


def skipped_by_env() -> frozenset[str]:
    """The installers ``PK_INTERPRETER_FAST_SKIP`` (comma-separated names) turns off."""
    names = (name.strip() for name in os.environ.get(SKIP_ENV, "").split(","))
    return _check_names((name for name in names if name), SKIP_ENV)


def install(triton_version: str | None = None, skip: Iterable[str] | None = None) -> bool:
    """Install every fast path but those in ``skip`` (default: ``PK_INTERPRETER_FAST_SKIP``).

    Any fast paths already installed are removed first. Returns False, installing nothing,
    where ``triton_version`` (default: the imported Triton's) is not the one they are written for.
    """
    skip = skipped_by_env() if skip is None else _check_names(skip, "skip")
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    remove()
    if not triton_version.startswith(PATCHED_TRITON):
        warnings.warn(f"precision_kernels: interpreter fast paths are written for Triton {PATCHED_TRITON}x, "
                      f"found {triton_version}; running the plain (slower) interpreter", stacklevel=2)
        return False
    for name, installer in INSTALLERS.items():
        if name not in skip:
            patches = _installed[name] = Patches()
            installer(patches)
    return True


def install_from_env() -> bool:
    """Install the fast paths unless ``PK_INTERPRETER_FAST=0``; the backend calls this for the interpreter."""
    if os.environ.get(FAST_ENV, "1") == "0":
        return False
    return install()


def remove() -> None:
    """Put back everything the fast paths replaced: the plain interpreter runs."""
    while _installed:
        _installed.popitem()[1].restore()


def installed() -> tuple[str, ...]:
    """Names of the installed fast paths, in install order."""
    return tuple(_installed)


def targets(name: str) -> list[tuple[object, str]]:
    """The (object, attribute name) pairs installed fast path ``name`` replaced."""
    if name not in _installed:
        raise ValueError(f"name: {name!r} is not an installed interpreter fast path; installed: {installed()}")
    return _installed[name].targets()


def active() -> bool:
    """Whether this process runs the interpreter with any fast path installed."""
    return bool(_installed)
