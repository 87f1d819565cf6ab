"""Policy-gradient losses as pure functions of log-prob tensors, masks and advantages.

Notation (DESIGN.md §6, issue 5), for B sequences of N response tokens:

* ``logp``     π      the learner's current log-probs of the sampled tokens, (B, N) fp32, with grad;
* ``mu``       μ      the sampler's log-probs of the same tokens, (B, N);
* ``old_logp`` π_old  the learner's log-probs at the start of the step (no grad), (B, N);
* ``mask``            (B, N) bool, True on sampled tokens (up to and including EOS);
* ``advantages`` A_i  one per sequence, (B,): reward minus the group mean, optionally
  divided by the group std (``group_advantages``).

Positions where ``mask`` is False never contribute, whatever finite or infinite values
they hold (selected with ``torch.where``, never multiplied by 0, since ``0 * inf`` is NaN).

Every loss is ``aggregate(per_token, mask, agg)``:

* ``token-mean``: sum over all sampled tokens of the batch / number of sampled tokens;
* ``seq-mean``:   each sequence's mean over its sampled tokens, then the mean over sequences.

The algorithms (per-token terms before aggregation; ``sg`` = stop-gradient):

* ``pg``:   −A_i · π_t
* ``tis``:  −A_i · sg(min(exp(π_old − μ), C)) · π_t                       (C = 2)
* ``mis``:  −A_i · sg(ρ_i) · π_t with ρ_i = exp(Σ_t (π_old − μ)) over the sampled tokens;
  sequences with ρ_i > C get weight 0 (they stay in the token count)     (C = 2)
* ``ppo``:  −w_t · min(r_t · A_i, clip(r_t, 1 − ε, 1 + ε) · A_i)                 (ε = 0.2), where
  the ratio is chosen by ``ratio``:

  - ``ratio="old"`` (default, standard PPO): r_t = exp(π − π_old); with ``tis_cap=C`` the
    sampler mismatch is corrected by the detached weight w_t = sg(min(exp(π_old − μ), C)),
    without it w_t = 1;
  - ``ratio="sampler"``: r_t = exp(π − μ), w_t = 1 (the mismatch is folded into the clip).
* ``grpo``: ``ppo`` on std-normalised group advantages.
"""

from __future__ import annotations

import math

import torch

ALGOS = ("pg", "tis", "mis", "ppo", "grpo")
RATIOS = ("old", "sampler")
AGGREGATIONS = ("token-mean", "seq-mean")


# ---- advantages --------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """Reward minus its group's mean, optionally divided by the group's std (+ ``eps``).

    ``rewards`` is (B,) with ``B = n_prompts * group_size`` and each prompt's samples
    contiguous (prompts repeated with ``repeat_interleave(group_size)``). The std is the
    population std (``correction=0``), so a group of identical rewards gets A = 0.
    Returns fp32 (B,).
    """
    r = rewards.float()
    if r.dim() != 1 or group_size < 1 or r.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    g = r.view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if normalize_std:
        adv = adv / (g.std(dim=1, keepdim=True, correction=0) + eps)
    return adv.reshape(-1)


def uses_std_normalization(algo: str) -> bool:
    """Whether ``algo`` divides advantages by the group std (only ``grpo``)."""
    _check_algo(algo)
    return algo == "grpo"


def compute_advantages(rewards: torch.Tensor, group_size: int, algo: str = "pg") -> torch.Tensor:
    """Group advantages as ``algo`` wants them (std-normalised for ``grpo``)."""
    return group_advantages(rewards, group_size, normalize_std=uses_std_normalization(algo))


# ---- aggregation -------------------------------------------------------------------------

def aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """Reduce a (B, N) per-token loss over the sampled tokens to a scalar (see module doc)."""
    mask = mask.bool()
    x = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if agg == "token-mean":
        return x.sum() / mask.sum().clamp_min(1)
    if agg == "seq-mean":
        return (x.sum(dim=1) / mask.sum(dim=1).clamp_min(1)).mean()
    raise ValueError(f"unknown aggregation {agg!r}; choose from {AGGREGATIONS}")


# ---- importance weights (all detached) ---------------------------------------------------

def _masked_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), a - b, torch.zeros((), dtype=a.dtype, device=a.device))


def tis_weights(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated token weights min(exp(π_old − μ), C), detached; 0 where ``mask`` is False."""
    w = torch.exp(_masked_diff(old_logp.detach(), mu.detach(), mask)).clamp(max=cap)
    return torch.where(mask.bool(), w, torch.zeros_like(w))


def mis_weights(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor,
                cap: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence ratios ρ_i = exp(Σ_t (π_old − μ)) and which sequences are kept (ρ_i <= C).

    Returns ``(weights (B,), kept (B,) bool)``: weights are ρ_i where kept, 0 elsewhere,
    detached. The comparison is made on log ρ, so a huge ratio never overflows to inf·0.
    """
    log_rho = _masked_diff(old_logp.detach(), mu.detach(), mask).sum(dim=1)
    kept = log_rho <= math.log(cap)
    w = torch.where(kept, torch.exp(torch.where(kept, log_rho, torch.zeros_like(log_rho))),
                    torch.zeros_like(log_rho))
    return w, kept


def ppo_ratio(logp: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_t = exp(π − reference) with gradient through π (reference: π_old or μ); exactly 1 where ``mask`` is False."""
    return torch.exp(_masked_diff(logp, reference.detach(), mask))


def _ppo_terms(logp, mu, old_logp, mask, ratio, tis_cap):
    """``(r, w)``: the PPO ratio chosen by ``ratio`` and the detached per-token weight (1 without ``tis_cap``)."""
    if ratio not in RATIOS:
        raise ValueError(f"unknown ratio {ratio!r}; choose from {RATIOS}")
    if ratio == "old" and old_logp is None:
        raise ValueError("ratio='old' needs old_logp (the learner's log-probs at the start of the step)")
    if tis_cap is not None:
        if ratio != "old":
            raise ValueError("tis_cap corrects the ratio against pi_old; with ratio='sampler' the mismatch is "
                             "already in the ratio, so tis_cap must be None")
        if not (isinstance(tis_cap, (int, float)) and math.isfinite(tis_cap) and tis_cap > 0):
            raise ValueError(f"tis_cap must be a finite number > 0, got {tis_cap!r}")
    r = ppo_ratio(logp, old_logp if ratio == "old" else mu, mask)
    w = tis_weights(old_logp, mu, mask, tis_cap) if tis_cap is not None else torch.ones_like(r)
    return r, w


# ---- losses ------------------------------------------------------------------------------

def pg_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
            agg: str = "token-mean") -> torch.Tensor:
    """REINFORCE: aggregate of −A_i · log π(y_t)."""
    return aggregate(-advantages[:, None] * logp, mask, agg)


def tis_loss(logp: torch.Tensor, mu: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, agg: str = "token-mean", cap: float = 2.0) -> torch.Tensor:
    """Truncated importance sampling: pg with token weights min(exp(π_old − μ), C), detached."""
    w = tis_weights(old_logp, mu, mask, cap)
    return aggregate(-advantages[:, None] * w * logp, mask, agg)


def mis_loss(logp: torch.Tensor, mu: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, agg: str = "token-mean", cap: float = 2.0) -> torch.Tensor:
    """Masked (sequence-level) importance sampling: pg weighted by ρ_i, sequences with ρ_i > C dropped."""
    w, _ = mis_weights(old_logp, mu, mask, cap)
    return aggregate(-(advantages * w)[:, None] * logp, mask, agg)


def ppo_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             agg: str = "token-mean", clip_eps: float = 0.2, *, old_logp: torch.Tensor | None = None,
             ratio: str = "old", tis_cap: float | None = None) -> torch.Tensor:
    """PPO-clip: aggregate of −w_t · min(r_t A_i, clip(r_t, 1 ± ε) A_i).

    ``ratio="old"``: r_t = exp(π − π_old), w_t = sg(min(exp(π_old − μ), C)) with ``tis_cap=C``, else 1.
    ``ratio="sampler"``: r_t = exp(π − μ), w_t = 1.
    """
    r, w = _ppo_terms(logp, mu, old_logp, mask, ratio, tis_cap)
    a = advantages[:, None]
    per_token = -w * torch.minimum(r * a, r.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a)
    return aggregate(per_token, mask, agg)


def grpo_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              agg: str = "token-mean", clip_eps: float = 0.2, *, old_logp: torch.Tensor | None = None,
              ratio: str = "old", tis_cap: float | None = None) -> torch.Tensor:
    """GRPO: ``ppo_loss``; the caller passes std-normalised group advantages (``compute_advantages``)."""
    return ppo_loss(logp, mu, advantages, mask, agg, clip_eps, old_logp=old_logp, ratio=ratio, tis_cap=tis_cap)


def policy_loss(algo: str, logp: torch.Tensor, *, advantages: torch.Tensor, mask: torch.Tensor,
                mu: torch.Tensor | None = None, old_logp: torch.Tensor | None = None,
                agg: str = "token-mean", cap: float = 2.0, clip_eps: float = 0.2, ratio: str = "old",
                tis_cap: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch on ``algo`` (one of ``ALGOS``); returns ``(loss, stats)`` with stats as floats.

    ``mu`` is needed by tis/mis/ppo/grpo, ``old_logp`` by tis/mis and by ppo/grpo with
    ``ratio="old"``; ``ratio`` and ``tis_cap`` are ppo/grpo's (see ``ppo_loss``). Stats:
    ``tis_weight_mean`` and ``tis_capped_frac`` (tis), ``mis_kept_frac`` and ``mis_weight_mean``
    (mis), ``ppo_clip_frac`` and ``ppo_ratio_max_dev`` (ppo/grpo, max |r_t − 1| on sampled
    tokens), plus ``tis_weight_mean`` and ``tis_capped_frac`` of w_t when ``tis_cap`` is set.
    """
    _check_algo(algo)
    if algo != "pg" and mu is None:
        raise ValueError(f"algo {algo!r} needs the sampler log-probs mu")
    if (algo in ("tis", "mis") or (algo in ("ppo", "grpo") and ratio == "old")) and old_logp is None:
        raise ValueError(f"algo {algo!r} needs old_logp (the learner's log-probs at the start of the step)")
    if algo not in ("ppo", "grpo") and (ratio != "old" or tis_cap is not None):
        raise ValueError(f"ratio and tis_cap are ppo/grpo options; algo {algo!r} takes neither")
    m = mask.bool()
    n_tok = max(int(m.sum()), 1)
    stats: dict[str, float] = {}
    with torch.no_grad():
        if algo == "tis":
            w = tis_weights(old_logp, mu, m, cap)
            stats["tis_weight_mean"] = float(w[m].sum()) / n_tok
            stats["tis_capped_frac"] = float((w[m] >= cap).sum()) / n_tok
        elif algo == "mis":
            w, kept = mis_weights(old_logp, mu, m, cap)
            stats["mis_kept_frac"] = float(kept.float().mean()) if kept.numel() else 0.0
            stats["mis_weight_mean"] = float(w.mean()) if w.numel() else 0.0
        elif algo in ("ppo", "grpo"):
            r, w = _ppo_terms(logp.detach(), mu, old_logp, m, ratio, tis_cap)
            clipped = ((r < 1.0 - clip_eps) | (r > 1.0 + clip_eps)) & m
            stats["ppo_clip_frac"] = float(clipped.sum()) / n_tok
            stats["ppo_ratio_max_dev"] = float((r[m] - 1).abs().max()) if m.any() else 0.0
            if tis_cap is not None:
                stats["tis_weight_mean"] = float(w[m].sum()) / n_tok
                stats["tis_capped_frac"] = float((w[m] >= tis_cap).sum()) / n_tok
    if algo == "pg":
        loss = pg_loss(logp, advantages, m, agg)
    elif algo == "tis":
        loss = tis_loss(logp, mu, old_logp, advantages, m, agg, cap)
    elif algo == "mis":
        loss = mis_loss(logp, mu, old_logp, advantages, m, agg, cap)
    else:
        loss = ppo_loss(logp, mu, advantages, m, agg, clip_eps, old_logp=old_logp, ratio=ratio, tis_cap=tis_cap)
    return loss, stats


def _check_algo(algo: str) -> None:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {ALGOS}")
