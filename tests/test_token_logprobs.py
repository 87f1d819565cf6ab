"""pk.token_logprobs (+ entropy): accuracy vs FP64, temperature rule, I1-I3, backward, errors."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_softmax import (
    DEVICE,
    DTYPES,
    assert_bitwise,
    assert_within,
    fp32,
    on_backend_device,  # noqa: F401  (autouse fixture)
    p_rel_bound_z,
    randn,
    ulp,
)

import precision_kernels as pk
from precision_kernels import profiles, reference

# the module (precision_kernels.ops.token_logprobs is shadowed by the function of that name)
tlp_module = importlib.import_module("precision_kernels.ops.token_logprobs")


def _tokens(shape, vocab, seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed), device="cpu").to(DEVICE)


def _issue_bound(ref: torch.Tensor) -> torch.Tensor:
    """The issue's standard for fp32 log-probs and entropies: 2e-5 + 2^-20 |ref|."""
    return 2e-5 + 2.0**-20 * ref.abs()


# ---- accuracy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("vocab,scale,temperature", [(1000, 1.0, 1.0), (3001, 10.0, 0.7), (50_000, 10.0, 0.7)])
def test_accuracy_against_fp64(fmt, vocab, scale, temperature):
    dtype = DTYPES[fmt]
    logits = randn((64, vocab), dtype, scale, seed=vocab)
    tokens = _tokens((64,), vocab, seed=1)
    # half the targets are the row's argmax (log-prob near 0), half random (far below)
    tokens[::2] = logits[::2].float().argmax(-1)
    logprob, entropy = pk.token_logprobs(logits, tokens, temperature, return_entropy=True)
    assert logprob.dtype == entropy.dtype == torch.float32 and logprob.shape == entropy.shape == (64,)
    ref_lp, ref_h = reference.token_logprobs(logits, tokens, temperature, return_entropy=True)
    assert_within(logprob, ref_lp, _issue_bound(ref_lp), f"logprob {fmt} V={vocab}")
    assert_within(entropy, ref_h, _issue_bound(ref_h), f"entropy {fmt} V={vocab}")
    if vocab < 10_000:  # (the 50k case costs ~8 s a call under the interpreter)
        # the same log-probs with or without the entropy
        assert_bitwise(pk.token_logprobs(logits, tokens, temperature), logprob)


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_temperature_is_fp32_division_in_the_kernel(fmt):
    """token_logprobs(l, t, T) == token_logprobs(float32(l) / float32(T), t, 1): the same fp32 z, bitwise."""
    logits = randn((40, 700), DTYPES[fmt], 4.0, seed=2)
    tokens = _tokens((40,), 700, seed=3)
    for temperature in (0.7, 1.3, 0.1):
        divided = logits.float() / torch.tensor(temperature, dtype=torch.float32)
        got = pk.token_logprobs(logits, tokens, temperature, return_entropy=True)
        want = pk.token_logprobs(divided, tokens, 1.0, return_entropy=True)
        assert_bitwise(got[0], want[0])
        assert_bitwise(got[1], want[1])


def test_leading_shapes():
    logits = randn((2, 3, 50), torch.bfloat16, 2.0, seed=4)
    tokens = _tokens((2, 3), 50, seed=5)
    lp, h = pk.token_logprobs(logits, tokens, return_entropy=True)
    assert lp.shape == h.shape == (2, 3)
    assert_bitwise(lp.reshape(-1), pk.token_logprobs(logits.reshape(6, 50), tokens.reshape(6)))
    single = pk.token_logprobs(logits[0, 0], tokens[0, 0])
    assert single.shape == () and single.item() == lp[0, 0].item()
    assert pk.token_logprobs(torch.empty(0, 7), torch.empty(0, dtype=torch.int64)).shape == (0,)
    assert pk.token_logprobs(logits[:, :, :1], torch.zeros(2, 3, dtype=torch.int32)).eq(0).all()


# ---- I1, I2, I3 ----------------------------------------------------------------------------------

def test_deterministic():
    logits = randn((600, 300), torch.float16, 5.0, seed=6)
    tokens = _tokens((600,), 300, seed=7)
    a = pk.token_logprobs(logits, tokens, 0.8, return_entropy=True)
    b = pk.token_logprobs(logits, tokens, 0.8, return_entropy=True)
    assert_bitwise(a[0], b[0])
    assert_bitwise(a[1], b[1])


def _check_batch(logits, tokens, idx, other, other_tokens, temperature):
    lp, h = pk.token_logprobs(logits, tokens, temperature, return_entropy=True)
    lp_s, h_s = pk.token_logprobs(logits[idx], tokens[idx], temperature, return_entropy=True)
    assert_bitwise(lp_s, lp[idx])
    assert_bitwise(h_s, h[idx])
    lp_m, h_m = pk.token_logprobs(torch.cat([other, logits[idx]]), torch.cat([other_tokens, tokens[idx]]),
                                  temperature, return_entropy=True)
    k = other.shape[0]
    assert_bitwise(lp_m[k:], lp[idx])
    assert_bitwise(h_m[k:], h[idx])
    # the gradient of a row depends only on that row
    lg = logits.clone().requires_grad_()
    out = pk.token_logprobs(lg, tokens, temperature, return_entropy=True)
    (out[0].sum() + 0.5 * out[1].sum()).backward()
    ls = logits[idx].clone().requires_grad_()
    out = pk.token_logprobs(ls, tokens[idx], temperature, return_entropy=True)
    (out[0].sum() + 0.5 * out[1].sum()).backward()
    assert_bitwise(ls.grad, lg.grad[idx])


@st.composite
def cases(draw, max_rows, max_vocab):
    rows = draw(st.integers(1, max_rows))
    vocab = draw(st.integers(1, max_vocab))
    idx = draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=min(rows, 9)))
    return (rows, vocab, DTYPES[draw(st.sampled_from(list(DTYPES)))], draw(st.integers(0, 999)),
            torch.tensor(idx), draw(st.integers(0, 5)), draw(st.sampled_from([1.0, 0.6, 1.7])))


def _run_case(case, scale=6.0):
    rows, vocab, dtype, seed, idx, n_other, temperature = case
    _check_batch(randn((rows, vocab), dtype, scale, seed), _tokens((rows,), vocab, seed), idx,
                 randn((n_other, vocab), dtype, scale, seed + 1), _tokens((n_other,), vocab, seed + 1),
                 temperature)


@settings(max_examples=15)
@given(case=cases(max_rows=700, max_vocab=300))
def test_batch_invariance_interpreter_table(case):
    _run_case(case)


def test_rows_across_program_boundaries():
    idx = torch.tensor([0, 511, 512, 1023, 1024, 1099])
    _run_case((1100, 150, torch.bfloat16, 3, idx, 4, 0.8))


@pytest.mark.cuda_configs
@settings(max_examples=10)
@given(case=cases(max_rows=11, max_vocab=1100))
def test_batch_invariance_cuda_table(case):
    with profiles.config_backend("cuda"):
        _run_case(case)


def _check_vocab_padding(logits, tokens, pad, temperature):
    rows = logits.shape[0]
    padded = torch.cat([logits, torch.full((rows, pad), float("-inf"), dtype=logits.dtype)], dim=1)
    a = pk.token_logprobs(logits, tokens, temperature, return_entropy=True)
    b = pk.token_logprobs(padded, tokens, temperature, return_entropy=True)
    assert_bitwise(a[0], b[0])
    assert_bitwise(a[1], b[1])


@settings(max_examples=15)
@given(vocab=st.integers(1, 400), pad=st.integers(1, 400), fmt=st.sampled_from(list(DTYPES)),
       temperature=st.sampled_from([1.0, 0.75]), seed=st.integers(0, 999))
def test_vocab_padded_with_minus_inf(vocab, pad, fmt, temperature, seed):
    _check_vocab_padding(randn((7, vocab), DTYPES[fmt], 5.0, seed), _tokens((7,), vocab, seed), pad, temperature)


@pytest.mark.parametrize("vocab,pad", [(3, 13), (16, 7), (100, 12), (1000, 24)])
def test_vocab_padded_to_aligned_lengths(vocab, pad):
    """Row strides divisible by 16 would be specialized on GPU (another reduction layout); not here."""
    _check_vocab_padding(randn((6, vocab), torch.float32, 5.0, seed=vocab), _tokens((6,), vocab, vocab), pad, 0.8)


def test_misaligned_views_equal_aligned_copies():
    logits = randn((8, 131), torch.bfloat16, 5.0, seed=19)
    tokens = _tokens((8,), 128, seed=20)
    for view in (logits[:, 1:129], logits[:, 3:131]):
        a = pk.token_logprobs(view, tokens, 0.9, return_entropy=True)
        b = pk.token_logprobs(view.contiguous(), tokens, 0.9, return_entropy=True)
        assert_bitwise(a[0], b[0])
        assert_bitwise(a[1], b[1])


@pytest.mark.cuda_configs
def test_vocab_padded_with_minus_inf_cuda_table():
    logits = randn((5, 1500), torch.bfloat16, 5.0, seed=8)
    with profiles.config_backend("cuda"):
        for pad in (1, 548, 1024, 2100):
            _check_vocab_padding(logits, _tokens((5,), 1500, seed=9), pad, 0.9)


def test_rows_per_tile_do_not_change_bits(monkeypatch):
    """The contract the fused LM-head kernel relies on: under the interpreter a row's result depends
    on its values and the block width only, not on how many rows share the tile."""
    if not pk.backend.INTERPRETED:
        pytest.skip("on GPU the tile shape decides the reduction layout")
    logits = randn((24, 400), torch.bfloat16, 6.0, seed=10)
    tokens = _tokens((24,), 400, seed=11)
    base = pk.token_logprobs(logits, tokens, 0.7, return_entropy=True)
    cfg = profiles.row_config(torch.bfloat16)
    for rows in (1, 16):
        monkeypatch.setitem(profiles._ROWS, "interpreter", profiles.RowConfig(rows, cfg.block_cols))
        other = pk.token_logprobs(logits, tokens, 0.7, return_entropy=True)
        assert_bitwise(other[0], base[0])
        assert_bitwise(other[1], base[1])


# ---- masking -----------------------------------------------------------------------------------

def test_minus_inf_logits_and_fully_masked_row():
    logits = randn((4, 300), torch.float32, 3.0, seed=12)
    logits[1] = float("-inf")  # fully masked row
    logits[2, :200] = float("-inf")  # masked leading blocks; token 5 is masked
    tokens = torch.tensor([3, 7, 5, 250])
    lg = logits.clone().requires_grad_()
    lp, h = pk.token_logprobs(lg, tokens, 0.9, return_entropy=True)
    assert lp[1] == float("-inf") and h[1] == 0.0
    assert lp[2] == float("-inf") and torch.isfinite(h[2])
    ref_lp, ref_h = reference.token_logprobs(logits[[0, 2, 3]], tokens[[0, 2, 3]], 0.9, True)
    assert_within(lp[[0, 2, 3]], ref_lp, _issue_bound(ref_lp), "masked logprob")
    assert_within(h[[0, 2, 3]], ref_h, _issue_bound(ref_h), "masked entropy")
    (lp[[0, 3]].sum() + lp[1] * 0 + h.sum()).backward()
    assert torch.isfinite(lg.grad).all()
    assert bool((lg.grad[1] == 0).all())
    assert bool((lg.grad[2, :200] == 0).all())


# ---- backward ---------------------------------------------------------------------------------------

def _fp64_grad(logits, tokens, temperature, g, g_h):
    l64 = logits.detach().double().requires_grad_()
    lp, h = reference.token_logprobs(l64, tokens, temperature, return_entropy=True)
    # reference.* detaches; rebuild the differentiable FP64 graph
    logp = torch.log_softmax(l64 / fp32(temperature), -1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    loss = (chosen * g.double()).sum() + ((entropy * g_h.double()).sum() if g_h is not None else 0.0)
    loss.backward()
    return l64.grad


def _grad_bound(logits, tokens, temperature, g, g_h):
    """fp32 error of d(g logprob + g_H H)/dlogit before its final rounding.

    p carries p_rel_bound_z (z = logit / T is a rounded quotient unless T is a power of two);
    log p + H carries the same shift errors, the log and entropy roundings (2^-21 (|log p| + H)),
    and H's own error (sum p eps_p); the one-hot subtraction, products and the division by T
    add 2^-22 of the result.
    """
    t = fp32(temperature)
    z = logits.double() / t
    eps_p = p_rel_bound_z(z, math.frexp(t)[0] == 0.5)
    p = torch.softmax(z, -1)
    logp = torch.log_softmax(z, -1)
    logp = torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)
    onehot = torch.nn.functional.one_hot(tokens, z.shape[-1]).double()
    g = g.double()[:, None]
    d1 = g * (onehot - p) / t
    bound = g.abs() * p * eps_p / t + 2.0**-22 * d1.abs()
    if g_h is not None:
        gh = g_h.double()[:, None]
        h = -(p * logp).sum(-1, keepdim=True)
        h_err = (p * eps_p).sum(-1, keepdim=True) + 2.0**-21 * (h + logp.abs().max(-1, keepdim=True).values)
        delta = eps_p + 2.0**-21 * (logp.abs() + h) + h_err
        d2 = -gh * p * (logp + h) / t
        bound = bound + gh.abs() * p * (eps_p * (logp + h).abs() + delta) / t + 2.0**-22 * d2.abs()
    return bound


@pytest.mark.parametrize("fmt", list(DTYPES))
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_backward_against_fp64(fmt, with_entropy, temperature):
    dtype = DTYPES[fmt]
    logits = randn((30, 517), dtype, 4.0, seed=13)
    tokens = _tokens((30,), 517, seed=14)
    g = randn((30,), torch.float32, seed=15)
    g_h = randn((30,), torch.float32, seed=16) if with_entropy else None
    lg = logits.clone().requires_grad_()
    out = pk.token_logprobs(lg, tokens, temperature, return_entropy=with_entropy)
    loss = (out[0] * g).sum() + (out[1] * g_h).sum() if with_entropy else (out * g).sum()
    loss.backward()
    assert lg.grad.dtype == dtype
    ref = _fp64_grad(logits, tokens, temperature, g, g_h)
    bound = _grad_bound(logits, tokens, temperature, g, g_h) + ulp(ref, dtype)
    assert_within(lg.grad, ref, bound, f"dlogits {fmt} entropy={with_entropy} T={temperature}")
    # deterministic
    lg2 = logits.clone().requires_grad_()
    out = pk.token_logprobs(lg2, tokens, temperature, return_entropy=with_entropy)
    loss = (out[0] * g).sum() + (out[1] * g_h).sum() if with_entropy else (out * g).sum()
    loss.backward()
    assert_bitwise(lg.grad, lg2.grad)


def test_backward_through_entropy_only():
    logits = randn((6, 90), torch.float32, 2.0, seed=17).requires_grad_()
    tokens = _tokens((6,), 90, seed=18)
    _, h = pk.token_logprobs(logits, tokens, 1.0, return_entropy=True)
    h.sum().backward()
    ref = _fp64_grad(logits, tokens, 1.0, torch.zeros(6), torch.ones(6))
    bound = _grad_bound(logits.detach(), tokens, 1.0, torch.zeros(6), torch.ones(6)) + ulp(ref, torch.float32)
    assert_within(logits.grad, ref, bound, "entropy-only grad")


# ---- errors --------------------------------------------------------------------------------------------

class _NoLaunch:
    """Stands in for a kernel: any launch fails the test."""

    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched before the inputs were validated")


def test_bad_tokens_fail_before_any_kernel(monkeypatch):
    monkeypatch.setattr(tlp_module, "token_logprobs_fwd_kernel", _NoLaunch())
    logits = torch.randn(3, 10)
    for bad in (torch.tensor([0, 10, 1]), torch.tensor([0, -1, 1]), torch.tensor([2**40, 0, 0])):
        with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
            pk.token_logprobs(logits, bad)
    with pytest.raises(ValueError, match="shape"):
        pk.token_logprobs(logits, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        pk.token_logprobs(logits, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="integer"):
        pk.token_logprobs(logits, torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        pk.token_logprobs(logits, [1, 2, 3])


def test_bad_temperature_and_logits(monkeypatch):
    monkeypatch.setattr(tlp_module, "token_logprobs_fwd_kernel", _NoLaunch())
    logits, tokens = torch.randn(3, 10), torch.tensor([1, 2, 3])
    for t in (0.0, -1.0, float("nan"), float("inf"), 1e-50, 1e39):
        with pytest.raises(ValueError, match="temperature"):
            pk.token_logprobs(logits, tokens, temperature=t)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        pk.token_logprobs(logits.double(), tokens)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        pk.token_logprobs(torch.ones(3, 10, dtype=torch.int64), tokens)
    with pytest.raises(ValueError, match="0-d"):
        pk.token_logprobs(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(ValueError, match="empty"):
        pk.token_logprobs(torch.empty(3, 0), tokens)
    with pytest.raises(ValueError, match="active backend"):
        pk.token_logprobs(torch.randn(3, 10, device="meta"), tokens)
    with pytest.raises(ValueError, match="active backend"):
        pk.token_logprobs(logits, tokens.to("meta"))
    with pytest.raises(TypeError, match="return_entropy"):
        pk.token_logprobs(logits, tokens, return_entropy=1)
