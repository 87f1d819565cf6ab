"""Which backend runs the kernels, decided once at import, before any kernel is defined.

* ``"cuda"``: kernels are compiled by Triton for the local NVIDIA GPU.
* ``"interpreter"``: no CUDA device, so the Triton interpreter runs the kernels on
  CPU tensors (``TRITON_INTERPRET=1``). It costs ~1 ms a launch plus 4-10 ms a
  program, and its bf16 arithmetic is broken (DESIGN.md section 3); the kernels
  work around both. Choosing it also installs the interpreter fast paths
  (``precision_kernels.interpreter_fast``), here, so that they are in place before
  any kernel module is imported.
* ``"compile-only"``: ``PK_COMPILE_ONLY=1`` defines compiled (not interpreted)
  kernels on a CPU-only machine so the ahead-of-time compile check can hand them
  to ``triton.compile``. Nothing can be launched in this mode.

A user's own ``TRITON_INTERPRET`` setting always wins.
"""

from __future__ import annotations

import os

import torch

from . import interpreter_fast

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

if INTERPRETED:
    interpreter_fast.install_from_env()



def active_backend() -> str:
    """Name of the backend chosen at import: "cuda", "interpreter" or "compile-only"."""
    return BACKEND


def device() -> torch.device:
    """The device whose tensors the kernels accept."""
    return torch.device("cuda") if BACKEND == "cuda" else torch.device("cpu")


def launch_options() -> dict:
    """Options passed to every kernel launch."""
    return {"enable_fp_fusion": FP_FUSION}
