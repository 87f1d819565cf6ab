"""The learner: a full teacher-forced pass scored by the fused LM-head kernel, and one optimisation step.

Notation: mu is the sampler's log-prob of each sampled token, pi the learner's current
one, pi_old the learner's at the start of the step (DESIGN.md section 5), pi_anc the KL
anchor's, a frozen copy of the policy (the KL penalty, ``rl.losses``).

Under ``torchrun`` (``rl.distributed``) each rank runs this step on its whole prompt groups:
each minibatch's loss is divided by the minibatch's *global* token (or sequence) count and
the gradients are summed over ranks before clipping and the optimizer step, so every rank
takes the same step, that of the single-process loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import precision_kernels as pk

from .distributed import Dist
from .losses import (
    CLIPPED,
    KL_ESTIMATORS,
    SEQUENCE_LEVEL,
    compute_advantages,
    count_for,
    kl_estimate,
    kl_loss,
    kl_penalised_rewards,
    policy_loss,
)
from .policy import Policy
from .rollout import Rollout


def sequence_logprobs(model: Policy, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0,
                      return_entropy: bool = False, prompt_mask: torch.Tensor | None = None):
    """Learner log-probs (B, N) fp32 of tokens[:, prompt_len:], each given everything before it.

    One full causal pass over the padded sequences, then ``pk.linear_logprobs``; causality
    keeps pads after EOS from touching earlier positions. ``prompt_mask`` (B, prompt_len):
    the real prompt positions of left-padded prompts, passed on to ``model.hidden_states``
    (``rl.policy``); None: every position is real.
    """
    B, L = tokens.shape
    if not 0 < prompt_len < L:
        raise ValueError(f"prompt_len must be in [1, {L - 1}] for sequences of length {L}, got {prompt_len}")
    weights = model.compute_weights()
    h = model.hidden_states(tokens[:, :-1], weights, prompt_mask=prompt_mask)[:, prompt_len - 1:]
    targets = tokens[:, prompt_len:]
    n = targets.shape[1]
    out = pk.linear_logprobs(h.reshape(B * n, -1), weights["lm_head.weight"], targets.reshape(-1),
                             temperature, return_entropy=return_entropy)
    if return_entropy:
        return out[0].view(B, n), out[1].view(B, n)
    return out.view(B, n)


@dataclass
class StepConfig:
    algo: str = "pg"
    agg: str = "token-mean"
    epochs: int = 1
    minibatches: int = 1
    clip_grad: float = 1.0
    temperature: float = 1.0
    cap: float = 2.0              # C of tis and mis
    ppo_eps: float = 0.2
    ratio: str = "old"            # ppo/grpo: r = exp(pi - pi_old) ("old") or exp(pi - mu) ("sampler")
    tis_cap: float | None = None  # ppo/grpo with ratio "old": weight min(exp(pi_old - mu), tis_cap)
    kl_coef: float = 0.0          # beta of the KL penalty to the frozen KL anchor (0: none)
    kl_estimator: str = "k3"      # k1: in the reward; k2, k3: in the loss (rl.losses)

    def __post_init__(self) -> None:
        for name in ("epochs", "minibatches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.epochs > 1 and self.algo not in CLIPPED:
            raise ValueError(f"epochs > 1 needs a clipped objective ({'/'.join(CLIPPED)}); algo {self.algo!r} "
                             f"would take {self.epochs} unclipped steps on the same rollout")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if not (isinstance(self.kl_coef, (int, float)) and math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef!r}")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0 and self.kl_estimator != "k1"

    @property
    def loss_agg(self) -> str:
        """What the loss's denominator counts: sequences for the sequence-level algorithms."""
        return "seq-mean" if self.algo in SEQUENCE_LEVEL else self.agg


@dataclass
class StepResult:
    pi_old: torch.Tensor          # (B, N) learner log-probs at the start of the step (this rank's sequences)
    entropy: float                # mean entropy of pi_old over every sampled token of the step (all ranks)
    loss: float                   # mean over the step's minibatches of the global loss (KL term included)
    grad_norm: float              # mean over the step's minibatches of the pre-clip gradient norm
    skipped: int                  # optimizer steps skipped by the loss scaler (inf/NaN gradients)
    loss_scale: float
    stats: dict                   # the loss's own figures (tis weights, ppo clip fraction, KL, ...), averaged
    rewards: torch.Tensor | None = None  # the rewards the advantages came from (k1-penalised with the KL)


def learner_step(model: Policy, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rollout: Rollout,
                 rewards: torch.Tensor, group_size: int, prompt_len: int, cfg: StepConfig, *,
                 anchor_logp: torch.Tensor | None = None, dist: Dist | None = None,
                 prompt_mask: torch.Tensor | None = None) -> StepResult:
    """One RL update on a rollout: advantages, ``cfg.epochs`` passes of ``cfg.minibatches`` minibatches.

    ``scaler``: a ``GradScaler``, enabled for dynamic loss scaling (fp16) or not (a plain step that is
    skipped when the gradient norm is not finite). ``anchor_logp``: the KL anchor's log-probs of the
    rollout, needed when ``cfg.kl_coef > 0``. ``dist``: this rank's place under torchrun (None: one process).
    ``prompt_mask``: the rollout's prompt mask for left-padded prompts (``sequence_logprobs``).
    Entropy, loss, grad norm and stats are averages over every minibatch and epoch, and over ranks.
    """
    dist = dist or Dist(device=rollout.tokens.device)
    B = rollout.tokens.shape[0]
    if cfg.minibatches > B:
        raise ValueError(f"minibatches={cfg.minibatches} exceeds the {B} sequences of the rollout")
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler (enabled=False for no loss scaling), "
                        f"got {type(scaler).__name__}")
    if cfg.kl_coef > 0 and anchor_logp is None:
        raise ValueError("kl_coef > 0 needs anchor_logp (the KL anchor's log-probs of the rollout)")
    pi_old, entropy = None, float("nan")
    stats: dict[str, list[float]] = {}
    if cfg.minibatches > 1 or cfg.kl_coef > 0:
        # pi_old is the policy at the start of the step: score the whole rollout before the
        # first update. (Scoring minibatch k inside the loop would see k-1 updates.) The k1
        # penalty needs it before the advantages.
        with torch.no_grad():
            pi_old, ent = sequence_logprobs(model, rollout.tokens, prompt_len, cfg.temperature,
                                            return_entropy=True, prompt_mask=prompt_mask)
        entropy = _global_masked_mean(ent, rollout.mask, dist)
    if cfg.kl_coef > 0:
        with torch.no_grad():
            for est in KL_ESTIMATORS:
                stats[f"kl_{est}"] = [_global_masked_mean(kl_estimate(pi_old, anchor_logp, est), rollout.mask, dist)]
        if cfg.kl_estimator == "k1":
            rewards = kl_penalised_rewards(rewards, pi_old, anchor_logp, rollout.mask, cfg.kl_coef)
    advantages = compute_advantages(rewards, group_size, cfg.algo)
    losses, norms, skipped = [], [], 0
    for _epoch in range(cfg.epochs):
        order = torch.arange(B, device=rollout.tokens.device)
        for idx in order.chunk(cfg.minibatches):
            logp, ent = sequence_logprobs(model, rollout.tokens[idx], prompt_len, cfg.temperature, return_entropy=True,
                                          prompt_mask=None if prompt_mask is None else prompt_mask[idx])
            if pi_old is None:
                # One minibatch: its first pass runs before any update, so it is pi_old itself.
                pi_old = logp.detach()
                entropy = _global_masked_mean(ent.detach(), rollout.mask, dist)
            mask = rollout.mask[idx]
            # Each rank divides by the global count, so the ranks' losses sum to the single-process loss.
            denominator = dist.sum(count_for(cfg.loss_agg, mask))[0] if dist.active else None
            loss, loss_stats = policy_loss(cfg.algo, logp, advantages=advantages[idx], mask=mask,
                                           mu=rollout.logprobs[idx], old_logp=pi_old[idx], agg=cfg.agg, cap=cfg.cap,
                                           clip_eps=cfg.ppo_eps, ratio=cfg.ratio, tis_cap=cfg.tis_cap,
                                           denominator=denominator)
            if cfg.kl_in_loss:
                loss = loss + kl_loss(logp, anchor_logp[idx], mask, cfg.kl_estimator, cfg.kl_coef, cfg.loss_agg,
                                      denominator)
            for key, value in loss_stats.items():
                stats.setdefault(key, []).append(dist.sum(value)[0] / dist.world_size)
            optimizer.zero_grad(set_to_none=True)
            scale_before = scaler.get_scale()  # 1.0 when disabled
            scaler.scale(loss).backward()  # a disabled scaler returns the loss itself
            dist.all_reduce_grads(model.parameters())
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            losses.append(dist.sum(float(loss.detach()))[0])
            norms.append(float(norm))
            any_signal = dist.max(float(bool(advantages[idx].any())))[0] > 0
            if not any_signal and not cfg.kl_in_loss:
                # Every advantage is zero (on every rank), so is the gradient; an AdamW step would still
                # move the weights on stale momentum (seen to collapse a binary-reward run), so skip it.
                scaler.update()  # close this iteration's unscale_; the scale moves as usual
                continue
            if not scaler.is_enabled() and not math.isfinite(float(norm)):
                skipped += 1  # an enabled scaler skips such a step itself (and lowers the scale)
                continue
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale_before:
                skipped += 1
    scale = scaler.get_scale()
    out_stats = {k: sum(v) / len(v) for k, v in stats.items()}
    out_stats["grad_norm_max"] = max(norms)
    return StepResult(pi_old=pi_old, entropy=entropy, loss=sum(losses) / len(losses),
                      grad_norm=sum(norms) / len(norms), skipped=skipped, loss_scale=scale,
                      stats=out_stats, rewards=rewards)


def _global_masked_mean(values: torch.Tensor, mask: torch.Tensor, dist: Dist) -> float:
    """Mean of ``values[mask]`` over every rank's sampled tokens (NaN when there are none)."""
    picked = values[mask].double()
    total, count = dist.sum(float(picked.sum()) if picked.numel() else 0.0, picked.numel())
    return total / count if count else float("nan")
