"""The one interface the RL loop asks of a model: ``Policy``, which TinyGPT and a Hugging Face LM both implement.

``rl.sampler`` (the one KV-cache sampling loop and the one greedy decode), ``rl.learner`` (the
fused log-prob score and the learner pass) and ``rl.train`` see only this protocol; the policy
decides how its numerics run (``numerics``) and how a run starts (``start``). ``rl.policies``
builds the policy ``--model`` names.

Layout: prompts may be left-padded to one width (an HF prompt set); ``prompt_mask`` (B, P) says
which prompt positions are real, and the positions after the prompt are all real. TinyGPT's
prompts share one length, so it takes only an all-ones mask (``check_full_prompts``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Policy(Protocol):
    """What sampler, learner and training loop ask of a model (an ``nn.Module`` holding the fp32 master weights)."""

    cfg: Any  # a dataclass: what the run's summary says about the model

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seq_len(self) -> int | None:
        """Positions the model can attend over (None: no limit)."""

    @property
    def device(self) -> torch.device: ...

    def numerics(self, profile: str = "matched", *, audit: bool = False) -> contextlib.AbstractContextManager:
        """The context every pass of this policy runs in, in kernel profile ``profile``; it yields the matched
        mode's report where the policy runs under the mode with ``audit``, else None."""

    def at_precision(self, precision: str) -> Policy:
        """The same policy (the same fp32 master weights) at compute precision ``precision``: a sampler apart from
        the learner."""

    def compute_weights(self, linear_precision: str | None = "model") -> dict[str, torch.Tensor]:
        """The weights in the compute precision, ``lm_head.weight`` among them (rounded from the fp32 masters)."""

    def hidden_states(self, tokens: torch.Tensor, weights: dict | None = None,
                      prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final normed hidden states (B, T, d) of a full causal pass in the head precision (the learner's)."""

    def new_cache(self, batch: int) -> Any:
        """An empty KV cache for ``batch`` sequences; its ``length`` counts the positions it holds."""

    def prefill(self, prompts: torch.Tensor, cache: Any, weights: dict,
                prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompts (B, P), fill the cache; the last position's hidden state (B, d)."""

    def decode(self, tokens: torch.Tensor, cache: Any, weights: dict) -> torch.Tensor:
        """One step for ``tokens`` (B,) after the cache; their hidden states (B, d)."""

    def start(self, task, prompts, *, dist, log, target: float, seed: int) -> dict:
        """Make a new run's policy ready for RL (TinyGPT: the supervised warm-up towards greedy accuracy
        ``target``); returns the warm-up record the checkpoint and the summary keep."""


@dataclass
class Setup:
    """What ``rl.policies.build_policy`` gives a run: the task view, the policy and the run's prompt set."""

    task: Any      # rl.task_views.IdTask or TextTask
    policy: Policy
    prompts: Any   # rl.task_views.PromptSet


def check_full_prompts(prompt_mask: torch.Tensor | None, tokens: torch.Tensor) -> None:
    """A model without left padding takes no prompt mask, or ones over a prefix of ``tokens`` (B, T)."""
    if prompt_mask is None:
        return
    B, T = tokens.shape
    if prompt_mask.dim() != 2 or prompt_mask.shape[0] != B or prompt_mask.shape[1] > T or not bool(prompt_mask.all()):
        raise ValueError(f"prompt_mask must be all ones, (batch {B}, prompt length <= {T}): this model's prompts "
                         f"share one length (no padding), got shape {tuple(prompt_mask.shape)}"
                         f"{'' if prompt_mask.numel() == 0 or bool(prompt_mask.all()) else ' with zeros'}")
