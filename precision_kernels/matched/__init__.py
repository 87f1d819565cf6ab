"""pk.matched_mode(): any PyTorch model's matmuls, softmaxes and norms on pk kernels, with a fail-closed audit.

Inside ``with pk.matched_mode() as report:`` the aten ops that decide a transformer's
numerics run on pk kernels (batch-invariant, fixed-order, fp32-accumulating), so a
model's ``generate()`` with a KV cache and one teacher-forced forward over the same
tokens give the same bits, and a row does not depend on what else is in the batch.

One job per module:

* ``mode.py``: the ``TorchDispatchMode``, its served table (built from the op registry's
  ``aten`` names) and ``MatchedModeReport``;
* ``handlers.py``: the aten handlers, ``HANDLERS`` by overload name, and what each serves
  (products, softmax and log-softmax with their backward ops, the served ``mean`` and
  ``sum``, layer norm with its backward, fused RMS norm);
* ``vector_path.py``: the CPU vector path for transcendental elementwise ops, and why;
* ``allowlist.py``: the allowlist of exact or per-element ops and ``classify``;
* ``attention.py``: torch's scaled-dot-product attention ops (CPU, and the CUDA flash,
  efficient and cudnn ops), forward and backward served together on ``pk.attention``'s kernels.

Everything not served falls back to torch. With ``audit=True`` every op that ran is
classified: served, allowed, sampling (listed apart, not scored), or *uncovered*,
recorded in ``report.uncovered`` with op name, dtype, count and an example shape.
``strict=True`` raises ``UncoveredOpError`` before the first uncovered op runs.

Not reached by this mode: ``torch.compile``d models (Inductor replaces aten ops with its
own kernels; call pk's ops, registered as ``pk::`` custom ops, directly there) and SDPA's
math path (3-D inputs, ``dropout_p > 0``, a mask that requires grad), which runs
``bmm``/``_safe_softmax``/``bmm`` and is recorded as uncovered.
"""

from .allowlist import classify
from .handlers import HANDLERS
from .mode import MatchedModeReport, OpRecord, UncoveredOpError, matched_mode, served_table
from .vector_path import VECTOR_PATH_OPS

__all__ = [
    "HANDLERS", "MatchedModeReport", "OpRecord", "UncoveredOpError", "VECTOR_PATH_OPS", "classify", "matched_mode",
    "served_table",
]
