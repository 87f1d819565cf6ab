"""The one greedy decoder: argmax until EOS, with the Rollout conventions (plain PyTorch).

``rl.sampler.greedy`` runs it on the kernels with a KV cache; ``rl.warmup`` (and through it
the plain-torch baseline) on a full-sequence logits function. It imports nothing from
precision_kernels, so the warm-up stays plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NextLogits = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def greedy_decode(next_logits: NextLogits, prompts: torch.Tensor, max_new_tokens: int, eos_id: int,
                  pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax decoding until EOS: ``(responses (B, max_new_tokens), mask (B, max_new_tokens))``.

    ``next_logits(seq)`` gets every token so far, (B, t) int64 (prompts, then the responses
    with ``pad_id`` after a row's EOS), and returns the next position's logits (B, V); a
    KV-cache implementation feeds only the tokens it has not seen. Rollout conventions:
    mask True up to and including EOS, ``pad_id`` (default ``eos_id``) after it. Stops
    early once every row has emitted EOS.
    """
    B, P = prompts.shape
    pad = eos_id if pad_id is None else pad_id
    seq = torch.full((B, P + max_new_tokens), pad, dtype=torch.int64, device=prompts.device)
    seq[:, :P] = prompts
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    alive = torch.ones(B, dtype=torch.bool, device=prompts.device)
    for t in range(max_new_tokens):
        drawn = next_logits(seq[:, :P + t]).argmax(-1)
        seq[:, P + t] = torch.where(alive, drawn, seq[:, P + t])
        mask[:, t] = alive
        alive = alive & (drawn != eos_id)
        if not alive.any():
            break
    return seq[:, P:], mask
