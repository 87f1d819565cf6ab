"""The base of every verifiable task (``Task``), the response mask a reward reads, and the character rule.

``rl.tasks`` holds the digit tasks and the tasks in words, ``rl.long_task`` the long-response task; both
build on ``Task`` here (the module doc of ``rl.tasks`` describes the layout and the rewards).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Task(ABC):
    """A verifiable task: fixed-width prompts, a unique correct answer, exact rewards.

    Subclasses set ``name``, ``prompt_len``, ``answer_len`` and the tokenizer, and
    implement ``_sample_problems`` (random prompts) and ``solve`` (the answer digits).
    """

    name: str
    prompt_len: int
    answer_len: int
    tokenizer: Any  # vocab_size, eos_id, pad_id, decode (and encode): rl.tasks.Tokenizer, rl.long_task's

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def max_new_tokens(self) -> int:
        """Response length a rollout needs: the answer digits plus EOS."""
        return self.answer_len + 1

    @property
    def seq_len(self) -> int:
        """Length of a teacher-forced sequence (prompt, answer, EOS)."""
        return self.prompt_len + self.answer_len + 1

    @abstractmethod
    def _sample_problems(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random prompts, int64 (n, prompt_len)."""

    @abstractmethod
    def solve(self, prompts: torch.Tensor) -> torch.Tensor:
        """The correct answer digits for each prompt, int64 (n, answer_len)."""

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh random problems (repeats possible): ``(prompts, answers)``."""
        prompts = self._sample_problems(n, generator)
        return prompts, self.solve(prompts)

    def make_dataset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed set of ``n`` distinct prompts, the same for the same seed on every machine.

        Returns ``(prompts (n, prompt_len), answers (n, answer_len))``, int64 on CPU.
        """
        g = torch.Generator().manual_seed(seed)
        seen: set[tuple[int, ...]] = set()
        rows: list[torch.Tensor] = []
        while len(rows) < n:
            for row in self._sample_problems(n, g):
                key = tuple(row.tolist())
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    if len(rows) == n:
                        break
        prompts = torch.stack(rows) if rows else torch.empty(0, self.prompt_len, dtype=torch.long)
        return prompts, self.solve(prompts)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        """Answer digits followed by EOS: the ``max_new_tokens`` tokens a perfect response holds."""
        eos = torch.full((answers.shape[0], 1), self.eos_id, dtype=torch.long, device=answers.device)
        return torch.cat([answers, eos], dim=1)

    def teacher_forcing(self, prompts: torch.Tensor, answers: torch.Tensor | None = None) -> torch.Tensor:
        """Whole sequences prompt + answer + EOS, int64 (n, seq_len), for supervised warm-up.

        The model predicts token ``t+1`` from positions ``..t``; the supervised
        positions are the last ``max_new_tokens`` targets (see ``warmup``).
        """
        if answers is None:
            answers = self.solve(prompts)
        return torch.cat([prompts, self.targets(answers)], dim=1)

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor | None = None,
               partial: bool = True) -> torch.Tensor:
        """Exact reward per row, fp32 (B,).

        ``responses`` are the generated tokens after the prompt, (B, N) with any N;
        ``mask`` (B, N) bool marks the sampled tokens (True up to and including the
        first EOS). Without a mask, tokens after the first EOS are ignored.
        The target is the ``answer_len`` digits plus EOS; see the module docstring.
        """
        responses = responses.long()
        if mask is None:
            mask = response_mask(responses, self.eos_id)
        if responses.shape != mask.shape:
            raise ValueError(f"responses {tuple(responses.shape)} and mask {tuple(mask.shape)} differ")
        target = self.targets(self.solve(prompts.to(responses.device)))
        L, N = target.shape[1], responses.shape[1]
        if N < L:  # too short to hold the target: missing positions count as wrong
            pad = (0, L - N)
            responses = torch.nn.functional.pad(responses, pad, value=self.pad_id)
            mask = torch.nn.functional.pad(mask, pad, value=False)
        correct = (responses[:, :L] == target) & mask[:, :L].bool()
        if partial:
            return correct.float().mean(dim=1)
        return correct.all(dim=1).float()

    def accuracy(self, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        """Fraction of rows whose whole answer (digits and EOS) is right."""
        return float(self.reward(prompts, responses, mask, partial=False).mean()) if len(prompts) else 0.0

    # ---- formatting helpers -------------------------------------------------------------

    def format_prompt(self, text: str) -> torch.Tensor:
        """Encode one prompt string such as ``"402917="`` (the ``=`` may be omitted)."""
        if not text.endswith("="):
            text += "="
        ids = self.tokenizer.encode(text)
        if len(ids) != self.prompt_len:
            raise ValueError(f"{self.name} prompts are {self.prompt_len} tokens wide, got {text!r}")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        """Decode one row of ids to text, by default up to the first EOS."""
        return self.tokenizer.decode(ids, stop_at_eos=stop_at_eos)

    # ---- in words (any tokenizer) ---------------------------------------------------------

    @property
    def text_max_new_tokens(self) -> int:
        """Response tokens a rollout in words may take: the answer, EOS and one spare (a tokenizer may split)."""
        return self.answer_len + 2

    def text_problems(self, n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
        """``make_dataset``'s prompts as one user message each (their characters), with the answer text."""
        prompts, answers = self.make_dataset(n, seed)
        return [([{"role": "user", "content": self.decode(p, stop_at_eos=False)}], self.decode(a, stop_at_eos=False))
                for p, a in zip(prompts, answers)]

    def text_reward(self, answer: str, text: str, stopped: bool, partial: bool = True) -> float:
        """``reward``'s rule over characters (module doc); ``stopped``: the response ended with EOS."""
        return text_reward(answer, text, stopped, partial)

    def describe(self, prompt: torch.Tensor, response: torch.Tensor | None = None) -> str:
        """``"402917= -> 719204"`` for logs; the correct answer when no response is given."""
        if response is None:
            response = self.solve(prompt[None])[0]
        return f"{self.decode(prompt)} -> {self.decode(response)}"


def response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True up to and including the first EOS of each row (everything when there is none)."""
    is_eos = responses == eos_id
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS seen strictly before t
    return before == 0


def text_reward(answer: str, text: str, stopped: bool, partial: bool = True) -> float:
    """Characters of ``answer`` in place in ``text`` (whitespace-stripped), then the stop: right / (len + 1)."""
    got = text.strip()
    right = sum(a == b for a, b in zip(answer, got)) + (stopped and len(got) == len(answer))
    return right / (len(answer) + 1) if partial else float(right == len(answer) + 1)
