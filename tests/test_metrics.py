"""Mismatch metrics on hand-made tensors."""

import math

import pytest
import torch

from rl.metrics import MISMATCH_KEYS, bitwise_differ, mismatch_metrics


def test_zero_mismatch_is_all_zero():
    mu = torch.tensor([[-0.1, -2.0, 0.0], [-0.7, -0.3, -5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    old = mu.clone()
    old[1, 2] = -123.0  # differs only outside the mask
    m = mismatch_metrics(mu, old, mask)
    assert set(m) == set(MISMATCH_KEYS)
    assert all(isinstance(v, float) for v in m.values())
    for k, v in m.items():
        if k not in ("n_tokens", "n_seqs"):
            assert v == 0.0, k
    assert m["n_tokens"] == 5.0 and m["n_seqs"] == 2.0


def test_empty_mask():
    z = torch.zeros(2, 3)
    m = mismatch_metrics(z, z + 1, torch.zeros(2, 3, dtype=torch.bool))
    assert all(v == 0.0 for v in m.values())


def test_hand_made_values():
    # δ = π_old − μ on the sampled tokens: seq 0: [0, 0.5], seq 1: [-0.25]
    mu = torch.tensor([[-1.0, -1.0], [-0.5, 0.0]])
    old = torch.tensor([[-1.0, -0.5], [-0.75, 7.0]])
    mask = torch.tensor([[True, True], [True, False]])
    m = mismatch_metrics(mu, old, mask)
    d = [0.0, 0.5, -0.25]
    assert m["n_tokens"] == 3 and m["n_seqs"] == 2
    assert m["mean_abs_dlogp"] == pytest.approx(0.75 / 3)
    assert m["max_abs_dlogp"] == 0.5
    assert m["frac_tokens_differ"] == pytest.approx(2 / 3)
    assert m["k1"] == pytest.approx(-(0.25) / 3)
    assert m["k2"] == pytest.approx((0.5 * 0.25 + 0.5 * 0.0625) / 3)
    assert m["k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in d) / 3)
    seq = [0.5, -0.25]
    assert m["seq_k1"] == pytest.approx(-(0.25) / 2)
    assert m["seq_k2"] == pytest.approx((0.5 * 0.25 + 0.5 * 0.0625) / 2)
    assert m["seq_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in seq) / 2)
    assert m["seq_max_abs_dlogp"] == 0.5
    p_mu = [math.exp(-1.0), math.exp(-1.0), math.exp(-0.5)]
    p_pi = [math.exp(-1.0), math.exp(-0.5), math.exp(-0.75)]
    dp = sorted(abs(a - b) for a, b in zip(p_mu, p_pi))
    assert m["rel_rms_prob"] == pytest.approx(
        math.sqrt(sum(x * x for x in dp) / sum(p * p for p in p_pi)))
    assert m["rel_rms_logp"] == pytest.approx(math.sqrt((0.25 + 0.0625) / (1.0 + 0.25 + 0.5625)))
    assert m["dp_max"] == pytest.approx(dp[-1])
    assert m["dp_p50"] == pytest.approx(dp[1])
    # linear interpolation between the 2nd and 3rd of 3 sorted values at q = 0.9 (position 1.8)
    assert m["dp_p90"] == pytest.approx(dp[1] + 0.8 * (dp[2] - dp[1]))

    # one token with δ = −2 (learner below sampler): k1 = 2, k2 = ½·4, k3 = e^−2 − 1 + 2
    m = mismatch_metrics(torch.tensor([[-1.0]]), torch.tensor([[-3.0]]), torch.tensor([[True]]))
    assert m["k1"] == 2.0 and m["k2"] == 2.0 and m["seq_k2"] == 2.0
    assert m["k3"] == pytest.approx(1.0 + math.exp(-2.0), rel=1e-15)
    assert m["seq_k3"] == pytest.approx(1.0 + math.exp(-2.0), rel=1e-15)


def test_bitwise_not_numeric_equality():
    a = torch.tensor([0.0, 1.0, float("nan")])
    b = torch.tensor([-0.0, 1.0, float("nan")])
    assert bitwise_differ(a, b).tolist() == [True, False, False]
    mu = torch.tensor([[-0.0, -1.0]])
    old = torch.tensor([[0.0, -1.0]])
    m = mismatch_metrics(mu, old, torch.tensor([[True, True]]))
    assert m["frac_tokens_differ"] == 0.5 and m["mean_abs_dlogp"] == 0.0
    one_ulp = torch.tensor([[-1.0]]).view(torch.int32).add(1).view(torch.float32)
    m = mismatch_metrics(torch.tensor([[-1.0]]), one_ulp, torch.tensor([[True]]))
    assert m["frac_tokens_differ"] == 1.0 and m["max_abs_dlogp"] == pytest.approx(2**-23)


def test_shape_check():
    with pytest.raises(ValueError):
        mismatch_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
