"""Bad input, table-driven, for every public op (DESIGN.md section 5).

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


# ---- errors: (case, call, exception, message that names the argument) ---------------------------

X, W, T = (lambda: rand(3, 4)), (lambda: rand(5, 4, seed=1)), (lambda: ids(0, 4, 2))
TEMPERATURES = [0.0, -1.0, NAN, INF, -INF, 1e-50, 1e39, 1e-39]  # 1e-39: float32 T > 0, but 1/T overflows

ERRORS = [
    # round_to
    ("round_to/None", lambda: pk.round_to(None, BF16), TypeError, "x must be a torch.Tensor"),
    ("round_to/dtype", lambda: pk.round_to(X().half(), BF16), TypeError, "float32 input x"),
    ("round_to/target", lambda: pk.round_to(X(), torch.int8), TypeError, "dtype must be"),
    ("round_to/device", lambda: pk.round_to(meta(3, 4), BF16), ValueError, "x is on meta"),
    # matmul
    ("matmul/None a", lambda: pk.matmul(None, X()), TypeError, "a must be a torch.Tensor"),
    ("matmul/None b", lambda: pk.matmul(X(), None), TypeError, "b must be a torch.Tensor"),
    ("matmul/int", lambda: pk.matmul(X().long(), X().t().long()), TypeError, "a must be float32"),
    ("matmul/float64", lambda: pk.matmul(X(), X().t().double()), TypeError, "b must be float32"),
    ("matmul/mixed", lambda: pk.matmul(X(), X().t().half()), TypeError, "dtype mismatch: a=.*b="),
    ("matmul/device", lambda: pk.matmul(X(), meta(4, 2)), ValueError, "b is on meta"),
    ("matmul/rank a", lambda: pk.matmul(rand(4), X().t()), ValueError, "a must have shape"),
    ("matmul/rank b", lambda: pk.matmul(X(), rand(4)), ValueError, "b must have shape"),
    ("matmul/inner", lambda: pk.matmul(X(), X()), ValueError, "inner dimensions"),
    ("matmul/batch", lambda: pk.matmul(rand(2, 3, 4), rand(3, 4, 2)), ValueError, "batch sizes differ"),
    ("matmul/batched b", lambda: pk.matmul(X(), rand(2, 4, 2)), ValueError, "batched b"),
    # linear
    ("linear/None x", lambda: pk.linear(None, W()), TypeError, "x must be a torch.Tensor"),
    ("linear/None weight", lambda: pk.linear(X(), None), TypeError, "weight must be a torch.Tensor"),
    ("linear/weight rank", lambda: pk.linear(X(), rand(5, 4, 1)), ValueError, "weight must have shape"),
    ("linear/inner", lambda: pk.linear(X(), rand(5, 3)), ValueError, "inner dimensions"),
    ("linear/bias shape", lambda: pk.linear(X(), W(), rand(4)), ValueError, "bias must have shape"),
    ("linear/bias dtype", lambda: pk.linear(X(), W(), rand(5).half()), TypeError, "dtype mismatch"),
    ("linear/bias device", lambda: pk.linear(X(), W(), meta(5)), ValueError, "bias is on meta"),
    ("linear/0-d x", lambda: pk.linear(rand(()), W()), ValueError, "x must have shape"),
    # softmax / log_softmax
    *[case for op in (pk.softmax, pk.log_softmax) for case in [
        (f"{op.__name__}/None", lambda op=op: op(None), TypeError, "x must be a torch.Tensor"),
        (f"{op.__name__}/int", lambda op=op: op(X().int()), TypeError, "x must be float32"),
        (f"{op.__name__}/device", lambda op=op: op(meta(3, 4)), ValueError, "x is on meta"),
        (f"{op.__name__}/dim range", lambda op=op: op(X(), dim=2), IndexError, "dim 2 is out of range"),
        (f"{op.__name__}/dim type", lambda op=op: op(X(), dim=1.0), TypeError, "dim must be an int"),
        (f"{op.__name__}/scale nan", lambda op=op: op(X(), scale=NAN), ValueError, "scale must be a finite number"),
        (f"{op.__name__}/scale inf", lambda op=op: op(X(), scale=INF), ValueError, "scale must be a finite number"),
        (f"{op.__name__}/scale 1e39", lambda op=op: op(X(), scale=1e39), ValueError, "scale must be finite in float32"),
        (f"{op.__name__}/scale True", lambda op=op: op(X(), scale=True), TypeError, "scale must be a real number"),
        (f"{op.__name__}/scale '2'", lambda op=op: op(X(), scale="2"), TypeError, "scale must be a real number"),
        (f"{op.__name__}/scale None", lambda op=op: op(X(), scale=None), TypeError, "scale must be a real number"),
    ]],
    # rms_norm
    ("rms_norm/None x", lambda: pk.rms_norm(None, rand(4)), TypeError, "x must be a torch.Tensor"),
    ("rms_norm/None weight", lambda: pk.rms_norm(X(), None), TypeError, "weight must be a torch.Tensor"),
    ("rms_norm/weight shape", lambda: pk.rms_norm(X(), rand(1, 4)), ValueError, "weight has shape"),
    ("rms_norm/weight dtype", lambda: pk.rms_norm(X(), rand(4).long()), TypeError, "weight must be float32"),
    ("rms_norm/weight device", lambda: pk.rms_norm(X(), meta(4)), ValueError, "weight is on meta"),
    ("rms_norm/0-d", lambda: pk.rms_norm(rand(()), rand(1)), ValueError, "at least one dimension"),
    *[(f"rms_norm/eps {eps}", lambda eps=eps: pk.rms_norm(X(), rand(4), eps=eps), ValueError, "eps must be")
      for eps in (-1e-6, NAN, INF, 1e39)],
    ("rms_norm/eps None", lambda: pk.rms_norm(X(), rand(4), eps=None), TypeError, "eps must be a real number"),
    # layer_norm
    ("layer_norm/None x", lambda: pk.layer_norm(None, rand(4), rand(4)), TypeError, "x must be a torch.Tensor"),
    ("layer_norm/int x", lambda: pk.layer_norm(X().int(), None, None), TypeError, "x must be float32"),
    ("layer_norm/device", lambda: pk.layer_norm(X(), rand(4), meta(4)), ValueError, "bias is on meta"),
    ("layer_norm/weight shape", lambda: pk.layer_norm(X(), rand(5), None), ValueError, "weight has shape"),
    ("layer_norm/weight dtype", lambda: pk.layer_norm(X(), rand(4).long(), None), TypeError, "weight must be"),
    ("layer_norm/0-d", lambda: pk.layer_norm(rand(()), None, None), ValueError, "at least one dimension"),
    *[(f"layer_norm/eps {eps}", lambda eps=eps: pk.layer_norm(X(), None, None, eps=eps), ValueError, "eps must be")
      for eps in (-1e-5, NAN, INF, 1e39)],
    # token_logprobs
    ("token_logprobs/None logits", lambda: pk.token_logprobs(None, T()), TypeError, "logits must be a torch.Tensor"),
    ("token_logprobs/None tokens", lambda: pk.token_logprobs(rand(3, 5), None), TypeError, "tokens must be a torch"),
    ("token_logprobs/int logits", lambda: pk.token_logprobs(rand(3, 5).long(), T()), TypeError, "logits must be"),
    ("token_logprobs/float tokens", lambda: pk.token_logprobs(rand(3, 5), T().float()), TypeError, "tokens must hold"),
    ("token_logprobs/device", lambda: pk.token_logprobs(meta(3, 5), T()), ValueError, "logits is on meta"),
    ("token_logprobs/tokens device", lambda: pk.token_logprobs(rand(3, 5), T().to("meta")), ValueError,
     "tokens is on meta"),
    ("token_logprobs/tokens shape", lambda: pk.token_logprobs(rand(3, 5), ids(0, 1)), ValueError, "tokens has shape"),
    ("token_logprobs/0-d", lambda: pk.token_logprobs(rand(()), ids()), ValueError, "logits must have a vocab"),
    ("token_logprobs/empty vocab", lambda: pk.token_logprobs(rand(3, 0), T()), ValueError, "vocabulary dimension"),
    ("token_logprobs/id -1", lambda: pk.token_logprobs(rand(3, 5), ids(0, -1, 2)), ValueError, "tokens holds id -1"),
    ("token_logprobs/id V", lambda: pk.token_logprobs(rand(3, 5), ids(0, 5, 2)), ValueError, "tokens holds id 5"),
    *[(f"token_logprobs/T={t}", lambda t=t: pk.token_logprobs(rand(3, 5), T(), t), ValueError,
       "temperature must have a float32 value T and a float32 1/T that are both finite and > 0")
      for t in TEMPERATURES],
    *[(f"token_logprobs/T {t!r}", lambda t=t: pk.token_logprobs(rand(3, 5), T(), t), TypeError,
       "temperature must be a real number") for t in (None, "1", True, 1j)],
    # linear_logprobs
    ("linear_logprobs/None hidden", lambda: pk.linear_logprobs(None, W(), T()), TypeError,
     "hidden must be a torch.Tensor"),
    ("linear_logprobs/None weight", lambda: pk.linear_logprobs(X(), None, T()), TypeError,
     "weight must be a torch.Tensor"),
    ("linear_logprobs/None tokens", lambda: pk.linear_logprobs(X(), W(), None), TypeError, "tokens must be a torch"),
    ("linear_logprobs/mixed", lambda: pk.linear_logprobs(X(), W().half(), T()), TypeError, "dtype mismatch"),
    ("linear_logprobs/device", lambda: pk.linear_logprobs(X(), meta(5, 4), T()), ValueError, "weight is on meta"),
    ("linear_logprobs/weight rank", lambda: pk.linear_logprobs(X(), rand(20), T()), ValueError, "weight must be"),
    ("linear_logprobs/d", lambda: pk.linear_logprobs(X(), rand(5, 3), T()), ValueError, "hidden's last dimension"),
    ("linear_logprobs/empty vocab", lambda: pk.linear_logprobs(X(), rand(0, 4), T()), ValueError,
     "empty vocabulary"),
    ("linear_logprobs/tokens shape", lambda: pk.linear_logprobs(X(), W(), ids(1)), ValueError, "tokens has shape"),
    ("linear_logprobs/id -1", lambda: pk.linear_logprobs(X(), W(), ids(0, -1, 2)), ValueError, "tokens holds id -1"),
    ("linear_logprobs/id V", lambda: pk.linear_logprobs(X(), W(), ids(0, 5, 2)), ValueError, "tokens holds id 5"),
    *[(f"linear_logprobs/T={t}", lambda t=t: pk.linear_logprobs(X(), W(), T(), t), ValueError,
       "float32 value T and a float32 1/T") for t in TEMPERATURES],
    # linear_sample
    ("linear_sample/None hidden", lambda: pk.linear_sample(None, W()), TypeError, "hidden must be a torch.Tensor"),
    ("linear_sample/None weight", lambda: pk.linear_sample(X(), None), TypeError, "weight must be a torch.Tensor"),
    ("linear_sample/int", lambda: pk.linear_sample(X().int(), W().int()), TypeError, "hidden must be float32"),
    ("linear_sample/device", lambda: pk.linear_sample(meta(3, 4), W()), ValueError, "hidden is on meta"),
    ("linear_sample/0-d", lambda: pk.linear_sample(rand(()), W()), ValueError, "hidden's last dimension"),
    ("linear_sample/generator", lambda: pk.linear_sample(X(), W(), generator=0), TypeError,
     "generator must be a torch.Generator"),
    *[(f"linear_sample/T={t}", lambda t=t: pk.linear_sample(X(), W(), t), ValueError,
       "float32 value T and a float32 1/T") for t in TEMPERATURES],
]


@pytest.mark.parametrize("call,error,message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_input_raises_before_any_launch(call, error, message, launches):
    with pytest.raises(error, match=message):
        call()
    assert launches == [], f"launched {launches} before raising"


def test_temperature_rule_is_float32_t_and_reciprocal():
    """Accepted: every T whose float32 value and float32 reciprocal are finite and > 0; the op divides by float32(T)."""
    for t in (3e-39, 1e-30, 0.7, 1.0, 3e38):
        assert check_temperature(t) == float(torch.tensor(t, dtype=torch.float32)) > 0.0
    for t in TEMPERATURES:
        with pytest.raises(ValueError, match="temperature"):
            check_temperature(t)
    # small and large accepted temperatures run and give no NaN (logits / T stay finite here)
    for t in (1e-30, 3e38):
        lp = pk.linear_logprobs(X(), W(), T(), t)
        assert not torch.isnan(lp).any()


# ---- empty inputs: torch's result ---------------------------------------------------------------------

EMPTY = [
    ("round_to", lambda: pk.round_to(rand(0, 3), BF16), lambda: torch.empty(0, 3, dtype=BF16)),
    ("matmul M=0", lambda: pk.matmul(rand(0, 4), rand(4, 2)), lambda: rand(0, 4) @ rand(4, 2)),
    ("matmul N=0", lambda: pk.matmul(rand(3, 4), rand(4, 0)), lambda: rand(3, 4) @ rand(4, 0)),
    ("matmul K=0", lambda: pk.matmul(rand(3, 0), rand(0, 2)), lambda: rand(3, 0) @ rand(0, 2)),
    ("matmul B=0", lambda: pk.matmul(rand(0, 3, 4), rand(0, 4, 2)), lambda: rand(0, 3, 4) @ rand(0, 4, 2)),
    ("linear K=0 bias", lambda: pk.linear(rand(3, 0), rand(2, 0), rand(2)),
     lambda: F.linear(rand(3, 0), rand(2, 0), rand(2))),
    ("softmax rows=0", lambda: pk.softmax(rand(0, 3)), lambda: torch.softmax(rand(0, 3), -1)),
    ("softmax n=0", lambda: pk.softmax(rand(3, 0)), lambda: torch.softmax(rand(3, 0), -1)),
    ("log_softmax n=0", lambda: pk.log_softmax(rand(3, 0)), lambda: torch.log_softmax(rand(3, 0), -1)),
    ("rms_norm rows=0", lambda: pk.rms_norm(rand(0, 4), rand(4)), lambda: F.rms_norm(rand(0, 4), (4,), rand(4), 1e-6)),
    ("rms_norm n=0", lambda: pk.rms_norm(rand(3, 0), rand(0)), lambda: F.rms_norm(rand(3, 0), (0,), rand(0), 1e-6)),
    ("layer_norm rows=0", lambda: pk.layer_norm(rand(0, 4), rand(4), rand(4)),
     lambda: F.layer_norm(rand(0, 4), (4,), rand(4), rand(4))),
    ("layer_norm n=0", lambda: pk.layer_norm(rand(3, 0), rand(0), rand(0)),
     lambda: F.layer_norm(rand(3, 0), (0,), rand(0), rand(0))),
    ("token_logprobs rows=0", lambda: pk.token_logprobs(rand(0, 5), ids()), lambda: torch.empty(0, device=DEV)),
    ("linear_logprobs rows=0", lambda: pk.linear_logprobs(rand(0, 4), W(), ids()), lambda: torch.empty(0, device=DEV)),
    ("linear_logprobs d=0", lambda: pk.linear_logprobs(rand(3, 0), rand(5, 0), T()),
     lambda: torch.log_softmax(F.linear(rand(3, 0), rand(5, 0)), -1).gather(-1, T()[:, None])[:, 0]),
    ("linear_sample rows=0", lambda: pk.linear_sample(rand(0, 4), W())[1], lambda: torch.empty(0, device=DEV)),
]


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


NONFINITE = [
    ("matmul", lambda x: pk.matmul(x, rand(6, 3)), lambda x: x.double() @ rand(6, 3).double()),
    ("linear", lambda x: pk.linear(x, rand(3, 6)), lambda x: F.linear(x.double(), rand(3, 6).double())),
    ("softmax", lambda x: pk.softmax(x), lambda x: torch.softmax(x.double(), -1)),
    ("log_softmax", lambda x: pk.log_softmax(x), lambda x: torch.log_softmax(x.double(), -1)),
    ("rms_norm", lambda x: pk.rms_norm(x, rand(6)), lambda x: F.rms_norm(x.double(), (6,), rand(6).double(), 1e-6)),
    ("layer_norm", lambda x: pk.layer_norm(x, rand(6), rand(6, seed=1)),
     lambda x: F.layer_norm(x.double(), (6,), rand(6).double(), rand(6, seed=1).double(), 1e-5)),
    ("token_logprobs", lambda x: pk.token_logprobs(x, ids(0, 1, 2, 3)),
     lambda x: _torch_token_logprobs(x, ids(0, 1, 2, 3))),
]


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


def test_token_range_is_checked_inside_the_op_implementation(launches):
    """The id-range check reads tensor data, so it lives in the custom ops themselves (what torch.compile
    calls), not only in the Python wrappers."""
    with pytest.raises(ValueError, match="tokens holds id -1"):
        torch.ops.pk.token_logprobs(rand(3, 5), ids(0, -1, 2), 1.0, False)
    with pytest.raises(ValueError, match="tokens holds id 5"):
        torch.ops.pk.linear_logprobs(X(), W(), ids(0, 5, 2), 1.0, False)
    assert launches == []
