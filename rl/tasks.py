"""Verifiable tasks with exact rewards: reverse, sort and add digit strings.

Every task shares one token layout, so ``eos_id`` and ``pad_id`` are the same everywhere:

    id   0..9   10   11    12    13
    sym  0..9   =    EOS   PAD   +      ('+' only in the add task's vocabulary)

A prompt is fixed-width and ends with ``=``; the answer is ``answer_len`` digits
followed by EOS, so a rollout needs ``max_new_tokens = answer_len + 1`` steps::

    reverse  "402917="  -> "719204" EOS     P = 7, A = 6   (the sanity task)
    sort     "402917="  -> "012479" EOS     P = 7, A = 6
    add      "123+908=" -> "1031"   EOS     P = 8, A = 4   (sum zero-padded to 4 digits)

Rewards are computed from the prompt alone (the task is its own verifier) over the
``A + 1`` target positions, the EOS included:

* binary: 1.0 when every digit and the EOS are in place, else 0.0;
* partial: the fraction of the ``A + 1`` positions that are right.

A response position only counts where ``mask`` is True (sampled, up to and including
the first EOS); anything after the first EOS is ignored, and a response that stops
early loses the positions it never produced.

In words, for any tokenizer (``rl.task_views.TextTask``): every task also states its problems as
chat messages with a text answer (``text_problems``) and scores a decoded response
(``text_reward``). A synthetic task's prompt is its own characters (``"402917="``) and its
reward the same rule over characters: the answer's characters, then the stop (the
model's EOS), ``len(answer) + 1`` positions, surrounding whitespace ignored.
``CHAT_TASKS`` holds the tasks that exist only in words:

    add1     system "Reply with the answer only.", user "3 + 5"  -> "8"  (100 problems)
    paren    system "Reply with the word in parentheses.", user "cat"  -> "(cat)"  (32 problems)

``add1``'s reward is binary under either setting: 1.0 when the response stopped and its
last integer is the sum (SmolLM2-135M-Instruct tends to answer "The answer is 8."), else 0.0.
``paren``'s is the character rule above. It is there for models too weak for ``add1``: the
first 2 layers of SmolLM2-135M-Instruct, whatever the prompt, open most responses with " (",
so they earn a partial reward on some samples and not on others, and RL has advantages to
follow (on ``add1`` they earn nothing and no weight moves).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch

DIGITS = "0123456789"
SEP_ID = 10
EOS_ID = 11
PAD_ID = 12
PLUS_ID = 13
_SYMBOLS = {**{d: i for i, d in enumerate(DIGITS)}, "=": SEP_ID, "+": PLUS_ID}
_EOS_CHAR, _PAD_CHAR = "$", "_"


class Tokenizer:
    """Character tokenizer: digits, ``=``, EOS (``$``), PAD (``_``) and optionally ``+``."""

    def __init__(self, with_plus: bool = False) -> None:
        self.vocab_size = 14 if with_plus else 13
        self.eos_id, self.pad_id, self.sep_id = EOS_ID, PAD_ID, SEP_ID
        self._to_char = {i: c for c, i in _SYMBOLS.items() if i < self.vocab_size}
        self._to_char[EOS_ID], self._to_char[PAD_ID] = _EOS_CHAR, _PAD_CHAR

    def encode(self, text: str) -> list[int]:
        """Map characters to ids; ``$`` is EOS and ``_`` is PAD."""
        inv = {c: i for i, c in self._to_char.items()}
        try:
            return [inv[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this vocabulary "
                             f"({''.join(sorted(inv))!r})") from None

    def decode(self, ids, stop_at_eos: bool = False) -> str:
        """Map ids back to characters (``$`` EOS, ``_`` PAD); optionally cut at the first EOS."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if stop_at_eos and i == EOS_ID:
                break
            out.append(self._to_char.get(int(i), "?"))
        return "".join(out)


class Task(ABC):
    """A verifiable task: fixed-width prompts, a unique correct answer, exact rewards.

    Subclasses set ``name``, ``prompt_len``, ``answer_len`` and the tokenizer, and
    implement ``_sample_problems`` (random prompts) and ``solve`` (the answer digits).
    """

    name: str
    prompt_len: int
    answer_len: int
    tokenizer: Tokenizer

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


def _digits(n: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 10, (n, width), generator=generator, dtype=torch.long)


def _with_sep(body: torch.Tensor) -> torch.Tensor:
    return torch.cat([body, torch.full((body.shape[0], 1), SEP_ID, dtype=torch.long, device=body.device)], 1)


class ReverseTask(Task):
    """Reverse a string of ``n_digits`` digits: the sanity task."""

    def __init__(self, n_digits: int = 6) -> None:
        self.name = "reverse"
        self.n_digits = n_digits
        self.prompt_len, self.answer_len = n_digits + 1, n_digits
        self.tokenizer = Tokenizer()

    def _sample_problems(self, n, generator):
        return _with_sep(_digits(n, self.n_digits, generator))

    def solve(self, prompts):
        return prompts[:, : self.n_digits].flip(1)


class SortTask(Task):
    """Sort a string of ``n_digits`` digits ascending."""

    def __init__(self, n_digits: int = 6) -> None:
        self.name = "sort"
        self.n_digits = n_digits
        self.prompt_len, self.answer_len = n_digits + 1, n_digits
        self.tokenizer = Tokenizer()

    def _sample_problems(self, n, generator):
        return _with_sep(_digits(n, self.n_digits, generator))

    def solve(self, prompts):
        return prompts[:, : self.n_digits].sort(dim=1).values


class AddTask(Task):
    """Add two zero-padded ``n_digits``-digit numbers; the sum is zero-padded to ``n_digits + 1``."""

    def __init__(self, n_digits: int = 3) -> None:
        self.name = "add"
        self.n_digits = n_digits
        self.prompt_len, self.answer_len = 2 * n_digits + 2, n_digits + 1
        self.tokenizer = Tokenizer(with_plus=True)

    def _sample_problems(self, n, generator):
        a, b = _digits(n, self.n_digits, generator), _digits(n, self.n_digits, generator)
        plus = torch.full((n, 1), PLUS_ID, dtype=torch.long)
        return _with_sep(torch.cat([a, plus, b], dim=1))

    def solve(self, prompts):
        k = self.n_digits
        place = 10 ** torch.arange(k - 1, -1, -1, device=prompts.device)
        total = (prompts[:, :k] * place).sum(1) + (prompts[:, k + 1: 2 * k + 1] * place).sum(1)
        out_place = 10 ** torch.arange(k, -1, -1, device=prompts.device)
        return (total[:, None] // out_place) % 10


TASKS: dict[str, type[Task]] = {"reverse": ReverseTask, "sort": SortTask, "add": AddTask}


def get_task(name: str, **kwargs) -> Task:
    """Build a task by name: ``reverse`` (default sanity task), ``sort`` or ``add``."""
    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


def text_reward(answer: str, text: str, stopped: bool, partial: bool = True) -> float:
    """Characters of ``answer`` in place in ``text`` (whitespace-stripped), then the stop: right / (len + 1)."""
    got = text.strip()
    right = sum(a == b for a, b in zip(answer, got)) + (stopped and len(got) == len(answer))
    return right / (len(answer) + 1) if partial else float(right == len(answer) + 1)


class AddInWords:
    """One-digit addition put to a chat model: ``"3 + 5"`` under "Reply with the answer only." -> ``"8"``."""

    name = "add1"
    system = "Reply with the answer only."
    n_problems = 100
    text_max_new_tokens = 8  # "The answer is 12." and EOS

    def text_problems(self, n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
        """``n`` distinct problems (at most ``n_problems``) in a seeded order, as chat messages and the sum."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_problems:
            raise ValueError(f"n must be an int in [0, {self.n_problems}] ({self.name} has {self.n_problems} "
                             f"problems), got {n!r}")
        order = torch.randperm(self.n_problems, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return [([{"role": "system", "content": self.system}, {"role": "user", "content": f"{i // 10} + {i % 10}"}],
                 str(i // 10 + i % 10)) for i in order]

    def text_reward(self, answer: str, text: str, stopped: bool, partial: bool = True) -> float:
        """1.0 when the response stopped (EOS) and its last integer is ``answer`` (binary either way), else 0.0."""
        found = re.findall(r"-?\d+", text)
        return float(stopped and bool(found) and found[-1] == answer)


class ParenthesesInWords:
    """A word put in parentheses: ``"cat"`` under "Reply with the word in parentheses." -> ``"(cat)"``."""

    name = "paren"
    system = "Reply with the word in parentheses."
    words = ("cat", "dog", "sun", "car", "box", "cup", "hat", "pen", "map", "key", "egg", "bed", "bus", "fox", "ice",
             "jam", "kid", "leg", "net", "owl", "pig", "rat", "sea", "tea", "toy", "van", "web", "yak", "zoo", "arm",
             "bag", "cow")
    n_problems = len(words)
    text_max_new_tokens = 5  # "(", the word, ")" and EOS (SmolLM2's tokenizer), one spare

    def text_problems(self, n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
        """``n`` distinct words (at most ``n_problems``) in a seeded order, as chat messages and the answer."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_problems:
            raise ValueError(f"n must be an int in [0, {self.n_problems}] ({self.name} has {self.n_problems} "
                             f"problems), got {n!r}")
        order = torch.randperm(self.n_problems, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return [([{"role": "system", "content": self.system}, {"role": "user", "content": self.words[i]}],
                 f"({self.words[i]})") for i in order]

    def text_reward(self, answer: str, text: str, stopped: bool, partial: bool = True) -> float:
        """The character rule of the synthetic tasks in words (module doc): ``(cat)`` and the stop, 6 positions."""
        return text_reward(answer, text, stopped, partial)


CHAT_TASKS: dict[str, type] = {"add1": AddInWords, "paren": ParenthesesInWords}


def get_any_task(name: str):
    """A synthetic task (``TASKS``) or a task in words (``CHAT_TASKS``) by name."""
    if name in CHAT_TASKS:
        return CHAT_TASKS[name]()
    if name in TASKS:
        return TASKS[name]()
    raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS) + sorted(CHAT_TASKS)}")
