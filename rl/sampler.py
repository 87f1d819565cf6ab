"""The sampler: batched KV-cache decoding whose tokens and log-probs come from ``pk.linear_sample``.

Each step draws every sequence's next token by Gumbel-max over ``logit / T`` inside the
fused LM-head kernel and reports that token's log-prob from the same kernel code the
learner scores with (invariant I5), so in the matched profile
``sequence_logprobs(model, ro.tokens, P, T)[ro.mask]`` equals ``ro.logprobs[ro.mask]`` bitwise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import precision_kernels as pk

from .model import TinyGPT


class Rollout(NamedTuple):
    tokens: torch.Tensor    # (B, P+N) int64: prompt, then sampled tokens; pad id after EOS
    logprobs: torch.Tensor  # (B, N) fp32: sampler log-prob of each sampled token; 0.0 after EOS
    mask: torch.Tensor      # (B, N) bool: True up to and including EOS


@torch.no_grad()
def generate(model: TinyGPT, prompts: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             generator: torch.Generator | None = None, profile: str = "matched", eos_id: int | None = None,
             pad_id: int | None = None) -> Rollout:
    """Sample ``max_new_tokens`` tokens after each prompt (all prompts share one length).

    A sequence stops after it samples ``eos_id``; EOS is a real action (mask True, its
    log-prob kept). After it come ``pad_id`` tokens (``eos_id`` when not given) with
    log-prob 0.0 and mask False. With ``profile="engine"`` every sampler kernel runs in
    the engine profile. Reproducible given ``generator``.
    """
    if prompts.dim() != 2 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty (batch, prompt_len) tensor, got {tuple(prompts.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B, P = prompts.shape
    if P + max_new_tokens > model.cfg.max_seq_len + 1:
        raise ValueError(f"prompt_len {P} + max_new_tokens {max_new_tokens} needs more than max_seq_len "
                         f"{model.cfg.max_seq_len} positions")
    pad = eos_id if pad_id is None else pad_id
    tokens = torch.full((B, P + max_new_tokens), pad if pad is not None else 0, dtype=torch.int64,
                        device=prompts.device)
    tokens[:, :P] = prompts
    logprobs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=prompts.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    alive = torch.ones(B, dtype=torch.bool, device=prompts.device)

    with pk.use_profile(profile):
        weights = model.compute_weights()
        head = weights["lm_head.weight"]
        cache = model.new_cache(B)
        h = model.prefill(prompts, cache, weights)
        for t in range(max_new_tokens):
            drawn, lp = pk.linear_sample(h, head, temperature, generator=generator)
            tokens[:, P + t] = torch.where(alive, drawn, tokens[:, P + t])
            logprobs[:, t] = torch.where(alive, lp, torch.zeros_like(lp))
            mask[:, t] = alive
            if eos_id is not None:
                alive = alive & (drawn != eos_id)
            if t + 1 == max_new_tokens or not alive.any():
                break
            h = model.decode(tokens[:, P + t], cache, weights)
    return Rollout(tokens, logprobs, mask)


@torch.no_grad()
def greedy(model: TinyGPT, prompts: torch.Tensor, max_new_tokens: int, eos_id: int,
           pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding on the kernels (argmax of ``pk.linear`` logits): ``(responses (B, N), mask (B, N))``."""
    B, P = prompts.shape
    pad = eos_id if pad_id is None else pad_id
    responses = torch.full((B, max_new_tokens), pad, dtype=torch.int64, device=prompts.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    alive = torch.ones(B, dtype=torch.bool, device=prompts.device)
    weights = model.compute_weights()
    cache = model.new_cache(B)
    h = model.prefill(prompts, cache, weights)
    for t in range(max_new_tokens):
        drawn = pk.linear(h, weights["lm_head.weight"]).argmax(-1)
        responses[:, t] = torch.where(alive, drawn, responses[:, t])
        mask[:, t] = alive
        alive = alive & (drawn != eos_id)
        if t + 1 == max_new_tokens or not alive.any():
            break
        h = model.decode(responses[:, t], cache, weights)
    return responses, mask
