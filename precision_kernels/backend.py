"""Which backend runs the kernels, decided once at import, before any kernel is defined.

* ``"cuda"``: kernels are compiled by Triton for the local NVIDIA GPU.
* ``"interpreter"``: no CUDA device, so the Triton interpreter runs the kernels on
  CPU tensors (``TRITON_INTERPRET=1``). It costs ~1 ms a launch plus 4-10 ms a
  program, and its bf16 arithmetic is broken (DESIGN.md section 3); the kernels
  work around both.
* ``"compile-only"``: ``PK_COMPILE_ONLY=1`` defines compiled (not interpreted)
  kernels on a CPU-only machine so the ahead-of-time compile check can hand them
  to ``triton.compile``. Nothing can be launched in this mode.

A user's own ``TRITON_INTERPRET`` setting always wins.
"""

from __future__ import annotations

import os

import torch

COMPILE_ONLY_ENV = "PK_COMPILE_ONLY"

# FMA contraction changes rounding, and Triton's default flips in 3.10, so every
# launch passes this explicitly. Off: each multiply and add rounds on its own, as
# the interpreter (numpy) does.
FP_FUSION = False


def _decide() -> str:
    if os.environ.get(COMPILE_ONLY_ENV, "") not in ("", "0"):
        os.environ.pop("TRITON_INTERPRET", None)
        return "compile-only"
    user_setting = os.environ.get("TRITON_INTERPRET")
    if user_setting is not None:
        return "interpreter" if user_setting not in ("", "0") else "cuda"
    if torch.cuda.is_available():
        return "cuda"
    os.environ["TRITON_INTERPRET"] = "1"
    return "interpreter"


BACKEND: str = _decide()
# Triton's process-wide default, kept equal to ours so it does not warn; launches pass it explicitly anyway.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1" if FP_FUSION else "0")
INTERPRETED: bool = BACKEND == "interpreter"


def _skip_nested_language_patching() -> None:
    """Make the Triton interpreter patch ``triton.language`` once per launch, not once per helper call.

    Triton 3.9's interpreter re-patches the whole language (``inspect.getmembers`` over
    ``tl``, ``tl.core``, ``tl.math``; ~0.4 ms) on every call of a nested ``@triton.jit``
    helper, although the launch that contains the call has already patched the same
    modules and keeps them patched until it ends. That redundant work was ~95% of an
    interpreted matmul's time. Inside a launch, a helper whose language modules are
    already patched now gets an empty patch scope. What runs, and every bit it
    computes, is unchanged; tests/test_backend.py checks a kernel against the unpatched
    interpreter.
    """
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter, "_pk_patch_once", False):
        return
    original_patch = interpreter._patch_lang
    original_launch = interpreter.GridExecutor.__call__
    patched: list[set | None] = []  # language modules patched by each launch in progress

    def lang_modules(fn) -> set:
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_lang(fn):
        if patched and patched[-1] is not None and lang_modules(fn) <= patched[-1]:
            return interpreter._LangPatchScope()
        scope = original_patch(fn)
        if patched:
            # The launch's own patch lasts until the launch ends; a nested helper's (e.g. tl.sum,
            # whose module sees tl.core) is never restored by the interpreter, so it lasts too.
            patched[-1] = lang_modules(fn) | (patched[-1] or set())
        return scope

    def launch(self, *args, **kwargs):
        patched.append(None)
        try:
            return original_launch(self, *args, **kwargs)
        finally:
            patched.pop()

    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = launch
    interpreter._pk_patch_once = True


def _skip_integer_overflow_checks() -> None:
    """Turn off the interpreter's integer-overflow assertions.

    The interpreter checks every 32-bit integer add/sub/mul by redoing it in int64 and
    asserting the range (``sanitize_overflow``), which compiled kernels only do in debug
    mode. The checks compute nothing the kernel uses, but they were half the time of the
    integer rounding helpers. Our kernels use 64-bit offsets where sizes need them.
    """
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


if INTERPRETED and os.environ.get("PK_INTERPRETER_FAST", "1") != "0":
    _skip_nested_language_patching()
    _skip_integer_overflow_checks()


def active_backend() -> str:
    """Name of the backend chosen at import: "cuda", "interpreter" or "compile-only"."""
    return BACKEND


def device() -> torch.device:
    """The device whose tensors the kernels accept."""
    return torch.device("cuda") if BACKEND == "cuda" else torch.device("cpu")


def launch_options() -> dict:
    """Options passed to every kernel launch."""
    return {"enable_fp_fusion": FP_FUSION}
