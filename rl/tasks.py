"""Verifiable tasks with exact rewards: reverse, sort and add digit strings (and ``long``, ``rl.long_task``).

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
The ``long`` task (``rl.long_task``: responses of 32 to 256 symbols, credit per position, its own
vocabulary) is a synthetic task too, with its own layout. ``CHAT_TASKS`` holds the tasks that exist
only in words:

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

import torch

from .long_task import LongTask
from .task_base import Task, text_reward
from .task_base import response_mask as response_mask  # re-exported: the tasks' callers read it here

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


TASKS: dict[str, type[Task]] = {"reverse": ReverseTask, "sort": SortTask, "add": AddTask, "long": LongTask}


def get_task(name: str, **kwargs) -> Task:
    """Build a task by name: ``reverse`` (default sanity task), ``sort``, ``add`` or ``long`` (``rl.long_task``)."""
    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


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


def get_any_task(name: str, **options):
    """A synthetic task (``TASKS``) or a task in words (``CHAT_TASKS``) by name; ``options`` go to its constructor
    (``long``'s ``length`` and ``symbols``)."""
    if name in CHAT_TASKS:
        return CHAT_TASKS[name](**options)
    if name in TASKS:
        return TASKS[name](**options)
    raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS) + sorted(CHAT_TASKS)}")
