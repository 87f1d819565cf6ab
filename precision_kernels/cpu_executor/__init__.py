"""The CPU executor: each kernel launch on the interpreter backend runs the kernel's compiled *twin*.

A twin is a function that computes a whole launch (every program of the grid) with exactly the
arithmetic of the kernel's interpreter form: the same K blocks in the same order, the same
slice-by-slice sums, the same masked-lane identities, the same RNE rounding. The interpreter form
stays the CPU specification; tests hold every twin bitwise equal to it (DESIGN.md section 3.7,
/work/coord/EXECUTOR_API.md for how to write one).

* ``@twin(kernel)`` registers a twin for a ``@triton.jit`` kernel. Twins live in one module per
  kernel family in this package (``cpu_executor/matmul.py`` ...), listed in
  ``_import_family_modules`` and imported on the first CPU launch.
* ``choose(kernel)`` is the selection rule ``ops/_common.launch`` applies on the interpreter
  backend to an interpreter-form kernel (a compiled form, ``ops._common.kernel_form``, never asks:
  it has no twin by design): the twin, unless the executor in effect is the interpreter
  (``PK_CPU_EXECUTOR=interpreter`` or ``use_cpu_executor("interpreter")``), the launch runs the
  CUDA tile table (``profiles.config_backend``), the compiler (numba) is missing, or the kernel
  has no twin. The last two warn once.
* Nothing here imports numba: the family modules do, and they are imported only on the first
  launch the interpreter backend makes, so ``import precision_kernels`` works without it (a GPU
  machine never needs it).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Iterator

EXECUTOR_ENV = "PK_CPU_EXECUTOR"
EXECUTORS = ("twins", "interpreter")
# What a LaunchRecord says ran a launch.
TWIN, INTERPRETER, COMPILED = "twin", "interpreter", "triton"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("pk_cpu_executor", default=None)
_twins: dict[int, tuple[object, Callable]] = {}       # id(kernel) -> (kernel, twin)
_arg_names: dict[int, tuple[tuple[str, ...], dict]] = {}  # id(kernel) -> (parameter names, defaults)
_warned: set[str] = set()
_load_lock = threading.Lock()
_loaded = False
_load_error: BaseException | None = None


def _checked(name: str, source: str) -> str:
    if name not in EXECUTORS:
        raise ValueError(f"{source} must be one of {EXECUTORS}, got {name!r}")
    return name


def active_executor() -> str:
    """The CPU executor in effect here: ``use_cpu_executor``'s, else ``PK_CPU_EXECUTOR``, else "twins"."""
    forced = _override.get()
    if forced is not None:
        return forced
    return _checked(os.environ.get(EXECUTOR_ENV, "twins") or "twins", EXECUTOR_ENV)


@contextlib.contextmanager
def use_cpu_executor(name: str) -> Iterator[None]:
    """Run the enclosed CPU launches on ``name``: "twins" (compiled, the default) or "interpreter"."""
    token = _override.set(_checked(name, "executor"))
    try:
        yield
    finally:
        _override.reset(token)


def twin(kernel) -> Callable[[Callable], Callable]:
    """Decorator: register the decorated function as ``kernel``'s twin (one twin per kernel)."""
    if not hasattr(kernel, "arg_names"):
        raise TypeError(f"twin() takes a @triton.jit kernel, got {type(kernel).__name__}")

    def register(fn: Callable) -> Callable:
        previous = _twins.get(id(kernel))
        if previous is not None and previous[1] is not fn:
            raise ValueError(f"kernel {kernel.__name__} already has a twin ({previous[1].__qualname__})")
        _twins[id(kernel)] = (kernel, fn)
        return fn

    return register


def _import_family_modules() -> None:
    """The family modules, one import line each (an import statement keeps the import graph visible to
    tests/test_import_graph.py). A new family's twin module adds its line here."""
    from . import attention, fp8, layer_norm, lm_head, matmul, norm, rounding, softmax, token_logprobs  # noqa: F401


def load_twins() -> None:
    """Import every family module of this package once (they register their twins on import).

    A missing compiler (numba) is remembered, not raised: launches then run the interpreter, with
    a warning. Any other import error is a bug in a twin module and is raised.
    """
    global _loaded, _load_error
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        try:
            _import_family_modules()
        except ImportError as e:
            if (e.name or "").split(".")[0] not in ("numba", "llvmlite"):
                raise
            _load_error = e
        _loaded = True


def registered() -> dict[str, Callable]:
    """Kernel name -> twin, for every twin registered (after importing the family modules)."""
    load_twins()
    return {kernel.__name__: fn for kernel, fn in _twins.values()}


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def choose(kernel) -> Callable | None:
    """The twin that runs this interpreter-backend launch of ``kernel``, or None: the interpreter runs it."""
    if active_executor() == "interpreter":
        return None
    from .. import profiles

    if profiles.table_backend() != "interpreter":   # the CUDA tiles under the interpreter: tests of them
        return None
    load_twins()
    if _load_error is not None:
        _warn_once("", f"precision_kernels: the CPU executor needs numba ({_load_error}); every kernel runs in "
                       f"the Triton interpreter (same bits, 30-100x slower). `make setup` installs it.")
        return None
    entry = _twins.get(id(kernel))
    if entry is None:
        name = getattr(kernel, "__name__", str(kernel))
        _warn_once(name, f"precision_kernels: kernel {name} has no CPU twin; it runs in the Triton interpreter")
        return None
    return entry[1]


def _signature(kernel) -> tuple[tuple[str, ...], dict]:
    cached = _arg_names.get(id(kernel))
    if cached is None:
        params = inspect.signature(kernel.fn).parameters
        cached = (tuple(params), {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty})
        _arg_names[id(kernel)] = cached
    return cached


def run_twin(fn: Callable, kernel, grid: tuple, args: tuple, constexprs: dict) -> None:
    """Call ``fn(grid, **arguments)``: every kernel parameter by name (positional launch arguments first,
    then the constexprs, then the kernel's defaults), as the kernel itself would receive them."""
    names, defaults = _signature(kernel)
    if len(args) > len(names):
        raise TypeError(f"{kernel.__name__} takes {len(names)} arguments, launched with {len(args)} positional ones")
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(constexprs)
    missing = [n for n in names if n not in bound]
    if missing:
        raise TypeError(f"{kernel.__name__} launched without {missing}")
    fn(grid, **bound)


def warm() -> dict[str, float]:
    """Compile (or load from numba's cache) every family's twins: calls each family module's ``warm()``.

    Returns module name -> seconds. ``make setup`` runs this, so tests and the demo start warm.
    """
    import sys
    import time

    load_twins()
    if _load_error is not None:
        raise RuntimeError(f"the CPU executor needs numba: {_load_error}") from _load_error
    seconds = {}
    for name, module in sorted(sys.modules.items()):
        if name.startswith(f"{__name__}.") and hasattr(module, "warm"):
            start = time.perf_counter()
            module.warm()
            seconds[name.rsplit(".", 1)[1]] = time.perf_counter() - start
    return seconds
