"""A task with long responses and per-position credit, for the sequence-level mismatch (``--task long``).

The paper's effect grows with response length (a sequence's log-ratio is about −L·KL(μ‖π), its variance
L·σ²), so this task's response length is a parameter, 32 to 256 tokens, and every position earns its
own credit, so learning has a signal from the first step.

Tokens: ``symbols`` ordinary symbols (ids 0..symbols−1, settable: the LM head's share of the mismatch
grows with the vocabulary), then SEP, EOS and PAD; ``vocab_size = symbols + 3``. Each symbol belongs to
one of ``classes`` classes, its id modulo ``classes``.

    prompt    k = ``period`` random symbols, then SEP                          (P = period + 1)
    response  L = ``length`` symbols, then EOS                                 (max_new_tokens = L + 1)
    credit    position t < L: the symbol's class is that of prompt symbol t mod k; position L: EOS
    reward    partial: right positions / (L + 1); binary: 1.0 when all L + 1 are right

A response position counts only where ``mask`` is True (sampled, up to and including the first EOS):
an early EOS earns nothing at its position and loses every position after it; pads after EOS are
ignored. ``solve`` gives one right answer (the prompt's symbols repeated), what a warm-up imitates.

Getting a fresh TinyGPT into the paper's band of starting rewards (0.2 to 0.8): a uniform policy earns
1/``classes`` per position it reaches, but it samples EOS with probability 1/vocab_size at each step, so
at L = 256 most of its responses stop early and its mean reward is ``uniform_reward`` (about 0.06 with 64
symbols). ``warmup_score`` is the figure a warm-up stops on: the mean partial reward of responses
sampled at temperature 1 from the plain-torch fp32 model; a short supervised warm-up to 0.3 (rolled back
above 0.8, ``rl.warmup``) puts the run in the band whatever L and the vocabulary are.

In words (HF models with a chat template): ``text_problems`` asks to repeat a pattern of ``period``
words, separated by spaces, until L words are written; ``text_reward`` gives each of the L word positions
its credit (the word of the pattern at t mod k) and the stop one more, over L + 1.
"""

from __future__ import annotations

import math

import torch

from .task_base import Task, response_mask

LENGTHS = (32, 256)          # the response lengths this task takes, inclusive
WORDS = ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "star", "rain", "book")


class SymbolTokenizer:
    """``symbols`` symbol ids, then SEP, EOS and PAD; decodes a symbol as its id, SEP as ``|``."""

    def __init__(self, symbols: int) -> None:
        self.symbols = symbols
        self.sep_id, self.eos_id, self.pad_id = symbols, symbols + 1, symbols + 2
        self.vocab_size = symbols + 3

    def decode(self, ids, stop_at_eos: bool = False) -> str:
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
            if i == self.eos_id:
                out.append("$")
                if stop_at_eos:
                    break
            else:
                out.append("|" if i == self.sep_id else "_" if i == self.pad_id else str(i))
        return " ".join(out)


def _int_in(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int in {bound}, got {value!r}")
    return value


class LongTask(Task):
    """``length`` symbols whose classes follow the prompt's pattern, then EOS (module doc)."""

    def __init__(self, length: int = 64, symbols: int = 64, classes: int = 4, period: int = 4) -> None:
        self.length = _int_in("length", length, *LENGTHS)
        self.symbols = _int_in("symbols", symbols, 2)
        self.classes = _int_in("classes", classes, 2, self.symbols)
        self.period = _int_in("period", period, 1)
        self.name = "long"
        self.prompt_len, self.answer_len = self.period + 1, self.length
        self.tokenizer = SymbolTokenizer(self.symbols)

    def _sample_problems(self, n, generator):
        body = torch.randint(0, self.symbols, (n, self.period), generator=generator, dtype=torch.long)
        sep = torch.full((n, 1), self.tokenizer.sep_id, dtype=torch.long)
        return torch.cat([body, sep], dim=1)

    def solve(self, prompts):
        reps = -(-self.length // self.period)
        return prompts[:, :self.period].repeat(1, reps)[:, :self.length]

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor | None = None,
               partial: bool = True) -> torch.Tensor:
        """Per-position class credit and the EOS at position L, over L + 1 positions (module doc); fp32 (B,)."""
        responses = responses.long()
        if mask is None:
            mask = response_mask(responses, self.eos_id)
        if responses.shape != mask.shape:
            raise ValueError(f"responses {tuple(responses.shape)} and mask {tuple(mask.shape)} differ")
        L = self.length
        if responses.shape[1] < L + 1:  # too short to hold the answer: the missing positions are wrong
            pad = (0, L + 1 - responses.shape[1])
            responses = torch.nn.functional.pad(responses, pad, value=self.pad_id)
            mask = torch.nn.functional.pad(mask, pad, value=False)
        body, stop, m = responses[:, :L], responses[:, L], mask[:, :L + 1].bool()
        want = self.solve(prompts.to(responses.device)) % self.classes
        right = torch.cat([(body < self.symbols) & (body % self.classes == want), (stop == self.eos_id)[:, None]], 1)
        right = right & m
        return right.float().mean(dim=1) if partial else right.all(dim=1).float()

    def uniform_reward(self) -> float:
        """The expected partial reward of a policy that samples every token uniformly (module doc)."""
        v, L = self.vocab_size, self.length
        sizes = [len(range(c, self.symbols, self.classes)) for c in range(self.classes)]
        # the prompt's symbol falls in class c with probability n_c / symbols; a uniform draw hits it with n_c / v
        per_position = sum(n * n for n in sizes) / (self.symbols * v)
        # position t is reached when none of the t tokens before it was EOS
        reached = [(1 - 1 / v) ** t for t in range(L + 1)]
        return (sum(reached[:L]) * per_position + reached[L] / v) / (L + 1)

    def warmup_score(self, model, prompts: torch.Tensor, seed: int = 0) -> float:
        """Mean partial reward of one response per prompt, sampled at temperature 1 by the plain-torch fp32
        forward of ``model`` (a ``TinyGPT``: its fp32 masters), with a generator seeded ``seed``."""
        from .torch_model import generate

        g = torch.Generator(device=prompts.device).manual_seed(seed)
        with torch.no_grad():
            ro = generate(dict(model.named_parameters()), model.cfg, prompts, self.max_new_tokens, generator=g,
                          eos_id=self.eos_id, pad_id=self.pad_id)
        return float(self.reward(prompts, ro.tokens[:, self.prompt_len:], ro.mask).mean())

    # ---- in words ------------------------------------------------------------------------------

    @property
    def text_max_new_tokens(self) -> int:
        """A word and its space may take two tokens each, and one more for the stop."""
        return 2 * self.length + 1

    def text_problems(self, n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            pattern = [WORDS[i] for i in torch.randint(0, len(WORDS), (self.period,), generator=g).tolist()]
            ask = (f"Repeat this pattern of words, separated by spaces, until you have written exactly "
                   f"{self.length} words, then stop: {' '.join(pattern)}")
            answer = " ".join(pattern[t % self.period] for t in range(self.length))
            out.append(([{"role": "user", "content": ask}], answer))
        return out

    def text_reward(self, answer: str, text: str, stopped: bool, partial: bool = True) -> float:
        """Each word position of ``answer`` right in ``text`` (split on whitespace), and the stop after
        exactly that many words: right / (words + 1)."""
        want, got = answer.split(), text.split()
        right = sum(a == b for a, b in zip(want, got)) + (stopped and len(got) == len(want))
        return right / (len(want) + 1) if partial else float(right == len(want) + 1)


def check_band(score: float, low: float = 0.2, high: float = 0.8) -> bool:
    """Whether a starting mean reward lies in the paper's band [low, high]."""
    return math.isfinite(score) and low <= score <= high
