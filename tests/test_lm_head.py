"""The fused LM-head kernel (kernels/lm_head.py): SCORE and SAMPLE modes, invariant I5."""

import math
import os

import pytest
import torch

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.ops.lm_head import linear_logprobs, linear_sample
from precision_kernels.ops.matmul import linear
from precision_kernels.ops.token_logprobs import token_logprobs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = pk.backend.device()  # inputs are drawn on the CPU, then moved: the same values on both backends


def _gen(seed):
    """Sampling noise comes from a generator on the kernels' device."""
    return torch.Generator(device=DEV).manual_seed(seed)


def _head(rows, d, vocab, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g).to(dtype)
    w = (torch.randn(vocab, d, generator=g) * (scale / math.sqrt(d))).to(dtype)
    return h.to(DEV), w.to(DEV)


def _bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_i5_sample_equals_score(dtype, temperature):
    h, w = _head(70, 48, 300, dtype, scale=3.0)
    tokens, lp_sample = linear_sample(h, w, temperature, generator=_gen(1))
    lp_score = linear_logprobs(h, w, tokens, temperature, return_entropy=True)[0]
    assert torch.equal(_bits(lp_sample), _bits(lp_score))
    assert torch.equal(_bits(linear_logprobs(h, w, tokens, temperature)), _bits(lp_score))  # entropy off: same bits


@pytest.mark.skipif(not pk.backend.INTERPRETED,
                    reason="fused == unfused bitwise is promised under the interpreter only: on GPU the LM head "
                           "walks 128-wide vocab blocks in the MMA layout, the row kernels 1024-wide blocked ones")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_i5_fused_equals_unfused_under_the_interpreter(dtype, temperature):
    h, w = _head(70, 48, 300, dtype, scale=3.0)
    tokens, _ = linear_sample(h, w, temperature, generator=_gen(1))
    lp_score, ent_score = linear_logprobs(h, w, tokens, temperature, return_entropy=True)
    lp_unfused, ent_unfused = token_logprobs(linear(h, w), tokens, temperature, return_entropy=True)
    assert torch.equal(_bits(lp_score), _bits(lp_unfused))
    assert torch.equal(_bits(ent_score), _bits(ent_unfused))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_i5_holds_in_the_engine_profile(dtype):
    h, w = _head(16, 64, 200, dtype, scale=3.0)
    with pk.use_profile("engine"):
        tokens, lp_sample = linear_sample(h, w, generator=_gen(2))
        lp_score = linear_logprobs(h, w, tokens)
    assert torch.equal(_bits(lp_sample), _bits(lp_score))
    assert not torch.equal(lp_score, linear_logprobs(h, w, tokens)), "engine split-K should move some log-prob"


@pytest.mark.cuda_configs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_i5_and_i2_with_cuda_configs(dtype):
    h, w = _head(40, 64, 300, dtype, scale=3.0)
    with profiles.config_backend("cuda"):
        tokens, lp_sample = linear_sample(h, w, 0.7, generator=_gen(3))
        lp_score = linear_logprobs(h, w, tokens, 0.7)
        sub = linear_logprobs(h[5:12], w, tokens[5:12], 0.7)
    assert torch.equal(_bits(lp_sample), _bits(lp_score))
    assert torch.equal(_bits(sub), _bits(lp_score[5:12]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_i1_i2_rows_do_not_depend_on_the_batch(dtype):
    h, w = _head(300, 32, 150, dtype, scale=2.0)
    tokens = torch.randint(0, 150, (300,), generator=torch.Generator().manual_seed(0)).to(DEV)
    full, ent = linear_logprobs(h, w, tokens, return_entropy=True)
    again = linear_logprobs(h, w, tokens, return_entropy=True)
    assert torch.equal(_bits(full), _bits(again[0])) and torch.equal(_bits(ent), _bits(again[1]))
    perm = torch.randperm(300, generator=_gen(1))[:37]
    sub, sub_ent = linear_logprobs(h[perm], w, tokens[perm], return_entropy=True)
    assert torch.equal(_bits(sub), _bits(full[perm])) and torch.equal(_bits(sub_ent), _bits(ent[perm]))
    one = linear_logprobs(h[7:8], w, tokens[7:8])
    assert torch.equal(_bits(one), _bits(full[7:8]))


# V = 50k costs ~30 s a dtype under the interpreter: make test runs it for fp16 only (PK_SLOW=1: all).
_ACCURACY_CASES = [(d, v, s) for d in DTYPES for v, s in ((8000, 10.0), (1000, 1.0))] + [
    (d, 50_000, 10.0) for d in (DTYPES if os.environ.get("PK_SLOW") else [torch.float16])]


@pytest.mark.parametrize("dtype,vocab,scale", _ACCURACY_CASES)
def test_accuracy_against_fp64_on_the_same_rounded_logits(dtype, vocab, scale):
    h, w = _head(6, 32, vocab, dtype, seed=4, scale=scale)
    tokens = torch.randint(0, vocab, (6,), generator=torch.Generator().manual_seed(5)).to(DEV)
    lp, ent = linear_logprobs(h, w, tokens, 1.3, return_entropy=True)
    ref, ref_ent = pk.reference.token_logprobs(linear(h, w), tokens, 1.3, return_entropy=True)
    assert torch.all((lp.double() - ref).abs() <= 2e-5 + 2**-20 * ref.abs())
    assert torch.all((ent.double() - ref_ent).abs() <= 2e-5 + 2**-20 * ref_ent.abs())


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sample_frequencies_match_softmax_chi_square(temperature):
    vocab, draws = 12, 4000
    h, w = _head(1, 16, vocab, torch.float32, seed=6, scale=4.0)
    hs = h.expand(draws, -1).contiguous()
    tokens, _ = linear_sample(hs, w, temperature, generator=_gen(7))
    p = torch.softmax((h.double() @ w.double().T)[0] / temperature, -1)
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = p * draws
    keep = expected >= 5
    chi2 = float((((counts - expected) ** 2) / expected)[keep].sum())
    dof = int(keep.sum()) - 1
    # 99.9% quantile of chi-square with dof <= 11 is below 32
    assert chi2 < 32, f"chi2={chi2:.1f} with {dof} degrees of freedom"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_against_fp64(dtype):
    h, w = _head(40, 32, 200, dtype, seed=8, scale=2.0)
    tokens = torch.randint(0, 200, (40,), generator=torch.Generator().manual_seed(9)).to(DEV)
    g_lp = torch.randn(40, generator=torch.Generator().manual_seed(10)).to(DEV)
    g_ent = torch.randn(40, generator=torch.Generator().manual_seed(11)).to(DEV)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    lp, ent = linear_logprobs(hh, ww, tokens, 0.8, return_entropy=True)
    (lp * g_lp + ent * g_ent).sum().backward()
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    logits = linear(h, w).double()  # the same rounded logits; the chain rule through them is exact in FP64
    logits64 = logits + (h64 @ w64.T - (h64 @ w64.T).detach())
    logp = torch.log_softmax(logits64 / float(torch.tensor(0.8)), -1)
    ref_lp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    ref_ent = -(logp.exp() * logp).sum(-1)
    (ref_lp * g_lp + ref_ent * g_ent).sum().backward()
    for got, ref in ((hh.grad, h64.grad), (ww.grad, w64.grad)):
        assert got.dtype == dtype
        # dlogits and the product are each rounded once to the compute dtype: allow a few of its ulps
        tol = 4 * torch.finfo(dtype).eps * (ref.abs() + ref.abs().max() * 0.05)
        assert torch.all((got.double() - ref).abs() <= tol + 1e-6)


def test_gradients_are_deterministic():
    h, w = _head(50, 32, 100, torch.bfloat16, seed=12)
    tokens = torch.randint(0, 100, (50,), generator=torch.Generator().manual_seed(13)).to(DEV)
    grads = []
    for _ in range(2):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        linear_logprobs(hh, ww, tokens).sum().backward()
        grads.append((hh.grad.view(torch.int16), ww.grad.view(torch.int16)))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_sample_is_reproducible_with_a_generator_and_takes_leading_shapes():
    h, w = _head(12, 16, 40, torch.float16, seed=14)
    a = linear_sample(h.view(3, 4, 16), w, generator=_gen(3))
    b = linear_sample(h.view(3, 4, 16), w, generator=_gen(3))
    assert a[0].shape == (3, 4) and a[1].shape == (3, 4) and a[0].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(linear_logprobs(h.view(3, 4, 16), w, a[0]), a[1])


def test_bad_inputs():
    h, w = _head(4, 16, 10, torch.float16)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        linear_logprobs(h, w, torch.tensor([0, 1, 10, 2], device=DEV))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        linear_logprobs(h, w, torch.tensor([0, -1, 1, 2], device=DEV))
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(h, w, torch.tensor([0, 1, 2, 3], device=DEV), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        linear_sample(h, w, temperature=float("nan"))
    with pytest.raises(TypeError, match="dtype"):
        linear_logprobs(h, w.float(), torch.tensor([0, 1, 2, 3], device=DEV))
    with pytest.raises(ValueError, match="last dimension"):
        linear_logprobs(h[:, :8], w, torch.tensor([0, 1, 2, 3], device=DEV))
    with pytest.raises(ValueError, match="shape"):
        linear_logprobs(h, w, torch.tensor([0, 1, 2], device=DEV))
    with pytest.raises(TypeError, match="integer"):
        linear_logprobs(h, w, torch.tensor([0.0, 1.0, 2.0, 3.0], device=DEV))
