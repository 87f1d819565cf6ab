"""Public functions and the torch.library custom ops behind them: validate, pick a config, launch, return.

One module per kernel family; each declares itself to the op registry (ops/registry.py) at its end.
Every public op is a custom op in namespace ``pk`` (``torch.ops.pk.<name>``) with a fake
implementation and a registered autograd formula; ops/_custom.py describes the pattern.
"""

from ._common import check_temperature
from .attention import attention
from .fp8 import quantize_fp8, scaled_mm
from .fp8_linear import fp8_linear
from .layer_norm import layer_norm
from .lm_head import linear_logprobs, linear_sample
from .matmul import linear, matmul
from .norm import rms_norm
from .rounding import round_to
from .softmax import log_softmax, softmax
from .token_logprobs import token_logprobs

# The family modules (each registers the family of its own name), in the registry's order: the
# order of generic test ids and benchmark rows. A new family module is appended here.
FAMILY_MODULES = ("rounding", "matmul", "softmax", "norm", "layer_norm", "token_logprobs", "lm_head", "attention",
                  "fp8", "fp8_linear")

__all__ = [
    "attention", "check_temperature", "fp8_linear", "layer_norm", "linear", "linear_logprobs", "linear_sample",
    "log_softmax", "matmul", "quantize_fp8", "rms_norm", "round_to", "scaled_mm", "softmax", "token_logprobs",
]
