"""The sanity recipe in {fp16, bf16} x {matched, engine} x {pg, tis}, same seeds: the small-scale
counterpart of the paper's Figure 1.

    python -m benchmarks.train_compare [--steps 40] [--seeds 0] [--out runs/compare] [--overwrite]

Writes one run directory per configuration (metrics.jsonl, summary.json), a summary
table, ``OUT/summary.json`` and ``OUT/train_compare.png`` (reward, greedy accuracy and
mismatch against RL step).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

from rl.train import build_parser, train

GRID = list(itertools.product(("fp16", "bf16"), ("matched", "engine"), ("pg", "tis")))


def run(steps: int, seeds: list[int], out: str, extra: list[str]) -> list[dict]:
    results = []
    for seed, (precision, profile, algo) in itertools.product(seeds, GRID):
        name = f"{precision}-{profile}-{algo}-s{seed}"
        args = build_parser().parse_args(["--precision", precision, "--profile", profile, "--algo", algo,
                                          "--steps", str(steps), "--seed", str(seed), "--eval-every", "4",
                                          "--out", os.path.join(out, name), *extra])
        summary = train(args, log=lambda msg, name=name: print(f"[{name}] {msg}"))
        with open(os.path.join(out, name, "metrics.jsonl")) as f:
            history = [json.loads(line) for line in f]
        results.append({"name": name, "seed": seed, "precision": precision, "profile": profile, "algo": algo,
                        "summary": summary, "history": history})
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'run':<24} {'final acc':>9} {'final reward':>12} {'step to 95%':>11} {'mean|dlogp|':>11} "
             f"{'tok differ':>10} {'skipped':>7}"]
    for r in results:
        s = r["summary"]
        lines.append(f"{r['name']:<24} {s['final_accuracy']:>9.1%} {s['final_reward']:>12.3f} "
                     f"{str(s['steps_to_95']):>11} {s['mean_abs_dlogp']:>11.3g} {s['frac_tokens_differ']:>10.2%} "
                     f"{s['skipped_steps']:>7}")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = {("fp16", "matched"): ("tab:blue", "-"), ("fp16", "engine"): ("tab:blue", "--"),
              ("bf16", "matched"): ("tab:red", "-"), ("bf16", "engine"): ("tab:red", "--")}
    for r in results:
        color, ls = styles[(r["precision"], r["profile"])]
        marker = "o" if r["algo"] == "pg" else "x"
        steps = [h["step"] for h in r["history"]]
        label = f"{r['precision']} {r['profile']} {r['algo']}" + (f" s{r['seed']}" if r["seed"] else "")
        axes[0].plot(steps, [h["reward"] for h in r["history"]], ls=ls, color=color, marker=marker, ms=3,
                     label=label)
        axes[1].plot(steps, [h["accuracy"] for h in r["history"]], ls=ls, color=color, marker=marker, ms=3)
        axes[2].plot(steps, [max(h["mean_abs_dlogp"], 1e-10) for h in r["history"]], ls=ls, color=color,
                     marker=marker, ms=3)
    axes[0].set_title("mean sampled reward (partial credit)")
    axes[1].set_title("greedy accuracy, whole training set")
    axes[2].set_title("sampler-learner mean |Δ log p| (1e-10 = exactly 0)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in OUT (rl.train --overwrite)")
    parser.add_argument("extra", nargs="*", help="further rl.train flags, after --")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    extra = ["--no-progress", *(["--overwrite"] if args.overwrite else []), *args.extra]
    results = run(args.steps, args.seeds, args.out, extra)
    print(format_table(results))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "history"} for r in results], f, indent=1)
    png = os.path.join(args.out, "train_compare.png")
    plot(results, png)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
