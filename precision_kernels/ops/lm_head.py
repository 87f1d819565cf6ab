"""pk.linear_logprobs (SCORE) and pk.linear_sample (SAMPLE): the fused LM head.

Both launch ``lm_head_kernel`` with the active profile's tiles; in the engine profile a
call with few rows computes its logits with the engine's rounded split-K, as ``pk.linear``
would. The backward recomputes the logits tiles (``lm_head_dlogits_kernel``) one vocab
chunk of ``LM_HEAD_BWD_CHUNK`` columns at a time and multiplies them out with the
matmul kernels, always in the matched profile: grad_hidden = dlogits @ W and
grad_W = dlogits^T @ hidden. Across several chunks, grad_hidden is the fp32 sum of the
per-chunk products (each rounded to the compute format), added in chunk order.
"""

from __future__ import annotations

import math

import torch
import triton

from .. import profiles
from ..kernels.lm_head import lm_head_dlogits_kernel, lm_head_kernel
from ._common import (
    NATIVE_DOT,
    check_device,
    check_float,
    check_same_dtype,
    check_temperature,
    check_token_ids,
    check_token_range,
    kernel_view,
    kind,
    launch,
    logprob_outputs,
)
from .matmul import _k_chunk, _mm
from .rounding import round_to

# lm_head_kernel's MODE: score given tokens, or sample them.
SCORE, SAMPLE = 0, 1


def _rows(hidden: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (rows, d): a view where the strides allow (the kernel takes any strides); d may be 0."""
    return hidden.reshape(math.prod(hidden.shape[:-1]), hidden.shape[-1])


def _check_head(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    check_float("hidden", hidden)
    check_float("weight", weight)
    check_same_dtype(hidden=hidden, weight=weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be (vocab, d) 2-D, got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension must equal weight's d = {weight.shape[1]}, "
                         f"got hidden of shape {tuple(hidden.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary")


def _launch(h2: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, seeds: torch.Tensor | None,
            temperature: float, mode: int, with_entropy: bool):
    m, k = h2.shape
    v = weight.shape[0]
    cfg = profiles.lm_head_config(h2.dtype)
    splits = profiles.engine_splits_for(m)
    logprob, entropy, row_max, row_sum = logprob_outputs(m, with_entropy, h2.device)
    if m:
        hv, wv = kernel_view(h2), kernel_view(weight)
        grid = (triton.cdiv(m, cfg.block_m),)
        launch(
            lm_head_kernel, grid,
            hv, wv, tokens, seeds if seeds is not None else tokens, logprob,
            entropy if with_entropy else logprob, row_max, row_sum,
            m, v, k, _k_chunk(k, splits), hv.stride(0), hv.stride(1), wv.stride(0), wv.stride(1),
            float(temperature),
            config=cfg, MODE=mode, KIND=kind(h2.dtype), SPLITS=splits, NATIVE_DOT=NATIVE_DOT,
            WITH_ENTROPY=with_entropy, BLOCK_M=cfg.block_m, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
        )
    return logprob, entropy, row_max, row_sum


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, with_entropy):
        lead = hidden.shape[:-1]
        h2 = _rows(hidden)
        t = tokens
        check_token_range("tokens", t, weight.shape[0])
        logprob, entropy, row_max, row_sum = _launch(h2, weight, t, None, temperature, SCORE, with_entropy)
        ctx.save_for_backward(h2, weight, t, entropy, row_max, row_sum)
        ctx.temperature, ctx.with_entropy, ctx.lead = temperature, with_entropy, lead
        if with_entropy:
            return logprob.view(lead), entropy.view(lead)
        return logprob.view(lead)

    @staticmethod
    def backward(ctx, g_logprob, g_entropy=None):
        h2, weight, t, entropy, row_max, row_sum = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        m, k = h2.shape
        v = weight.shape[0]
        g_lp = (torch.zeros(m, device=h2.device) if g_logprob is None
                else g_logprob.reshape(-1).to(torch.float32).contiguous())
        has_ge = ctx.with_entropy and g_entropy is not None
        g_ent = g_entropy.reshape(-1).to(torch.float32).contiguous() if has_ge else g_lp
        with profiles.use_profile("matched"):
            cfg = profiles.lm_head_config(h2.dtype)
            chunk = triton.cdiv(profiles.LM_HEAD_BWD_CHUNK, cfg.block_v) * cfg.block_v
            grad_h32 = None
            grad_w = torch.empty_like(weight) if need_w else None
            hv, wv = kernel_view(h2), kernel_view(weight)
            for v0 in range(0, v, chunk):
                n = min(chunk, v - v0)
                dlogits = torch.empty((m, n), dtype=h2.dtype, device=h2.device)
                if m:
                    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_v))
                    launch(
                        lm_head_dlogits_kernel, grid,
                        hv, wv, t, g_lp, g_ent, entropy if has_ge else g_lp, row_max, row_sum, kernel_view(dlogits),
                        m, v, k, v0, n, hv.stride(0), hv.stride(1), wv.stride(0), wv.stride(1),
                        float(ctx.temperature),
                        config=cfg, KIND=kind(h2.dtype), NATIVE_DOT=NATIVE_DOT, HAS_G_ENTROPY=has_ge,
                        BLOCK_M=cfg.block_m, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
                    )
                w_chunk = weight[v0:v0 + n]
                if need_h:
                    part = _mm(dlogits, w_chunk)
                    grad_h32 = part if grad_h32 is None else (grad_h32.float() + part.float())
                if need_w:
                    grad_w[v0:v0 + n] = _mm(dlogits.t(), h2)
        grad_h = None
        if need_h:
            grad_h = round_to(grad_h32, h2.dtype) if grad_h32.dtype != h2.dtype else grad_h32
            grad_h = grad_h.view(*ctx.lead, k)
        return grad_h, grad_w, None, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                    return_entropy: bool = False):
    """Fused SCORE mode: log softmax(hidden @ weight^T / T)[tokens] in fp32, without materialising the logits.

    hidden (..., d) and weight (V, d) share a float dtype; tokens (...) are int ids in
    [0, V). The logits are rounded to the compute dtype exactly as ``pk.linear`` rounds
    them. Returns log-probs of shape (...), and with ``return_entropy`` also the entropy
    of the same distribution. Differentiable with respect to hidden and weight.
    """
    _check_head(hidden, weight)
    temperature = check_temperature(temperature)
    tokens = check_token_ids("tokens", tokens, hidden.shape[:-1])
    return _LinearLogprobs.apply(hidden, weight, tokens, temperature, bool(return_entropy))


def _check_seeds(seeds: object, leading_shape: torch.Size) -> torch.Tensor:
    """Per-row seeds: an int64 tensor of shape ``leading_shape`` on the backend's device -> flat, contiguous."""
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be a torch.Tensor of int64 seeds (one per row), got {type(seeds).__name__}")
    if seeds.dtype != torch.int64:
        raise TypeError(f"seeds must be int64 (one seed per row), got {seeds.dtype}")
    check_device("seeds", seeds)
    if seeds.shape != leading_shape:
        raise ValueError(f"seeds has shape {tuple(seeds.shape)}, expected one seed per row: {tuple(leading_shape)}")
    return seeds.reshape(-1).contiguous()


def _seeds_from_generator(generator: torch.Generator | None, rows: int, device: torch.device) -> torch.Tensor:
    """One int64 seed per row drawn from ``generator`` (torch's default generator when None)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device}, hidden on {device}")
    return torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator, dtype=torch.int64, device=device)


@torch.no_grad()
def linear_sample(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0, *,
                  seeds: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused SAMPLE mode: draw one token per row from softmax(hidden @ weight^T / T) by Gumbel-max.

    The Gumbel noise of (row r, vocab column v) is a pure function of (seeds[r], v),
    computed in the kernel with counter-based Philox4x32-10 (kernels/lm_head.py), and is
    added to the same fp32 values ``logit / T`` that the log-sum-exp sees. So a row with a
    given seed draws the same token, and reports the same log-prob, alone or inside any
    batch in any order, and no (rows x V) buffer is ever allocated.

    ``seeds``: int64, shape ``hidden.shape[:-1]`` (one seed per row), on the backend's
    device. Without ``seeds``, one seed per row is drawn from ``generator`` (a
    ``torch.Generator`` on the backend's device; torch's default generator when None).
    Passing both is an error.

    Returns ``(tokens int64 (...), logprobs fp32 (...))``; each log-prob is bitwise the
    one ``linear_logprobs`` gives for that token (I5). Every id is in [0, V): a row whose
    logits are all -inf gets token 0 with log-prob -inf, a row with a NaN or +inf logit
    (no distribution to sample) token 0 with log-prob NaN.
    """
    _check_head(hidden, weight)
    temperature = check_temperature(temperature)
    lead = hidden.shape[:-1]
    h2 = _rows(hidden)
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass seeds or generator, not both (seeds fix the noise; a generator draws seeds)")
        seeds = _check_seeds(seeds, lead)
    else:
        seeds = _seeds_from_generator(generator, h2.shape[0], hidden.device)
    tokens = torch.empty(h2.shape[0], dtype=torch.int64, device=hidden.device)
    logprob, _, _, _ = _launch(h2, weight, tokens, seeds, temperature, SAMPLE, False)
    return tokens.view(lead), logprob.view(lead)
