"""How every public op is a ``torch.library`` custom op in namespace ``pk`` (the pattern, in one place).

Why: ``torch.compile`` then treats each op as one opaque node (no graph breaks, no tracing
into Triton), ``torch.library.opcheck`` can vouch for the registrations, and other stacks can
call ``torch.ops.pk.<name>`` directly.

The pattern, per op family (module ``ops/<family>.py``):

1. ``@torch.library.custom_op("pk::<op>", mutates_args=())`` on a private ``_<op>_op`` function:
   the *real implementation*. It takes the normalised layout (rows x last dim, already
   validated shapes) and plain float/int/bool/str/dtype arguments (scale, eps, temperature),
   reads the active profile and tile table itself (``profiles`` is consulted at run time, so a
   compiled graph follows ``pk.use_profile`` like eager code does), launches through
   ``_common.launch`` and returns fresh, contiguous tensors (never views of its inputs).
   Checks that read tensor *values* (token-id ranges) run here, so tracing never needs data,
   and so does a short layout check (``require``) for callers of ``torch.ops.pk`` who skip
   the wrapper; row inputs with a strided last dim are copied (``as_rows``), as the wrappers do.
   Ops whose backward needs statistics of the forward (row max/sum, mean, rstd) return them
   as extra outputs after the result, as ``aten.native_layer_norm`` does.
2. ``@_<op>_op.register_fake``: the same output shapes, dtypes and strides from metadata only
   (``torch.empty``), for FakeTensor / meta tracing.
3. A backward op ``pk::<op>_backward``, registered the same way (custom op + fake), holding the
   gradient kernels. Backward ops take what the forward decided as explicit arguments
   (e.g. ``table``: the tile table the forward used) and always run the matched profile.
4. ``_<op>_op.register_autograd(_<op>_backward, setup_context=_<op>_setup_context)``:
   ``setup_context`` saves tensors with ``ctx.save_for_backward`` and plain Python values on
   ``ctx``; the backward formula only reshapes/casts and calls ``torch.ops.pk.<op>_backward``.
   Under ``torch.compile`` setup_context runs once at trace time, so any Python value it
   reads (the tile table) is baked into the compiled backward graph.
5. The public function (``pk.<op>``, names and signatures of DESIGN.md section 5 unchanged)
   validates from metadata only (types, dtypes, devices, shapes, Python numbers), moves the
   reduced dim last (``movedim`` is a view), merges leading dims into rows and calls
   ``torch.ops.pk.<op>``. It must stay traceable by dynamo without graph breaks: no
   ``.item()``, no ``float(tensor)``, no tensors built from Python numbers for checks.
   Scalars are checked by comparisons only (``_common.validate_temperature``,
   ``_common.check_real``; ``x - x == 0`` for finiteness): a scale, eps or temperature that
   changes between calls becomes a symbolic float when torch.compile recompiles, and
   ``math.isfinite`` or ``struct`` on it is a graph break. The wrapper passes the unrounded
   float; the implementation checks it again and rounds it with ``fp32_value`` below.

6. The module's registry record (ops/registry.py) names the public functions and every custom op,
   backward ops included: ``all_families()`` lists them all, and tests/test_registry.py checks that
   each ``pk::`` op torch knows is declared by exactly one family.

Double backward is not supported (the backward ops have no autograd formula).
"""

from __future__ import annotations

import math
import struct

NAMESPACE = "pk"

# The smallest magnitude that float32 rounds to infinity: max float32 (2^128 - 2^104) plus half
# an ulp (2^103); the tie goes to the even neighbour, which is infinity.
FP32_OVERFLOW = 2.0**128 - 2.0**103


def require(condition: bool, op: str, what: str) -> None:
    """An op implementation's own layout check: ``ValueError("pk::<op>: <what>")`` unless ``condition``.

    Callers of ``torch.ops.pk.<op>`` skip the public wrapper's validation, so each real
    implementation checks the layout it relies on (ranks, matching sizes, dtypes) before
    any kernel reads memory.
    """
    if not condition:
        raise ValueError(f"{op_name(op)}: {what}")


def op_name(name: str) -> str:
    """``"softmax"`` -> ``"pk::softmax"``: the qualified name a custom op is registered under."""
    return f"{NAMESPACE}::{name}"


def fp32_value(x: float) -> float:
    """The float32 value (round to nearest even) of a Python float, as a Python float.

    Pure Python (no tensor), so public wrappers that call it stay traceable by dynamo.
    Equal to ``float(torch.tensor(x, dtype=torch.float32))`` for every input, overflow to
    +-inf and NaN included.
    """
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return x
    if abs(x) >= FP32_OVERFLOW:
        return math.copysign(math.inf, x)
    return struct.unpack("<f", struct.pack("<f", x))[0]
