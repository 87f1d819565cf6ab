"""FP64 oracles: each op computed in float64 from the same (already rounded) inputs.

Results stay float64; compare with ``numerics.error_summary``, which rounds them correctly.
"""

from __future__ import annotations

import torch


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The exact value to be rounded: the FP64 copy of x (error_summary does the single rounding)."""
    return _f64(x)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(_f64(a), _f64(b))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.matmul(_f64(x), _f64(weight).transpose(-1, -2))
    return out if bias is None else out + _f64(bias)


def softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    # scale is applied to each input after rounding it to fp32, as the kernel does.
    return torch.softmax(_f64(x) * float(torch.tensor(scale, dtype=torch.float32)), dim=dim)


def log_softmax(x: torch.Tensor, dim: int = -1, scale: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(_f64(x) * float(torch.tensor(scale, dtype=torch.float32)), dim=dim)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x64 = _f64(x)
    return x64 * torch.rsqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps) * _f64(weight)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False):
    """log softmax(logits / T)[token] in FP64; T is first rounded to fp32 as the kernels use it."""
    t32 = float(torch.tensor(temperature, dtype=torch.float32))
    logp = torch.log_softmax(_f64(logits) / t32, dim=-1)
    chosen = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return chosen
    entropy = -(logp.exp() * torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)).sum(-1)
    return chosen, entropy


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                    temperature: float = 1.0, return_entropy: bool = False):
    """FP64 log-probs of the FP64 logits (no intermediate rounding of the logits)."""
    return token_logprobs(linear(hidden, weight), tokens, temperature, return_entropy)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """FP64 LayerNorm (biased variance); eps is first rounded to fp32, as the kernel uses it."""
    x64 = _f64(x)
    mean = x64.mean(dim=-1, keepdim=True)
    var = (x64 - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x64 - mean) * torch.rsqrt(var + float(torch.tensor(eps, dtype=torch.float32)))
    if weight is not None:
        y = y * _f64(weight)
    return y if bias is None else y + _f64(bias)
