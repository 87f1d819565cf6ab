"""The sampler: batched KV-cache decoding whose tokens and log-probs come from ``pk.linear_sample``.

Each step draws every sequence's next token by Gumbel-max over ``logit / T`` inside the
fused LM-head kernel and reports that token's log-prob from the same kernel code the
learner scores with (invariant I5), so in the matched profile
``sequence_logprobs(model, ro.tokens, P, T)[ro.mask]`` equals ``ro.logprobs[ro.mask]`` bitwise.

``greedy`` runs the project's one greedy decoder (``rl.decoding.greedy_decode``) on the
kernels with the KV cache; ``rl.warmup`` and the plain-torch baseline run it on a
plain-torch logits function.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import precision_kernels as pk

from .decoding import greedy_decode
from .model import TinyGPT


class Rollout(NamedTuple):
    tokens: torch.Tensor    # (B, P+N) int64: prompt, then sampled tokens; pad id after EOS
    logprobs: torch.Tensor  # (B, N) fp32: sampler log-prob of each sampled token; 0.0 after EOS
    mask: torch.Tensor      # (B, N) bool: True up to and including EOS


def fp32_temperature_ok(temperature) -> bool:
    """The kernels' rule for a temperature: its fp32 value and that value's reciprocal are finite and > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return False
    t32 = torch.tensor(float(temperature), dtype=torch.float32)
    inv = 1.0 / t32
    return bool(torch.isfinite(t32) and t32 > 0 and torch.isfinite(inv) and inv > 0)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_decode_args(model: TinyGPT, prompts, max_new_tokens, eos_id, pad_id) -> None:
    """Validate a decode request before any work; errors name the argument.

    ``prompts``: an integer (B, P) tensor with B, P >= 1, on the model's device (the kernels'
    backend device), every id in [0, vocab_size) (a negative id would index from the end);
    ``max_new_tokens``: an int >= 1 with P + max_new_tokens - 1 <= max_seq_len (the last
    token is never fed back); ``eos_id``/``pad_id``: None or an int in [0, vocab_size).
    """
    V = model.cfg.vocab_size
    if not isinstance(prompts, torch.Tensor):
        raise TypeError(f"prompts must be a torch.Tensor of token ids, got {type(prompts).__name__}")
    if prompts.dtype == torch.bool or prompts.dtype.is_floating_point or prompts.dtype.is_complex:
        raise TypeError(f"prompts must be an integer tensor of token ids, got dtype {prompts.dtype}")
    if prompts.dim() != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty (batch, prompt_len) tensor, got shape {tuple(prompts.shape)}")
    model_device = model.tok_emb.weight.device
    if prompts.device != model_device or prompts.device.type != pk.backend.device().type:
        raise ValueError(f"prompts must be on the model's device {model_device} (the kernels' backend device "
                         f"{pk.backend.device()}), got {prompts.device}")
    low, high = int(prompts.min()), int(prompts.max())
    if low < 0 or high >= V:
        raise ValueError(f"prompts must hold token ids in [0, {V}), got ids in [{low}, {high}]")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    P = prompts.shape[1]
    if P + max_new_tokens - 1 > model.cfg.max_seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {P} tokens needs "
                         f"{P + max_new_tokens - 1} positions; max_seq_len is {model.cfg.max_seq_len}")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and (not _is_int(value) or not 0 <= value < V):
            raise ValueError(f"{name} must be None or an int in [0, {V}), got {value!r}")


@torch.no_grad()
def generate(model: TinyGPT, prompts: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             generator: torch.Generator | None = None, profile: str = "matched", eos_id: int | None = None,
             pad_id: int | None = None) -> Rollout:
    """Sample ``max_new_tokens`` tokens after each prompt (all prompts share one length).

    A sequence stops after it samples ``eos_id``; EOS is a real action (mask True, its
    log-prob kept). After it come ``pad_id`` tokens (``eos_id`` when not given) with
    log-prob 0.0 and mask False. With ``profile="engine"`` every sampler kernel runs in
    the engine profile. Reproducible given ``generator``. Arguments are checked first
    (``check_decode_args``; ``temperature`` by the kernels' fp32 rule).
    """
    check_decode_args(model, prompts, max_new_tokens, eos_id, pad_id)
    if not fp32_temperature_ok(temperature):
        raise ValueError(f"temperature must be a number whose fp32 value and reciprocal are finite and > 0, "
                         f"got {temperature!r}")
    B, P = prompts.shape
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
    """``greedy_decode`` on the kernels: KV cache, argmax of ``pk.linear`` logits. Arguments as ``generate``'s."""
    check_decode_args(model, prompts, max_new_tokens, eos_id, pad_id)
    if eos_id is None:
        raise ValueError("eos_id must be an int in [0, vocab_size), got None")
    weights = model.compute_weights()
    cache = model.new_cache(prompts.shape[0])

    def next_logits(seq: torch.Tensor) -> torch.Tensor:
        if cache.length == 0:
            h = model.prefill(seq, cache, weights)
        else:
            h = model.decode(seq[:, -1], cache, weights)
        return pk.linear(h, weights["lm_head.weight"])

    return greedy_decode(next_logits, prompts, max_new_tokens, eos_id, pad_id)
