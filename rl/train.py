"""RL training CLI: ``python -m rl.train`` trains the sanity recipe on the kernels.

    python -m rl.train                                   # reverse task, fp16, matched, pg, 8 x 8
    python -m rl.train --precision bf16 --profile engine --algo tis --steps 60 --out runs/bf16-engine

One step: sample ``--batch`` prompts from the fixed training set, draw ``--group``
responses each with the KV-cache sampler (``pk.linear_sample``), score them exactly,
recompute their log-probs with the learner (``pk.linear_logprobs``), measure the
sampler-learner mismatch, and take an AdamW step on the fp32 master weights (FP16 with
dynamic loss scaling). Greedy accuracy over the whole training set is evaluated every
``--eval-every`` steps. Writes ``metrics.jsonl``, ``checkpoint.pt`` (atomically) and
``summary.json`` under ``--out``.

Device: ``--device auto`` (default) is the kernels' backend device (``pk.backend.device()``);
model, KV cache, data, seeds and checkpoints follow it, and a checkpoint written on one device
resumes on the other. The backend is fixed when ``precision_kernels`` is imported, so
``--device cpu`` on a CUDA host needs ``TRITON_INTERPRET=1`` set before that import.

Sampling is keyed, not streamed: the token at position t of the step's sequence i (its index
in the global batch) is drawn with seed ``mix_seed(mix_seed(--seed, step), i, t)``
(``rl.sampler``), so the samples do not depend on the world size, the split of the batch over
ranks, or a resume.

Several processes: ``torchrun --standalone --nproc_per_node N -m rl.train ...`` (gloo on CPU,
NCCL on CUDA; ``rl.distributed``). Each rank takes ``--batch / N`` whole prompt groups of the
step's global batch; gradients are summed over ranks with each rank's loss divided by the
global token count, so the step is the single-process step up to the order of that sum. Rank
0 writes the files; the metrics are reduced over ranks (reward, accuracy, entropy: means;
mismatch: token-weighted means and maxima; the matched check fails if any rank differs).

Every flag is checked before any work (``rl.train_flags.check_args``). An existing run in
``--out`` is never overwritten unless ``--overwrite`` is given; ``--resume`` continues it from
its checkpoint (an error when there is none) and refuses flags that differ from the stored
run's, except ``RESUME_MAY_DIFFER``, and a model whose config, weights or tokenizer changed
(their digests are in the checkpoint). A full disk stops a run with an error saying that the last
checkpoint is intact and ``--resume`` continues from it.

The model is a policy (``rl.policy.Policy``: TinyGPT, or a Hugging Face LM) that
``rl.policies.build_policy`` builds from ``--model``; this loop never asks which: the policy
starts the run (TinyGPT's warm-up) and sets the numerics of its passes. One RL step is
``_roll_out``, ``_learn``, ``_log_step`` and ``_checkpoint`` on the run that ``_set_up`` builds
(``_train`` is the loop). Randomness comes only from seeded generators and keyed seeds, so the
checkpoint holds just the data-order generator (``rl.checkpoint``).

Resume keeps the whole run's record: the checkpoint holds the running figures (the last accuracy,
the skipped-step total, the RL seconds so far), ``metrics.jsonl`` keeps the records up to the
checkpoint's step, and ``summary.json`` is built from all of them, so a resumed run's files equal
an uninterrupted run's, timings aside. Each record is flushed and fsynced before the checkpoint
that follows it. On resume, a cut-short last line of ``metrics.jsonl`` is dropped with a warning
(a damaged line elsewhere is an error naming it), the file is rewritten atomically, and temporary
files of a checkpoint save that was killed are removed.

Non-finite figures: a step whose sampler log-probs (over the sampled tokens), loss or gradient
norm is NaN or infinite counts as skipped (a sampler NaN skips the learner step altogether) and
is logged; with ``--strict`` it stops the run (``StrictStop``), as a matched-profile mismatch
does. NaN is a mismatch of the matched check, never a match. The JSON files write null for a
figure that is not finite (an accuracy not evaluated yet, a NaN loss).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import distributed, train_flags
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temps, save_checkpoint
from .diagnostics import step_diagnostics
from .learner import StepConfig, StepResult, learner_step, sequence_logprobs
from .metrics import dashboard_metrics, json_safe, mismatch_metrics, reduce_mismatch
from .output_paths import write_output
from .policies import build_policy
from .policy import Policy
from .rollout import Rollout
from .run_records import append_record, plain_args, records_up_to
from .sampler import generate, greedy, mix_seed
from .task_views import PromptSet
from .train_flags import build_parser, check_args, matched_run, resolve_device


class StrictStop(RuntimeError):
    """``--strict``: a matched-profile mismatch or a non-finite figure stopped the run."""


def evaluate(model: Policy, task, prompts: PromptSet, dist: distributed.Dist | None = None) -> float:
    """Greedy accuracy over ``prompts`` on the kernels (split over the ranks, then summed)."""
    dist = dist or distributed.Dist(device=prompts.device)
    n = len(prompts)
    lo, hi = dist.rank * n // dist.world_size, (dist.rank + 1) * n // dist.world_size
    right = 0.0
    if hi > lo:
        part = prompts[lo:hi]
        responses, mask = greedy(model, part.ids, task.max_new_tokens, task.eos_id, task.pad_id, prompt_mask=part.mask)
        right = task.n_right(part, responses, mask)
    return dist.sum(right)[0] / n


def train(args, log=print) -> dict:
    """Run ``args`` (a ``build_parser()`` namespace); raises ``ValueError`` naming a bad flag before any work."""
    check_args(args)
    dist = distributed.init(resolve_device(args.device))
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    if dist.device.type == "cuda":
        # On the GPU the embedding-gradient scatter and the warm-up's cuBLAS calls pick atomic or
        # workspace-dependent algorithms unless deterministic ones are asked for (for this run only).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(args, dist, log if dist.is_main else (lambda *_: None))
    except OSError as e:  # a full disk: a clear error saying what is intact and how to go on
        raise train_flags.disk_full_error(args, e) from None
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        distributed.shutdown()


def _train(args, dist: distributed.Dist, log) -> dict:
    run = _set_up(args, dist, log)
    bar = _progress_bar(run)
    t_run = run.t_started = time.perf_counter()
    for step in range(run.start + 1, args.steps + 1):
        prompts, rollout, sample_s = _roll_out(run, step)
        result, rewards, learn_s = _learn(run, prompts, rollout)
        record = _log_step(run, step, rollout, result, rewards, sample_s, learn_s)
        _checkpoint(run, step)
        if bar is not None:
            bar.set_postfix(reward=f"{record['reward']:.2f}", acc=f"{run.accuracy:.0%}",
                            dlogp=f"{record['mean_abs_dlogp']:.1e}", clip=f"{record['clip_frac_sampler']:.1%}",
                            ess=f"{record['ess_seq']:.3f}", refresh=False)
            bar.update(1)
        if args.stop_at is not None and run.accuracy >= args.stop_at:
            break
    if bar is not None:
        bar.close()
    return _finish(run, time.perf_counter() - t_run)


@dataclass
class _Run:
    """One run between its steps: what ``_set_up`` builds, and the running totals the steps add to."""

    args: argparse.Namespace
    dist: distributed.Dist
    log: Callable[[str], None]
    task: object  # the task view (rl.task_views): prompt set, rewards, the greedy count
    model: Policy
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    prompts_all: PromptSet
    data_gen: torch.Generator  # the data order: a CPU generator, the same on every device and rank
    start: int = 0
    warm: dict | None = None
    kl_anchor: Policy | None = None  # the frozen post-warm-up policy the KL penalty pulls towards
    sampler: Policy | None = None    # the policy at --rollout-precision bf16/fp16 (the same masters); None: model
    accuracy: float = float("nan")
    history: list[dict] = field(default_factory=list)
    skipped_total: int = 0
    rl_seconds_before: float = 0.0  # the RL seconds of the segments before a resume
    t_started: float = 0.0          # perf_counter() when this segment's first step began
    uncovered_told: set[str] = field(default_factory=set)  # ops the sampler's mode left to torch, told once
    identity: dict = field(default_factory=dict)  # digests of the model's config and weights, in each checkpoint

    @property
    def ckpt_path(self) -> Path:
        return Path(self.args.out) / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return Path(self.args.out) / "metrics.jsonl"

    @property
    def eval_prompts(self) -> PromptSet:
        n = self.args.eval_prompts
        return self.prompts_all if n is None else self.prompts_all[:n]

    @property
    def step_cfg(self) -> StepConfig:
        a = self.args
        return StepConfig(algo=a.algo, agg=a.agg or "token-mean", epochs=a.epochs, minibatches=a.minibatches,
                          temperature=a.temperature, ratio=a.ratio, tis_cap=a.tis_cap, kl_coef=a.kl_coef,
                          kl_estimator=a.kl_estimator or "k3")


def _set_up(args, dist: distributed.Dist, log) -> _Run:
    """Check a resume against the stored flags, build the policy and its prompt set, then resume or start."""
    ckpt_path, identity = Path(args.out) / "checkpoint.pt", train_flags.model_identity_of(args)
    if args.resume:
        train_flags.refuse_resume(ckpt_path, args, identity, dist.device)
    # Multi-threaded CPU torch (the fp32 warm-up, and the embedding-gradient scatter in the RL glue)
    # accumulates in a thread-dependent order; one thread makes a run repeat bit for bit. The
    # kernels run in the interpreter's numpy either way.
    torch.set_num_threads(1)
    dist.barrier()  # every rank has checked OUT before rank 0 writes to it
    if dist.is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for tmp in remove_stale_temps(ckpt_path):
            log(f"removed {tmp}, left by a checkpoint save that was cut short")
    setup = build_policy(args, dist.device)
    optimizer = torch.optim.AdamW(setup.policy.parameters(), lr=args.lr, weight_decay=0.0)
    # Dynamic loss scaling only where gradients are fp16; skipped steps are counted.
    scaler = torch.amp.GradScaler(dist.device.type, enabled=args.precision == "fp16", init_scale=2.0**12)
    run = _Run(args, dist, log, setup.task, setup.policy, optimizer, scaler, setup.prompts,
               data_gen=torch.Generator().manual_seed(args.seed + 1), identity=identity)
    if train_flags.sampler_precision(args) != args.precision:
        run.sampler = run.model.at_precision(train_flags.sampler_precision(args))
    if args.resume:
        _resume(run)
    else:
        _start(run)
        # Until the first evaluation, the accuracy shown is the warm-up's (plain fp32 path); a greedy pass over
        # the training set costs as much as two RL steps under the interpreter.
        run.accuracy = run.warm["accuracy"] if run.warm else float("nan")
    return run


def _resume(run: _Run) -> None:
    """The checkpoint's weights, optimizer, scaler and data order; its running figures; the records up to its step."""
    try:
        ckpt = load_checkpoint(run.ckpt_path, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                               generators={"data": run.data_gen}, map_location=run.dist.device)
    except CheckpointError as e:
        raise ValueError(f"--resume: {e}") from None
    run.start, run.warm = ckpt["step"], ckpt["extra"].get("warmup")
    if run.args.kl_coef > 0:
        run.kl_anchor = copy.deepcopy(run.model).requires_grad_(False)
        run.kl_anchor.load_state_dict(ckpt["extra"]["kl_anchor"])
    if run.dist.is_main:
        run.history = records_up_to(run.metrics_path, run.start, run.log)
    totals = ckpt["extra"].get("totals") or {}
    last = run.history[-1] if run.history else {}
    warm_accuracy = (run.warm or {}).get("accuracy", float("nan"))
    run.accuracy = float(totals.get("accuracy", last.get("accuracy", warm_accuracy)))
    run.skipped_total = int(totals.get("skipped_total", last.get("skipped_total", 0)))
    run.rl_seconds_before = float(totals.get("rl_seconds", 0.0))
    run.log(f"resumed from {run.ckpt_path} at step {run.start}")


def _start(run: _Run) -> None:
    """A new run: the policy's start (TinyGPT's warm-up), then the KL anchor, a frozen copy of the started policy."""
    if run.dist.is_main:
        write_output("", run.metrics_path, "--out")  # check_args refused an existing run unless --overwrite
    a = run.args
    run.warm = run.model.start(run.task, run.prompts_all, dist=run.dist, log=run.log, target=a.warmup_target,
                               seed=a.seed)
    if a.kl_coef > 0:
        run.kl_anchor = copy.deepcopy(run.model).requires_grad_(False)


def _progress_bar(run: _Run):
    if run.args.no_progress or not run.dist.is_main:
        return None
    from tqdm import tqdm

    a = run.args
    fp8 = "" if train_flags.sampler_linears(a) is None else f"/fp8-{'matched' if matched_run(a) else 'rollout'}"
    fp8 += f"/{train_flags.sampler_precision(a)}-rollout" if train_flags.sampler_precision(a) != a.precision else ""
    return tqdm(total=a.steps, initial=run.start, desc=f"{a.precision}{fp8}/{a.profile}/{a.algo}", file=sys.stderr,
                dynamic_ncols=True)


def _roll_out(run: _Run, step: int) -> tuple[PromptSet, Rollout, float]:
    """This rank's whole prompt groups of the step's global batch, sampled with keyed seeds; and the seconds."""
    args, task = run.args, run.task
    first, last = run.dist.shard(args.batch)
    idx = torch.randint(0, len(run.prompts_all), (args.batch,), generator=run.data_gen)[first:last]
    prompts = run.prompts_all[idx].repeat(args.group)
    t0, reports = time.perf_counter(), []
    rollout = generate(run.sampler or run.model, prompts.ids, task.max_new_tokens, temperature=args.temperature,
                       profile=args.profile, eos_id=task.eos_id, pad_id=task.pad_id,
                       seed=mix_seed(args.seed, step), first_index=first * args.group,
                       linear_precision=train_flags.sampler_linears(args), prompt_mask=prompts.mask, report=reports)
    for report in reports:
        _tell_uncovered(run, report)
    return prompts, rollout, time.perf_counter() - t0


def _tell_uncovered(run: _Run, report) -> None:
    """Log, once per op, what the sampler's matched mode ran on torch (not served, not exact): the policy's forward
    may differ from the learner's there (the learner runs the same ops)."""
    new = {f"{r.op} ({r.dtype})" for r in report.uncovered.values()} - run.uncovered_told
    if new:
        run.uncovered_told |= new
        run.log(f"WARNING matched mode ran these ops on torch: {', '.join(sorted(new))}")


def _learn(run: _Run, prompts: PromptSet, rollout: Rollout) -> tuple[StepResult, torch.Tensor, float]:
    """Score the rollout, take the learner step; returns its result, the rewards and the seconds."""
    t0 = time.perf_counter()
    args, P = run.args, prompts.ids.shape[1]
    rewards = run.task.reward(prompts, rollout.tokens[:, P:], rollout.mask, partial=args.reward == "partial")
    if not _sampler_finite(run, rollout):
        return _skipped_step(run, prompts, rollout, rewards), rewards, time.perf_counter() - t0
    # The learner's passes run in the policy's numerics; the optimizer's and the loss scaler's own ops (foreach
    # norms, unscaling) are not kernels, so an HF policy's mode is not audited here.
    with run.model.numerics():
        anchor_logp = None
        if run.kl_anchor is not None:
            with torch.no_grad():
                anchor_logp = sequence_logprobs(run.kl_anchor, rollout.tokens, P, args.temperature,
                                                prompt_mask=prompts.mask)
        result = learner_step(run.model, run.optimizer, run.scaler, rollout, rewards, args.group, P, run.step_cfg,
                              anchor_logp=anchor_logp, dist=run.dist, prompt_mask=prompts.mask)
    return result, rewards, time.perf_counter() - t0


def _sampler_finite(run: _Run, rollout: Rollout) -> bool:
    """Whether every rank's sampler log-probs of its sampled tokens are finite (pk returns NaN for NaN logits)."""
    bad = not bool(torch.isfinite(rollout.logprobs[rollout.mask]).all())
    return run.dist.max(float(bad))[0] == 0


def _skipped_step(run: _Run, prompts: PromptSet, rollout: Rollout, rewards: torch.Tensor) -> StepResult:
    """The step's result without a learner update: sampled tokens whose log-probs are not finite teach nothing."""
    with run.model.numerics(), torch.no_grad():
        pi_old = sequence_logprobs(run.model, rollout.tokens, prompts.ids.shape[1], run.args.temperature,
                                   prompt_mask=prompts.mask)
    nan = float("nan")
    return StepResult(pi_old=pi_old, entropy=nan, loss=nan, grad_norm=nan,
                      skipped=run.args.epochs * run.args.minibatches, loss_scale=run.scaler.get_scale(),
                      stats={"grad_norm_max": nan}, rewards=rewards)


def _nonfinite(run: _Run, rollout: Rollout, res: StepResult) -> list[str]:
    """The step's figures that are NaN or infinite: sampler log-probs, loss, gradient norm."""
    found = [] if _sampler_finite(run, rollout) else ["sampler log-probs"]
    found += [name for name, value in (("loss", res.loss), ("gradient norm", res.grad_norm))
              if not math.isfinite(value)]
    return found


def _log_step(run: _Run, step: int, rollout: Rollout, res: StepResult, rewards: torch.Tensor,
              sample_s: float, learn_s: float) -> dict:
    """The step's record: mismatch (checked in the matched profile), accuracy when due; appended to metrics.jsonl."""
    args, dist = run.args, run.dist
    skipped = res.skipped
    nonfinite = _nonfinite(run, rollout, res)
    if nonfinite:
        msg = (f"NON-FINITE {', '.join(nonfinite)} at step {step} (NaN or inf: the policy has diverged; "
               f"a lower --lr may help)")
        if args.strict:
            raise StrictStop(msg + "; --strict stops the run")  # the figures are reduced: every rank stops
        run.log("WARNING " + msg + "; the step's update is skipped")
        skipped = max(skipped, 1)  # an all-zero-advantage step with NaN gradients takes no step and counts none
    run.skipped_total += skipped
    mism = reduce_mismatch(mismatch_metrics(rollout.logprobs, res.pi_old, rollout.mask), dist)
    # NaN log-probs on both sides are bitwise equal, yet no match: a non-finite |dlogp| fails the check.
    if matched_run(args) and (mism["frac_tokens_differ"] > 0 or not math.isfinite(mism["max_abs_dlogp"])):
        msg = (f"MATCHED-MODE MISMATCH at step {step}: {mism['frac_tokens_differ']:.2%} of tokens differ "
               f"(max |dlogp| {mism['max_abs_dlogp']:.3g}); the sampler and learner kernels disagree")
        if args.strict:
            raise StrictStop(msg)  # every rank sees the reduced figure, so every rank stops here
        run.log("WARNING " + msg)
    evaluated = step % args.eval_every == 0 or step == args.steps
    if evaluated:
        run.accuracy = evaluate(run.model, run.task, run.eval_prompts, dist)
    reward = dist.sum(float(rewards.mean()))[0] / dist.world_size  # every rank holds as many sequences
    # Phantom clipping and weight collapse (rl.diagnostics); verl's and TRL's figures of this rank (cheap: float64).
    record = {"step": step, "reward": reward, "accuracy": run.accuracy, "evaluated": evaluated,
              "entropy": res.entropy, "loss": res.loss, "grad_norm": res.grad_norm, "loss_scale": res.loss_scale,
              "skipped": skipped, "skipped_total": run.skipped_total, "sample_s": sample_s,
              "learn_s": learn_s, **res.stats, **mism,
              **step_diagnostics(res.pi_old, rollout.logprobs, rollout.mask, dist, run.step_cfg.ppo_eps),
              **dashboard_metrics(rollout.logprobs, res.pi_old, rollout.mask)}
    if args.kl_coef > 0 and run.step_cfg.kl_estimator == "k1":
        record["reward_penalised"] = dist.sum(float(res.rewards.mean()))[0] / dist.world_size
    run.history.append(record)
    if dist.is_main:
        append_record(run.metrics_path, record)
    return record


def _checkpoint(run: _Run, step: int) -> None:
    if run.dist.is_main:
        totals = {"accuracy": run.accuracy, "skipped_total": run.skipped_total,
                  "rl_seconds": run.rl_seconds_before + time.perf_counter() - run.t_started}
        extra = {"warmup": run.warm, "args": plain_args(run.args), "totals": totals, "model": run.identity}
        if run.kl_anchor is not None:
            extra["kl_anchor"] = run.kl_anchor.state_dict()
        save_checkpoint(run.ckpt_path, model=run.model, step=step, optimizer=run.optimizer, scaler=run.scaler,
                        generators={"data": run.data_gen}, extra=extra)
    run.dist.barrier()  # the checkpoint of this step exists before any rank moves on


def _finish(run: _Run, wall: float) -> dict:
    """The run's summary from every step's record (those before a resume too), written to summary.json."""
    args, history, accuracy = run.args, run.history, run.accuracy
    n = max(len(history), 1)
    rl_seconds = run.rl_seconds_before + wall
    summary = {
        "task": args.task, "precision": args.precision, "profile": args.profile, "algo": args.algo,
        "linear_precision": args.linear_precision, "rollout_precision": args.rollout_precision or args.linear_precision,
        "device": str(run.dist.device), "world_size": run.dist.world_size,
        "steps": history[-1]["step"] if history else run.start, "final_accuracy": accuracy,
        "final_reward": history[-1]["reward"] if history else float("nan"),
        "warmup": run.warm, "skipped_steps": run.skipped_total, "rl_seconds": rl_seconds,
        "steps_per_s": len(history) / rl_seconds if rl_seconds > 0 else float("nan"),
        "sample_s_per_step": sum(h["sample_s"] for h in history) / n,
        "learn_s_per_step": sum(h["learn_s"] for h in history) / n,
        "mean_abs_dlogp": sum(h["mean_abs_dlogp"] for h in history) / n,
        "max_abs_dlogp": max((h["max_abs_dlogp"] for h in history), default=0.0),
        "frac_tokens_differ": sum(h["frac_tokens_differ"] for h in history) / n,
        "steps_to_95": next((h["step"] for h in history if h["accuracy"] >= 0.95), None),
        "steps_to_99": next((h["step"] for h in history if h["accuracy"] >= 0.99), None),
        "config": asdict(run.model.cfg),
    }
    if run.dist.is_main:
        write_output(json.dumps(json_safe(summary), indent=1, allow_nan=False), run.ckpt_path.parent / "summary.json",
                     "--out")
    run.log(f"done: {summary['steps']} RL steps in {wall:.1f}s ({summary['sample_s_per_step']:.2f}s sampling + "
            f"{summary['learn_s_per_step']:.2f}s learning per step); greedy accuracy {accuracy:.1%}; "
            f"mean |dlogp| {summary['mean_abs_dlogp']:.3g}; tokens differing {summary['frac_tokens_differ']:.2%}; "
            f"skipped steps {run.skipped_total}; reached 95% at step {summary['steps_to_95']}")
    if not math.isfinite(accuracy):
        run.log("note: accuracy was not evaluated in this run")
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        train(args)
    except ValueError as e:
        if str(e).startswith(("--resume", "--out")):
            parser.error(str(e))  # a stored-flag conflict or a damaged run file, found before any work
        raise
    except StrictStop as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
