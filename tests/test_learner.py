"""rl.learner: pi_old is the policy at the start of the step, whatever the minibatching."""

import json

import pytest
import torch

import precision_kernels as pk
from rl.learner import StepConfig, learner_step, sequence_logprobs
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate
from rl.tasks import get_task
from rl.train import main

TASK = get_task("reverse")
DEVICE = pk.backend.device()


def _no_scaling() -> torch.amp.GradScaler:
    return torch.amp.GradScaler(DEVICE.type, enabled=False)


def test_pi_old_with_minibatches_is_the_sampler_logprobs_bitwise():
    """Two minibatches, two epochs of PPO: the second minibatch is scored after an update, but
    pi_old must be the learner before any update, i.e. (matched) the sampler's log-probs."""
    cfg = ModelConfig(vocab_size=TASK.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=TASK.seq_len,
                      precision="bf16")
    model = TinyGPT(cfg, seed=0, init="torch").to(DEVICE)
    prompts = TASK.sample(2, torch.Generator().manual_seed(0))[0].repeat_interleave(2, 0).to(DEVICE)
    ro = generate(model, prompts, TASK.max_new_tokens, generator=torch.Generator(device=DEVICE).manual_seed(0),
                  eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    res = learner_step(model, opt, _no_scaling(), ro, rewards, 2, TASK.prompt_len,
                       StepConfig(algo="ppo", minibatches=2, epochs=2))
    assert torch.equal(res.pi_old[ro.mask], ro.logprobs[ro.mask])


def test_train_ppo_minibatches_epochs_strict_completes(tmp_path):
    """The issue's reproduction: --algo ppo --minibatches 2 --epochs 2 --strict aborted with a false mismatch."""
    rc = main(["--algo", "ppo", "--minibatches", "2", "--epochs", "2", "--strict", "--steps", "1",
               "--batch", "2", "--group", "2", "--d-model", "16", "--layers", "1", "--dataset-size", "8",
               "--warmup-target", "0.0", "--eval-every", "100", "--lr", "1e-2", "--no-progress",
               "--out", str(tmp_path)])
    assert rc == 0
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["frac_tokens_differ"] == 0.0 and record["max_abs_dlogp"] == 0.0


def _rollout(precision="fp16"):
    cfg = ModelConfig(vocab_size=TASK.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=TASK.seq_len,
                      precision=precision)
    model = TinyGPT(cfg, seed=0, init="torch").to(DEVICE)
    prompts = TASK.sample(2, torch.Generator().manual_seed(0))[0].repeat_interleave(2, 0).to(DEVICE)
    ro = generate(model, prompts, TASK.max_new_tokens, seed=7, eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    return cfg, model, ro


def test_kl_k1_penalises_the_reward_with_the_learner_and_anchor_logprobs():
    """k1: R_i - beta * sum_t (pi_old - pi_anc) over sampled tokens, pi_anc from a different (frozen) model."""
    cfg, model, ro = _rollout()
    anchor = TinyGPT(cfg, seed=1, init="torch").to(DEVICE)
    with torch.no_grad():
        pi_old = sequence_logprobs(model, ro.tokens, TASK.prompt_len)
        ref = sequence_logprobs(anchor, ro.tokens, TASK.prompt_len)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25], device=DEVICE)
    beta = 0.1
    expected = [float(rewards[i]) - beta * sum(float(pi_old[i, t] - ref[i, t])
                                               for t in range(ro.mask.shape[1]) if ro.mask[i, t])
                for i in range(4)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = learner_step(model, opt, _no_scaling(), ro, rewards, 2, TASK.prompt_len,
                       StepConfig(kl_coef=beta, kl_estimator="k1"), anchor_logp=ref)
    assert res.rewards.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    k1 = [float(pi_old[i, t] - ref[i, t]) for i in range(4) for t in range(ro.mask.shape[1]) if ro.mask[i, t]]
    assert res.stats["kl_k1"] == pytest.approx(sum(k1) / len(k1), rel=1e-5)
    assert {"kl_k2", "kl_k3", "grad_norm_max"} <= res.stats.keys()


def test_kl_to_itself_is_zero_and_needs_the_anchor_logprobs():
    _, model, ro = _rollout()
    with torch.no_grad():
        ref = sequence_logprobs(model, ro.tokens, TASK.prompt_len)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25], device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = learner_step(model, opt, _no_scaling(), ro, rewards, 2, TASK.prompt_len,
                       StepConfig(algo="gspo", kl_coef=0.5, kl_estimator="k3"), anchor_logp=ref)
    assert res.stats["kl_k1"] == res.stats["kl_k2"] == res.stats["kl_k3"] == 0.0
    with pytest.raises(ValueError, match="anchor_logp"):
        learner_step(model, opt, _no_scaling(), ro, rewards, 2, TASK.prompt_len, StepConfig(kl_coef=0.5))


def test_step_figures_are_averaged_over_minibatches():
    """grad_norm is the mean of the minibatches' norms (not the last one's); the loss likewise."""
    _, model, ro = _rollout()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25], device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights do not move: each minibatch alone is known
    res = learner_step(model, opt, _no_scaling(), ro, rewards, 2, TASK.prompt_len, StepConfig(minibatches=2))
    norms, losses = [], []
    for half in (slice(0, 2), slice(2, 4)):
        part = type(ro)(ro.tokens[half], ro.logprobs[half], ro.mask[half])
        one = learner_step(model, opt, _no_scaling(), part, rewards[half], 2, TASK.prompt_len, StepConfig())
        norms.append(one.grad_norm)
        losses.append(one.loss)
    assert res.grad_norm == pytest.approx(sum(norms) / 2, rel=1e-6)
    assert res.stats["grad_norm_max"] == pytest.approx(max(norms), rel=1e-6)
    assert res.loss == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_the_scaler_is_a_grad_scaler_named_when_missing():
    _, model, ro = _rollout()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(TypeError, match="scaler"):
        learner_step(model, opt, None, ro, torch.ones(4, device=DEVICE), 2, TASK.prompt_len, StepConfig())


def test_without_loss_scaling_a_non_finite_gradient_skips_the_step():
    """A disabled GradScaler would step on a NaN gradient; the learner counts the step as skipped instead."""
    _, model, ro = _rollout("bf16")
    with torch.no_grad():
        model.lm_head.weight[TASK.eos_id, 0] = float("nan")  # after sampling: the learner's pass is NaN
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    res = learner_step(model, opt, _no_scaling(), ro, torch.tensor([1.0, 0.0, 0.5, 0.25], device=DEVICE), 2,
                       TASK.prompt_len, StepConfig())
    assert res.skipped == 1 and res.loss_scale == 1.0
    after = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(before, after))  # NaN-proof
    assert not opt.state  # AdamW never stepped: no moments were made
