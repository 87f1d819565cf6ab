"""Test data of the op families (precision_kernels/ops/registry.py): one module per family, named as the family.

The registry holds what the library needs at run time; what the generic tests call lives here.
A family module gives:

* ``samples(dtype, rows, n, k, seed) -> [Sample]``: small random calls at any shape (fast paths,
  launch options, torch.compile); n is the reduced/output width, k the contraction;
* ``row_samples(dtype, rows, n, seed) -> [Tensor]``, where rows are independent: outputs and
  gradients the interpreter's fitted ``block_rows`` may change nothing in;
* ``opcheck() -> [OpcheckCase]``: every custom op, forward and backward, optional arguments both ways;
* ``bad_inputs() -> [Raises | MatchesTorch | NonFinite]``: wrong arguments (``Raises`` ids
  ``"<public name>/..."``), direct ``torch.ops.pk`` layout rows, empty inputs, non-finite rows.

Everything that builds tensors is a function, called only by the test that needs it.
"""

from __future__ import annotations

from precision_kernels.ops.registry import all_families

from . import attention, fp8, fp8_linear, layer_norm, lm_head, matmul, norm, rounding, softmax, token_logprobs
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample

# family name -> its test data module
MODULES = {m.__name__.rpartition(".")[2]: m for m in (
    attention, fp8, fp8_linear, layer_norm, lm_head, matmul, norm, rounding, softmax, token_logprobs)}

__all__ = ["MODULES", "MatchesTorch", "NonFinite", "OpcheckCase", "Raises", "Sample", "all_samples",
           "bad_input_rows", "opcheck_cases", "row_samples"]


def _gather(what: str, *args) -> list:
    """Every family's ``what(*args)``, concatenated in registry order (the order of test ids)."""
    out = []
    for name in all_families():
        give = getattr(MODULES.get(name), what, None)
        out += give(*args) if give else []
    return out


def all_samples(dtype, rows: int, n: int, k: int, seed: int) -> dict[str, Sample]:
    """Every family's samples at one shape, by id (ids are unique across families)."""
    out: dict[str, Sample] = {}
    for s in _gather("samples", dtype, rows, n, k, seed):
        if s.id in out:
            raise ValueError(f"sample id {s.id!r} is used twice")
        out[s.id] = s
    return out


def row_samples(dtype, rows: int, n: int, seed: int) -> list:
    return _gather("row_samples", dtype, rows, n, seed)


def opcheck_cases() -> list[OpcheckCase]:
    return _gather("opcheck")


def bad_input_rows() -> list:
    return _gather("bad_inputs")
