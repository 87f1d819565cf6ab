"""The learner: a full teacher-forced pass scored by the fused LM-head kernel, and one optimisation step.

Notation: mu is the sampler's log-prob of each sampled token, pi the learner's current
one, pi_old the learner's at the start of the step (DESIGN.md section 5, issue 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import precision_kernels as pk

from .losses import compute_advantages, policy_loss
from .model import TinyGPT
from .sampler import Rollout


def sequence_logprobs(model: TinyGPT, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0,
                      return_entropy: bool = False):
    """Learner log-probs (B, N) fp32 of tokens[:, prompt_len:], each given everything before it.

    One full causal pass over the padded sequences, then ``pk.linear_logprobs``; causality
    keeps pads after EOS from touching earlier positions.
    """
    B, L = tokens.shape
    if not 0 < prompt_len < L:
        raise ValueError(f"prompt_len must be in [1, {L - 1}] for sequences of length {L}, got {prompt_len}")
    weights = model.compute_weights()
    h = model.hidden_states(tokens[:, :-1], weights)[:, prompt_len - 1:]
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

    def __post_init__(self) -> None:
        for name in ("epochs", "minibatches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.epochs > 1 and self.algo not in ("ppo", "grpo"):
            raise ValueError(f"epochs > 1 needs a clipped objective (ppo or grpo); algo {self.algo!r} "
                             f"would take {self.epochs} unclipped steps on the same rollout")


@dataclass
class StepResult:
    pi_old: torch.Tensor          # (B, N) learner log-probs at the start of the step
    entropy: float
    loss: float
    grad_norm: float
    skipped: int                  # optimizer steps skipped by the loss scaler (inf/NaN gradients)
    loss_scale: float
    stats: dict                   # the loss's own figures (tis weights, ppo clip fraction, ...), averaged


def learner_step(model: TinyGPT, optimizer: torch.optim.Optimizer, scaler, rollout: Rollout, rewards: torch.Tensor,
                 group_size: int, prompt_len: int, cfg: StepConfig) -> StepResult:
    """One RL update on a rollout: advantages, ``cfg.epochs`` passes of ``cfg.minibatches`` minibatches."""
    advantages = compute_advantages(rewards, group_size, cfg.algo)
    B = rollout.tokens.shape[0]
    if cfg.minibatches > B:
        raise ValueError(f"minibatches={cfg.minibatches} exceeds the {B} sequences of the rollout")
    pi_old, entropy = None, float("nan")
    if cfg.minibatches > 1:
        # pi_old is the policy at the start of the step: score the whole rollout before the
        # first update. (Scoring minibatch k inside the loop would see k-1 updates.)
        with torch.no_grad():
            pi_old, ent = sequence_logprobs(model, rollout.tokens, prompt_len, cfg.temperature,
                                            return_entropy=True)
        entropy = _masked_mean(ent, rollout.mask)
    losses, norms, skipped = [], [], 0
    stats: dict[str, list[float]] = {}
    for _epoch in range(cfg.epochs):
        order = torch.arange(B, device=rollout.tokens.device)
        for idx in order.chunk(cfg.minibatches):
            logp, ent = sequence_logprobs(model, rollout.tokens[idx], prompt_len, cfg.temperature,
                                          return_entropy=True)
            if pi_old is None:
                # One minibatch: its first pass runs before any update, so it is pi_old itself.
                pi_old = logp.detach()
                entropy = _masked_mean(ent.detach(), rollout.mask)
            old = pi_old[idx]
            loss, loss_stats = policy_loss(cfg.algo, logp, advantages=advantages[idx], mask=rollout.mask[idx],
                                           mu=rollout.logprobs[idx], old_logp=old, agg=cfg.agg, cap=cfg.cap,
                                           clip_eps=cfg.ppo_eps, ratio=cfg.ratio, tis_cap=cfg.tis_cap)
            for key, value in loss_stats.items():
                stats.setdefault(key, []).append(value)
            optimizer.zero_grad(set_to_none=True)
            scale_before = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            if not advantages[idx].any():
                # Every advantage is zero, so is the gradient; an AdamW step would still move the
                # weights on stale momentum (seen to collapse a binary-reward run), so skip it.
                if scaler is not None and scaler.is_enabled():
                    scaler.update()  # close this iteration's unscale_; the scale moves as usual
                losses.append(float(loss.detach()))
                norms.append(float(norm))
                continue
            if scaler is not None and scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
                if scaler.get_scale() < scale_before:
                    skipped += 1
            elif math.isfinite(float(norm)):
                optimizer.step()
            else:
                skipped += 1
            losses.append(float(loss.detach()))
            norms.append(float(norm))
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    return StepResult(pi_old=pi_old, entropy=entropy, loss=sum(losses) / len(losses),
                      grad_norm=norms[-1], skipped=skipped, loss_scale=scale,
                      stats={k: sum(v) / len(v) for k, v in stats.items()})


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    picked = values[mask]
    return float(picked.mean()) if picked.numel() else float("nan")
