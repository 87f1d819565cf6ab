"""Sampler-vs-learner mismatch of a fixed policy by precision and profile (the measurement).

A fixed policy (a trained checkpoint, read with ``weights_only=True`` and measured on the
task it was trained on; without one, a seeded random model on the reverse task) samples a
fixed prompt set of that task with the KV-cache sampler in each precision and profile;
the learner then rescores the same tokens in the matched profile (``measure``). ``run`` does every row of ``VARIANTS``:

* {fp32, fp16, bf16} x {matched, engine}: the sampler's kernels are the learner's
  (matched), or an inference engine's decode (engine): split-K matmuls with partial sums
  rounded to the compute precision, and split-KV attention (flash-decoding) with each key
  chunk's partial output rounded and the chunks merged by their log-sum-exps;
* fp16/bf16 x {engine-matmul, engine-attention}: one of the two alone, attention's share
  of the mismatch beside the matmuls';
* fp16/bf16 with an fp32 LM head, engine: the common partial fix;
* FP8 rollouts: the sampler's block linears W8A8 in e4m3 (``pk.fp8_linear``; the LM head,
  norms and attention at the compute precision) against a bf16 or an fp16 learner, and the
  FP8 matched variant, whose learner runs the same quantised linears;
* whole-model rollouts (``--rollout-precision``): the sampler model in bf16 or fp16 (the same fp32
  weights rounded, ``TinyGPT.at_precision``) against an fp32 learner, the FP32-trainer / BF16-engine setup.

A record's ``sampler`` and ``learner`` name each side's linear precision (the sampler's whole precision in
a whole-model rollout row). Rows whose sampler
runs the learner's kernels at the learner's precision (matched profile, ``sampler == learner``)
must show exactly zero mismatch (``matched_rows_zero``). ``headline`` gives
the bf16 / fp16 ratios of the engine rows; ``format_table`` and ``format_headline`` the text that
``rl.demo`` and ``benchmarks/mismatch.py`` print. The CLI, JSON and plot are
``benchmarks/mismatch.py``'s.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os

import torch

import precision_kernels as pk

from .checkpoint import read_checkpoint
from .learner import sequence_logprobs
from .metrics import mismatch_metrics
from .model import ModelConfig, TinyGPT
from .sampler import generate
from .tasks import get_task

DEMO_CHECKPOINT = "runs/demo/checkpoint.pt"
# (precision, LM head, sampler profile, sampler linears, learner linears); None: the compute precision.
VARIANTS = [
    ("fp32", None, "matched", None, None), ("fp16", None, "matched", None, None), ("bf16", None, "matched", None, None),
    ("fp32", None, "engine", None, None), ("fp16", None, "engine", None, None), ("bf16", None, "engine", None, None),
    ("fp16", None, "engine-matmul", None, None), ("bf16", None, "engine-matmul", None, None),
    ("fp16", None, "engine-attention", None, None), ("bf16", None, "engine-attention", None, None),
    ("fp16", "fp32", "engine", None, None), ("bf16", "fp32", "engine", None, None),
    ("bf16", None, "matched", "fp8", None), ("fp16", None, "matched", "fp8", None),
    ("bf16", None, "matched", "fp8", "fp8"),
    ("fp32", None, "matched", "bf16", None), ("fp32", None, "matched", "fp16", None),
]
WHOLE_MODEL_SAMPLERS = ("fp32", "fp16", "bf16")  # a sampler value that names a precision: the whole model at it


def load_policy(checkpoint: str | None, seed: int = 0) -> tuple[dict, ModelConfig, str, str]:
    """fp32 master weights, their config, where they came from and the task's name.

    From ``checkpoint`` (an ``rl.train`` checkpoint: its task and model flags; a missing or damaged
    file is ``rl.checkpoint.CheckpointError``), or, with ``checkpoint=None``, a seeded random model
    on the reverse task.
    """
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        args = ckpt["extra"]["args"]
        task = get_task(args.get("task", "reverse"))
        cfg = ModelConfig(vocab_size=task.vocab_size, d_model=args["d_model"], n_layers=args["layers"],
                          n_heads=args["heads"], max_seq_len=task.seq_len)
        return ckpt["model"], cfg, f"trained checkpoint {checkpoint} (step {ckpt['step']})", task.name
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, max_seq_len=task.seq_len)
    # "torch" init: a non-uniform random policy (the default init's zero LM head would be uniform).
    return (TinyGPT(cfg, seed=seed, init="torch").state_dict(), cfg, f"seeded random model (seed {seed})",
            task.name)


def measure(state: dict, base: ModelConfig, precision: str, head: str | None, profile: str,
            sampler: str | None, learner: str | None, prompts: torch.Tensor, temperature: float, seed: int,
            task: str = "reverse") -> dict:
    """One row: the sampler (``profile``, linears ``sampler``) against the matched learner (linears ``learner``)."""
    name = task
    task = get_task(name)
    cfg = ModelConfig(**{**base.__dict__, "precision": precision, "head_precision": head,
                         "linear_precision": learner})
    device = pk.backend.device()  # the kernels' device
    model = TinyGPT(cfg)
    model.load_state_dict(state)
    model.to(device)
    whole = sampler in WHOLE_MODEL_SAMPLERS
    ro = generate(model.at_precision(sampler) if whole else model, prompts.to(device), task.max_new_tokens,
                  temperature=temperature, generator=torch.Generator(device=device).manual_seed(seed),
                  profile=profile, eos_id=task.eos_id, pad_id=task.pad_id, linear_precision=None if whole else sampler)
    with torch.no_grad():
        scored = sequence_logprobs(model, ro.tokens, task.prompt_len, temperature)
    m = mismatch_metrics(ro.logprobs, scored, ro.mask)
    return {"task": name, "precision": precision, "head": head or precision, "profile": profile,
            "sampler": sampler or precision, "learner": learner or precision,
            "kl_k1": m["k1"], "kl_k2": m["k2"], "kl_k3": m["k3"], **m}


def _one_thread() -> None:
    torch.set_num_threads(1)


def _measure_job(job: tuple) -> dict:
    return measure(*job)


def run(quick: bool, checkpoint: str | None, seed: int = 0, temperature: float = 1.0) -> tuple[list[dict], str]:
    """Every row of ``VARIANTS`` for the policy ``load_policy(checkpoint, seed)`` gives, on its task."""
    state, cfg, source, task_name = load_policy(checkpoint, seed)
    task = get_task(task_name)
    # One decode batch of <= 64 rows: the engine profile splits K for calls of up to engine_split_m rows.
    n_prompts, repeats = (32, 1) if quick else (64, 4)
    prompts = task.make_dataset(n_prompts, seed=1234)[0]
    records = []
    jobs = [(state, cfg, *variant, prompts, temperature, seed + r, task_name)
            for variant in VARIANTS for r in range(repeats)]
    # The interpreter is single-threaded Python: one worker process per core halves the wall time.
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
            results = list(pool.map(_measure_job, jobs))
    else:
        results = [_measure_job(job) for job in jobs]
    for i in range(len(VARIANTS)):
        runs = results[i * repeats:(i + 1) * repeats]
        rec = dict(runs[0])
        if repeats > 1:  # pool over independent sampling seeds
            for key in rec:
                if isinstance(rec[key], float):
                    vals = [r[key] for r in runs]
                    rec[key] = max(vals) if key.startswith(("max", "dp_max", "seq_max")) else sum(vals) / len(vals)
        records.append(rec)
    return records, source


def _same_kernels(r: dict) -> bool:
    """The sampler's linears and LM head at the learner's compute precision (rows of older files: always)."""
    return r["head"] == r.get("sampler", r["precision"]) == r.get("learner", r["precision"]) == r["precision"]


def headline(records: list[dict]) -> dict:
    """bf16 / fp16 ratios in the engine profile (published reference: ~8x relative RMS error, ~24x KL)."""
    def get(p, key):
        return next(r[key] for r in records if r["precision"] == p and r["profile"] == "engine" and _same_kernels(r))

    def ratio(a, b):
        return a / b if b > 0 else math.inf if a > 0 else float("nan")

    return {"rel_rms_logp_ratio": ratio(get("bf16", "rel_rms_logp"), get("fp16", "rel_rms_logp")),
            "rel_rms_prob_ratio": ratio(get("bf16", "rel_rms_prob"), get("fp16", "rel_rms_prob")),
            "kl_k3_ratio": ratio(get("bf16", "kl_k3"), get("fp16", "kl_k3")),
            "mean_abs_dlogp_ratio": ratio(get("bf16", "mean_abs_dlogp"), get("fp16", "mean_abs_dlogp"))}


def fp8_headline(records: list[dict]) -> dict:
    """Each FP8 rollout row's mean |dlogp| over the engine row of its learner's precision (absent rows: none)."""
    out = {}
    for r in records:
        if r.get("sampler") == "fp8" and r.get("learner") != "fp8":
            engine = [e for e in records if e["precision"] == r["precision"] and e["profile"] == "engine"
                      and _same_kernels(e)]
            if engine and engine[0]["mean_abs_dlogp"] > 0:
                out[r["precision"]] = r["mean_abs_dlogp"] / engine[0]["mean_abs_dlogp"]
    return out


def must_match(r: dict) -> bool:
    """Whether a row's sampler runs the learner's kernels and precision (matched profile, same linears), so
    its mismatch must be exactly zero."""
    return r["profile"] == "matched" and r.get("sampler") == r.get("learner")


def nonzero(r: dict) -> bool:
    return r["frac_tokens_differ"] != 0 or r["max_abs_dlogp"] != 0


def matched_rows_zero(records: list[dict]) -> bool:
    """Whether every ``must_match`` row shows exactly zero mismatch (no token differs, max |dlogp| 0)."""
    return not any(must_match(r) and nonzero(r) for r in records)


def format_table(records: list[dict]) -> str:
    lines = [f"{'precision':<9} {'head':<5} {'profile':<16} {'sampler':<7} {'learner':<7} {'mean|dlogp|':>11} "
             f"{'max|dlogp|':>10} "
             f"{'tok differ':>10} {'k1':>10} {'k3 (KL)':>10} {'seq k3':>10} {'relRMS lp':>10} {'p99|dp|':>9}"]
    for r in records:
        lines.append(f"{r['precision']:<9} {r['head']:<5} {r['profile']:<16} {r.get('sampler', r['precision']):<7} "
                     f"{r.get('learner', r['precision']):<7} {r['mean_abs_dlogp']:>11.3g} "
                     f"{r['max_abs_dlogp']:>10.3g} {r['frac_tokens_differ']:>10.2%} {r['kl_k1']:>10.2e} "
                     f"{r['kl_k3']:>10.2e} {r['seq_k3']:>10.2e} {r['rel_rms_logp']:>10.3g} {r['dp_p99']:>9.2e}")
    return "\n".join(lines)


def format_headline(records: list[dict]) -> str:
    """One line: the engine profile's bf16 / fp16 ratios beside the published reference points."""
    h = headline(records)
    line = (f"engine profile, bf16 / fp16: relative RMS error of log p {h['rel_rms_logp_ratio']:.1f}x, "
            f"of p {h['rel_rms_prob_ratio']:.1f}x, KL (k3) {h['kl_k3_ratio']:.1f}x "
            f"(published reference points: ~8x and ~24x)")
    fp8 = fp8_headline(records)
    if fp8:
        line += "\nfp8 rollout, mean |dlogp| over the engine row of the learner's precision: " + ", ".join(
            f"{p} learner {x:.1f}x" for p, x in fp8.items())
    return line
