"""One RL step of the demo configuration on the kernels, against the same model in plain PyTorch eager fp32.

    python -m benchmarks.bench_rl_step [--steps 3] [--precision fp16] [--executor both] [--json PATH]

Reports kernel launches per decode token and per learner step, and the time per RL
step (8 prompts x 8 samples of the reverse task, pg) split into sampling and learning,
with the ratio against ``benchmarks.torch_baseline`` on the same weights, measured in
the same run. Budgets: <= 16 launches per decode token (per layer: two norms, four linears
and one fused attention; then the final norm and the sampler), <= 55 per learner step;
an RL step <= 50x plain PyTorch. Wall time is what a
user waits; the process CPU time is printed too, since other work on a shared machine
inflates wall time but hardly CPU time (the interpreter runs on one thread).

On a CPU the kernels run on the CPU executor (DESIGN.md section 3.7): by default the step is
measured twice, on the executor in effect (the twins unless ``PK_CPU_EXECUTOR`` says otherwise)
and on the Triton interpreter, each from the same initial weights; each row is labelled with what
ran its launches (the launch records' executors). ``--executor twins|interpreter`` measures one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import Counter

import torch

from benchmarks import torch_baseline as base
from benchmarks._output import OutputPathError, prepare_json_path, write_json
from benchmarks.launches import count_launches
from precision_kernels import backend, cpu_executor
from precision_kernels.ops._common import observe_launches
from rl.learner import StepConfig, learner_step
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate
from rl.tasks import get_task

DECODE_BUDGET, LEARNER_BUDGET, RATIO_BUDGET = 16, 55, 50


def _kernel_step(model, opt, scaler, task, prompts, gen, ran: Counter):
    """Times of one step; ``ran`` counts its launches by what ran them ("twin", "interpreter", "triton")."""
    c0, t0 = time.process_time(), time.perf_counter()
    with observe_launches() as records:
        ro = generate(model, prompts, task.max_new_tokens, generator=gen, eos_id=task.eos_id, pad_id=task.pad_id)
        t1 = time.perf_counter()
        rewards = task.reward(prompts, ro.tokens[:, task.prompt_len:], ro.mask)
        with count_launches() as learn_count:
            learner_step(model, opt, scaler, ro, rewards, 8, task.prompt_len, StepConfig())
        t2 = time.perf_counter()
    ran.update(r.executor for r in records)
    return t1 - t0, t2 - t1, learn_count.launches, time.process_time() - c0


def executor_label(ran: Counter) -> str:
    """What ran the launches, e.g. "twin" or "twin 90% + interpreter 10%" (a kernel without a twin)."""
    total = sum(ran.values())
    if len(ran) == 1:
        return next(iter(ran))
    return " + ".join(f"{name} {100 * n / total:.0f}%" for name, n in ran.most_common())


def _baseline_step(model, opt, task, prompts, gen):
    c0, t0 = time.process_time(), time.perf_counter()
    ro = base.generate(model, prompts, task.max_new_tokens, generator=gen, eos_id=task.eos_id, pad_id=task.pad_id)
    t1 = time.perf_counter()
    rewards = task.reward(prompts, ro.tokens[:, task.prompt_len:], ro.mask)
    adv = (rewards.view(-1, 8) - rewards.view(-1, 8).mean(1, keepdim=True)).view(-1)
    lp = base.sequence_logprobs(model, ro.tokens, task.prompt_len)
    loss = -(adv[:, None] * lp * ro.mask).sum() / ro.mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c0


def decode_launches(model: TinyGPT, prompts: torch.Tensor) -> int:
    """Launches of one decode step: the layers for one new token, then pk.linear_sample."""
    import precision_kernels as pk

    with torch.no_grad():
        w = model.compute_weights()
        cache = model.new_cache(prompts.shape[0])
        h = model.prefill(prompts, cache, w)
        tok, _ = pk.linear_sample(h, w["lm_head.weight"])
        with count_launches() as c:
            h = model.decode(tok, cache, w)
            pk.linear_sample(h, w["lm_head.weight"])
    return c.launches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--executor", choices=("both", *cpu_executor.EXECUTORS), default="both",
                        help="CPU only: the executor(s) to measure (default both: the one in effect, then the "
                             "interpreter)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (default 1, as rl.train runs; on a shared machine "
                             "multi-threaded torch waits on busy cores and its time swings 10x)")
    args = parser.parse_args(argv)
    try:  # checked before the measurement, not after it
        prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, max_seq_len=task.seq_len, precision=args.precision)
    prompts_all = task.make_dataset(512)[0]
    if not backend.INTERPRETED:
        executors = [None]                      # compiled kernels: there is no CPU executor to choose
    elif args.executor == "both":
        executors = [cpu_executor.active_executor(), "interpreter"]
        executors = list(dict.fromkeys(executors))
    else:
        executors = [args.executor]

    baseline, runs = [], {}
    for executor in executors:
        # each executor from the same initial weights and the same prompts
        model = TinyGPT(cfg, seed=0, init="torch")  # a non-uniform policy: sequences of every length occur
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ref = base.TinyGPT(base.ModelConfig(vocab_size=task.vocab_size, max_seq_len=task.seq_len))
        ref.load_state_dict(model.state_dict())
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=args.precision == "fp16")
        data = torch.Generator().manual_seed(0)
        ran, steps = Counter(), []
        with cpu_executor.use_cpu_executor(executor) if executor else contextlib.nullcontext():
            per_decode = decode_launches(model, prompts_all[:64])
            for _ in range(args.steps):
                prompts = prompts_all[torch.randint(0, 512, (8,), generator=data)].repeat_interleave(8, 0)
                s, l, learn_launches, cpu = _kernel_step(model, opt, scaler, task, prompts,
                                                         torch.Generator().manual_seed(1), ran)
                steps.append((s, l, cpu))
                # the baseline interleaved with every kernel step: both see the same machine load
                baseline.append(_baseline_step(ref, ref_opt, task, prompts, torch.Generator().manual_seed(1)))
        ks, kl, kc = (statistics.median(step[i] for step in steps) for i in range(3))
        runs[executor or "triton"] = {"ran": executor_label(ran), "launches_per_decode_token": per_decode,
                                      "launches_per_learner_step": learn_launches, "kernel_sample_s": ks,
                                      "kernel_learn_s": kl, "kernel_step_s": ks + kl, "kernel_step_cpu_s": kc}
    bs, bl, bc = (statistics.median(step[i] for step in baseline) for i in range(3))
    first = runs[executors[0] or "triton"]
    report = {"precision": args.precision, "torch_threads": args.threads, **first,
              "torch_sample_s": bs, "torch_learn_s": bl, "torch_step_s": bs + bl, "torch_step_cpu_s": bc,
              "ratio": first["kernel_step_s"] / (bs + bl), "cpu_ratio": first["kernel_step_cpu_s"] / bc,
              "executors": {name: {**run, "ratio": run["kernel_step_s"] / (bs + bl),
                                   "cpu_ratio": run["kernel_step_cpu_s"] / bc} for name, run in runs.items()}}
    print(f"demo configuration (d_model 64, 2 layers, 2 heads, 8 x 8 samples, {args.precision}, matched), "
          f"median of {args.steps} steps, {args.threads} torch thread(s)")
    for name, run in runs.items():
        print(f"{name}: launches per decode token {run['launches_per_decode_token']} (budget {DECODE_BUDGET}), "
              f"per learner step {run['launches_per_learner_step']} (budget {LEARNER_BUDGET})")
    print(f"{'':<34} {'sampling':>9} {'learning':>9} {'RL step':>9} {'CPU time':>9} {'ratio (CPU)':>12}")
    for run in runs.values():
        label = f"pk kernels ({run['ran']})"
        print(f"{label:<34} {run['kernel_sample_s']:>8.2f}s {run['kernel_learn_s']:>8.2f}s "
              f"{run['kernel_step_s']:>8.2f}s {run['kernel_step_cpu_s']:>8.2f}s "
              f"{run['kernel_step_s'] / (bs + bl):>5.0f}x ({run['kernel_step_cpu_s'] / bc:.0f}x)")
    print(f"{'plain PyTorch eager fp32':<34} {bs:>8.3f}s {bl:>8.3f}s {bs + bl:>8.3f}s {bc:>8.3f}s")
    print(f"ratio budget: {RATIO_BUDGET}x")
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
