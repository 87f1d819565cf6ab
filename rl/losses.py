"""Policy-gradient losses as pure functions of log-prob tensors, masks and advantages.

Notation (DESIGN.md §6), for B sequences of N response tokens:

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
* ``pg-seq-is`` (the paper's PG-Seq-IS): −A_i · sg(ρ_i) · π_t with ρ_i = exp(Σ_t (π − μ)) over the sampled
  tokens, π the current learner log-probs (detached), untruncated. A sequence whose Σ_t (π − μ) passes
  fp32's exp range (about 88.7) gets an infinite weight and a non-finite loss, as the unbounded estimator
  asks; the trainer reports it.
* ``ppo``:  −w_t · min(r_t · A_i, clip(r_t, 1 − ε, 1 + ε) · A_i)                 (ε = 0.2), where
  the ratio is chosen by ``ratio``:

  - ``ratio="old"`` (default, standard PPO): r_t = exp(π − π_old); with ``tis_cap=C`` the
    sampler mismatch is corrected by the detached weight w_t = sg(min(exp(π_old − μ), C)),
    without it w_t = 1;
  - ``ratio="sampler"``: r_t = exp(π − μ), w_t = 1 (the mismatch is folded into the clip).
* ``grpo``: ``ppo`` on std-normalised group advantages.
* ``gspo`` (Group Sequence Policy Optimization, Zheng et al. 2025): one ratio per sequence,

      s_i = exp( (1 / |y_i|) Σ_t (π_t − π_den,t) )        over the sequence's sampled tokens,
      loss_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)   (ε_low = 3e-4, ε_high = 4e-4),

  with π_den = π_old (``ratio="old"``) or μ (``ratio="sampler"``), A_i the std-normalised group
  advantage, and the loss the mean of loss_i over sequences (sequence-level aggregation: ``agg``
  does not apply). The gradient of an unclipped term is −A_i s_i · (1/|y_i|) Σ_t ∇π_t.

Distributed runs pass ``denominator``: the global number of sampled tokens (token-mean) or of
sequences (seq-mean, gspo) that the rank's sum is divided by, so that the ranks' losses add up
to the single-process loss. Without it the rank's own count is used.

KL penalty to the KL anchor π_anc, a frozen copy of the policy (the "reference policy" of the RL
literature; ``rl.train`` freezes the post-warm-up policy). ``kl_estimate``; δ_t = π_anc,t − π_t,
samples from the policy:

* ``k1 = −δ``: subtracted from the reward, detached (``kl_penalised_rewards``): REINFORCE on
  R_i − β Σ_t k1_t is the score-function estimate of the gradient of −β KL(π‖π_anc) over sequences;
* ``k2 = ½ δ²``: added to the loss (``kl_loss``); its gradient −δ ∇π_t has expectation ∇KL(π‖π_anc),
  the reverse KL's gradient, on-policy;
* ``k3 = exp(δ) − 1 − δ``: added to the loss; its gradient (1 − exp(δ)) ∇π_t has expectation
  −E_{π_anc}[∇ log π] = ∇KL(π_anc‖π), the *forward* KL's gradient (the value estimates the reverse KL
  without bias, its gradient does not).
"""

from __future__ import annotations

import math

import torch

ALGOS = ("pg", "tis", "mis", "pg-seq-is", "ppo", "grpo", "gspo")
CLIPPED = ("ppo", "grpo", "gspo")      # objectives that allow several epochs on one rollout and a --ratio
SEQUENCE_LEVEL = ("gspo",)            # aggregate per sequence; ``agg`` does not apply
GSPO_EPS = (3e-4, 4e-4)               # (ε_low, ε_high) of the GSPO paper
KL_ESTIMATORS = ("k1", "k2", "k3")
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
    """Whether ``algo`` divides advantages by the group std (``grpo`` and ``gspo``)."""
    _check_algo(algo)
    return algo in ("grpo", "gspo")


def compute_advantages(rewards: torch.Tensor, group_size: int, algo: str = "pg") -> torch.Tensor:
    """Group advantages as ``algo`` wants them (std-normalised for ``grpo``)."""
    return group_advantages(rewards, group_size, normalize_std=uses_std_normalization(algo))


# ---- aggregation -------------------------------------------------------------------------

def aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
              denominator: float | None = None) -> torch.Tensor:
    """Reduce a (B, N) per-token loss over the sampled tokens to a scalar (see module doc).

    ``denominator`` replaces the count the sum is divided by (tokens for token-mean,
    sequences for seq-mean): a distributed rank passes the global count.
    """
    mask = mask.bool()
    x = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if agg == "token-mean":
        return x.sum() / (mask.sum().clamp_min(1) if denominator is None else denominator)
    if agg == "seq-mean":
        per_seq = x.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        return per_seq.mean() if denominator is None else per_seq.sum() / denominator
    raise ValueError(f"unknown aggregation {agg!r}; choose from {AGGREGATIONS}")


def count_for(agg: str, mask: torch.Tensor) -> int:
    """What ``aggregate`` divides by for ``agg`` (sampled tokens, or sequences), as an int."""
    return int(mask.bool().sum()) if agg == "token-mean" else int(mask.shape[0])


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


def seq_is_weights(logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Untruncated sequence weights ρ_i = exp(Σ_t (π − μ)) over the sampled tokens, (B,), detached."""
    return torch.exp(_masked_diff(logp.detach(), mu.detach(), mask).sum(dim=1))


def ppo_ratio(logp: torch.Tensor, base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_t = exp(π − base) with gradient through π (base: π_old or μ); exactly 1 where ``mask`` is False."""
    return torch.exp(_masked_diff(logp, base.detach(), mask))


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
            agg: str = "token-mean", denominator: float | None = None) -> torch.Tensor:
    """REINFORCE: aggregate of −A_i · log π(y_t)."""
    return aggregate(-advantages[:, None] * logp, mask, agg, denominator)


def tis_loss(logp: torch.Tensor, mu: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, agg: str = "token-mean", cap: float = 2.0,
             denominator: float | None = None) -> torch.Tensor:
    """Truncated importance sampling: pg with token weights min(exp(π_old − μ), C), detached."""
    w = tis_weights(old_logp, mu, mask, cap)
    return aggregate(-advantages[:, None] * w * logp, mask, agg, denominator)


def mis_loss(logp: torch.Tensor, mu: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, agg: str = "token-mean", cap: float = 2.0,
             denominator: float | None = None) -> torch.Tensor:
    """Masked (sequence-level) importance sampling: pg weighted by ρ_i, sequences with ρ_i > C dropped."""
    w, _ = mis_weights(old_logp, mu, mask, cap)
    return aggregate(-(advantages * w)[:, None] * logp, mask, agg, denominator)


def pg_seq_is_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   agg: str = "token-mean", denominator: float | None = None) -> torch.Tensor:
    """PG-Seq-IS: pg with each sequence weighted by ρ_i = exp(Σ_t (π − μ)), detached and untruncated."""
    w = seq_is_weights(logp, mu, mask)
    return aggregate(-(advantages * w)[:, None] * logp, mask, agg, denominator)


def ppo_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             agg: str = "token-mean", clip_eps: float = 0.2, *, old_logp: torch.Tensor | None = None,
             ratio: str = "old", tis_cap: float | None = None, denominator: float | None = None) -> torch.Tensor:
    """PPO-clip: aggregate of −w_t · min(r_t A_i, clip(r_t, 1 ± ε) A_i).

    ``ratio="old"``: r_t = exp(π − π_old), w_t = sg(min(exp(π_old − μ), C)) with ``tis_cap=C``, else 1.
    ``ratio="sampler"``: r_t = exp(π − μ), w_t = 1.
    """
    r, w = _ppo_terms(logp, mu, old_logp, mask, ratio, tis_cap)
    a = advantages[:, None]
    per_token = -w * torch.minimum(r * a, r.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a)
    return aggregate(per_token, mask, agg, denominator)


def grpo_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              agg: str = "token-mean", clip_eps: float = 0.2, *, old_logp: torch.Tensor | None = None,
              ratio: str = "old", tis_cap: float | None = None, denominator: float | None = None) -> torch.Tensor:
    """GRPO: ``ppo_loss``; the caller passes std-normalised group advantages (``compute_advantages``)."""
    return ppo_loss(logp, mu, advantages, mask, agg, clip_eps, old_logp=old_logp, ratio=ratio, tis_cap=tis_cap,
                    denominator=denominator)


def gspo_log_ratio(logp: torch.Tensor, base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over sequence i's sampled tokens of (π − base), (B,); 0 for a sequence with none."""
    m = mask.bool()
    return _masked_diff(logp, base.detach(), m).sum(dim=1) / m.sum(dim=1).clamp_min(1)


def gspo_loss(logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              old_logp: torch.Tensor | None = None, ratio: str = "old", eps: tuple[float, float] = GSPO_EPS,
              denominator: float | None = None) -> torch.Tensor:
    """GSPO: mean over sequences of −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i) (module doc).

    s_i = exp(mean_t(π − π_den)) with π_den = π_old (``ratio="old"``) or μ (``ratio="sampler"``).
    The caller passes std-normalised group advantages. Sequences without sampled tokens
    contribute 0 (they stay in the count, as seq-mean's do).
    """
    if ratio not in RATIOS:
        raise ValueError(f"unknown ratio {ratio!r}; choose from {RATIOS}")
    den = old_logp if ratio == "old" else mu
    if den is None:
        raise ValueError(f"gspo with ratio={ratio!r} needs {'old_logp' if ratio == 'old' else 'mu'}")
    s = torch.exp(gspo_log_ratio(logp, den, mask))
    per_seq = -torch.minimum(s * advantages, s.clamp(1.0 - eps[0], 1.0 + eps[1]) * advantages)
    per_seq = torch.where(mask.bool().any(dim=1), per_seq, torch.zeros_like(per_seq))
    return per_seq.mean() if denominator is None else per_seq.sum() / denominator


# ---- KL penalty to the frozen KL anchor ---------------------------------------------------

def kl_estimate(logp: torch.Tensor, anchor_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(π‖π_anc) estimate k1, k2 or k3 of the module doc; gradient flows through ``logp``."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}")
    delta = anchor_logp.detach() - logp
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta * delta
    return torch.expm1(delta) - delta


def kl_penalised_rewards(rewards: torch.Tensor, old_logp: torch.Tensor, anchor_logp: torch.Tensor,
                         mask: torch.Tensor, coef: float) -> torch.Tensor:
    """R_i − β Σ_t k1_t over sequence i's sampled tokens, with k1_t = π_old,t − π_anc,t (detached)."""
    k1 = _masked_diff(old_logp.detach(), anchor_logp.detach(), mask)
    return rewards.float() - coef * k1.sum(dim=1)


def kl_loss(logp: torch.Tensor, anchor_logp: torch.Tensor, mask: torch.Tensor, estimator: str, coef: float,
            agg: str = "token-mean", denominator: float | None = None) -> torch.Tensor:
    """β · aggregate of the k2 or k3 estimate (k1 goes into the reward, ``kl_penalised_rewards``)."""
    if estimator == "k1":
        raise ValueError("the k1 estimator is applied to the reward (kl_penalised_rewards), not the loss")
    k = kl_estimate(logp, anchor_logp, estimator)
    k = torch.where(mask.bool(), k, torch.zeros((), dtype=k.dtype, device=k.device))
    return coef * aggregate(k, mask, agg, denominator)


def policy_loss(algo: str, logp: torch.Tensor, *, advantages: torch.Tensor, mask: torch.Tensor,
                mu: torch.Tensor | None = None, old_logp: torch.Tensor | None = None,
                agg: str = "token-mean", cap: float = 2.0, clip_eps: float = 0.2, ratio: str = "old",
                tis_cap: float | None = None,
                denominator: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch on ``algo`` (one of ``ALGOS``); returns ``(loss, stats)`` with stats as floats.

    ``mu`` is needed by every algorithm but pg, ``old_logp`` by tis/mis and by ppo/grpo/gspo with
    ``ratio="old"``; ``ratio`` is ppo/grpo/gspo's and ``tis_cap`` ppo/grpo's (see ``ppo_loss``);
    gspo ignores ``agg`` (sequence level). ``denominator``: see the module doc. Stats:
    ``tis_weight_mean`` and ``tis_capped_frac`` (tis), ``mis_kept_frac`` and ``mis_weight_mean``
    (mis), ``seq_is_weight_mean`` and ``seq_is_weight_max`` of ρ_i (pg-seq-is), ``ppo_clip_frac`` and
    ``ppo_ratio_max_dev`` (ppo/grpo, max |r_t − 1| on sampled tokens), plus ``tis_weight_mean`` and
    ``tis_capped_frac`` of w_t when ``tis_cap`` is set;
    ``gspo_clip_frac`` (sequences whose s_i is outside the clip range) and ``gspo_ratio_max_dev``
    (max |s_i − 1|) for gspo.
    """
    _check_algo(algo)
    if algo != "pg" and mu is None:
        raise ValueError(f"algo {algo!r} needs the sampler log-probs mu")
    if (algo in ("tis", "mis") or (algo in CLIPPED and ratio == "old")) and old_logp is None:
        raise ValueError(f"algo {algo!r} needs old_logp (the learner's log-probs at the start of the step)")
    if algo not in CLIPPED and ratio != "old":
        raise ValueError(f"ratio is a {'/'.join(CLIPPED)} option; algo {algo!r} does not take it")
    if algo not in ("ppo", "grpo") and tis_cap is not None:
        raise ValueError(f"tis_cap is a ppo/grpo option; algo {algo!r} does not take it")
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
        elif algo == "pg-seq-is":
            has_tok = m.any(dim=1)
            w = seq_is_weights(logp, mu, m)[has_tok]
            stats["seq_is_weight_mean"] = float(w.mean()) if w.numel() else 0.0
            stats["seq_is_weight_max"] = float(w.max()) if w.numel() else 0.0
        elif algo in ("ppo", "grpo"):
            r, w = _ppo_terms(logp.detach(), mu, old_logp, m, ratio, tis_cap)
            clipped = ((r < 1.0 - clip_eps) | (r > 1.0 + clip_eps)) & m
            stats["ppo_clip_frac"] = float(clipped.sum()) / n_tok
            stats["ppo_ratio_max_dev"] = float((r[m] - 1).abs().max()) if m.any() else 0.0
            if tis_cap is not None:
                stats["tis_weight_mean"] = float(w[m].sum()) / n_tok
                stats["tis_capped_frac"] = float((w[m] >= tis_cap).sum()) / n_tok
        elif algo == "gspo":
            has_tok = m.any(dim=1)
            s = torch.exp(gspo_log_ratio(logp.detach(), old_logp if ratio == "old" else mu, m))[has_tok]
            out = (s < 1.0 - GSPO_EPS[0]) | (s > 1.0 + GSPO_EPS[1])
            stats["gspo_clip_frac"] = float(out.float().mean()) if s.numel() else 0.0
            stats["gspo_ratio_max_dev"] = float((s - 1).abs().max()) if s.numel() else 0.0
    if algo == "pg":
        loss = pg_loss(logp, advantages, m, agg, denominator)
    elif algo == "tis":
        loss = tis_loss(logp, mu, old_logp, advantages, m, agg, cap, denominator)
    elif algo == "mis":
        loss = mis_loss(logp, mu, old_logp, advantages, m, agg, cap, denominator)
    elif algo == "pg-seq-is":
        loss = pg_seq_is_loss(logp, mu, advantages, m, agg, denominator)
    elif algo == "gspo":
        loss = gspo_loss(logp, mu, advantages, m, old_logp=old_logp, ratio=ratio, denominator=denominator)
    else:
        loss = ppo_loss(logp, mu, advantages, m, agg, clip_eps, old_logp=old_logp, ratio=ratio, tis_cap=tis_cap,
                        denominator=denominator)
    return loss, stats


def _check_algo(algo: str) -> None:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {ALGOS}")
