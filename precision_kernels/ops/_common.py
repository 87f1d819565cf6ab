"""What every op shares: the one launch path, the argument checks, the dtype plumbing.

* ``launch(kernel, grid, *args, config=..., **constexprs)`` is the only way an op starts a
  kernel: it adds the tile config's ``num_warps`` / ``num_stages`` and
  ``backend.launch_options()`` (FMA contraction chosen explicitly), and tells any
  ``observe_launches()`` block what it launched with which options. Under the interpreter it
  holds one process-wide lock for the launch: the interpreter patches ``triton.language``
  module-wide for the length of a launch (and the fast paths keep per-launch state), so two
  threads launching at once would run inside each other's patches. Launches from several
  threads then take turns, each computing exactly what it computes alone.
  On the interpreter backend a launch runs the kernel's compiled CPU twin instead, where
  ``cpu_executor.choose`` picks one (DESIGN.md section 3.7): same bits, no lock (a twin writes
  only its launch's outputs).
* ``kernel_form(interpreted, compiled)``: the one place an op picks which of a kernel's two
  ``@triton.jit`` forms to launch, read at launch time (``native_dot()``): the compiled form
  (``tl.dot``) on a compiled backend or, inside ``compiled_forms()``, under the interpreter too
  (tests: DESIGN.md section 3.6); else the interpreter form (multiply-and-sum in K order; DESIGN.md
  section 3).
* ``check_temperature``: the one temperature rule of every op that takes one.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import backend, cpu_executor
from ._custom import FP32_OVERFLOW, fp32_value

# tl.dot on native operands only when compiled: the interpreter's tl.dot (OpenBLAS) depends on
# an element's position in the tile and mis-multiplies bf16.
NATIVE_DOT: bool = not backend.INTERPRETED
_compiled_forms_forced: contextvars.ContextVar[bool] = contextvars.ContextVar("pk_compiled_forms", default=False)
# Config fields that are launch options rather than constexprs.
_CONFIG_LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class LaunchRecord:
    """One kernel launch as ``launch`` made it: kernel name, grid, the launch options passed, and what ran it:
    "triton" (a compiled kernel), "interpreter" (the Triton interpreter) or "twin" (its CPU twin)."""

    kernel: str
    grid: tuple
    options: dict
    executor: str = cpu_executor.COMPILED


_observers: list[list[LaunchRecord]] = []
_COMPILED_FORMS: set[int] = set()  # ids of the kernels ``kernel_form`` knows as compiled (tl.dot) forms
_INTERPRETER_LAUNCH = threading.RLock()  # one interpreted launch at a time, in the whole process


@contextlib.contextmanager
def observe_launches() -> Iterator[list[LaunchRecord]]:
    """Collect a ``LaunchRecord`` for every launch made inside the block (tests, benchmarks)."""
    records: list[LaunchRecord] = []
    _observers.append(records)
    try:
        yield records
    finally:
        _observers.remove(records)


def launch(kernel, grid: tuple, *args, config=None, **constexprs) -> None:
    """Launch ``kernel[grid](*args, **constexprs)`` with the config's warps/stages and the backend's options.

    ``config`` is a tile config from ``profiles`` (or None); its ``num_warps`` / ``num_stages``, where it
    has them, are passed as launch options. An empty grid launches nothing.
    """
    grid = tuple(int(g) for g in grid)
    if math.prod(grid) == 0:
        return
    options = {name: getattr(config, name) for name in _CONFIG_LAUNCH_OPTIONS if hasattr(config, name)}
    options.update(backend.launch_options())
    twin = None
    if backend.INTERPRETED and id(kernel) not in _COMPILED_FORMS:
        twin = cpu_executor.choose(kernel)
    executor = cpu_executor.TWIN if twin else cpu_executor.INTERPRETER if backend.INTERPRETED else cpu_executor.COMPILED
    for records in _observers:
        records.append(LaunchRecord(getattr(kernel, "__name__", str(kernel)), grid, dict(options), executor))
    if twin is not None:
        cpu_executor.run_twin(twin, kernel, grid, args, constexprs)
    elif backend.INTERPRETED:
        with _INTERPRETER_LAUNCH:
            kernel[grid](*args, **constexprs, **options)
    else:
        kernel[grid](*args, **constexprs, **options)


def native_dot() -> bool:
    """Whether the op launching now takes the kernels' compiled (``tl.dot``) form."""
    return NATIVE_DOT or _compiled_forms_forced.get()


def kernel_form(interpreted, compiled):
    """The one place an op picks which of a kernel's two forms to launch: ``compiled`` (``tl.dot``) where
    ``native_dot()`` holds, else ``interpreted`` (the CPU specification, which the twins mirror).

    A compiled form has no twin by design: ``launch`` sends it to the interpreter, without the
    missing-twin warning."""
    _COMPILED_FORMS.add(id(compiled))
    return compiled if native_dot() else interpreted


@contextlib.contextmanager
def compiled_forms() -> Iterator[None]:
    """Launch the compiled (``tl.dot``) forms inside the block, under the interpreter too.

    The interpreter's ``tl.dot`` is numpy's matmul: accurate, not batch-invariant, and wrong on bf16
    operands (it multiplies their bit patterns), so this is for tests of the GPU code on a CPU: accuracy
    against FP64, and invariants on inputs whose every sum is exact. The CPU executor never sends a
    compiled-form launch to a twin (``cpu_executor.choose``).
    """
    token = _compiled_forms_forced.set(True)
    try:
        yield
    finally:
        _compiled_forms_forced.reset(token)


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


def logprob_outputs(rows: int, with_entropy: bool, device: torch.device):
    """fp32 buffers of a log-prob kernel: (logprob, entropy, row_max, row_sum); entropy is empty without entropy."""
    def buffer(n):
        return torch.empty(n, dtype=torch.float32, device=device)

    return buffer(rows), buffer(rows if with_entropy else 0), buffer(rows), buffer(rows)


def logprob_grad_inputs(g_logprob: torch.Tensor, g_entropy: torch.Tensor | None):
    """A log-prob backward kernel's incoming gradients: (g_logprob, g_entropy, has_g_entropy), fp32 contiguous.

    Without an entropy gradient, g_logprob stands in for its pointer (HAS_G_ENTROPY=False: never read).
    """
    g_logprob = g_logprob.to(torch.float32).contiguous()
    if g_entropy is None:
        return g_logprob, g_logprob, False
    return g_logprob, g_entropy.to(torch.float32).contiguous(), True


def check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        # fp8 is a storage format here (DESIGN.md section 9 lists the ops that make and take it).
        raise TypeError(f"{name} is {t.dtype}: fp8 tensors are taken only by pk.scaled_mm (a, b) and "
                        f"pk.fp8_linear's weight_fp8 (pk.round_to and pk.quantize_fp8 make them); widen with "
                        f".float() or multiply with pk.scaled_mm")
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


def _real_number(name: str, value) -> float:
    """float(value) for a real number (not bool, str, bytes or complex); TypeError naming ``name`` otherwise."""
    if not isinstance(value, (bool, str, bytes, complex)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


# The temperature rule as bounds on the Python float t: float32(t) is finite below FP32_OVERFLOW,
# and float32(t) > 2^-128 (the smallest float32 T whose float32 1/T is finite; every T32 above it is
# >= 2^-128 + 2^-149) exactly when t > 2^-128 + 2^-150 (the midpoint, which ties to 2^-128).
_T_LOWER = 2.0**-128 + 2.0**-150


def validate_temperature(temperature) -> float:
    """The one temperature rule, checked with comparisons only; returns float(temperature), not rounded.

    Accepts exactly the temperatures ``check_temperature`` accepts. Comparisons (no ``math``
    calls, no struct) also work on the symbolic float that torch.compile makes of a temperature
    that changes between calls, so public wrappers call this and the op rounds to float32 inside.
    """
    t = _real_number("temperature", temperature)
    if not (t - t == 0.0 and _T_LOWER < t < FP32_OVERFLOW):       # t - t == 0: neither NaN nor inf
        t32 = fp32_value(t)
        # 1/T32 divided in double and rounded once to float32 equals float32 division of float32 operands.
        inv32 = fp32_value(1.0 / t32) if t32 != 0.0 else math.copysign(math.inf, t32)
        raise ValueError(f"temperature must have a float32 value T and a float32 1/T that are both finite and > 0, "
                         f"got {temperature!r} (float32 T = {t32!r}, 1/T = {inv32!r})")
    return t


def check_temperature(temperature) -> float:
    """The one temperature rule: returns the fp32 value T32 that every kernel divides logits by.

    T32 = float32(temperature) and float32(1 / T32) must both be finite and > 0. That rejects 0,
    negatives, NaN and inf, and also values such as 1e-50 (T32 = 0: log-probs of -inf) and 1e39
    (T32 = inf: a silently uniform distribution), and a subnormal T32 whose reciprocal overflows.
    Pure Python (no tensors); op implementations call it, wrappers ``validate_temperature``.
    """
    return fp32_value(validate_temperature(temperature))


def check_real(name: str, value, *, nonnegative: bool = False) -> float:
    """A finite real number (``>= 0`` with ``nonnegative``) -> float(value), not rounded to float32.

    Comparisons only, so it also works on the symbolic floats of torch.compile (see
    ``validate_temperature``); the op rounds to float32 inside.
    """
    v = _real_number(name, value)
    if not (v - v == 0.0 and (v >= 0.0 or not nonnegative)):      # v - v == 0: neither NaN nor inf
        raise ValueError(f"{name} must be a finite number{' >= 0' if nonnegative else ''}, got {value!r}")
    return v


def check_fp32_real(name: str, value, *, nonnegative: bool = False) -> float:
    """``check_real`` for a scalar the kernel uses as float32 (an eps, a scale): its float32 value must be
    finite too (1e39 is a finite Python float but inf in float32). Comparisons only (traceable)."""
    v = check_real(name, value, nonnegative=nonnegative)
    if not -FP32_OVERFLOW < v < FP32_OVERFLOW:
        raise ValueError(f"{name} must be finite in float32, got {value!r}")
    return v


def check_eps(value) -> float:
    """A norm's eps: a real number >= 0 whose float32 value is finite -> float(value)."""
    return check_fp32_real("eps", value, nonnegative=True)


def check_token_ids(name: str, tokens: object, leading_shape: torch.Size) -> torch.Tensor:
    """Token ids: an integer tensor of shape ``leading_shape`` on the backend's device -> flat int64, contiguous.

    Reads only metadata. Their range is checked by ``check_token_range`` inside the op (it reads
    the data, so it belongs to the op's implementation, where a custom op or torch.compile sees it).
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got {tokens.dtype}")
    check_device(name, tokens)
    if tokens.shape != leading_shape:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}, expected {tuple(leading_shape)}")
    return tokens.reshape(-1).to(torch.int64).contiguous()


def check_token_range(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    """Every id in [0, vocab_size), checked before any kernel reads memory at it."""
    if ids.numel():
        # One pass over the ids and one device-to-host copy for both bounds.
        lo, hi = torch.stack(torch.aminmax(ids)).tolist()
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
