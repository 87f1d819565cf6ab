"""Policy-gradient losses: one step on a small case whose loss and gradient are computed by hand.

The case: one prompt, a group of two sequences with rewards [1, 0] (A = [0.5, -0.5], or
[1, -1] std-normalised), two response positions, the second sequence stopped after one token.

    π      = [[-0.5, -1.0], [-2.0, pad]]     learner (current = π_old at the first pass)
    μ      = [[-0.5, -2.0], [-1.9, 0.0]]     sampler
    π − μ  = [[ 0.0,  1.0], [-0.1, --]]
    mask   = [[True, True], [True, False]]   3 sampled tokens

Expected values are written out from these numbers below, independently of rl.losses.
"""

import math

import pytest
import torch

from rl import losses as L

E = math.e
EM01 = math.exp(-0.1)
PAD = -30.0  # whatever the learner scores at a pad position; must never matter


def case(pad_value=PAD):
    logp = torch.tensor([[-0.5, -1.0], [-2.0, pad_value]], requires_grad=True)
    mu = torch.tensor([[-0.5, -2.0], [-1.9, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([0.5, -0.5])
    return logp, mu, mask, adv


def grad_of(loss, logp):
    (g,) = torch.autograd.grad(loss, logp)
    return g


def close(t, expected, rel=1e-6, abs=1e-7):
    return t.detach().flatten().tolist() == pytest.approx(list(expected), rel=rel, abs=abs)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.25, 0.25, 0.5, 1.0])
    assert close(L.group_advantages(r, 2), [0.5, -0.5, 0.0, 0.0, -0.25, 0.25])
    assert close(L.group_advantages(r, 2, normalize_std=True), [1, -1, 0, 0, -1, 1], rel=1e-5)
    assert close(L.group_advantages(torch.tensor([3.0, 0.0, 0.0]), 3), [2, -1, -1])
    # population std of [3, 0, 0] is sqrt(2)
    s2 = math.sqrt(2)
    assert close(L.group_advantages(torch.tensor([3.0, 0.0, 0.0]), 3, True), [2 / s2, -1 / s2, -1 / s2], rel=1e-5)
    assert close(L.compute_advantages(r[:2], 2, "grpo"), [1, -1], rel=1e-5)
    assert close(L.compute_advantages(r[:2], 2, "ppo"), [0.5, -0.5])
    with pytest.raises(ValueError):
        L.group_advantages(r, 4)


def test_aggregate():
    x = torch.tensor([[1.0, 2.0, 30.0], [4.0, 50.0, 60.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert L.aggregate(x, m, "token-mean").item() == pytest.approx((1 + 2 + 4) / 3)
    assert L.aggregate(x, m, "seq-mean").item() == pytest.approx(((1 + 2) / 2 + 4) / 2)
    with pytest.raises(ValueError):
        L.aggregate(x, m, "sum")


def test_pg_token_mean():
    logp, _, mask, adv = case()
    loss = L.pg_loss(logp, adv, mask)
    # per token -A*π: 0.25, 0.5 | -1.0 ; over 3 tokens
    assert loss.item() == pytest.approx((0.25 + 0.5 - 1.0) / 3)
    assert close(grad_of(loss, logp), [-0.5 / 3, -0.5 / 3, 0.5 / 3, 0.0])


def test_pg_seq_mean():
    logp, _, mask, adv = case()
    loss = L.pg_loss(logp, adv, mask, agg="seq-mean")
    assert loss.item() == pytest.approx(((0.25 + 0.5) / 2 + (-1.0)) / 2)
    assert close(grad_of(loss, logp), [-0.5 / 4, -0.5 / 4, 0.5 / 2, 0.0])


def test_pg_ignores_infinite_pad():
    logp, _, mask, adv = case(pad_value=-math.inf)
    loss = L.pg_loss(logp, adv, mask)
    assert loss.item() == pytest.approx((0.25 + 0.5 - 1.0) / 3)
    assert close(grad_of(loss, logp), [-0.5 / 3, -0.5 / 3, 0.5 / 3, 0.0])


def test_tis():
    logp, mu, mask, adv = case()
    old = logp.detach().clone().requires_grad_(True)  # must receive no gradient
    loss = L.tis_loss(logp, mu, old, adv, mask)
    # w = min(exp(π_old − μ), 2) = [1, min(e, 2) = 2 | e^-0.1]
    w = [1.0, 2.0, EM01]
    per_token = [-0.5 * w[0] * -0.5, -0.5 * w[1] * -1.0, 0.5 * w[2] * -2.0]
    assert loss.item() == pytest.approx(sum(per_token) / 3)
    g_logp, g_old = torch.autograd.grad(loss, (logp, old), allow_unused=True)
    assert close(g_logp, [-0.5 * w[0] / 3, -0.5 * w[1] / 3, 0.5 * w[2] / 3, 0.0])
    assert g_old is None
    # cap 3: the second weight is e
    loss3 = L.tis_loss(logp, mu, logp.detach(), adv, mask, cap=3.0)
    assert loss3.item() == pytest.approx((0.25 + 0.5 * E - EM01) / 3)


def test_mis():
    logp, mu, mask, adv = case()
    # log ρ = [0 + 1, -0.1]: ρ_0 = e > 2 is dropped, ρ_1 = e^-0.1 kept
    loss = L.mis_loss(logp, mu, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx((0.5 * EM01 * -2.0) / 3)
    assert close(grad_of(loss, logp), [0.0, 0.0, 0.5 * EM01 / 3, 0.0])
    w, kept = L.mis_weights(logp.detach(), mu, mask)
    assert kept.tolist() == [False, True] and close(w, [0.0, EM01])
    # cap 3 keeps both: weights e and e^-0.1
    loss3 = L.mis_loss(logp, mu, logp.detach(), adv, mask, cap=3.0)
    assert loss3.item() == pytest.approx((0.5 * E * 0.5 + 0.5 * E * 1.0 + 0.5 * EM01 * -2.0) / 3)
    assert close(grad_of(loss3, logp), [-0.5 * E / 3, -0.5 * E / 3, 0.5 * EM01 / 3, 0.0])


def test_pg_seq_is():
    logp, mu, mask, adv = case()
    # log ρ = Σ (π − μ) = [0 + 1, −0.1], untruncated: ρ = [e, e^−0.1]; π_old plays no part (OLD is ignored)
    loss = L.pg_seq_is_loss(logp, mu, adv, mask)
    assert loss.item() == pytest.approx((0.5 * E * 0.5 + 0.5 * E * 1.0 + 0.5 * EM01 * -2.0) / 3)
    assert close(grad_of(loss, logp), [-0.5 * E / 3, -0.5 * E / 3, 0.5 * EM01 / 3, 0.0])
    assert close(L.seq_is_weights(logp, mu, mask), [E, EM01])
    loss2, stats = L.policy_loss("pg-seq-is", logp, advantages=adv, mask=mask, mu=mu, old_logp=OLD)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert stats == pytest.approx({"seq_is_weight_mean": (E + EM01) / 2, "seq_is_weight_max": E}, rel=1e-6)
    # the weight follows the current π, not π_old (the paper's estimator): shift π by 0.2 on one token
    shifted = (logp.detach() + torch.tensor([[0.2, 0.0], [0.0, 0.0]])).requires_grad_()
    assert close(L.seq_is_weights(shifted, mu, mask), [math.exp(1.2), EM01])


def test_pg_seq_is_needs_mu_and_no_old_logp():
    logp, mu, mask, adv = case()
    with pytest.raises(ValueError, match="mu"):
        L.policy_loss("pg-seq-is", logp, advantages=adv, mask=mask)
    loss, _ = L.policy_loss("pg-seq-is", logp, advantages=adv, mask=mask, mu=mu)
    assert torch.isfinite(loss)


def test_mis_huge_ratio_is_finite():
    logp, mu, mask, adv = case()
    old = logp.detach() + torch.tensor([[500.0, 500.0], [0.0, 0.0]])  # log ρ_0 = 1000: exp overflows
    loss = L.mis_loss(logp, mu, old, adv, mask)
    assert torch.isfinite(loss) and loss.item() == pytest.approx((0.5 * EM01 * -2.0) / 3)
    assert torch.isfinite(grad_of(loss, logp)).all()


def test_ppo():
    logp, mu, mask, adv = case()
    loss = L.ppo_loss(logp, mu, adv, mask, ratio="sampler")
    # r = [1, e | e^-0.1];  A = [0.5, 0.5 | -0.5]
    # (0,0): min(0.5, 0.5) = 0.5; grad -A·r = -0.5
    # (0,1): min(0.5e, 1.2*0.5) = 0.6, clipped: no grad
    # (1,0): r in [0.8, 1.2]: min(-0.5 e^-0.1, same) ; grad -A·r = 0.5 e^-0.1
    assert loss.item() == pytest.approx((-0.5 - 0.6 + 0.5 * EM01) / 3)
    assert close(grad_of(loss, logp), [-0.5 / 3, 0.0, 0.5 * EM01 / 3, 0.0])


def test_ppo_negative_advantage_clipping():
    # A < 0 and r < 1 - ε: the clipped term is the min, no gradient; r > 1 + ε: unclipped, gradient.
    logp = torch.tensor([[-2.0, 0.0]], requires_grad=True)
    mu = torch.tensor([[-1.0, -1.0]])  # r = [e^-1, e]
    mask = torch.tensor([[True, True]])
    adv = torch.tensor([-1.0])
    loss = L.ppo_loss(logp, mu, adv, mask, ratio="sampler")
    # (0): min(-e^-1, -0.8) = -0.8 -> loss 0.8, no grad;  (1): min(-e, -1.2) = -e -> loss e, grad r = e
    assert loss.item() == pytest.approx((0.8 + E) / 2)
    assert close(grad_of(loss, logp), [0.0, E / 2])


def test_grpo():
    logp, mu, mask, _ = case()
    adv = L.compute_advantages(torch.tensor([1.0, 0.0]), 2, "grpo")  # [1, -1] (eps 1e-6)
    loss = L.grpo_loss(logp, mu, adv, mask, ratio="sampler")
    # (0,0): -1;  (0,1): clipped -1.2;  (1,0): +e^-0.1 with grad e^-0.1
    assert loss.item() == pytest.approx((-1.0 - 1.2 + EM01) / 3, rel=1e-5)
    assert close(grad_of(loss, logp), [-1 / 3, 0.0, EM01 / 3, 0.0], rel=1e-5)


def test_matched_first_pass_ppo_equals_pg():
    """With π = μ (matched sampler and learner, first pass) r ≡ 1 and PPO's gradient is pg's."""
    logp, _, mask, adv = case()
    mu = logp.detach().clone()
    g_ppo = grad_of(L.ppo_loss(logp, mu, adv, mask, ratio="sampler"), logp)
    g_pg = grad_of(L.pg_loss(logp, adv, mask), logp)
    assert torch.equal(g_ppo, g_pg)
    g_tis = grad_of(L.tis_loss(logp, mu, mu, adv, mask), logp)
    g_mis = grad_of(L.mis_loss(logp, mu, mu, adv, mask), logp)
    g_seq_is = grad_of(L.pg_seq_is_loss(logp, mu, adv, mask), logp)
    assert torch.equal(g_tis, g_pg) and torch.equal(g_mis, g_pg) and torch.equal(g_seq_is, g_pg)


# policy_loss on the case with π_old = π: expected loss and stats written out by hand.
#   pg:   −(0.5·(−0.5) + 0.5·(−1.0) − 0.5·(−2.0)) / 3 = −0.25/3
#   tis:  weights min(e^(π−μ), 2) = [1, 2, e^−0.1] → −(−0.25 − 1 + e^−0.1)/3, one token capped
#   mis:  ρ = [e (dropped), e^−0.1] → −e^−0.1/3, half the sequences kept
#   ppo/grpo, ratio old: r ≡ 1 → −(0.5 + 0.5 − 0.5)/3, nothing clipped
#   ppo/grpo, ratio sampler: test_ppo's (−0.5 − 0.6 + 0.5 e^−0.1)/3, one token clipped
POLICY_CASES = [
    ("pg", {}, -0.25 / 3, {}),
    ("tis", {}, (1.25 - EM01) / 3, {"tis_capped_frac": 1 / 3, "tis_weight_mean": (3 + EM01) / 3}),
    ("mis", {}, -EM01 / 3, {"mis_kept_frac": 0.5, "mis_weight_mean": EM01 / 2}),
    ("ppo", {}, -0.5 / 3, {"ppo_clip_frac": 0.0, "ppo_ratio_max_dev": 0.0}),
    ("grpo", {}, -0.5 / 3, {"ppo_clip_frac": 0.0, "ppo_ratio_max_dev": 0.0}),
    ("ppo", {"ratio": "sampler"}, (-0.5 - 0.6 + 0.5 * EM01) / 3, {"ppo_clip_frac": 1 / 3,
                                                                  "ppo_ratio_max_dev": E - 1}),
    ("grpo", {"ratio": "sampler"}, (-0.5 - 0.6 + 0.5 * EM01) / 3, {"ppo_clip_frac": 1 / 3}),
]


@pytest.mark.parametrize("algo,kwargs,expected,expected_stats", POLICY_CASES)
def test_policy_loss_hand_values(algo, kwargs, expected, expected_stats):
    logp, mu, mask, adv = case()
    loss, stats = L.policy_loss(algo, logp, advantages=adv, mask=mask, mu=mu, old_logp=logp.detach(), **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert all(isinstance(v, float) for v in stats.values())
    for key, value in expected_stats.items():
        assert stats[key] == pytest.approx(value, rel=1e-6), key


# PPO against π_old ≠ π: π_old = [[−0.5, −1.5], [−2.1, pad]], so
#   π − π_old     = [0, 0.5, 0.1]   → r = [1, e^0.5, e^0.1]
#   π_old − μ     = [0, 0.5, −0.2]  → TIS weights min(·, C) = [1, e^0.5 (or C), e^−0.2]
# A = [0.5, 0.5, −0.5]; token (0,1) is clipped at 1.2 (0.5·e^0.5 > 0.6), so it has no gradient.
OLD = torch.tensor([[-0.5, -1.5], [-2.1, -7.0]])
E05, E01 = math.exp(0.5), math.exp(0.1)


@pytest.mark.parametrize("tis_cap,w01", [(None, 1.0), (2.0, E05), (1.5, 1.5)])
def test_ppo_ratio_old_with_and_without_tis_cap(tis_cap, w01):
    logp, mu, mask, adv = case()
    w10 = 1.0 if tis_cap is None else math.exp(-0.2)
    loss = L.ppo_loss(logp, mu, adv, mask, old_logp=OLD, ratio="old", tis_cap=tis_cap)
    assert loss.item() == pytest.approx((-0.5 - 0.6 * w01 + 0.5 * E01 * w10) / 3, rel=1e-6)
    assert close(grad_of(loss, logp), [-0.5 / 3, 0.0, 0.5 * E01 * w10 / 3, 0.0])
    loss2, stats = L.policy_loss("ppo", logp, advantages=adv, mask=mask, mu=mu, old_logp=OLD, tis_cap=tis_cap)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert stats["ppo_clip_frac"] == pytest.approx(1 / 3) and stats["ppo_ratio_max_dev"] == pytest.approx(E05 - 1)
    if tis_cap is not None:
        assert stats["tis_weight_mean"] == pytest.approx((1 + w01 + w10) / 3, rel=1e-6)
        assert stats["tis_capped_frac"] == pytest.approx(0.0 if tis_cap == 2.0 else 1 / 3)


def test_policy_loss_validates():
    logp, mu, mask, adv = case()
    with pytest.raises(ValueError):
        L.policy_loss("a2c", logp, advantages=adv, mask=mask, mu=mu)
    with pytest.raises(ValueError):
        L.policy_loss("tis", logp, advantages=adv, mask=mask, mu=mu)  # no old_logp
    with pytest.raises(ValueError):
        L.policy_loss("ppo", logp, advantages=adv, mask=mask, ratio="sampler")  # no mu
    with pytest.raises(ValueError, match="old_logp"):
        L.policy_loss("ppo", logp, advantages=adv, mask=mask, mu=mu)  # ratio old needs pi_old
    with pytest.raises(ValueError, match="ratio"):
        L.policy_loss("ppo", logp, advantages=adv, mask=mask, mu=mu, old_logp=mu, ratio="new")
    with pytest.raises(ValueError, match="tis_cap"):
        L.policy_loss("ppo", logp, advantages=adv, mask=mask, mu=mu, ratio="sampler", tis_cap=2.0)
    with pytest.raises(ValueError, match="tis_cap"):
        L.policy_loss("ppo", logp, advantages=adv, mask=mask, mu=mu, old_logp=mu, tis_cap=0.0)
    with pytest.raises(ValueError, match="ppo/grpo"):
        L.policy_loss("pg", logp, advantages=adv, mask=mask, mu=mu, tis_cap=2.0)


# GSPO on the case with π_old = OLD (ratio "old"): per-sequence mean of π − π_old over sampled tokens
#   seq 0: mean(0, 0.5) = 0.25 → s_0 = e^0.25 ≈ 1.284;  seq 1: 0.1 → s_1 = e^0.1 ≈ 1.105
# std-normalised A = [1, −1]; clip range [1 − 3e-4, 1 + 4e-4]:
#   seq 0: min(s_0·1, 1.0004·1) = 1.0004 → clipped, term −1.0004, no gradient;
#   seq 1: min(−s_1, −1.0004) = −s_1 → the unclipped term wins, term +s_1, gradient −A s_1 / |y_1| = s_1
#   on π[1, 0]. Both s_i lie outside the clip range (gspo_clip_frac counts that, as ppo_clip_frac does).
# With ratio "sampler" (π_den = μ): log s = [0.5, −0.1]; s_0 clipped above (A=1), s_1 = e^−0.1 clipped
# below (A=−1: min(−0.905, −0.9997) = −0.9997), so both terms are constants.
E025 = math.exp(0.25)


def test_gspo_hand_example_where_the_clip_acts_on_one_sequence():
    logp, mu, mask, _ = case()
    adv = torch.tensor([1.0, -1.0])
    loss = L.gspo_loss(logp, mu, adv, mask, old_logp=OLD, ratio="old")
    assert loss.item() == pytest.approx((-(1 + 4e-4) + E01) / 2, rel=1e-6)
    assert close(grad_of(loss, logp), [0.0, 0.0, E01 / 2, 0.0])
    _, stats = L.policy_loss("gspo", logp, advantages=adv, mask=mask, mu=mu, old_logp=OLD)
    assert stats["gspo_clip_frac"] == 1.0 and stats["gspo_ratio_max_dev"] == pytest.approx(E025 - 1)


def test_gspo_ratio_sampler_clips_both_sequences():
    logp, mu, mask, _ = case()
    adv = torch.tensor([1.0, -1.0])
    loss, stats = L.policy_loss("gspo", logp, advantages=adv, mask=mask, mu=mu, ratio="sampler")
    # Both terms are the fp32 clip bounds themselves (each within 6e-8 of the decimal value).
    assert loss.item() == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2, abs=1e-7)
    assert close(grad_of(loss, logp), [0.0, 0.0, 0.0, 0.0])
    assert stats["gspo_clip_frac"] == 1.0


def test_gspo_unclipped_gradient_is_the_sequence_mean_of_token_gradients():
    """At π = π_old every s_i = 1: loss −mean(A_i), gradient −A_i / (B |y_i|) on each sampled token."""
    logp, mu, mask, _ = case()
    adv = torch.tensor([1.0, -1.0])
    loss = L.gspo_loss(logp, mu, adv, mask, old_logp=logp.detach())
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert close(grad_of(loss, logp), [-1 / 4, -1 / 4, 1 / 2, 0.0])
    assert L.uses_std_normalization("gspo")


def test_denominator_splits_a_loss_into_summable_parts():
    """Two halves of a batch, each divided by the whole batch's count, add up to the whole batch's loss."""
    logp, mu, mask, adv = case()
    for algo, agg in (("pg", "token-mean"), ("pg", "seq-mean"), ("gspo", "token-mean")):
        whole, _ = L.policy_loss(algo, logp, advantages=adv, mask=mask, mu=mu, old_logp=OLD, agg=agg)
        count = 2 if algo == "gspo" or agg == "seq-mean" else 3
        assert L.count_for("seq-mean" if algo == "gspo" else agg, mask) == count
        parts = [L.policy_loss(algo, logp[i:i + 1], advantages=adv[i:i + 1], mask=mask[i:i + 1], mu=mu[i:i + 1],
                               old_logp=OLD[i:i + 1], agg=agg, denominator=count)[0] for i in range(2)]
        assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-6), (algo, agg)


# KL estimators at π = −1.0, π_ref = −1.5 (δ = π_ref − π = −0.5):
#   k1 = 0.5, k2 = ½·0.25 = 0.125, k3 = e^−0.5 − 1 + 0.5; d/dπ: k1 1, k2 −δ = 0.5, k3 1 − e^−0.5.
def test_kl_estimates_and_gradients():
    em05 = math.exp(-0.5)
    for est, value, grad in (("k1", 0.5, 1.0), ("k2", 0.125, 0.5), ("k3", em05 - 0.5, 1 - em05)):
        logp = torch.tensor([-1.0], requires_grad=True)
        k = L.kl_estimate(logp, torch.tensor([-1.5]), est)
        assert k.item() == pytest.approx(value, rel=1e-6), est
        assert grad_of(k.sum(), logp).item() == pytest.approx(grad, rel=1e-6), est
    with pytest.raises(ValueError, match="estimator"):
        L.kl_estimate(logp, logp, "k4")


def test_kl_k1_goes_into_the_reward_and_k2_k3_into_the_loss():
    logp, _, mask, _ = case()
    ref = torch.tensor([[-1.0, -1.0], [-1.0, 50.0]])  # the pad's reference value must not matter
    # k1 = π_old − π_ref on sampled tokens: [0.5, 0] and [−1.0]; β = 0.1
    r = L.kl_penalised_rewards(torch.tensor([1.0, 0.0]), logp.detach(), ref, mask, 0.1)
    assert close(r, [1.0 - 0.05, 0.0 + 0.1])
    # k2 on sampled tokens: ½δ² with δ = [−0.5, 0, 1.0] → [0.125, 0, 0.5]; token-mean × β = 0.1·0.625/3
    loss = L.kl_loss(logp, ref, mask, "k2", 0.1)
    assert loss.item() == pytest.approx(0.1 * 0.625 / 3, rel=1e-6)
    assert close(grad_of(loss, logp), [0.1 * 0.5 / 3, 0.0, 0.1 * -1.0 / 3, 0.0])
    with pytest.raises(ValueError, match="reward"):
        L.kl_loss(logp, ref, mask, "k1", 0.1)
