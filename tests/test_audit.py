"""Matched mode's audit without holes: integer inputs with float results, an allowlist that earns each entry,
the engine profile asked for by name, torch's special values and memory layouts, and concurrent threads.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import precision_kernels as pk
from precision_kernels.matched import UncoveredOpError, classify
from precision_kernels.matched.allowlist import ELEMENTWISE
from precision_kernels.matched.vector_path import VECTOR_PATH_OPS

aten = torch.ops.aten
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.bool:
        return t
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _strict(fn):
    with pk.matched_mode(strict=True) as report:
        out = fn()
    return out, report


# ---------------------------------------------------------------------------------------------
# Integer and bool inputs with a float result are float ops.

INT = torch.arange(5000)


@pytest.mark.parametrize("call", [
    lambda: INT.cumsum(0, dtype=torch.float32),
    lambda: torch.arange(1, 9).prod(dtype=torch.float32),
    lambda: INT.nansum(dtype=torch.float32),
    lambda: torch.logsumexp(torch.arange(10), 0),
    lambda: torch.exp(torch.arange(10)),
], ids=["cumsum", "prod", "nansum", "logsumexp", "exp"])
def test_a_float_result_of_integer_inputs_is_refused_under_strict(call):
    with pytest.raises(UncoveredOpError, match="integer/bool inputs"):
        _strict(call)


@pytest.mark.parametrize("call", [
    lambda: INT.sum(dtype=torch.float32),
    lambda: INT.mean(dtype=torch.float32),
    lambda: (INT % 3 == 0).sum(dtype=torch.float32),
    lambda: INT.reshape(50, 100).sum(-1, dtype=torch.float32),
], ids=["sum", "mean", "bool-sum", "sum-dim"])
def test_a_float_sum_or_mean_of_integers_is_served_on_pk(call):
    out, report = _strict(call)
    assert sum(n for op, n in report.served.items() if op.startswith(("sum.", "mean."))) == 1
    torch.testing.assert_close(out, call(), rtol=0, atol=0)  # exact integers, however they are summed


def test_integer_ops_with_integer_results_stay_allowed():
    _, report = _strict(lambda: (INT.sum(), INT.cumsum(0), torch.div(INT, 7, rounding_mode="floor")))
    assert not report.served and not report.uncovered


# ---------------------------------------------------------------------------------------------
# The allowlist earns each elementwise entry: an element alone gives the bits it gives in a big tensor.

N = 3000
# Integer-only ops: torch has no float kernel for them (checked below), so they are exact.
INTEGER_ONLY = {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift",
                "bitwise_right_shift"}
ELEMENTWISE_CALLS = {
    "add": torch.add, "sub": torch.sub, "rsub": torch.rsub, "mul": torch.mul, "div": torch.div,
    "neg": lambda x, y: torch.neg(x), "abs": lambda x, y: torch.abs(x), "sqrt": lambda x, y: torch.sqrt(x.abs()),
    "reciprocal": lambda x, y: torch.reciprocal(x), "square": lambda x, y: torch.square(x),
    "maximum": torch.maximum, "minimum": torch.minimum, "fmax": torch.fmax, "fmin": torch.fmin,
    "clamp": lambda x, y: torch.clamp(x, -0.5, 0.7), "clamp_min": lambda x, y: torch.clamp_min(x, 0.1),
    "clamp_max": lambda x, y: torch.clamp_max(x, 0.1), "clip": lambda x, y: torch.clip(x, y, y + 1),
    "relu": lambda x, y: torch.relu(x), "threshold": lambda x, y: torch.threshold(x, 0.1, 20.0),
    "threshold_backward": lambda x, y: aten.threshold_backward(y, x, 0.1),
    "hardtanh": lambda x, y: F.hardtanh(x), "sign": lambda x, y: torch.sign(x), "sgn": lambda x, y: torch.sgn(x),
    "signbit": lambda x, y: torch.signbit(x), "floor": lambda x, y: torch.floor(x),
    "ceil": lambda x, y: torch.ceil(x), "round": lambda x, y: torch.round(x, decimals=2),
    "trunc": lambda x, y: torch.trunc(x), "frac": lambda x, y: torch.frac(x), "remainder": torch.remainder,
    "fmod": torch.fmod, "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor, "logical_not": lambda x, y: torch.logical_not(x), "eq": torch.eq,
    "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "isnan": lambda x, y: torch.isnan(x * 0 / (y * 0)), "isinf": lambda x, y: torch.isinf(x / (y * 0)),
    "isfinite": lambda x, y: torch.isfinite(x * 1e30), "isneginf": lambda x, y: torch.isneginf(x * 1e30),
    "isposinf": lambda x, y: torch.isposinf(x * 1e30),
    "isin": lambda x, y: torch.isin(x.round(), x.new_tensor([0.0, -1.0, 2.0])),
    "nan_to_num": lambda x, y: torch.nan_to_num(x / (y * 0), posinf=7.0), "positive": lambda x, y: +x,
    "copysign": torch.copysign,
}
VECTOR_PATH_DIVISIONS = {
    "div-trunc": lambda x, y: torch.div(x, y, rounding_mode="trunc"),
    "div-floor": lambda x, y: torch.div(x, y, rounding_mode="floor"),
    "floor_divide": torch.floor_divide,
}


def _operands(dtype):
    g = torch.Generator().manual_seed(0)
    scale = torch.exp2(torch.randint(-6, 7, (2, N), generator=g).float())
    x, y = (torch.randn(2, N, generator=g) * scale).to(dtype)
    return x, y


def _alone_and_batched(fn, x, y):
    """fn on the whole tensors; in chunks of 15 (below 2 SIMD vectors: torch's scalar loop for each element);
    and on every 7th element alone."""
    batch = fn(x, y)
    chunks = torch.cat([fn(x[i:i + 15], y[i:i + 15]).reshape(-1) for i in range(0, N, 15)])
    picked = list(range(0, N, 7))
    alone = torch.cat([fn(x[i:i + 1], y[i:i + 1]).reshape(1) for i in picked])
    return batch, chunks, alone, picked


def test_every_elementwise_entry_has_a_call_and_integer_only_ones_refuse_floats():
    assert set(ELEMENTWISE) == set(ELEMENTWISE_CALLS) | INTEGER_ONLY
    x = torch.ones(3)
    for name in INTEGER_ONLY:
        with pytest.raises((RuntimeError, TypeError)):
            getattr(torch, name)(x, x) if name != "bitwise_not" else torch.bitwise_not(x)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_every_allowlisted_elementwise_op_gives_an_element_the_same_bits_alone_and_in_3000(dtype):
    x, y = _operands(dtype)
    differ = {}
    for name, fn in ELEMENTWISE_CALLS.items():
        batch, chunks, alone, picked = _alone_and_batched(fn, x, y)
        assert torch.equal(_bits(chunks[picked]), _bits(alone)), f"{name}: the chunked run is not the op alone"
        n = int((_bits(batch) != _bits(chunks)).sum())
        if n:
            differ[name] = n
    assert not differ, f"{dtype}: elements that differ alone and inside {N} (cannot stay allowlisted): {differ}"


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_rounding_divisions_are_served_on_the_vector_path_whatever_the_size(dtype):
    x, y = _operands(dtype)
    assert "floor_divide" in VECTOR_PATH_OPS and "floor_divide" not in ELEMENTWISE
    for name, fn in VECTOR_PATH_DIVISIONS.items():
        with pk.matched_mode(strict=True) as report:
            batch, chunks, alone, picked = _alone_and_batched(fn, x, y)
        assert all(op.endswith("(vector path)") for op in report.served), report.served
        assert torch.equal(_bits(batch), _bits(chunks)) and torch.equal(_bits(batch[picked]), _bits(alone)), name


def test_plain_division_stays_allowlisted_and_a_rounding_one_takes_the_vector_path():
    from precision_kernels.matched import vector_path

    x = torch.randn(8)
    assert classify(aten.div.Tensor, (x, x), {}) == ("allowed", "elementwise")
    assert not vector_path.applies(aten.div.Tensor, (x, x), {})
    assert vector_path.applies(aten.div.Tensor_mode, (x, x), {"rounding_mode": "floor"})


# ---------------------------------------------------------------------------------------------
# The engine profile, asked for by name.

def _engine_rows():
    g = torch.Generator().manual_seed(3)
    return torch.randn(64, 512, generator=g), torch.randn(32, 512, generator=g)


def test_strict_refuses_the_engine_profile_unless_asked_for_by_name():
    x, w = _engine_rows()
    with pk.use_profile("engine"):
        with pytest.raises(UncoveredOpError, match="allow_engine=True"):
            _strict(lambda: x @ w.t())
        with pk.matched_mode(strict=True, allow_engine=True) as report:
            x @ w.t()
    assert report.served_profiles["mm.default"] == {"engine": 1}
    assert "engine" in report.summary()
    with pytest.raises(TypeError, match="allow_engine"):
        with pk.matched_mode(allow_engine="yes"):
            pass


def test_the_report_states_the_profile_that_served_each_op():
    x, w = _engine_rows()
    with pk.matched_mode() as report:
        a = x @ w.t()
        with pk.use_profile("engine"):
            b = x @ w.t()
        torch.softmax(a, -1)
    assert report.served_profiles == {"mm.default": {"matched": 1, "engine": 1}, "_softmax.default": {"matched": 1}}
    assert "mm.default x2 [engine x1, matched x1]" in report.summary()
    assert not torch.equal(a, b)  # why it is worth stating: the engine's split-K is another sum


# ---------------------------------------------------------------------------------------------
# Torch's own semantics inside the mode.

def test_a_sum_with_a_narrower_dtype_casts_first_as_torch_does():
    # Each 1 + 2^-11 + 2^-20 rounds up to 1 + 2^-10 in fp16: cast first, the 8 pairs sum to 2^-7;
    # summed in fp32 and rounded once they give 2^-8 (+ a little). Torch's mean does the latter.
    x = torch.tensor([1 + 2**-11 + 2**-20, -1.0] * 8)
    with pk.matched_mode(strict=True) as report:
        got = x.sum(-1, dtype=torch.float16)
        got_mean = x.mean(dtype=torch.float16)
    assert report.served["sum.dim_IntList"] == 1 and report.served["mean.default"] == 1
    assert got.item() == x.sum(-1, dtype=torch.float16).item() == 2**-7
    assert got_mean.item() == x.mean(dtype=torch.float16).item() != x.half().mean().item()


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_a_fully_masked_row_gives_nan_as_torch_does(log):
    x = torch.tensor([[-float("inf")] * 5, [0.0, 1.0, -float("inf"), 2.0, 3.0]], requires_grad=True)
    fn = torch.log_softmax if log else torch.softmax
    with pk.matched_mode(strict=True) as report:
        y = fn(x, -1)
        y.backward(torch.ones_like(y))
    want = fn(x.detach(), -1)
    assert sum(report.served.values()) == 2
    assert torch.equal(y.isnan(), want.isnan()) and y[0].isnan().all()
    torch.testing.assert_close(y[1], want[1])
    assert x.grad[0].isnan().all() and x.grad[1].isfinite().all()


def test_a_0d_softmax_is_served():
    _, report = _strict(lambda: (torch.softmax(torch.tensor(2.0), 0), torch.log_softmax(torch.tensor(2.0), -1)))
    assert report.served["_softmax.default"] == 1 and report.served["_log_softmax.default"] == 1


def test_the_vector_path_keeps_the_inputs_memory_layout():
    x = torch.randn(5, 3).t()
    c = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    with pk.matched_mode(strict=True) as report:
        flat = x.exp().t().view(-1)
        y = F.silu(c)
        z = torch.add(x, 1.0).sigmoid()
    assert report.served["exp.default (vector path)"] == 1
    assert torch.equal(flat, x.exp().t().reshape(-1))
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride() == F.silu(c).stride()
    assert z.stride() == torch.add(x, 1.0).sigmoid().stride()
    # The values are the vector path's (every element on torch's SIMD loop: the storage padded to
    # 128 lanes), not plain torch's, whose scalar tail gives other bits for some elements.
    storage = c.permute(0, 2, 3, 1).reshape(-1)
    padded = F.silu(torch.cat([storage, storage.new_zeros(128 - storage.numel() % 128)]))[:storage.numel()]
    assert torch.equal(y, padded.view(2, 4, 5, 3).permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# Audit reasons.

def test_audit_reasons_say_what_happened():
    i, x = torch.arange(4), torch.randn(4)
    verdict, reason = classify(aten.exp.default, (i,), {})
    assert verdict == "uncovered" and "out=" not in reason and "integer" in reason
    verdict, reason = classify(aten.exp.out, (x,), {"out": torch.empty(4)})
    assert verdict == "uncovered" and "out=" in reason
    assert classify(aten._has_same_storage_numel.default, (x, x), {})[0] == "allowed"
    # alpha by position (add.Scalar's schema takes it so) is a multiply-add all the same
    verdict, reason = classify(aten.add.Scalar, (x, 2.0, 3.0), {})
    assert verdict == "uncovered" and "alpha=3.0" in reason
    assert classify(aten.add.Scalar, (x, 2.0, 1), {})[0] == "allowed"


def test_gathers_backward_is_allowed_and_a_scatter_add_that_sums_is_not():
    """gather's backward scatters one value into each zero slot (exact); a repeated index or a non-zero slot adds."""
    x, index = torch.randn(3, 7, requires_grad=True), torch.tensor([[1], [6], [0]])
    with pk.matched_mode(strict=True):
        torch.log_softmax(x, -1).gather(-1, index).sum().backward()
    src = torch.randn(3, 2)
    assert classify(aten.scatter_add.default, (torch.zeros(3, 7), 1, torch.tensor([[1, 2]] * 3), src), {})[0] \
        == "allowed"
    for base, idx in ((torch.zeros(3, 7), torch.tensor([[2, 2]] * 3)), (torch.ones(3, 7), torch.tensor([[1, 2]] * 3))):
        for op in (aten.scatter_add.default, aten.scatter_add_.default):
            assert classify(op, (base, 1, idx, src), {})[0] == "uncovered"
    with pk.matched_mode(strict=True), pytest.raises(UncoveredOpError, match="scatter_add"):
        torch.zeros(3, 7).scatter_add_(1, torch.tensor([[2, 2]] * 3), src)


# ---------------------------------------------------------------------------------------------
# Threads: the mode is per thread, and pk's launches under the interpreter take turns.

def test_two_threads_under_the_mode_compute_what_one_does():
    g = torch.Generator().manual_seed(5)
    w, xs = torch.randn(24, 32, generator=g), [torch.randn(6, 32, generator=g) for _ in range(2)]

    def work(x):
        outs = []
        with pk.matched_mode(strict=True):
            for _ in range(25):
                outs.append(torch.log_softmax(F.linear(x, w), -1))
        return outs

    serial = [work(x) for x in xs]
    results, errors = [None, None], []

    def thread(k):
        try:
            results[k] = work(xs[k])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(got, want))
