"""Bad input, table-driven from the op families' rows (tests/families), for every public op (DESIGN.md section 5).

* Wrong dtype / device / rank / shape, None, out-of-range ids, temperature and eps edge
  values: a TypeError or ValueError (IndexError for a softmax ``dim``, as torch) whose
  message names the argument, raised before any kernel is launched.
* Empty and NaN/inf inputs: torch's result wherever torch defines one; documented
  results otherwise (a fully masked softmax row gives zeros, its log-prob -inf).
* ``linear_sample`` always returns ids in [0, V): a row with no mass (all logits -inf)
  gets token 0 with log-prob -inf, a row with a NaN or +inf logit token 0 with log-prob NaN.
* Strided, transposed, overlapping and expanded views are accepted and give the bits of
  the contiguous input.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from families import MatchesTorch, NonFinite, Raises, bad_input_rows
from families.token_logprobs import BAD_TEMPERATURES
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.ops._common import check_temperature

DEV = backend.device()
BF16, F32 = torch.bfloat16, torch.float32
NAN, INF = float("nan"), float("inf")


def rand(*shape, dtype=F32, seed=0):
    """Drawn on the CPU, then moved: the same values on every backend."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEV)


def ids(*values):
    return torch.tensor(values, dtype=torch.int64, device=DEV)


def meta(*shape, dtype=F32):
    """A tensor on a device no backend runs on."""
    return torch.empty(*shape, dtype=dtype, device="meta")


def bits(t):
    t = t.detach()
    if not t.dtype.is_floating_point:
        return t
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.fixture
def launches(monkeypatch):
    """Names of the kernels Triton's launcher was asked to run."""
    names = []
    for cls in (InterpretedFunction, JITFunction):
        def run(self, *args, _original=cls.run, **kwargs):
            names.append(getattr(self, "__name__", str(self)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "run", run)
    return names


# ---- the families' bad-input rows (tests/families: each family's ``bad_inputs``) -----------------------

X, W, T = (lambda: rand(3, 4)), (lambda: rand(5, 4, seed=1)), (lambda: ids(0, 4, 2))
ROWS = bad_input_rows()
# Wrong arguments, torch.ops.pk calls that skip the wrappers' checks, ids out of range (checked inside the op).
ERRORS = [row for row in ROWS if isinstance(row, Raises)]
EMPTY = [row for row in ROWS if isinstance(row, MatchesTorch)]
NONFINITE = [row for row in ROWS if isinstance(row, NonFinite)]


@pytest.mark.parametrize("call,error,message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_input_raises_before_any_launch(call, error, message, launches):
    with pytest.raises(error, match=message):
        call()
    assert launches == [], f"launched {launches} before raising"


def test_temperature_rule_is_float32_t_and_reciprocal():
    """Accepted: every T whose float32 value and float32 reciprocal are finite and > 0; the op divides by float32(T)."""
    for t in (3e-39, 1e-30, 0.7, 1.0, 3e38):
        assert check_temperature(t) == float(torch.tensor(t, dtype=torch.float32)) > 0.0
    for t in BAD_TEMPERATURES:
        with pytest.raises(ValueError, match="temperature"):
            check_temperature(t)
    # small and large accepted temperatures run and give no NaN (logits / T stay finite here)
    for t in (1e-30, 3e38):
        lp = pk.linear_logprobs(X(), W(), T(), t)
        assert not torch.isnan(lp).any()


# ---- empty inputs: torch's result ---------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", [c[1:] for c in EMPTY], ids=[c[0] for c in EMPTY])
def test_empty_inputs_match_torch(ours, theirs):
    got, want = ours(), theirs()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got, want)


# ---- NaN / inf inputs: torch's NaN pattern, same values elsewhere ------------------------------------

def _nan_rows(dtype=F32):
    """Row 0 finite, row 1 one NaN, row 2 one +inf, row 3 one -inf (a finite row that softmax handles)."""
    x = rand(4, 6, seed=3).to(dtype)
    x[1, 2], x[2, 4], x[3, 1] = NAN, INF, -INF
    return x


def _torch_token_logprobs(logits, tokens):
    return torch.log_softmax(logits.double(), -1).gather(-1, tokens[:, None])[:, 0]


@pytest.mark.parametrize("ours,theirs", [c[1:] for c in NONFINITE], ids=[c[0] for c in NONFINITE])
def test_nan_and_inf_inputs_match_torch(ours, theirs):
    x = _nan_rows()
    got, want = ours(x).double(), theirs(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    inf = torch.isinf(want)
    assert torch.equal(torch.isinf(got), inf) and torch.equal(got[inf], want[inf])
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


def test_linear_logprobs_nan_rows_are_nan():
    h = _nan_rows()
    got = pk.linear_logprobs(h, rand(5, 6, seed=2), ids(0, 1, 2, 3))
    want = _torch_token_logprobs(F.linear(h, rand(5, 6, seed=2)), ids(0, 1, 2, 3))
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got[1:3]).all()


def test_fully_masked_rows_documented_results():
    """torch gives NaN for an all -inf row; pk gives the masked-attention answer (documented in ops/softmax.py)."""
    x = torch.full((2, 5), -INF, device=DEV)
    assert torch.equal(pk.softmax(x), torch.zeros(2, 5, device=DEV))
    assert torch.equal(pk.log_softmax(x), x)
    lp, ent = pk.token_logprobs(x, ids(0, 4), return_entropy=True)
    assert torch.equal(lp, torch.full((2,), -INF, device=DEV)) and torch.equal(ent, torch.zeros(2, device=DEV))


def test_linear_sample_ids_are_always_in_range():
    """Finite, NaN, +inf and all -inf rows: every id in [0, V); no-distribution rows follow the documented policy."""
    v = 7
    h = rand(6, 4, seed=5)
    h[1, 0] = NAN                       # NaN logits
    h[2, 1] = INF                       # with w[:, 1] of both signs: +inf and -inf logits (inf - inf = NaN)
    h[3] = torch.tensor([INF, 0.0, 0.0, 0.0])  # with w[:, 0] < 0: every logit -inf (no mass)
    w = rand(v, 4, seed=6)
    w[:, 0] = -w[:, 0].abs() - 0.5
    w[0, 1], w[1, 1] = 1.0, -1.0
    for seed in range(3):
        tokens, lp = pk.linear_sample(h, w, 0.8, generator=torch.Generator(device=DEV).manual_seed(seed))
        assert tokens.dtype == torch.int64 and bool(((tokens >= 0) & (tokens < v)).all()), tokens
        assert tokens[1:4].eq(0).all()
        assert torch.isnan(lp[1:3]).all() and lp[3] == -INF
        assert torch.isfinite(lp[[0, 4, 5]]).all()


# ---- strided, transposed, overlapping, expanded views: the contiguous input's bits -------------------

def _views(base_rows, cols, dtype, seed):
    """Views of (base_rows x cols) values that are not contiguous, each with its contiguous twin."""
    big = rand(base_rows, 2 * cols, dtype=dtype, seed=seed)
    flat = rand(base_rows * cols, dtype=dtype, seed=seed + 1)
    row = rand(1, cols, dtype=dtype, seed=seed + 2)
    transposed = rand(cols, base_rows, dtype=dtype, seed=seed + 3).t()
    return {
        "every other column": big[:, ::2],
        "transposed": transposed,
        "overlapping rows": torch.as_strided(flat, (base_rows, cols), (2, 1)),
        "expanded": row.expand(base_rows, cols),
    }


VIEW_NAMES = ["every other column", "transposed", "overlapping rows", "expanded"]


@pytest.mark.parametrize("view", VIEW_NAMES)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_views_give_the_contiguous_bits(view, dtype):
    x = _views(6, 8, dtype, seed=10)[view]
    xc = x.contiguous()
    w = _views(5, 8, dtype, seed=20)[view]  # (5, 8) weight view, e.g. weight.t() for "transposed"
    wc = w.contiguous()
    tokens = ids(0, 4, 2, 3, 1, 4)
    calls = [
        lambda a, b: pk.matmul(a, b.t()),
        lambda a, b: pk.linear(a, b),
        lambda a, b: pk.softmax(a, scale=0.5),
        lambda a, b: pk.log_softmax(a, dim=0),
        lambda a, b: pk.rms_norm(a, b[0]),
        lambda a, b: pk.layer_norm(a, b[0], b[1]),
        lambda a, b: pk.token_logprobs(a, tokens.clamp_max(7)),
        lambda a, b: pk.linear_logprobs(a, b, tokens),
        lambda a, b: pk.linear_sample(a, b, 0.9, generator=torch.Generator(device=DEV).manual_seed(1)),
    ]
    for i, call in enumerate(calls):
        got, want = call(x, w), call(xc, wc)
        for g, e in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert torch.equal(bits(g), bits(e)), f"call {i} on {view}"
    if dtype == F32:
        assert torch.equal(bits(pk.round_to(x, BF16)), bits(pk.round_to(xc, BF16)))


def test_strided_tokens_and_batched_views():
    logits, tokens = rand(4, 9), ids(0, 8, 1, 7, 2, 6, 3, 5)[::2]
    assert torch.equal(pk.token_logprobs(logits, tokens), pk.token_logprobs(logits, tokens.contiguous()))
    a, b = rand(3, 4, 5, seed=1), rand(3, 2, 4, seed=2)
    assert torch.equal(bits(pk.matmul(a.mT, b.mT)), bits(pk.matmul(a.mT.contiguous(), b.mT.contiguous())))
    assert math.prod(pk.matmul(a.mT, b.mT).shape) == 3 * 5 * 2
