"""precision-kernels: batch-invariant, bit-exact Triton kernels in FP32, FP16 and BF16.

The backend (compiled CUDA or the Triton interpreter) is decided on import,
before any kernel is defined.
"""

from . import backend  # noqa: I001  (must run before any kernel module is imported)
from . import numerics, reference
from .backend import active_backend
from .ops import (
    attention,
    check_temperature,
    fp8_linear,
    layer_norm,
    linear,
    linear_logprobs,
    linear_sample,
    log_softmax,
    matmul,
    quantize_fp8,
    rms_norm,
    round_to,
    scaled_mm,
    softmax,
    token_logprobs,
)
from .matched import matched_mode
from .precision import Precision
from .profiles import active_profile, use_profile

__all__ = [
    "Precision", "active_backend", "backend", "active_profile", "numerics", "reference", "round_to", "use_profile",
    "layer_norm", "linear", "linear_logprobs", "linear_sample", "log_softmax", "matmul", "rms_norm", "softmax",
    "token_logprobs", "matched_mode", "check_temperature", "attention",
    "quantize_fp8", "scaled_mm", "fp8_linear",
]
