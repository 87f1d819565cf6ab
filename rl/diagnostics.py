"""What the sampler-learner mismatch does to an update, before the reward shows it: phantom clipping and
importance-weight collapse. Pure functions of log-prob tensors and a mask, computed in float64.

With δ_t = π_old,t − μ_t (the learner's log-prob at the start of the step minus the sampler's, of the
sampled token y_t) over the tokens where ``mask`` is True, and Δ_i = Σ_t δ_t, the sequence log-ratio
log(π_old(y_i) / μ(y_i)) of sequence i:

clip_frac_sampler
    the fraction of sampled tokens whose ratio exp(δ_t) lies outside [1 − ε, 1 + ε] (ε the learner's PPO ε,
    0.2). What ``--ratio sampler`` clips before the policy has moved ("phantom clipping"); 0 when matched.
ess_seq
    ESS/N of the sequence-level weights w_i = exp(Δ_i): (Σ w_i)² / (N Σ w_i²), in (0, 1]. 1 when every
    weight is equal (exactly 1 when matched); about exp(−Var Δ) for log-normal weights, so it collapses
    once L·σ² (length times the per-token variance of δ) passes about 1.
seq_logratio_mean, seq_logratio_std
    the mean and the population std (``correction=0``) of Δ_i over the sequences. E_μ[δ_t] = −KL(μ‖π), so
    the mean falls about linearly with length: the paper's offline figure.

Sequences without a sampled token are left out of the sequence-level figures (as ``rl.metrics`` does);
with none at all, ``ess_seq`` and the log-ratio figures are NaN and the clip fraction is 0.

Against response length (``benchmarks.length_mismatch``): ``prefix_figures`` takes the first L tokens of
the sequences that reach L (the cumulative log-ratio at L), ``length_bin_figures`` the whole sequences whose
length lies in a bin, ``cumulative_logratio`` the mean cumulative log-ratio at every position and
``fit_slope`` its least-squares line, in nats per 1,000 tokens.
"""

from __future__ import annotations

import math

import torch

PPO_EPS = 0.2
DIAGNOSTIC_KEYS = ("clip_frac_sampler", "ess_seq", "seq_logratio_mean", "seq_logratio_std")
# The short names the progress bar shows, in the order it shows them.
BAR_KEYS = {"clip_frac_sampler": "clip", "ess_seq": "ess"}


def _check(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if old_logp.shape != mu.shape or mu.shape != mask.shape or mu.dim() != 2:
        raise ValueError(f"old_logp, mu and mask must be equal (B, N) shapes, got {tuple(old_logp.shape)}, "
                         f"{tuple(mu.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    return mask


def token_logratios(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """δ = π_old − μ in float64, (B, N); exactly 0 where ``mask`` is False (whatever the tensors hold there)."""
    _check(old_logp, mu, mask)
    delta = old_logp.detach().double() - mu.detach().double()
    return torch.where(mask, delta, torch.zeros((), dtype=torch.float64, device=delta.device))


def seq_logratios(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ_i = Σ_t δ_t of every sequence with at least one sampled token, float64 (B',)."""
    return token_logratios(old_logp, mu, mask).sum(dim=1)[mask.any(dim=1)]


def clip_frac_sampler(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, eps: float = PPO_EPS) -> float:
    """Fraction of sampled tokens with exp(π_old − μ) outside [1 − eps, 1 + eps] (0.0 when none is sampled)."""
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
        raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
    ratio = token_logratios(old_logp, mu, mask).exp()[mask]
    if ratio.numel() == 0:
        return 0.0
    outside = (ratio < 1.0 - eps) | (ratio > 1.0 + eps)
    return float(outside.double().mean())


def ess_from_logweights(logw: torch.Tensor) -> float:
    """ESS/N = (Σ w)² / (N Σ w²) of the weights w = exp(logw), shifted by max(logw) so no weight overflows."""
    if logw.numel() == 0:
        return math.nan
    w = (logw.double() - logw.double().max()).exp()
    return float(w.sum() ** 2 / (w.numel() * (w * w).sum()))


def ess_seq(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> float:
    """ESS/N of the sequence weights exp(Δ_i) (module doc); NaN without a sampled token."""
    return ess_from_logweights(seq_logratios(old_logp, mu, mask))


def sampler_diagnostics(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor,
                        eps: float = PPO_EPS) -> dict[str, float]:
    """Every figure of ``DIAGNOSTIC_KEYS`` as Python floats (module doc)."""
    seq = seq_logratios(old_logp, mu, mask)
    empty = seq.numel() == 0
    return {
        "clip_frac_sampler": clip_frac_sampler(old_logp, mu, mask, eps),
        "ess_seq": ess_from_logweights(seq),
        "seq_logratio_mean": math.nan if empty else float(seq.mean()),
        "seq_logratio_std": math.nan if empty else float(seq.std(correction=0)),
    }


def step_diagnostics(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, dist=None,
                     eps: float = PPO_EPS) -> dict[str, float]:
    """``sampler_diagnostics`` of a training step's sequences over every rank (``rl.distributed.Dist``).

    One process: ``sampler_diagnostics`` itself. Under torchrun the ranks' token and sequence counts, clipped
    tokens, Σ Δ_i and Σ Δ_i² are summed, and the ESS's Σ w and Σ w² are summed after shifting every rank's
    log-weights by the global max, so the figures are those of the whole batch (the std from the sums).
    """
    if dist is None or not dist.active:
        return sampler_diagnostics(old_logp, mu, mask, eps)
    seq = seq_logratios(old_logp, mu, mask)
    n_tok = int(mask.sum())
    n_clip = clip_frac_sampler(old_logp, mu, mask, eps) * n_tok
    top = dist.max(float(seq.max()) if seq.numel() else -math.inf)[0]
    w = (seq - top).exp() if seq.numel() else seq
    tok, clip, n, s1, s2, w1, w2 = dist.sum(float(n_tok), n_clip, float(seq.numel()), float(seq.sum()),
                                            float((seq * seq).sum()), float(w.sum()), float((w * w).sum()))
    if n == 0:
        return {"clip_frac_sampler": 0.0, "ess_seq": math.nan, "seq_logratio_mean": math.nan,
                "seq_logratio_std": math.nan}
    mean = s1 / n
    return {"clip_frac_sampler": clip / tok, "ess_seq": w1 * w1 / (n * w2), "seq_logratio_mean": mean,
            "seq_logratio_std": math.sqrt(max(s2 / n - mean * mean, 0.0))}


# ---- against response length (benchmarks.length_mismatch) -------------------------------------------------

def token_figures(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, eps: float = PPO_EPS) -> dict:
    """The token- and sequence-level figures of one set of sequences: counts, mean and max |δ|, k3 = mean
    exp(δ) − 1 − δ, mean and variance of δ (population), and ``sampler_diagnostics``' four."""
    delta = token_logratios(old_logp, mu, mask)[mask]
    n = delta.numel()
    out = {"n_seqs": int(mask.any(dim=1).sum()), "n_tokens": n}
    if n:
        out.update(mean_abs_dlogp=float(delta.abs().mean()), max_abs_dlogp=float(delta.abs().max()),
                   k3=float((torch.expm1(delta) - delta).mean()), dlogp_mean=float(delta.mean()),
                   dlogp_var=float(delta.var(correction=0)))
    else:
        out.update(dict.fromkeys(("mean_abs_dlogp", "max_abs_dlogp", "k3", "dlogp_mean", "dlogp_var"), math.nan))
    out.update(sampler_diagnostics(old_logp, mu, mask, eps))
    out["clip_frac"] = out.pop("clip_frac_sampler")
    return out


def _prefix_mask(mask: torch.Tensor) -> torch.Tensor:
    """Whether every row's sampled tokens are its first ones (EOS ends a response; nothing is sampled after)."""
    lengths = mask.sum(dim=1, keepdim=True)
    return torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths)


def prefix_figures(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, length: int,
                   eps: float = PPO_EPS) -> dict:
    """``token_figures`` of the first ``length`` tokens of every sequence that reaches ``length`` tokens: the
    cumulative log-ratio at position ``length``, as the paper's length figure reads."""
    if not _prefix_mask(mask):
        raise ValueError("mask must be True on a prefix of each row (the sampled tokens up to EOS)")
    rows = mask.sum(dim=1) >= length
    return token_figures(old_logp[rows, :length], mu[rows, :length], mask[rows, :length], eps)


def length_bin_figures(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, low: int, high: int,
                       eps: float = PPO_EPS) -> dict:
    """``token_figures`` of the whole sequences whose actual length lies in (low, high]."""
    n = mask.sum(dim=1)
    rows = (n > low) & (n <= high)
    return token_figures(old_logp[rows], mu[rows], mask[rows], eps)


def cumulative_logratio(old_logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> tuple[list, list]:
    """For t = 1..N: the mean over the sequences that reach t tokens of Σ_{s<t} δ_s, and how many reach t.

    A position no sequence reaches gives NaN and 0."""
    if not _prefix_mask(mask):
        raise ValueError("mask must be True on a prefix of each row (the sampled tokens up to EOS)")
    cum = token_logratios(old_logp, mu, mask).cumsum(dim=1)
    reach = mask.sum(dim=0)
    total = torch.where(mask, cum, torch.zeros_like(cum)).sum(dim=0)
    mean = torch.where(reach > 0, total / reach.clamp_min(1), torch.full_like(total, math.nan))
    return mean.tolist(), reach.tolist()


def fit_slope(curve: list[float], reach: list[int], min_seqs: int = 2) -> dict:
    """Least-squares line y = a + b·t through the curve's points t = 1.. reached by ``min_seqs`` sequences or more.

    Returns ``slope_nats_per_1k`` (1000·b), ``intercept`` (a), ``r2`` and ``n_points``; NaN with under two points.
    """
    pts = [(t + 1, y) for t, (y, r) in enumerate(zip(curve, reach)) if r >= min_seqs and math.isfinite(y)]
    if len(pts) < 2:
        return {"slope_nats_per_1k": math.nan, "intercept": math.nan, "r2": math.nan, "n_points": len(pts)}
    t = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    tc, yc = t - t.mean(), y - y.mean()
    b = float((tc * yc).sum() / (tc * tc).sum())
    a = float(y.mean()) - b * float(t.mean())
    ss_tot = float((yc * yc).sum())
    ss_res = float(((y - a - b * t) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"slope_nats_per_1k": 1000.0 * b, "intercept": a, "r2": r2, "n_points": len(pts)}
