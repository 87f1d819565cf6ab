"""The rollout record every decoder returns and the learner consumes (plain PyTorch, no imports from rl)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Rollout(NamedTuple):
    tokens: torch.Tensor    # (B, P+N) int64: prompt, then sampled tokens; pad id after EOS
    logprobs: torch.Tensor  # (B, N) fp32: sampler log-prob of each sampled token; 0.0 after EOS
    mask: torch.Tensor      # (B, N) bool: True up to and including EOS
