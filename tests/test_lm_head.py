"""The fused LM-head kernel (kernels/lm_head.py): SCORE and SAMPLE modes, invariant I5."""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from philox_reference import gumbel_keys

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


def _seeds(n, seed=0):
    """n distinct-looking int64 seeds spread over the whole range (drawn on the CPU, moved to the backend)."""
    return torch.randint(-(2**63), 2**63 - 1, (n,), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.int64).to(DEV)


def _chi2_pvalue(chi2: float, dof: int) -> float:
    """P(X >= chi2) for X ~ chi-square(dof): 1 - P(dof/2, chi2/2), the lower regularised gamma by its series."""
    a, x = dof / 2.0, chi2 / 2.0
    term = total = 1.0 / a
    n = 0
    while term > 1e-17 * total:
        n += 1
        term *= x / (a + n)
        total += term
    return max(0.0, 1.0 - math.exp(a * math.log(x) - x - math.lgamma(a)) * total) if x > 0 else 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_i5_sample_equals_score(dtype, temperature):
    h, w = _head(70, 48, 300, dtype, scale=3.0)
    tokens, lp_sample = linear_sample(h, w, temperature, seeds=_seeds(70))
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


def test_chi2_pvalue_matches_known_quantiles():
    # 99.9% quantiles of chi-square (standard tables): dof 1 -> 10.828, 5 -> 20.515, 11 -> 31.264
    for dof, q in ((1, 10.828), (5, 20.515), (11, 31.264)):
        assert abs(_chi2_pvalue(q, dof) - 1e-3) < 2e-6
    assert abs(_chi2_pvalue(2.0, 2) - math.exp(-1.0)) < 1e-12  # dof 2: exp(-x/2)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("seeds", ["consecutive", "spread"])
def test_sample_frequencies_match_softmax_chi_square(temperature, seeds):
    """One row repeated with a distinct seed per copy: one launch gives `draws` independent samples."""
    vocab, draws = 12, 4000
    h, w = _head(1, 16, vocab, torch.float32, seed=6, scale=4.0)
    hs = h.expand(draws, -1).contiguous()
    row_seeds = torch.arange(draws, dtype=torch.int64, device=DEV) if seeds == "consecutive" else _seeds(draws, 7)
    tokens, _ = linear_sample(hs, w, temperature, seeds=row_seeds)
    p = torch.softmax((h.double() @ w.double().T)[0] / temperature, -1).cpu()
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()
    expected = p * draws
    small = expected < 5  # cells too rare for the chi-square approximation are pooled into one
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    assert dof >= 4
    assert _chi2_pvalue(chi2, dof) > 1e-3, f"chi2={chi2:.1f} with {dof} degrees of freedom"


# ---- seeded sampling: the noise is a function of (seed, column) ------------------------------------

_POOL_ROWS, _POOL_VOCAB = 300, 150


def _pool(dtype):
    """300 rows (two interpreter programs of 256), their seeds, and the whole pool sampled once in order."""
    h, w = _head(_POOL_ROWS, 24, _POOL_VOCAB, dtype, seed=20, scale=2.0)
    seeds = _seeds(_POOL_ROWS, 21)
    tokens, logprobs = linear_sample(h, w, 0.9, seeds=seeds)
    return h, w, seeds, tokens, logprobs


_POOLS = {}


def _cached_pool(dtype):
    if dtype not in _POOLS:
        _POOLS[dtype] = _pool(dtype)
    return _POOLS[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(data=st.data())
def test_a_seeded_row_samples_the_same_alone_and_in_any_batch_in_any_order(dtype, data):
    """I2 for sampling: bitwise token and log-prob, whatever rows share the launch and in what order."""
    h, w, seeds, tokens, logprobs = _cached_pool(dtype)
    n = data.draw(st.integers(1, _POOL_ROWS), label="batch rows")
    idx = torch.tensor(data.draw(st.permutations(range(_POOL_ROWS)), label="order")[:n], device=DEV)
    batch_tokens, batch_lp = linear_sample(h[idx], w, 0.9, seeds=seeds[idx])
    assert torch.equal(batch_tokens, tokens[idx])
    assert torch.equal(_bits(batch_lp), _bits(logprobs[idx]))
    j = int(idx[data.draw(st.integers(0, n - 1), label="row alone")])
    alone_token, alone_lp = linear_sample(h[j:j + 1], w, 0.9, seeds=seeds[j:j + 1])
    assert torch.equal(alone_token, tokens[j:j + 1]) and torch.equal(_bits(alone_lp), _bits(logprobs[j:j + 1]))


@pytest.mark.cuda_configs
def test_seeded_rows_are_batch_invariant_with_cuda_configs():
    """The CUDA table's 64-row programs: a row alone, in the first program or in a later one."""
    h, w = _head(150, 64, 300, torch.float16, seed=22, scale=3.0)
    seeds = _seeds(150, 23)
    with profiles.config_backend("cuda"):
        tokens, lp = linear_sample(h, w, 0.7, seeds=seeds)
        perm = torch.randperm(150, generator=torch.Generator().manual_seed(24)).to(DEV)
        p_tokens, p_lp = linear_sample(h[perm], w, 0.7, seeds=seeds[perm])
        one_token, one_lp = linear_sample(h[130:131], w, 0.7, seeds=seeds[130:131])
    assert torch.equal(p_tokens, tokens[perm]) and torch.equal(_bits(p_lp), _bits(lp[perm]))
    assert torch.equal(one_token, tokens[130:131]) and torch.equal(_bits(one_lp), _bits(lp[130:131]))


def test_same_seeds_same_samples_other_seeds_other_samples():
    h, w = _head(64, 16, 1000, torch.float16, seed=25, scale=0.5)  # near-uniform over 1000 tokens
    seeds = _seeds(64, 26)
    first = linear_sample(h, w, seeds=seeds)
    again = linear_sample(h, w, seeds=seeds.clone())
    assert torch.equal(first[0], again[0]) and torch.equal(_bits(first[1]), _bits(again[1]))
    other = linear_sample(h, w, seeds=seeds + 1)
    assert (other[0] != first[0]).sum() > 48, "a new seed should redraw nearly every row"
    # changing one row's seed redraws that row only
    one = seeds.clone()
    one[5] ^= 1 << 40  # a bit of the key's high word
    moved = linear_sample(h, w, seeds=one)
    keep = torch.arange(64, device=DEV) != 5
    assert torch.equal(moved[0][keep], first[0][keep]) and torch.equal(_bits(moved[1][keep]), _bits(first[1][keep]))
    assert moved[0][5] != first[0][5]


@pytest.mark.skipif(not pk.backend.INTERPRETED,
                    reason="bitwise only under the interpreter, whose tl.log is numpy's; on GPU tl.log is approximate")
@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_token_is_the_argmax_of_z_plus_the_documented_noise(dtype):
    """token = argmax(logit / T - log(-log(u))), u = open_uniform(Philox(seed, column)), all in float32."""
    h, w = _head(40, 16, 300, dtype, seed=27, scale=3.0)
    seeds = _seeds(40, 28)
    tokens, _ = linear_sample(h, w, 0.8, seeds=seeds)
    z = (linear(h, w).float() / torch.tensor(0.8, dtype=torch.float32)).cpu().numpy()
    keys = gumbel_keys(z, seeds.cpu().numpy())
    np.testing.assert_array_equal(tokens.cpu().numpy(), keys.argmax(axis=1))


def test_sample_allocates_nothing_of_rows_by_vocab():
    """The noise is made in the kernel: no torch op inside linear_sample produces a tensor of rows x V elements.

    (The interpreter hands the kernel byte views of its arguments; the weight's 400 x 16 x 2 bytes stay below
    rows x V = 20,000, which the old (rows x V) uniform buffer reached.)
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    h, w = _head(50, 16, 400, torch.float16, seed=29)
    largest = []

    class LargestOutput(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            largest.extend(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    for kwargs in ({"seeds": _seeds(50)}, {"generator": _gen(1)}, {}):
        largest.clear()
        with LargestOutput():
            linear_sample(h, w, **kwargs)
        assert largest and max(largest) < 50 * 400, (kwargs.keys(), max(largest))


def test_generator_draws_one_seed_per_row():
    """With a generator the wrapper draws int64 seeds (torch.randint) and samples exactly as with those seeds."""
    h, w = _head(12, 16, 40, torch.float32, seed=30)
    drawn = torch.randint(-(2**63), 2**63 - 1, (12,), generator=_gen(5), dtype=torch.int64, device=DEV)
    via_generator = linear_sample(h, w, generator=_gen(5))
    via_seeds = linear_sample(h, w, seeds=drawn)
    assert torch.equal(via_generator[0], via_seeds[0]) and torch.equal(_bits(via_generator[1]), _bits(via_seeds[1]))
    torch.manual_seed(5)
    default_drawn = torch.randint(-(2**63), 2**63 - 1, (12,), dtype=torch.int64, device=DEV)
    torch.manual_seed(5)
    assert torch.equal(linear_sample(h, w)[0], linear_sample(h, w, seeds=default_drawn)[0])


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


def test_bad_seeds():
    h, w = _head(4, 16, 10, torch.float16)
    with pytest.raises(TypeError, match="seeds must be a torch.Tensor"):
        linear_sample(h, w, seeds=[1, 2, 3, 4])
    with pytest.raises(TypeError, match="seeds must be int64"):
        linear_sample(h, w, seeds=torch.arange(4, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match=r"seeds has shape \(2, 2\), expected one seed per row: \(4,\)"):
        linear_sample(h, w, seeds=torch.arange(4, device=DEV).view(2, 2))
    with pytest.raises(ValueError, match="seeds is on meta"):
        linear_sample(h, w, seeds=torch.arange(4, device="meta"))
    with pytest.raises(ValueError, match="not both"):
        linear_sample(h, w, seeds=torch.arange(4, device=DEV), generator=_gen(0))
    with pytest.raises(TypeError, match="positional"):
        linear_sample(h, w, 1.0, _gen(0))  # seeds and generator are keyword-only
    # the custom op itself refuses seeds the kernel would read out of bounds
    with pytest.raises(ValueError, match=r"seeds must be a contiguous int64 tensor of shape \(4,\)"):
        torch.ops.pk.linear_sample(h, w, torch.arange(3, device=DEV), 1.0)
    with pytest.raises(ValueError, match=r"seeds must be a contiguous int64 tensor of shape \(4,\)"):
        torch.ops.pk.linear_sample(h, w, torch.arange(8, device=DEV)[::2], 1.0)


# ---- custom ops: pk::linear_logprobs (+ backward) and pk::linear_sample ------------------------------


def _opcheck_cases():
    """(id, op, args) on tiny inputs: each real call is one interpreter launch."""
    cases = []
    for dtype, entropy, temperature in ((torch.float32, False, 0.7), (torch.bfloat16, True, 1.0)):
        h, w = _head(3, 8, 7, dtype, seed=40)
        cases.append((f"linear_logprobs/{dtype}/entropy={entropy}", torch.ops.pk.linear_logprobs,
                      (h.requires_grad_(), w.requires_grad_(), torch.tensor([0, 6, 2], device=DEV), temperature,
                       entropy)))
    h, w = _head(3, 8, 7, torch.float16, seed=41)
    tokens = torch.tensor([1, 6, 0], device=DEV)
    with torch.no_grad():
        _, entropy, row_max, row_sum = torch.ops.pk.linear_logprobs(h, w, tokens, 0.8, True)
    g = torch.randn(3, generator=torch.Generator().manual_seed(42)).to(DEV)
    table = profiles.table_backend()
    cases += [
        ("linear_logprobs_backward", torch.ops.pk.linear_logprobs_backward,
         (h, w, tokens, g, g * 0.5, entropy, row_max, row_sum, 0.8, table, True, True)),
        ("linear_logprobs_backward/no-entropy/only-weight", torch.ops.pk.linear_logprobs_backward,
         (h, w, tokens, g, None, entropy, row_max, row_sum, 0.8, table, False, True)),
    ]
    for dtype in (torch.float32, torch.float16):
        h, w = _head(3, 8, 7, dtype, seed=43)
        cases.append((f"linear_sample/{dtype}", torch.ops.pk.linear_sample, (h, w, _seeds(3, 44), 0.9)))
    return cases


_OPCHECK = _opcheck_cases()


@pytest.mark.parametrize("op,args", [c[1:] for c in _OPCHECK], ids=[c[0] for c in _OPCHECK])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def _pk_ops_called(fn):
    """The pk:: ops that fn dispatches, in order (ops called inside an op's implementation are not seen)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "pk":
                seen.append(func._schema.name.split("::")[1])
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def test_public_functions_call_the_custom_ops():
    h, w = _head(6, 8, 11, torch.bfloat16, seed=45)
    hh, ww = h.view(2, 3, 8).clone().requires_grad_(), w.clone().requires_grad_()
    tokens = torch.tensor([[0, 10, 3], [4, 4, 9]], device=DEV)
    assert _pk_ops_called(lambda: linear_logprobs(hh, ww, tokens, return_entropy=True)[1].sum().backward()) == [
        "linear_logprobs", "linear_logprobs_backward"]
    assert hh.grad.shape == (2, 3, 8) and ww.grad.shape == w.shape
    assert _pk_ops_called(lambda: linear_sample(h, w, seeds=_seeds(6))) == ["linear_sample"]
    assert _pk_ops_called(lambda: linear_sample(h, w, generator=_gen(0))) == ["linear_sample"]


def test_gradients_with_one_output_or_one_input_differentiated():
    """Either output alone, or both; the hidden gradient is the same bits whether or not the weight needs one."""
    h, w = _head(5, 8, 20, torch.float16, seed=46)
    tokens = torch.tensor([0, 19, 3, 3, 7], device=DEV)
    grads = {}
    for which in ("logprob", "entropy", "both"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        lp, ent = linear_logprobs(hh, ww, tokens, 0.9, return_entropy=True)
        {"logprob": lp, "entropy": ent, "both": lp + ent}[which].sum().backward()
        grads[which] = (hh.grad, ww.grad)
    hh = h.clone().requires_grad_()
    linear_logprobs(hh, w, tokens, 0.9).sum().backward()  # weight not differentiated
    assert torch.equal(hh.grad.view(torch.int16), grads["logprob"][0].view(torch.int16))
    assert not torch.equal(grads["entropy"][0], grads["logprob"][0])


def test_token_range_is_checked_inside_the_custom_op():
    from precision_kernels.ops._common import observe_launches

    h, w = _head(3, 8, 7, torch.float32)
    with observe_launches() as launches, pytest.raises(ValueError, match="tokens holds id 7"):
        torch.ops.pk.linear_logprobs(h, w, torch.tensor([0, 7, 1], device=DEV), 1.0, False)
    assert launches == []


def test_public_functions_trace_on_fake_tensors_without_data():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from precision_kernels.ops._common import observe_launches

    with observe_launches() as launches, FakeTensorMode():
        h = torch.empty(2, 3, 8, dtype=torch.bfloat16, device=DEV)
        w = torch.empty(11, 8, dtype=torch.bfloat16, device=DEV)
        lp, ent = linear_logprobs(h, w, torch.empty(2, 3, dtype=torch.int64, device=DEV), 0.7, return_entropy=True)
        tokens, slp = linear_sample(h, w, seeds=torch.empty(2, 3, dtype=torch.int64, device=DEV))
    assert launches == []
    assert (lp.shape, ent.shape, tokens.shape, tokens.dtype, slp.dtype) == ((2, 3), (2, 3), (2, 3), torch.int64,
                                                                              torch.float32)


def test_torch_compile_fullgraph_aot_eager_is_bitwise_eager():
    """One graph (no breaks) holding the LM-head ops; outputs and gradients bitwise equal to eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def head(h, w, tokens, seeds):
        lp, ent = linear_logprobs(h, w, tokens, 0.8, return_entropy=True)
        drawn, drawn_lp = linear_sample(h.detach(), w.detach(), 0.8, seeds=seeds)
        return lp, ent, drawn, drawn_lp

    h, w = _head(6, 8, 13, torch.bfloat16, seed=47)
    tokens = torch.tensor([[0, 12, 5], [5, 1, 7]], device=DEV)
    seeds = _seeds(6, 48).view(2, 3)

    def run(fn):
        hh, ww = h.view(2, 3, 8).clone().requires_grad_(), w.clone().requires_grad_()
        lp, ent, drawn, drawn_lp = fn(hh, ww, tokens, seeds)
        (lp * 2.0 + ent).sum().backward()
        return lp, ent, drawn, drawn_lp, hh.grad, ww.grad

    counter = CompileCounterWithBackend("aot_eager")
    compiled = run(torch.compile(head, backend=counter, fullgraph=True))
    eager = run(head)
    assert counter.frame_count == 1
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
