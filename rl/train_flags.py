"""``rl.train``'s flags: the parser, the checks every flag passes before any work, and the resume rules.

``check_args`` raises ``ValueError`` naming the first bad flag; ``RESUME_MAY_DIFFER`` lists the
flags a ``--resume`` may change, every other stored flag must match (``refuse_resume_conflicts``).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
from pathlib import Path

import torch

import precision_kernels as pk

from .checkpoint import CheckpointError, identity_conflicts, read_checkpoint
from .hf import MODEL_FORMS, check_task, find_gguf, parse_model
from .hf_config import check_hf_directory, check_memory, model_identity
from .losses import AGGREGATIONS, ALGOS, CLIPPED, KL_ESTIMATORS, RATIOS, SEQUENCE_LEVEL
from .tasks import CHAT_TASKS, TASKS, get_any_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rl.train",
                                description="RL training CLI: ``python -m rl.train`` trains the sanity recipe on "
                                            "the kernels.")
    p.add_argument("--model", default="tinygpt", metavar="MODEL",
                   help=f"the policy: {MODEL_FORMS} (rl.policies; an HF model skips the warm-up)")
    p.add_argument("--attention", default=_default("sdpa"), choices=["sdpa", "eager"],
                   help="an HF model's attention: sdpa (pk.attention under matched mode: a left-padded row's bits do "
                        "not depend on its padding) or eager (HF's matmul-softmax-matmul); TinyGPT's is pk.attention")
    p.add_argument("--task", default="reverse", choices=sorted(TASKS) + sorted(CHAT_TASKS),
                   help="add1 is in words: it needs a model with a tokenizer; long (rl.long_task) takes "
                        "--response-length and --symbols")
    p.add_argument("--response-length", type=int, default=None, metavar="L",
                   help="--task long: response length, 32 to 256 tokens (default 64)")
    p.add_argument("--symbols", type=int, default=None, metavar="V",
                   help="--task long: its vocabulary of symbols (default 64; TinyGPT's vocabulary is V + 3)")
    p.add_argument("--period", type=int, default=None, metavar="K",
                   help="--task long: the prompt's pattern length, which the response repeats (default 4; 1 is "
                        "the easiest)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--head-precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="precision of the LM head (default: --precision); fp32 is the common partial fix")
    p.add_argument("--profile", default="matched", choices=["matched", "engine"], help="the sampler's profile")
    p.add_argument("--linear-precision", default=None, choices=["fp8"],
                   help="TinyGPT's block linears in sampler and learner: fp8 runs them W8A8 (e4m3, per-token "
                        "activations, row-wise weights; straight-through gradient): the FP8 matched variant")
    p.add_argument("--rollout-precision", default=None, choices=list(ROLLOUT_PRECISIONS),
                   help="the sampler apart from the learner's --precision: fp8 runs its block linears W8A8 (the LM "
                        "head stays at --precision); bf16 or fp16 runs the whole sampler model at that precision "
                        "(weights rounded from the fp32 masters, the run's --profile): --precision fp32 "
                        "--rollout-precision bf16 is the FP32-trainer / BF16-engine setup")
    p.add_argument("--algo", default="pg", choices=list(ALGOS))
    p.add_argument("--agg", default=None, choices=list(AGGREGATIONS),
                   help="loss aggregation (default token-mean; gspo is sequence-level and refuses it)")
    p.add_argument("--epochs", type=int, default=1, help="passes over each rollout (> 1 only for ppo/grpo)")
    p.add_argument("--minibatches", type=int, default=1, help="optimizer steps per epoch (<= batch x group)")
    p.add_argument("--ratio", default="old", choices=list(RATIOS),
                   help="ppo/grpo/gspo ratio: against pi_old ('old', standard PPO) or the sampler's mu ('sampler')")
    p.add_argument("--tis-cap", type=float, default=None, metavar="C",
                   help="ppo/grpo with --ratio old: weight each token by min(exp(pi_old - mu), C), detached")
    p.add_argument("--kl-coef", type=float, default=0.0, metavar="BETA",
                   help="KL penalty to the frozen post-warm-up policy (0: none)")
    p.add_argument("--kl-estimator", default=None, choices=list(KL_ESTIMATORS),
                   help="k1: subtracted from the reward; k2, k3 (default): added to the loss (rl.losses)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--reward", default="partial", choices=["partial", "binary"])
    p.add_argument("--dataset-size", type=int, default=_default(512),
                   help="distinct training prompts (default 512, or all of a task with fewer)")
    # TinyGPT's shape, init and warm-up: an HF model refuses them when given (_default tells).
    p.add_argument("--d-model", type=int, default=_default(64))
    p.add_argument("--layers", type=int, default=_default(2))
    p.add_argument("--heads", type=int, default=_default(2))
    p.add_argument("--init", default=_default("torch"), choices=["torch", "scaled", "gpt2"],
                   help="initialisation (rl.model.init_parameters); 'torch' gives the warm-up a peaked policy")
    p.add_argument("--warmup-target", type=float, default=_default(0.35),
                   help="greedy accuracy that ends the warm-up")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=None, metavar="N",
                   help="evaluate greedy accuracy on the first N training prompts (default: all of them)")
    p.add_argument("--stop-at", type=float, default=None, help="stop once greedy accuracy reaches this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the run lives (auto: the kernels' backend device)")
    p.add_argument("--out", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUT already holds a run")
    p.add_argument("--strict", action="store_true", help="any matched-mode mismatch is fatal")
    p.add_argument("--no-progress", action="store_true")
    return p


class _DefaultInt(int):
    def __reduce__(self):
        return int, (int(self),)


class _DefaultFloat(float):
    def __reduce__(self):
        return float, (float(self),)


class _DefaultStr(str):
    def __reduce__(self):
        return str, (str(self),)


def _default(value):
    """``value`` as a flag's default: equal to it, pickled and printed as it, but told apart from a given flag."""
    return {int: _DefaultInt, float: _DefaultFloat, str: _DefaultStr}[type(value)](value)


def given(value) -> bool:
    """Whether a flag's value came from the command line (or a caller), not from the parser's ``_default``."""
    return not isinstance(value, (_DefaultInt, _DefaultFloat, _DefaultStr))


ROLLOUT_PRECISIONS = ("fp8", "bf16", "fp16")
WHOLE_MODEL_ROLLOUTS = ("bf16", "fp16")  # the sampler's whole model at that precision (Policy.at_precision)
TINYGPT_FLAGS = (("--d-model", "d_model"), ("--layers", "layers"), ("--heads", "heads"), ("--init", "init"),
                 ("--warmup-target", "warmup_target"))


# Flags that may change when a run is resumed; every other stored flag must match. ("resume",
# "overwrite" and "out" say how to run, not what; a checkpoint moves between devices.)
RESUME_MAY_DIFFER = frozenset({"steps", "stop_at", "eval_every", "eval_prompts", "device", "no_progress", "resume",
                               "overwrite", "out"})
MAX_DATASET_SIZE = 100_000  # distinct prompts are drawn one by one; every task has 10^6 of them
CHAT_PROMPT_TOKENS = 32  # a chat task's prompt after its template, at fewest: the memory estimate's length


def resolve_device(flag: str) -> torch.device:
    """``--device`` as a torch device; refuses a device the kernels' backend cannot serve, saying why."""
    backend = pk.backend.device()
    if flag == "auto":
        return backend
    if flag not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {flag!r}")
    if flag != backend.type:
        if flag == "cpu":
            raise ValueError("--device cpu: the kernels' backend is CUDA in this process (decided when "
                             "precision_kernels was imported); to run on CPU set TRITON_INTERPRET=1 in the "
                             "environment before starting (the Triton interpreter then runs the kernels)")
        raise ValueError(f"--device cuda: the kernels run under the Triton interpreter in this process "
                         f"(backend {pk.backend.active_backend()!r}: no CUDA device, or TRITON_INTERPRET=1 was set); "
                         f"use --device cpu or auto")
    return backend


def world_size() -> int:
    """Processes in the job (torchrun's ``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_args(args) -> None:
    """Raise ``ValueError`` naming the first bad flag; reads ``args``, OUT's file names, the backend and WORLD_SIZE."""
    def need(ok: bool, flag: str, expected: str, value) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {value!r}")

    def positive_int(flag: str, value, low: int = 1, high: int | None = None) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        ok = ok and (high is None or value <= high)
        need(ok, flag, f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}", value)

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    model = parse_model(args.model)
    shape = check_hf_directory(model, args.model) if model.kind == "hf" else None
    for flag, dest in (("--response-length", "response_length"), ("--symbols", "symbols"), ("--period", "period")):
        need(getattr(args, dest) is None or args.task == "long", flag, "given only with --task long",
             getattr(args, dest))
    try:
        task = get_any_task(args.task, **task_options(args))
    except ValueError as e:  # the task names its parameter: length or symbols
        raise ValueError(f"--response-length/--symbols/--period: {e}") from None
    check_task(model, args.task, task)
    n_problems = getattr(task, "n_problems", None)
    if n_problems is not None and given(args.dataset_size):
        positive_int("--dataset-size", args.dataset_size, high=n_problems)
    if model.kind == "tinygpt":
        need(not given(args.attention), "--attention", "left out with --model tinygpt (its attention is "
             "pk.attention; the flag picks an HF model's)", args.attention)
    else:
        for flag, dest in TINYGPT_FLAGS:
            need(not given(getattr(args, dest)), flag, f"left out with --model {args.model} (it shapes TinyGPT "
                 f"and its warm-up only)", getattr(args, dest))
        need(args.linear_precision is None, "--linear-precision", f"left out with --model {args.model} (FP8 "
             f"linears are TinyGPT's)", args.linear_precision)
        need(args.rollout_precision != "fp8", "--rollout-precision", f"bf16 or fp16 with --model {args.model} "
             f"(FP8 linears are TinyGPT's)", args.rollout_precision)
    if args.rollout_precision in WHOLE_MODEL_ROLLOUTS:
        need(args.rollout_precision != args.precision, "--rollout-precision", f"a precision other than "
             f"--precision {args.precision} (left out, the sampler runs the learner's)", args.rollout_precision)
        need(args.linear_precision is None, "--linear-precision", f"left out with --rollout-precision "
             f"{args.rollout_precision} (the sampler changes one way at a time)", args.linear_precision)
    positive_int("--steps", args.steps)
    positive_int("--batch", args.batch)
    positive_int("--group", args.group, low=2)  # the group-mean baseline needs two samples per prompt
    positive_int("--epochs", args.epochs)
    positive_int("--minibatches", args.minibatches, high=args.batch * args.group)
    positive_int("--eval-every", args.eval_every)
    positive_int("--dataset-size", args.dataset_size, high=MAX_DATASET_SIZE)
    if args.eval_prompts is not None:
        positive_int("--eval-prompts", args.eval_prompts, high=args.dataset_size)
    positive_int("--d-model", args.d_model)
    positive_int("--layers", args.layers)
    positive_int("--heads", args.heads)
    positive_int("--seed", args.seed, low=0, high=2**63 - 1)
    device = resolve_device(args.device)
    if shape is not None:  # what one learner pass of this process holds, against what its device has free
        length = getattr(task, "seq_len", None) or CHAT_PROMPT_TOKENS + task.text_max_new_tokens
        check_memory(shape, args.batch * args.group // (world_size() * args.minibatches) or 1, length, device,
                     args.model, model.config_file)
    need(args.batch % world_size() == 0, "--batch", f"divisible by the number of processes ({world_size()}: "
         f"each takes whole prompt groups)", args.batch)
    need(args.d_model % args.heads == 0, "--d-model", f"divisible by --heads {args.heads}", args.d_model)
    need(finite(args.lr) and args.lr > 0, "--lr", "a finite number > 0", args.lr)
    try:
        pk.check_temperature(args.temperature)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--temperature: {e}") from None
    need(finite(args.warmup_target) and 0 <= args.warmup_target <= 1, "--warmup-target",
         "an accuracy in [0, 1]", args.warmup_target)
    if args.stop_at is not None:
        need(finite(args.stop_at) and 0 <= args.stop_at <= 1, "--stop-at", "an accuracy in [0, 1]", args.stop_at)
    clipped = args.algo in CLIPPED
    need(args.epochs == 1 or clipped, "--epochs", f"1 for --algo {args.algo} (more epochs on one rollout need "
         f"a clipped objective: {'/'.join(CLIPPED)})", args.epochs)
    need(args.ratio == "old" or clipped, "--ratio", f"left at 'old' for --algo {args.algo} (it is a "
         f"{'/'.join(CLIPPED)} option)", args.ratio)
    need(args.agg is None or args.algo not in SEQUENCE_LEVEL, "--agg", f"left out with --algo {args.algo} "
         f"(its loss is sequence-level)", args.agg)
    need(finite(args.kl_coef) and args.kl_coef >= 0, "--kl-coef", "a finite number >= 0", args.kl_coef)
    need(args.kl_estimator is None or args.kl_coef > 0, "--kl-estimator", "given only with --kl-coef > 0",
         args.kl_estimator)
    if args.tis_cap is not None:
        need(args.algo in ("ppo", "grpo") and args.ratio == "old", "--tis-cap",
             "used only with --algo ppo/grpo and --ratio old", args.tis_cap)
        need(finite(args.tis_cap) and args.tis_cap > 0, "--tis-cap", "a finite number > 0", args.tis_cap)
    need(not (args.resume and args.overwrite), "--overwrite", "left out with --resume (one continues the run "
         "in --out, the other discards it)", args.overwrite)
    out = Path(args.out)
    need(not out.exists() or out.is_dir(), "--out", "a directory (it names an existing file)", args.out)
    # The run creates OUT and its parents: the nearest one that exists must be a directory it can write in.
    nearest = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor or "."))
    need(nearest.is_dir(), "--out", f"a directory path ({nearest} is a file)", args.out)
    need(os.access(nearest, os.W_OK | os.X_OK), "--out", f"a directory this process can write in ({nearest} "
         f"is not writable)", args.out)
    ckpt, metrics = out / "checkpoint.pt", out / "metrics.jsonl"
    if args.resume:
        need(ckpt.is_file(), "--resume", f"given only where a checkpoint exists; there is no {ckpt}", True)
    elif not args.overwrite:
        held = [p.name for p in (ckpt, metrics) if p.exists() and (p.stat().st_size > 0 or p == ckpt)]
        need(not held, "--out", f"a directory without a run (it holds {', '.join(held)}; pass --resume to "
             f"continue it or --overwrite to start over)", args.out)


def task_options(args) -> dict:
    """The task's constructor options from the flags: ``long``'s length, symbols and period when given."""
    names = {"response_length": "length", "symbols": "symbols", "period": "period"}
    return {names[k]: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def sampler_linears(args) -> str | None:
    """The sampler's linear precision: fp8 with ``--rollout-precision fp8``, else ``--linear-precision``."""
    return "fp8" if args.rollout_precision == "fp8" else args.linear_precision


def sampler_precision(args) -> str:
    """The sampler's compute precision: ``--rollout-precision`` bf16/fp16 when given, else ``--precision``."""
    return args.rollout_precision if args.rollout_precision in WHOLE_MODEL_ROLLOUTS else args.precision


def matched_run(args) -> bool:
    """Whether the sampler runs the learner's kernels at the learner's precision, so any mismatch is a bug."""
    return (args.profile == "matched" and sampler_linears(args) == args.linear_precision
            and sampler_precision(args) == args.precision)


def resume_conflicts(stored: dict, args) -> list[str]:
    """Flags whose value differs from the stored run's, as ``--flag: stored X, now Y`` (``RESUME_MAY_DIFFER`` aside).

    A flag the stored run has no value for (its checkpoint predates the flag) ran as the flag's default,
    and is compared as that default.
    """
    current, defaults = vars(args), vars(build_parser().parse_args([]))
    out = []
    for key in sorted(set(stored) | (set(current) & set(defaults))):
        if key in RESUME_MAY_DIFFER or key not in current:
            continue
        before = stored.get(key, defaults.get(key))
        if before != current[key]:
            was = repr(before) if key in stored else f"nothing (the run predates the flag: it ran as {before!r})"
            out.append(f"--{key.replace('_', '-')}: stored {was}, now {current[key]!r}")
    return out


def model_identity_of(args) -> dict:
    """The digests of what ``--model`` builds (``rl.hf_config.model_identity``), stored in each checkpoint."""
    spec = parse_model(args.model)
    return model_identity(spec, find_gguf() if spec.kind == "smollm2" else None)


def refuse_resume(ckpt_path: Path, args, identity: dict, device: torch.device) -> None:
    """``--resume`` checked against ``ckpt_path`` before any work: a damaged checkpoint, flags that differ from the
    stored run's, or a changed model is a ``ValueError`` naming ``--resume``."""
    try:
        extra = read_checkpoint(ckpt_path, map_location=device)["extra"]
    except CheckpointError as e:
        raise ValueError(f"--resume: {e}") from None
    refuse_resume_conflicts(extra.get("args", {}), args, extra.get("model"), identity)


def disk_full_error(args, error: OSError) -> OSError | ValueError:
    """A write that found the disk full as a ``ValueError`` naming ``--out``, saying what is intact and how to go on;
    any other ``error`` as it is."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return error
    ckpt = Path(args.out) / "checkpoint.pt"
    try:
        step = read_checkpoint(ckpt, mmap=True)["step"] if ckpt.is_file() else None
    except CheckpointError:
        step = None
    then = (f"the last checkpoint, {ckpt} (step {step}), is intact: free some space and rerun with --resume to "
            f"continue from step {step}" if step is not None else "no checkpoint was written yet: free some space "
            "and start the run again")
    return ValueError(f"--out {args.out}: the disk is full (writing {error.filename or 'a run file'}: "
                      f"{error.strerror}); {then}")


def refuse_resume_conflicts(stored: dict, args, stored_identity: dict | None = None,
                            identity: dict | None = None) -> None:
    """``ValueError`` listing every flag of ``args`` that ``resume_conflicts`` finds against the stored run's, or
    naming each part of the model (``identity``: config, weights, tokenizer) that changed since the checkpoint."""
    conflicts = resume_conflicts(stored, args)
    if conflicts:
        raise ValueError("--resume: these flags differ from the stored run's (only "
                         f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_MAY_DIFFER))} may): "
                         + "; ".join(conflicts))
    if identity and stored_identity is None:
        raise ValueError(f"--resume: the checkpoint stores no digest of its model, so --model {args.model} cannot "
                         f"be checked against the model it trained; start a new run in another --out")
    changed = identity_conflicts(stored_identity, identity or {})
    if changed:
        raise ValueError(f"--resume: --model {args.model} is not the model the checkpoint trained: "
                         f"{'; '.join(changed)} changed; restore it, or start a new run in another --out")
