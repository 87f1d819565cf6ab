"""The policy ``--model`` names, built for a run: ``build_policy(args, device)`` (``rl.policy.Setup``).

``tinygpt``: TinyGPT (``rl.model``) on a synthetic task's ids; a new run starts with the
supervised warm-up in plain PyTorch fp32 (``rl.warmup`` on ``rl.torch_model``). ``smollm2``,
``smollm2:N`` and ``hf:PATH``: a Hugging Face causal LM (``rl.hf_policy``), which starts RL as it is.
"""

from __future__ import annotations

import time

import torch

from . import hf_policy
from .hf import parse_model
from .model import ModelConfig, TinyGPT
from .policy import Setup
from .task_views import IdTask
from .torch_model import torch_forward
from .train_flags import task_options
from .warmup import supervised_warmup


class TinyGPTPolicy(TinyGPT):
    """TinyGPT as a run's policy: the model, and its start (the warm-up)."""

    def start(self, task: IdTask, prompts, *, dist, log, target: float, seed: int) -> dict:
        """The supervised warm-up on the plain-torch forward over the fp32 master weights, until greedy accuracy
        on ``prompts`` reaches ``target`` (a task with ``warmup_score``: that score, the mean reward of sampled
        responses); every rank then takes rank 0's weights."""
        t0 = time.perf_counter()
        score = getattr(task.task, "warmup_score", None)
        # A task whose greedy answers are all-or-nothing over hundreds of tokens (long) warms up on the mean reward
        # of sampled responses instead, into the 0.2-0.8 band (rl.long_task), checked every other step.
        by_reward = {} if score is None else {"accuracy_fn": lambda: score(self, prompts.ids[:128], seed),
                                              "eval_every": 2, "max_acc": 0.8}
        res = supervised_warmup(torch_forward(self), task.task, prompts.ids, params=self.parameters(),
                                train_prompts=prompts.ids, stop_at=target, seed=seed, **by_reward)
        dist.broadcast_params(self.parameters())
        warm = {"steps": res.steps, "accuracy": res.accuracy, "seconds": time.perf_counter() - t0,
                "reached": res.reached, "figure": "sampled mean reward" if by_reward else "greedy accuracy"}
        log(f"warm-up (plain PyTorch fp32): {res.steps} steps, {warm['figure']} {res.accuracy:.1%}, "
            f"{warm['seconds']:.1f}s")
        return warm


def build_tinygpt(args, device: torch.device) -> Setup:
    """TinyGPT shaped by the flags, on ``--task``'s ids; the prompt set is the task's seeded dataset."""
    task = IdTask(args.task, **task_options(args))
    cfg = ModelConfig(vocab_size=task.task.vocab_size, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, max_seq_len=task.task.seq_len, precision=args.precision,
                      head_precision=args.head_precision, linear_precision=args.linear_precision)
    model = TinyGPTPolicy(cfg, seed=args.seed, init=args.init).to(device)  # drawn on CPU: the same on every device
    return Setup(task, model, task.prompt_set(args.dataset_size, args.seed, device))


BUILDERS = {"tinygpt": build_tinygpt, "smollm2": hf_policy.build, "hf": hf_policy.build}


def build_policy(args, device: torch.device) -> Setup:
    """The task view, the policy and the prompt set of ``args`` (``rl.train``'s flags, checked)."""
    return BUILDERS[parse_model(args.model).kind](args, device)
