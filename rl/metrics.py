"""Training-inference mismatch between the sampler (μ) and the learner (π_old), per step.

All statistics are over the sampled tokens (``mask`` True) and computed in float64 from
the fp32 log-probs. With δ_t = π_old − μ (learner minus sampler log-prob of token y_t):

token level (means over the N_tok sampled tokens)
    mean_abs_dlogp, max_abs_dlogp   mean and max |δ_t|
    frac_tokens_differ              fraction of tokens whose fp32 log-probs differ bitwise
    k1 = mean(μ − π_old) = mean(−δ)                      (KL(μ‖π_old) estimators, samples from μ)
    k2 = mean(½ δ²)
    k3 = mean(exp(δ) − 1 − δ)
sequence level (means over sequences with at least one sampled token; Δ_i = Σ_t δ_t)
    seq_k1 = mean(−Δ_i), seq_k2 = mean(½ Δ_i²), seq_k3 = mean(exp(Δ_i) − 1 − Δ_i),
    seq_max_abs_dlogp = max |Δ_i|
probabilities of the chosen token (p = exp(log p))
    rel_rms_prob   sqrt(Σ (p_π_old − p_μ)² / Σ p_π_old²)       relative RMS error of p
    rel_rms_logp   sqrt(Σ δ² / Σ π_old²)                         the same on log-probs
                   (0 when both are all zero, inf when only the reference is)
    dp_p50, dp_p90, dp_p99, dp_max   quantiles of |p_π_old − p_μ|
counts
    n_tokens, n_seqs

A matched sampler/learner pair gives 0 for every mismatch statistic. Under torchrun,
``reduce_mismatch`` combines the ranks' figures.
The step's other figures (reward, accuracy, entropy, grad norm, loss scale, skipped
steps) belong to the trainer (``rl.train``), which writes them beside these.
"""

from __future__ import annotations

import math

import torch

from .distributed import Dist

_QUANTILES = {"dp_p50": 0.5, "dp_p90": 0.9, "dp_p99": 0.99}
MISMATCH_KEYS = (
    "mean_abs_dlogp", "max_abs_dlogp", "frac_tokens_differ", "k1", "k2", "k3",
    "seq_k1", "seq_k2", "seq_k3", "seq_max_abs_dlogp", "rel_rms_prob", "rel_rms_logp",
    "dp_p50", "dp_p90", "dp_p99", "dp_max", "n_tokens", "n_seqs",
)


def bitwise_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise "not bitwise equal" for float tensors of the same dtype (−0 ≠ +0, NaN == same NaN)."""
    if a.dtype != b.dtype:
        raise ValueError(f"bitwise comparison needs equal dtypes, got {a.dtype} and {b.dtype}")
    int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return a.contiguous().view(int_dtype) != b.contiguous().view(int_dtype)


def _rel_rms(err_sq_sum: float, ref_sq_sum: float) -> float:
    if ref_sq_sum > 0:
        return math.sqrt(err_sq_sum / ref_sq_sum)
    return 0.0 if err_sq_sum == 0 else math.inf


def mismatch_metrics(mu: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mismatch statistics between sampler log-probs ``mu`` and learner ``old_logp`` (see module doc).

    ``mu``, ``old_logp``: (B, N) float (normally fp32); ``mask``: (B, N) bool.
    Returns a dict of Python floats with the keys ``MISMATCH_KEYS``; all zeros when
    nothing is sampled.
    """
    if mu.shape != old_logp.shape or mu.shape != mask.shape:
        raise ValueError(f"shapes differ: mu {tuple(mu.shape)}, old_logp {tuple(old_logp.shape)}, "
                         f"mask {tuple(mask.shape)}")
    m = mask.bool()
    n_tok = int(m.sum())
    out = dict.fromkeys(MISMATCH_KEYS, 0.0)
    if n_tok == 0:
        return out
    mu_d, pi_d = mu.detach(), old_logp.detach()
    differ = bitwise_differ(mu_d[m], pi_d[m])
    a, b = mu_d.double(), pi_d.double()
    delta_full = torch.where(m, b - a, torch.zeros((), dtype=torch.float64))
    delta = delta_full[m]
    abs_d = delta.abs()

    out["n_tokens"] = float(n_tok)
    out["mean_abs_dlogp"] = float(abs_d.mean())
    out["max_abs_dlogp"] = float(abs_d.max())
    out["frac_tokens_differ"] = float(differ.double().mean())
    out["k1"] = float((-delta).mean())
    out["k2"] = float((0.5 * delta**2).mean())
    out["k3"] = float(torch.expm1(delta).sub(delta).mean())

    has_tok = m.any(dim=1)
    seq = delta_full.sum(dim=1)[has_tok]
    out["n_seqs"] = float(seq.numel())
    out["seq_k1"] = float((-seq).mean())
    out["seq_k2"] = float((0.5 * seq**2).mean())
    out["seq_k3"] = float(torch.expm1(seq).sub(seq).mean())
    out["seq_max_abs_dlogp"] = float(seq.abs().max())

    p_mu, p_pi = a[m].exp(), b[m].exp()
    dp = (p_pi - p_mu).abs()
    out["rel_rms_prob"] = _rel_rms(float((dp**2).sum()), float((p_pi**2).sum()))
    out["rel_rms_logp"] = _rel_rms(float((delta**2).sum()), float((b[m] ** 2).sum()))
    qs = torch.quantile(dp, torch.tensor(list(_QUANTILES.values()), dtype=torch.float64))
    for key, q in zip(_QUANTILES, qs.tolist()):
        out[key] = float(q)
    out["dp_max"] = float(dp.max())
    return out


def reduce_mismatch(m: dict[str, float], dist: Dist) -> dict[str, float]:
    """The ranks' ``mismatch_metrics`` combined: counts summed, maxima maxed, the rest weighted means.

    Token-level figures are weighted by the rank's token count, sequence-level ones (``seq_*``)
    by its sequence count; the quantiles ``dp_p*`` become the token-weighted mean of the ranks'
    quantiles (an approximation); ``rel_rms_*`` likewise.
    """
    if not dist.active:
        return m
    maxima = [k for k in MISMATCH_KEYS if "max" in k]
    counts = ["n_tokens", "n_seqs"]
    rest = [k for k in MISMATCH_KEYS if k not in maxima and k not in counts]
    n_tok, n_seq = dist.sum(m["n_tokens"], m["n_seqs"])
    weights = [m["n_seqs"] if k.startswith("seq_") else m["n_tokens"] for k in rest]
    sums = dist.sum(*(m[k] * w for k, w in zip(rest, weights)))
    out = {k: v / ((n_seq if k.startswith("seq_") else n_tok) or 1.0) for k, v in zip(rest, sums)}
    out.update(zip(maxima, dist.max(*(m[k] for k in maxima))))
    out.update(n_tokens=n_tok, n_seqs=n_seq)
    return {k: out[k] for k in MISMATCH_KEYS}


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None, in dicts, lists and tuples (as lists).

    JSON has no NaN or Infinity (``json.dumps`` writes them, but strict readers refuse them): the run's
    files and the benchmarks' JSON write null for a figure that is not finite (an accuracy never
    evaluated, a loss that overflowed, an infinite ratio), and ``json.dumps(..., allow_nan=False)``
    then checks that none is left.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# The same mismatch under the names other RL stacks log, over the same sampled tokens.
# verl: training/rollout_probs_diff_* are |p_learner - p_sampler| (its torch.std is Bessel-corrected),
# rollout_corr/kl and rollout_corr/k3_kl are our k1 and k3. TRL: sampling/sampling_logp_difference/* are
# |delta| (our mean_abs_dlogp, max_abs_dlogp); sampling/importance_sampling_ratio/* are exp(delta) per token
# before any cap (TRL logs its ratio after vllm_importance_sampling_cap, so the two agree below the cap).
DASHBOARD_KEYS = (
    "training/rollout_probs_diff_mean", "training/rollout_probs_diff_max", "training/rollout_probs_diff_std",
    "rollout_corr/kl", "rollout_corr/k3_kl",
    "sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)


def dashboard_metrics(mu: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """verl's and TRL's mismatch figures (``DASHBOARD_KEYS``) of one step, in float64, from this process's tokens.

    Arguments as ``mismatch_metrics``'. With no sampled token every figure is NaN; with one, the std is NaN
    (as torch.std gives verl). Not reduced over ranks: a std does not combine from the ranks' figures.
    """
    if mu.shape != old_logp.shape or mu.shape != mask.shape:
        raise ValueError(f"shapes differ: mu {tuple(mu.shape)}, old_logp {tuple(old_logp.shape)}, "
                         f"mask {tuple(mask.shape)}")
    m = mask.bool()
    if not m.any():
        return dict.fromkeys(DASHBOARD_KEYS, float("nan"))
    a, b = mu.detach().double()[m], old_logp.detach().double()[m]
    delta = b - a
    dp, ratio = (b.exp() - a.exp()).abs(), delta.exp()
    values = (dp.mean(), dp.max(), dp.std() if dp.numel() > 1 else float("nan"), (-delta).mean(),
              (torch.expm1(delta) - delta).mean(), delta.abs().mean(), delta.abs().max(), ratio.min(),
              ratio.mean(), ratio.max())
    return {k: float(v) for k, v in zip(DASHBOARD_KEYS, values)}
