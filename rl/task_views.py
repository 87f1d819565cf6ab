"""The tasks as a policy trains on them: a run's prompt set, and each task's view for one kind of model.

``PromptSet``: prompts left-padded to one width, the mask of their real positions (never
``tokens != pad``: a chat model's pad is its EOS) and, for a task in words, the answers.

A task view (``rl.tasks`` underneath) makes the run's prompt set and scores responses:

* ``IdTask``: a synthetic task in its own token ids (TinyGPT, or an HF model without a
  tokenizer): fixed-width prompts, a mask of ones;
* ``TextTask``: a task put to a tokenizer: prompt texts in the chat template where the
  tokenizer has one, left-padded; responses decoded and scored as text.

Both give ``eos_id``, ``pad_id``, ``max_new_tokens``, ``prompt_set(n, seed, device)``,
``reward(prompts, responses, mask, partial)`` and ``n_right`` (the greedy evaluation's count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tasks import Task, get_any_task


@dataclass
class PromptSet:
    """Left-padded prompts ``ids`` (n, P), their ``mask`` (n, P) and, for a task in words, the answers."""

    ids: torch.Tensor
    mask: torch.Tensor
    answers: list[str] | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def __getitem__(self, rows) -> PromptSet:
        picked = torch.arange(len(self))[rows].tolist()
        return PromptSet(self.ids[rows], self.mask[rows],
                         None if self.answers is None else [self.answers[i] for i in picked])

    def repeat(self, k: int) -> PromptSet:
        """Each prompt ``k`` times in a row (a prompt group)."""
        return self[torch.arange(len(self)).repeat_interleave(k)]


class TextTask:
    """A task put to a tokenizer: prompt texts (in the chat template where the tokenizer has one), text answers."""

    def __init__(self, name: str, tokenizer, **options) -> None:
        self.task, self.tokenizer = get_any_task(name, **options), tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = self.eos_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.max_new_tokens = self.task.text_max_new_tokens

    def prompt_set(self, n: int, seed: int, device: torch.device) -> PromptSet:
        chats, answers = zip(*self.task.text_problems(n, seed))
        tok = self.tokenizer
        if tok.chat_template:
            texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chats]
        else:
            texts = ["\n".join(m["content"] for m in c) for c in chats]
        rows = [tok(t, add_special_tokens=not tok.chat_template)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return PromptSet(ids.to(device), mask.to(device), list(answers))

    def reward(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor, partial: bool) -> torch.Tensor:
        """The task's text reward of each decoded response (up to its EOS; ``stopped`` when it sampled one)."""
        out = []
        for answer, row, m in zip(prompts.answers, responses.tolist(), mask.tolist()):
            drawn = [t for t, keep in zip(row, m) if keep]
            stopped = bool(drawn) and drawn[-1] == self.eos_id
            text = self.tokenizer.decode(drawn[:-1] if stopped else drawn, skip_special_tokens=False)
            out.append(self.task.text_reward(answer, text, stopped, partial))
        return torch.tensor(out, dtype=torch.float32, device=responses.device)

    def n_right(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor) -> float:
        """How many responses earn the binary reward."""
        return float(self.reward(prompts, responses, mask, partial=False).sum())


class IdTask:
    """A synthetic task in its own token ids: fixed-width prompts (no padding), the task's exact reward."""

    def __init__(self, name: str, **options) -> None:
        self.task: Task = get_any_task(name, **options)
        self.eos_id, self.pad_id, self.max_new_tokens = self.task.eos_id, self.task.pad_id, self.task.max_new_tokens

    def prompt_set(self, n: int, seed: int, device: torch.device) -> PromptSet:
        ids = self.task.make_dataset(n, seed=seed)[0].to(device)
        return PromptSet(ids, torch.ones_like(ids))

    def reward(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor, partial: bool) -> torch.Tensor:
        return self.task.reward(prompts.ids, responses, mask, partial=partial)

    def n_right(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor) -> float:
        """How many responses are wholly right, as the task's accuracy (a fraction) times their number."""
        return self.task.accuracy(prompts.ids, responses, mask) * len(prompts)
