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

Every flag is checked before any work (``check_args``). An existing run in ``--out`` is
never overwritten unless ``--overwrite`` is given; ``--resume`` continues it from its
checkpoint (an error when there is none) and refuses flags that differ from the stored
run's, except ``RESUME_MAY_DIFFER``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import precision_kernels as pk

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .learner import StepConfig, learner_step, sequence_logprobs
from .losses import AGGREGATIONS, ALGOS, CLIPPED, KL_ESTIMATORS, RATIOS, SEQUENCE_LEVEL
from .metrics import MISMATCH_KEYS, mismatch_metrics
from .model import ModelConfig, TinyGPT
from .sampler import SEEDED_SAMPLING, fp32_temperature_ok, generate, greedy, mix_seed
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the run lives (auto: the kernels' backend device)")
    p.add_argument("--out", default="runs/train")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUT already holds a run")
    p.add_argument("--strict", action="store_true", help="any matched-mode mismatch is fatal")
    p.add_argument("--no-progress", action="store_true")
    return p


# Flags that may change when a run is resumed; every other stored flag must match. ("resume",
# "overwrite" and "out" say how to run, not what; a checkpoint moves between devices.)
RESUME_MAY_DIFFER = frozenset({"steps", "stop_at", "eval_every", "eval_prompts", "device", "no_progress", "resume",
                               "overwrite", "out"})
MAX_DATASET_SIZE = 100_000  # distinct prompts are drawn one by one; every task has 10^6 of them


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
    resolve_device(args.device)
    need(args.batch % world_size() == 0, "--batch", f"divisible by the number of processes ({world_size()}: "
         f"each takes whole prompt groups)", args.batch)
    need(args.d_model % args.heads == 0, "--d-model", f"divisible by --heads {args.heads}", args.d_model)
    need(finite(args.lr) and args.lr > 0, "--lr", "a finite number > 0", args.lr)
    need(fp32_temperature_ok(args.temperature), "--temperature",
         "a number whose fp32 value and reciprocal are finite and > 0", args.temperature)
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


def _build(args, device: torch.device):
    task = get_task(args.task)
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                      max_seq_len=task.seq_len, precision=args.precision, head_precision=args.head_precision)
    model = TinyGPT(cfg, seed=args.seed, init=args.init).to(device)  # drawn on CPU: the same on every device
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # Dynamic loss scaling only where gradients are fp16; skipped steps are counted.
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16", init_scale=2.0**12)
    return task, cfg, model, optimizer, scaler


def evaluate(model: TinyGPT, task, prompts: torch.Tensor, dist: distributed.Dist | None = None) -> float:
    """Greedy accuracy over ``prompts`` on the kernels (split over the ranks, then summed)."""
    dist = dist or distributed.Dist(device=prompts.device)
    n = len(prompts)
    lo, hi = dist.rank * n // dist.world_size, (dist.rank + 1) * n // dist.world_size
    right = 0.0
    if hi > lo:
        responses, mask = greedy(model, prompts[lo:hi], task.max_new_tokens, task.eos_id, task.pad_id)
        right = task.accuracy(prompts[lo:hi], responses, mask) * (hi - lo)
    return dist.sum(right)[0] / n


def reduce_mismatch(m: dict[str, float], dist: distributed.Dist) -> dict[str, float]:
    """The ranks' ``mismatch_metrics`` combined: counts summed, maxima maxed, the rest weighted means.

    Token-level figures are weighted by the rank's token count, sequence-level ones (``seq_*``)
    by its sequence count; the quantiles ``dp_p*`` become the token-weighted mean of the ranks'
    quantiles (an approximation); ``rel_rms_*`` likewise.
    """
    if not dist.active:
        return m
    maxima = [k for k in MISMATCH_KEYS if "max" in k]
    counts = ["n_tokens", "n_seqs"]
    rest = [k for k in MISMATCH_KEYS if k not in maxima and k not in counts]
    n_tok, n_seq = dist.sum(m["n_tokens"], m["n_seqs"])
    weights = [m["n_seqs"] if k.startswith("seq_") else m["n_tokens"] for k in rest]
    sums = dist.sum(*(m[k] * w for k, w in zip(rest, weights)))
    out = {k: v / ((n_seq if k.startswith("seq_") else n_tok) or 1.0) for k, v in zip(rest, sums)}
    out.update(zip(maxima, dist.max(*(m[k] for k in maxima))))
    out.update(n_tokens=n_tok, n_seqs=n_seq)
    return {k: out[k] for k in MISMATCH_KEYS}


def step_seed(run_seed: int, step: int) -> int:
    """The sampler seed of RL step ``step``: ``mix_seed(run_seed, step)`` (``rl.sampler``)."""
    return mix_seed(run_seed, step)


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
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        distributed.shutdown()


def _train(args, dist: distributed.Dist, log) -> dict:
    device = dist.device
    ckpt_path, metrics_path = Path(args.out) / "checkpoint.pt", Path(args.out) / "metrics.jsonl"
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device, restore_rng=False)
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
    dist.barrier()  # every rank has checked OUT before rank 0 writes to it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    task, cfg, model, optimizer, scaler = _build(args, device)
    prompts_all, _ = task.make_dataset(args.dataset_size, seed=args.seed)
    prompts_all = prompts_all.to(device)
    eval_prompts = prompts_all if args.eval_prompts is None else prompts_all[:args.eval_prompts]
    # The data order comes from a CPU generator (the same on every device and rank). Sampling is
    # keyed by (seed, step, sequence, position); a generator is kept only for kernels without seeds.
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    generators = {"data": data_gen}
    sample_gen = None
    if not SEEDED_SAMPLING:
        sample_gen = torch.Generator(device=device).manual_seed(args.seed + 2)
        generators["sample"] = sample_gen
        log("note: pk.linear_sample takes no seeds here; sampling streams from a generator (not batch-invariant)")
    start, warm = 0, None
    reference = None
    if ckpt is not None:
        ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scaler=scaler, generators=generators,
                               map_location=device)
        start, warm = ckpt["step"], ckpt["extra"].get("warmup")
        if args.kl_coef > 0:
            reference = copy.deepcopy(model).requires_grad_(False)
            reference.load_state_dict(ckpt["extra"]["reference"])
        if dist.is_main:
            _drop_records_after(metrics_path, start)
        log(f"resumed from {ckpt_path} at step {start}")
    else:
        if dist.is_main:
            metrics_path.write_text("")  # check_args refused an existing run unless --overwrite
        t0 = time.perf_counter()
        res = supervised_warmup(model, task, prompts_all, train_prompts=prompts_all, stop_at=args.warmup_target,
                                seed=args.seed)
        dist.broadcast_params(model.parameters())  # every rank starts RL from rank 0's weights
        warm = {"steps": res.steps, "accuracy": res.accuracy, "seconds": time.perf_counter() - t0,
                "reached": res.reached}
        log(f"warm-up (plain PyTorch fp32): {res.steps} steps, greedy accuracy {res.accuracy:.1%}, "
            f"{warm['seconds']:.1f}s")
        if args.kl_coef > 0:
            reference = copy.deepcopy(model).requires_grad_(False)  # the post-warm-up policy, frozen
    kl_estimator = args.kl_estimator or "k3"
    step_cfg = StepConfig(algo=args.algo, agg=args.agg or "token-mean", epochs=args.epochs,
                          minibatches=args.minibatches, temperature=args.temperature, ratio=args.ratio,
                          tis_cap=args.tis_cap, kl_coef=args.kl_coef, kl_estimator=kl_estimator)
    # Until the first evaluation, the accuracy shown is the warm-up's (plain fp32 path); a greedy pass over
    # the training set costs as much as two RL steps under the interpreter.
    accuracy = warm["accuracy"] if warm else float("nan")
    history = []
    t_sample = t_learn = 0.0
    skipped_total = 0
    bar = None
    if not args.no_progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=start, desc=f"{args.precision}/{args.profile}/{args.algo}",
                   file=sys.stderr, dynamic_ncols=True)
    extra = {"warmup": warm, "args": vars(args)}
    if reference is not None:
        extra["reference"] = reference.state_dict()
    per_rank = args.batch // dist.world_size
    first, last = dist.rank * per_rank, (dist.rank + 1) * per_rank
    t_run = time.perf_counter()
    for step in range(start + 1, args.steps + 1):
        # The global batch's prompts, then this rank's whole groups of it.
        idx = torch.randint(0, len(prompts_all), (args.batch,), generator=data_gen)[first:last]
        prompts = prompts_all[idx.to(device)].repeat_interleave(args.group, dim=0)
        t0 = time.perf_counter()
        sampling = ({"seed": step_seed(args.seed, step), "first_index": first * args.group} if SEEDED_SAMPLING
                    else {"generator": sample_gen})
        ro = generate(model, prompts, task.max_new_tokens, temperature=args.temperature, profile=args.profile,
                      eos_id=task.eos_id, pad_id=task.pad_id, **sampling)
        t1 = time.perf_counter()
        rewards = task.reward(prompts, ro.tokens[:, task.prompt_len:], ro.mask, partial=args.reward == "partial")
        ref_logp = None
        if reference is not None:
            with torch.no_grad():
                ref_logp = sequence_logprobs(reference, ro.tokens, task.prompt_len, args.temperature)
        res = learner_step(model, optimizer, scaler, ro, rewards, args.group, task.prompt_len, step_cfg,
                           ref_logp=ref_logp, dist=dist)
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_learn += t2 - t1
        skipped_total += res.skipped
        mism = reduce_mismatch(mismatch_metrics(ro.logprobs, res.pi_old, ro.mask), dist)
        if args.profile == "matched" and mism["frac_tokens_differ"] > 0:
            msg = (f"MATCHED-MODE MISMATCH at step {step}: {mism['frac_tokens_differ']:.2%} of tokens differ "
                   f"(max |dlogp| {mism['max_abs_dlogp']:.3g}); the sampler and learner kernels disagree")
            if args.strict:
                raise RuntimeError(msg)  # every rank sees the reduced figure, so every rank stops here
            log("WARNING " + msg)
        evaluated = step % args.eval_every == 0 or step == args.steps
        if evaluated:
            accuracy = evaluate(model, task, eval_prompts, dist)
        reward = dist.sum(float(rewards.mean()))[0] / dist.world_size  # every rank holds as many sequences
        record = {"step": step, "reward": reward, "accuracy": accuracy, "evaluated": evaluated,
                  "entropy": res.entropy, "loss": res.loss, "grad_norm": res.grad_norm, "loss_scale": res.loss_scale,
                  "skipped": res.skipped, "skipped_total": skipped_total, "sample_s": t1 - t0,
                  "learn_s": t2 - t1, **res.stats, **mism}
        if args.kl_coef > 0 and kl_estimator == "k1":
            record["reward_penalised"] = dist.sum(float(res.rewards.mean()))[0] / dist.world_size
        history.append(record)
        if dist.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(ckpt_path, model=model, step=step, optimizer=optimizer, scaler=scaler,
                            generators=generators, extra=extra)
        dist.barrier()  # the checkpoint of this step exists before any rank moves on
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
        "device": str(device), "world_size": dist.world_size,
        "steps": history[-1]["step"] if history else start, "final_accuracy": accuracy,
        "final_reward": history[-1]["reward"] if history else float("nan"),
        "warmup": warm, "skipped_steps": skipped_total, "rl_seconds": wall,
        "steps_per_s": len(history) / wall if wall > 0 else float("nan"),
        "sample_s_per_step": t_sample / n, "learn_s_per_step": t_learn / n,
        "mean_abs_dlogp": sum(h["mean_abs_dlogp"] for h in history) / n,
        "max_abs_dlogp": max((h["max_abs_dlogp"] for h in history), default=0.0),
        "frac_tokens_differ": sum(h["frac_tokens_differ"] for h in history) / n,
        "steps_to_95": next((h["step"] for h in history if h["accuracy"] >= 0.95), None),
        "steps_to_99": next((h["step"] for h in history if h["accuracy"] >= 0.99), None),
        "config": asdict(cfg),
    }
    if dist.is_main:
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


PER_STEP_KEYS = ("step", "reward", "mean_abs_dlogp", "max_abs_dlogp", "frac_tokens_differ", "sample_s", "learn_s",
                 "skipped")


def short_run(precision: str, profile: str, out: str, *, steps: int = 20, device: str = "auto",
              extra: tuple[str, ...] = ()) -> dict:
    """One fresh ``rl.train`` run for reports (e.g. gpu_report's short CUDA run); OUT is overwritten.

    Returns the run's summary (``steps_per_s``, ``mean_abs_dlogp``, ``max_abs_dlogp``,
    ``frac_tokens_differ``, ...) plus ``per_step``: for every step the ``PER_STEP_KEYS``
    figures. Accuracy is evaluated once, after the last step. ``extra`` holds further flags.
    """
    args = build_parser().parse_args(["--precision", precision, "--profile", profile, "--steps", str(steps),
                                      "--device", device, "--eval-every", str(steps), "--no-progress",
                                      "--overwrite", "--out", out, *extra])
    summary = train(args, log=lambda *_: None)
    records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    per_step = [{k: r.get(k) for k in PER_STEP_KEYS} for r in records]
    return {**summary, "per_step": per_step}


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
