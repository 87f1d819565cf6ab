"""rl.learner: pi_old is the policy at the start of the step, whatever the minibatching."""

import json

import torch

import precision_kernels as pk
from rl.learner import StepConfig, learner_step
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate
from rl.tasks import get_task
from rl.train import main

TASK = get_task("reverse")
DEVICE = pk.backend.device()


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
    res = learner_step(model, opt, None, ro, rewards, 2, TASK.prompt_len,
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
