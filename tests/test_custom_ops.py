"""The torch.library custom ops behind the public API (ops/_custom.py): registrations, opcheck, tracing without data.

``torch.library.opcheck`` runs its default utils on every op: test_schema (no input mutated
or aliased), test_autograd_registration (autograd goes through register_autograd),
test_faketensor (the fake implementation's shapes, dtypes and strides match the real one)
and test_aot_dispatch_dynamic (AOT autograd with dynamic shapes, forward and backward).
Inputs are tiny: each real call is an interpreter launch. The cases are the families' test data
(tests/families: each family's ``opcheck``); the layout checks of direct ``torch.ops.pk`` calls are bad-input rows
(tests/test_bad_input.py).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from families import all_samples, opcheck_cases
from torch._subclasses.fake_tensor import FakeTensorMode

import precision_kernels as pk
from precision_kernels.ops._common import observe_launches
from precision_kernels.ops._custom import NAMESPACE, fp32_value
from precision_kernels.ops.registry import all_families

DEVICE = pk.backend.device()
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def rand(*shape, dtype=F32, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(grad)


def ids(*values):
    return torch.tensor(values, dtype=torch.int64, device=DEVICE)


def _cases():
    """(id, op, args) from every family's test data (tests/families): each forward op in fp32 and a 16-bit
    dtype, optional arguments both ways; each backward op."""
    return opcheck_cases()


CASES = _cases()


@pytest.mark.parametrize("op,args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_opcheck_covers_every_custom_op():
    checked = {case.op._qualified_op_name for case in CASES}
    declared = {name for family in all_families().values() for name in family.custom_ops}
    assert declared <= checked, f"no opcheck case for {sorted(declared - checked)}"


PUBLIC_OPS = tuple(name for family in all_families().values() for name in family.public)
NOT_DIFFERENTIABLE = ("linear_sample",)     # draws tokens: no gradient by design
# a quantised matmul has no true gradient (ops/fp8.py); callers supply a straight-through one
NOT_DIFFERENTIABLE += ("quantize_fp8", "scaled_mm")


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_public_op_is_a_custom_op_with_fake_and_autograd(name):
    from torch._library.custom_ops import OPDEFS

    assert getattr(torch.ops.pk, name).default.namespace == NAMESPACE
    opdef = OPDEFS[f"{NAMESPACE}::{name}"]
    assert opdef._abstract_fn is not None, f"{name}: no register_fake"
    # custom_op always installs an Autograd kernel (it raises on backward without a formula), so ask for the formula.
    assert (opdef._backward_fn is not None) == (name not in NOT_DIFFERENTIABLE), f"{name}: register_autograd"


def _recorded_pk_ops(fn):
    """The pk:: ops that fn dispatches (a TorchDispatchMode sees custom ops like any other op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == NAMESPACE:
                seen.append(func._schema.name.split("::")[1])
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def test_public_functions_call_their_custom_ops():
    x, w = rand(2, 3, 4, grad=False), rand(4, grad=False, seed=1)
    calls = {
        "matmul": lambda: pk.matmul(x, rand(4, 5, grad=False)),
        "linear": lambda: pk.linear(x, rand(5, 4, grad=False)),
        "softmax": lambda: pk.softmax(x, dim=1),
        "log_softmax": lambda: pk.log_softmax(x),
        "rms_norm": lambda: pk.rms_norm(x, w),
        "layer_norm": lambda: pk.layer_norm(x, w, None),
        "token_logprobs": lambda: pk.token_logprobs(x, ids(0, 1, 2, 3, 0, 1).view(2, 3)),
        "round_to": lambda: pk.round_to(x, BF16),
    }
    for name, call in calls.items():
        assert _recorded_pk_ops(call) == [name], name


def test_registered_samples_call_every_public_op():
    def every_sample():
        for sample in all_samples(F32, rows=2, n=4, k=4, seed=0).values():
            sample.fn(*sample.args)

    missing = set(PUBLIC_OPS) - set(_recorded_pk_ops(every_sample))
    assert not missing, f"no registered sample calls {sorted(missing)}"


def test_backward_runs_the_backward_ops():
    x = rand(3, 5)
    w = rand(6, 5, seed=1)
    nw = rand(6, seed=2)
    seen = _recorded_pk_ops(lambda: pk.token_logprobs(
        pk.layer_norm(pk.softmax(pk.rms_norm(pk.linear(x, w), nw), scale=0.5), nw, nw), ids(0, 5, 2)).sum().backward())
    assert seen == ["linear", "rms_norm", "softmax", "layer_norm", "token_logprobs", "token_logprobs_backward",
                    "layer_norm_backward", "softmax_backward", "rms_norm_backward", "linear_backward"]


def test_public_functions_trace_on_fake_tensors_without_data():
    """Under FakeTensorMode (what torch.compile traces with) no check needs a value and no kernel launches."""
    with observe_launches() as launches, FakeTensorMode():
        x = torch.empty(2, 3, 8, dtype=BF16, device=DEVICE)
        w = torch.empty(5, 8, dtype=BF16, device=DEVICE)
        tokens = torch.empty(2, 3, dtype=torch.int64, device=DEVICE)
        logits = pk.linear(x, w)
        lp, ent = pk.token_logprobs(logits, tokens, temperature=0.7, return_entropy=True)
        y = pk.layer_norm(pk.rms_norm(pk.softmax(x, dim=1, scale=0.5), w[0]), w[1], w[2])
        r = pk.round_to(torch.empty(4, device=DEVICE), torch.float16)
        mm = pk.matmul(x.transpose(0, 1), w.mT)
    assert launches == []
    assert (logits.shape, lp.shape, ent.shape, lp.dtype) == ((2, 3, 5), (2, 3), (2, 3), F32)
    assert (y.shape, y.dtype, r.dtype, mm.shape) == ((2, 3, 8), BF16, F16, (3, 2, 5))


FP32_EDGES = [0.0, -0.0, 1e-50, 7e-46, 1.4e-45, 3e-39, 1.1754942e-38, 0.1, 1 / 3, 3.4028235e38, 3.40282357e38,
              2.0**128 - 2.0**103, 2.0**128 - 2.0**103 - 2.0**75, 1e39, -1e39, math.inf, -math.inf]


def test_fp32_value_equals_torch_float32_rounding():
    r = random.Random(0)
    values = FP32_EDGES + [r.uniform(-1, 1) * 10 ** r.uniform(-46, 39) for _ in range(5000)]
    for v in values:
        want = float(torch.tensor(v, dtype=torch.float32))
        got = fp32_value(v)
        assert got == want and math.copysign(1, got) == math.copysign(1, want), (v, got, want)
    assert math.isnan(fp32_value(math.nan))


def test_direct_op_calls_accept_a_strided_last_dim():
    x, w = rand(6, 3, grad=False), rand(6, grad=False, seed=1)
    xt = x.t()                                       # (3, 6) with column stride 3
    for op, args in [(torch.ops.pk.softmax, (0.5,)), (torch.ops.pk.rms_norm, (w, 1e-6)),
                     (torch.ops.pk.layer_norm, (w, w, 1e-5))]:
        assert torch.equal(op(xt, *args)[0], op(xt.contiguous(), *args)[0]), op
    tokens = ids(0, 5, 2)
    assert torch.equal(torch.ops.pk.token_logprobs(xt, tokens, 1.0, False)[0],
                       torch.ops.pk.token_logprobs(xt.contiguous(), tokens, 1.0, False)[0])


def test_validate_temperature_accepts_what_check_temperature_accepts():
    """The wrappers' comparison-only rule (traceable on symbolic floats) equals the float32 rule, at its edges."""
    from precision_kernels.ops._common import check_temperature, validate_temperature

    def accepted(check, t):
        try:
            check(t)
            return True
        except ValueError:
            return False

    edges = [2.0**-128, 2.0**-128 + 2.0**-150, 2.0**-128 + 2.0**-149, 2.0**128 - 2.0**103, 2.0**128 - 2.0**104]
    values = FP32_EDGES + [math.nextafter(e, d) for e in edges for d in (-math.inf, math.inf)] + edges
    for t in values + [-t for t in values] + [math.nan]:
        t32 = fp32_value(t)
        inv32 = fp32_value(1.0 / t32) if t32 not in (0.0, math.inf, -math.inf) and t32 == t32 else math.inf
        want = 0.0 < t32 < math.inf and 0.0 < inv32 < math.inf
        assert accepted(validate_temperature, t) == accepted(check_temperature, t) == want, t
