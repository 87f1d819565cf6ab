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

Every flag is checked before any work (``check_args``). An existing run in ``--out`` is
never overwritten unless ``--overwrite`` is given; ``--resume`` continues it from its
checkpoint (an error when there is none) and refuses flags that differ from the stored
run's, except ``RESUME_MAY_DIFFER``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .learner import StepConfig, learner_step
from .losses import AGGREGATIONS, ALGOS, RATIOS
from .metrics import mismatch_metrics
from .model import ModelConfig, TinyGPT
from .sampler import fp32_temperature_ok, generate, greedy
from .tasks import TASKS, get_task
from .warmup import supervised_warmup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rl.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="reverse", choices=sorted(TASKS))
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--head-precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="precision of the LM head (default: --precision); fp32 is the common partial fix")
    p.add_argument("--profile", default="matched", choices=["matched", "engine"], help="the sampler's profile")
    p.add_argument("--algo", default="pg", choices=list(ALGOS))
    p.add_argument("--agg", default="token-mean", choices=list(AGGREGATIONS))
    p.add_argument("--epochs", type=int, default=1, help="passes over each rollout (> 1 only for ppo/grpo)")
    p.add_argument("--minibatches", type=int, default=1, help="optimizer steps per epoch (<= batch x group)")
    p.add_argument("--ratio", default="old", choices=list(RATIOS),
                   help="ppo/grpo ratio: exp(pi - pi_old) ('old', standard PPO) or exp(pi - mu) ('sampler')")
    p.add_argument("--tis-cap", type=float, default=None, metavar="C",
                   help="ppo/grpo with --ratio old: weight each token by min(exp(pi_old - mu), C), detached")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--reward", default="partial", choices=["partial", "binary"])
    p.add_argument("--dataset-size", type=int, default=512)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--init", default="torch", choices=["torch", "scaled", "gpt2"],
                   help="initialisation (rl.model.init_parameters); 'torch' gives the warm-up a peaked policy")
    p.add_argument("--warmup-target", type=float, default=0.35, help="greedy accuracy that ends the warm-up")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=None, metavar="N",
                   help="evaluate greedy accuracy on the first N training prompts (default: all of them)")
    p.add_argument("--stop-at", type=float, default=None, help="stop once greedy accuracy reaches this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUT already holds a run")
    p.add_argument("--strict", action="store_true", help="any matched-mode mismatch is fatal")
    p.add_argument("--no-progress", action="store_true")
    return p


# Flags that may change when a run is resumed; every other stored flag must match. ("device" is
# listed for the flag a later change adds; "resume", "overwrite" and "out" say how to run, not what.)
RESUME_MAY_DIFFER = frozenset({"steps", "stop_at", "eval_every", "eval_prompts", "device", "no_progress", "resume",
                               "overwrite", "out"})
MAX_DATASET_SIZE = 100_000  # distinct prompts are drawn one by one; every task has 10^6 of them


def check_args(args) -> None:
    """Raise ``ValueError`` naming the first bad flag; reads nothing but ``args`` and OUT's file names."""
    def need(ok: bool, flag: str, expected: str, value) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {value!r}")

    def positive_int(flag: str, value, low: int = 1, high: int | None = None) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        ok = ok and (high is None or value <= high)
        need(ok, flag, f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}", value)

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

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
    positive_int("--seed", args.seed, low=0)
    need(args.d_model % args.heads == 0, "--d-model", f"divisible by --heads {args.heads}", args.d_model)
    need(finite(args.lr) and args.lr > 0, "--lr", "a finite number > 0", args.lr)
    need(fp32_temperature_ok(args.temperature), "--temperature",
         "a number whose fp32 value and reciprocal are finite and > 0", args.temperature)
    need(finite(args.warmup_target) and 0 <= args.warmup_target <= 1, "--warmup-target",
         "an accuracy in [0, 1]", args.warmup_target)
    if args.stop_at is not None:
        need(finite(args.stop_at) and 0 <= args.stop_at <= 1, "--stop-at", "an accuracy in [0, 1]", args.stop_at)
    clipped = args.algo in ("ppo", "grpo")
    need(args.epochs == 1 or clipped, "--epochs", f"1 for --algo {args.algo} (more epochs on one rollout need "
         f"the clipped ppo/grpo objective)", args.epochs)
    need(args.ratio == "old" or clipped, "--ratio", f"left at 'old' for --algo {args.algo} (it is a ppo/grpo "
         f"option)", args.ratio)
    if args.tis_cap is not None:
        need(clipped and args.ratio == "old", "--tis-cap", "used only with --algo ppo/grpo and --ratio old",
             args.tis_cap)
        need(finite(args.tis_cap) and args.tis_cap > 0, "--tis-cap", "a finite number > 0", args.tis_cap)
    need(not (args.resume and args.overwrite), "--overwrite", "left out with --resume (one continues the run "
         "in --out, the other discards it)", args.overwrite)
    out = Path(args.out)
    need(not out.exists() or out.is_dir(), "--out", "a directory (it names an existing file)", args.out)
    ckpt, metrics = out / "checkpoint.pt", out / "metrics.jsonl"
    if args.resume:
        need(ckpt.is_file(), "--resume", f"given only where a checkpoint exists; there is no {ckpt}", True)
    elif not args.overwrite:
        held = [p.name for p in (ckpt, metrics) if p.exists() and (p.stat().st_size > 0 or p == ckpt)]
        need(not held, "--out", f"a directory without a run (it holds {', '.join(held)}; pass --resume to "
             f"continue it or --overwrite to start over)", args.out)


def resume_conflicts(stored: dict, args) -> list[str]:
    """Flags whose value differs from the stored run's, as ``--flag: stored X, now Y`` (``RESUME_MAY_DIFFER`` aside)."""
    current = vars(args)
    out = []
    for key in sorted(stored):
        if key in RESUME_MAY_DIFFER or key not in current:
            continue
        if stored[key] != current[key]:
            out.append(f"--{key.replace('_', '-')}: stored {stored[key]!r}, now {current[key]!r}")
    return out


def _build(args):
    task = get_task(args.task)
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      max_seq_len=task.seq_len, precision=args.precision, head_precision=args.head_precision)
    model = TinyGPT(cfg, seed=args.seed, init=args.init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # Dynamic loss scaling only where gradients are fp16; skipped steps are counted.
    scaler = torch.amp.GradScaler("cpu" if not torch.cuda.is_available() else "cuda",
                                  enabled=args.precision == "fp16", init_scale=2.0**12)
    return task, cfg, model, optimizer, scaler


def evaluate(model: TinyGPT, task, prompts: torch.Tensor) -> float:
    """Greedy accuracy over ``prompts`` on the kernels."""
    responses, mask = greedy(model, prompts, task.max_new_tokens, task.eos_id, task.pad_id)
    return task.accuracy(prompts, responses, mask)


def train(args, log=print) -> dict:
    """Run ``args`` (a ``build_parser()`` namespace); raises ``ValueError`` naming a bad flag before any work."""
    check_args(args)
    ckpt_path, metrics_path = Path(args.out) / "checkpoint.pt", Path(args.out) / "metrics.jsonl"
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path)
        conflicts = resume_conflicts(ckpt["extra"].get("args", {}), args)
        if conflicts:
            raise ValueError("--resume: these flags differ from the stored run's (only "
                             f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_MAY_DIFFER))} may): "
                             + "; ".join(conflicts))
    # Multi-threaded CPU torch (the fp32 warm-up, and the embedding-gradient scatter in the RL glue)
    # accumulates in a thread-dependent order; one thread makes a run repeat bit for bit. The
    # kernels run in the interpreter's numpy either way.
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task, cfg, model, optimizer, scaler = _build(args)
    prompts_all, _ = task.make_dataset(args.dataset_size, seed=args.seed)
    eval_prompts = prompts_all if args.eval_prompts is None else prompts_all[:args.eval_prompts]
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    sample_gen = torch.Generator().manual_seed(args.seed + 2)
    generators = {"data": data_gen, "sample": sample_gen}
    start, warm = 0, None
    if ckpt is not None:
        ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scaler=scaler, generators=generators)
        start, warm = ckpt["step"], ckpt["extra"].get("warmup")
        _drop_records_after(metrics_path, start)
        log(f"resumed from {ckpt_path} at step {start}")
    else:
        metrics_path.write_text("")  # check_args refused an existing run unless --overwrite
        t0 = time.perf_counter()
        res = supervised_warmup(model, task, prompts_all, train_prompts=prompts_all, stop_at=args.warmup_target,
                                seed=args.seed)
        warm = {"steps": res.steps, "accuracy": res.accuracy, "seconds": time.perf_counter() - t0,
                "reached": res.reached}
        log(f"warm-up (plain PyTorch fp32): {res.steps} steps, greedy accuracy {res.accuracy:.1%}, "
            f"{warm['seconds']:.1f}s")
    step_cfg = StepConfig(algo=args.algo, agg=args.agg, epochs=args.epochs, minibatches=args.minibatches,
                          temperature=args.temperature, ratio=args.ratio, tis_cap=args.tis_cap)
    # Until the first evaluation, the accuracy shown is the warm-up's (plain fp32 path); a greedy pass over
    # the training set costs as much as two RL steps under the interpreter.
    accuracy = warm["accuracy"] if warm else float("nan")
    history = []
    t_sample = t_learn = 0.0
    skipped_total = 0
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=start, desc=f"{args.precision}/{args.profile}/{args.algo}",
                   file=sys.stderr, dynamic_ncols=True)
    t_run = time.perf_counter()
    for step in range(start + 1, args.steps + 1):
        idx = torch.randint(0, len(prompts_all), (args.batch,), generator=data_gen)
        prompts = prompts_all[idx].repeat_interleave(args.group, dim=0)
        t0 = time.perf_counter()
        ro = generate(model, prompts, task.max_new_tokens, temperature=args.temperature, generator=sample_gen,
                      profile=args.profile, eos_id=task.eos_id, pad_id=task.pad_id)
        t1 = time.perf_counter()
        rewards = task.reward(prompts, ro.tokens[:, task.prompt_len:], ro.mask, partial=args.reward == "partial")
        res = learner_step(model, optimizer, scaler, ro, rewards, args.group, task.prompt_len, step_cfg)
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_learn += t2 - t1
        skipped_total += res.skipped
        mism = mismatch_metrics(ro.logprobs, res.pi_old, ro.mask)
        if args.profile == "matched" and mism["frac_tokens_differ"] > 0:
            msg = (f"MATCHED-MODE MISMATCH at step {step}: {mism['frac_tokens_differ']:.2%} of tokens differ "
                   f"(max |dlogp| {mism['max_abs_dlogp']:.3g}); the sampler and learner kernels disagree")
            if args.strict:
                raise RuntimeError(msg)
            log("WARNING " + msg)
        evaluated = step % args.eval_every == 0 or step == args.steps
        if evaluated:
            accuracy = evaluate(model, task, eval_prompts)
        record = {"step": step, "reward": float(rewards.mean()), "accuracy": accuracy, "evaluated": evaluated,
                  "entropy": res.entropy,
                  "loss": res.loss, "grad_norm": res.grad_norm, "loss_scale": res.loss_scale,
                  "skipped": res.skipped, "skipped_total": skipped_total, "sample_s": t1 - t0,
                  "learn_s": t2 - t1, **res.stats, **mism}
        history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(ckpt_path, model=model, step=step, optimizer=optimizer, scaler=scaler,
                        generators=generators, extra={"warmup": warm, "args": vars(args)})
        if bar is not None:
            bar.set_postfix(reward=f"{record['reward']:.2f}", acc=f"{accuracy:.0%}",
                            dlogp=f"{mism['mean_abs_dlogp']:.1e}", refresh=False)
            bar.update(1)
        if args.stop_at is not None and accuracy >= args.stop_at:
            break
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_run
    n = max(len(history), 1)
    summary = {
        "task": args.task, "precision": args.precision, "profile": args.profile, "algo": args.algo,
        "steps": history[-1]["step"] if history else start, "final_accuracy": accuracy,
        "final_reward": history[-1]["reward"] if history else float("nan"),
        "warmup": warm, "skipped_steps": skipped_total, "rl_seconds": wall,
        "sample_s_per_step": t_sample / n, "learn_s_per_step": t_learn / n,
        "mean_abs_dlogp": sum(h["mean_abs_dlogp"] for h in history) / n,
        "frac_tokens_differ": sum(h["frac_tokens_differ"] for h in history) / n,
        "steps_to_95": next((h["step"] for h in history if h["accuracy"] >= 0.95), None),
        "steps_to_99": next((h["step"] for h in history if h["accuracy"] >= 0.99), None),
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done: {summary['steps']} RL steps in {wall:.1f}s ({summary['sample_s_per_step']:.2f}s sampling + "
        f"{summary['learn_s_per_step']:.2f}s learning per step); greedy accuracy {accuracy:.1%}; "
        f"mean |dlogp| {summary['mean_abs_dlogp']:.3g}; tokens differing {summary['frac_tokens_differ']:.2%}; "
        f"skipped steps {skipped_total}; reached 95% at step {summary['steps_to_95']}")
    if not math.isfinite(accuracy):
        log("note: accuracy was not evaluated in this run")
    return summary


def _drop_records_after(metrics_path: Path, step: int) -> None:
    """Keep the records up to the checkpoint's step (a run stopped between the two writes left one more)."""
    if not metrics_path.exists():
        return
    lines = [line for line in metrics_path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        metrics_path.write_text("".join(line + "\n" for line in kept))


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
        if str(e).startswith("--resume"):
            parser.error(str(e))  # a stored-flag conflict, found before any work
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
