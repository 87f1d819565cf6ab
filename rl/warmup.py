"""Supervised warm-up in plain PyTorch fp32 (outside the invariant; DESIGN.md §6).

The sanity recipe starts RL from a policy that already solves part of the task: the
model is trained by teacher forcing (cross-entropy on the answer digits and EOS) until
greedy accuracy on the fixed training set reaches ``stop_at`` (default 35%).

What is trained: fp32 parameters through a plain-torch logits function, both handed in:
``logits_fn(tokens)`` maps int64 (B, T) to fp32 logits (B, T, V) with causal attention, and
``params`` (an iterable or a dict of leaf fp32 tensors with ``requires_grad``) are what it
reads. For the kernel model that is ``rl.torch_model.torch_forward(model)`` and
``model.parameters()``; a parameter dict and a functional forward work the same way.

Accuracy can jump from under 30% to over 90% within a few steps at lr 3e-3, so accuracy
is evaluated after every step (``eval_every=1``); if a step overshoots ``max_acc``, the
parameters and optimizer state are rolled back and the step is retried at half the lr.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .decoding import greedy_decode
from .tasks import Task

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class WarmupResult:
    """What the warm-up did: steps taken, final greedy accuracy, and the per-step history."""

    steps: int
    accuracy: float
    lr: float
    seconds: float
    reached: bool
    history: list[dict[str, float]] = field(default_factory=list)


def _as_list(params) -> list[torch.Tensor]:
    if isinstance(params, dict):
        plist = list(params.values())
    elif isinstance(params, Iterable):
        plist = list(params)
    else:
        raise TypeError(f"params must be a dict or an iterable of tensors, got {type(params).__name__}")
    if not plist:
        raise ValueError("params holds no tensors to train")
    return plist


def teacher_forcing_loss(logits_fn: LogitsFn, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Mean cross-entropy of the response tokens (everything after the prompt) given their prefix.

    ``tokens`` are whole sequences prompt + answer + EOS (``Task.teacher_forcing``); the
    last position's logits are not needed, so the model sees ``tokens[:, :-1]``.
    """
    logits = logits_fn(tokens[:, :-1])[:, prompt_len - 1:]
    target = tokens[:, prompt_len:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))


def greedy_accuracy(logits_fn: LogitsFn, task: Task, prompts: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of ``prompts`` whose greedy answer (digits and EOS) is exactly right.

    Decodes with ``rl.decoding.greedy_decode``, re-running the whole sequence each step (no KV cache).
    """
    if len(prompts) == 0:
        return 0.0
    right = 0.0
    for i in range(0, len(prompts), chunk):
        p = prompts[i:i + chunk]
        resp, mask = greedy_decode(lambda seq: logits_fn(seq)[:, -1], p, task.max_new_tokens, task.eos_id,
                                   task.pad_id)
        right += float(task.reward(p, resp, mask, partial=False).sum())
    return right / len(prompts)


def supervised_warmup(logits_fn: LogitsFn, task: Task, eval_prompts: torch.Tensor, *, params,
                      train_prompts: torch.Tensor | None = None, lr: float = 3e-3, batch_size: int = 64,
                      max_steps: int = 300, stop_at: float = 0.35, max_acc: float = 0.8,
                      eval_every: int = 1, max_retries: int = 6, weight_decay: float = 0.0, seed: int = 0,
                      accuracy_fn: Callable[[], float] | None = None,
                      log: Callable[[dict[str, float]], None] | None = None) -> WarmupResult:
    """Teacher-forced AdamW steps until greedy accuracy on ``eval_prompts`` reaches ``stop_at``.

    Each step trains on ``batch_size`` problems: fresh random ones drawn from a generator
    seeded with ``seed`` (default), or a seeded random minibatch of ``train_prompts``.
    After every ``eval_every`` steps the greedy accuracy on ``eval_prompts`` is measured
    (``accuracy_fn()`` overrides how); the warm-up stops at the first evaluation with
    accuracy >= ``stop_at``. If that accuracy exceeds ``max_acc``, the step is undone and
    retried at half the lr (at most ``max_retries`` times; then the overshoot is kept).
    Gives up after ``max_steps`` with ``reached=False``.

    The learning rate is constant; gradients are clipped to norm 1.
    """
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be a callable tokens -> logits, got {type(logits_fn).__name__}")
    plist = _as_list(params)
    opt = torch.optim.AdamW(plist, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    acc_fn = accuracy_fn or (lambda: greedy_accuracy(logits_fn, task, eval_prompts))
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    acc, cur_lr, step, retries, reached = acc_fn(), lr, 0, 0, False
    history.append({"step": 0.0, "accuracy": acc, "lr": cur_lr})
    if acc >= stop_at:
        reached = True
    while not reached and step < max_steps:
        snapshot = ([p.detach().clone() for p in plist], copy.deepcopy(opt.state_dict()), gen.get_state())
        if train_prompts is None:
            prompts, answers = task.sample(batch_size, gen)
        else:
            idx = torch.randint(0, len(train_prompts), (batch_size,), generator=gen)
            prompts = train_prompts[idx]
            answers = task.solve(prompts)
        tokens = task.teacher_forcing(prompts, answers)
        loss = teacher_forcing_loss(logits_fn, tokens, task.prompt_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        opt.step()
        step += 1
        if step % eval_every and step != max_steps:
            continue
        acc = acc_fn()
        rec = {"step": float(step), "loss": float(loss.detach()), "accuracy": acc, "lr": cur_lr}
        history.append(rec)
        if log is not None:
            log(rec)
        if acc >= stop_at:
            if acc > max_acc and retries < max_retries:
                with torch.no_grad():
                    for p, s in zip(plist, snapshot[0]):
                        p.copy_(s)
                opt.load_state_dict(snapshot[1])
                gen.set_state(snapshot[2])
                cur_lr /= 2
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                retries += 1
                step -= 1
                history[-1]["rolled_back"] = 1.0
                continue
            reached = True
    return WarmupResult(steps=step, accuracy=acc, lr=cur_lr, seconds=time.perf_counter() - t0,
                        reached=reached, history=history)
