"""The per-step diagnostics (rl.diagnostics) on a hand-made rollout, against formulas written out in float64."""

import math

import pytest
import torch

from rl.diagnostics import (
    DIAGNOSTIC_KEYS,
    clip_frac_sampler,
    ess_from_logweights,
    ess_seq,
    sampler_diagnostics,
    seq_logratios,
)

# Three sequences of up to four tokens: the second stops after two (EOS), the third has none.
# Values past the mask are junk the functions must ignore, an infinity among them.
MU = torch.tensor([[-1.00, -0.50, -2.00, -0.10],
                   [-0.30, -3.00, 5.00, float("-inf")],
                   [-9.00, 0.00, 0.00, 0.00]])
OLD = torch.tensor([[-0.70, -0.55, -2.40, -0.10],
                    [-0.25, -2.60, float("inf"), 1.00],
                    [3.00, 0.00, 0.00, 0.00]])
MASK = torch.tensor([[True, True, True, True],
                     [True, True, False, False],
                     [False, False, False, False]])

# δ = π_old − μ of the sampled tokens, written out by hand (float64).
DELTAS = [[0.30, -0.05, -0.40, 0.0], [0.05, 0.40]]


def _fp32(x: float) -> float:
    """The float64 value of x's nearest fp32, as the tensors above hold it."""
    return float(torch.tensor(x, dtype=torch.float32).double())


def _deltas() -> list[list[float]]:
    """δ from the fp32 values the tensors hold (their float64 difference), sequence by sequence."""
    out = []
    for i, row in enumerate(DELTAS):
        out.append([_fp32(OLD[i, t].item()) - _fp32(MU[i, t].item()) for t in range(len(row))])
    return out


def test_deltas_are_the_hand_written_ones():
    for got, want in zip(_deltas(), DELTAS):
        assert got == pytest.approx(want, abs=1e-6)


def test_clip_frac_sampler_against_the_formula():
    flat = [d for row in _deltas() for d in row]
    outside = [not (0.8 <= math.exp(d) <= 1.2) for d in flat]
    # exp(0.30) = 1.35 and exp(-0.40) = 0.67 and exp(0.40) = 1.49 are outside; the others inside.
    assert outside == [True, False, True, False, False, True]
    assert clip_frac_sampler(OLD, MU, MASK) == sum(outside) / len(outside)
    # A wider ε keeps exp(0.30) and exp(0.40) inside (ε = 0.5: [0.5, 1.5]) and exp(-0.40) too.
    assert clip_frac_sampler(OLD, MU, MASK, eps=0.5) == 0.0


def test_seq_logratios_and_their_mean_and_std():
    seqs = [math.fsum(row) for row in _deltas()]
    got = seq_logratios(OLD, MU, MASK)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(seqs, rel=0, abs=1e-15)
    d = sampler_diagnostics(OLD, MU, MASK)
    mean = math.fsum(seqs) / 2
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in seqs) / 2)
    assert d["seq_logratio_mean"] == pytest.approx(mean, rel=1e-14)
    assert d["seq_logratio_std"] == pytest.approx(std, rel=1e-14)


def test_ess_seq_against_the_formula():
    w = [math.exp(math.fsum(row)) for row in _deltas()]
    want = math.fsum(w) ** 2 / (len(w) * math.fsum(x * x for x in w))
    assert ess_seq(OLD, MU, MASK) == pytest.approx(want, rel=1e-14)
    assert 0 < want < 1


def test_ess_of_huge_log_weights_does_not_overflow():
    # exp(1000) overflows float64; the ESS only depends on differences of log-weights.
    logw = torch.tensor([1000.0, 1000.0 + math.log(3.0)], dtype=torch.float64)
    assert ess_from_logweights(logw) == pytest.approx((1 + 3) ** 2 / (2 * (1 + 9)), rel=1e-14)


def test_matched_gives_exact_zeros_and_ess_one():
    d = sampler_diagnostics(MU, MU.clone(), MASK)
    assert set(d) == set(DIAGNOSTIC_KEYS)
    assert d == {"clip_frac_sampler": 0.0, "ess_seq": 1.0, "seq_logratio_mean": 0.0, "seq_logratio_std": 0.0}


def test_nothing_sampled():
    d = sampler_diagnostics(OLD, MU, torch.zeros_like(MASK))
    assert d["clip_frac_sampler"] == 0.0
    assert all(math.isnan(d[k]) for k in ("ess_seq", "seq_logratio_mean", "seq_logratio_std"))


def test_bad_input_names_the_arguments():
    with pytest.raises(ValueError, match="old_logp, mu and mask"):
        sampler_diagnostics(OLD, MU[:, :3], MASK)
    with pytest.raises(ValueError, match="mask must be a bool"):
        sampler_diagnostics(OLD, MU, MASK.float())
    with pytest.raises(ValueError, match="eps"):
        clip_frac_sampler(OLD, MU, MASK, eps=1.5)
