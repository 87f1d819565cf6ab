"""Twin = interpreter, bitwise: run one public op call under both CPU executors and compare every bit.

Every family's twin tests use ``assert_twin_matches_interpreter`` (see /work/coord/EXECUTOR_API.md):

    assert_twin_matches_interpreter(pk.linear, x, w, b)                  # forward and every gradient
    assert_twin_matches_interpreter(lambda x: pk.softmax(x, dim=-1), x)

* The inputs are cloned per run; a leaf that requires grad gets its gradient compared too, through
  a seeded incoming gradient for every float output that has one (the same in both runs).
* The twin run must launch at least one kernel and every launch must be a twin's (no silent
  interpreter fallback); ``interpreted`` names kernels allowed to run in the interpreter.
* Comparison is of bit patterns (NaN payloads and the sign of zero included), integers exactly.
"""

from __future__ import annotations

import torch

from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.ops._common import observe_launches

_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
         torch.float64: torch.int64}
# fp8 tensors compare as bytes too: their ``==`` is a float comparison (-0 == +0, NaN != NaN).
_BITS.update({getattr(torch, name): torch.uint8 for name in
              ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name)})


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit patterns (floats) or the tensor itself (integers, bools)."""
    t = t.detach().contiguous()
    return t.view(_BITS[t.dtype]) if t.dtype in _BITS else t


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flat_outputs(item)]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _flat_outputs(out[key])]
    return []


def run_under(executor: str, fn, *inputs, grad_seed: int = 1234):
    """(outputs, input gradients, launch records) of ``fn(*inputs)`` run by ``executor`` ("twins"/"interpreter")."""
    clones = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    leaves = [t for t in clones if isinstance(t, torch.Tensor) and t.requires_grad]
    with use_cpu_executor(executor), observe_launches() as records:
        outputs = _flat_outputs(fn(*clones))
        grads = []
        with_grad = [o for o in outputs if o.requires_grad and o.dtype.is_floating_point]
        if leaves and with_grad:
            g = torch.Generator().manual_seed(grad_seed)
            incoming = [torch.randn(o.shape, generator=g).to(o.dtype) for o in with_grad]
            grads = list(torch.autograd.grad(with_grad, leaves, incoming, allow_unused=True))
    return outputs, grads, records


def assert_twin_matches_interpreter(fn, *inputs, interpreted: frozenset[str] | set[str] = frozenset(),
                                    grad_seed: int = 1234) -> list:
    """Assert ``fn(*inputs)`` gives the same bits, outputs and gradients, on the twins as in the interpreter.

    Returns the twin run's launch records.
    """
    want, want_grads, want_records = run_under("interpreter", fn, *inputs, grad_seed=grad_seed)
    got, got_grads, records = run_under("twins", fn, *inputs, grad_seed=grad_seed)
    assert records, "the call launched no kernel"
    assert all(r.executor == "interpreter" for r in want_records)
    not_twins = [r.kernel for r in records if r.executor != "twin" and r.kernel not in interpreted]
    assert not not_twins, f"launches not run by a twin: {not_twins}"
    assert [r.kernel for r in records] == [r.kernel for r in want_records]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"output {i}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
        _assert_same_bits(f"output {i}", g, w)
    assert len(got_grads) == len(want_grads)
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert (g is None) == (w is None), f"gradient {i}: one run has none"
        if g is not None:
            _assert_same_bits(f"gradient {i}", g, w)
    return records


def _assert_same_bits(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    same = bits(got) == bits(want)
    if not bool(same.all()):
        where = (~same).nonzero()[:5].tolist()
        first = tuple(where[0])
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.numel()} elements differ from the interpreter, "
                             f"first at {where}: twin {got[first].item()!r} vs interpreter {want[first].item()!r}")
